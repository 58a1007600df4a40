"""Kernelized linear attention: elu+1, ReLU, Performer (FAVOR+) and cosFormer feature maps."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat, PositiveInt, model_validator
from torch import nn

from anyformer.components.attention.common import Impl, ImplCheck
from anyformer.components.attention.qkv import linear_flops, project_qkv, qkv_projection
from anyformer.components.base import Context, step_through
from anyformer.nn.linear_scan import (
    linear_attention_chunked,
    linear_attention_global,
    linear_attention_recurrent,
    linear_attention_step,
)
from anyformer.registry import Capabilities, Dims, Paper, register


class LinearParams(BaseModel):
    """Parameters of ``linear`` attention.

    - ``feature_map``: the kernel feature map phi applied to queries and keys:
      ``elu1`` (elu(x) + 1, Katharopoulos et al. 2020), ``relu``, ``favor`` (Performer
      positive orthogonal random features, Choromanski et al. 2021) or ``cosformer``
      (ReLU features re-weighted by cos/sin of the position, Qin et al. 2022) or
      ``identity`` (phi(x) = x: plain linear self-attention; only with
      ``normalize=False``, since the normaliser q . sum k can be zero or negative).
    - ``impl``: causal algorithm: ``fast`` (parallel within chunks, state across them)
      or ``reference`` (token by token); ``chunked`` and ``recurrent`` are their
      deprecated names. An encoder always uses the global (bidirectional) sums, which
      have a single form.
    - ``chunk_size``: tokens per chunk for ``impl=fast``.
    - ``n_features``: random features per head (``favor`` only).
    - ``seed``: seed of the fixed random features (``favor`` only); layer ``l`` draws
      from ``torch.Generator().manual_seed(seed * 1_000_003 + l)``.
    - ``eps``: added to the normaliser phi(q) . sum phi(k).
    - ``normalize``: divide by the normaliser (the default). ``False`` gives the
      un-normalised linear self-attention ``y_i = sum_j (q_i . k_j) v_j`` of von Oswald
      et al. (2023), usually with ``feature_map='identity'``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    #: parameter sets under which the registry test holds ``fast`` equal to ``reference``
    #: (several chunks; every feature map)
    IMPL_CHECK: ClassVar[ImplCheck] = (
        {"chunk_size": 4},
        {"chunk_size": 4, "feature_map": "favor", "n_features": 8},
        {"chunk_size": 4, "feature_map": "cosformer"},
        {"chunk_size": 4, "feature_map": "identity", "normalize": False},
    )
    feature_map: Literal["elu1", "relu", "favor", "cosformer", "identity"] = "elu1"
    impl: Impl = "fast"
    chunk_size: PositiveInt = 64
    n_features: PositiveInt = 64
    seed: int = 0
    eps: PositiveFloat = 1e-6
    normalize: bool = True

    @model_validator(mode="after")
    def _identity_needs_no_normaliser(self) -> LinearParams:
        if self.feature_map == "identity" and self.normalize:
            raise ValueError(
                "feature_map='identity' needs normalize=False: with phi(x) = x the "
                "normaliser q . sum k can be zero or negative"
            )
        return self


@dataclass
class LinearAttentionState:
    """Decoding state of :class:`LinearAttention`: ``S = sum phi(k) v^T`` ``[B, H, F, Dh]``,
    ``z = sum phi(k)`` ``[B, H, F]`` and the position of the next token."""

    s: torch.Tensor
    z: torch.Tensor
    position: int = 0


def orthogonal_gaussian(
    n_heads: int, n_features: int, dim: int, generator: torch.Generator
) -> torch.Tensor:
    """``[n_heads, n_features, dim]`` random projections: blocks of orthogonal rows
    (Haar-random, from the QR of Gaussian matrices) rescaled to the norms of Gaussian
    vectors (Performer's orthogonal random features); each row is marginally N(0, I)."""
    heads = []
    for _ in range(n_heads):
        blocks = []
        for _ in range(math.ceil(n_features / dim)):
            q, r = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
            # fix LAPACK's sign convention so that the directions are uniform (Haar)
            blocks.append((q * torch.sign(torch.diagonal(r))).T)
        rows = torch.cat(blocks)[:n_features]
        norms = torch.randn(n_features, dim, generator=generator).norm(dim=-1, keepdim=True)
        heads.append(rows * norms)
    return torch.stack(heads)


@register(
    "attention",
    "linear",
    paper=Paper(
        "Transformers are RNNs: Fast Autoregressive Transformers with Linear Attention",
        2020,
        "Katharopoulos et al.",
    ),
    summary="kernelized linear attention phi(q)^T sum phi(k) v^T / phi(q)^T sum phi(k); "
    "feature maps elu1, relu, favor (Performer, Choromanski et al. 2021), cosformer "
    "(Qin et al. 2022), identity; optional un-normalised LSA (von Oswald et al. 2023); "
    "chunked and recurrent forms",
    params=LinearParams,
    caps=Capabilities(
        complexity="O(n)", recurrent=True, kv_cache=True, position_modes=("none", "embed")
    ),
)
class LinearAttention(nn.Module):
    """Linear attention: ``y_i = sum_j phi(q_i).phi(k_j) v_j / sum_j phi(q_i).phi(k_j)``
    over ``j <= i`` (decoder) or all real ``j`` (encoder), per head, then an output
    projection.

    Rearranged as ``phi(q_i)^T S_i / phi(q_i)^T z_i`` with ``S_i = sum_j phi(k_j) v_j^T``
    and ``z_i = sum_j phi(k_j)``, the cost is linear in length and a decoder needs only
    the constant-size state ``(S, z)`` (:meth:`step`). Feature maps:

    - ``elu1``: ``elu(x) + 1`` ("Transformers are RNNs", Katharopoulos et al., 2020);
    - ``relu``: ``relu(x)``;
    - ``favor``: ``exp(w_r . x' - |x'|^2 / 2) / sqrt(m)`` with ``x' = x / d^{1/4}`` and
      fixed orthogonal random ``w_r`` (buffers drawn from a seeded generator), an
      unbiased estimate of the softmax kernel ("Rethinking Attention with Performers",
      Choromanski et al., 2021). A query's features are divided by their maximum, which
      cancels in the ratio. Keys are not stabilised (Performer's shared key maximum
      would depend on future keys in a decoder); since ``w.x - |x|^2/2 <= |w|^2/2``
      with ``|w|^2 ~ chi^2(d_head)``, features stay finite in fp32/bf16 even in the
      worst case for head dims up to 64, but fp16 can overflow.
    - ``cosformer``: ``[relu(x) cos(theta_i), relu(x) sin(theta_i)]`` with
      ``theta_i = pi i / (2 M)``, ``M = max_len``, so that ``phi(q_i).phi(k_j) =
      relu(q_i).relu(k_j) cos(pi (i - j) / (2 M))`` ("cosFormer: Rethinking Softmax in
      Attention", Qin et al., 2022). Inputs longer than ``max_len`` are rejected.

    Padded keys get zero features, so they add nothing to ``S`` or ``z``.

    Does not support: rotary or score-bias positions (there is no score matrix; the
    RoFormer variant that rotates only the numerator is not implemented), attention
    dropout, packed rows. With ``ctx.cache`` (generation) it runs :meth:`step` token by
    token from the cached state.
    """

    def __init__(self, dims: Dims, params: LinearParams) -> None:
        super().__init__()
        self.n_heads = dims.n_heads
        self.d_head = dims.d_head
        self.params = params
        self.max_len = dims.max_len
        self.qkv = qkv_projection(dims)
        self.out = nn.Linear(dims.d_model, dims.d_model, bias=dims.bias)
        self.out.residual_projection = True
        if params.feature_map == "favor":
            gen = torch.Generator().manual_seed(params.seed * 1_000_003 + dims.layer)
            w = orthogonal_gaussian(dims.n_heads, params.n_features, dims.d_head, gen)
            self.register_buffer("projection", w)

    @property
    def n_features(self) -> int:
        """Feature dimension per head after the feature map."""
        fmap = self.params.feature_map
        if fmap == "favor":
            return self.params.n_features
        return 2 * self.d_head if fmap == "cosformer" else self.d_head

    # ------------------------------------------------------------------ feature maps
    def features(self, x: torch.Tensor, positions: torch.Tensor, query: bool) -> torch.Tensor:
        """phi of queries or keys ``[B, H, T, Dh]`` at absolute ``positions`` ``[T]``."""
        fmap = self.params.feature_map
        if fmap == "elu1":
            return F.elu(x) + 1.0
        if fmap == "relu":
            return F.relu(x)
        if fmap == "identity":
            return x
        if fmap == "favor":
            x = x / self.d_head**0.25
            logits = torch.einsum("bhtd,hmd->bhtm", x, self.projection.to(x.dtype))
            logits = logits - 0.5 * x.pow(2).sum(-1, keepdim=True)
            if query:  # a per-query constant: cancels between numerator and normaliser
                logits = logits - logits.amax(-1, keepdim=True).detach()
            return logits.exp() / math.sqrt(self.params.n_features)
        top = int(positions.max()) if positions.numel() else 0
        if top >= self.max_len:
            raise ValueError(
                f"position {top} is beyond model.max_len={self.max_len}, the horizon M of "
                f"cosformer's cos(pi (i - j) / 2M) re-weighting; raise model.max_len"
            )
        theta = (math.pi / (2 * self.max_len)) * positions.to(x.dtype)
        x = F.relu(x)
        return torch.cat((x * theta.cos()[:, None], x * theta.sin()[:, None]), dim=-1)

    def _project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v ``[..., H, Dh]`` (heads before the last dim) from ``x [..., D]``."""
        q, k, v = project_qkv(self.qkv, x, heads_first=False)
        return q, k, v

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if ctx.cache is not None:
            return step_through(self, x, ctx)
        b, t, d = x.shape
        q, k, v = (y.transpose(1, 2) for y in self._project(x))  # [B, H, T, Dh]
        fq = self.features(q, ctx.positions, query=True)
        fk = self.features(k, ctx.positions, query=False)
        if ctx.padding_mask is not None:
            fk = fk * ctx.padding_mask[:, None, :, None].to(fk.dtype)
        eps, norm = self.params.eps, self.params.normalize
        if not ctx.causal:
            y = linear_attention_global(fq, fk, v, eps, norm)
        elif self.params.impl == "reference":
            y = linear_attention_recurrent(fq, fk, v, eps, norm)
        else:
            y = linear_attention_chunked(fq, fk, v, self.params.chunk_size, eps, norm)
        return self.out(y.transpose(1, 2).reshape(b, t, d))

    # ------------------------------------------------------------------ decoding
    def init_state(
        self, batch: int, device: torch.device | None = None, dtype: torch.dtype | None = None
    ) -> LinearAttentionState:
        """The empty state before the first token."""
        dtype = dtype or self.qkv.weight.dtype
        f = self.n_features
        s = torch.zeros(batch, self.n_heads, f, self.d_head, device=device, dtype=dtype)
        z = torch.zeros(batch, self.n_heads, f, device=device, dtype=dtype)
        return LinearAttentionState(s, z, 0)

    def step(
        self, x_t: torch.Tensor, state: LinearAttentionState | None = None
    ) -> tuple[torch.Tensor, LinearAttentionState]:
        """Causal decoding, one token ``x_t [B, D]`` at a time, in constant memory.

        Equals the causal :meth:`forward` at that position (tested).
        """
        if state is None:
            state = self.init_state(x_t.shape[0], x_t.device, x_t.dtype)
        q, k, v = self._project(x_t)  # [B, H, Dh]
        pos = torch.tensor([state.position], device=x_t.device)
        fq = self.features(q.unsqueeze(2), pos, query=True).squeeze(2)
        fk = self.features(k.unsqueeze(2), pos, query=False).squeeze(2)
        y, (s, z) = linear_attention_step(
            fq, fk, v, (state.s, state.z), self.params.eps, self.params.normalize
        )
        y = self.out(y.reshape(x_t.shape[0], -1))
        return y, LinearAttentionState(s, z, state.position + 1)

    def flops_per_token(self, seq_len: int) -> int:
        """Forward FLOPs per token: projections, the feature map's projection (favor),
        the state update and the read-out (``4 F (Dh + 1)`` per head)."""
        proj = linear_flops(self.qkv, self.out)
        f = self.n_features
        fmap = 2 * 2 * f * self.d_head if self.params.feature_map == "favor" else 0
        return proj + self.n_heads * (fmap + 4 * f * (self.d_head + 1))
