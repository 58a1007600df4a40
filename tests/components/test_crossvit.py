"""CrossViT (Chen, Fan & Panda, 2021): the ``crossvit`` embedder lays out two branches of
patch tokens with their CLS tokens, the ``cross_branch`` mixer keeps the branches apart
except through the CLS cross-attention fusion (checked against a hand computation), and
``model.pool=branches`` averages the two CLS tokens' logits."""

from __future__ import annotations

import math
import types
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from anyformer.components.attention.branches import CrossBranchAttention, CrossBranchParams
from anyformer.components.base import Context
from anyformer.components.embedders.crossvit import CrossViTEmbedder, CrossViTParams
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.registry import Dims, get
from anyformer.spec import ModelSpec, parse


def image(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def crossvit(n_layers: int = 1, **extra: Any) -> Any:
    data: dict[str, Any] = dict(
        kind="encoder", d_model=16, n_heads=2, n_layers=n_layers, max_len=22,
        embedder={"name": "crossvit", "small_patch": 2, "large_patch": 4},
        input_shape=[1, 8, 8], attention="cross_branch", position="learned",
        head="token_regress", n_outputs=16,
    )  # fmt: skip
    data.update(extra)
    torch.manual_seed(0)
    return build_model(parse(ModelSpec, data)).double().eval()


# --- the embedder -----------------------------------------------------------------------


def test_the_two_branches_are_the_two_patch_embeddings_each_after_its_cls_token() -> None:
    s = types.SimpleNamespace(d_model=8, input_shape=(3, 8, 8))
    params = CrossViTParams(small_patch=2, large_patch=4)
    emb = CrossViTEmbedder(s, params).double()
    x = image(2, 3, 8, 8)
    out = emb(x)
    layout = CrossViTEmbedder.layout(params, s)
    assert (layout.length, layout.grid, layout.branches) == (22, None, (17, 5))
    assert out.shape == (2, 22, 8)
    for p, start, conv, cls in (
        (2, 0, emb.small, emb.cls_small),
        (4, 17, emb.large, emb.cls_large),
    ):
        patches = F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)
        expected = patches @ conv.weight.reshape(8, -1).T + conv.bias
        n = (8 // p) ** 2
        torch.testing.assert_close(out[:, start + 1 : start + 1 + n], expected, atol=1e-12, rtol=0)
        torch.testing.assert_close(out[:, start], cls[0].expand(2, -1))


def test_patch_sizes_that_do_not_tile_the_image_or_are_in_the_wrong_order_are_refused() -> None:
    base = dict(kind="encoder", d_model=16, n_heads=2, n_layers=1, input_shape=[1, 8, 8],
                attention="cross_branch", position="learned", head="classify", n_outputs=3)  # fmt: skip
    with pytest.raises(SpecError, match=r"embedder.large_patch=3"):
        parse(ModelSpec, {**base, "embedder": {"name": "crossvit", "large_patch": 3}})
    with pytest.raises(SpecError, match=r"small_patch=4 must be smaller than large_patch=2"):
        parse(ModelSpec, {**base, "embedder": {"name": "crossvit", "small_patch": 4,
                                                "large_patch": 2}})  # fmt: skip


# --- the mixer: branches apart except through the CLS tokens ----------------------------


def _outputs(model: Any, change_small_patch: bool) -> torch.Tensor:
    """The per-token outputs, after adding a vector to the
    embedding of small-branch patch token 5 (when asked; not a constant, which the
    layer norms would remove)."""

    def hook(_module: Any, _inputs: Any, tokens: torch.Tensor) -> torch.Tensor:
        if not change_small_patch:
            return tokens
        bumped = tokens.clone()
        bumped[:, 5] += torch.linspace(-3.0, 3.0, tokens.shape[-1], dtype=tokens.dtype)
        return bumped

    handle = model.embed.register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(image(2, 1, 8, 8))
    finally:
        handle.remove()


def test_with_one_block_a_small_patch_token_never_reaches_the_large_patch_tokens() -> None:
    model = crossvit(n_layers=1, init_std=0.3)
    change = (_outputs(model, True) - _outputs(model, False)).abs().amax(dim=(0, 2))
    assert change[18:].max() == 0  # the large branch's patch tokens
    assert change[17] > 1e-3 and change[:17].min() > 1e-3  # its CLS token and the small branch


def test_with_two_blocks_it_reaches_them_through_the_cls_fusion_only() -> None:
    model = crossvit(n_layers=2, init_std=0.3)
    change = _outputs(model, True)[:, 18:] - _outputs(model, False)[:, 18:]
    assert change.abs().max() > 1e-3
    # without the fusion the branches never meet, however deep
    apart = crossvit(n_layers=2, init_std=0.3, attention={"name": "cross_branch", "fusion": False})
    change = (_outputs(apart, True) - _outputs(apart, False)).abs().amax(dim=(0, 2))
    assert change[17:].max() == 0 and change[:17].min() > 1e-3


def _softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One head, written out: softmax(q k^T / sqrt(d)) v for ``q [Tq, d]``, ``k, v [Tk, d]``."""
    scores = [[float(q[i] @ k[j]) / math.sqrt(q.shape[1]) for j in range(len(k))]
              for i in range(len(q))]  # fmt: skip
    out = torch.zeros(len(q), v.shape[1], dtype=v.dtype)
    for i, row in enumerate(scores):
        m = max(row)
        weights = [math.exp(s - m) for s in row]
        total = sum(weights)
        for j, w in enumerate(weights):
            out[i] += w / total * v[j]
    return out


def test_the_mixer_equals_a_hand_computed_crossvit_step_on_a_tiny_case() -> None:
    """Branches of 3 and 2 tokens, width 4, one head: attention inside each branch, then
    each CLS token attends (layer-normalised) over itself and the other branch's patches."""
    torch.manual_seed(1)
    dims = Dims(d_model=4, n_heads=1, max_len=5, causal=False, branches=(3, 2))
    mixer = CrossBranchAttention(dims, CrossBranchParams()).double()
    for p in mixer.parameters():  # LayerNorm gains and biases away from 1 and 0 too
        torch.nn.init.normal_(p, 0.0, 0.7)
    h = torch.randn(1, 5, 4, dtype=torch.float64)
    position = get("position", "none").build(None, dims)
    with torch.no_grad():
        got = mixer(h, Context(torch.arange(5), False, position))[0]
    mixer.requires_grad_(False)
    x = h[0]
    wq, wk, wv = mixer.qkv.weight.split(4)
    bq, bk, bv = mixer.qkv.bias.split(4)
    y = torch.zeros(5, 4, dtype=torch.float64)
    for part in (slice(0, 3), slice(3, 5)):
        xs = x[part]
        att = _softmax_attention(xs @ wq.T + bq, xs @ wk.T + bk, xs @ wv.T + bv)
        y[part] = att @ mixer.out.weight.T + mixer.out.bias
    z = x + y
    expected = y.clone()
    for cls, others, cross in ((0, [3 + 1], mixer.fusion[0]), (3, [1, 2], mixer.fusion[1])):
        tokens = z[[cls, *others]]
        mu = tokens.mean(-1, keepdim=True)
        var = ((tokens - mu) ** 2).mean(-1, keepdim=True)
        normed = (tokens - mu) / torch.sqrt(var + cross.norm.eps) * cross.norm.weight
        normed = normed + cross.norm.bias
        q = normed[:1] @ cross.q.weight.T + cross.q.bias
        k = normed @ cross.k.weight.T + cross.k.bias
        v = normed @ cross.v.weight.T + cross.v.bias
        expected[cls] += (_softmax_attention(q, k, v) @ cross.out.weight.T + cross.out.bias)[0]
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)
    # the fusion changes the CLS tokens only
    plain = CrossBranchAttention(dims, CrossBranchParams(fusion=False)).double()
    plain.load_state_dict(mixer.state_dict(), strict=False)
    alone = plain(h, Context(torch.arange(5), False, position))[0]
    torch.testing.assert_close(alone, y, atol=1e-12, rtol=0)


# --- pooling, and refusals ----------------------------------------------------------------


def test_pool_branches_averages_the_logits_of_the_two_cls_tokens() -> None:
    pooled = crossvit(head="classify", n_outputs=3, pool="branches")
    per_token = crossvit(head="token_classify", n_outputs=3)
    per_token.load_state_dict(pooled.state_dict())
    x = image(2, 1, 8, 8)
    with torch.no_grad():
        logits, tokens = pooled(x), per_token(x)
    torch.testing.assert_close(logits, (tokens[:, 0] + tokens[:, 17]) / 2)


def test_models_without_branches_are_refused_with_the_reason() -> None:
    vit = dict(kind="encoder", d_model=16, n_heads=2, n_layers=1, input_shape=[1, 8, 8],
               embedder={"name": "patches", "patch_size": 2}, position="learned",
               head="classify", n_outputs=3)  # fmt: skip
    with pytest.raises(SpecError, match=r"attention='cross_branch'.*no branches"):
        parse(ModelSpec, {**vit, "attention": "cross_branch"})
    with pytest.raises(SpecError, match=r"model.pool='branches'.*one sequence"):
        parse(ModelSpec, {**vit, "pool": "branches"})
    # a 2-D position scheme needs one grid; the two branches make none
    with pytest.raises(SpecError, match=r"position='learned_2d'"):
        crossvit(position="learned_2d")


def test_cross_branch_waits_for_the_task_to_set_the_image_shape() -> None:
    spec = parse(ModelSpec, dict(kind="encoder", d_model=16, n_heads=2, n_layers=1,
                                 embedder="crossvit", attention="cross_branch",
                                 pool="branches", head="classify"))  # fmt: skip
    assert spec.grid_pending
