"""Synthesized bugs: every mutation changes the syntax tree, is recorded and seeded;
doctests run in the sandbox tell behaviour-changing mutants from equivalent ones."""

from __future__ import annotations

import ast
import textwrap

import pytest

from anyformer.tasks.code_corpus import extract_files
from anyformer.tasks.code_mutations import KINDS, behaviour_changed, mutate
from anyformer.tasks.sandbox import SandboxLimits
from anyformer.tasks.text import stdlib_root

FUNCTION = textwrap.dedent('''
    def total(items, limit):
        """Sum of the first items below the limit.

        >>> total([1, 2, 3, 4], 10)
        6
        """
        result = 0
        for i in range(0, 3):
            if items[i] < limit and i >= 0:
                result = result + items[i]
        return result
''')


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_the_tree_and_records_the_change(kind: str) -> None:
    mutant = mutate(FUNCTION, kind, seed=0)
    assert mutant is not None and mutant.kind == kind
    assert ast.dump(ast.parse(mutant.source)) != ast.dump(ast.parse(FUNCTION))
    assert mutant.detail and mutant.lineno >= 2
    assert mutate(FUNCTION, kind, seed=0) == mutant  # seeded
    places = {mutate(FUNCTION, kind, seed=s).source for s in range(8)}  # type: ignore[union-attr]
    if kind in ("operator_swap", "off_by_one", "wrong_variable", "dropped_statement"):
        assert len(places) > 1  # seeds choose among the places a kind applies


def test_recorded_details_say_what_changed() -> None:
    swap = mutate(FUNCTION, "operator_swap", seed=0)
    assert swap is not None and " -> " in swap.detail
    obo = mutate(FUNCTION, "off_by_one", seed=0)
    assert obo is not None and obo.detail in {"0 -> 1", "0 -> -1", "3 -> 4", "3 -> 2"}


def test_a_kind_with_nowhere_to_apply_gives_none() -> None:
    plain = "def f(x):\n    return x\n"
    assert mutate(plain, "off_by_one", 0) is None
    assert mutate(plain, "negated_condition", 0) is None
    assert mutate(plain, "dropped_statement", 0) is None
    with pytest.raises(ValueError, match="unknown"):
        mutate(plain, "typo", 0)


def test_doctests_in_the_sandbox_detect_a_changed_behaviour() -> None:
    examples = (("total([1, 2, 3, 4], 10)\n", "6\n"),)
    swapped = FUNCTION.replace("result + items[i]", "result - items[i]")
    assert behaviour_changed(FUNCTION, swapped, "math", examples) is True
    same = FUNCTION.replace("and i >= 0", "and 0 <= i")  # an equivalent rewrite
    assert behaviour_changed(FUNCTION, same, "math", examples) is False
    loops = FUNCTION.replace("for i in range(0, 3):", "while True:\n        i = 0")
    quick = SandboxLimits(wall_seconds=5, cpu_seconds=1)
    assert behaviour_changed(FUNCTION, loops, "math", examples, quick) is True  # never ends
    wrong = (("total([1], 10)\n", "99\n"),)
    assert behaviour_changed(FUNCTION, swapped, "math", wrong) is None  # original fails


def test_every_mutation_of_real_library_code_changes_its_tree() -> None:
    functions = list(extract_files(stdlib_root(), ["json/decoder.py", "fractions.py"]))
    made = 0
    for f in functions[:60]:
        before = ast.dump(ast.parse(f.source))
        for kind in KINDS:
            mutant = mutate(f.source, kind, seed=1)
            if mutant is not None:
                made += 1
                assert ast.dump(ast.parse(mutant.source)) != before, (f.qualname, kind)
    assert made > 100
