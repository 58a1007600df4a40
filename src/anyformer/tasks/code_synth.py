"""Programming problems for completion with tests: a synthetic Python subset, or the
standard library's doctest-bearing functions.

A :class:`Problem` is a function's ``prompt`` (its ``def`` line and docstring), the
``body`` to complete, ``public`` tests (shown in the docstring as ``>>>`` examples) and
``hidden`` tests (never shown), each test a doctest example ``(source, expected output)``.

Synthetic problems (:func:`synthetic_problem`) come from templates of one-line bodies
over a list of small integers (or one integer) with constants — ``[v * 3 for v in xs]``,
``sum(xs) + 4``, ``len([v for v in xs if v > 5])`` — drawn with a seeded generator. The
docstring names the operation in words but not its constants: the model reads them off
the two public examples, and four hidden inputs decide whether the program is right.
Templates are split: :data:`TRAIN_TEMPLATES` give training and ``id`` problems,
:data:`OOD_TEMPLATES` (new combinations of the same pieces) the ``ood`` ones. Expected
outputs come from each template's reference function (our own code, not generated).

Standard-library problems (:func:`stdlib_problems`): every top-level function with
doctest examples (read by :mod:`anyformer.tasks.code_corpus`, never imported here); the
first half of its examples (at least one) are public and stay in the docstring, the rest
are hidden and removed from it (a function with one example has it as both). Its tests
run over its module's globals (``module``).

Paper: PG-TD (Zhang et al., 2023, "Planning with Large Language Models for Code
Generation") evaluates on programming problems with public and hidden test cases; this
is that setting at a size a CPU model can learn.
"""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from anyformer.tasks.code_corpus import library_functions


@dataclass(frozen=True)
class Problem:
    """One completion problem; ``source(body)`` is the whole function for a body."""

    prompt: str
    body: str
    public: tuple[tuple[str, str], ...]
    hidden: tuple[tuple[str, str], ...]
    template: str
    module: str | None = None

    def source(self, body: str | None = None) -> str:
        return self.prompt + (self.body if body is None else body)

    @property
    def tests(self) -> tuple[tuple[str, str], ...]:
        """Every test, public then hidden."""
        return self.public + self.hidden


@dataclass(frozen=True)
class Template:
    """A body ``code`` with constants ``{a}``/``{b}`` drawn from ``ranges``, over ``arg``
    (``xs``: a list of small integers; ``x``: one integer), described by ``doc``;
    ``ref(arg, a, b)`` computes what the body returns."""

    name: str
    arg: str
    doc: str
    code: str
    ranges: tuple[tuple[int, int], ...]
    ref: Callable[..., object]


def _t(name: str, arg: str, doc: str, code: str, ranges: tuple[tuple[int, int], ...],
       ref: Callable[..., object]) -> Template:  # fmt: skip
    return Template(name, arg, doc, code, ranges, ref)


TRAIN_TEMPLATES: tuple[Template, ...] = (
    _t("scale", "xs", "Multiply every item by a constant.", "[v * {a} for v in xs]",
       ((2, 9),), lambda xs, a, b: [v * a for v in xs]),
    _t("shift", "xs", "Add a constant to every item.", "[v + {a} for v in xs]",
       ((1, 9),), lambda xs, a, b: [v + a for v in xs]),
    _t("keep_above", "xs", "Keep the items above a threshold.", "[v for v in xs if v > {a}]",
       ((1, 8),), lambda xs, a, b: [v for v in xs if v > a]),
    _t("count_above", "xs", "Count the items above a threshold.",
       "len([v for v in xs if v > {a}])", ((1, 8),),
       lambda xs, a, b: len([v for v in xs if v > a])),
    _t("total_plus", "xs", "Add a constant to the sum of the items.", "sum(xs) + {a}",
       ((1, 9),), lambda xs, a, b: sum(xs) + a),
    _t("largest_minus", "xs", "Subtract a constant from the largest item.", "max(xs) - {a}",
       ((1, 9),), lambda xs, a, b: max(xs) - a),
    _t("affine", "x", "Multiply the number by a constant, then add another.",
       "x * {a} + {b}", ((2, 5), (1, 9)), lambda x, a, b: x * a + b),
    _t("cap", "xs", "Cap every item at a limit.", "[min(v, {a}) for v in xs]",
       ((2, 8),), lambda xs, a, b: [min(v, a) for v in xs]),
)  # fmt: skip
OOD_TEMPLATES: tuple[Template, ...] = (
    _t("scale_above", "xs", "Multiply the items above a threshold by a constant.",
       "[v * {a} for v in xs if v > {b}]", ((2, 9), (1, 8)),
       lambda xs, a, b: [v * a for v in xs if v > b]),
    _t("total_times", "xs", "Multiply the sum of the items by a constant.", "sum(xs) * {a}",
       ((2, 9),), lambda xs, a, b: sum(xs) * a),
    _t("count_below", "xs", "Count the items below a threshold.",
       "len([v for v in xs if v < {a}])", ((2, 9),),
       lambda xs, a, b: len([v for v in xs if v < a])),
)  # fmt: skip
#: Public and hidden tests per synthetic problem.
N_PUBLIC, N_HIDDEN = 2, 4


def _input(arg: str, rng: np.random.Generator) -> object:
    if arg == "x":
        return int(rng.integers(0, 21))
    return rng.integers(0, 10, size=int(rng.integers(2, 6))).tolist()


def _docstring(summary: str, examples: tuple[tuple[str, str], ...]) -> str:
    lines = [summary, ""]
    for code, want in examples:
        lines.append(">>> " + code.rstrip("\n").replace("\n", "\n... "))
        lines.extend(want.rstrip("\n").split("\n"))
    return textwrap.indent('"""' + "\n".join(lines) + '\n"""\n', "    ")


def synthetic_problem(template: Template, rng: np.random.Generator) -> Problem:
    """A problem of ``template`` with constants and distinct test inputs from ``rng``."""
    consts = [int(rng.integers(lo, hi + 1)) for lo, hi in template.ranges]
    a, b = (consts + [0, 0])[:2]
    body = "    return " + template.code.format(a=a, b=b) + "\n"
    tests: list[tuple[str, str]] = []
    seen: set[str] = set()
    while len(tests) < N_PUBLIC + N_HIDDEN:
        x = _input(template.arg, rng)
        call = f"{template.name}({x!r})"
        if call in seen:
            continue
        seen.add(call)
        tests.append((call + "\n", repr(template.ref(x, a, b)) + "\n"))
    public, hidden = tuple(tests[:N_PUBLIC]), tuple(tests[N_PUBLIC:])
    prompt = f"def {template.name}({template.arg}):\n" + _docstring(template.doc, public)
    return Problem(prompt, body, public, hidden, template.name)


def prompt_bucket(prompt: str, buckets: int = 100) -> int:
    """A stable bucket ``0 .. buckets-1`` of a prompt (SHA-256): the held-out rule."""
    return int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "big") % buckets


def stdlib_problems(root: str | None = None) -> dict[str, list[Problem]]:
    """The doctest-bearing top-level functions of the library at ``root`` (default: the
    standard library) as problems, per split of ``stdlib_lm``'s module rule (``train``,
    ``id``, ``ood``; test suites are ``ood``), distinct prompts only."""
    from anyformer.tasks.text import module_split

    out: dict[str, list[Problem]] = {"train": [], "id": [], "ood": []}
    seen: set[str] = set()
    for f in library_functions(root):
        if "." in f.qualname or not f.doctests or f.docstring is None or not f.body.strip():
            continue
        split = module_split(f.path, 0.1, 0.0)
        if split not in out:
            continue
        n_public = max(1, len(f.doctests) // 2)
        public = f.doctests[:n_public]
        hidden = f.doctests[n_public:] or public
        summary = f.docstring.split(">>>")[0].rstrip()
        signature = f.signature if f.signature.endswith("\n") else f.signature + "\n"
        prompt = signature + _docstring(summary, public)
        if prompt in seen:
            continue
        seen.add(prompt)
        body = textwrap.indent(f.body if f.body.endswith("\n") else f.body + "\n", "    ")
        out[split].append(Problem(prompt, body, public, hidden, f.qualname, f.module))
    return out


__all__ = [
    "N_HIDDEN",
    "N_PUBLIC",
    "OOD_TEMPLATES",
    "TRAIN_TEMPLATES",
    "Problem",
    "Template",
    "prompt_bucket",
    "stdlib_problems",
    "synthetic_problem",
]
