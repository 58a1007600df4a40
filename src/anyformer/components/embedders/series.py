"""Time-series embedders: a window ``[B, lookback, variates]`` as tokens.

- ``points``: one token per time step, a linear map of its ``variates`` values
  (Informer's value embedding, Zhou et al., 2021);
- ``patches_1d``: PatchTST (Nie et al., 2023): each variate cut into patches of
  ``patch_len`` steps every ``stride`` steps, each patch mapped by one linear map shared
  by all variates. ``channel_independent: true`` (the default, PatchTST's channel
  independence): the variates are folded into the batch, ``[B * C, N, D]``, so each
  variate's patch sequence goes through the whole backbone on its own (shared weights,
  no attention across variates) and the head maps each variate's ``N`` tokens to its own
  horizon; changing one variate's input changes no other variate's forecast.
  ``channel_independent: false``: **channel blocks** ``[variate 0's patches, variate 1's
  patches, ...]`` in one row ``[B, C * N, D]``, so attention spans the variates (the
  embedding and the head stay per variate). No end padding (PatchTST repeats the last
  value ``stride`` times);
- ``variates``: iTransformer (Liu et al., 2024): one token per variate, a linear map of
  its whole lookback; with ``position: none`` the model is equivariant to permuting the
  variates;
- ``gateformer``: Gateformer (Lan and Oermann, 2025): one token per variate, a sigmoid
  gate between its whole-lookback embedding (as ``variates``) and a temporal embedding
  (its patches through a small channel-independent encoder, flattened).

``revin: true`` (all of them): reversible instance normalisation (Kim et al., 2022): each
window is normalised per variate by its own mean and standard deviation, then scaled
and shifted by a learned affine ``gamma, beta`` per variate; :meth:`SeriesEmbedder.readout_state`
gives the statistics to the model, which hands them to the head (``forecast``), which
inverts the affine and the normalisation on its forecast.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt
from torch import nn

from anyformer.components.embedders.base import Embedder, TokenLayout
from anyformer.registry import Capabilities, Paper, register

PATCHTST = Paper(
    "A Time Series is Worth 64 Words: Long-term Forecasting with Transformers", 2023, "Nie et al."
)
ITRANSFORMER = Paper(
    "iTransformer: Inverted Transformers Are Effective for Time Series Forecasting",
    2024,
    "Liu et al.",
)
INFORMER = Paper(
    "Informer: Beyond Efficient Transformer for Long Sequence Time-Series Forecasting",
    2021,
    "Zhou et al.",
)
REVIN = Paper(
    "Reversible Instance Normalization for Accurate Time-Series Forecasting against "
    "Distribution Shift",
    2022,
    "Kim et al.",
)
#: Added to the variance (RevIN's epsilon).
EPS = 1e-5


@dataclass(frozen=True)
class SeriesStats:
    """RevIN's statistics of a batch of windows, ``mean``, ``std`` ``[B, 1, C]``, and the
    affine ``gamma``, ``beta`` ``[C]`` (``None`` before :meth:`RevIN.state` adds them)."""

    mean: torch.Tensor
    std: torch.Tensor
    gamma: torch.Tensor | None = None
    beta: torch.Tensor | None = None

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        """``(y - beta) / gamma * std + mean``: RevIN's inverse on ``y [B, H, C]``."""
        if self.gamma is not None and self.beta is not None:
            y = (y - self.beta) / self.gamma
        return y * self.std + self.mean


class RevIN(nn.Module):
    """Reversible instance normalisation (Kim et al., 2022) over ``[B, L, C]``:
    ``normalize(x) = (x - mean) / std * gamma + beta`` with ``mean``, ``std`` of each
    window and variate over time (``std = sqrt(var + eps)``, biased variance), and
    ``denormalize(y) = (y - beta) / gamma * std + mean``, its exact inverse."""

    def __init__(self, variates: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(variates))
        self.beta = nn.Parameter(torch.zeros(variates))

    @staticmethod
    def stats(x: torch.Tensor) -> SeriesStats:
        mean = x.mean(dim=1, keepdim=True)
        var = x.var(dim=1, keepdim=True, unbiased=False)
        return SeriesStats(mean, torch.sqrt(var + EPS))

    def normalize(self, x: torch.Tensor, s: SeriesStats) -> torch.Tensor:
        return (x - s.mean) / s.std * self.gamma + self.beta

    def state(self, x: torch.Tensor) -> SeriesStats:
        """The statistics of ``x`` with this module's affine (what the head inverts)."""
        s = self.stats(x)
        return SeriesStats(s.mean, s.std, self.gamma, self.beta)

    def denormalize(self, y: torch.Tensor, s: SeriesStats) -> torch.Tensor:
        return SeriesStats(s.mean, s.std, self.gamma, self.beta).denormalize(y)


class SeriesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    revin: bool = False


class Patches1dParams(SeriesParams):
    patch_len: PositiveInt = 8
    stride: PositiveInt = 4
    #: fold the variates into the batch (PatchTST); ``False``: channel blocks in one row
    channel_independent: bool = True


def series_shape(spec: Any) -> tuple[int, int] | None:
    """``(lookback, variates)`` from ``spec.input_shape``, or ``None``."""
    shape = getattr(spec, "input_shape", None)
    if shape is None or len(shape) != 2:
        return None
    return int(shape[0]), int(shape[1])


class SeriesEmbedder(Embedder):
    """Base of the series embedders: ``inputs [B, lookback, variates]``, RevIN optional.
    ``readout`` says how a ``forecast`` head reads the tokens: ``flatten`` (all tokens of
    a row, PatchTST's flatten head) or ``per_variate`` (token i is variate i)."""

    readout: ClassVar[str] = "flatten"
    name: ClassVar[str] = ""

    @classmethod
    def readout_of(cls, params: Any) -> str:
        """How a ``forecast`` head reads this embedder's tokens built with ``params``:
        ``flatten``, ``per_variate``, ``channel_blocks`` (``[B, C * N, D]``, variate-major)
        or ``channel_rows`` (``[B * C, N, D]``, the variates folded into the batch)."""
        return cls.readout

    def __init__(self, spec: Any, params: SeriesParams) -> None:
        super().__init__()
        problem = self.check(params, spec)
        if problem:
            raise ValueError(problem)
        self.lookback, self.variates = series_shape(spec)  # type: ignore[misc]
        self.revin = RevIN(self.variates) if params.revin else None

    @classmethod
    def check(cls, params: SeriesParams, spec: Any) -> str | None:
        if series_shape(spec) is None:
            return (
                f"embedder '{cls.name}' reads series, but model.input_shape="
                f"{getattr(spec, 'input_shape', None)}; it needs [lookback, variates] "
                f"(a forecasting task sets it)"
            )
        if params.revin:
            head = getattr(spec, "head_ref", None)
            if head is not None and not getattr(head.entry.cls, "reads_state", False):
                return (
                    f"embedder.revin=true needs a head that undoes the normalisation "
                    f"(forecast), but model.head='{head.name}'"
                )
        return None

    def readout_state(self, inputs: torch.Tensor) -> SeriesStats | None:
        """RevIN's statistics of ``inputs`` (``None`` without RevIN), for the head."""
        return self.revin.state(inputs) if self.revin is not None else None

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.revin is not None:
            x = self.revin.normalize(x, RevIN.stats(x))
        return self.tokens(x)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register(
    "embedder",
    "points",
    paper=INFORMER,
    summary="series [B, L, C]: one token per time step, a linear map of its C values; "
    "optional RevIN",
    params=SeriesParams,
    caps=Capabilities(input_kind="series", complexity="O(n)"),
)
class PointEmbedder(SeriesEmbedder):
    """Token t = ``W x_t + b`` for ``x_t`` the ``C`` values at step t: ``[B, L, D]``."""

    name = "points"

    def __init__(self, spec: Any, params: SeriesParams) -> None:
        super().__init__(spec, params)
        self.proj = nn.Linear(self.variates, spec.d_model)

    @classmethod
    def layout(cls, params: SeriesParams, spec: Any) -> TokenLayout:
        shape = series_shape(spec)
        return TokenLayout(None if shape is None else shape[0])

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


def patch_problem(params: Patches1dParams, spec: Any) -> str | None:
    """Why ``params.patch_len`` does not fit the lookback of ``spec`` (``None``: it does)."""
    lookback, _ = series_shape(spec)  # type: ignore[misc]
    if params.patch_len > lookback:
        return (
            f"embedder.patch_len={params.patch_len} is longer than the lookback "
            f"{lookback} (model.input_shape[0]); use a patch_len <= {lookback}"
        )
    return None


def n_patches(lookback: int, patch_len: int, stride: int) -> int:
    """Patches of ``patch_len`` every ``stride`` steps in ``lookback`` steps."""
    return (lookback - patch_len) // stride + 1


@register(
    "embedder",
    "patches_1d",
    paper=PATCHTST,
    summary="series [B, L, C]: per-variate patches of patch_len every stride steps, one linear "
    "map shared by the variates; channel-independent (variates folded into the batch, "
    "PatchTST) or channel blocks in one row; optional RevIN",
    params=Patches1dParams,
    caps=Capabilities(input_kind="series", complexity="O(n)"),
)
class Patch1dEmbedder(SeriesEmbedder):
    """Token ``(c, n)`` = ``W x[n*stride : n*stride + patch_len, c] + b`` with
    ``N = (L - patch_len) // stride + 1`` patches per variate; channel-independent: row
    ``b * C + c`` holds variate c's ``N`` tokens, ``[B * C, N, D]``; otherwise one row per
    window, variate-major, ``[B, C * N, D]``."""

    name = "patches_1d"

    def __init__(self, spec: Any, params: Patches1dParams) -> None:
        super().__init__(spec, params)
        self.patch_len, self.stride = params.patch_len, params.stride
        self.channel_independent = params.channel_independent
        self.proj = nn.Linear(params.patch_len, spec.d_model)

    @classmethod
    def readout_of(cls, params: Patches1dParams) -> str:  # type: ignore[override]
        return "channel_rows" if params.channel_independent else "channel_blocks"

    @classmethod
    def check(cls, params: Patches1dParams, spec: Any) -> str | None:  # type: ignore[override]
        return super().check(params, spec) or patch_problem(params, spec)

    @classmethod
    def layout(cls, params: Patches1dParams, spec: Any) -> TokenLayout:
        shape = series_shape(spec)
        if shape is None or params.patch_len > shape[0]:
            return TokenLayout(None)
        n = n_patches(shape[0], params.patch_len, params.stride)
        if params.channel_independent:
            return TokenLayout(n, rows=shape[1])
        return TokenLayout(shape[1] * n)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.transpose(1, 2).unfold(-1, self.patch_len, self.stride)  # [B, C, N, P]
        tokens = self.proj(patches)  # [B, C, N, D]
        return tokens.flatten(0, 1) if self.channel_independent else tokens.flatten(1, 2)


@register(
    "embedder",
    "variates",
    paper=ITRANSFORMER,
    summary="series [B, L, C]: one token per variate, a linear map of its whole lookback "
    "(iTransformer); optional RevIN",
    params=SeriesParams,
    caps=Capabilities(input_kind="series", complexity="O(n)"),
)
class VariateEmbedder(SeriesEmbedder):
    """Token c = ``W x[:, c] + b`` (the variate's ``L`` values): ``[B, C, D]``."""

    name = "variates"
    readout = "per_variate"

    def __init__(self, spec: Any, params: SeriesParams) -> None:
        super().__init__(spec, params)
        self.proj = nn.Linear(self.lookback, spec.d_model)

    @classmethod
    def layout(cls, params: SeriesParams, spec: Any) -> TokenLayout:
        shape = series_shape(spec)
        return TokenLayout(None if shape is None else shape[1])

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.transpose(1, 2))


GATEFORMER = Paper(
    "Gateformer: Advancing Multivariate Time Series Forecasting through Temporal and "
    "Variate-Wise Attention with Gated Representations",
    2025,
    "Lan and Oermann",
)


class GateformerParams(Patches1dParams):
    #: pre-norm Transformer encoder layers run over each variate's patches (0: none)
    temporal_layers: int = Field(1, ge=0, le=8)


@register(
    "embedder",
    "gateformer",
    paper=GATEFORMER,
    summary="series [B, L, C]: one token per variate, a sigmoid gate between its whole-lookback "
    "embedding and a temporal embedding (its patches through a channel-independent encoder, "
    "flattened); optional RevIN",
    params=GateformerParams,
    caps=Capabilities(input_kind="series", complexity="O(n)"),
)
class GateformerEmbedder(SeriesEmbedder):
    """Gateformer's variate-wise tokens (Lan and Oermann, 2025): for each variate c,

    - the global embedding ``g_c = W_g x[:, c] + b_g`` of its whole lookback (as
      ``variates``, iTransformer);
    - the temporal embedding ``h_c``: its patches (``patch_len`` every ``stride``, no end
      padding) mapped by one linear map shared by the variates, plus learned positions,
      through ``temporal_layers`` pre-norm Transformer encoder layers run on each
      variate's patch sequence alone (channel-independent, weights shared), then the
      ``N * d_model`` outputs flattened and mapped to ``d_model``;
    - the gate ``s_c = sigmoid(W_1 g_c + b_1 + W_2 h_c + b_2)`` and the token
      ``s_c * g_c + (1 - s_c) * h_c``: ``[B, C, D]``.

    The model's blocks then attend across the variate tokens (the paper's variate-wise
    attention) and the ``forecast`` head projects each token to its variate's horizon.
    Not built: the paper's second gate between the variate-wise encoder's input and
    output (the blocks keep their plain residuals here) and its end padding of the patches.
    """

    name = "gateformer"
    readout = "per_variate"

    def __init__(self, spec: Any, params: GateformerParams) -> None:
        super().__init__(spec, params)
        d = spec.d_model
        self.patch_len, self.stride = params.patch_len, params.stride
        self.n_patches = n_patches(self.lookback, params.patch_len, params.stride)
        self.global_proj = nn.Linear(self.lookback, d)
        self.patch_proj = nn.Linear(params.patch_len, d)
        self.patch_pos = nn.Parameter(0.02 * torch.randn(self.n_patches, d))
        layer = nn.TransformerEncoderLayer(
            d, spec.n_heads, dim_feedforward=4 * d, dropout=spec.dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )  # fmt: skip
        self.temporal = nn.ModuleList([copy.deepcopy(layer) for _ in range(params.temporal_layers)])
        self.temporal_proj = nn.Linear(self.n_patches * d, d)
        self.gate_global = nn.Linear(d, d)
        self.gate_temporal = nn.Linear(d, d)

    @classmethod
    def check(cls, params: GateformerParams, spec: Any) -> str | None:  # type: ignore[override]
        return super().check(params, spec) or patch_problem(params, spec)

    @classmethod
    def layout(cls, params: GateformerParams, spec: Any) -> TokenLayout:
        shape = series_shape(spec)
        return TokenLayout(None if shape is None else shape[1])

    def global_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``g``: each variate's whole lookback mapped to ``d_model``, ``[B, C, D]``."""
        return self.global_proj(x.transpose(1, 2))

    def temporal_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """``h``: each variate's patches through the temporal encoder, flattened and
        mapped to ``d_model``, ``[B, C, D]`` (each variate computed alone)."""
        b, _, c = x.shape
        patches = x.transpose(1, 2).unfold(-1, self.patch_len, self.stride)  # [B, C, N, P]
        h = (self.patch_proj(patches) + self.patch_pos).flatten(0, 1)  # [B*C, N, D]
        for layer in self.temporal:
            h = layer(h)
        return self.temporal_proj(h.reshape(b, c, -1))

    def gate(self, g: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """``s = sigmoid(W_1 g + b_1 + W_2 h + b_2)``, per variate and channel."""
        return torch.sigmoid(self.gate_global(g) + self.gate_temporal(h))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        g, h = self.global_tokens(x), self.temporal_tokens(x)
        s = self.gate(g, h)
        return s * g + (1 - s) * h
