"""Trivial baselines (chance, majority) of the tasks whose answer is a class, computed on
the evaluation set the model is scored on."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import torch

from anyformer import registry
from anyformer.tasks.base import Task
from anyformer.tasks.baselines import class_baselines, majority_answer
from anyformer.tasks.sequence import EOS


def make(name: str, **params: Any) -> Task:
    entry = registry.get("task", name)
    return entry.build(entry.make_params(params), 0)


def test_class_baselines_by_hand() -> None:
    labels = torch.tensor([5, 5, 6, 7, 6, 5])
    groups = torch.tensor([1, 1, 1, 2, 2, 2])
    out = class_baselines(labels, 4, groups, by="by_length")
    assert out["chance"] == {"exact_match": 0.25, "by_length": {"1": 0.25, "2": 0.25}}
    # the most common answer is 5 (3 of 6): right in 2 of 3 rows of group 1, 1 of 3 of 2
    assert out["majority"] == {"exact_match": 0.5, "by_length": {"1": 2 / 3, "2": 1 / 3}}
    # several answers per row: accuracy counts answers, exact_match rows with all right
    many = class_baselines(
        torch.tensor([[5, 5], [5, 6], [7, 5]]), 4, torch.tensor([2, 2, 3]), "by_pairs",
        headline="accuracy",
    )  # fmt: skip
    assert many["chance"] == {"exact_match": 1 / 16, "accuracy": 0.25,
                              "by_pairs": {"2": 0.25, "3": 0.25}}  # fmt: skip
    assert many["majority"] == {"exact_match": 1 / 3, "accuracy": 4 / 6,
                                "by_pairs": {"2": 3 / 4, "3": 1 / 2}}  # fmt: skip
    # without groups there is no per-group entry; ties go to the smallest answer
    assert class_baselines(torch.tensor([9, 8]), 2)["majority"] == {"exact_match": 0.5}
    assert majority_answer(torch.tensor([9, 8, 9, 8])) == 8


def test_class_baselines_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_classes=0 must be >= 1"):
        class_baselines(torch.tensor([1]), 0)
    with pytest.raises(ValueError, match="headline='mse' must be 'exact_match' or 'accuracy'"):
        class_baselines(torch.tensor([1]), 2, headline="mse")


CLASSIFIED = [
    ("parity", {"min_len": 2, "max_len": 8, "ood_min_len": 9, "ood_max_len": 10}, 2),
    ("listops", {"max_depth": 2, "ood_min_depth": 3, "ood_max_depth": 3}, 10),
    ("dyck", {"mode": "recognize"}, 2),
    ("graph_search", {"min_vertices": 6, "max_vertices": 8, "ood_min_vertices": 9,
                      "ood_max_vertices": 10}, 2),
    ("graph_search", {"query": "connected", "trace": "dfs"}, 2),
    ("two_hop", {"n_entities": 8, "n_functions": 3}, 8),
    ("kg_reasoning", {"n_entities": 20, "n_relations": 2, "inferred_ratio": 1.0}, 20),
    ("kg_reasoning", {"reasoning": "comparison", "n_entities": 20, "n_relations": 2,
                      "inferred_ratio": 1.0}, 3),
]  # fmt: skip


@pytest.mark.parametrize(("name", "params", "classes"), CLASSIFIED)
def test_tasks_with_a_class_answer_report_chance_and_majority(
    name: str, params: dict[str, Any], classes: int
) -> None:
    task = make(name, **params)
    for split in ("id", "ood"):
        batches = task.make_eval_set(split, 64)
        vocab = task.model_io()["vocab_size"]
        wrong = [torch.nn.functional.one_hot((b.targets + 1) % vocab, vocab) for b in batches]
        metrics = task.score(wrong, batches)
        assert metrics["exact_match"] == 0.0
        chance, majority = metrics["baselines"]["chance"], metrics["baselines"]["majority"]
        assert chance["exact_match"] == pytest.approx(1 / classes)
        # majority: the share of the set's most common answer, counted by hand
        answers = []
        for b in batches:
            at = b.extras.get("score_mask", b.loss_mask) & (b.targets != EOS)
            assert at.sum(1).tolist() == [1] * b.inputs.shape[0]
            answers += b.targets[at].tolist()
        top = Counter(answers).most_common(1)[0][1]
        assert majority["exact_match"] == pytest.approx(top / len(answers))
        if name not in ("two_hop", "kg_reasoning"):  # fact sets have no lengths
            assert set(majority["by_length"]) == set(metrics["by_length"])
            assert set(metrics["curve"]["series"]) == {"model", "chance", "majority"}


def test_sequence_answers_report_no_baselines() -> None:
    for name in ("copy", "sort", "addition", "multiplication", "selective_copy"):
        task = make(name)
        batches = task.make_eval_set("id", 16)
        metrics = task.score([b.targets for b in batches], batches)
        assert "baselines" not in metrics, name
    dyck = make("dyck")  # mode complete: the answer is a closing sequence
    batches = dyck.make_eval_set("id", 16)
    assert "baselines" not in dyck.score([b.targets for b in batches], batches)


def test_majority_replayed_as_a_model_scores_the_majority_baseline() -> None:
    task = make("listops", max_depth=2, ood_min_depth=3, ood_max_depth=3)
    batches = task.make_eval_set("ood", 200)
    reported = task.score([b.targets for b in batches], batches)["baselines"]["majority"]
    replay = task.score(task.baseline_outputs("majority", batches), batches)
    assert replay["exact_match"] == pytest.approx(reported["exact_match"])
    assert replay["by_length"] == pytest.approx(reported["by_length"])
    # the replayed model differs from the targets only at the answers
    for out, b in zip(task.baseline_outputs("majority", batches), batches):
        assert torch.equal(out[b.targets == EOS], b.targets[b.targets == EOS])
    with pytest.raises(ValueError, match="no deterministic baseline 'chance'"):
        task.baseline_outputs("chance", batches)
    with pytest.raises(ValueError, match="no deterministic baseline 'majority'"):
        make("copy").baseline_outputs("majority", batches)


def test_graph_search_baselines_by_distance() -> None:
    task = make("graph_search", min_vertices=6, max_vertices=8, ood_min_vertices=9,
                ood_max_vertices=10)  # fmt: skip
    batches = task.make_eval_set("ood", 120)
    metrics = task.score([b.targets for b in batches], batches)
    for name in ("chance", "majority"):
        baseline = metrics["baselines"][name]
        assert set(baseline["by_distance"]) == set(metrics["by_distance"])
        assert metrics["curve"]["series"][name] == baseline["by_distance"]
    assert set(metrics["baselines"]["chance"]["by_distance"].values()) == {0.5}
    assert metrics["curve"]["x"] == "distance"


def test_mqar_baselines_per_query() -> None:
    task = make("mqar", n_keys=16, n_values=4, min_pairs=2, max_pairs=4, ood_min_pairs=5,
                ood_max_pairs=6, n_queries=2)  # fmt: skip
    batches = task.make_eval_set("id", 100)
    metrics = task.score([b.targets for b in batches], batches)
    chance, majority = metrics["baselines"]["chance"], metrics["baselines"]["majority"]
    assert chance["accuracy"] == metrics["chance"] == 0.25
    assert chance["exact_match"] == 0.25**2
    values = torch.cat([b.targets[b.loss_mask] for b in batches]).tolist()
    assert majority["accuracy"] == pytest.approx(Counter(values).most_common(1)[0][1] / len(values))
    assert set(majority["by_pairs"]) == set(metrics["by_pairs"])
    replay = task.score(task.baseline_outputs("majority", batches), batches)
    assert replay["accuracy"] == pytest.approx(majority["accuracy"])
    assert replay["exact_match"] == pytest.approx(majority["exact_match"])
    assert replay["by_pairs"] == pytest.approx(majority["by_pairs"])
