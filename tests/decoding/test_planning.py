"""PG-TD and sampling with filtering on a toy model whose right program is not its
greedy one: planning finds it from the public reward, model calls are counted once per
new prefix and never exceed the budget, and ``drive`` batches many problems."""

from __future__ import annotations

import torch

from anyformer.decoding.planning import Prefix, drive, pg_td, sample_filter

EOS, VOCAB, MAX_NEW = 0, 4, 3


def toy_lm(calls: list[int]):
    """Next token: 1 (p 0.6), 2 (0.3), 3 (0.05), EOS (0.05) before 2 tokens; EOS after."""

    def lm(requests: list[tuple[int, Prefix]]) -> list[torch.Tensor]:
        calls.append(len(requests))
        out = []
        for _, prefix in requests:
            p = torch.tensor([0.05, 0.6, 0.3, 0.05]) if len(prefix) < 2 else torch.tensor(
                [0.97, 0.01, 0.01, 0.01])  # fmt: skip
            out.append(p.log())
        return out

    return lm


def reward_of(target: Prefix):
    """Public reward: 1 for ``target``, 0.5 for a program starting with its first token."""

    def rewards(requests: list[tuple[int, Prefix]]) -> list[float]:
        return [1.0 if p == target else 0.5 if p[:1] == target[:1] else 0.0
                for _, p in requests]  # fmt: skip

    return rewards


def test_planning_finds_the_program_greedy_misses_within_the_budget() -> None:
    calls: list[int] = []
    target = (2, 2, EOS)
    (res,) = drive([pg_td(EOS, MAX_NEW, budget=12, width=3)], toy_lm(calls), reward_of(target))
    assert res.best == target and res.reward == 1.0
    # every distribution asked is a new prefix: calls counted equal those the model saw
    assert res.calls == sum(calls) <= 12
    # the greedy program (1, 1, EOS) was tried first and rejected
    assert res.programs >= 2


def test_budget_is_never_exceeded_and_no_prefix_is_asked_twice() -> None:
    for budget in (1, 2, 3, 5, 8):
        seen: list[Prefix] = []

        def lm(requests: list[tuple[int, Prefix]], seen: list[Prefix] = seen) -> list[torch.Tensor]:
            seen.extend(p for _, p in requests)
            return toy_lm([])(requests)

        gen = torch.Generator().manual_seed(0)
        searches = [pg_td(EOS, MAX_NEW, budget), sample_filter(EOS, MAX_NEW, budget, 1.0, gen)]
        results = drive(searches, lm, reward_of((3, 3, EOS)))
        assert all(r.calls <= budget for r in results)
        assert sum(r.calls for r in results) == len(seen)


def test_sampling_with_filtering_keeps_the_best_public_program() -> None:
    gen = torch.Generator().manual_seed(0)
    target = (1, 2, EOS)
    (res,) = drive([sample_filter(EOS, MAX_NEW, 200, 1.0, gen)], toy_lm([]), reward_of(target))
    assert res.best == target and res.reward == 1.0 and res.calls <= 200


def test_drive_batches_problems_in_lockstep() -> None:
    lm_rounds: list[int] = []
    run_rounds: list[int] = []
    rewards = reward_of((2, 2, EOS))

    def counted(requests: list[tuple[int, Prefix]]) -> list[float]:
        run_rounds.append(len({i for i, _ in requests}))
        return rewards(requests)

    results = drive([pg_td(EOS, MAX_NEW, 12) for _ in range(5)], toy_lm(lm_rounds), counted)
    assert all(r.best == (2, 2, EOS) for r in results)
    # identical problems advance together: every sandbox round holds all five
    assert run_rounds and all(n == 5 for n in run_rounds)
    assert max(lm_rounds) == 5


def test_planning_spends_its_budget_on_a_deep_decision() -> None:
    """The right token is the second choice 9 tokens deep and every other program earns
    the same partial reward; retracing cached prefixes costs no calls, so the search goes
    on until it spends its budget or finds the program."""
    depth, max_new = 9, 11

    def lm(requests: list[tuple[int, Prefix]]) -> list[torch.Tensor]:
        out = []
        for _, prefix in requests:
            if len(prefix) >= max_new - 1:
                p = torch.tensor([0.97, 0.01, 0.01, 0.01])
            else:
                p = torch.tensor([0.01, 0.7, 0.25, 0.04])
            out.append(p.log())
        return out

    target = (*([1] * depth), 2, EOS)

    def rewards(requests: list[tuple[int, Prefix]]) -> list[float]:
        return [1.0 if p == target else 0.5 for _, p in requests]

    (res,) = drive([pg_td(EOS, max_new, budget=60)], lm, rewards)
    assert res.best != target and res.calls == 60  # spent, not stopped early
    (res,) = drive([pg_td(EOS, max_new, budget=300)], lm, rewards)
    assert res.best == target and res.calls <= 300
