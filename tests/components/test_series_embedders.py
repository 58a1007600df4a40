"""The series embedders and the forecast head: patch tokens are an unfold, RevIN inverts
exactly, variate tokens are permutation-equivariant, RevIN reaches the head."""

from __future__ import annotations

import pytest
import torch

from anyformer.components.embedders.series import RevIN
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.spec import ModelSpec, parse


def model(embedder: dict, lookback: int = 12, variates: int = 3, **extra) -> torch.nn.Module:  # noqa: ANN003
    data = dict(kind="encoder", d_model=16, n_heads=2, n_layers=1, max_len=64, position="none",
                embedder=embedder, head="forecast", n_outputs=4,
                input_shape=[lookback, variates], **extra)  # fmt: skip
    torch.manual_seed(0)
    return build_model(parse(ModelSpec, data)).eval()


def test_patch_tokens_equal_an_unfold() -> None:
    m = model({"name": "patches_1d", "patch_len": 4, "stride": 2})
    x = torch.randn(2, 12, 3)
    tokens = m.embed(x)
    n = (12 - 4) // 2 + 1
    assert tokens.shape == (2, 3 * n, 16)
    w, b = m.embed.proj.weight, m.embed.proj.bias
    for c in range(3):
        for i in range(n):
            patch = x[:, 2 * i : 2 * i + 4, c]
            torch.testing.assert_close(tokens[:, c * n + i], patch @ w.T + b)


def test_revin_inverts_exactly() -> None:
    revin = RevIN(3)
    with torch.no_grad():
        revin.gamma.copy_(torch.tensor([0.5, 2.0, -1.5]))
        revin.beta.copy_(torch.tensor([0.1, -0.3, 2.0]))
    x = torch.randn(4, 20, 3, dtype=torch.float64) * 5 + 3
    stats = revin.state(x)
    z = revin.normalize(x, stats)
    torch.testing.assert_close(revin.denormalize(z, stats), x)
    torch.testing.assert_close(stats.denormalize(z), x)
    # the normalised windows have the affine's mean and scale
    torch.testing.assert_close(z.mean(1), revin.beta.detach().double().expand(4, 3))


def test_revin_model_is_equivariant_to_affine_shifts() -> None:
    """With RevIN, a window scaled and shifted gives the forecast scaled and shifted
    (up to RevIN's epsilon)."""
    m = model({"name": "points", "revin": True})
    x = torch.randn(2, 12, 3)
    with torch.no_grad():
        y, y2 = m(x), m(3.0 * x + 5.0)
    assert y.shape == (2, 4, 3)
    torch.testing.assert_close(y2, 3.0 * y + 5.0, atol=1e-3, rtol=1e-3)


def test_variates_embedder_is_permutation_equivariant() -> None:
    m = model({"name": "variates"}, variates=5)
    x = torch.randn(2, 12, 5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        torch.testing.assert_close(m.embed(x[..., perm]), m.embed(x)[:, perm])
        torch.testing.assert_close(m(x[..., perm]), m(x)[..., perm])  # no positions: the model too


def test_points_tokens_are_a_linear_map_per_step() -> None:
    m = model({"name": "points"})
    x = torch.randn(2, 12, 3)
    torch.testing.assert_close(m.embed(x), x @ m.embed.proj.weight.T + m.embed.proj.bias)


def test_refusals_name_the_field() -> None:
    with pytest.raises(SpecError, match="patch_len"):
        model({"name": "patches_1d", "patch_len": 20})
    with pytest.raises(SpecError, match="revin"):
        parse(ModelSpec, dict(kind="encoder", d_model=16, n_heads=2, n_layers=1,
                              embedder={"name": "points", "revin": True}, head="regress",
                              n_outputs=4, input_shape=[12, 3]))  # fmt: skip
    with pytest.raises(SpecError, match="input_shape"):
        parse(ModelSpec, dict(kind="encoder", d_model=16, n_heads=2, n_layers=1,
                              embedder="variates", head="forecast", n_outputs=4,
                              input_shape=[3, 8, 8]))  # fmt: skip
