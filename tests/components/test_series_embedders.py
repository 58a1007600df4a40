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
    data = {**dict(kind="encoder", d_model=16, n_heads=2, n_layers=1, max_len=64, position="none",
                   embedder=embedder, head="forecast", n_outputs=4,
                   input_shape=[lookback, variates]), **extra}  # fmt: skip
    torch.manual_seed(0)
    return build_model(parse(ModelSpec, data)).eval()


@pytest.mark.parametrize("independent", [True, False])
def test_patch_tokens_equal_an_unfold(independent: bool) -> None:
    """Channel-independent: row ``b * C + c`` holds variate c's patches; channel blocks:
    block c of row b."""
    m = model({"name": "patches_1d", "patch_len": 4, "stride": 2,
               "channel_independent": independent})  # fmt: skip
    x = torch.randn(2, 12, 3)
    tokens = m.embed(x)
    n = (12 - 4) // 2 + 1
    assert tokens.shape == ((2 * 3, n, 16) if independent else (2, 3 * n, 16))
    w, b = m.embed.proj.weight, m.embed.proj.bias
    for c in range(3):
        for i in range(n):
            patch = x[:, 2 * i : 2 * i + 4, c]
            got = tokens.view(2, 3, n, 16)[:, c, i] if independent else tokens[:, c * n + i]
            torch.testing.assert_close(got, patch @ w.T + b)


@pytest.mark.parametrize("revin", [False, True])
def test_channel_independent_patches_forecast_each_variate_alone(revin: bool) -> None:
    """PatchTST's channel independence, exactly: changing variate j's window leaves every
    other variate's forecast bit-for-bit unchanged (through attention, FFN, norm and
    head), and each variate's forecast is the model run on that variate alone."""
    m = model({"name": "patches_1d", "patch_len": 4, "stride": 2, "revin": revin},
              variates=4, n_layers=2, position="learned")  # fmt: skip
    x = torch.randn(3, 12, 4)
    with torch.no_grad():
        y = m(x)
        for j in range(4):
            x2 = x.clone()
            x2[:, :, j] = 10 * torch.randn(3, 12)
            y2 = m(x2)
            others = [c for c in range(4) if c != j]
            assert torch.equal(y2[..., others], y[..., others])
            assert not torch.allclose(y2[..., j], y[..., j])
        # the tokens of variate c are a row of their own: the backbone sees [B * C, N, D]
        assert m.embed(x).shape[0] == 3 * 4


def test_channel_blocks_mix_the_variates() -> None:
    """``channel_independent: false`` lays the variates out in one row: attention mixes
    them, so another variate's forecast moves."""
    m = model({"name": "patches_1d", "patch_len": 4, "stride": 2, "channel_independent": False})
    x = torch.randn(2, 12, 3)
    with torch.no_grad():
        x2 = x.clone()
        x2[:, :, 0] += 5.0
        y, y2 = m(x), m(x2)
    assert not torch.allclose(y[..., 1:], y2[..., 1:])


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
