"""A third-party token mixer in one file: query-key normalised attention.

Check it against the attention slot's contract (shape, causality, padding, gradients)::

    anyformer check examples/my_attention.py:MyAttention --slot attention

and use it in a spec by path once the file is importable (``attention: my_attention:MyAttention``)
or by its registered name ``qk_norm`` after importing it.

Paper: "Query-Key Normalization for Transformers", Henry, Dachapally, Pawar & Chen, 2020:
queries and keys are L2-normalised per head, so a score is a cosine similarity, and a
learned scale ``g`` (one per head) replaces the fixed ``1 / sqrt(d_head)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat
from torch import nn

from anyformer.components.base import Context
from anyformer.registry import Capabilities, Dims, Paper, register


class QKNormParams(BaseModel):
    """``init_scale``: the starting value of every head's learned scale ``g``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    init_scale: PositiveFloat = 10.0


@register(
    "attention",
    "qk_norm",
    paper=Paper("Query-Key Normalization for Transformers", 2020, "Henry et al."),
    summary="softmax attention over cosine similarities of queries and keys, with a learned scale",
    params=QKNormParams,
    caps=Capabilities(complexity="O(n^2)"),
)
class MyAttention(nn.Module):
    """softmax(g * q_hat k_hat^T + B) V per head, q_hat and k_hat the L2-normalised queries
    and keys; causal and padding masks, rotary positions and score biases are honoured."""

    def __init__(self, dims: Dims, params: QKNormParams) -> None:
        super().__init__()
        self.n_heads, self.d_head = dims.n_heads, dims.d_head
        self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model, bias=dims.bias)
        self.out = nn.Linear(dims.d_model, dims.d_model, bias=dims.bias)
        self.out.residual_projection = True  # scaled at initialisation like other mixers
        self.scale = nn.Parameter(torch.full((dims.n_heads, 1, 1), float(params.init_scale)))

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        pos = ctx.bias_positions()
        q, k = ctx.position.rotate(q, k, pos, pos)
        scores = self.scale * F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-1, -2)
        bias = ctx.position.score_bias(pos, pos)
        if bias is not None:
            scores = scores + bias
        allowed = torch.ones(t, t, dtype=torch.bool, device=x.device)
        if ctx.causal:
            allowed = allowed.tril()  # query i sees keys j <= i
        allowed = allowed[None, None]
        if ctx.padding_mask is not None:  # True at real tokens
            allowed = allowed & ctx.padding_mask[:, None, None, :].bool()
        scores = scores.masked_fill(~allowed, -math.inf)
        probs = scores.softmax(dim=-1).nan_to_num()  # a row with no key at all gives zeros
        y = (probs @ v).transpose(1, 2).reshape(b, t, d)
        return self.out(y)
