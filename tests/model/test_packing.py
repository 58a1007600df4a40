"""Padding-free batches: packed rows give the per-token outputs, losses and gradients of
padded ones, for every packing-capable mixer and position scheme, in decoders and
encoders; mixers that cannot keep documents apart are refused."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.model.transformer import Transformer, build_model
from anyformer.nn.packing import pack, positions_from_segments, segment_mask
from anyformer.objectives.losses import CausalLM, CausalLMParams
from anyformer.spec import ModelSpec, parse
from anyformer.tasks.base import Batch
from anyformer.tasks.packing import model_inputs, pack_batch, random_padded_batch

V = 31
LENGTHS = [5, 11, 2, 8, 3]
TOL = dict(atol=1e-5, rtol=0)


def _spec(kind: str, attention: dict[str, Any], position: str) -> ModelSpec | None:
    data = dict(kind=kind, vocab_size=V, d_model=32, n_heads=4, n_layers=2, max_len=32)
    data.update(attention=attention, position=position, head="lm", init_std=0.2)
    try:
        return parse(ModelSpec, data)
    except SpecError:
        return None


def _packing_capable() -> list[str]:
    return [e.name for e in registry.entries("attention") if e.caps.packing]


def _cases() -> list[Any]:
    cases = []
    variants = {"softmax": [{}, {"impl": "reference", "kv_heads": 2}]}
    for name in _packing_capable():
        for params in variants.get(name, [{}]):
            for kind in ("decoder", "encoder"):
                for position in registry.components("position"):
                    attention = {"name": name, **params}
                    if _spec(kind, attention, position) is not None:
                        label = "-".join([name, *map(str, params.values()), kind, position])
                        cases.append(pytest.param(kind, attention, position, id=label))
    return cases


def _padded_batch(lengths: list[int]) -> Batch:
    batch = random_padded_batch(lengths, V)
    batch.loss_mask = batch.loss_mask & (torch.rand(batch.loss_mask.shape) < 0.7)
    return batch


def test_the_softmax_family_supports_packing() -> None:
    assert {"softmax", "gated", "clipped_softmax"} <= set(_packing_capable())


def test_a_refusal_lists_the_attention_that_can_pack() -> None:
    """The message used to read the removed class attribute and list nothing."""
    from anyformer.spec import ModelSpec

    spec = ModelSpec(vocab_size=8, d_model=16, n_heads=2, attention="linear", position="none")
    problem = spec.packing_problem()
    assert problem is not None and "attention that can: " in problem
    assert "softmax" in problem.split("attention that can: ")[1]


@pytest.mark.parametrize(("kind", "attention", "position"), _cases())
def test_packed_equals_padded(kind: str, attention: dict, position: str) -> None:
    spec = _spec(kind, attention, position)
    model = build_model(spec).eval()  # type: ignore[arg-type]
    padded = _padded_batch(LENGTHS)
    packed, layout = pack_batch(padded, row_len=16)
    assert packed.inputs.shape[0] < padded.inputs.shape[0]  # really packed: fewer rows
    out_padded = model(padded.inputs, **model_inputs(padded))
    out_packed = model(packed.inputs, **model_inputs(packed))
    for row, n, seq in zip(out_padded, LENGTHS, layout.unpack(out_packed), strict=True):
        torch.testing.assert_close(seq, row[:n], **TOL)
    for answer_only in (True, False):
        loss = CausalLM(CausalLMParams(answer_only=answer_only))
        torch.testing.assert_close(loss(out_packed, packed), loss(out_padded, padded), **TOL)


def test_packed_training_step_has_the_gradients_of_the_padded_one() -> None:
    model = build_model(_spec("decoder", {"name": "softmax"}, "rope")).train()  # type: ignore[arg-type]
    padded = _padded_batch(LENGTHS)
    packed, _ = pack_batch(padded)
    loss = CausalLM(CausalLMParams(answer_only=False))
    grads = []
    for batch in (padded, packed):
        model.zero_grad()
        loss(model(batch.inputs, **model_inputs(batch)), batch).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_pack_places_whole_sequences_first_fit_decreasing() -> None:
    seqs = [torch.arange(n) + 100 * i for i, n in enumerate([7, 3, 5, 2, 6])]
    packed = pack(seqs, row_len=8)
    assert packed.inputs.shape == (3, 8)  # longest first: [7], [6, 2], [5, 3]
    rows: dict[int, list[int]] = {}
    for (row, start, n), seq in zip(packed.places, seqs, strict=True):
        rows.setdefault(row, []).append(n)
        assert torch.equal(packed.inputs[row, start : start + n], seq)
        assert torch.equal(packed.positions[row, start : start + n], torch.arange(n))
    assert sorted(sorted(v) for v in rows.values()) == [[2, 6], [3, 5], [7]]
    for seq, back in zip(seqs, packed.unpack(packed.inputs), strict=True):
        assert torch.equal(seq, back)
    real = packed.real
    assert int(real.sum()) == sum(len(s) for s in seqs)
    assert torch.equal(positions_from_segments(packed.segments)[real], packed.positions[real])
    with pytest.raises(ValueError, match="does not fit"):
        pack(seqs, row_len=6)


def test_segment_mask_is_block_diagonal() -> None:
    segments = torch.tensor([[1, 1, 2, 2, 2, 0]])
    mask = segment_mask(segments)[0, 0]
    expected = torch.block_diag(torch.ones(2, 2), torch.ones(3, 3), torch.ones(1, 1)).bool()
    assert torch.equal(mask, expected)


def test_mixers_that_cannot_keep_documents_apart_are_refused() -> None:
    segments = torch.tensor([[1, 1, 2, 2]])
    inputs = torch.randint(0, V, (1, 4))
    linear = build_model(_spec("decoder", {"name": "linear"}, "none"))  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="'linear' cannot keep packed documents apart"):
        linear(inputs, segments=segments)
    spec = dict(kind="encoder", vocab_size=V, d_model=32, n_heads=4, head="classify", n_outputs=3)
    classifier: Transformer = build_model(spec)
    with pytest.raises(SpecError, match="per-token head"):
        classifier(inputs, segments=segments)


def test_padding_must_trail_to_be_packed() -> None:
    batch = _padded_batch([3, 4])
    batch.padding_mask[0] = torch.tensor([False, True, True, True])  # type: ignore[index]
    with pytest.raises(ValueError, match="padding must trail"):
        pack_batch(batch)
