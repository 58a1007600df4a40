"""The standard-library code corpus: extraction is exact, splits are by module."""

from __future__ import annotations

import ast
import inspect
import json
import textwrap
from pathlib import Path

from anyformer.tasks.code_corpus import extract_files, extract_module, module_name
from anyformer.tasks.text import module_paths, module_split, stdlib_root

SAMPLE = textwrap.dedent('''
    import os

    def one(): return 1

    def annotated(a: dict[str, int],  # a comment
                  b=lambda x: x) -> list[int]:
        # a comment before the body
        return [a, b]

    class Box:
        """A box."""

        def area(self, w, h):
            """Width times height.

            >>> Box().area(2, 3)
            6
            >>> print(Box().area(1, 1))
            1
            """
            return w * h

        async def fetch(self):
            def inner(y):
                return y + value
            value = 2
            return inner(1)
''')


def _by_name(functions):
    return {f.qualname: f for f in functions}


def test_extracts_every_function_and_method_with_qualified_names():
    found = _by_name(extract_module(SAMPLE, "pkg/sample.py"))
    assert list(found) == ["one", "annotated", "Box.area", "Box.fetch", "Box.fetch.<locals>.inner"]
    assert all(f.module == "pkg.sample" and f.area == "pkg" for f in found.values())
    assert module_name("json/__init__.py") == "json" and module_name("a/b.py") == "a.b"


def test_signatures_docstrings_bodies_and_doctests():
    found = _by_name(extract_module(SAMPLE, "pkg/sample.py"))
    assert found["one"].signature == "def one():" and found["one"].body == "return 1\n"
    sig = found["annotated"].signature
    assert sig.startswith("def annotated(a: dict[str, int],") and sig.endswith("-> list[int]:")
    assert "before the body" not in sig
    area = found["Box.area"]
    assert area.docstring == inspect.cleandoc(Box_area_doc())
    assert area.body == "return w * h\n"
    assert area.doctests == (("Box().area(2, 3)\n", "6\n"), ("print(Box().area(1, 1))\n", "1\n"))
    assert found["Box.fetch"].docstring is None
    assert found["Box.fetch"].body.startswith("def inner(y):")
    # the source of every function parses on its own
    for f in found.values():
        ast.parse(f.source)


def Box_area_doc() -> str:
    return """Width times height.

            >>> Box().area(2, 3)
            6
            >>> print(Box().area(1, 1))
            1
            """


def test_identifiers_in_first_use_order_without_keywords():
    found = _by_name(extract_module(SAMPLE, "pkg/sample.py"))
    assert found["Box.fetch"].identifiers == ("fetch", "self", "inner", "y", "value")


def test_finds_json_dumps_with_its_exact_docstring():
    root = stdlib_root()
    found = _by_name(extract_files(root, ["json/__init__.py"]))
    dumps = found["dumps"]
    assert dumps.module == "json"
    assert dumps.docstring == inspect.getdoc(json.dumps)
    assert dumps.signature.startswith("def dumps(obj, *, skipkeys=False")
    assert dumps.lineno == inspect.getsourcelines(json.dumps)[1]
    assert "JSONEncoder" in dumps.identifiers


def test_every_function_of_a_module_is_in_its_module_split():
    """Splits are by module: a function's split is its file's, so none is in two."""
    root = stdlib_root()
    paths = [p for p in module_paths(root) if p.split("/")[0] in ("json", "email")]
    paths.append("test/test_json/test_decode.py")
    functions = list(extract_files(root, paths))
    by_split: dict[str, set[str]] = {}
    for f in functions:
        by_split.setdefault(module_split(f.path, 0.1, 0.1), set()).add(f"{f.path}:{f.qualname}")
    assert "ood" in by_split and len(by_split) >= 2
    names = [n for group in by_split.values() for n in group]
    assert len(names) == len(set(names))
    assert all(n.startswith("test/") for n in by_split["ood"])


def test_a_library_is_extracted_once_and_cached_verified(tmp_path: Path, monkeypatch) -> None:
    from anyformer.tasks import code_corpus

    monkeypatch.setenv("ANYFORMER_CACHE", str(tmp_path / "cache"))
    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    (root / "pkg" / "mod.py").write_text(SAMPLE)
    (root / "test").mkdir()
    (root / "test" / "test_mod.py").write_text("def test_x():\n    assert True\n")
    first = code_corpus.library_functions.__wrapped__(str(root))
    assert {f.qualname for f in first} >= {"one", "Box.area", "test_x"}
    # the second read comes from the verified cache (extraction is not called)
    monkeypatch.setattr(
        code_corpus, "extract_files", lambda *a: (_ for _ in ()).throw(AssertionError)
    )
    assert code_corpus.library_functions.__wrapped__(str(root)) == first
    # an edited entry fails its digest and is extracted again
    (entry,) = (tmp_path / "cache" / "code_corpus").glob("*.json")
    entry.write_text(entry.read_text().replace("Box.area", "Box.aera"))
    monkeypatch.undo()
    monkeypatch.setenv("ANYFORMER_CACHE", str(tmp_path / "cache"))
    assert code_corpus.library_functions.__wrapped__(str(root)) == first
