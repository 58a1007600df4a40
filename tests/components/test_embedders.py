"""The image and table embedders compute what their papers define (exact equivalences
with the defining unfold / convolution / formula), lay out the tokens they say, and
refuse inputs they cannot read, naming the field."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anyformer.components.embedders.conv_stem import ConvStemEmbedder, ConvStemParams
from anyformer.components.embedders.features import FeaturesParams, FeatureTokenizer
from anyformer.components.embedders.patches import PatchEmbedder, PatchesParams
from anyformer.components.embedders.t2t import T2TEmbedder, T2TParams
from anyformer.components.embedders.tnt import TNTEmbedder, TNTParams
from anyformer.errors import SpecError

NAN = float("nan")


def spec(*shape: int, d_model: int = 16) -> types.SimpleNamespace:
    return types.SimpleNamespace(d_model=d_model, input_shape=tuple(shape), dropout=0.0)


def image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- patches (ViT) ---------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3, 5])
def test_patch_tokens_are_the_unfolded_patches_times_the_projection(channels: int) -> None:
    s = spec(channels, 8, 12)
    emb = PatchEmbedder(s, PatchesParams(patch_size=4, cls=False)).double()
    x = image(2, channels, 8, 12)
    patches = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # [B, 6, C*16]
    w = emb.proj.weight.reshape(16, -1)  # [D, C*p*p] in unfold's order
    expected = patches @ w.T + emb.proj.bias
    got = emb(x)
    assert got.shape == (2, 6, 16)
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    assert PatchEmbedder.layout(PatchesParams(patch_size=4, cls=False), s).grid == (2, 3)


def test_cls_and_registers_are_prepended_and_counted_by_the_layout() -> None:
    s = spec(1, 8, 8)
    params = PatchesParams(patch_size=4, cls=True, registers=2)
    emb = PatchEmbedder(s, params).double()
    x = image(3, 1, 8, 8)
    out = emb(x)
    layout = PatchEmbedder.layout(params, s)
    assert (layout.length, layout.grid, layout.n_prefix) == (7, (2, 2), 3)
    assert out.shape == (3, 7, 16)
    for b in range(3):
        torch.testing.assert_close(out[b, 0], emb.prefix.cls[0, 0])
        torch.testing.assert_close(out[b, 1:3], emb.prefix.registers[0])
    bare = PatchEmbedder(s, PatchesParams(patch_size=4, cls=False))
    bare.load_state_dict({k: v for k, v in emb.state_dict().items() if k.startswith("proj")})
    torch.testing.assert_close(out[:, 3:], bare.double()(x))


def test_a_post_sequence_cls_follows_the_grid_and_is_not_a_prefix() -> None:
    s = spec(1, 8, 8)
    params = PatchesParams(patch_size=4, cls_position="last", registers=1)
    emb = PatchEmbedder(s, params)
    out = emb(torch.randn(2, 1, 8, 8))
    layout = PatchEmbedder.layout(params, s)
    assert (layout.length, layout.n_prefix) == (6, 1)
    torch.testing.assert_close(out[:, -1], emb.prefix.cls[0].expand(2, -1))
    torch.testing.assert_close(out[:, 0], emb.prefix.registers[0].expand(2, -1))


def test_patches_refuse_a_side_the_patch_size_does_not_divide() -> None:
    why = PatchEmbedder.check(PatchesParams(patch_size=3), spec(1, 8, 8))
    assert why and "model.input_shape=[1, 8, 8]" in why and "patch_size=3" in why
    assert "1, 2, 4, 8" in why
    with pytest.raises(ValueError, match="patch_size=3"):
        PatchEmbedder(spec(1, 8, 8), PatchesParams(patch_size=3))
    why = PatchEmbedder.check(PatchesParams(), spec(64))
    assert why and "model.input_shape=[64]" in why and "[channels, height, width]" in why
    none = types.SimpleNamespace(d_model=16, input_shape=None, dropout=0.0)
    assert "model.input_shape=None" in (PatchEmbedder.check(PatchesParams(), none) or "")


# --- conv_stem (CvT) -------------------------------------------------------------------


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(3, 2, None), (7, 4, 2), (3, 1, 0)])
def test_conv_stem_is_the_convolution_then_layernorm(kernel: int, stride: int, padding) -> None:
    s = spec(3, 16, 12)
    params = ConvStemParams(kernel=kernel, stride=stride, padding=padding)
    emb = ConvStemEmbedder(s, params).double()
    with torch.no_grad():
        emb.norm.weight.normal_()
        emb.norm.bias.normal_()
    x = image(2, 3, 16, 12)
    conv = F.conv2d(x, emb.conv.weight, emb.conv.bias, stride=stride, padding=params.pad)
    grid = conv.shape[-2:]
    tokens = conv.flatten(2).transpose(1, 2)
    expected = F.layer_norm(tokens, (16,), emb.norm.weight, emb.norm.bias)
    torch.testing.assert_close(emb(x), expected, atol=1e-12, rtol=0)
    layout = ConvStemEmbedder.layout(params, s)
    assert layout.grid == tuple(grid) and layout.length == grid[0] * grid[1]
    # overlapping windows: with stride < kernel, one pixel reaches several tokens
    if stride < kernel:
        y = x.clone()
        q = 2 * stride - params.pad  # padded index 2s: inside windows 1 and 2 (at least)
        per_axis = sum(j * stride <= 2 * stride <= j * stride + kernel - 1 for j in range(grid[1]))
        assert per_axis > 1
        y[:, :, q, q] += 1.0
        changed = (emb(y) - emb(x)).abs().sum(-1) > 0
        assert int(changed[0].sum()) == per_axis**2


def test_conv_stem_refuses_an_image_smaller_than_its_kernel() -> None:
    why = ConvStemEmbedder.check(ConvStemParams(kernel=7, padding=0), spec(1, 4, 4))
    assert why and "model.input_shape=[1, 4, 4]" in why and "kernel=7" in why
    assert "padding=3" in (
        ConvStemEmbedder.check(ConvStemParams(kernel=3, padding=3), spec(1, 8, 8)) or ""
    )


# --- t2t -------------------------------------------------------------------------------


def test_soft_split_then_refold_keeps_the_grid_of_the_unfold() -> None:
    x = image(2, 3, 9, 7)
    tokens = T2TEmbedder.soft_split(x, 3, 2, 1)
    unfolded = F.unfold(x, 3, padding=1, stride=2)  # [B, C*9, L]
    grid = (5, 4)
    assert tokens.shape == (2, 20, 27)
    refolded = T2TEmbedder.refold(tokens, grid)
    torch.testing.assert_close(refolded, unfolded.view(2, 27, *grid), atol=0, rtol=0)
    # cell (r, c) of the re-folded map is the window centred at pixel (2r, 2c)
    padded = F.pad(x, (1, 1, 1, 1))
    for r, c in [(0, 0), (2, 3), (4, 1)]:
        window = padded[:, :, 2 * r : 2 * r + 3, 2 * c : 2 * c + 3].reshape(2, -1)
        torch.testing.assert_close(refolded[:, :, r, c], window, atol=0, rtol=0)


def test_t2t_with_identity_layers_is_the_projection_of_repeated_unfolds() -> None:
    # one channel, 3x3 windows: the first split's tokens are 9 wide, so token_dim=9 lets
    # an identity stand in for the transformer layer
    s = spec(1, 12, 12)
    params = T2TParams(kernel=[3, 3], stride=[2, 2], token_dim=9, heads=1, cls=False)
    emb = T2TEmbedder(s, params).double()
    emb.layers[0] = nn.Identity()
    x = image(2, 1, 12, 12)
    first = F.unfold(x, 3, padding=1, stride=2).view(2, 9, 6, 6)
    second = F.unfold(first, 3, padding=1, stride=2).transpose(1, 2)  # [B, 9, 81]
    expected = second @ emb.proj.weight.T + emb.proj.bias
    torch.testing.assert_close(emb(x), expected, atol=1e-12, rtol=0)
    assert T2TEmbedder.layout(params, s).grid == (3, 3)


def test_t2t_runs_its_transformer_layer_between_splits() -> None:
    s = spec(2, 8, 8)
    emb = T2TEmbedder(s, T2TParams(cls=True, registers=1))
    x = torch.randn(2, 2, 8, 8)
    out = emb(x)
    layout = T2TEmbedder.layout(T2TParams(cls=True, registers=1), s)
    assert out.shape == (2, layout.length, 16) and layout.n_prefix == 2 and layout.grid == (2, 2)
    with torch.no_grad():
        emb.layers[0].mlp[2].bias.add_(1.0)
    assert not torch.allclose(emb(x), out)


def test_t2t_refuses_bad_splits_naming_the_field() -> None:
    why = T2TEmbedder.check(T2TParams(kernel=[5, 5], stride=[4, 4], padding=[0, 0]), spec(1, 8, 8))
    assert why and "soft split 1" in why and "kernel[1]=5" in why and "input_shape=[1, 8, 8]" in why
    from anyformer.errors import SpecError
    from anyformer.registry import get

    with pytest.raises(SpecError, match="one value per soft split"):
        get("embedder", "t2t").make_params(
            {"kernel": [3, 3], "stride": [2]}, where="model.embedder"
        )


# --- tnt -------------------------------------------------------------------------------


def test_tnt_inner_tokens_are_the_pixels_of_each_patch() -> None:
    s = spec(3, 8, 12)
    emb = TNTEmbedder(s, TNTParams(patch_size=4, word_size=1))
    x = torch.randn(2, 3, 8, 12)
    words = emb.words(x)
    assert words.shape == (2 * 2 * 3, 16, 3)
    for b, n, j in [(0, 0, 0), (1, 4, 7), (0, 5, 15), (1, 2, 9)]:
        r, c = divmod(n, 3)
        i, k = divmod(j, 4)
        torch.testing.assert_close(words[b * 6 + n, j], x[b, :, 4 * r + i, 4 * c + k])


def test_tnt_words_of_several_pixels_are_sub_patches() -> None:
    emb = TNTEmbedder(spec(2, 8, 8), TNTParams(patch_size=4, word_size=2))
    x = torch.randn(1, 2, 8, 8)
    words = emb.words(x)  # [4 patches, 4 words, 2*2*2]
    sub = x[0, :, 4 + 2 : 4 + 4, 0:2]  # patch (1, 0), word (1, 0)
    torch.testing.assert_close(words[2, 2], sub.reshape(-1))


def test_tnt_patch_token_reads_only_its_own_patch_through_the_inner_transformer() -> None:
    s = spec(1, 8, 8)
    params = TNTParams(patch_size=4, inner_layers=2, cls=False)
    emb = TNTEmbedder(s, params)
    x = torch.randn(2, 1, 8, 8)
    base = emb(x)
    y = x.clone()
    y[:, 0, 1, 6] += 1.0  # a pixel of patch (0, 1)
    changed = (emb(y) - base).abs().sum(-1) > 1e-6
    assert changed[:, 1].all() and not changed[:, [0, 2, 3]].any()
    # the inner transformer matters: changing it changes the patch tokens
    with torch.no_grad():
        emb.inner[0].proj.bias.add_(0.5)
    assert not torch.allclose(emb(x), base)


def test_tnt_refuses_a_word_size_that_does_not_divide_the_patch() -> None:
    why = TNTEmbedder.check(TNTParams(patch_size=4, word_size=3), spec(1, 8, 8))
    assert why and "word_size=3" in why and "patch_size=4" in why


# --- features (tabular) ----------------------------------------------------------------


def _tokenizer(categories: list[int], cls: bool = True) -> FeatureTokenizer:
    return FeatureTokenizer(spec(len(categories)), FeaturesParams(categories=categories, cls=cls))


def test_a_numerical_column_token_is_value_times_w_plus_b() -> None:
    emb = _tokenizer([0, 3, 0])
    x = torch.tensor([[1.5, 2.0, -0.25], [-3.0, 0.0, 4.0]])
    out = emb(x)
    assert out.shape == (2, 4, 16)
    for b in range(2):
        torch.testing.assert_close(
            out[b, 1], x[b, 0] * emb.weight[0] + emb.bias_num[0], atol=0, rtol=0
        )
        torch.testing.assert_close(
            out[b, 3], x[b, 2] * emb.weight[1] + emb.bias_num[1], atol=0, rtol=0
        )
        torch.testing.assert_close(out[b, 0], emb.cls[0, 0])
    # category 2 of the categorical column (its rows start at offset 0)
    torch.testing.assert_close(out[0, 2], emb.table.weight[2] + emb.bias_cat[0], atol=0, rtol=0)


def test_missing_and_unseen_categories_map_to_the_unknown_row_and_nan_to_missing() -> None:
    emb = _tokenizer([2, 0, 3], cls=False)
    # column 0 has K=2 (rows 0..2 of the table, 2 = unknown); column 2 has K=3 (rows 3..6)
    x = torch.tensor(
        [
            [2.0, NAN, 3.0],  # category == K: unknown; NaN numerical: missing vector
            [NAN, 1.0, -1.0],  # NaN and negative categories: unknown
            [0.5, 2.0, 7.0],  # non-integer and out-of-range: unknown
            [1.0, 0.0, 2.0],  # known categories
        ]
    )
    out = emb(x)
    unknown0, unknown2 = (
        emb.table.weight[2] + emb.bias_cat[0],
        emb.table.weight[6] + emb.bias_cat[1],
    )
    for b in range(3):
        torch.testing.assert_close(out[b, 0], unknown0, atol=0, rtol=0)
        torch.testing.assert_close(out[b, 2], unknown2, atol=0, rtol=0)
    torch.testing.assert_close(out[0, 1], emb.missing[0], atol=0, rtol=0)
    torch.testing.assert_close(out[3, 0], emb.table.weight[1] + emb.bias_cat[0], atol=0, rtol=0)
    torch.testing.assert_close(out[3, 2], emb.table.weight[3 + 2] + emb.bias_cat[1], atol=0, rtol=0)
    assert torch.isfinite(out).all()
    # a NaN gives finite gradients, and the missing vector gets one only from NaN rows
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in emb.parameters() if p.grad is not None)
    assert emb.missing.grad.abs().sum() > 0 and emb.weight.grad.abs().sum() > 0


def test_features_layout_and_refusals() -> None:
    params = FeaturesParams(categories=[0, 4, 0, 0])
    layout = FeatureTokenizer.layout(params, spec(4))
    assert (layout.length, layout.grid, layout.n_prefix) == (5, None, 1)
    assert FeatureTokenizer.layout(FeaturesParams(cls=False), spec(7)).length == 7
    out = FeatureTokenizer(spec(7), FeaturesParams(cls=False))(torch.randn(3, 7))
    assert out.shape == (3, 7, 16)  # no categories given: every column numerical
    why = FeatureTokenizer.check(FeaturesParams(categories=[0, 2]), spec(3))
    assert why and "categories lists 2 columns" in why and "model.input_shape=[3]" in why
    why = FeatureTokenizer.check(FeaturesParams(), spec(1, 8, 8))
    assert why and "[n_columns]" in why


# --- the embedder slot's contract checks -----------------------------------------------

EMBEDDERS = ["patches", "conv_stem", "t2t", "tnt", "features"]


def _failed(report) -> dict[str, str]:  # noqa: ANN001
    return {o.check.name: o.reason for o in report.outcomes if o.status == "failed"}


@pytest.mark.parametrize("name", EMBEDDERS)
def test_every_image_and_table_embedder_passes_the_slot_contract(name: str) -> None:
    import anyformer
    from anyformer.registry import get

    entry = get("embedder", name)
    assert entry.caps.input_kind == ("table" if name == "features" else "image")
    assert entry.caps.grid == (name != "features")
    report = anyformer.check(entry.cls, "embedder")
    assert report.passed, report.table()
    ran = {o.check.name for o in report.outcomes if o.status == "passed"}
    assert {"tokens", "rows_apart", "gradients", "reads_its_example", "layout"} <= ran
    assert "refuses_other_inputs" in ran
    assert ("grid_positions" in ran) == entry.caps.grid


class _BatchCentred(PatchEmbedder):
    """A defect: centres over the batch, so examples leak into each other."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        out = super().forward(inputs)
        return out - out.mean(0, keepdim=True)


class _Unused(PatchEmbedder):
    """A defect: a parameter that never reaches the tokens."""

    def __init__(self, spec, params) -> None:  # noqa: ANN001
        super().__init__(spec, params)
        self.spare = nn.Parameter(torch.zeros(3))


class _Blind(PatchEmbedder):
    """A defect: tokens that ignore the image."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.zeros_like(inputs))


class _Miscounted(PatchEmbedder):
    """A defect: layout() counts a token the embedder does not make."""

    @classmethod
    def layout(cls, params, spec):  # noqa: ANN001, ANN206
        import dataclasses

        base = super().layout(params, spec)
        return dataclasses.replace(base, length=base.length + 1)


class _NoGrid(PatchEmbedder):
    """A defect: says it makes a grid (caps) but its layout has none."""

    @classmethod
    def layout(cls, params, spec):  # noqa: ANN001, ANN206
        import dataclasses

        return dataclasses.replace(super().layout(params, spec), grid=None)


class _Accepting(FeatureTokenizer):
    """A defect: accepts any input_shape."""

    @classmethod
    def check(cls, params, spec):  # noqa: ANN001, ANN206
        return None


@pytest.mark.parametrize(
    ("cls", "check", "message"),
    [
        (_BatchCentred, "rows_apart", "changed the tokens of other examples"),
        (_Unused, "gradients", "no gradient reaches spare"),
        (_Blind, "reads_its_example", "left its own tokens unchanged"),
        (_Miscounted, "tokens", "has shape"),
        (_NoGrid, "layout", "caps.grid=True but layout"),
        (_Accepting, "refuses_other_inputs", "accepted input_shape=[3, 8, 8]"),
    ],
)
def test_the_embedder_checks_catch_the_defect_they_are_for(cls, check, message) -> None:  # noqa: ANN001
    import anyformer

    failed = _failed(anyformer.check(cls, "embedder"))
    assert check in failed and message in failed[check], failed


@pytest.mark.parametrize("position", ["learned", "sincos_2d", "learned_2d", "rope_2d"])
def test_an_image_model_gives_positions_to_the_embedders_tokens(position: str) -> None:
    # positions count the embedder's tokens (5 here), not the image's channels (3)
    from anyformer.model.transformer import build_model
    from anyformer.spec import ModelSpec, parse

    data = dict(kind="encoder", d_model=16, n_heads=2, n_layers=1, max_len=8, n_outputs=4,
                embedder="patches", input_shape=[3, 8, 8], position=position, head="classify")  # fmt: skip
    model = build_model(parse(ModelSpec, data))
    if position != "learned":
        assert (model.position.grid.n_prefix, model.position.grid.width) == (1, 2)
    out = model(torch.rand(2, 3, 8, 8))
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    too_long = parse(
        ModelSpec, {**data, "embedder": {"name": "patches", "patch_size": 2}, "max_len": 64}
    )
    assert model.spec.token_layout.length == 5 and too_long.token_layout.length == 17
    with pytest.raises(SpecError, match="makes 17 tokens.*max_len=8"):
        parse(ModelSpec, {**data, "embedder": {"name": "patches", "patch_size": 2}})
