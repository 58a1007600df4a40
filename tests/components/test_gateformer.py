"""The ``gateformer`` embedder (Lan and Oermann, 2025): the gate at 1 gives the global
(iTransformer) tokens and at 0 the temporal ones, exactly; in between it mixes them as
``s * g + (1 - s) * h``; the temporal branch is channel-independent; and a small model
learns a VAR forecast better than the last value."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import anyformer
from anyformer.model.transformer import build_model
from anyformer.spec import ExperimentSpec, ModelSpec, parse


def model(embedder: str | dict = "gateformer", **extra) -> torch.nn.Module:  # noqa: ANN003
    base = {"name": "gateformer", "patch_len": 4, "stride": 2}
    if isinstance(embedder, dict):
        base |= embedder
    elif embedder != "gateformer":
        base = {"name": embedder}
    data = dict(kind="encoder", d_model=16, n_heads=2, n_layers=1, max_len=8, position="none",
                embedder=base, head="forecast", n_outputs=4, input_shape=[12, 3], **extra)  # fmt: skip
    torch.manual_seed(0)
    return build_model(parse(ModelSpec, data)).eval()


def set_gate(embed: torch.nn.Module, bias: float) -> None:
    """A constant gate: no weights, ``sigmoid(bias)`` (exactly 1 or 0 at +-200 in fp32)."""
    with torch.no_grad():
        for lin in (embed.gate_global, embed.gate_temporal):
            lin.weight.zero_()
            lin.bias.fill_(bias / 2)


def test_gate_at_one_gives_the_variate_tokens_and_at_zero_the_temporal_ones() -> None:
    m, inverted = model(), model("variates")
    with torch.no_grad():
        inverted.embed.proj.weight.copy_(m.embed.global_proj.weight)
        inverted.embed.proj.bias.copy_(m.embed.global_proj.bias)
    x = torch.randn(2, 12, 3)
    with torch.no_grad():
        set_gate(m.embed, 200.0)
        assert torch.equal(m.embed(x), inverted.embed(x))  # iTransformer's tokens, exactly
        set_gate(m.embed, -200.0)
        assert torch.equal(m.embed(x), m.embed.temporal_tokens(x))


def test_gate_mixes_the_branches_per_channel() -> None:
    m = model()
    e = m.embed
    with torch.no_grad():
        e.gate_global.bias.normal_()
        e.gate_temporal.bias.normal_()
        x = torch.randn(2, 12, 3)
        g, h = e.global_tokens(x), e.temporal_tokens(x)
        s = torch.sigmoid(g @ e.gate_global.weight.T + e.gate_global.bias
                          + h @ e.gate_temporal.weight.T + e.gate_temporal.bias)  # fmt: skip
        torch.testing.assert_close(e(x), s * g + (1 - s) * h)
        assert 0.05 < float(s.mean()) < 0.95  # a real mixture, not one branch


def test_temporal_tokens_without_layers_are_flattened_patches() -> None:
    m = model({"temporal_layers": 0})
    e = m.embed
    x = torch.randn(2, 12, 3)
    n = (12 - 4) // 2 + 1
    with torch.no_grad():
        for c in range(3):
            patches = torch.stack([x[:, 2 * i : 2 * i + 4, c] for i in range(n)], dim=1)
            tokens = patches @ e.patch_proj.weight.T + e.patch_proj.bias + e.patch_pos
            want = tokens.flatten(1) @ e.temporal_proj.weight.T + e.temporal_proj.bias
            torch.testing.assert_close(e.temporal_tokens(x)[:, c], want)


def test_temporal_branch_is_channel_independent() -> None:
    m = model({"temporal_layers": 2})
    x = torch.randn(2, 12, 3)
    x2 = x.clone()
    x2[:, :, 1] = torch.randn(2, 12)
    with torch.no_grad():
        h, h2 = m.embed.temporal_tokens(x), m.embed.temporal_tokens(x2)
    assert torch.equal(h[:, [0, 2]], h2[:, [0, 2]]) and not torch.allclose(h[:, 1], h2[:, 1])


@pytest.mark.slow
def test_gateformer_learns_var_better_than_the_last_value(tmp_path: Path) -> None:
    spec = ExperimentSpec.from_dict({
        "name": "gateformer-var",
        "model": {"kind": "encoder", "embedder": {"name": "gateformer", "revin": True},
                  "position": "none", "d_model": 32, "n_heads": 2, "n_layers": 1, "max_len": 4,
                  "head": "forecast"},
        "task": {"name": "forecast", "data": "var", "length": 3000, "lookback": 16, "horizon": 4},
        "train": {"steps": 200, "batch_size": 32, "lr": 3e-3, "warmup_steps": 20,
                  "eval_every": 200, "checkpoint_every": 200, "threads": 1, "progress": False},
    })  # fmt: skip
    run = anyformer.train(spec, out=str(tmp_path))
    id_ = run.metrics["id"]
    assert id_["mse"] < 0.8 * id_["baselines"]["last_value"]["mse"], id_
