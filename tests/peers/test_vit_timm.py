"""Equality with a peer library: anyformer's ViT, written as a spec (``patches`` embedder
with a CLS token, ``learned`` absolute positions over CLS + patches, pre-norm LayerNorm
blocks of softmax attention and a GELU MLP, ``classify`` head pooling the first token),
computes what timm's ``VisionTransformer`` of the same shape computes, once timm's
weights are copied in.

timm (and the torchvision it needs) is an optional peer: the tests skip when it cannot be
imported, which includes a torchvision build that does not match the installed torch.
"""

from __future__ import annotations

from types import ModuleType

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from anyformer.model.transformer import Transformer, build_model

pytestmark = pytest.mark.peers

# timm's ViT LayerNorm eps (anyformer's layernorm defaults to 1e-5; the spec picks 1e-6)
TIMM_EPS = 1e-6


def timm_vit_module() -> ModuleType:
    try:
        import timm.models.vision_transformer as vit
    except Exception as exc:  # ImportError, or torchvision's ops failing to load
        pytest.skip(f"timm is not importable here ({type(exc).__name__}: {exc})")
    return vit


def anyformer_vit(
    channels: int, size: int, patch: int, d: int, depth: int, heads: int, classes: int
) -> Transformer:
    """ViT as an anyformer spec: one learned position per token (CLS first, then the
    row-major patch grid), the table timm calls ``pos_embed``."""
    n_tokens = 1 + (size // patch) ** 2
    return build_model(
        dict(
            kind="encoder",
            embedder={"name": "patches", "patch_size": patch, "cls": True},
            input_shape=[channels, size, size],
            d_model=d,
            n_layers=depth,
            n_heads=heads,
            max_len=n_tokens,
            position="learned",
            norm={"name": "layernorm", "eps": TIMM_EPS},
            norm_placement="pre",
            ffn={"name": "mlp", "activation": "gelu", "mult": 4.0},
            head="classify",
            pool="first",
            n_outputs=classes,
        )
    )


def timm_vit(
    channels: int, size: int, patch: int, d: int, depth: int, heads: int, classes: int
) -> nn.Module:
    vit = timm_vit_module()
    return vit.VisionTransformer(
        img_size=size,
        patch_size=patch,
        in_chans=channels,
        num_classes=classes,
        embed_dim=d,
        depth=depth,
        num_heads=heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        class_token=True,
        global_pool="token",
    )


def from_timm(timm_model: nn.Module, depth: int) -> dict[str, torch.Tensor]:
    """timm ``VisionTransformer`` weights under anyformer's state-dict keys (both fuse
    q, k, v in one projection, queries then keys then values, head-major)."""
    src = timm_model.state_dict()
    out = {
        "embed.proj.weight": src["patch_embed.proj.weight"],
        "embed.proj.bias": src["patch_embed.proj.bias"],
        "embed.prefix.cls": src["cls_token"],
        "position.table.weight": src["pos_embed"][0],
        "norm.weight": src["norm.weight"],
        "norm.bias": src["norm.bias"],
        "head.weight": src["head.weight"],
        "head.bias": src["head.bias"],
    }
    names = {
        "mixer.qkv": "attn.qkv", "mixer.out": "attn.proj", "ffn.up": "mlp.fc1",
        "ffn.down": "mlp.fc2", "norm1": "norm1", "norm2": "norm2",
    }  # fmt: skip
    for i in range(depth):
        for ours, theirs in names.items():
            for p in ("weight", "bias"):
                out[f"blocks.{i}.{ours}.{p}"] = src[f"blocks.{i}.{theirs}.{p}"]
    return out


SHAPES = {
    "rgb32_p4": dict(channels=3, size=32, patch=4, d=96, depth=3, heads=3, classes=10),
    "digits8_p2": dict(channels=1, size=8, patch=2, d=64, depth=2, heads=4, classes=10),
}


@pytest.fixture(params=sorted(SHAPES))
def pair(request: pytest.FixtureRequest) -> tuple[Transformer, nn.Module, dict]:
    shape = SHAPES[request.param]
    torch.manual_seed(0)
    theirs = timm_vit(**shape)
    ours = anyformer_vit(**shape)
    # strict: every anyformer parameter comes from timm and none is left over
    ours.load_state_dict(from_timm(theirs, shape["depth"]), strict=True)
    assert len(ours.state_dict()) == len(theirs.state_dict())
    return ours, theirs, shape


def test_parameter_counts_are_equal(pair: tuple[Transformer, nn.Module, dict]) -> None:
    ours, theirs, _ = pair
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


def test_logits_equal_timm_in_eval_mode(pair: tuple[Transformer, nn.Module, dict]) -> None:
    ours, theirs, shape = pair
    ours.eval(), theirs.eval()
    images = torch.randn(5, shape["channels"], shape["size"], shape["size"])
    with torch.no_grad():
        expected = theirs(images)
        got = ours(images)
    assert got.shape == expected.shape == (5, shape["classes"])
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # not trivially equal: the logits depend on the image
    assert (expected[0] - expected[1]).abs().max() > 1e-3


def test_gradients_equal_timm(pair: tuple[Transformer, nn.Module, dict]) -> None:
    """One training step's gradients agree parameter by parameter (mapped like the weights)."""
    ours, theirs, shape = pair
    ours.train(), theirs.train()
    images = torch.randn(4, shape["channels"], shape["size"], shape["size"])
    labels = torch.randint(0, shape["classes"], (4,))
    F.cross_entropy(theirs(images), labels).backward()
    F.cross_entropy(ours(images), labels).backward()

    class Grads(nn.Module):  # timm's gradients under timm's parameter names
        def state_dict(self, *args: object, **kwargs: object) -> dict:  # type: ignore[override]
            return {k: p.grad for k, p in theirs.named_parameters()}

    expected = from_timm(Grads(), shape["depth"])  # type: ignore[arg-type]
    for name, param in ours.named_parameters():
        want = expected[name].reshape(param.shape)
        torch.testing.assert_close(param.grad, want, atol=1e-5, rtol=1e-4, msg=name)


def test_learned_positions_are_one_vector_per_token_cls_included() -> None:
    """timm adds pos_embed to CLS + patches (``no_embed_class=False``); anyformer's
    ``learned`` table has one row per token, so ``max_len`` = 1 + patches covers it."""
    shape = SHAPES["digits8_p2"]
    theirs = timm_vit(**shape)
    ours = anyformer_vit(**shape)
    assert not theirs.no_embed_class
    assert tuple(theirs.pos_embed.shape[1:]) == tuple(ours.position.table.weight.shape)
