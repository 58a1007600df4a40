"""What the token-level pretraining objectives compute: the corruption statistics of
``mlm`` (BERT), ``span_corruption`` (T5) and ``masked_diffusion`` (MDLM), the sentinel
bookkeeping's round trip, ``prefix_lm``'s split, ``position_prediction``'s targets and
its model's blindness to order, ``multi_token``'s offsets and its equality with
``causal_lm`` at ``k = 1``, the diffusion ELBO on a hand case and the unmasking
sampler against greedy unmasking built by hand."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from anyformer import registry
from anyformer.decoding import unmask_sample
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.objectives.diffusion import WEIGHT, elbo_weight
from anyformer.objectives.losses import CausalLM, CausalLMParams, attach_objective
from anyformer.objectives.multi_token import offset_targets
from anyformer.objectives.spans import restore_row, span_counts
from anyformer.spec import ExperimentSpec, ModelSpec
from anyformer.tasks.base import Batch


def objective(name: str, vocab: int = 300, **params: Any) -> Any:
    """The objective ``name`` with ``params``, fitted to a model of ``vocab`` ids."""
    entry = registry.get("objective", name)
    obj = entry.build(entry.make_params(params))
    model = {"vocab_size": vocab, "max_len": 64, "d_model": 16, "n_heads": 2, "n_layers": 1}
    if name == "position_prediction":
        model.update(position="none", head="token_classify", n_outputs=64, kind="encoder")
    return obj.for_model(ModelSpec(**model))


def ragged(rows: int, length: int, vocab: int, seed: int = 0) -> Batch:
    """Rows of ids ``1 .. vocab - 12`` (the top ids stay free), real lengths from
    ``length // 2`` to ``length``, padded with 0 at the end; next-token targets."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab - 11, (rows, length + 1), generator=g)
    lengths = torch.randint(length // 2, length + 1, (rows,), generator=g)
    real = torch.arange(length)[None, :] < lengths[:, None]
    inputs = ids[:, :-1].masked_fill(~real, 0)
    return Batch(inputs, ids[:, 1:].masked_fill(~real, 0), real.clone(), real.clone())


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- mlm
def test_mlm_rates_padding_and_targets() -> None:
    mlm = objective("mlm", vocab=300)
    batch = ragged(80, 500, 300)  # ~30k real tokens
    out = mlm.corrupt(batch, gen())
    real = batch.padding_mask
    selected = out.loss_mask
    assert not (selected & ~real).any()  # padding is never selected
    assert torch.equal(out.targets, batch.inputs)  # the originals
    rate = selected.sum() / real.sum()
    assert abs(float(rate) - 0.15) < 0.01
    n = selected.sum()
    masked = (out.inputs == 299) & selected
    kept = (out.inputs == batch.inputs) & selected
    swapped = selected & ~masked & ~kept
    assert abs(float(masked.sum() / n) - 0.8) < 0.02
    assert abs(float(kept.sum() / n) - 0.1) < 0.02  # (+1/299: a random id may be the same)
    assert abs(float(swapped.sum() / n) - 0.1) < 0.02
    assert torch.equal(out.inputs[~selected], batch.inputs[~selected])  # the rest unchanged
    assert not ((out.inputs == 299) & ~selected).any()
    assert out.inputs.max() < 300


def test_mlm_reads_out_the_selected_positions_alone_with_the_full_forwards_loss() -> None:
    """``readout_mask``: the head runs on the selected positions only (outputs
    ``[N, V]`` equal to the full forward's rows there), and MLM's training loss and its
    gradients equal those of the full forward's :meth:`loss`."""
    torch.manual_seed(0)
    model = build_model(
        ModelSpec(
            kind="encoder",
            head="lm",
            vocab_size=300,
            max_len=32,
            d_model=16,
            n_heads=2,
            n_layers=2,
        )
    )
    mlm = objective("mlm", vocab=300)
    batch = mlm.corrupt(ragged(6, 24, 300), gen(3))
    full = model(batch.inputs, batch.padding_mask)
    sparse = model(batch.inputs, batch.padding_mask, readout_mask=batch.loss_mask)
    assert sparse.shape == (int(batch.loss_mask.sum()), 300)
    torch.testing.assert_close(sparse, full[batch.loss_mask], rtol=1e-5, atol=1e-6)

    def forward(b: Batch) -> list:
        kwargs = {k: v for k, v in b.extras.items() if k == "readout_mask"}
        return [(1.0, model(b.inputs, b.padding_mask, **kwargs))]

    got = mlm.training_loss(model, batch, 0, forward)
    got.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want = mlm.loss(model(batch.inputs, batch.padding_mask), batch)
    want.backward()
    torch.testing.assert_close(got, want)
    for g, p in zip(grads, model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="not both"):
        model(batch.inputs, readout_mask=batch.loss_mask, last_only=True)


def test_mlm_draws_only_from_its_generator() -> None:
    mlm = objective("mlm")
    batch = ragged(4, 50, 300)
    a, b = mlm.corrupt(batch, gen(1)), mlm.corrupt(batch, gen(1))
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.loss_mask, b.loss_mask)
    assert not torch.equal(a.loss_mask, mlm.corrupt(batch, gen(2)).loss_mask)


def test_reserved_ids_are_checked() -> None:
    mlm = objective("mlm", vocab=300)
    batch = ragged(2, 10, 300)
    batch.inputs[0, 0] = 299  # the task uses the mask token's id
    with pytest.raises(SpecError, match=r"\[299\] \(mask_token\).*model.vocab_size"):
        mlm.corrupt(batch, gen())
    with pytest.raises(SpecError, match="objective.mask_token=300 is not a token id"):
        objective("mlm", vocab=300, mask_token=300)
    with pytest.raises(SpecError, match="first_sentinel"):
        objective("span_corruption", vocab=300, first_sentinel=5, sentinels=11)


def test_objectives_are_refused_for_other_model_kinds() -> None:
    base = {"name": "k", "model": {"d_model": 16, "n_layers": 1, "n_heads": 2},
            "task": "copy"}  # fmt: skip
    for name, kind in [("mlm", "decoder"), ("span_corruption", "encoder"),
                       ("prefix_lm", "decoder"), ("masked_diffusion", "decoder"),
                       ("multi_token", "encoder"), ("position_prediction", "decoder")]:  # fmt: skip
        spec = {**base, "objective": name, "model": {**base["model"], "kind": kind}}
        with pytest.raises(SpecError, match=f"objective='{name}' trains model.kind"):
            ExperimentSpec.from_dict(spec)


# --------------------------------------------------------------------------- span corruption
def test_span_counts_follow_t5() -> None:
    assert span_counts(128, 0.15, 3.0) == (19, 6)
    assert span_counts(512, 0.15, 3.0) == (77, 26)
    assert span_counts(2, 0.15, 3.0) == (1, 1)


def test_span_corruption_round_trips_on_ragged_rows() -> None:
    spans = objective("span_corruption", vocab=300)
    sentinels = spans.sentinel_ids()
    assert sentinels[:3] == [299, 298, 297]
    batch = ragged(32, 40, 300)
    out = spans.corrupt(batch, gen())
    source, source_mask = out.extras["source"], out.extras["source_mask"]
    assert torch.equal(out.padding_mask, out.loss_mask)  # every real decoder input scored
    for i in range(32):
        text = batch.inputs[i][batch.padding_mask[i]]
        src = source[i][source_mask[i]]
        # the decoder reads sentinel 0 first; its targets are the rest, ending on sentinel n
        full = torch.cat([out.inputs[i, :1], out.targets[i][out.loss_mask[i]]])
        assert torch.equal(out.inputs[i][out.padding_mask[i]], full[:-1])
        n = int(torch.isin(src, torch.tensor(sentinels)).sum())
        assert src[torch.isin(src, torch.tensor(sentinels))].tolist() == sentinels[:n]
        assert full[0] == sentinels[0] and full[-1] == sentinels[n]
        assert torch.equal(restore_row(src, full, sentinels), text)


def test_span_lengths_and_density() -> None:
    spans = objective("span_corruption", vocab=300, mean_span_length=3.0, noise_density=0.15)
    sentinels = torch.tensor(spans.sentinel_ids())
    batch = ragged(200, 64, 300)
    noise = n_spans = 0
    lengths = []
    out = spans.corrupt(batch, gen(3))
    for i in range(200):
        target = out.targets[i][out.loss_mask[i]]
        is_sentinel = torch.isin(target, sentinels)
        noise += int((~is_sentinel).sum())
        n_spans += int(is_sentinel.sum())  # the sentinel after each span
        run = 0
        for s in is_sentinel.tolist():
            if s:
                lengths.append(run)
                run = 0
            else:
                run += 1
    real = int(batch.padding_mask.sum())
    assert abs(noise / real - 0.15) < 0.01
    assert abs(noise / n_spans - 3.0) < 0.15
    assert min(lengths) >= 1  # every span holds a token


def test_span_corruption_needs_enough_sentinels() -> None:
    spans = objective("span_corruption", vocab=300, sentinels=3)
    with pytest.raises(SpecError, match="needs 7 sentinels, but objective.sentinels=3"):
        spans.corrupt(ragged(1, 128, 300).__class__(*[torch.ones(1, 128, dtype=torch.long)] * 2,
                                                   torch.ones(1, 128, dtype=torch.bool)), gen())  # fmt: skip


# --------------------------------------------------------------------------- prefix LM
def test_prefix_lm_scores_only_the_continuation() -> None:
    prefix = objective("prefix_lm")
    batch = ragged(64, 30, 300)
    out = prefix.corrupt(batch, gen())
    p = out.extras["prefix_len"]
    n = batch.padding_mask.sum(dim=1)
    assert ((p >= 1) & (p <= n)).all()
    t = torch.arange(30)[None, :]
    assert torch.equal(out.loss_mask, batch.padding_mask & (t >= p[:, None] - 1))
    assert torch.equal(out.inputs, batch.inputs) and torch.equal(out.targets, batch.targets)
    assert len(set(p.tolist())) > 5  # split points vary


# --------------------------------------------------------------------------- position prediction
def test_position_targets_and_key_masking() -> None:
    pos = objective("position_prediction", mask_ratio=0.5)
    batch = ragged(50, 40, 300)
    out = pos.corrupt(batch, gen())
    assert torch.equal(out.targets, torch.arange(40).expand(50, 40))
    assert torch.equal(out.loss_mask, batch.padding_mask)  # every real token scored
    visible = out.padding_mask
    assert not (visible & ~batch.padding_mask).any() and visible.any(dim=1).all()
    assert abs(float(visible.sum() / batch.padding_mask.sum()) - 0.5) < 0.05


def test_position_prediction_refuses_a_model_that_knows_positions() -> None:
    entry = registry.get("objective", "position_prediction")
    pos = entry.build(entry.make_params())
    model = {"vocab_size": 30, "max_len": 16, "d_model": 16, "n_heads": 2, "n_layers": 1,
             "kind": "encoder", "head": "token_classify", "n_outputs": 16}  # fmt: skip
    with pytest.raises(SpecError, match="model.position='rope' gives them"):
        pos.for_model(ModelSpec(**model))
    with pytest.raises(SpecError, match="set model.n_outputs=16"):
        pos.for_model(ModelSpec(**{**model, "position": "none", "n_outputs": 8}))


def test_a_model_without_positions_cannot_read_the_order() -> None:
    """Permuting the tokens permutes the outputs: positions come from content alone."""
    torch.manual_seed(0)
    spec = ModelSpec(vocab_size=30, max_len=16, d_model=16, n_heads=2, n_layers=2,
                     kind="encoder", position="none", head="token_classify", n_outputs=16)  # fmt: skip
    model = build_model(spec).eval()
    x = torch.randint(0, 30, (3, 16))
    perm = torch.randperm(16)
    with torch.no_grad():
        assert torch.allclose(model(x)[:, perm], model(x[:, perm]), atol=1e-5)


# --------------------------------------------------------------------------- multi-token
def tiny_decoder(vocab: int = 40) -> Any:
    torch.manual_seed(0)
    return build_model(ModelSpec(vocab_size=vocab, max_len=32, d_model=16, n_heads=2, n_layers=1))


def forward_of(model: Any) -> Any:
    return lambda b: [(1.0, model(b.inputs, b.padding_mask))]


def test_multi_token_with_one_head_is_causal_lm() -> None:
    model = tiny_decoder()
    batch = ragged(4, 20, 40)
    mt = objective("multi_token", vocab=40, k=1)
    assert mt.module(model) is None
    got = mt.training_loss(model, batch, 0, forward_of(model))
    want = CausalLM(CausalLMParams()).training_loss(model, batch, 0, forward_of(model))
    assert torch.equal(got, want)


def test_offset_targets_are_inputs_shifted() -> None:
    batch = ragged(3, 12, 40)
    for j in (1, 2, 3):
        targets, mask = offset_targets(batch, batch.loss_mask, j)
        for i in range(3):
            n = int(batch.padding_mask[i].sum())
            # the token j places after input t is input t + j
            assert torch.equal(targets[i, : n - j], batch.inputs[i, j:n])
            assert mask[i, : n - j + 1].all() and not mask[i, n - j + 1 :].any()


def test_multi_token_loss_is_the_mean_over_offsets() -> None:
    """At initialisation every extra head is the identity before the shared head, so
    the loss is the mean of the next-token head's cross-entropies at offsets 1..k."""
    model = tiny_decoder()
    batch = ragged(4, 20, 40)
    mt = objective("multi_token", vocab=40, k=3)
    attach_objective(model, mt)
    got = mt.training_loss(model, batch, 0, forward_of(model))
    logits = model(batch.inputs, batch.padding_mask)
    want = (
        sum(
            F.cross_entropy(logits[m], t[m])
            for t, m in (offset_targets(batch, batch.loss_mask, j) for j in (1, 2, 3))
        )
        / 3
    )
    assert torch.allclose(got, want, atol=1e-6)
    got.backward()
    assert all(p.grad is not None for p in model.objective_module.parameters())


# --------------------------------------------------------------------------- masked diffusion
def test_diffusion_masks_at_rate_t_with_the_elbo_weight() -> None:
    diff = objective("masked_diffusion", vocab=300)
    batch = ragged(64, 400, 300)
    out = diff.corrupt(batch, gen())
    t = out.extras["diffusion_t"]
    assert sorted((t * 64).floor().long().tolist()) == list(range(64))  # stratified
    assert torch.allclose(out.extras[WEIGHT], 1 / t)
    rate = out.loss_mask.sum(dim=1) / batch.padding_mask.sum(dim=1)
    assert (rate - t).abs().max() < 0.1
    assert torch.equal(out.inputs[out.loss_mask], torch.full_like(out.inputs[out.loss_mask], 299))
    assert torch.equal(out.inputs[~out.loss_mask], batch.inputs[~out.loss_mask])
    assert not (out.loss_mask & ~batch.padding_mask).any()


def test_diffusion_elbo_on_a_hand_case() -> None:
    diff = objective("masked_diffusion", vocab=5, mask_token=4)
    inputs = torch.tensor([[4, 1, 4, 0], [2, 4, 3, 3]])
    targets = torch.tensor([[2, 1, 3, 0], [2, 0, 3, 3]])
    masked = inputs == 4
    real = torch.tensor([[True, True, True, False], [True, True, True, True]])
    t = torch.tensor([0.5, 0.25])
    batch = Batch(inputs, targets, masked, real, extras={WEIGHT: elbo_weight(t, "linear")})
    logits = torch.randn(2, 4, 5)
    p = logits[..., :4].log_softmax(-1)  # the mask token's logit is -inf
    row0 = (1 / 0.5) * -(p[0, 0, 2] + p[0, 2, 3]) / 3
    row1 = (1 / 0.25) * -p[1, 1, 0] / 4
    assert torch.allclose(diff.loss(logits, batch), (row0 + row1) / 2, atol=1e-6)
    half = math.pi / 4
    cosine = elbo_weight(torch.tensor([0.5]), "cosine")
    assert torch.allclose(
        cosine, torch.tensor([(math.pi / 2) * math.sin(half) / (1 - math.cos(half))])
    )


class TableModel(torch.nn.Module):
    """Logits from a fixed random function of the whole sequence (so each step's
    confidences change with what was unmasked)."""

    def __init__(self, vocab: int, length: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Parameter(torch.randn(vocab, 8, generator=g))
        self.mix = torch.nn.Parameter(torch.randn(length, length, generator=g))
        self.out = torch.nn.Parameter(torch.randn(8, vocab, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mix @ self.embed[x]) @ self.out


def test_one_step_per_token_is_greedy_unmasking() -> None:
    vocab, length, mask = 7, 6, 6
    model = TableModel(vocab, length)
    got = unmask_sample(model, length, mask, n=2, steps=length)
    # the reference: unmask one token at a time, the most confident, greedily
    x = torch.full((2, length), mask)
    for _ in range(length):
        with torch.no_grad():
            probs = model(x).float()
        probs[..., mask] = float("-inf")
        probs = probs.softmax(-1)
        for r in range(2):
            best = max((float(probs[r, i].max()), i) for i in range(length) if x[r, i] == mask)[1]
            x[r, best] = int(probs[r, best].argmax())
    assert torch.equal(got, x)


def test_sampler_unmasks_everything_and_keeps_the_prompt() -> None:
    model = TableModel(7, 8)
    prompt = torch.tensor([[1, 2], [3, 4]])
    for order in ("confidence", "random"):
        out = unmask_sample(model, 8, 6, n=2, prompt=prompt, steps=3, temperature=1.0,
                            order=order, generator=gen(0))  # fmt: skip
        again = unmask_sample(model, 8, 6, n=2, prompt=prompt, steps=3, temperature=1.0,
                              order=order, generator=gen(0))  # fmt: skip
        assert torch.equal(out, again)
        assert torch.equal(out[:, :2], prompt) and not (out == 6).any()


# --------------------------------------------------------------------------- every objective
@pytest.mark.parametrize(
    "name", ["mlm", "span_corruption", "prefix_lm", "position_prediction", "masked_diffusion"]
)
def test_corrupt_draws_only_from_its_generator(name: str) -> None:
    kwargs = {"mask_ratio": 0.3} if name == "position_prediction" else {}
    obj = objective(name, **kwargs)
    batch = ragged(8, 40, 300)
    state = torch.random.get_rng_state()
    a, b = obj.corrupt(batch, gen(5)), obj.corrupt(batch, gen(5))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator untouched
    for x, y in ((a.inputs, b.inputs), (a.targets, b.targets), (a.loss_mask, b.loss_mask)):
        assert torch.equal(x, y)
    assert a.extras.keys() == b.extras.keys()
    assert all(torch.equal(a.extras[k], b.extras[k]) for k in a.extras)
    c = obj.corrupt(batch, gen(6))
    differs = not torch.equal(a.loss_mask, c.loss_mask) or not torch.equal(a.inputs, c.inputs)
    assert differs or not torch.equal(a.padding_mask, c.padding_mask)
