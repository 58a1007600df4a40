"""text_corpus: byte windows of the help topics, split by topic name (id) and held-out
standard-library source (ood), deterministic by seed, plain rows for every objective,
and its unigram/bigram baselines (a model whose logits are the bigram's log
probabilities scores exactly the bigram baseline)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks.contract import check_task
from anyformer.tasks.text import module_split
from anyformer.tasks.text_corpus import TextCorpus, topic_split, topics


def make(seed: int = 0, **params: object) -> TextCorpus:
    entry = registry.get("task", "text_corpus")
    task = entry.build(entry.make_params({"seq_len": 32, **params}), seed)
    assert isinstance(task, TextCorpus)
    return task


def test_registered_byte_level_with_causal_lm_default() -> None:
    entry = registry.get("task", "text_corpus")
    assert entry.paper is not None and "Zero-Shot" in entry.paper.title
    assert entry.cls.byte_level and entry.cls.default_objective == "causal_lm"
    assert entry.cls.headline == "bits_per_byte" and not entry.cls.higher_is_better
    assert make().model_io() == {"vocab_size": 256, "embed": "tokens", "head": "lm"}
    with pytest.raises(SpecError, match="val_fraction"):
        entry.make_params({"val_fraction": 1.0})


def test_the_corpus_is_the_help_topics_split_by_name() -> None:
    task = make()
    names = [n for n, _ in topics()]
    assert len(names) > 50 and "assert" in names and names == sorted(names)
    train, held = task.stream("train"), task.stream("id")
    train_names = {n.removeprefix("topic:") for n in train[1]}
    held_names = {n.removeprefix("topic:") for n in held[1]}
    assert train_names | held_names == set(names) and not train_names & held_names
    assert held_names == {n for n in names if topic_split(n, 0.1) == "id"}
    assert 0.03 < len(held_names) / len(names) < 0.25
    text = {n: t for n, t in topics()}
    expected = b"".join(text[n] + b"\0" for n in sorted(held_names))
    assert held[0].tobytes() == expected
    assert held[0].tobytes().decode("utf-8")  # English text, UTF-8 encoded


def test_ood_is_held_out_stdlib_source_never_trained(stdlib_tree: Path) -> None:
    task = make(root=str(stdlib_tree), ood_fraction=0.3)
    data, paths = task.stream("ood")
    assert paths and all(module_split(p, 0.3, 0.0) == "id" for p in paths)
    assert b"def f_" in data.tobytes() and all(not p.startswith("test/") for p in paths)
    with_source = make(root=str(stdlib_tree), ood_fraction=0.3, source=True)
    train_names = with_source.stream("train")[1]
    modules = [n for n in train_names if not n.startswith("topic:")]
    assert modules and not set(modules) & set(paths)
    assert all(module_split(p, 0.3, 0.0) == "train" for p in modules)
    assert not any(n.startswith("topic:") for n in paths)
    assert len(with_source.stream("train")[0]) > len(task.stream("train")[0])


def test_plain_rows_deterministic_by_seed() -> None:
    a, b, other = make(), make(), make(seed=1)
    batch = a.train_batch(3, 8)
    assert torch.equal(batch.inputs, b.train_batch(3, 8).inputs)
    assert not torch.equal(batch.inputs, a.train_batch(4, 8).inputs)
    assert not torch.equal(batch.inputs, other.train_batch(3, 8).inputs)
    assert batch.padding_mask is None and bool(batch.loss_mask.all())
    assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])  # next byte
    assert batch.inputs.shape == (8, 32) and int(batch.inputs.max()) < 256
    failed = [r for r in check_task(TextCorpus, a.params) if not r.passed]
    assert not failed, failed


def test_bigram_logits_score_the_bigram_baseline() -> None:
    task = make()
    models = task.token_models()
    unigram = models.unigram
    grid = np.arange(256)
    bigram = models.bigram(np.repeat(grid, 256), np.tile(grid, 256)).reshape(256, 256)
    assert np.array_equal(models.guess, bigram.argmax(axis=1))
    assert np.allclose(unigram.sum(), 1) and np.allclose(bigram.sum(axis=1), 1)
    data = task.stream("train")[0].astype(np.int64)
    assert unigram.argmax() == np.bincount(data).argmax()  # the space, in English
    for split in ("id", "ood"):
        evaluation = task.make_eval_set(split, 40)
        as_bigram = [torch.from_numpy(np.log(bigram))[b.inputs] for b in evaluation]
        as_unigram = [torch.from_numpy(np.log(unigram)).expand(*b.inputs.shape, 256)
                      for b in evaluation]  # fmt: skip
        metrics = task.score(as_bigram, evaluation)
        baselines = metrics["baselines"]
        assert metrics["bits_per_byte"] == pytest.approx(baselines["bigram"]["bits_per_byte"])
        assert metrics["accuracy"] == pytest.approx(baselines["bigram"]["accuracy"])
        unigram_metrics = task.score(as_unigram, evaluation)
        assert unigram_metrics["bits_per_byte"] == pytest.approx(
            baselines["unigram"]["bits_per_byte"]
        )
        uniform = task.score([torch.zeros(*b.inputs.shape, 256) for b in evaluation], evaluation)
        assert uniform["bits_per_byte"] == pytest.approx(8.0)
        assert uniform["baselines"] == baselines  # independent of the model
        assert baselines["bigram"]["bits_per_byte"] < baselines["unigram"]["bits_per_byte"] < 8
    assert math.isfinite(baselines["bigram"]["bits_per_byte"])
