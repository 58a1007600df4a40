"""The Python standard library as a code corpus: every function with its parts.

Every Python installation carries ~1,500 source files of well-tested code. This module
reads them with the standard library's ``ast`` (never importing or running them) and
``tokenize``, and returns one :class:`CodeFunction` per function and method: its module,
qualified name, signature line, docstring (exactly as ``inspect.getdoc`` would clean it),
full source, body without the docstring, the identifiers it uses in order of first use,
and its doctest examples.

Splits are **by module**, with the rule ``stdlib_lm`` uses
(:func:`~anyformer.tasks.text.module_split`: the test suites are ``ood``, every other
module goes to ``train`` / ``id`` / ``test`` by a hash of its path), so no function is in
two splits and the code tasks hold out the same modules as the byte-level language model.

Used by the code tasks (CodeT5, UniXcoder, SEA and friends train on functions with
docstrings; here the corpus is the interpreter's own library, so nothing is downloaded).
"""

from __future__ import annotations

import ast
import dataclasses
import doctest
import io
import json
import keyword
import sys
import textwrap
import tokenize
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from anyformer.tasks.cache import cache_dir, key_of, read_verified, write_verified
from anyformer.tasks.text import module_paths, stdlib_root


@dataclass(frozen=True)
class CodeFunction:
    """One function or method of a module, taken apart."""

    path: str  # the module's path relative to the library root, e.g. "json/decoder.py"
    qualname: str  # e.g. "JSONDecoder.raw_decode"; nested functions as "outer.<locals>.inner"
    signature: str  # the ``def`` line(s) up to and including the colon
    docstring: str | None  # cleaned as inspect.cleandoc does
    source: str  # the whole definition, dedented, decorators excluded
    body: str  # the statements after the docstring, dedented
    identifiers: tuple[str, ...]  # NAME tokens that are not keywords, first use order
    doctests: tuple[tuple[str, str], ...]  # (source, expected output) per example
    lineno: int

    @property
    def module(self) -> str:
        """Dotted module name, e.g. ``json.decoder``."""
        return module_name(self.path)

    @property
    def name(self) -> str:
        return self.qualname.rsplit(".", 1)[-1]

    @property
    def area(self) -> str:
        """The top-level package or module (``email``, ``json``, ``test``)."""
        return self.module.split(".", 1)[0]


def module_name(path: str) -> str:
    """Dotted module name of a relative path: ``json/decoder.py`` -> ``json.decoder``."""
    parts = path[:-3].split("/") if path.endswith(".py") else path.split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


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


def extract_module(source: str, path: str) -> list[CodeFunction]:
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
                out.append(_function(child, qualname, path, lines))
                visit(child, f"{qualname}.<locals>.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return out


def _function(
    node: ast.FunctionDef | ast.AsyncFunctionDef, qualname: str, path: str, lines: list[str]
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
        path=path,
        qualname=qualname,
        signature=signature,
        docstring=doc,
        source=source,
        body=body,
        identifiers=_identifiers(source),
        doctests=_doctests(doc, f"{module_name(path)}.{qualname}"),
        lineno=node.lineno,
    )


def extract_files(root: Path, paths: Iterable[str]) -> Iterator[CodeFunction]:
    """Functions of each module path under ``root``; files that do not parse are skipped."""
    for path in paths:
        try:
            source = (root / path).read_text(encoding="utf-8")
            with warnings.catch_warnings():  # old modules' invalid escapes in strings
                warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
                found = extract_module(source, path)
        except (SyntaxError, UnicodeDecodeError, ValueError, RecursionError):
            continue
        yield from found


#: Bumped when what :func:`extract_module` records changes (it is part of the cache key).
EXTRACTION_VERSION = 1


def corpus_key(root: Path, paths: tuple[str, ...]) -> str:
    """Cache key of a library: its folder, Python version, extraction version and every
    module's path, size and modification time."""
    stats = []
    for path in paths:
        st = (root / path).stat()
        stats.append((path, st.st_size, st.st_mtime_ns))
    return key_of(
        {"root": str(root), "python": sys.version, "v": EXTRACTION_VERSION, "files": stats}
    )


@cache
def library_functions(root: str | None = None) -> tuple[CodeFunction, ...]:
    """Every function of the library at ``root`` (default: this interpreter's standard
    library): read once per process, and cached on disk as verified JSON
    (:mod:`anyformer.tasks.cache`), keyed by the modules' paths, sizes and times."""
    folder = Path(root) if root else stdlib_root()
    paths = module_paths(folder)
    entry = cache_dir("code_corpus") / f"{corpus_key(folder, paths)}.json"
    text = read_verified(entry)
    if text is not None:
        try:
            return tuple(_from_record(r) for r in json.loads(text))
        except (ValueError, TypeError, KeyError):
            pass  # an entry from another layout: extract again
    functions = tuple(extract_files(folder, paths))
    write_verified(entry, json.dumps([dataclasses.asdict(f) for f in functions]))
    return functions


def _from_record(record: dict) -> CodeFunction:
    record = dict(record)
    record["identifiers"] = tuple(record["identifiers"])
    record["doctests"] = tuple((str(a), str(b)) for a, b in record["doctests"])
    return CodeFunction(**record)
