"""The parts attention variants share: one module of helpers, one q/k/v projection."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest
import torch

import anyformer.components.attention as attention_pkg
import anyformer.components.mixers as mixers_pkg
from anyformer import registry
from anyformer.components.attention.qkv import project_qkv, qkv_projection
from anyformer.lab.contracts.mixer import mixer_dims
from anyformer.registry import Dims

SHARED = {"anyformer.components.attention.common", "anyformer.components.attention.qkv"}


def _modules() -> list[str]:
    return [
        f"{pkg.__name__}.{m.name}"
        for pkg in (attention_pkg, mixers_pkg)
        for m in pkgutil.iter_modules(pkg.__path__)
    ]


@pytest.mark.parametrize("module", _modules())
def test_variants_import_shared_code_only_from_the_shared_modules(module: str) -> None:
    """No variant file imports from a sibling variant file (as four once imported the mask,
    bias and cache helpers from ``softmax.py``)."""
    tree = ast.parse(Path(importlib.import_module(module).__file__).read_text())
    siblings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            name = node.module
            if name.startswith(("anyformer.components.attention", "anyformer.components.mixers")):
                siblings.add(name)
        elif isinstance(node, ast.Import):
            siblings |= {a.name for a in node.names if a.name.startswith("anyformer.components.")}
    assert siblings <= SHARED, f"{module} imports {sorted(siblings - SHARED)}"


@pytest.mark.parametrize("name", registry.components("attention"))
def test_every_fused_projection_is_the_shared_one(name: str) -> None:
    """Every mixer's fused projection of several head groups (``qkv``, FIT's
    ``global_qkv``/``write_kv``) is a :func:`qkv_projection`, so it splits into heads
    one way."""
    entry = registry.get("attention", name)
    causal = entry.caps.causal_safe
    mixer = entry.build(entry.make_params(), mixer_dims(entry, 32, 4, 12, causal, max_len=32))
    fused = [n for n, m in mixer.named_modules() if n.split(".")[-1].endswith(("qkv", "_kv"))]
    for n in fused:
        assert hasattr(mixer.get_submodule(n), "head_groups"), f"{name}.{n}"


@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_project_qkv_splits_in_the_layout_softmax_always_used(kv_heads: int | None) -> None:
    """Columns hold the query heads, then the key heads, then the value heads, each d_head
    wide: the layout of ``softmax``'s ``qkv`` before it was shared (checkpoints load)."""
    dims = Dims(32, 4, 16, True)
    qkv = qkv_projection(dims, kv_heads)
    g = kv_heads or 4
    x = torch.randn(2, 5, 32)
    q, k, v = project_qkv(qkv, x)
    old = qkv(x).view(2, 5, 4 + 2 * g, 8).transpose(1, 2).split((4, g, g), dim=1)
    for new, ref in zip((q, k, v), old):
        assert torch.equal(new, ref)
    token_major = project_qkv(qkv, x, heads_first=False)
    for new, ref in zip(token_major, old):
        assert torch.equal(new, ref.transpose(1, 2))
    step = project_qkv(qkv, x[:, 0], heads_first=False)  # one token [B, D] -> [B, H, Dh]
    # the reference multiplies the same rows: a product over [B, D] and one over [B, T, D]
    # may round differently (BLAS picks its kernel by shape), the layout is what is tested
    one = qkv(x[:, 0]).view(2, 4 + 2 * g, 8).split((4, g, g), dim=1)
    assert torch.equal(step[1], one[1])
    torch.testing.assert_close(step[1], old[1][:, :, 0])
