"""A deliberately broken causal mixer: its causal mask is off by one, so every token also
sees the next one. ``anyformer check`` catches it::

    anyformer check examples/leaky_attention.py:LeakyAttention --slot attention

fails the ``causal`` check (exit status 1), naming the position where the future leaked.
It is not registered: named by path it gets the default capabilities, which claim
causal safety.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from anyformer.components.base import Context
from anyformer.registry import Dims, NoParams


class LeakyAttention(nn.Module):
    """Softmax attention whose causal mask lets query i see key i + 1 (a bug)."""

    def __init__(self, dims: Dims, params: NoParams) -> None:
        super().__init__()
        self.n_heads, self.d_head = dims.n_heads, dims.d_head
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model)
        self.out = nn.Linear(dims.d_model, dims.d_model)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.d_head)
        allowed = torch.ones(t, t, dtype=torch.bool, device=x.device)
        if ctx.causal:
            allowed = allowed.tril(diagonal=1)  # the bug: should be tril() (diagonal=0)
        allowed = allowed[None, None]
        if ctx.padding_mask is not None:
            allowed = allowed & ctx.padding_mask[:, None, None, :].bool()
        scores = scores.masked_fill(~allowed, -math.inf)
        y = (scores.softmax(dim=-1).nan_to_num() @ v).transpose(1, 2).reshape(b, t, d)
        return self.out(y)
