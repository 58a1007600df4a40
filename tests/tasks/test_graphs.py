"""Behaviour of graph_search: every example checked against networkx (DAG, distance,
reachability, unique next vertex, search traces), balance over distance, determinism,
disjoint splits, masks and the by-distance scores."""

from __future__ import annotations

from collections import Counter

import networkx as nx
import pytest
import torch
from pydantic import ValidationError

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks import algorithmic as alg
from anyformer.tasks import graphs
from anyformer.tasks.base import Batch

CONFIGS = [
    {"query": "next_vertex"},
    {"query": "connected"},
    {"query": "next_vertex", "trace": "bfs"},
    {"query": "connected", "trace": "dfs", "max_out_degree": 3},
]
IDS = ["next", "connected", "next-bfs", "connected-dfs"]


def make(seed: int = 0, **params: object) -> graphs.GraphSearch:
    entry = registry.get("task", "graph_search")
    return entry.cls(entry.params(**params), seed)


def rows_of(batch: Batch) -> list[list[int]]:
    seq = torch.cat([batch.inputs, batch.targets[:, -1:]], dim=1).tolist()
    return [r[: r.index(alg.EOS) + 1] for r in seq]


def parse(task: graphs.GraphSearch, row: list[int]) -> tuple[nx.DiGraph, int, int, list[int]]:
    """(graph, source, target, answer tokens) of one full row."""
    sep = row.index(alg.SEP)
    prompt, answer = row[1:sep], row[sep + 1 : -1]
    assert prompt[-3] == task.query_token
    edges = prompt[:-3]
    assert len(edges) % 3 == 0
    graph = nx.DiGraph()
    for i in range(0, len(edges), 3):
        assert edges[i] == task.edge_token
        u, v = edges[i + 1], edges[i + 2]
        assert not graph.has_edge(u, v)  # no repeated edge
        graph.add_edge(u, v)
    return graph, prompt[-2], prompt[-1], answer


def expected_trace(graph: nx.DiGraph, source: int, target: int, kind: str) -> list[int]:
    """networkx's BFS / DFS preorder (children by increasing label), cut at the target."""
    if kind == "bfs":
        order = [source, *(v for _, v in nx.bfs_edges(graph, source, sort_neighbors=sorted))]
    else:
        order = list(nx.dfs_preorder_nodes(graph, source, sort_neighbors=sorted))
    return order[: order.index(target) + 1] if target in order else order


def check_row(task: graphs.GraphSearch, row: list[int], n: int, k: int) -> bool:
    """Assert one example is right; returns whether the target is reachable."""
    p = task.params
    graph, s, t, answer = parse(task, row)
    labels = set(graph.nodes) | {s, t}
    assert len(labels) <= n and all(
        alg.FIRST_SYMBOL <= v < alg.FIRST_SYMBOL + p.ood_max_vertices for v in labels
    )
    assert nx.is_directed_acyclic_graph(graph)
    assert 1 <= k <= task.max_distance(n)
    reachable = graph.has_node(t) and nx.has_path(graph, s, t)
    if p.trace != "none":
        assert answer[-2] == task.answer_token
        assert answer[:-2] == expected_trace(graph, s, t, p.trace)
    final = answer[-1]
    if p.query == "connected":
        assert final == (task.yes_token if reachable else task.no_token)
        if not reachable:  # like a positive: an ancestor at distance k with two children
            ancestors = nx.shortest_path_length(graph, target=t)
            assert any(d == k and graph.out_degree(a) == 2 for a, d in ancestors.items())
    else:
        assert reachable and nx.shortest_path_length(graph, s, t) == k
        children = list(graph.successors(s))
        good = [c for c in children if c == t or nx.has_path(graph, c, t)]
        assert len(children) >= 2 and good == [final]  # a real choice, one right answer
        assert len({graph.out_degree(c) for c in children}) == 1  # no out-degree cue
    if reachable:
        assert nx.shortest_path_length(graph, s, t) == k
    return reachable


def test_registered_with_paper() -> None:
    entry = registry.get("task", "graph_search")
    assert entry.paper.title == "Transformers Struggle to Learn to Search"
    assert entry.paper.year == 2024
    assert entry.cls.headline == "exact_match" and entry.cls.higher_is_better
    assert entry.cls.splits == ("id", "ood")


@pytest.mark.parametrize("params", CONFIGS, ids=IDS)
def test_examples_are_right(params: dict) -> None:
    task = make(**params)
    batches = [task.train_batch(s, 16) for s in range(4)]
    batches += task.make_eval_set("id", 40) + task.make_eval_set("ood", 40)
    vocab = task.model_io()["vocab_size"]
    reachable = []
    for batch in batches:
        assert batch.inputs.shape[1] <= task.input_len(batch.group) <= task.max_seq_len()
        for row, k in zip(rows_of(batch), batch.extras["distance"].tolist()):
            assert all(0 <= v < vocab for v in row)
            reachable.append(check_row(task, row, batch.group, k))
    if params["query"] == "connected":
        assert 0.35 < sum(reachable) / len(reachable) < 0.65


def test_distances_are_balanced() -> None:
    task = make(min_vertices=11, max_vertices=11, ood_min_vertices=12, ood_max_vertices=12)
    counts = Counter(
        k for s in range(10) for k in task.train_batch(s, 64).extras["distance"].tolist()
    )
    assert set(counts) == set(range(1, 6))  # (11 - 1) // 2 = 5
    assert min(counts.values()) > 0.6 * max(counts.values())


@pytest.mark.parametrize("params", CONFIGS[:2], ids=IDS[:2])
def test_deterministic_and_splits_disjoint(params: dict) -> None:
    a, b, c = make(1, **params), make(1, **params), make(2, **params)
    b.train_batch(30, 4)
    for step in range(3):
        x, y = a.train_batch(step, 16), b.train_batch(step, 16)
        assert torch.equal(x.inputs, y.inputs) and torch.equal(x.targets, y.targets)
        assert torch.equal(x.extras["distance"], y.extras["distance"])
    assert not torch.equal(a.train_batch(0, 16).inputs[:, :8], c.train_batch(0, 16).inputs[:, :8])
    ea, eb = a.make_eval_set("id", 40), b.make_eval_set("id", 40)
    assert all(torch.equal(p.inputs, q.inputs) for p, q in zip(ea, eb))

    def prompts(batches: list[Batch]) -> set[tuple[int, ...]]:
        return {tuple(r[1 : r.index(alg.SEP)]) for bt in batches for r in rows_of(bt)}

    train = prompts([a.train_batch(s, 32) for s in range(30)])
    test = prompts(a.make_eval_set("id", 100))
    assert test and train.isdisjoint(test)
    assert all(alg.is_test_member(torch.tensor([p]).numpy(), 0.1)[0] for p in test)
    ood = a.make_eval_set("ood", 40)
    assert {bt.group for bt in ood} == set(a.lengths("ood"))
    assert min(bt.group for bt in ood) > a.params.max_vertices


def test_loss_and_score_masks() -> None:
    task = make(trace="bfs")
    batch = task.train_batch(0, 16)
    for inp, tgt, mask, scored in zip(
        batch.inputs.tolist(),
        batch.targets.tolist(),
        batch.loss_mask.tolist(),
        batch.extras["score_mask"].tolist(),
    ):
        sep, eos = inp.index(alg.SEP), tgt.index(alg.EOS)
        assert mask == [sep <= t <= eos for t in range(len(inp))]
        # only the final answer and EOS are scored, not the trace
        assert [t for t, on in enumerate(scored) if on] == [eos - 1, eos]
        assert tgt[eos - 2] == task.answer_token
    eos_at = (batch.targets == alg.EOS).int().argmax(1)
    assert torch.equal(batch.padding_mask, torch.arange(batch.inputs.shape[1]) <= eos_at[:, None])


@pytest.mark.parametrize("params", CONFIGS, ids=IDS)
def test_scores_by_distance(params: dict) -> None:
    task = make(**params)
    batches = task.make_eval_set("ood", 60)
    vocab = task.model_io()["vocab_size"]

    def logits(targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(targets, vocab).float()

    perfect = task.score([logits(b.targets) for b in batches], batches)
    assert perfect["exact_match"] == 1.0 and perfect["token_accuracy"] == 1.0
    distances = {str(k) for b in batches for k in b.extras["distance"].tolist()}
    assert set(perfect["by_distance"]) == distances
    assert all(v == 1.0 for v in perfect["by_distance"].values())
    assert perfect["curve"]["x"] == "distance"
    assert perfect["curve"]["series"]["model"] == perfect["by_distance"]
    distances = [k for b in batches for k in b.extras["distance"].tolist()]
    assert perfect["curve"]["n"] == {str(k): distances.count(k) for k in sorted(set(distances))}
    assert set(perfect["by_length"]) == {str(n) for n in task.lengths("ood")}

    # wrong only on rows at distance 1: exactly that point of the curve drops to 0
    outs = []
    for b in batches:
        final = b.extras.get("score_mask", b.loss_mask) & (b.targets != alg.EOS)
        near = (b.extras["distance"] == 1)[:, None] & final
        outs.append(logits(torch.where(near, (b.targets + 1) % vocab, b.targets)))
    scores = task.score(outs, batches)
    assert scores["by_distance"]["1"] == 0.0
    assert all(v == 1.0 for k, v in scores["by_distance"].items() if k != "1")


def test_model_io_and_lengths() -> None:
    task = make(ood_max_vertices=25)
    assert task.model_io() == {"embed": "tokens", "vocab_size": alg.FIRST_SYMBOL + 25 + 5}
    assert task.max_seq_len() == task.input_len(25)
    assert task.max_distance(12) == 5 and make(query="connected").max_distance(12) == 3
    assert make(query="connected").max_distance(14) == 4


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"min_vertices": 9, "max_vertices": 8}, "max_vertices=8 must be >= min_vertices=9"),
        (
            {"max_vertices": 12, "ood_min_vertices": 12},
            "ood_min_vertices=12 must be > max_vertices",
        ),
        ({"query": "connected", "min_vertices": 4}, "min_vertices=4 must be >= 5"),
        ({"min_vertices": 2}, "min_vertices=2"),
        ({"trace": "astar"}, "trace='astar'"),
        ({"max_out_degree": 0}, "max_out_degree=0"),
    ],
)
def test_bad_params_name_field_and_value(values: dict, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        registry.get("task", "graph_search").make_params(values, where="task")
    assert needle in str(info.value)
    with pytest.raises(ValidationError):
        registry.get("task", "graph_search").params(**values)
