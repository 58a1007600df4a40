"""Linear heads: a language-model head, and classification and regression heads that
read every token or pool each row first. Each subclasses ``nn.Linear`` so a model's
state dict keeps the keys ``head.weight``/``head.bias``."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from anyformer.components.heads.base import Head
from anyformer.registry import Capabilities, NoParams, Paper, entry_of, register

if TYPE_CHECKING:
    from anyformer.spec import ModelSpec

GPT = Paper("Improving Language Understanding by Generative Pre-Training", 2018, "Radford et al.")
BERT = Paper(
    "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding",
    2019,
    "Devlin et al.",
)


def pooling(spec: ModelSpec) -> str | tuple[int, ...]:
    """How a pooled head of ``spec`` pools: ``model.pool``, or for ``pool='branches'``
    the index of each branch's CLS token in the embedder's layout (CrossViT)."""
    if spec.pool != "branches":
        return spec.pool
    branches = spec.token_layout.branches
    if branches is None:
        raise ValueError("model.pool='branches' needs an embedder with branches (crossvit)")
    starts = [0]
    for length in branches[:-1]:
        starts.append(starts[-1] + length)
    return tuple(starts)


def pool(
    x: torch.Tensor, padding_mask: torch.Tensor | None, how: str | tuple[int, ...]
) -> torch.Tensor:
    """``[B, T, D] -> [B, D]``: the mean over real tokens, the first token, or the last
    real one (``padding_mask`` True at real tokens; ``None``: all real); ``how`` a tuple
    of token indices (:func:`pooling` of ``pool='branches'``): the mean of those tokens,
    the CLS tokens of CrossViT's branches. A linear head on that mean is the average of
    the head's outputs on each CLS token, CrossViT's average of the branches' logits."""
    if isinstance(how, tuple):
        return x[:, list(how)].mean(dim=1)
    if how == "first":
        return x[:, 0]
    if padding_mask is None:
        return x.mean(dim=1) if how == "mean" else x[:, -1]
    real = padding_mask.to(x.dtype).unsqueeze(-1)
    if how == "mean":
        return (x * real).sum(1) / real.sum(1).clamp(min=1)
    last = padding_mask.long().sum(1).clamp(min=1) - 1
    return x[torch.arange(x.shape[0], device=x.device), last]


def n_outputs(spec: ModelSpec, name: str) -> int:
    """``spec.n_outputs``, refused by name when missing."""
    if spec.n_outputs is None:
        raise ValueError(f"model.n_outputs is required for head='{name}'")
    return spec.n_outputs


class LinearHead(nn.Linear, Head):
    """``x [B, T, D] -> x W^T (+ b)``, pooled first (``model.pool``) when ``pooled``.

    ``plain_linear`` marks a per-token head whose forward is exactly ``F.linear`` on its
    own weight, which decoding may run from a column-major copy like a plain layer."""

    pooled: ClassVar[bool] = False
    plain_linear: ClassVar[bool] = True
    uses_bias: ClassVar[bool] = True

    def __init__(self, spec: ModelSpec, params: NoParams) -> None:
        nn.Linear.__init__(self, spec.d_model, self.out_size(spec), bias=self.uses_bias)
        self.how = pooling(spec) if self.pooled else spec.pool

    def out_size(self, spec: ModelSpec) -> int:
        return n_outputs(spec, entry_name(self))

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooled:
            x = pool(x, padding_mask, self.how)
        return F.linear(x, self.weight, self.bias)


def entry_name(head: nn.Module) -> str:
    entry = entry_of(type(head))
    return entry.name if entry is not None else type(head).__name__


@register(
    "head",
    "lm",
    paper=GPT,
    summary="next-token logits over the vocabulary (tied to the token embedding by default)",
    params=NoParams,
    caps=Capabilities(complexity="O(n)"),
)
class LMHead(LinearHead):
    """Per-token logits ``[B, T, vocab_size]``, no bias; ``model.tie_embeddings`` shares
    the weight with the token embedding (the model ties them after building)."""

    uses_bias = False

    def out_size(self, spec: ModelSpec) -> int:
        if spec.vocab_size is None:
            raise ValueError("model.vocab_size is required for head='lm'")
        return spec.vocab_size


@register(
    "head",
    "token_classify",
    paper=BERT,
    summary="per-token class logits [B, T, n_outputs]",
    params=NoParams,
    caps=Capabilities(complexity="O(n)"),
)
class TokenClassifyHead(LinearHead):
    """Per-token logits ``[B, T, n_outputs]``."""


@register(
    "head",
    "token_regress",
    paper=BERT,
    summary="per-token values [B, T, n_outputs]",
    params=NoParams,
    caps=Capabilities(complexity="O(n)"),
)
class TokenRegressHead(LinearHead):
    """Per-token values ``[B, T, n_outputs]``."""


@register(
    "head",
    "classify",
    paper=BERT,
    summary="class logits [B, n_outputs] of each row, pooled by model.pool (mean, first, last, branches)",
    params=NoParams,
    caps=Capabilities(pooled=True, complexity="O(n)"),
)
class ClassifyHead(LinearHead):
    """Pooled logits ``[B, n_outputs]``."""

    pooled = True
    plain_linear = False


@register(
    "head",
    "regress",
    paper=BERT,
    summary="values [B, n_outputs] of each row, pooled by model.pool (mean, first, last, branches)",
    params=NoParams,
    caps=Capabilities(pooled=True, complexity="O(n)"),
)
class RegressHead(LinearHead):
    """Pooled values ``[B, n_outputs]``."""

    pooled = True
    plain_linear = False


UNIXCODER = Paper(
    "UniXcoder: Unified Cross-Modal Pre-training for Code Representation", 2022, "Guo et al."
)


@register(
    "head",
    "embed",
    paper=UNIXCODER,
    summary="row embedding [B, n_outputs] for retrieval: pooled by model.pool, projected "
    "without bias (the contrastive objective normalises it)",
    params=NoParams,
    caps=Capabilities(pooled=True, complexity="O(n)"),
)
class EmbedHead(LinearHead):
    """Pooled embedding ``[B, n_outputs]`` (a bias would only shift every embedding)."""

    pooled = True
    plain_linear = False
    uses_bias = False
