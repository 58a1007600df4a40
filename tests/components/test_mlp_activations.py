"""The MLP's ``gelu_tanh`` activation is GELU's tanh approximation (Hendrycks and Gimpel,
2016), GPT-2's ``gelu_new``, written out; it differs from the exact (erf) GELU; and
learned positions trace under ``torch.export`` (no data-dependent length check there)
while eager forwards still refuse positions beyond the table."""

from __future__ import annotations

import math

import pytest
import torch

from anyformer.components.ffn import MLP, MLPParams
from anyformer.model.transformer import build_model
from anyformer.registry import Dims


def test_gelu_tanh_is_the_tanh_formula_and_not_exact_gelu() -> None:
    mlp = MLP(
        Dims(d_model=8, n_heads=2, max_len=8, causal=True),
        MLPParams(activation="gelu_tanh", mult=2.0),
    )
    x = torch.linspace(-6, 6, 1001)
    formula = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(mlp.act(x), formula, atol=1e-6, rtol=1e-6)
    assert (mlp.act(x) - torch.nn.functional.gelu(x)).abs().max() > 1e-4


@pytest.mark.slow  # torch.export takes seconds; the default ONNX test covers the path too
def test_learned_positions_export_and_still_refuse_long_inputs_eagerly() -> None:
    model = build_model(dict(vocab_size=10, d_model=8, n_layers=1, n_heads=2,
                             position="learned", max_len=6)).eval()  # fmt: skip
    batch, seq = torch.export.Dim("batch", min=1, max=8), torch.export.Dim("seq", min=1, max=6)
    program = torch.export.export(model, (torch.randint(0, 10, (2, 4)),),
                                  dynamic_shapes=({0: batch, 1: seq},))  # fmt: skip
    x = torch.randint(0, 10, (2, 5))
    torch.testing.assert_close(program.module()(x), model(x))
    with pytest.raises(Exception, match="max_len"):
        model.position.embed(torch.zeros(1, 7, 8), torch.arange(7))
