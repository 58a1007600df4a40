"""Invariants of the built-in mixers beyond their slot's contract.

The contract of every mixer (causal safety by perturbation under every position scheme,
with validation rejecting the combinations its capabilities exclude; padding invariance
in encoders; gradients reaching every parameter; cached decoding) and of every layout is
in :mod:`anyformer.lab.contracts` and runs from the registry in ``tests/test_contracts.py``.
Here: the softmax fast path against its reference and the metadata every mixer states.
"""

from __future__ import annotations

import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.spec import ModelSpec, parse

MIXERS = registry.components("attention")
# the token models here have no 2-D grid; the grid schemes (sincos_2d, learned_2d,
# rope_2d) refuse them and are tested in tests/components/test_position_2d.py
POSITIONS = [e.name for e in registry.entries("position") if not e.caps.grid]
T = 12
#: Parameters that fit these tests' model (a window must not be wider than max_len; one
#: narrower than T makes the invariants exercise the windowed path, not full attention).
PARAMS = {"sliding_window": {"window": 4}}


def _spec(kind: str, attention: str, position: str, **extra: object) -> ModelSpec | None:
    data = dict(
        kind=kind,
        vocab_size=23,
        d_model=32,
        n_heads=4,
        n_layers=2,
        max_len=32,
        attention={"name": attention, **PARAMS.get(attention, {})},
        position=position,
        **extra,
    )
    try:
        return parse(ModelSpec, data)
    except SpecError:
        return None


@pytest.mark.parametrize("position", POSITIONS)
def test_softmax_fast_path_equals_reference(position: str) -> None:
    for kind in ("decoder", "encoder"):
        fast = _spec(
            kind,
            "softmax",
            position,
            head="token_classify" if kind == "encoder" else None,
            n_outputs=5,
        )
        assert fast is not None
        data = fast.model_dump(mode="json")
        data["attention"] = {"name": "softmax", "impl": "reference"}
        ref_spec = parse(ModelSpec, data)
        torch.manual_seed(1)
        a = build_model(fast).eval()
        b = build_model(ref_spec).eval()
        b.load_state_dict(a.state_dict())
        x = torch.randint(4, 23, (3, T))
        mask = torch.ones(3, T, dtype=torch.bool)
        mask[1, 9:] = False
        with torch.no_grad():
            torch.testing.assert_close(a(x, mask), b(x, mask), atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", MIXERS)
def test_every_mixer_cites_a_paper_and_states_its_cost(attention: str) -> None:
    entry = registry.get("attention", attention)
    assert entry.summary
    assert entry.caps.complexity, f"{attention} must state its complexity in sequence length"
    if attention not in ("identity",):
        assert entry.paper is not None and entry.paper.year > 1900
