"""The two embedders of sequence models: token ids through a table, vectors through a
linear map. They subclass ``nn.Embedding`` and ``nn.Linear`` so a model's state dict
keeps the keys ``embed.weight`` (and ``embed.bias``) whatever the embedder slot says."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from anyformer.components.embedders.base import Embedder
from anyformer.registry import Capabilities, NoParams, Paper, register

if TYPE_CHECKING:
    from anyformer.spec import ModelSpec


@register(
    "embedder",
    "tokens",
    paper=Paper("Attention Is All You Need", 2017, "Vaswani et al."),
    summary="token ids [B, T] through a learned table of vocab_size x d_model",
    params=NoParams,
    caps=Capabilities(input_kind="tokens", complexity="O(n)"),
)
class TokenEmbedder(nn.Embedding, Embedder):
    """``inputs [B, T]`` (ids in ``[0, vocab_size)``) -> ``weight[inputs]`` ``[B, T, D]``."""

    def __init__(self, spec: ModelSpec, params: NoParams) -> None:
        if spec.vocab_size is None:
            raise ValueError("model.vocab_size is required to build a token model (e.g. 256)")
        nn.Embedding.__init__(self, spec.vocab_size, spec.d_model)

    @classmethod
    def check(cls, params: NoParams, spec: ModelSpec) -> str | None:
        return None


@register(
    "embedder",
    "vectors",
    paper=Paper("Attention Is All You Need", 2017, "Vaswani et al."),
    summary="vectors [B, T, input_dim] through a linear map to d_model",
    params=NoParams,
    caps=Capabilities(input_kind="vectors", complexity="O(n)"),
)
class VectorEmbedder(nn.Linear, Embedder):
    """``inputs [B, T, input_dim]`` -> ``inputs @ W^T + b`` ``[B, T, D]``."""

    def __init__(self, spec: ModelSpec, params: NoParams) -> None:
        if spec.input_dim is None:
            raise ValueError("model.input_dim is required when the embedder reads vectors")
        nn.Linear.__init__(self, spec.input_dim, spec.d_model)
