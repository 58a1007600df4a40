"""Behaviour of two_hop and kg_reasoning: the world is fixed by the seed, inferred
answers follow from the trained atomic facts, the held-out sets are never trained on,
OOD holds exactly the never-inferred combinations or entities, and scoring."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks import algorithmic as alg
from anyformer.tasks import knowledge
from anyformer.tasks.base import Batch

F = alg.FIRST_SYMBOL
CONFIGS = [
    ("two_hop", {}),
    ("kg_reasoning", {"reasoning": "composition", "n_entities": 40, "n_relations": 6}),
    ("kg_reasoning", {"reasoning": "comparison", "n_entities": 40, "n_relations": 3}),
]
IDS = ["two_hop", "composition", "comparison"]


def make(name: str, seed: int = 0, **params: object) -> knowledge.FactTask:
    entry = registry.get("task", name)
    return entry.cls(entry.params(**params), seed)


def facts(batches: list[Batch]) -> list[tuple[tuple[int, ...], int]]:
    """(prompt, answer) of every row."""
    out = []
    for b in batches:
        seq = torch.cat([b.inputs, b.targets[:, -1:]], dim=1).tolist()
        for row in seq:
            row = row[: row.index(alg.EOS) + 1]
            sep = row.index(alg.SEP)
            assert row[0] == alg.BOS and len(row) == sep + 3
            out.append((tuple(row[1:sep]), row[sep + 1]))
    return out


def all_training_facts(task: knowledge.FactTask) -> list[tuple[tuple[int, ...], int]]:
    return facts([task.fact_batch(task.pools["train"])])


def test_registered_with_papers() -> None:
    two = registry.get("task", "two_hop")
    kg = registry.get("task", "kg_reasoning")
    assert two.paper.title.startswith("The Coverage Principle") and two.paper.year == 2025
    assert kg.paper.title.startswith("Grokked Transformers are Implicit Reasoners")
    assert kg.paper.year == 2024
    for entry in (two, kg):
        assert entry.cls.splits == ("id", "ood") and entry.cls.headline == "exact_match"


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_deterministic_world_and_batches(name: str, params: dict) -> None:
    a, b, c = make(name, 3, **params), make(name, 3, **params), make(name, 4, **params)
    for split in ("train", "id", "ood"):
        assert (a.pools[split] == b.pools[split]).all()
    assert (
        a.pools["train"].shape != c.pools["train"].shape
        or not (a.pools["train"] == c.pools["train"]).all()
    )
    b.train_batch(9, 5)
    for step in range(3):
        assert torch.equal(a.train_batch(step, 32).inputs, b.train_batch(step, 32).inputs)
    assert not torch.equal(a.train_batch(0, 32).inputs, a.train_batch(1, 32).inputs)
    for split in ("id", "ood"):
        ea, eb = a.make_eval_set(split, 100), b.make_eval_set(split, 100)
        assert all(torch.equal(p.inputs, q.inputs) for p, q in zip(ea, eb))


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_held_out_facts_never_trained(name: str, params: dict) -> None:
    task = make(name, **params)
    train = {p for p, _ in all_training_facts(task)}
    sampled = {p for p, _ in facts([task.train_batch(s, 64) for s in range(20)])}
    assert sampled <= train
    for split in ("id", "ood"):
        held = facts(task.make_eval_set(split, 10_000))
        prompts = [p for p, _ in held]
        assert len(prompts) == len(set(prompts)) == task.pools[split].shape[0]
        assert train.isdisjoint(prompts)
        assert all(len(p) == 3 for p in prompts)  # evaluation asks inferred facts only


def test_two_hop_answers_and_combination_split() -> None:
    task = make("two_hop", n_entities=12, n_functions=4, held_out_pairs=0.25)
    n = task.params.n_entities
    train = all_training_facts(task)
    # the one-hop facts define the tables; every one of them is trained
    table = {(p[0], p[1]): a for p, a in train if len(p) == 2}
    assert len(table) == n * 4
    seen_pairs = {(p[1], p[2]) for p, _ in train if len(p) == 3}
    for split in ("id", "ood"):
        for (x, f, g), answer in facts(task.make_eval_set(split, 10_000)):
            assert answer == table[(table[(x, f)], g)]
            assert ((f, g) in seen_pairs) == (split == "id")
    for prompt, answer in train:
        if len(prompt) == 3:
            x, f, g = prompt
            assert answer == table[(table[(x, f)], g)]
    ood_pairs = {(p[1], p[2]) for p, _ in facts(task.make_eval_set("ood", 10_000))}
    assert len(ood_pairs) == 4 and len(seen_pairs) == 12  # a quarter of 16 held out
    assert task.pools["ood"].shape[0] == 4 * n
    assert task.pools["id"].shape[0] == round(0.1 * 12 * n)


def test_two_hop_mixes_one_and_two_hop_rows() -> None:
    task = make("two_hop", two_hop_fraction=0.25)
    rows = facts([task.train_batch(s, 64) for s in range(10)])
    share = sum(len(p) == 3 for p, _ in rows) / len(rows)
    assert 0.18 < share < 0.32


def test_kg_composition_answers_and_entity_split() -> None:
    task = make("kg_reasoning", reasoning="composition", n_entities=40, n_relations=6)
    p = task.params
    train = all_training_facts(task)
    atomic = {(q[0], q[1]): a for q, a in train if len(q) == 2}
    assert len(atomic) == p.n_entities * p.n_relations  # every atomic fact, OOD ones too
    ood = {F + e for e in task.ood_entities.tolist()}
    assert len(ood) == 4
    trained_heads = {q[0] for q, _ in train if len(q) == 3}
    assert trained_heads.isdisjoint(ood)  # nothing is ever inferred about OOD entities
    for split in ("id", "ood"):
        for (h, r1, r2), t in facts(task.make_eval_set(split, 10_000)):
            bridge = atomic[(h, r1)]
            assert t == atomic[(bridge, r2)]
            assert ({h, bridge, t} <= ood) == (split == "ood")
    for prompt, t in train:
        if len(prompt) == 3:
            h, r1, r2 = prompt
            assert t == atomic[(atomic[(h, r1)], r2)]
    n_inferred = sum(len(q) == 3 for q, _ in train)
    assert n_inferred == round(p.inferred_ratio * len(atomic))
    assert task.pools["ood"].shape[0] == 4 * 6 * 6


def test_kg_comparison_answers_and_entity_split() -> None:
    task = make("kg_reasoning", reasoning="comparison", n_entities=40, n_relations=3)
    train = all_training_facts(task)
    value = {(q[0], q[1]): a for q, a in train if len(q) == 2}
    assert len(value) == 40 * 3
    less = task.less_token
    ood = {F + e for e in task.ood_entities.tolist()}
    labels = set()
    for split in ("id", "ood"):
        for (e1, a, e2), answer in facts(task.make_eval_set(split, 10_000)):
            v1, v2 = value[(e1, a)], value[(e2, a)]
            assert answer == less + (v1 > v2) - (v1 < v2) + 1
            assert e1 != e2 and ({e1, e2} <= ood) == (split == "ood")
            assert split == "ood" or not ({e1, e2} & ood)
            labels.add(answer)
    assert labels == {less, less + 1, less + 2}
    assert task.pools["ood"].shape[0] == 4 * 3 * 3  # ordered pairs of 4 OOD entities


@pytest.mark.parametrize(("name", "params"), CONFIGS, ids=IDS)
def test_masks_and_scores(name: str, params: dict) -> None:
    task = make(name, **params)
    batch = task.train_batch(0, 64)
    assert batch.inputs.shape[1] <= task.max_seq_len() == 6
    for inp, tgt, mask in zip(
        batch.inputs.tolist(), batch.targets.tolist(), batch.loss_mask.tolist()
    ):
        sep, eos = inp.index(alg.SEP), tgt.index(alg.EOS)
        assert eos == sep + 1 and mask == [t in (sep, eos) for t in range(len(inp))]
    # one- and two-hop rows differ in length: padding trails and is masked
    eos_at = (batch.targets == alg.EOS).int().argmax(1)
    assert len(set(eos_at.tolist())) == 2
    assert torch.equal(batch.padding_mask, torch.arange(batch.inputs.shape[1]) <= eos_at[:, None])
    batches = task.make_eval_set("ood", 200)
    vocab = task.model_io()["vocab_size"]
    assert all(int(b.inputs.max()) < vocab for b in batches)

    def logits(targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(targets, vocab).float()

    perfect = task.score([logits(b.targets) for b in batches], batches)
    assert perfect["exact_match"] == 1.0 and perfect["token_accuracy"] == 1.0
    assert set(perfect) == {"exact_match", "token_accuracy", "baselines"}
    wrong = task.score([logits((b.targets + 1) % vocab) for b in batches], batches)
    assert wrong["exact_match"] == 0.0
    half = []
    for b in batches:
        t = b.targets.clone()
        answer_pos = b.loss_mask & (t != alg.EOS)
        t[::2] = torch.where(answer_pos[::2], (t[::2] + 1) % vocab, t[::2])
        half.append(logits(t))
    rows = sum(b.inputs.shape[0] for b in batches)
    bad = sum((b.inputs.shape[0] + 1) // 2 for b in batches)
    assert task.score(half, batches)["exact_match"] == pytest.approx(1 - bad / rows)


@pytest.mark.parametrize(
    ("name", "values", "needle"),
    [
        ("two_hop", {"held_out_pairs": 1.0}, "held_out_pairs=1.0"),
        ("two_hop", {"n_functions": 1}, "n_functions=1"),
        ("kg_reasoning", {"reasoning": "analogy"}, "reasoning='analogy'"),
        ("kg_reasoning", {"n_entities": 10, "ood_fraction": 0.1}, "ood_fraction=0.1 leaves"),
        ("kg_reasoning", {"inferred_ratio": 0}, "inferred_ratio=0"),
    ],
)
def test_bad_params_name_field_and_value(name: str, values: dict, needle: str) -> None:
    with pytest.raises(SpecError) as info:
        registry.get("task", name).make_params(values, where="task")
    assert needle in str(info.value)
    with pytest.raises(ValidationError):
        registry.get("task", name).params(**values)


def test_inferred_ratio_must_leave_an_id_set() -> None:
    with pytest.raises(ValueError, match="inferred_ratio=20.0"):
        make("kg_reasoning", n_entities=20, n_relations=2, inferred_ratio=20.0)


def test_eval_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="size=0"):
        make("two_hop").make_eval_set("id", 0)
