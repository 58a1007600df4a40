"""CrossViT's mixer over a two-branch token layout (``cross_branch``): attention within
each branch, then the cross-attention fusion of the branches' CLS tokens.

It reads ``dims.branches`` (the lengths of the branches an embedder such as ``crossvit``
lays out one after another, each starting with its CLS token) and is refused by
``check_dims`` in a model without branches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from torch import nn

from anyformer.components.attention.common import (
    Impl,
    masked_bias,
    merge_heads,
    reference_attention,
    split_heads,
)
from anyformer.components.attention.qkv import QKVHeads, linear_flops
from anyformer.components.base import Context
from anyformer.registry import Capabilities, Dims, Paper, register

CROSSVIT = Paper(
    "CrossViT: Cross-Attention Multi-Scale Vision Transformer for Image Classification",
    2021,
    "Chen, Fan & Panda",
)


def branches_problem(dims: Dims) -> str | None:
    """Why a mixer over CrossViT's two branches cannot be built with ``dims`` (``None``
    when it can): the embedder must lay out two branches, each a CLS token and at least
    one more token."""
    if dims.branches is None:
        return (
            "needs the two-branch token layout of a multi-branch embedder "
            "(model.embedder=crossvit); this model's embedder lays out one sequence "
            "(no branches)"
        )
    if len(dims.branches) != 2 or min(dims.branches) < 2:
        return (
            f"needs two branches of a CLS token and at least one patch token each; the "
            f"embedder lays out branches of {list(dims.branches)} tokens"
        )
    return None


def branch_ids(branches: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
    """``[T]``: the branch of every token of the layout."""
    sizes = torch.tensor(branches, device=device)
    return torch.repeat_interleave(torch.arange(len(branches), device=device), sizes)


class CrossBranchParams(BaseModel):
    """``fusion``: run the CLS cross-attention fusion after the attention within branches
    (``false``: attention within branches only, for the paper's several branch blocks
    between two fusions, via ``model.layers``). ``impl``: ``fast`` (attention over each
    branch's slice) or ``reference`` (full attention with a block-diagonal mask)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    fusion: bool = True
    impl: Impl = "fast"


class CLSCrossAttention(nn.Module):
    """CrossViT's cross-attention of one branch (Chen et al., 2021, eq. 6-8): the query is
    the branch's own CLS token, the keys and values are that CLS token and the other
    branch's patch tokens, all layer-normalised first; multi-head softmax attention and
    an output projection. Returns the update of the CLS token ``[B, 1, D]``."""

    def __init__(self, dims: Dims) -> None:
        super().__init__()
        d = dims.d_model
        self.n_heads = dims.n_heads
        self.norm = nn.LayerNorm(d)
        self.q = nn.Linear(d, d, bias=dims.bias)
        self.k = nn.Linear(d, d, bias=dims.bias)
        self.v = nn.Linear(d, d, bias=dims.bias)
        self.out = nn.Linear(d, d, bias=dims.bias)
        self.out.residual_projection = True

    def forward(
        self, cls: torch.Tensor, others: torch.Tensor, allowed: torch.Tensor | None, impl: str
    ) -> torch.Tensor:
        """``cls [B, 1, D]`` over ``[cls, others]``; ``allowed [B, 1 + S]`` True at real keys."""
        tokens = self.norm(torch.cat((cls, others), dim=1))
        q = split_heads(self.q(tokens[:, :1]), self.n_heads)
        k = split_heads(self.k(tokens), self.n_heads)
        v = split_heads(self.v(tokens), self.n_heads)
        bias = None if allowed is None else masked_bias(None, allowed[:, None, None], q.dtype)
        if impl == "fast":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            y = reference_attention(q, k, v, bias)
        return self.out(merge_heads(y))


@register(
    "attention",
    "cross_branch",
    paper=CROSSVIT,
    summary="CrossViT: attention within each of two branches, then each branch's CLS token "
    "attends to the other branch's patch tokens (needs an embedder with branches: crossvit)",
    params=CrossBranchParams,
    caps=Capabilities(
        causal_safe=False,
        complexity="O(n^2)",
        position_modes=("none", "embed", "rotary"),
        branches=True,
    ),
)
class CrossBranchAttention(QKVHeads):
    """One multi-scale encoder step of CrossViT (Chen et al., 2021) on the layout
    ``[CLS_1, patches_1..., CLS_2, patches_2...]`` (``dims.branches``), given the
    layer-normalised input ``h``:

    1. within-branch attention: multi-head softmax self-attention in which a token sees
       only the tokens of its own branch (one q/k/v projection shared by both branches,
       a deviation: the paper's branches are separate transformers), ``y = Attn(h)``;
    2. fusion (``fusion=true``): with ``z = h + y``, each branch's CLS token gets
       ``CA_b(LN([z_CLS_b, z_patches_other]))`` added (:class:`CLSCrossAttention`, one per
       branch: the CLS token as the only query over itself and the other branch's patch
       tokens, the paper's linear-cost fusion).

    It returns ``y`` with the fusion added at the two CLS tokens, which the residual
    layout adds to its input. So patch tokens never see the other branch within a layer:
    information crosses only through the CLS tokens, and reaches the other branch's patch
    tokens one layer later, through attention to their CLS token. Both branches have one
    width (``d_model``), so the paper's projections ``f``/``g`` between widths are
    identities. Rotary schemes rotate the within-branch q/k by the flat token index; the
    fusion uses no positions.
    """

    def __init__(self, dims: Dims, params: CrossBranchParams) -> None:
        super().__init__(dims)
        problem = branches_problem(dims)
        if problem:
            raise ValueError(f"cross_branch {problem}")
        self.branches: tuple[int, ...] = dims.branches  # type: ignore[assignment]
        self.starts = (0, self.branches[0])
        self.impl = params.impl
        self.register_buffer("branch", branch_ids(self.branches), persistent=False)
        self.fusion = (
            nn.ModuleList(CLSCrossAttention(dims) for _ in self.branches) if params.fusion else None
        )

    @staticmethod
    def check_dims(params: CrossBranchParams, dims: Dims) -> str | None:
        return branches_problem(dims)

    def _check_length(self, t: int) -> None:
        if t != sum(self.branches):
            raise ValueError(
                f"cross_branch: {t} tokens do not form the model's branches of "
                f"{list(self.branches)} tokens ({sum(self.branches)} in all)"
            )

    def within(self, h: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Step 1: self-attention restricted to each branch (before the output projection
        is applied: ``[B, T, D]`` after merging heads)."""
        q, k, v = self.project(h)
        q, k = ctx.position.rotate(q, k, ctx.positions, ctx.positions)
        pad = ctx.padding_mask
        drop = self.dropout if self.training else 0.0
        if self.impl == "reference":
            allowed = self.branch[:, None] == self.branch[None, :]  # [T, T]
            if pad is not None:
                allowed = allowed & pad[:, None, None, :]
            bias = masked_bias(None, allowed, q.dtype)
            return merge_heads(reference_attention(q, k, v, bias, self.dropout, self.training))
        outs = []
        for start, size in zip(self.starts, self.branches):
            part = slice(start, start + size)
            bias = None if pad is None else masked_bias(None, pad[:, None, None, part], q.dtype)
            outs.append(
                F.scaled_dot_product_attention(
                    q[:, :, part], k[:, :, part], v[:, :, part], attn_mask=bias, dropout_p=drop
                )
            )
        return merge_heads(torch.cat(outs, dim=2))

    def fuse(self, z: torch.Tensor, padding_mask: torch.Tensor | None) -> list[torch.Tensor]:
        """Step 2: the update of each branch's CLS token, ``[B, 1, D]`` per branch."""
        assert self.fusion is not None
        updates = []
        for b, (start, cross) in enumerate(zip(self.starts, self.fusion)):
            o_start, o_size = self.starts[1 - b], self.branches[1 - b]
            others = slice(o_start + 1, o_start + o_size)
            allowed = None
            if padding_mask is not None:
                allowed = torch.cat(
                    (padding_mask[:, start : start + 1], padding_mask[:, others]), dim=1
                )
            updates.append(cross(z[:, start : start + 1], z[:, others], allowed, self.impl))
        return updates

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if ctx.causal:
            raise ValueError("cross_branch reads whole branches; it cannot run in a decoder")
        self._check_length(x.shape[1])
        y = self.out(self.within(x, ctx))
        if self.fusion is None:
            return y
        updates = self.fuse(x + y, ctx.padding_mask)
        s0, s1 = self.starts
        return torch.cat(
            (y[:, s0 : s0 + 1] + updates[0], y[:, s0 + 1 : s1],
             y[:, s1 : s1 + 1] + updates[1], y[:, s1 + 1 :]),
            dim=1,
        )  # fmt: skip

    def flops_per_token(self, seq_len: int) -> int:
        """Projections, scores and sums within the branches, plus the fusion (per token)."""
        t = sum(self.branches)
        within = sum(n * n for n in self.branches) / t
        own = self.projection_flops() + 4 * within * self.n_heads * self.d_head
        if self.fusion is None:
            return int(own)
        d = self.n_heads * self.d_head
        fuse = sum(
            linear_flops(c.k, c.v) * self.branches[1 - b]  # keys: own CLS + other patches
            + linear_flops(c.q, c.out)
            + 4 * self.branches[1 - b] * d
            for b, c in enumerate(self.fusion)
        )
        return int(own + fuse / t)
