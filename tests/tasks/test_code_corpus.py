"""The standard-library code corpus: extraction is exact, splits are by module."""

from __future__ import annotations

import ast
import inspect
import json
import textwrap

from anyformer.tasks.code_corpus import (
    extract_files,
    extract_module,
    module_files,
    split_of,
    stdlib_root,
)

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
    found = _by_name(extract_module(SAMPLE, "sample"))
    assert list(found) == ["one", "annotated", "Box.area", "Box.fetch", "Box.fetch.<locals>.inner"]
    assert all(f.module == "sample" for f in found.values())


def test_signatures_docstrings_bodies_and_doctests():
    found = _by_name(extract_module(SAMPLE, "sample"))
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
    found = _by_name(extract_module(SAMPLE, "sample"))
    assert found["Box.fetch"].identifiers == ("fetch", "self", "inner", "y", "value")


def test_finds_json_dumps_with_its_exact_docstring():
    files = {m: p for m, p in module_files().items() if m.split(".")[0] == "json"}
    assert "json" in files and "json.decoder" in files
    found = _by_name(f for f in extract_files(files.items()) if f.module == "json")
    dumps = found["dumps"]
    assert dumps.docstring == inspect.getdoc(json.dumps)
    assert dumps.signature.startswith("def dumps(obj, *, skipkeys=False")
    assert dumps.lineno == inspect.getsourcelines(json.dumps)[1]
    assert "JSONEncoder" in dumps.identifiers


def test_stdlib_files_are_found_and_vendored_folders_skipped():
    files = module_files()
    assert len(files) > 500
    assert str(stdlib_root()) in str(files["json.decoder"])
    assert not any("site-packages" in str(p) for p in files.values())


def test_splits_are_by_module_and_test_suites_are_ood():
    modules = list(module_files())
    splits = {m: split_of(m) for m in modules}
    assert all(s == "ood" for m, s in splits.items() if m.split(".")[0] == "test")
    counts = {s: sum(v == s for v in splits.values()) for s in ("train", "val", "test")}
    library = sum(counts.values())
    assert 0.7 < counts["train"] / library < 0.9 and counts["val"] > 10 and counts["test"] > 10
    # deterministic and seed-dependent
    assert splits == {m: split_of(m) for m in modules}
    assert any(split_of(m, seed=1) != s for m, s in splits.items() if s != "ood")
