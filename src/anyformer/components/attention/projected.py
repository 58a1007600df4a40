"""Attention on projected keys: Linformer (projection along the sequence) and EcoFormer
(kernelized hashing of queries and keys to binary codes)."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt
from torch import nn

from anyformer.components.attention.common import Impl, ImplCheck, merge_heads
from anyformer.components.attention.qkv import QKVHeads, project_qkv
from anyformer.components.base import Context, step_through
from anyformer.nn.linear_scan import (
    linear_attention_chunked,
    linear_attention_global,
    linear_attention_recurrent,
    linear_attention_step,
)
from anyformer.registry import Capabilities, Dims, Paper, register


# --------------------------------------------------------------------------- linformer
class LinformerParams(BaseModel):
    """Parameters of ``linformer`` attention.

    - ``k``: projected length; keys and values are mapped from the sequence length
      (at most ``max_len``) to ``k`` rows. Must be ``<= max_len``; ``None`` means
      ``min(128, max_len)`` (the paper's main setting is n = 512, k = 128; k stays fixed
      as n grows, which is what makes the cost linear).
    - ``share_kv``: use one projection for keys and values (E = F, the paper's
      "key-value sharing"); otherwise separate E and F. Either way the projections are
      shared by all heads of a layer ("headwise sharing").
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    k: PositiveInt | None = None
    share_kv: bool = False


@register(
    "attention",
    "linformer",
    paper=Paper("Linformer: Self-Attention with Linear Complexity", 2020, "Wang et al."),
    summary="softmax attention over keys/values projected along the sequence to k rows "
    "(E K, F V); bidirectional only",
    params=LinformerParams,
    caps=Capabilities(causal_safe=False, complexity="O(n k)", position_modes=("none", "embed")),
)
class LinformerAttention(QKVHeads):
    """softmax(Q (E K)^T / sqrt(d_head)) (F V) per head, with E, F ``[k, max_len]``.

    Each projected key row mixes keys from every position, so no query can be kept from
    the future: encoders only (``caps.causal_safe = False``; a decoder spec is rejected).
    A sequence shorter than ``max_len`` uses the first T columns of E and F, which is the
    paper's zero-padding to the maximum length. Padding: padded keys and values are set to
    zero before the projection, so they add nothing to the k projected rows; the result
    for the real tokens equals Linformer on the sequence with the padded positions left
    out (exactly, for right padding). The approximation this implies: the softmax still
    runs over all k projected rows, whose count and mixing weights do not depend on how
    many keys are real — there is no per-key mask, as in the paper. E and F start
    Xavier-normal (std ``sqrt(2 / (k + max_len))``); the model's initialisation leaves
    them alone (they are not ``nn.Linear`` layers).

    Scores are over projected rows, not token pairs, so rotary or score-bias positions do
    not apply (``position_modes = none, embed``).

    Paper: "Linformer: Self-Attention with Linear Complexity", Wang et al., 2020. Not
    supported: causal use, sequences longer than ``max_len``, layerwise sharing of E/F.
    """

    def __init__(self, dims: Dims, params: LinformerParams) -> None:
        super().__init__(dims)
        self.max_len = dims.max_len
        k = params.k or min(128, dims.max_len)
        std = math.sqrt(2.0 / (k + dims.max_len))
        self.proj_k = nn.Parameter(torch.randn(k, dims.max_len) * std)
        self.proj_v = (
            self.proj_k if params.share_kv else nn.Parameter(torch.randn(k, dims.max_len) * std)
        )

    @staticmethod
    def check_dims(params: LinformerParams, dims: Dims) -> str | None:
        if dims.causal:
            return (
                "linformer projects keys along the whole sequence, so it cannot be causal; "
                "use it in an encoder (kind=encoder)"
            )
        if params.k is not None and params.k > dims.max_len:
            return f"k={params.k} must be <= max_len={dims.max_len}"
        return None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        t = x.shape[1]
        if ctx.causal:
            raise ValueError("linformer is bidirectional only; it cannot run with a causal mask")
        if t > self.max_len:
            raise ValueError(
                f"linformer: sequence length {t} exceeds model.max_len={self.max_len}, "
                f"the length its projections E, F were built for"
            )
        q, k, v = self.project(x)
        if ctx.padding_mask is not None:
            real = ctx.padding_mask[:, None, :, None].to(k.dtype)
            k, v = k * real, v * real
        kp = torch.einsum("nt,bhtd->bhnd", self.proj_k[:, :t], k)
        vp = torch.einsum("nt,bhtd->bhnd", self.proj_v[:, :t], v)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, kp, vp, dropout_p=drop)
        return self.out(merge_heads(y))

    def flops_per_token(self, seq_len: int) -> int:
        """Projections, E K and F V (k rows each), then scores and sum over k rows."""
        proj = self.projection_flops()
        width = self.n_heads * self.d_head
        return proj + 8 * self.proj_k.shape[0] * width


# --------------------------------------------------------------------------- binary hash
class BinaryHashParams(BaseModel):
    """Parameters of ``binary_hash`` attention.

    - ``bits``: length m of the binary codes.
    - ``anchors``: number of kernel anchor points per head (the kernel feature size).
    - ``bandwidth``: sigma of the Gaussian kernel ``exp(-|x - a|^2 / (2 sigma^2))``
      between L2-normalised queries/keys and the anchors.
    - ``impl``: causal algorithm: ``fast`` (chunked) or ``reference`` (token by token);
      ``chunked`` and ``recurrent`` are their deprecated names. An encoder always uses
      the global sums.
    - ``chunk_size``: tokens per chunk for ``impl=fast``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: parameter sets under which the registry test holds ``fast`` equal to ``reference``
    #: (several chunks)
    IMPL_CHECK: ClassVar[ImplCheck] = ({"chunk_size": 4},)
    bits: PositiveInt = 16
    anchors: PositiveInt = 32
    bandwidth: PositiveFloat = 1.0
    impl: Impl = "fast"
    chunk_size: PositiveInt = 64


def sign_ste(y: torch.Tensor) -> torch.Tensor:
    """sign(y) in {-1, +1} (0 -> +1) forward; clipped straight-through gradient
    (identity where |y| <= 1, zero elsewhere) backward."""
    clipped = y.clamp(-1.0, 1.0)
    hard = torch.where(y >= 0, torch.ones_like(y), -torch.ones_like(y))
    return clipped + (hard - clipped).detach()


@register(
    "attention",
    "binary_hash",
    paper=Paper("EcoFormer: Energy-Saving Attention with Linear Complexity", 2022, "Liu et al."),
    summary="EcoFormer: learned kernelized hashing of q/k to binary codes; linear attention "
    "with similarity = matching bits",
    params=BinaryHashParams,
    caps=Capabilities(
        complexity="O(n)", recurrent=True, kv_cache=True, position_modes=("none", "embed")
    ),
)
class BinaryHashAttention(QKVHeads):
    """Linear attention on learned binary codes of queries and keys.

    Per head, a query or key x is L2-normalised and mapped to Gaussian-kernel features
    against learned anchors, ``phi(x)_j = exp(-|x - a_j|^2 / (2 sigma^2))``, then hashed
    to ``b(x) = sign(A phi(x) + c)`` in ``{-1, +1}^m`` (one hash function per head, shared
    by queries and keys). The similarity of query i and key j is the number of matching
    bits plus one half, ``(m + 1 + b_i . b_j) / 2 > 0``, which is the linear kernel of the
    features ``[b, 1]`` and ``[b, m + 1]``; so the attention
    ``y_i = sum_j sim_ij v_j / sum_j sim_ij`` costs O(n) (global sums in an encoder,
    cumulative sums in a decoder) and needs only additions of values given the codes.
    :meth:`step` decodes one token at a time with a constant-size state.

    Training (our simplification, documented): EcoFormer learns A with a separate
    self-supervised kernelized-hashing objective that matches the codes to the softmax
    attention map, and keeps anchors sampled from data. Here A, c, the anchors and the
    q/k/v projections are learned end to end through a clipped straight-through
    estimator for the sign. The +1/2 keeps every similarity positive, as EcoFormer's
    ``+ (m + 1)`` offset does. Padded keys get zero features and add nothing.

    Paper: "EcoFormer: Energy-Saving Attention with Linear Complexity", Liu et al., 2022.
    Not supported: the KSH hashing objective, bit-packed kernels, rotary/bias positions
    (codes of rotated vectors lose the relative-position property), packed rows. With
    ``ctx.cache`` (generation) the forward runs :meth:`step` from the cached state.
    """

    def __init__(self, dims: Dims, params: BinaryHashParams) -> None:
        super().__init__(dims)
        self.bits = params.bits
        self.impl = params.impl
        self.chunk_size = params.chunk_size
        self.bandwidth = params.bandwidth
        h, a, m = dims.n_heads, params.anchors, params.bits
        self.anchors = nn.Parameter(F.normalize(torch.randn(h, a, dims.d_head), dim=-1))
        self.hash_weight = nn.Parameter(torch.randn(h, m, a) / math.sqrt(a))
        self.hash_bias = nn.Parameter(torch.zeros(h, m))

    def hash_codes(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, T, D]`` -> binary codes ``[B, H, T, m]`` in {-1, +1} (STE gradient)."""
        x = F.normalize(x, dim=-1)
        d2 = (
            x.pow(2).sum(-1, keepdim=True)
            - 2 * torch.einsum("bhtd,had->bhta", x, self.anchors)
            + self.anchors.pow(2).sum(-1)[None, :, None, :]
        )
        phi = torch.exp(-d2.clamp(min=0) / (2 * self.bandwidth**2))
        y = torch.einsum("bhta,hma->bhtm", phi, self.hash_weight) + self.hash_bias[:, None]
        return sign_ste(y)

    def features(
        self, q: torch.Tensor, k: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Linear-kernel features ``[b_q, 1]`` and ``[b_k, m + 1]`` (zero for padded keys)."""
        bq, bk = self.hash_codes(q), self.hash_codes(k)
        fq = torch.cat((bq, torch.ones_like(bq[..., :1])), dim=-1)
        fk = torch.cat((bk, torch.full_like(bk[..., :1], self.bits + 1.0)), dim=-1)
        if padding_mask is not None:
            fk = fk * padding_mask[:, None, :, None].to(fk.dtype)
        return fq, fk

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if ctx.cache is not None:
            return step_through(self, x, ctx)
        q, k, v = self.project(x)
        fq, fk = self.features(q, k, ctx.padding_mask)
        if not ctx.causal:
            y = linear_attention_global(fq, fk, v)
        elif self.impl == "reference":
            y = linear_attention_recurrent(fq, fk, v)
        else:
            y = linear_attention_chunked(fq, fk, v, self.chunk_size)
        return self.out(merge_heads(y))

    def step(
        self, x_t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Causal decoding of one token ``x_t [B, D]``; the state is
        ``(sum f_k v^T [B, H, m+1, Dh], sum f_k [B, H, m+1])``. Equals :meth:`forward`."""
        b, dm = x_t.shape
        q, k, v = (z.unsqueeze(2) for z in project_qkv(self.qkv, x_t, heads_first=False))
        fq, fk = self.features(q, k, None)
        if state is None:
            f = fq.shape[-1]
            state = (
                x_t.new_zeros(b, self.n_heads, f, self.d_head),
                x_t.new_zeros(b, self.n_heads, f),
            )
        y, state = linear_attention_step(fq[:, :, 0], fk[:, :, 0], v[:, :, 0], state)
        return self.out(y.reshape(b, dm)), state

    def flops_per_token(self, seq_len: int) -> int:
        """Projections, kernel features and hashing of q and k, linear attention."""
        proj = self.projection_flops()
        h, m, a = self.hash_weight.shape
        hashing = 2 * h * 2 * (a * self.d_head + m * a)
        return proj + hashing + 4 * h * (m + 1) * self.d_head
