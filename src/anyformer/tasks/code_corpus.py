"""The Python standard library as a code corpus: every function with its parts.

Every Python installation carries ~1,500 source files of well-tested code. This module
reads them with the standard library's ``ast`` (never importing or running them) and
``tokenize``, and returns one :class:`CodeFunction` per function and method: its module,
qualified name, signature line, docstring (exactly as ``inspect.getdoc`` would clean it),
full source, body without the docstring, the identifiers it uses in order of first use,
and its doctest examples.

Splits are **by module** so that no function — and no near-copy within one module — is in
two splits: the test suites (``test.*``, ``*.tests.*``) are the ``ood`` split, and every
other module goes to ``train`` / ``val`` / ``test`` by a hash of its dotted name (80/10/10
by default), fixed across machines and runs.

Used by the code tasks (CodeT5, UniXcoder, SEA and friends train on functions with
docstrings; here the corpus is the interpreter's own library, so nothing is downloaded).
"""

from __future__ import annotations

import ast
import doctest
import hashlib
import io
import keyword
import os
import sysconfig
import textwrap
import tokenize
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

Split = Literal["train", "val", "test", "ood"]

#: Folders of the standard library that are not library code (GUI demos, vendored
#: packages, build configuration) and are never read.
SKIPPED_DIRS = frozenset(
    {"site-packages", "dist-packages", "__pycache__", "idlelib", "turtledemo", "ensurepip"}
)


@dataclass(frozen=True)
class CodeFunction:
    """One function or method of a module, taken apart."""

    module: str  # dotted module name, e.g. "json.decoder"
    qualname: str  # e.g. "JSONDecoder.raw_decode"; nested functions as "outer.<locals>.inner"
    signature: str  # the ``def`` line(s) up to and including the colon
    docstring: str | None  # cleaned as inspect.cleandoc does
    source: str  # the whole definition, dedented, decorators excluded
    body: str  # the statements after the docstring, dedented
    identifiers: tuple[str, ...]  # NAME tokens that are not keywords, first use order
    doctests: tuple[tuple[str, str], ...]  # (source, expected output) per example
    lineno: int

    @property
    def name(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]

    @property
    def area(self) -> str:
        """The top-level package or module (``email``, ``json``, ``test``)."""
        return self.module.split(".", 1)[0]


def stdlib_root() -> Path:
    """Folder of this interpreter's pure-Python standard library."""
    return Path(sysconfig.get_paths()["stdlib"])


def module_files(root: Path | None = None) -> dict[str, Path]:
    """Dotted module name -> source file, for every ``.py`` under ``root``, sorted."""
    root = Path(root) if root is not None else stdlib_root()
    found: dict[str, Path] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS and not d.startswith("."))
        rel = Path(folder).relative_to(root)
        if any(part.startswith("config-") for part in rel.parts):
            continue
        for name in sorted(files):
            if not name.endswith(".py"):
                continue
            parts = [*rel.parts, name[:-3]]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if parts and all(p.isidentifier() for p in parts):
                found[".".join(parts)] = Path(folder) / name
    return dict(sorted(found.items()))


def split_of(module: str, seed: int = 0, fractions: tuple[float, float] = (0.8, 0.1)) -> Split:
    """The split of every function in ``module``: test suites are ``ood``, the rest by
    a hash of the module name (``fractions`` = train, val; test gets the remainder)."""
    parts = module.split(".")
    if parts[0] == "test" or "tests" in parts or parts[-1].startswith("test_"):
        return "ood"
    digest = hashlib.sha256(f"{seed}:{module}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


def _identifiers(source: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NAME and not keyword.iskeyword(tok.string):
                seen.setdefault(tok.string, None)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return tuple(seen)


def _doctests(docstring: str | None, name: str) -> tuple[tuple[str, str], ...]:
    if not docstring or ">>>" not in docstring:
        return ()
    try:
        examples = doctest.DocTestParser().get_examples(docstring, name)
    except ValueError:  # malformed example (e.g. inconsistent indentation)
        return ()
    return tuple((ex.source, ex.want) for ex in examples)


def _header(source: str) -> str:
    """The ``def`` header of a function's source: up to the first colon outside brackets."""
    depth = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.OP:
            if tok.string in "([{":
                depth += 1
            elif tok.string in ")]}":
                depth -= 1
            elif tok.string == ":" and depth == 0:
                row, col = tok.end
                head = source.splitlines(keepends=True)[:row]
                head[-1] = head[-1][:col]
                return "".join(head).strip()
    raise ValueError("no function header found")


def _segment(lines: list[str], first: int, last: int) -> str:
    return textwrap.dedent("".join(lines[first - 1 : last]))


def extract_module(source: str, module: str) -> list[CodeFunction]:
    """Every function and method defined in ``source`` (a module's text), in order."""
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    out: list[CodeFunction] = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                qualname = f"{prefix}{child.name}"
                out.append(_function(child, qualname, module, lines))
                visit(child, f"{qualname}.<locals>.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _function(
    node: ast.FunctionDef | ast.AsyncFunctionDef, qualname: str, module: str, lines: list[str]
) -> CodeFunction:
    end = node.end_lineno or node.lineno
    doc = ast.get_docstring(node, clean=True)
    has_doc = doc is not None
    source = _segment(lines, node.lineno, end)
    signature = _header(source)
    rest = node.body[1:] if has_doc else node.body
    body = _segment(lines, rest[0].lineno, end) if rest else ""
    if rest and rest[0].lineno == node.lineno:  # "def f(): return 1"
        body = lines[node.lineno - 1][rest[0].col_offset :].strip() + "\n"
    return CodeFunction(
        module=module,
        qualname=qualname,
        signature=signature,
        docstring=doc,
        source=source,
        body=body,
        identifiers=_identifiers(source),
        doctests=_doctests(doc, f"{module}.{qualname}"),
        lineno=node.lineno,
    )


def extract_files(files: Iterable[tuple[str, Path]]) -> Iterator[CodeFunction]:
    """Functions of each (module name, file); files that do not parse are skipped."""
    for module, path in files:
        try:
            source = path.read_text(encoding="utf-8")
            yield from extract_module(source, module)
        except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
            continue


@cache
def stdlib_functions() -> tuple[CodeFunction, ...]:
    """Every function of this interpreter's standard library (read once per process)."""
    return tuple(extract_files(module_files().items()))
