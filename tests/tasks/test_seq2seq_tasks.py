"""Sequence tasks in every row form (decoder, prefix_lm, encoder_decoder) and the
``translation`` task: rows that reconstruct each other exactly, prefix lengths, equal
scores for equal predictions in every form, the task contract in each form, a form
that contradicts the model kind refused; translation's grammar (the target is the
reordered word-for-word translation of the source, checked by an independent parser),
determinism, held-out splits and baselines."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.lab.run import resolve
from anyformer.spec import ExperimentSpec
from anyformer.tasks.base import Batch
from anyformer.tasks.contract import check_task
from anyformer.tasks.sequence import BOS, EOS, PAD, SEP, SequenceTask
from anyformer.tasks.translation import Translation

#: Small parameters of every sequence task (each in its main mode).
SMALL: dict[str, dict[str, Any]] = {
    "copy": {"min_len": 2, "max_len": 5, "ood_min_len": 6, "ood_max_len": 7},
    "reverse": {"min_len": 2, "max_len": 5, "ood_min_len": 6, "ood_max_len": 7},
    "sort": {"min_len": 2, "max_len": 5, "ood_min_len": 6, "ood_max_len": 7, "hint": "rank"},
    "parity": {"min_len": 2, "max_len": 6, "ood_min_len": 7, "ood_max_len": 8},
    "addition": {"max_len": 2, "ood_min_len": 3, "ood_max_len": 3},
    "multiplication": {"max_len": 2, "ood_min_len": 3, "ood_max_len": 3, "format": "scratchpad"},
    "selective_copy": {"max_len": 10, "ood_min_len": 11, "ood_max_len": 12},
    "dyck": {"max_len": 10, "ood_min_len": 11, "ood_max_len": 14},
    "listops": {"max_depth": 2, "ood_min_depth": 3, "ood_max_depth": 3},
    "graph_search": {"min_vertices": 6, "max_vertices": 7, "ood_min_vertices": 8,
                     "ood_max_vertices": 9, "trace": "bfs"},
    "two_hop": {"n_entities": 8, "n_functions": 3},
    "kg_reasoning": {"n_entities": 16, "n_relations": 2, "ood_fraction": 0.25,
                     "inferred_ratio": 1.0},
    "translation": {"max_depth": 1, "ood_min_depth": 2, "ood_max_depth": 2},
}  # fmt: skip
FORMS = ("decoder", "prefix_lm", "encoder_decoder")


def sequence_tasks() -> list[str]:
    return [
        name
        for name in registry.components("task")
        if issubclass(registry.get("task", name).cls, SequenceTask)
    ]


def make(name: str, form: str | None = None, seed: int = 0, **extra: Any) -> SequenceTask:
    entry = registry.get("task", name)
    params = {**SMALL.get(name, {}), **extra}
    if form is not None:
        params["form"] = form
    task = entry.build(entry.make_params(params), seed)
    assert isinstance(task, SequenceTask)
    return task


def batches(task: SequenceTask) -> list[Batch]:
    """Training batches of three steps and both evaluation sets."""
    out = [task.train_batch(step, 8) for step in range(3)]
    return out + task.make_eval_set("id", 16) + task.make_eval_set("ood", 16)


def decoder_rows(batch: Batch) -> list[list[int]]:
    """Each row's full sequence ``BOS prompt SEP answer EOS`` of a decoder-form batch."""
    seq = torch.cat([batch.inputs, torch.full_like(batch.targets[:, :1], PAD)], dim=1)
    stop = batch.loss_mask.int().cumsum(1).argmax(1)  # the last scored input (target EOS)
    rows = []
    for i, row in enumerate(seq.tolist()):
        n = int(stop[i]) + 1
        rows.append(row[:n] + [int(batch.targets[i, n - 1])])
    return rows


def rebuilt_rows(batch: Batch) -> list[list[int]]:
    """The decoder rows an ``encoder_decoder`` batch stands for: ``BOS`` + source up to
    its ``EOS`` + ``SEP`` + the decoder's answer + ``EOS``."""
    rows = []
    for i in range(batch.inputs.shape[0]):
        source = batch.extras["source"][i][batch.extras["source_mask"][i]].tolist()
        assert source[-1] == EOS and EOS not in source[:-1] and PAD not in source
        scored = batch.targets[i][batch.loss_mask[i]].tolist()
        assert batch.inputs[i, 0] == BOS and scored[-1] == EOS
        assert batch.inputs[i, 1 : len(scored)].tolist() == scored[:-1]  # teacher forcing
        rows.append([BOS, *source[:-1], SEP, *scored])
    return rows


# --------------------------------------------------------------------------- forms
def test_every_sequence_task_has_the_form_parameter() -> None:
    names = sequence_tasks()
    assert {"copy", "reverse", "sort", "addition", "multiplication", "translation"} <= set(names)
    for name in names:
        field = registry.get("task", name).params.model_fields["form"]
        assert field.default is None, name
    with pytest.raises(SpecError, match="form"):
        registry.get("task", "copy").make_params({"form": "encoder"})


@pytest.mark.parametrize("name", sorted(SMALL))
def test_forms_write_the_same_examples(name: str) -> None:
    """decoder == None; prefix_lm = decoder rows + prefix_len at SEP + 1; the
    encoder_decoder source and decoder rows reconstruct the decoder row exactly, and its
    score mask marks the same answer tokens."""
    plain, dec = batches(make(name)), batches(make(name, "decoder"))
    prefix, encdec = batches(make(name, "prefix_lm")), batches(make(name, "encoder_decoder"))
    for a, b, p, e in zip(plain, dec, prefix, encdec, strict=True):
        for x in (b, p):
            assert torch.equal(a.inputs, x.inputs) and torch.equal(a.targets, x.targets)
            assert torch.equal(a.loss_mask, x.loss_mask) and a.group == x.group
        assert set(b.extras) == set(a.extras) and "prefix_len" not in a.extras
        n = p.extras["prefix_len"]
        assert n.dtype == torch.long and n.shape == (a.inputs.shape[0],)
        assert (p.inputs[torch.arange(len(n)), n - 1] == SEP).all()
        assert torch.equal(n, p.loss_mask.int().argmax(1) + 1)  # the first answer target
        assert decoder_rows(a) == rebuilt_rows(e)
        assert e.group == a.group and e.extras["source"].dtype == torch.long
        assert e.extras["source_mask"].dtype == torch.bool
        if e.padding_mask is not None:
            assert torch.equal(e.padding_mask, e.loss_mask)
        if "score_mask" in a.extras:
            for i in range(a.inputs.shape[0]):
                ta, te = a.targets[i], e.targets[i]
                assert ta[a.extras["score_mask"][i]].tolist() == (
                    te[e.extras["score_mask"][i]].tolist()
                )


@pytest.mark.parametrize("name", ["reverse", "sort", "multiplication", "graph_search",
                                  "two_hop", "translation"])  # fmt: skip
def test_scores_are_the_same_in_every_form(name: str) -> None:
    """The same predictions (right, except a fixed answer token of every third row)
    score the same in every form, baselines included."""
    scores = []
    for form in FORMS:
        task = make(name, form)
        evaluation = task.make_eval_set("id", 24) + task.make_eval_set("ood", 24)
        outputs = []
        for batch in evaluation:
            pred = batch.targets.clone()
            mask = batch.extras.get("score_mask", batch.loss_mask) & (batch.targets != EOS)
            for i in range(0, pred.shape[0], 3):
                where = mask[i].nonzero().squeeze(1)
                j = where[len(where) // 2]
                pred[i, j] = PAD
            outputs.append(pred)
        scores.append(task.score(outputs, evaluation))
    assert scores[0] == scores[1] == scores[2]
    assert 0.5 < scores[0]["exact_match"] < 0.8


@pytest.mark.parametrize("form", ["prefix_lm", "encoder_decoder"])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_the_task_contract_holds_in_every_form(name: str, form: str) -> None:
    entry = registry.get("task", name)
    params = entry.make_params({**SMALL[name], "form": form})
    failed = [r for r in check_task(entry.cls, params, steps=4) if not r.passed]
    assert not failed, failed


def test_max_seq_len_covers_each_side_in_the_encoder_decoder_form() -> None:
    task = make("reverse", "encoder_decoder")
    assert task.max_source_len() == 8 and task.max_seq_len() == 8  # 7 symbols + EOS/BOS
    assert make("reverse").max_seq_len() == 16 and make("reverse").max_source_len() == 0
    assert make("two_hop", "encoder_decoder").max_seq_len() == 4  # 3 prompt tokens + EOS
    assert make("two_hop").max_seq_len() == 6
    task = make("graph_search", "encoder_decoder")
    evaluation = task.make_eval_set("ood", 8)
    assert max(b.extras["source"].shape[1] for b in evaluation) <= task.max_source_len()


def test_a_form_the_model_kind_cannot_read_is_refused_naming_both() -> None:
    data = {"name": "t", "task": {"name": "reverse", "form": "encoder_decoder"}}
    with pytest.raises(SpecError, match=r"task.form='encoder_decoder'.*model.kind='decoder'"):
        resolve(ExperimentSpec.from_dict(data))
    spec = resolve(ExperimentSpec.from_dict({"name": "t", "task": "reverse"}))
    assert spec.task.params["form"] is None  # left alone: old run hashes do not change
    explicit = {"name": "t", "task": {"name": "reverse", "form": "decoder"}}
    assert resolve(ExperimentSpec.from_dict(explicit)).task.params["form"] == "decoder"


@pytest.mark.parametrize("kind", ["prefix_lm", "encoder_decoder"])
def test_resolve_sets_the_form_from_the_model_kind(kind: str) -> None:
    model = {"kind": kind, "d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16}
    task = {"name": "reverse", **SMALL["reverse"]}
    spec = resolve(ExperimentSpec.from_dict({"name": "t", "model": model, "task": task}))
    assert spec.task.params["form"] == kind
    same = {"name": "t", "model": model, "task": {**task, "form": kind}}
    assert resolve(ExperimentSpec.from_dict(same)).task == spec.task
    other = "prefix_lm" if kind == "encoder_decoder" else "encoder_decoder"
    for form in (other, "decoder"):
        wrong = {"name": "t", "model": model, "task": {**task, "form": form}}
        with pytest.raises(SpecError, match=rf"task.form='{form}'.*model.kind='{kind}'"):
            resolve(ExperimentSpec.from_dict(wrong))
    # max_len is checked against the rows of the form the model reads
    short = {**model, "max_len": 8 if kind == "encoder_decoder" else 15}
    data = {"name": "t", "model": short, "task": task}
    if kind == "encoder_decoder":
        assert resolve(ExperimentSpec.from_dict(data)).model.max_len == 8
    else:
        with pytest.raises(SpecError, match="max_len=15"):
            resolve(ExperimentSpec.from_dict(data))
    # a task without the parameter is left to the objective (text_corpus: plain rows)
    text = {"name": "t", "model": model, "task": {"name": "text_corpus", "seq_len": 16}}
    assert "form" not in resolve(ExperimentSpec.from_dict(text)).task.params


# --------------------------------------------------------------------------- translation
def parse(task: Translation, source: list[int]) -> tuple[list[int], int]:
    """The translation of a source sentence by an independent recursive-descent parser
    of the source grammar (target words in the target's order), and its depth."""
    words = task.word_ids()
    pos = 0

    def take(kind: str) -> int:
        nonlocal pos
        assert source[pos] in words[kind], (kind, source)
        pos += 1
        return source[pos - 1]

    def noun_phrase() -> tuple[list[int], int]:
        nonlocal pos
        noun = take("noun")
        adjectives = []
        while pos < len(source) and source[pos] in words["adjective"]:
            adjectives.append(take("adjective"))
        head = [*adjectives[::-1], noun]
        if pos < len(source) and source[pos] in words["rel"]:
            rel, verb = take("rel"), take("transitive")
            inner, depth = noun_phrase()
            return [*inner, verb, rel, *head], depth + 1
        return head, 0

    subject, depth = noun_phrase()
    if source[pos] in words["intransitive"]:
        order = [*subject, take("intransitive")]
    else:
        verb = take("transitive")
        obj, object_depth = noun_phrase()
        order, depth = [*subject, *obj, verb], max(depth, object_depth)
    assert pos == len(source)
    return [t + task.n_words for t in order], depth


def examples(task: Translation, batches: list[Batch]) -> list[tuple[list[int], list[int], int]]:
    """(source, target, depth) of every row."""
    out = []
    for batch in batches:
        for row in decoder_rows(batch):
            sep = row.index(SEP)
            out.append((row[1:sep], row[sep + 1 : -1], int(batch.group)))  # type: ignore[arg-type]
    return out


def test_translation_is_the_reordered_lexicon_of_the_source() -> None:
    task = make("translation", max_depth=2, ood_min_depth=3, ood_max_depth=4)
    assert isinstance(task, Translation)
    rows = examples(task, batches(task))
    assert {d for _, _, d in rows} == {0, 1, 2, 3, 4}
    for source, target, depth in rows:
        mapped = task.lexicon(np.asarray(source)).tolist()
        assert sorted(mapped) == sorted(target)  # a permutation of the word-for-word lexicon
        assert set(source).isdisjoint(target)  # the languages share no word
        assert parse(task, source) == (target, depth)


def test_translation_baselines_are_right_exactly_without_reordering() -> None:
    task = make(
        "translation",
        max_depth=0,
        ood_min_depth=1,
        ood_max_depth=1,
        max_adjectives=0,
        test_fraction=0.5,
    )
    evaluation = task.make_eval_set("id", 60)
    metrics = task.score([b.targets for b in evaluation], evaluation)
    lexicon = metrics["baselines"]["lexicon"]
    rows = examples(task, evaluation)
    kept = [task.lexicon(np.asarray(s)).tolist() == t for s, t, _ in rows]
    intransitive = [s[-1] in task.word_ids()["intransitive"] for s, _, _ in rows]
    assert kept == intransitive  # without adjectives or objects nothing moves
    assert lexicon["exact_match"] == pytest.approx(np.mean(kept))
    assert 0.05 < lexicon["exact_match"] < 0.5  # the intransitive share of distinct sentences
    assert metrics["baselines"]["copy"] == {
        "exact_match": 0.0,
        "token_accuracy": 0.0,
        "by_length": {"0": 0.0},
    }
    # the baselines replayed as a model score what the task reports
    for name, reported in metrics["baselines"].items():
        replay = task.score(task.baseline_outputs(name, evaluation), evaluation)
        assert {k: replay[k] for k in reported} == reported
    assert metrics["curve"]["series"]["lexicon"] == lexicon["by_length"]


def test_translation_is_deterministic_by_seed_with_disjoint_longer_ood() -> None:
    a, b, c = make("translation"), make("translation"), make("translation", seed=1)
    for step in range(3):
        assert torch.equal(a.train_batch(step, 8).inputs, b.train_batch(step, 8).inputs)
    assert not torch.equal(a.train_batch(0, 8).inputs, c.train_batch(0, 8).inputs)
    results = {r.name: r for r in check_task(Translation, a.params)}
    assert all(
        r.passed and not r.skipped for k, r in results.items() if k != "baselines_same_prompts"
    )
    train = [r for s in range(20) for r in examples(a, [a.train_batch(s, 16)])]
    ood = examples(a, a.make_eval_set("ood", 64))
    id_rows = examples(a, a.make_eval_set("id", 64))
    seen = {tuple(s) for s, _, _ in train}
    assert not seen & {tuple(s) for s, _, _ in id_rows + ood}
    assert np.mean([len(s) for s, _, _ in ood]) > np.mean([len(s) for s, _, _ in id_rows]) + 3
    with pytest.raises(SpecError, match="ood_min_depth=2 must be > max_depth=2"):
        registry.get("task", "translation").make_params({"ood_min_depth": 2})


# --------------------------------------------------------------------------- learning
def copy_baseline(task: SequenceTask, evaluation: list[Batch]) -> dict[str, Any]:
    """Exact match and token accuracy of answering ``reverse`` with the prompt as it is
    (right on palindromes, and on the middle symbol of odd lengths)."""
    guess = type(task).guess_answer
    task.guesses = ("copy",)  # type: ignore[misc]
    task.guess_answer = lambda name, prompt: prompt  # type: ignore[method-assign]
    try:
        baselines = task.guess_baselines(evaluation)
    finally:
        del task.guesses, task.guess_answer
    assert type(task).guess_answer is guess and baselines is not None
    return baselines["copy"]


@pytest.mark.slow
def test_a_tiny_encoder_decoder_learns_reverse_in_its_form() -> None:
    from anyformer.lab.run import build_objective, build_task, prepare_model
    from anyformer.model.encoder_decoder import EncoderDecoder
    from anyformer.training.trainer import Trainer

    steps = 400
    spec = resolve(
        ExperimentSpec.from_dict(
            {
                "name": "learns-reverse",
                "model": {
                    "kind": "encoder_decoder",
                    "d_model": 32,
                    "n_layers": 2,
                    "n_heads": 4,
                    "position": "learned",
                    "max_len": 16,
                },  # fmt: skip
                "task": {
                    "name": "reverse",
                    "min_len": 2,
                    "max_len": 6,
                    "ood_min_len": 7,
                    "ood_max_len": 8,
                    "n_symbols": 8,
                },  # fmt: skip
                "train": {
                    "steps": steps,
                    "batch_size": 32,
                    "lr": 3e-3,
                    "warmup_steps": 20,
                    "eval_every": steps,
                    "checkpoint_every": steps,
                    "eval_size": 256,
                    "threads": 1,
                    "progress": False,
                },  # fmt: skip
            }
        )
    )
    assert spec.task.params["form"] == "encoder_decoder"  # set from model.kind
    task = build_task(spec)
    model = prepare_model(spec)
    assert isinstance(model, EncoderDecoder) and isinstance(task, SequenceTask)
    final = Trainer(model, task, build_objective(spec, task), spec.train).fit().final["id"]
    baseline = copy_baseline(task, task.eval_set("id", 256))
    assert baseline["token_accuracy"] < 0.4 and baseline["exact_match"] < 0.2
    assert final["token_accuracy"] > baseline["token_accuracy"] + 0.3, (final, baseline)
    assert final["exact_match"] > baseline["exact_match"] + 0.2, (final, baseline)
