"""The node-level graph tasks (``graph_sbm``, ``graph_motifs``) and users' graph files
(``graph_file``): what their graphs hold, the weighted accuracy, the safe loading."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric")

from anyformer.cli import main  # noqa: E402
from anyformer.errors import SpecError  # noqa: E402
from anyformer.tasks.graph_data import weighted_accuracy  # noqa: E402
from anyformer.tasks.graph_file import GraphFile, GraphFileParams  # noqa: E402
from anyformer.tasks.graph_motifs import GraphMotifs, GraphMotifsParams  # noqa: E402
from anyformer.tasks.graph_sbm import GraphSBM, GraphSBMParams, fixed_pattern  # noqa: E402

SMALL = {"n_train": 16, "n_eval": 8, "gin_steps": 5}


def _adjacency(g: object) -> torch.Tensor:
    n = g.num_nodes  # type: ignore[attr-defined]
    adj = torch.zeros(n, n, dtype=torch.bool)
    adj[g.edge_index[0], g.edge_index[1]] = True  # type: ignore[attr-defined]
    return adj


def test_weighted_accuracy_is_the_mean_recall_of_the_classes() -> None:
    labels = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    pred = np.array([0, 0, 0, 1, 1, 0, 2, 2])
    assert weighted_accuracy(pred, labels) == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    assert weighted_accuracy(np.zeros(8, dtype=int), labels) == pytest.approx(1 / 3)
    # a predicted class no node has is a row of the confusion matrix with recall 0
    assert weighted_accuracy(np.array([3, 1]), np.array([1, 1])) == pytest.approx(1 / 4)


def test_cluster_graphs_reveal_one_seed_per_community_and_are_denser_inside() -> None:
    task = GraphSBM(GraphSBMParams(**SMALL, p=0.6, q=0.1), seed=0)
    inside = between = pairs_in = pairs_out = 0
    for g in task.graphs[:24]:
        n_blocks = task.params.n_blocks
        feature = g.x[:, : n_blocks + 1].argmax(1)
        for c in range(n_blocks):  # one labelled node per community, with its label
            assert int((feature == c + 1).sum()) == 1
            assert int(g.y[feature == c + 1]) == c
        same = g.y[:, None] == g.y[None, :]
        adj = _adjacency(g)
        assert torch.equal(adj, adj.T) and not adj.diagonal().any()
        off = ~torch.eye(g.num_nodes, dtype=torch.bool)
        inside += int(adj[same & off].sum())
        between += int(adj[~same].sum())
        pairs_in += int((same & off).sum())
        pairs_out += int((~same).sum())
    assert abs(inside / pairs_in - 0.6) < 0.05 and abs(between / pairs_out - 0.1) < 0.03
    sizes = np.array([g.num_nodes for g in task.graphs])  # 4 communities of 5..12, ood 13..20
    assert sizes[task.split_rows["train"]].max() <= 48 <= 52 <= sizes[task.split_rows["ood"]].min()
    batch = task.make_eval_set("id", 8)[0]
    assert batch.targets.shape == batch.padding_mask.shape
    assert torch.equal(batch.loss_mask, batch.padding_mask)


def test_pattern_graphs_plant_the_same_pattern_in_every_graph() -> None:
    params = GraphSBMParams(**SMALL, mode="pattern", ood="pq")
    task = GraphSBM(params, seed=3)
    edges, feat = fixed_pattern(3, params.pattern_size, params.pattern_p)
    for g in task.graphs[:10]:
        inside = torch.nonzero(g.y).reshape(-1)
        assert len(inside) == params.pattern_size
        sub = _adjacency(g)[inside][:, inside]
        assert int(sub.sum()) == edges.shape[1]  # the pattern's edges, no more
        assert sorted(g.x[inside, :3].argmax(1).tolist()) == sorted(feat.tolist())
    assert params.pq("ood") == (0.45, 0.3) and params.pq("id") == (0.5, 0.35)


def test_motif_graphs_hold_whole_houses() -> None:
    task = GraphMotifs(GraphMotifsParams(**SMALL), seed=0)
    for g in task.graphs[:10]:
        counts = torch.bincount(g.y, minlength=4)
        houses = int(counts[3])
        assert houses >= 1 and counts[1] == 2 * houses and counts[2] == 2 * houses
        deg = torch.bincount(g.edge_index[0], minlength=g.num_nodes)
        assert torch.equal(g.x[:, :11].argmax(1), deg.clamp(max=10))
        assert torch.all(deg[g.y == 3] >= 2)  # a roof joins two upper corners
    sizes = np.array([g.num_nodes for g in task.graphs])  # bases 15..30 + 1..3 houses; ood
    assert sizes[task.split_rows["train"]].max() <= 45 < 60 <= sizes[task.split_rows["ood"]].min()
    binary = GraphMotifs(GraphMotifsParams(**SMALL, target="in_motif"), seed=0)
    assert binary.n_classes == 2 and int(binary.graphs[0].y.max()) == 1


def test_generating_graphs_downloads_nothing_and_writes_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import urllib.request

    import torch_geometric.data.download as download

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a graph task tried to download")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(download, "download_url", refuse)
    monkeypatch.chdir(tmp_path)
    GraphSBM(GraphSBMParams(**SMALL, n_blocks=3), seed=5)
    GraphMotifs(GraphMotifsParams(**SMALL, max_motifs=2), seed=5)
    assert list(tmp_path.iterdir()) == []


def test_bad_sbm_parameters_name_the_field() -> None:
    with pytest.raises(ValueError, match="ood_min_size=10 must be > max_size=12"):
        GraphSBMParams(ood_min_size=10)
    with pytest.raises(ValueError, match="seeds_per_block=4 must be <= min_size=3"):
        GraphSBMParams(min_size=3, seeds_per_block=4)
    with pytest.raises(ValueError, match="ood_min_base=20 must be > max_base=30"):
        GraphMotifsParams(ood_min_base=20)


# ------------------------------------------------------------------ graph files
def test_a_graph_file_gives_graph_and_node_level_tasks(graph_file: Path) -> None:
    graph = GraphFile(GraphFileParams(path=str(graph_file), gin_steps=5), seed=0)
    assert graph.model_io()["head"] == "classify" and graph.n_classes == 2
    sizes = [g.num_nodes for g in graph.graphs]
    assert sorted(sizes[i] for i in graph.split_rows["ood"]) == [13, 14]  # the largest
    batch = graph.make_eval_set("ood", 8)[0]
    assert batch.targets.tolist() == [0, 1]  # 13 nodes: a path (i = 10), 14: a cycle
    node = GraphFile(GraphFileParams(path=str(graph_file), level="node", target="end",
                                     gin_steps=5), seed=0)  # fmt: skip
    io = node.model_io()
    assert io["head"] == "token_classify" and io["input_dim"] == 1 + 4 + 8
    batch = node.make_eval_set("ood", 8)[0]
    assert int(batch.targets[0].sum()) == 2 and int(batch.targets[1].sum()) == 0


def test_a_graph_file_needing_code_is_refused_and_its_code_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save([Payload()], evil)
    with pytest.raises(SpecError, match=r"task.path=.*evil.pt: refused, loading it could run code"):
        GraphFile(GraphFileParams(path=str(evil)), seed=0)
    assert not marker.exists()
    # through the command line: exit 2 with the message, nothing run
    argv = ["run", "graph_quickstart", "task=graph_file", f"task.path={evil}",
            "--out", str(tmp_path / "runs")]  # fmt: skip
    assert main(argv) == 2
    assert not marker.exists()


def test_a_pickled_object_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"graphs": [sys.version]}, plain)  # strings and dicts load: not Data
    with pytest.raises(SpecError, match="holds dict; expected a non-empty list"):
        GraphFile(GraphFileParams(path=str(plain)), seed=0)
    with pytest.raises(SpecError, match="no such file"):
        GraphFile(GraphFileParams(path=str(tmp_path / "missing.pt")), seed=0)


def test_graph_file_validation_names_the_field(graph_file: Path) -> None:
    path = str(graph_file)
    with pytest.raises(SpecError, match="graph 0: task.target='label' must be one class per "
                                        "graph .* got nothing"):  # fmt: skip
        GraphFile(GraphFileParams(path=path, target="label"), seed=0)
    with pytest.raises(SpecError, match="task.target='y' must be one class per node"):
        GraphFile(GraphFileParams(path=path, level="node"), seed=0)
    with pytest.raises(SpecError, match="task.features='pos' must name"):
        GraphFile(GraphFileParams(path=path, features="pos"), seed=0)
    constant = GraphFile(GraphFileParams(path=path, features="none", lap_pe=0, rwse=0), seed=0)
    assert constant.model_io()["input_dim"] == 1
