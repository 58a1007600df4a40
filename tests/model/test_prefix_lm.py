"""The prefix LM (``kind: prefix_lm``; the non-causal decoder of T5, Raffel et al. 2020):
bidirectional attention over each row's prefix, causal after it, in one stack.

The causality test generalised: changing a token inside the prefix changes the outputs
at every position (earlier prefix positions too); changing a token after the prefix
never changes an earlier output. ``prefix_len = 0`` is a decoder, ``prefix_len = T`` an
encoder (same weights). Decoding takes the prompt as the prefix (one bidirectional
prefill), with a cache equal to recomputation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from anyformer import registry
from anyformer.components.attention.common import causal_part
from anyformer.components.base import Context
from anyformer.decoding import generate
from anyformer.errors import SpecError
from anyformer.lab.contracts._common import prefix_lm_visibility
from anyformer.model.transformer import Transformer, build_model
from anyformer.spec import ModelSpec, parse

V, T = 23, 12
PREFIX_MIXERS = [e.name for e in registry.entries("attention") if e.caps.prefix]


def _spec(kind: str = "prefix_lm", **extra: Any) -> ModelSpec:
    data: dict[str, Any] = dict(
        kind=kind, vocab_size=V, d_model=32, n_heads=4, n_layers=2, max_len=40, init_std=0.2
    )
    data.update(extra)
    return parse(ModelSpec, data)


def _model(kind: str = "prefix_lm", **extra: Any) -> Transformer:
    torch.manual_seed(0)
    return build_model(_spec(kind, **extra)).eval()


def _ids(b: int, t: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(4, V, (b, t), generator=torch.Generator().manual_seed(seed))


def test_the_mask_is_bidirectional_inside_the_prefix_and_causal_after() -> None:
    ctx = Context(torch.arange(5), True, None, prefix_len=torch.tensor([0, 2, 5]))  # type: ignore[arg-type]
    mask = causal_part(ctx, 5, torch.device("cpu"))
    assert mask is not None and mask.shape == (3, 1, 5, 5)
    causal = torch.ones(5, 5).tril().bool()
    assert torch.equal(mask[0, 0], causal)
    expected = causal.clone()
    expected[:, :2] = True  # every query sees the two prefix keys
    assert torch.equal(mask[1, 0], expected)
    assert mask[2, 0].all()


@pytest.mark.parametrize("attention", PREFIX_MIXERS)
def test_prefix_visibility_of_every_prefix_mixer(attention: str) -> None:
    """The generalised causality test (with rope; the contract checks run every scheme):
    a token inside the prefix reaches every position, one after it no earlier one;
    prefix_len=0 and None are a decoder; cached decoding after the prefix equals
    recomputation."""
    entry = registry.get("attention", attention)
    position = "rope" if "rotary" in entry.caps.position_modes else "alibi"
    prefix_lm_visibility(attention, position)


def test_prefix_covering_the_row_is_an_encoder() -> None:
    """With prefix_len = T every query sees every key: the outputs of an encoder with the
    same weights (and an lm head)."""
    model = _model()
    encoder = _model("encoder", head="lm")
    encoder.load_state_dict(model.state_dict())
    x = _ids(3, T)
    with torch.no_grad():
        full = model(x, prefix_len=torch.full((3,), T))
        torch.testing.assert_close(full, encoder(x), rtol=1e-5, atol=1e-5)
        # a padded row: the prefix covers its real tokens only, padding stays hidden
        mask = torch.ones(3, T, dtype=torch.bool)
        mask[1, 8:] = False
        padded = model(x, mask, prefix_len=torch.tensor([T, 8, T]))
        torch.testing.assert_close(padded[1, :8], encoder(x[1:2, :8])[0], rtol=1e-5, atol=1e-5)


def test_prefix_lm_equals_hand_written_attention() -> None:
    """One softmax layer without FFN: the block's output is x + out(softmax(q k^T/sqrt d
    + mask) v) with the prefix mask written out by hand."""
    model = _model(n_layers=1, ffn="none", position="none", norm_placement="post", norm="none")
    block = model.blocks[0]
    x = torch.randn(2, 6, 32)
    prefix = torch.tensor([3, 1])
    ctx = Context(torch.arange(6), True, model.position, prefix_len=prefix)
    with torch.no_grad():
        got = block.mixer(x, ctx)
        q, k, v = block.mixer.project(x)
        scores = q @ k.transpose(-1, -2) / 8**0.5
        allowed = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
        for b, p in enumerate(prefix.tolist()):
            for i in range(6):
                for j in range(6):
                    allowed[b, 0, i, j] = j <= i or j < p
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        want = block.mixer.out((probs @ v).transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "attention", [n for n in PREFIX_MIXERS if registry.get("attention", n).caps.kv_cache]
)
def test_generation_takes_the_prompt_as_the_prefix(attention: str) -> None:
    """generate() on a prefix LM: cached and recomputed decoding agree; the first new
    token's logits are those of a forward with prefix_len = the prompt; ragged prompts
    in one call give each row what it gives alone."""
    model = _model(attention=attention, position="alibi")
    prompts = _ids(3, 6, 1)
    cached, cached_logits = generate(model, prompts, 6, use_cache=True, return_logits=True)
    full, full_logits = generate(model, prompts, 6, use_cache=False, return_logits=True)
    assert torch.equal(cached, full)
    torch.testing.assert_close(cached_logits, full_logits, rtol=0, atol=1e-4)
    with torch.no_grad():
        first = model(prompts, prefix_len=torch.full((3,), 6))[:, -1]
        causal = model(prompts)[:, -1]
    torch.testing.assert_close(full_logits[:, 0], first, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(first, causal)  # the prefix really is bidirectional
    mask = torch.ones(3, 6, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 2:] = False
    ragged = generate(model, prompts, 4, padding_mask=mask)
    for row in range(3):
        n = int(mask[row].sum())
        alone = generate(model, prompts[row : row + 1, :n], 4)
        assert torch.equal(ragged[row, : n + 4], alone[0]), row


def test_validation_refuses_a_mixer_without_prefix_naming_it() -> None:
    with pytest.raises(SpecError, match="attention='linear' cannot attend bidirectionally"):
        _spec(attention="linear", position="none")
    with pytest.raises(SpecError, match="layers.1.attention='sliding_window'"):
        _spec(layers={1: {"attention": {"name": "sliding_window", "window": 4}}})
    with pytest.raises(SpecError, match="attention='urpe'"):
        _spec(attention="urpe", position="none")


def test_prefix_len_is_refused_by_other_kinds_and_checked() -> None:
    decoder = _model("decoder")
    with pytest.raises(SpecError, match="prefix_len is read by model.kind=prefix_lm"):
        decoder(_ids(2, 5), prefix_len=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="one length per row"):
        _model()(_ids(2, 5), prefix_len=torch.tensor([1, 2, 3]))
    # an encoder-decoder's source given to a single stack is refused, not ignored
    for kind in ("decoder", "prefix_lm"):
        with pytest.raises(SpecError, match="source is read by model.kind=encoder_decoder"):
            _model(kind)(_ids(2, 5), source=_ids(2, 4))
    with pytest.raises(SpecError, match="kind=prefix_lm takes padded rows"):
        from anyformer.spec import ExperimentSpec

        ExperimentSpec.from_dict(
            {"model": {"kind": "prefix_lm", "head": "lm"}, "train": {"packing": True}}
        )


def test_model_inputs_pass_prefix_len_from_the_batch() -> None:
    from anyformer.tasks.base import Batch
    from anyformer.tasks.packing import model_inputs

    x = _ids(2, 5)
    batch = Batch(
        x, x, torch.ones(2, 5, dtype=torch.bool), extras={"prefix_len": torch.tensor([2, 3])}
    )
    kwargs = model_inputs(batch)
    assert torch.equal(kwargs["prefix_len"], torch.tensor([2, 3]))
    model = _model()
    with torch.no_grad():
        assert torch.equal(model(x, **kwargs), model(x, prefix_len=torch.tensor([2, 3])))
