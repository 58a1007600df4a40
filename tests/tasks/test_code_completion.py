"""``completion_with_tests``: the pass@k estimator against hand computations, the batched
test harness (right and wrong bodies, hostile candidates contained and counted as
failures), synthetic problems whose reference bodies pass their own tests, held-out
prompts, stdlib problems, and an evaluation that runs sampled and planned bodies."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from code_library import write_code_library

from anyformer.tasks.base import Batch, rng_for
from anyformer.tasks.code_completion import CompletionParams, CompletionWithTests
from anyformer.tasks.code_execution import Candidate, pass_at_k, run_candidates
from anyformer.tasks.code_synth import (
    OOD_TEMPLATES,
    TRAIN_TEMPLATES,
    prompt_bucket,
    synthetic_problem,
)

TESTS = (("f([1, 2])\n", "[2, 4]\n"), ("f([])\n", "[]\n"))


def test_pass_at_k_matches_hand_computations() -> None:
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 - C(3,2)/C(5,2)
    assert pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)  # 1 - C(7,5)/C(10,5)
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(4, 3, 2) == 1.0  # one failure cannot fill 2 draws
    assert pass_at_k(7, 7, 1) == 1.0
    # pass@1 is the share correct; pass@n is "any correct"
    for n, c in [(9, 4), (20, 1)]:
        assert pass_at_k(n, c, 1) == pytest.approx(c / n)
        assert pass_at_k(n, c, n) == (1.0 if c else 0.0)
    # the estimator equals the exact probability that k draws without replacement
    # include a correct one, counted by brute force
    from itertools import combinations

    n, c, k = 6, 2, 3
    hits = [any(i < c for i in combo) for combo in combinations(range(n), k)]
    assert pass_at_k(n, c, k) == pytest.approx(sum(hits) / math.comb(n, k))
    with pytest.raises(ValueError, match="k <= n"):
        pass_at_k(3, 1, 4)


def test_hostile_candidates_are_contained_and_fail(tmp_path: Path) -> None:
    outside = tmp_path / "written_by_candidate.txt"
    good = "def f(xs):\n    return [v * 2 for v in xs]\n"
    cands = [
        Candidate(good, TESTS),
        Candidate("def f(xs):\n    while True:\n        pass\n", TESTS),  # loops forever
        Candidate(
            f"def f(xs):\n    open({str(outside)!r}, 'w').write('x')\n"
            f"    return [v * 2 for v in xs]\n",
            TESTS,
        ),  # fmt: skip
        Candidate("def f(xs):\n    print('RESULT-0 0 11')\n    return xs\n", TESTS),
        Candidate("import builtins\nbuiltins.len = None\n" + good, TESTS),
        Candidate("def f(xs) return\n", TESTS),  # does not compile
        Candidate("def f(xs):\n    import os\n    os._exit(0)\n", TESTS),  # kills the batch
        Candidate("def f(xs):\n    return [v * len(xs) for v in xs]\n", TESTS),
        Candidate(good, TESTS),
    ]
    flags = run_candidates(cands, per_candidate_seconds=0.2)
    assert flags[0] == [True, True]
    assert all(f == [False, False] for f in flags[1:7])
    # the candidates after the one that killed the process ran again and were judged
    # with the real builtins (the rebinding of len was undone)
    assert flags[7] == [True, True] and flags[8] == [True, True]
    assert not outside.exists()


def test_reference_bodies_pass_their_tests_and_plain_bodies_fail() -> None:
    rng = rng_for(0, 5)
    probs = [synthetic_problem(t, rng) for t in (*TRAIN_TEMPLATES, *OOD_TEMPLATES)]
    cands = [Candidate(p.source(), p.tests) for p in probs]
    cands += [Candidate(p.source("    return None\n"), p.tests) for p in probs]
    flags = run_candidates(cands)
    assert all(all(f) for f in flags[: len(probs)])
    assert not any(all(f) for f in flags[len(probs) :])
    for p in probs:  # public tests are in the prompt, hidden ones are not
        assert all(call.strip() in p.prompt for call, _ in p.public)
        assert not any(call.strip() in p.prompt for call, _ in p.hidden)


def test_splits_hold_out_prompts_and_templates() -> None:
    task = CompletionWithTests(CompletionParams(), 0)
    ids = task.problems("id", 20)
    assert all(prompt_bucket(p.prompt) < 10 for p in ids)
    train = [task._draw("train", rng_for(0, 0, s)) for s in range(50)]
    assert all(prompt_bucket(p.prompt) >= 10 for p in train)
    assert {p.template for p in task.problems("ood", 20)} <= {t.name for t in OOD_TEMPLATES}
    b = task.train_batch(0, 4)
    # the loss counts the body and the separator only
    for r in range(4):
        body = task.codec.decode(b.targets[r][b.loss_mask[r]].tolist())
        assert body.startswith("    return ") and b.targets[r][b.loss_mask[r]][-1] == 0


def test_k_above_samples_is_refused() -> None:
    from anyformer.errors import SpecError

    with pytest.raises(SpecError, match="task.k=6 must be <= task.samples=5"):
        CompletionWithTests(CompletionParams(k=6, samples=5), 0)


def _oracle(task: CompletionWithTests, right: bool):
    """A ``predict`` that puts all mass on the reference body's next token (``right``)
    or on a wrong one at every position after each row's prompt."""
    bodies = {}
    for split in ("id", "ood"):
        for p in task.problems(split, 4):
            bodies[tuple(task.codec.encode(p.prompt))] = task.codec.encode(p.body) + [0]

    def predict(batch: Batch) -> torch.Tensor:
        out = torch.full((*batch.inputs.shape, 256), -30.0)
        for r, row in enumerate(batch.inputs.tolist()):
            n = int(batch.padding_mask[r].sum())
            for prompt, body in bodies.items():
                if tuple(row[: len(prompt)]) == prompt:
                    for j in range(len(prompt) - 1, n):  # every position after the prompt
                        done = j + 1 - len(prompt)
                        tok = body[done] if done < len(body) else 0
                        out[r, j, tok if right else (tok + 1) % 256] = 30.0
        return out

    return predict


def test_evaluation_runs_sampled_and_planned_bodies() -> None:
    params = CompletionParams(samples=2, k=2, eval_problems=3, decode="plan", budget=40)
    task = CompletionWithTests(params, 0)
    m = task.evaluate(_oracle(task, True), "id", 3)
    assert m["pass@1"] == 1.0 and m["pass@2"] == 1.0
    assert m["plan_pass"] == 1.0 and m["filter_pass"] == 1.0
    assert 0 < m["plan_calls"] <= 40 and 0 < m["filter_calls"] <= 40
    assert m["baselines"]["return_none"]["pass@1"] == 0.0
    assert m["body_exact_match"] == 1.0
    # a model that is wrong at every token passes nothing
    task = CompletionWithTests(params.model_copy(update={"decode": "sample"}), 0)
    m = task.evaluate(_oracle(task, False), "id", 3)
    assert m["pass@1"] == 0.0 and m["body_token_accuracy"] == 0.0 and "plan_pass" not in m


def test_stdlib_source_reads_doctest_functions(tmp_path: Path) -> None:
    root = write_code_library(tmp_path / "lib", modules=24, per_module=2)
    paths = [*(tmp_path / "lib").glob("pkg*/mod*.py"), tmp_path / "lib" / "test" / "test_x.py"]
    for m, path in enumerate(paths):  # give every module a function with two doctests
        path.write_text(path.read_text() + (
            f'\n\ndef twice_{m}(x):\n    """Twice x.\n\n    >>> twice_{m}(2)\n    4\n'
            f'    >>> twice_{m}(5)\n    10\n    """\n    return 2 * x\n'))  # fmt: skip
    task = CompletionWithTests(CompletionParams(source="stdlib", root=str(root)), 0)
    probs = task.problems("id", 10)
    assert probs and all(p.template.startswith("twice_") for p in probs)
    p = probs[0]
    assert len(p.public) == 1 and len(p.hidden) == 1
    assert p.hidden[0][0].strip() not in p.prompt  # the hidden example left the docstring
    b = task.train_batch(0, 3)
    assert b.inputs.shape[1] <= task.max_seq_len()
