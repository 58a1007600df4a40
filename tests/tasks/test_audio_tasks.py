"""The ``ctc`` objective (equal to ``torch.nn.functional.ctc_loss`` on hand-built
alignments), greedy CTC decoding and the label error rate on hand cases, and the audio
tasks ``tones`` and ``dtmf``: determinism, what their clips hold, their baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.nn.spectrogram import log_mel, mel_filterbank
from anyformer.objectives.ctc import CTC, CTCParams
from anyformer.spec import ModelSpec, parse
from anyformer.tasks.audio import (
    DTMF,
    TONE_CLASSES,
    DTMFParams,
    Tones,
    TonesParams,
    edit_distance,
    goertzel_decode,
    greedy_ctc,
    label_error_rate,
)
from anyformer.tasks.base import Batch


def _one_hot_logits(path: list[int], classes: int, sharp: float = 8.0) -> torch.Tensor:
    return F.one_hot(torch.tensor(path), classes).float() * sharp


def test_ctc_equals_torch_on_hand_built_alignments() -> None:
    # frames that spell "1 1 2" through the alignment [1, 0, 1, 2, 2] and "3" through
    # [0, 3, 3, 0, 0]; a second row with two frames of padding
    out = torch.stack([_one_hot_logits([1, 0, 1, 2, 2], 4), _one_hot_logits([0, 3, 3, 0, 0], 4)])
    out = out + 0.3 * torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([[1, 1, 2], [3, 0, 0]])
    mask = targets != 0
    loss = CTC(CTCParams())(out, Batch(torch.zeros(2, 10), targets, mask))
    lp = out.log_softmax(-1).transpose(0, 1)
    ref = F.ctc_loss(lp, targets, torch.tensor([5, 5]), torch.tensor([3, 1]), reduction="sum")
    assert loss.item() == pytest.approx(ref.item() / 4, rel=1e-6)
    # with padding: frames after each row's length are not read
    pad = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    noisy = out.clone()
    noisy[1, 3:] = torch.randn(2, 4) * 5
    batch = Batch(torch.zeros(2, 10), targets, mask, padding_mask=pad)
    ref = F.ctc_loss(noisy.log_softmax(-1).transpose(0, 1), targets, torch.tensor([5, 3]),
                     torch.tensor([3, 1]), reduction="sum")  # fmt: skip
    assert CTC(CTCParams())(noisy, batch).item() == pytest.approx(ref.item() / 4, rel=1e-6)
    # a single alignment: label 1 over one frame has probability softmax(out)[0, 1]
    one = torch.randn(1, 1, 3)
    single = CTC(CTCParams())(one, Batch(torch.zeros(1, 1), torch.tensor([[1]]),
                                         torch.tensor([[True]])))  # fmt: skip
    assert single.item() == pytest.approx(-one.log_softmax(-1)[0, 0, 1].item(), rel=1e-6)


def test_ctc_skips_prefix_tokens_and_checks_the_blank() -> None:
    spec = parse(ModelSpec, dict(
        kind="encoder", d_model=16, n_heads=2, n_layers=1, max_len=80, input_shape=[4000],
        position="none", head="token_classify", n_outputs=5,
        embedder={"name": "spectrogram_patches", "cls": True},
    ))  # fmt: skip
    ctc = CTC(CTCParams()).for_model(spec)
    assert ctc.n_prefix == 1
    out = torch.randn(1, 6, 5)
    batch = Batch(torch.zeros(1, 4000), torch.tensor([[2, 3]]), torch.tensor([[True, True]]))
    plain = CTC(CTCParams())(out[:, 1:], batch)
    assert torch.allclose(ctc(out, batch), plain)
    with pytest.raises(SpecError, match="blank=5"):
        CTC(CTCParams(blank=5)).for_model(spec)


def test_greedy_decoding_and_label_error_rate_on_hand_cases() -> None:
    ids = torch.tensor([[0, 1, 1, 0, 1, 2, 2, 0], [3, 3, 3, 0, 0, 0, 0, 0], [0] * 8])
    assert greedy_ctc(ids) == [[1, 1, 2], [3], []]
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([], [4, 5]) == 2
    assert edit_distance([1, 2], [2, 1]) == 2
    assert label_error_rate([[1, 2, 3], []], [[1, 3], [4, 5]]) == pytest.approx(3 / 4)
    assert label_error_rate([[7]], [[7]]) == 0.0


def test_dtmf_clips_hold_their_digits() -> None:
    task = DTMF(DTMFParams(min_snr=30.0, max_snr=30.0), seed=1)
    batch = task.train_batch(0, 8)
    assert batch.inputs.shape == (8, 9600) and batch.targets.shape == (8, 6)
    lengths = batch.loss_mask.sum(1)
    assert int(lengths.min()) >= 1 and int(lengths.max()) <= 4
    assert bool((batch.targets[~batch.loss_mask] == 0).all())
    assert bool((batch.targets[batch.loss_mask] >= 1).all())
    # at high SNR the detector reads every digit back: the clips hold what targets say
    refs = DTMF.references([batch])
    assert [goertzel_decode(x.double().numpy()) for x in batch.inputs] == refs
    ood = task.make_eval_set("ood", 20)[0]
    assert set(ood.loss_mask.sum(1).tolist()) <= {5, 6}
    assert torch.equal(task.train_batch(3, 4).inputs, DTMF(task.params, 1).train_batch(3, 4).inputs)


def test_dtmf_scores_a_perfect_transcript_and_the_empty_one() -> None:
    task = DTMF(DTMFParams(), seed=0)
    batches = task.make_eval_set("id", 16)
    # per-frame outputs spelling each row's digits with blanks between them
    outs = []
    for b in batches:
        rows = []
        for t, m in zip(b.targets, b.loss_mask):
            path = [x for d in t[m].tolist() for x in (d, 0)]
            rows.append(_one_hot_logits(path + [0] * (20 - len(path)), 11))
        outs.append(torch.stack(rows))
    metrics = task.score(outs, batches)
    assert metrics["label_error_rate"] == 0.0 and metrics["exact_match"] == 1.0
    assert metrics["baselines"]["empty"]["label_error_rate"] == 1.0
    assert metrics["baselines"]["goertzel"]["label_error_rate"] < 0.1
    assert task.score([torch.zeros(o.shape) for o in outs], batches)["label_error_rate"] == 1.0


def test_dtmf_params_are_checked() -> None:
    with pytest.raises(ValueError, match="duration"):
        DTMFParams(duration=0.5)
    with pytest.raises(ValueError, match="min_len"):
        DTMFParams(min_len=5, max_len=3)


def test_tones_classes_are_what_they_say() -> None:
    task = Tones(TonesParams(min_snr=40.0, max_snr=40.0), seed=0)
    x, y = task.train_examples(0, 60)
    assert x.shape == (60, 4000) and set(y.tolist()) <= set(range(len(TONE_CLASSES)))
    fb = mel_filterbank(256, 64, 8000)
    spec = log_mel(torch.from_numpy(x), fb, 256, 128)
    for row, label in zip(spec, y):
        name = TONE_CLASSES[int(label)]
        active = row.max(1).values > row.max() - 3  # frames within 3 nats of the loudest
        peaks = row.argmax(1)[active].float()
        if name in ("up_chirp", "down_chirp") and len(peaks) >= 6:
            slope = np.polyfit(np.arange(len(peaks)), peaks.numpy(), 1)[0]
            assert (slope > 0) == (name == "up_chirp"), name
        if name == "pure_tone":
            assert float(peaks.max() - peaks.min()) <= 2
    # deterministic per (seed, step), another step or seed differs
    again = Tones(task.params, 0).train_examples(0, 60)[0]
    assert np.array_equal(x, again)
    assert not np.array_equal(x, task.train_examples(1, 60)[0])


@pytest.mark.slow
def test_tones_baseline_beats_chance_and_ood_is_harder() -> None:
    task = registry.get("task", "tones").build(registry.get("task", "tones").make_params({}), 0)
    id_set, ood_set = task.make_eval_set("id", 300), task.make_eval_set("ood", 300)
    zero = [torch.zeros(len(b.targets), 6) for b in id_set]
    base_id = task.score(zero, id_set)["baselines"]
    base_ood = task.score([torch.zeros(len(b.targets), 6) for b in ood_set], ood_set)["baselines"]
    assert base_id["logreg"]["accuracy"] > 0.45 > 1 / 6 + 0.1
    assert base_ood["logreg"]["accuracy"] < base_id["logreg"]["accuracy"]
    pitch = Tones(TonesParams(ood="pitch"), 0)
    pitch_ood = pitch.make_eval_set("ood", 20)
    assert math.isfinite(pitch.score([torch.zeros(20, 6)], pitch_ood)["accuracy"])
