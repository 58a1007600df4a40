"""Test-guided decoding: PG-TD tree search, and sampling with filtering, at equal model calls.

Planning-Guided Transformer Decoding (Zhang et al., 2023, "Planning with Large Language
Models for Code Generation") searches over a program's tokens with Monte-Carlo tree
search instead of sampling them:

- a node is a prefix of the program; its children are the model's ``width`` most likely
  next tokens, with the model's probabilities as priors;
- **selection** descends by P-UCB, ``Q(s, a) + c * P(a | s) * sqrt(N(s)) / (1 + N(s, a))``,
  where ``Q`` is the best reward found below the child (the environment is
  deterministic, so PG-TD backs up the maximum);
- **expansion** asks the model for the leaf's next-token distribution;
- **evaluation** completes the leaf greedily (the rollout) and runs the program on the
  problem's *public* tests: the reward is the share it passes;
- **backup** adds a visit and raises ``Q`` to the reward along the path.

The answer is the best program found (highest public reward, first found on ties).
The baseline (:func:`sample_filter`) samples whole programs at a temperature and keeps
the one that passes most public tests. Both stop early once a program passes every
public test. *Hidden* tests, never seen by either, decide the reported pass rate.

Model calls are counted the same way for both: one call is one next-token distribution
of one prefix (one forward step of one row, as cached decoding costs it). Distributions
are kept per problem, so a prefix seen before (a shared beginning, a rollout that
retraces the tree — PG-TD's sequence cache) costs nothing in either; each search stops
before a request that would exceed its ``budget``. Programs already run keep their reward.

Both are written as generators that yield requests — ``("lm", [prefixes])`` for
next-token log-probabilities, ``("run", [programs])`` for public rewards — so
:func:`drive` can advance many problems in lockstep: the model sees one batch of every
problem's prefixes, and the sandbox one batch of every problem's programs, per round.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any

import torch

Prefix = tuple[int, ...]
#: What a search yields: ("lm", prefixes) or ("run", programs), both lists of prefixes.
Request = tuple[str, list[Prefix]]
Search = Generator[Request, list[Any], "SearchResult"]


@dataclass
class SearchResult:
    """The best program a search found (``None``: none completed), its public reward,
    the model calls it spent and the programs it ran."""

    best: Prefix | None
    reward: float
    calls: int
    programs: int


@dataclass
class _Memo:
    """Per problem: next-token log-probs per prefix, rewards per program, calls spent."""

    budget: int
    dists: dict[Prefix, torch.Tensor] = field(default_factory=dict)
    rewards: dict[Prefix, float] = field(default_factory=dict)
    calls: int = 0
    best: Prefix | None = None
    best_reward: float = -1.0

    def result(self) -> SearchResult:
        return SearchResult(self.best, max(self.best_reward, 0.0), self.calls, len(self.rewards))


def _dists(memo: _Memo, prefixes: list[Prefix]) -> Generator[Request, list[Any], bool]:
    """Make sure every prefix has its distribution; False (nothing asked) when the misses
    would exceed the budget."""
    misses = list(dict.fromkeys(p for p in prefixes if p not in memo.dists))
    if not misses:
        return True
    if memo.calls + len(misses) > memo.budget:
        return False
    got = yield ("lm", misses)
    for p, d in zip(misses, got, strict=True):
        memo.dists[p] = d
    memo.calls += len(misses)
    return True


def _rewards(memo: _Memo, programs: list[Prefix]) -> Generator[Request, list[Any], list[float]]:
    """Public rewards of ``programs`` (run once each); updates the best program."""
    new = list(dict.fromkeys(p for p in programs if p not in memo.rewards))
    if new:
        got = yield ("run", new)
        for p, r in zip(new, got, strict=True):
            memo.rewards[p] = float(r)
            if r > memo.best_reward:
                memo.best, memo.best_reward = p, float(r)
    return [memo.rewards[p] for p in programs]


def _done(prefix: Prefix, eos: int, max_new: int) -> bool:
    return (bool(prefix) and prefix[-1] == eos) or len(prefix) >= max_new


@dataclass
class _Node:
    prefix: Prefix
    visits: int = 0
    value: float = 0.0
    children: dict[int, _Node] | None = None
    priors: dict[int, float] = field(default_factory=dict)


#: Iterations cost no model call when they retrace cached prefixes or reselect a program
#: already run (which still raises the exploration bonus of its siblings), so the search
#: runs until its budget of calls is spent; this only stops one that never spends it.
MAX_ITERATIONS_PER_CALL = 64


def pg_td(eos: int, max_new: int, budget: int, width: int = 3, c_puct: float = 4.0) -> Search:
    """PG-TD on one problem (see the module docstring): ``width`` children per node,
    exploration constant ``c_puct``, greedy rollouts, at most ``budget`` model calls."""
    memo = _Memo(budget)
    root = _Node(())
    for _ in range(MAX_ITERATIONS_PER_CALL * max(1, budget)):
        node, path = root, [root]
        while node.children is not None and not _done(node.prefix, eos, max_new):
            parent = node
            sq = math.sqrt(max(parent.visits, 1))

            def score(tok: int, p: _Node = parent, s: float = sq) -> float:
                child = p.children[tok]  # type: ignore[index]
                return child.value + c_puct * p.priors[tok] * s / (1 + child.visits)

            node = parent.children[max(parent.children, key=score)]
            path.append(node)
        prefix = node.prefix
        if not _done(prefix, eos, max_new):
            if not (yield from _dists(memo, [prefix])):
                break
            if node.children is None:
                probs = memo.dists[prefix].exp()
                top = probs.topk(min(width, probs.shape[-1]))
                node.priors = {int(t): float(p) for p, t in zip(top.values, top.indices)}
                node.children = {t: _Node((*prefix, t)) for t in node.priors}
            # greedy rollout
            while not _done(prefix, eos, max_new):
                if not (yield from _dists(memo, [prefix])):
                    return memo.result()
                prefix = (*prefix, int(memo.dists[prefix].argmax()))
        (reward,) = yield from _rewards(memo, [prefix])
        for n in path:
            n.visits += 1
            n.value = max(n.value, reward)
        if memo.best_reward >= 1.0:
            break
    return memo.result()


def sample_filter(
    eos: int,
    max_new: int,
    budget: int,
    temperature: float,
    generator: torch.Generator,
    group: int = 8,
) -> Search:
    """Sampling with filtering on one problem: ``group`` programs at a time, sampled at
    ``temperature`` (with ``generator``), until the budget of model calls is spent or a
    program passes every public test; the best by public reward is the answer."""
    memo = _Memo(budget)
    while memo.calls < budget:
        rows: list[Prefix] = [() for _ in range(group)]
        live = list(range(group))
        while live:
            need = [rows[i] for i in live]
            misses = list(dict.fromkeys(p for p in need if p not in memo.dists))
            room = budget - memo.calls
            if len(misses) > room:  # rows whose prefix cannot be afforded are dropped
                afford = set(misses[:room])
                live = [i for i in live if rows[i] in memo.dists or rows[i] in afford]
                need = [rows[i] for i in live]
            if not live:
                break
            yield from _dists(memo, need)
            for i in live:
                logits = memo.dists[rows[i]] / temperature
                tok = int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
                rows[i] = (*rows[i], tok)
            live = [i for i in live if not _done(rows[i], eos, max_new)]
        finished = [r for r in rows if _done(r, eos, max_new)]
        if not finished:
            break
        yield from _rewards(memo, finished)
        if memo.best_reward >= 1.0:
            break
    return memo.result()


def drive(
    searches: list[Search],
    logprobs: Callable[[list[tuple[int, Prefix]]], list[torch.Tensor]],
    rewards: Callable[[list[tuple[int, Prefix]]], list[float]],
) -> list[SearchResult]:
    """Run the searches (one per problem, indexed as in the list) in lockstep: all model
    requests are answered as one ``logprobs([(problem, prefix), ...])`` call per round
    until every live search waits for the sandbox; then every program goes to one
    ``rewards([(problem, program), ...])`` call."""
    results: list[SearchResult | None] = [None] * len(searches)
    pending: dict[int, Request] = {}

    def advance(i: int, answer: list[Any] | None) -> None:
        try:
            pending[i] = searches[i].send(answer)  # type: ignore[arg-type]
        except StopIteration as stop:
            pending.pop(i, None)
            results[i] = stop.value

    for i in range(len(searches)):
        advance(i, None)
    while pending:
        lm = [i for i, r in pending.items() if r[0] == "lm"]
        asked = lm or [i for i, r in pending.items() if r[0] == "run"]
        flat = [(i, p) for i in asked for p in pending[i][1]]
        answers = logprobs(flat) if lm else rewards(flat)
        start = 0
        for i in asked:
            n = len(pending[i][1])
            advance(i, list(answers[start : start + n]))
            start += n
    return [r if r is not None else SearchResult(None, 0.0, 0, 0) for r in results]


__all__ = ["Prefix", "SearchResult", "drive", "pg_td", "sample_filter"]
