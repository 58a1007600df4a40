"""More normalisation layers: crmsnorm (compressed RMSNorm) and batchnorm over tokens."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat
from torch import nn

from anyformer.nn.graph_ops import current_token_mask, masked_batch_norm
from anyformer.registry import Capabilities, Dims, NoParams, Paper, register


class CRMSNormParams(BaseModel):
    """Parameters of ``crmsnorm``.

    - ``eps``: added to the mean square (LayerNorm's convention, so the two agree exactly).
    - ``center``: subtract the channel mean first. Our residual stream is not kept
      zero-mean as in a Pre-CRMSNorm Transformer, so centring is what makes the input the
      zero-mean vector CRMSNorm expects; with ``center=False`` the input is *assumed*
      zero-mean and its last channel is never read.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    eps: PositiveFloat = 1e-5
    center: bool = True


def crms_norm(x_hat: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """CRMSNorm of a compressed zero-mean vector: ``x_hat`` holds the first d - 1 entries
    of a zero-mean d-vector x (the last is ``-sum(x_hat)``), and

        CRMSNorm(x_hat) = x_hat / sqrt((sum_i x_hat_i^2 + (sum_i x_hat_i)^2) / d + eps),

    which is RMSNorm(x) restricted to its first d - 1 entries."""
    d = x_hat.shape[-1] + 1
    square = x_hat.pow(2).sum(-1, keepdim=True) + x_hat.sum(-1, keepdim=True).pow(2)
    return x_hat * torch.rsqrt(square / d + eps)


@register(
    "norm",
    "crmsnorm",
    paper=Paper(
        "Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and Efficient Pre-LN Transformers",
        2023,
        "Jiang et al.",
    ),
    summary="compressed RMSNorm: RMSNorm of a zero-mean vector stored in d - 1 entries "
    "(equals LayerNorm without bias)",
    params=CRMSNormParams,
    caps=Capabilities(complexity="O(n)"),
)
class CRMSNorm(nn.Module):
    """y = decompress(CRMSNorm(compress(x - mean(x)))) * g.

    A zero-mean d-vector is stored losslessly by its first d - 1 entries (compress);
    :func:`crms_norm` normalises that compressed form by the RMS of the full vector, and
    decompress appends ``-sum`` as the last entry. On a zero-mean input this is exactly
    RMSNorm, and exactly LayerNorm without bias, as the paper states; with ``center`` it
    equals LayerNorm without bias on any input. The arithmetic is the paper's; the
    saving (a d - 1 wide residual stream with folded weights) needs the whole model
    converted, which this layer does not do.

    Paper: "Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and Efficient Pre-LN
    Transformers", Jiang et al., 2023. Not supported: the Pre-CRMSNorm model conversion
    (compressed residual stream, mean-removed embeddings and projections).
    """

    def __init__(self, dims: Dims, params: CRMSNormParams) -> None:
        super().__init__()
        self.eps = params.eps
        self.center = params.center
        self.weight = nn.Parameter(torch.ones(dims.d_model))

    @staticmethod
    def check_dims(params: CRMSNormParams, dims: Dims) -> str | None:
        if dims.d_model < 2:
            return f"crmsnorm needs d_model >= 2 (a zero-mean vector of size 1 is 0), got {dims.d_model}"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.center:
            x = x - x.mean(-1, keepdim=True)
        y_hat = crms_norm(x[..., :-1], self.eps)
        y = torch.cat((y_hat, -y_hat.sum(-1, keepdim=True)), dim=-1)
        return y * self.weight


class BatchNormParams(BaseModel):
    """Parameters of ``batchnorm``.

    - ``momentum``: weight of the current batch in the running statistics.
    - ``eps``: added to the variance.
    - ``rep``: SLAB's RepBN, ``BN(x) + eta * x`` with a learned scalar eta (starts at 1).
    - ``progressive_steps``: SLAB's PRepBN when > 0: the output is
      ``gamma * LayerNorm(x) + (1 - gamma) * norm(x)`` with gamma falling linearly from 1
      to 0 over this many training-mode forward calls (one per optimiser step without
      gradient accumulation), counted in a buffer that checkpoints keep.
    - ``mask_padding``: batch statistics count the real tokens alone (the model declares
      its ``padding_mask``; :func:`~anyformer.nn.graph_ops.masked_batch_norm`), so padded
      node tokens of a batch of graphs change nothing (padded positions come out 0);
      ``False``: every position counts, padding included (what earlier versions did).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    momentum: float = Field(0.1, gt=0.0, le=1.0)
    eps: PositiveFloat = 1e-5
    rep: bool = False
    progressive_steps: NonNegativeInt = 0
    mask_padding: bool = True


@register(
    "norm",
    "batchnorm",
    paper=Paper(
        "SLAB: Efficient Transformers with Simplified Linear Attention and Progressive "
        "Re-parameterized Batch Normalization",
        2024,
        "Guo et al.",
    ),
    summary="BatchNorm over all tokens of the batch (graph Transformer; SLAB's RepBN and "
    "progressive LayerNorm-to-BatchNorm); encoders only",
    params=BatchNormParams,
    caps=Capabilities(complexity="O(n)", causal_safe=False),
)
class BatchNorm(nn.Module):
    """y = (x - mu_c) / sqrt(var_c + eps) * g + b, statistics per channel c over every
    token of every sequence in the batch (training) or running averages (evaluation).

    Causality: in training the statistics include later tokens (and other sequences), so
    a token's output depends on the future; a decoder could read the next tokens through
    them. ``check_dims`` therefore rejects it in decoders (``caps.causal_safe=False``).
    Padding: with ``mask_padding`` (the default) the statistics are those of the real
    tokens alone, the padding mask the model declares for its forward pass
    (:func:`~anyformer.nn.graph_ops.token_mask_scope`), so adding or changing padding
    leaves every real token's output unchanged, as the Graph Transformer's BatchNorm
    over the nodes of a batch of graphs; without it padded tokens enter the statistics.

    Papers: BatchNorm in place of LayerNorm as in "A Generalization of Transformer
    Networks to Graphs", Dwivedi and Bresson, 2020; RepBN and the progressive schedule
    from "SLAB: Efficient Transformers with Simplified Linear Attention and Progressive
    Re-parameterized Batch Normalization", Guo et al., 2024. Not supported: decoders,
    folding the norm into the next linear layer.
    """

    def __init__(self, dims: Dims, params: BatchNormParams) -> None:
        super().__init__()
        d = dims.d_model
        self.momentum = params.momentum
        self.eps = params.eps
        self.weight = nn.Parameter(torch.ones(d))
        self.bias = nn.Parameter(torch.zeros(d))
        self.register_buffer("running_mean", torch.zeros(d))
        self.register_buffer("running_var", torch.ones(d))
        self.eta = nn.Parameter(torch.ones(())) if params.rep else None
        self.progressive_steps = params.progressive_steps
        self.mask_padding = params.mask_padding
        if params.progressive_steps:
            self.register_buffer("steps", torch.zeros((), dtype=torch.long))
            self.ln_weight = nn.Parameter(torch.ones(d))
            self.ln_bias = nn.Parameter(torch.zeros(d))

    @staticmethod
    def check_dims(params: BatchNormParams, dims: Dims) -> str | None:
        if dims.causal:
            return (
                "batchnorm averages over all tokens of the batch, later ones included, so "
                "in a decoder each token would see statistics of its future; use it in an "
                "encoder (kind=encoder) or use layernorm/rmsnorm"
            )
        return None

    def gamma(self) -> float:
        """PRepBN's LayerNorm share: 1 at the start, 0 after ``progressive_steps``."""
        if not self.progressive_steps:
            return 0.0
        return max(0.0, 1.0 - int(self.steps) / self.progressive_steps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1]
        mask = current_token_mask(x) if self.mask_padding else None
        y = masked_batch_norm(
            x,
            mask,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            self.training,
            self.momentum,
            self.eps,
        )
        if self.eta is not None:
            y = y + self.eta * x
        if self.progressive_steps:
            gamma = self.gamma()
            if self.training:
                self.steps += 1
            if gamma > 0:
                ln = F.layer_norm(x, (d,), self.ln_weight, self.ln_bias, self.eps)
                y = gamma * ln + (1 - gamma) * y
        return y


@register(
    "norm",
    "none",
    paper=Paper("Transformers Learn In-Context by Gradient Descent", 2023, "von Oswald et al."),
    summary="no normalisation (identity), for norm-free models such as linear self-attention",
    params=NoParams,
    caps=Capabilities(complexity="O(1)"),
)
class NoNorm(nn.Module):
    """y = x. Lets a spec build the norm-free linear self-attention layer that von Oswald
    et al. (2023) analyse, where one layer can implement one step of gradient descent on
    the in-context regression loss. Deep stacks without norms may train unstably."""

    def __init__(self, dims: Dims, params: NoParams) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x
