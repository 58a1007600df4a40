"""Synthesized bugs: small, typed mutations of a function's syntax tree.

Each mutation kind changes one place of a function, chosen by a seeded generator among
the places where it applies, and returns the mutated source (``ast.unparse``) with a
record of what changed:

- ``operator_swap``: a binary or comparison operator replaced by its usual confusion
  (``+``/``-``, ``*``/``/``, ``<``/``<=``, ``>``/``>=``, ``==``/``!=``, ``and``/``or``);
- ``off_by_one``: an integer constant ``n`` in a ``range(...)`` call or a subscript
  becomes ``n + 1`` or ``n - 1``;
- ``wrong_variable``: a read of a local name replaced by another name the function reads
  or binds (the "wrong variable of the same kind" of the bug-detection literature);
- ``negated_condition``: the test of an ``if``/``while``/conditional expression wrapped
  in ``not (...)``;
- ``dropped_statement``: one statement of a block with more than one removed.

A mutation never leaves the tree unchanged (:func:`mutate` compares ``ast.dump`` of the
two trees, so it is a change of syntax, not of formatting); whether it changes
*behaviour* is checked separately by running the function's doctests in the sandbox
(:func:`behaviour_changed`). These are the bug kinds of AIBugHunter's typed
classification and MultiMend's repair data, at the scale of the standard library.
"""

from __future__ import annotations

import ast
import copy
import random
import textwrap
from dataclasses import dataclass

from anyformer.tasks.sandbox import SandboxLimits, run_python

KINDS = (
    "operator_swap",
    "off_by_one",
    "wrong_variable",
    "negated_condition",
    "dropped_statement",
)

_BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
               ast.FloorDiv: ast.Mod, ast.Mod: ast.FloorDiv}  # fmt: skip
_CMP_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt,
             ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is,
             ast.In: ast.NotIn, ast.NotIn: ast.In}  # fmt: skip
_BOOL_SWAP = {ast.And: ast.Or, ast.Or: ast.And}


@dataclass(frozen=True)
class Mutation:
    """A mutated function: its source, the kind and a description of the change."""

    kind: str
    source: str
    lineno: int  # line of the changed node in the original function
    detail: str


def _sites(tree: ast.AST, kind: str) -> list[tuple[ast.AST, str]]:
    """Places ``kind`` applies to, in ``ast.walk`` order, with a description each."""
    sites: list[tuple[ast.AST, str]] = []
    if kind == "operator_swap":
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and type(node.op) in _BINOP_SWAP:
                sites.append((node, type(node.op).__name__))
            elif isinstance(node, ast.Compare) and type(node.ops[0]) in _CMP_SWAP:
                sites.append((node, type(node.ops[0]).__name__))
            elif isinstance(node, ast.BoolOp):
                sites.append((node, type(node.op).__name__))
    elif kind == "off_by_one":
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "range":
                sites += [(a, "range") for a in node.args if _is_int(a)]
            elif isinstance(node, ast.Subscript):
                inner = node.slice
                parts = [inner.lower, inner.upper] if isinstance(inner, ast.Slice) else [inner]
                sites += [(p, "index") for p in parts if p is not None and _is_int(p)]
    elif kind == "wrong_variable":
        names = _local_names(tree)
        if len(names) >= 2:
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Name)
                    and isinstance(node.ctx, ast.Load)
                    and node.id in names
                ):
                    sites.append((node, node.id))
    elif kind == "negated_condition":
        for node in ast.walk(tree):
            if isinstance(node, ast.If | ast.While | ast.IfExp):
                sites.append((node, type(node).__name__))
    elif kind == "dropped_statement":
        for node in ast.walk(tree):
            for field in ("body", "orelse", "finalbody"):
                block = getattr(node, field, None)
                if isinstance(block, list) and len(block) > 1 and isinstance(block[0], ast.stmt):
                    sites += [(stmt, f"{field}[{i}]") for i, stmt in enumerate(block)
                              if not _is_docstring(node, i)]  # fmt: skip
    else:
        raise ValueError(f"mutation kind '{kind}' is unknown; valid: {list(KINDS)}")
    return sites


def _is_int(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Constant) and type(node.value) is int
    ) or (  # -1 is UnaryOp(USub, 1)
        isinstance(node, ast.UnaryOp)
        and isinstance(node.op, ast.USub)
        and isinstance(node.operand, ast.Constant)
        and type(node.operand.value) is int
    )


def _int_value(node: ast.AST) -> int:
    if isinstance(node, ast.Constant):
        return int(node.value)
    return -int(node.operand.value)  # type: ignore[attr-defined]


def _is_docstring(parent: ast.AST, index: int) -> bool:
    if index != 0 or not isinstance(parent, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        return False
    first = parent.body[0]
    return isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant)


def _local_names(tree: ast.AST) -> list[str]:
    """Parameters and names the function binds, sorted (candidates for a swap)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return sorted(names)


def _apply(target: ast.AST, kind: str, tree: ast.AST, rng: random.Random) -> str:
    """Mutate ``target`` (a node of ``tree``) in place; returns a description."""
    if kind == "operator_swap":
        if isinstance(target, ast.Compare):
            old = type(target.ops[0])
            target.ops[0] = _CMP_SWAP[old]()
            return f"{old.__name__} -> {type(target.ops[0]).__name__}"
        table = _BINOP_SWAP if isinstance(target, ast.BinOp) else _BOOL_SWAP
        old = type(target.op)  # type: ignore[attr-defined]
        target.op = table[old]()  # type: ignore[attr-defined]
        return f"{old.__name__} -> {type(target.op).__name__}"  # type: ignore[attr-defined]
    if kind == "off_by_one":
        value = _int_value(target)
        new = value + rng.choice((-1, 1))
        replacement = ast.Constant(new) if new >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(-new))
        _replace(tree, target, replacement)
        return f"{value} -> {new}"
    if kind == "wrong_variable":
        old = target.id  # type: ignore[attr-defined]
        others = [n for n in _local_names(tree) if n != old]
        target.id = rng.choice(others)  # type: ignore[attr-defined]
        return f"{old} -> {target.id}"  # type: ignore[attr-defined]
    if kind == "negated_condition":
        target.test = ast.UnaryOp(ast.Not(), target.test)  # type: ignore[attr-defined]
        return f"not (...) in {type(target).__name__}"
    if kind == "dropped_statement":
        for node in ast.walk(tree):
            for field in ("body", "orelse", "finalbody"):
                block = getattr(node, field, None)
                if isinstance(block, list) and any(s is target for s in block):
                    setattr(node, field, [s for s in block if s is not target])
                    return f"dropped {type(target).__name__}"
    raise AssertionError(kind)


def _replace(tree: ast.AST, old: ast.AST, new: ast.AST) -> None:
    for node in ast.walk(tree):
        for field, value in ast.iter_fields(node):
            if value is old:
                setattr(node, field, new)
                return
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if item is old:
                        value[i] = new
                        return


def mutate(source: str, kind: str, seed: int) -> Mutation | None:
    """``source`` (one function) with one ``kind`` mutation chosen by ``seed``, or None
    where ``kind`` has no place to apply (or every try left the tree unchanged)."""
    tree = ast.parse(textwrap.dedent(source))
    original = ast.dump(tree)
    rng = random.Random(f"{seed}:{kind}")
    count = len(_sites(tree, kind))
    for index in rng.sample(range(count), count):
        work = copy.deepcopy(tree)
        target, _ = _sites(work, kind)[index]
        lineno = getattr(target, "lineno", 0)
        detail = _apply(target, kind, work, rng)
        ast.fix_missing_locations(work)
        if ast.dump(work) != original:
            return Mutation(kind, ast.unparse(work) + "\n", lineno, detail)
    return None


def _example_text(code: str, want: str) -> str:
    lines = code.rstrip("\n").split("\n")
    return ">>> " + lines[0] + "".join("\n... " + line for line in lines[1:]) + "\n" + want


def doctest_program(source: str, module: str, examples: tuple[tuple[str, str], ...]) -> str:
    """A program that imports ``module`` (for the function's globals: its imports and
    helpers), defines ``source`` over a copy of them, and runs each doctest example
    against it; it prints one line per example, ``PASS`` or ``FAIL``."""
    texts = [_example_text(code, want) for code, want in examples]
    return textwrap.dedent(
        f"""
        import doctest, importlib
        base = dict(vars(importlib.import_module({module!r})))
        exec(compile({source!r}, "<function>", "exec"), base)
        parser = doctest.DocTestParser()
        for i, text in enumerate({texts!r}):
            test = parser.get_doctest(text, dict(base), f"ex{{i}}", None, 0)
            runner = doctest.DocTestRunner(verbose=False, optionflags=doctest.ELLIPSIS)
            runner.run(test, out=lambda s: None)
            print("FAIL" if runner.failures else "PASS")
        """
    )


def doctest_outcomes(
    source: str,
    module: str,
    examples: tuple[tuple[str, str], ...],
    limits: SandboxLimits | None = None,
) -> list[bool] | None:
    """Pass/fail of each doctest example against ``source`` run in the sandbox, or None
    when the program did not finish (timeout, limits, blocked operation)."""
    program = doctest_program(source, module, examples)
    result = run_python(program, limits or SandboxLimits(wall_seconds=10))
    if not result.ok:
        return None
    marks = result.stdout.split()
    return [m == "PASS" for m in marks] if len(marks) == len(examples) else None


def behaviour_changed(
    original: str,
    mutated: str,
    module: str,
    examples: tuple[tuple[str, str], ...],
    limits: SandboxLimits | None = None,
) -> bool | None:
    """Whether the mutation changes what the doctests see: True when an example the
    original passes fails on the mutant (or the mutant does not finish), False when the
    outcomes are equal, None when the original itself does not pass its examples here."""
    before = doctest_outcomes(original, module, examples, limits)
    if before is None or not all(before):
        return None
    after = doctest_outcomes(mutated, module, examples, limits)
    return after is None or not all(after)
