"""The layers of docs/architecture.md hold: no module imports a higher layer's package
(imports inside functions included), no import cycle runs through ``model/`` or
between layers, and every module imports on its own in a fresh interpreter.

The import graph is read from the source (``ast``): every ``import``/``from ... import``
of an ``anyformer`` module, at module level or inside a function, except those under
``if TYPE_CHECKING:`` (never run). Strings that name modules (the registry's
``CONTRACTS``, which it imports by name when a slot is first used) are not imports.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import anyformer

SRC = Path(anyformer.__file__).parent

#: Layer of each package (docs/architecture.md); the longest matching prefix wins.
LAYERS = {
    "anyformer.spec": 0,
    "anyformer.registry": 0,
    "anyformer.errors": 0,
    "anyformer.safe_yaml": 0,
    "anyformer.spec_limits": 0,
    "anyformer.spec_refs": 0,
    "anyformer.spec_io": 0,
    "anyformer.nn": 0,
    "anyformer.components": 1,
    "anyformer.model": 2,
    "anyformer.adapters": 2,
    "anyformer.tasks": 3,
    "anyformer.objectives": 3,
    "anyformer.decoding": 3,
    "anyformer.training": 4,
    "anyformer.lab": 5,
    "anyformer.compress": 5,
    "anyformer.interop": 5,
    "anyformer.cli": 6,
    "anyformer.commands": 6,
    "anyformer.__main__": 6,
    "anyformer": 6,  # the package itself: the public API over every layer
}

#: Imports from a lower layer to a higher one that exist today, outside model/ and
#: decoding/; each should go (the test fails once one has, so the list stays true).
KNOWN_UPWARD: set[tuple[str, str]] = set()

#: Import cycles (as sorted module tuples) that exist today outside model/ and decoding/.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def modules() -> dict[str, Path]:
    """Every module of the package: dotted name -> file."""
    found = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return LAYERS[best]


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``anyformer`` modules it imports at run time."""
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from pkg import mod` imports the module pkg.mod when there is one
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
                ]
            edges |= {t for t in targets if t in known and t != name}
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, ...]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[str, ...]] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(tuple(sorted(component)))

    for v in graph:
        if v not in index:
            connect(v)
    return found


def _guarded(module: str) -> bool:
    return layer(module) in (2,) or module.startswith("anyformer.decoding")


def test_no_module_imports_a_higher_layer() -> None:
    graph = import_graph()
    upward = {(a, b) for a, targets in graph.items() for b in targets if layer(b) > layer(a)}
    assert not {(a, b) for a, b in upward if _guarded(a)}, "model/ must not import upward"
    assert upward == KNOWN_UPWARD, sorted(upward ^ KNOWN_UPWARD)


def test_no_import_cycles() -> None:
    found = set(cycles(import_graph()))
    assert not [c for c in found if any(_guarded(m) for m in c)], found
    assert found == KNOWN_CYCLES, sorted(found ^ KNOWN_CYCLES)


def test_the_graph_sees_imports_inside_functions_and_skips_type_checking() -> None:
    graph = import_graph()
    # lab/elastic imports model.elastic at module level; model.transformer imports the
    # depth package at module level and the Transformer only under TYPE_CHECKING there
    assert "anyformer.model.elastic" in graph["anyformer.lab.elastic"]
    assert "anyformer.model.transformer" not in graph["anyformer.model.depth.base"]
    # cli imports its commands' modules inside the command functions
    assert "anyformer.decoding" in graph["anyformer.cli"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b", "c")]


def test_the_modules_of_former_cycles_import_on_their_own_in_a_fresh_interpreter() -> None:
    """Fast: the modules that imported each other (transformer, elastic, generation) and a
    depth variant imported before its package's other modules; every module: below."""
    _import_each_alone(
        [
            "anyformer.model.transformer",
            "anyformer.model.elastic",
            "anyformer.model.depth.early_exit",
            "anyformer.decoding.generation",
        ]
    )


@pytest.mark.slow
def test_every_module_imports_on_its_own_in_a_fresh_interpreter() -> None:
    _import_each_alone([n for n in modules() if not n.endswith("__main__")])


def _import_each_alone(names: list[str]) -> None:
    """Each module in a fresh process that has imported only third-party libraries
    (forked from one that did, so the many imports stay fast): an import cycle that
    depends on which module comes first fails here."""
    if not hasattr(os, "fork"):
        pytest.skip("needs os.fork")
    script = textwrap.dedent(
        """
        import importlib, os, sys, traceback
        import numpy, pydantic, torch, yaml  # third-party only: no anyformer module yet
        assert not [m for m in sys.modules if m.startswith("anyformer")]
        failed = []
        for name in sys.argv[1:]:
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(read)
                try:
                    importlib.import_module(name)
                    code = 0
                except BaseException:
                    os.write(write, traceback.format_exc()[-1500:].encode())
                    code = 1
                os._exit(code)
            os.close(write)
            with os.fdopen(read) as fh:
                message = fh.read()
            _, status = os.waitpid(pid, 0)
            if status:
                failed.append(name + ": " + message)
        print("\\n".join(failed))
        sys.exit(1 if failed else 0)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, *sorted(names)], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
