"""Graph search: connectivity on random DAGs written as edge lists.

An example is a directed acyclic graph of ``n`` vertices given as a shuffled list of
edges, and a query ``(source, target)``. The answer is either the next vertex on the
path from source to target (``next_vertex``) or whether the target is reachable at all
(``connected``), optionally after a search trace. Batches hold one graph size each
(the ``group``); every row also carries the lookahead distance ``k`` between source
and target (``extras['distance']``), which is balanced (uniform) and is the x axis of
the curve.

Paper: Saparov et al., "Transformers Struggle to Learn to Search" (2024).
"""

from __future__ import annotations

import random
from collections import deque
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, ValidationInfo, field_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Batch, range_validators
from anyformer.tasks.baselines import class_baselines, with_baseline_series
from anyformer.tasks.sequence import FIRST_SYMBOL, PAD, FormParams, SequenceTask

SAPAROV = Paper("Transformers Struggle to Learn to Search", 2024, "Saparov et al.")
#: The parameters bounding the graph sizes: ``(min, max, ood_min, ood_max)``.
VERTEX_FIELDS = ("min_vertices", "max_vertices", "ood_min_vertices", "ood_max_vertices")


class GraphSearchParams(FormParams):
    """Graph search on random DAGs; the "length" of an example is its vertex count.

    - ``query``: ``next_vertex`` (answer: the source's unique child from which the
      target is reachable) or ``connected`` (answer: ``YES``/``NO``, half each).
    - ``min_vertices``, ``max_vertices``: training (and ``id``) graph sizes, inclusive
      (at least 3 for ``next_vertex``, 5 for ``connected``).
    - ``ood_min_vertices``, ``ood_max_vertices``: ``ood`` graph sizes, all larger than
      ``max_vertices``; vertex labels come from ``ood_max_vertices`` label tokens.
    - ``trace``: ``none``, or ``bfs``/``dfs``: the answer first lists the vertices a
      breadth-/depth-first search from the source visits (children in increasing label
      order) until it reaches the target (or runs out), then ``ANSWER`` and the result.
    - ``max_out_degree``: the most out-edges of a filler vertex (>= 1).
    - ``test_fraction``: share of prompts held out for ``id``, in (0, 0.5].
    - ``form``: the row layout (see :class:`~anyformer.tasks.sequence.FormParams`).
    """

    query: Literal["next_vertex", "connected"] = "next_vertex"
    min_vertices: int = Field(6, ge=3)
    max_vertices: int = Field(12, ge=3)
    ood_min_vertices: int = Field(14, ge=3)
    ood_max_vertices: int = Field(20, ge=3)
    trace: Literal["none", "bfs", "dfs"] = "none"
    max_out_degree: int = Field(2, ge=1)
    test_fraction: float = Field(0.1, gt=0.0, le=0.5)

    @field_validator("min_vertices")
    @classmethod
    def _room(cls, v: int, info: ValidationInfo) -> int:
        if info.data.get("query") == "connected" and v < 5:
            raise ValueError(
                f"min_vertices={v} must be >= 5 for query 'connected' (source, foreign root "
                f"and three chains)"
            )
        return v

    _max, _ood, _ood_max = range_validators(VERTEX_FIELDS)


@register(
    "task",
    "graph_search",
    paper=SAPAROV,
    summary="next vertex / reachability on random DAG edge lists; curve by distance",
    params=GraphSearchParams,
    caps=Capabilities(),
)
class GraphSearch(SequenceTask):
    """Search on random DAGs with a planted lookahead ``k`` (uniform in 1..k_max).

    A graph of ``n`` vertices holds the source ``s``, a goal chain
    ``s -> g_1 -> ... -> g_k``, a decoy chain ``s -> d_1 -> ... -> d_k`` of the same
    length, for ``connected`` also a foreign root ``c_0 -> c_1 -> ... -> c_k`` with
    ``c_0 -> d_1`` (a mirror image of ``s`` and its goal chain that ``s`` cannot
    reach), and filler vertices, each pointing to 1..``max_out_degree`` random later
    fillers, chain vertices or roots. Nothing reachable from ``s`` leads back to the
    fillers, so ``t = g_k`` is at distance exactly ``k`` from ``s`` and ``g_1`` is the
    only child of ``s`` that reaches it: ``next_vertex`` is well defined, and the two
    children look alike (one out-edge each, in-edges from fillers alike). For
    ``connected`` the target is ``g_k`` (``YES``) or ``c_k`` (``NO``), which look alike.
    ``k_max`` is ``(n - 1) // 2`` (``next_vertex``) or ``(n - 2) // 3``
    (``connected``).

    Vertices get distinct random labels among ``ood_max_vertices``; the prompt is
    ``EDGE u v`` per edge, in random order, then ``QUERY s t``. Tokens: labels
    ``FIRST_SYMBOL + i``, then ``EDGE``, ``QUERY``, ``ANSWER``, ``YES``, ``NO``. Rows
    differ in length (right-padded). With a trace, the loss covers the trace but exact
    match counts only the final answer. Not supported: Saparov et al.'s path-prefix
    prompts and their exact graph generator (this planted one is balanced by
    construction instead). Paper: Saparov et al., "Transformers Struggle to Learn to
    Search" (2024).
    """

    params: GraphSearchParams  # type: ignore[assignment]
    enumerate_prompts: ClassVar[bool] = False
    extra_tokens: ClassVar[int] = 5
    length_name: ClassVar[str] = "vertices"
    range_fields: ClassVar[tuple[str, str, str, str]] = VERTEX_FIELDS

    @property
    def alphabet(self) -> int:
        return self.params.ood_max_vertices

    @property
    def edge_token(self) -> int:
        return FIRST_SYMBOL + self.alphabet

    @property
    def query_token(self) -> int:
        return self.edge_token + 1

    @property
    def answer_token(self) -> int:
        return self.edge_token + 2

    @property
    def yes_token(self) -> int:
        return self.edge_token + 3

    @property
    def no_token(self) -> int:
        return self.edge_token + 4

    def answer_classes(self) -> int | None:
        """2: the source's two children (goal and decoy chain) for ``next_vertex``,
        ``YES``/``NO`` for ``connected``."""
        return 2

    def max_distance(self, n: int) -> int:
        """The largest lookahead a graph of ``n`` vertices is built with."""
        if self.params.query == "connected":
            return (n - 2) // 3
        return (n - 1) // 2

    def widths(self, n: int) -> tuple[int, int]:
        """Most prompt and answer tokens of a graph of ``n`` vertices."""
        edges = n * max(2, self.params.max_out_degree)
        answer = 1 if self.params.trace == "none" else n + 2
        return 3 * edges + 3, answer

    # ------------------------------------------------------------ data
    def sample(self, length: int, n: int, rng: np.random.Generator) -> np.ndarray:
        """Raw rows ``[n, P + A + 1]``: prompt and answer tokens (PAD-padded), then ``k``."""
        py = random.Random(int(rng.integers(1 << 62)))
        p_width, a_width = self.widths(length)
        raw = np.full((n, p_width + a_width + 1), PAD, dtype=np.int64)
        for i in range(n):
            prompt, answer, k = self._example(length, py)
            raw[i, : len(prompt)] = prompt
            raw[i, p_width : p_width + len(answer)] = answer
            raw[i, -1] = k
        return raw

    def _example(self, n: int, py: random.Random) -> tuple[list[int], list[int], int]:
        p = self.params
        connected = p.query == "connected"
        k = py.randint(1, self.max_distance(n))
        # internal ids: 0 = s, then the goal, decoy and (connected) foreign chains, fillers
        goal = list(range(1, k + 1))
        decoy = list(range(k + 1, 2 * k + 1))
        # connected: a foreign root c_0 -> c_1 .. c_k that also points to d_1, a mirror
        # image of s -> g_1 .. g_k
        foreign = list(range(2 * k + 1, 3 * k + 2)) if connected else []
        fillers = list(range(1 + 2 * k + len(foreign), n))
        edges = {(0, goal[0]), (0, decoy[0])}
        for chain in (goal, decoy, foreign):
            edges.update(zip(chain, chain[1:]))
        if connected:
            edges.add((foreign[0], decoy[0]))
        chains = [0, *goal, *decoy, *foreign]
        for i, f in enumerate(fillers):
            targets = fillers[i + 1 :] + chains
            for target in py.sample(targets, min(len(targets), py.randint(1, p.max_out_degree))):
                edges.add((f, target))
        positive = not connected or py.random() < 0.5
        target = goal[-1] if positive else foreign[-1]
        labels = py.sample(range(self.alphabet), n)
        edge_list = sorted(edges)
        py.shuffle(edge_list)
        tok = [FIRST_SYMBOL + lab for lab in labels]
        prompt = [t for u, v in edge_list for t in (self.edge_token, tok[u], tok[v])]
        prompt += [self.query_token, tok[0], tok[target]]
        yes_no = self.yes_token if positive else self.no_token
        result = yes_no if connected else tok[goal[0]]
        if p.trace == "none":
            return prompt, [result], k
        children: dict[int, list[int]] = {v: [] for v in range(n)}
        for u, v in edge_list:
            children[u].append(v)
        for u in children:
            children[u].sort(key=lambda v: labels[v])
        visited = search_order(children, 0, target, p.trace)
        return prompt, [tok[v] for v in visited] + [self.answer_token, result], k

    def render(self, raw: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
        p_width, _ = self.widths(length)
        return raw[:, :p_width], raw[:, p_width:-1]

    def scored_answer(self, answer: np.ndarray, length: int) -> np.ndarray | None:
        if self.params.trace == "none":
            return None
        last = (answer != PAD).sum(axis=1) - 1
        return np.arange(answer.shape[1])[None, :] == last[:, None]

    def make_batch(self, raw: np.ndarray, length: int) -> Batch:
        batch = super().make_batch(raw, length)
        batch.extras["distance"] = torch.from_numpy(raw[:, -1].copy())
        return batch

    # ------------------------------------------------------------ metrics
    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """:meth:`SequenceTask.score` (``by_length``: per graph size) plus
        ``by_distance`` (exact match per lookahead ``k``), which is also the curve, with
        the baselines' ``by_distance`` beside it."""
        metrics = super().score(outputs, batches)
        counts: dict[int, list[int]] = {}
        for out, batch in zip(outputs, batches):
            exact, _, _ = self.row_exact(out, batch)
            for k, ok in zip(batch.extras["distance"].tolist(), exact.tolist()):
                c = counts.setdefault(int(k), [0, 0])
                c[0] += int(ok)
                c[1] += 1
        by_distance = {str(k): counts[k][0] / counts[k][1] for k in sorted(counts)}
        metrics["by_distance"] = by_distance
        curve = {"x": "distance", "y": "exact_match", "series": {"model": dict(by_distance)},
                 "n": {str(k): counts[k][1] for k in sorted(counts)}}  # fmt: skip
        if batches:
            labels = torch.cat([self.answer_labels(b) for b in batches])
            distances = torch.cat([b.extras["distance"] for b in batches])
            by_k = class_baselines(labels, 2, distances, by="by_distance")
            for name, baseline in metrics["baselines"].items():
                baseline["by_distance"] = by_k[name]["by_distance"]
            curve = with_baseline_series(curve, metrics["baselines"], "by_distance")
        metrics["curve"] = curve
        return metrics


def search_order(children: dict[int, list[int]], source: int, target: int, kind: str) -> list[int]:
    """The vertices a BFS or DFS from ``source`` visits, in order, up to ``target``.

    ``children`` lists each vertex's out-neighbours in the order they are explored.
    The list ends with ``target`` when it is reachable, else holds every reachable
    vertex.
    """
    order: list[int] = []
    if kind == "bfs":
        seen, queue = {source}, deque([source])
        while queue:
            v = queue.popleft()
            order.append(v)
            if v == target:
                break
            for c in children[v]:
                if c not in seen:
                    seen.add(c)
                    queue.append(c)
        return order
    done: set[int] = set()
    stack = [source]
    while stack:
        v = stack.pop()
        if v in done:
            continue
        done.add(v)
        order.append(v)
        if v == target:
            break
        stack.extend(c for c in reversed(children[v]) if c not in done)
    return order
