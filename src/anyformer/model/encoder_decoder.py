"""The encoder–decoder Transformer (``kind: encoder_decoder``).

"Attention Is All You Need" (Vaswani et al., 2017): an encoder reads the source
bidirectionally; a decoder generates the target causally, each of its blocks a
self-attention, a cross-attention over the encoder's output and an FFN sublayer. T5
("Exploring the Limits of Transfer Learning with a Unified Text-to-Text Transformer",
Raffel et al., 2020) compares it with a decoder and a prefix LM on equal terms, as
"What Language Model Architecture and Pretraining Objective Work Best for Zero-Shot
Generalization?" (Wang et al., 2022) does for zero-shot use.

Both stacks are built by the machinery of :class:`~anyformer.model.transformer.
Transformer`: the model *is* a ``Transformer`` over the target (embedder, position,
:func:`~anyformer.model.transformer.build_block` blocks whose layouts get the
cross-attention from ``BlockParts.cross()``, depth schedule, final norm, head) and
holds its encoder as a ``Transformer`` of ``spec.encoder_spec()`` (``kind: encoder``,
no head) under ``encoder``. State-dict keys: ``encoder.*`` for the encoder, the
decoder's as a decoder's (``embed``, ``blocks.<i>.mixer``, ``blocks.<i>.cross``, ...).
With ``share_embeddings`` (both sides ``tokens`` of one vocabulary) the encoder's
embedder *is* the decoder's (``encoder.embed.weight`` and ``embed.weight`` are one tensor).
"""

from __future__ import annotations

import torch
from torch import nn

from anyformer.components.base import Cache
from anyformer.model.flops import count_params
from anyformer.model.output import ModelOutput
from anyformer.model.transformer import Transformer
from anyformer.spec import ModelSpec


class EncoderDecoder(Transformer):
    """An encoder over ``source`` and a decoder over ``inputs`` with cross-attention.

    ``encode(source, source_mask=None) -> memory [B, S, d_model]`` runs the encoder
    (``source_mask`` ``[B, S]``, True at real source tokens). ``forward(inputs,
    padding_mask=None, *, source=..., source_mask=None, memory=None, cache=None, ...)``
    runs the decoder over the target inputs ``[B, T]`` with every block's
    cross-attention reading ``memory`` (given, or encoded from ``source``) with
    ``source_mask`` hiding padded source tokens, and returns what a decoder returns
    (``[B, T, V]`` logits). With a ``cache`` (:func:`anyformer.decoding.generate`) pass
    ``memory`` (encode once) and the same ``source_mask`` at every step: each layer's
    cross-attention computes the memory's keys and values on the first step only.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)  # the decoder: embedder, blocks with cross-attention, head
        self.encoder = Transformer(spec.encoder_spec(), head=False)
        if self.shares_embeddings:
            self.encoder.embed = self.embed

    @property
    def shares_embeddings(self) -> bool:
        """Whether source and target tokens share one embedding table: asked for
        (``share_embeddings``), both embedders ``tokens``, one vocabulary."""
        enc = self.spec.encoder_spec()
        return (
            self.spec.share_embeddings
            and self.spec.embedder_ref.name == "tokens"
            and enc.embedder_ref.name == "tokens"
            and enc.vocab_size == self.spec.vocab_size
        )

    def reset_parameters(self) -> None:
        super().reset_parameters()
        encoder = getattr(self, "encoder", None)  # absent while the decoder is built
        if encoder is not None:
            encoder.reset_parameters()  # its residual scale follows its own depth

    def encode(self, source: torch.Tensor, source_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The encoder's output ``[B, S, d_model]`` (after its final norm) for ``source``
        (token ids ``[B, S]``, or what the encoder's embedder reads)."""
        return self.encoder(source, source_mask)

    def forward(  # type: ignore[override]
        self,
        inputs: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        *,
        source: torch.Tensor | None = None,
        source_mask: torch.Tensor | None = None,
        memory: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        cache: Cache | None = None,
        last_only: bool = False,
        readout_mask: torch.Tensor | None = None,
        return_outputs: bool = False,
    ) -> torch.Tensor | ModelOutput:
        """Decoder outputs for target ``inputs`` given ``source`` (encoded here) or its
        encoding ``memory``; ``source_mask`` marks the real source tokens;
        ``readout_mask`` as in :meth:`Transformer.forward`."""
        if memory is None and source is not None and source_mask is not None:
            check_source_mask(source, source_mask)
        if memory is None:
            if source is None:
                raise ValueError(
                    "an encoder_decoder model needs source= (the encoder's input) or "
                    "memory= (the encoder's output, from model.encode)"
                )
            memory = self.encode(source, source_mask)
        if source_mask is not None and source_mask.shape != memory.shape[:2]:
            raise ValueError(
                f"source_mask must be [batch, source tokens] = {list(memory.shape[:2])}, got "
                f"{list(source_mask.shape)}"
            )
        mask = source_mask.bool() if source_mask is not None else None
        return self._forward(
            inputs, padding_mask, positions, segments, cache, last_only, return_outputs,
            memory=memory, memory_mask=mask, readout_mask=readout_mask,
        )  # fmt: skip

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Distinct trainable parameters of both stacks (a shared embedding once);
        optionally without the token/position embeddings of either."""
        if not exclude_embeddings:
            return super().num_params()
        skip: tuple[nn.Module, ...] = (self.embed, self.position, self.encoder.embed)
        return count_params(self, (*skip, self.encoder.position))

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per target token at ``seq_len``, with a source of the same
        length: the decoder's (its cross-attention over ``seq_len`` memory tokens
        included) plus the encoder's."""
        return super().flops_per_token(seq_len) + self.encoder.flops_per_token(seq_len)


def check_source_mask(source: torch.Tensor, source_mask: torch.Tensor) -> None:
    """Refuse a ``source_mask`` that is not ``[batch, source tokens]`` for token or vector
    sources (``[B, S]``, ``[B, S, D]``); image sources make their tokens themselves."""
    if source.dim() != 4 and source_mask.shape != source.shape[:2]:
        raise ValueError(
            f"source_mask must be [batch, source tokens] = {list(source.shape[:2])}, got "
            f"{list(source_mask.shape)}"
        )


__all__ = ["EncoderDecoder", "check_source_mask"]
