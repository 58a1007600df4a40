"""Typed, frozen specs for models, tasks, objectives, training and whole experiments.

Every spec is a pydantic v2 model that

- rejects unknown keys, naming the nearest valid one;
- validates component names and their parameters against the registry;
- round-trips through YAML and JSON (``to_yaml`` / ``from_yaml``);
- has a stable hash of its canonical JSON form (``spec_hash``);
- accepts dotted overrides from the command line (``model.position=rope``), whose
  values are parsed as YAML scalars and then coerced by the schema.

Bad input raises :class:`~anyformer.errors.SpecError` whose message names the field,
the value and what would be valid.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

from anyformer import registry
from anyformer import spec_limits as limits
from anyformer.errors import SpecError
from anyformer.spec_io import (  # noqa: F401 - re-exported
    _fields_at,
    _model_in,
    apply_overrides,
    format_validation_error,
    load_yaml,
    parse,
    parse_value,
    write_text_atomic,
)
from anyformer.spec_refs import (  # noqa: F401 - re-exported
    AttentionRef,
    DepthRef,
    EmbedderRef,
    FFNRef,
    HeadRef,
    LayoutRef,
    NormRef,
    ObjectiveRef,
    PositionRef,
    Ref,
    TaskRef,
    _Frozen,
    _param_defaults,
)

# --------------------------------------------------------------------------- model
#: The head of a spec that names none: ``lm`` for decoders (and prefix LMs and
#: encoder–decoders), ``classify`` for encoders.
DEFAULT_HEADS = {"decoder": "lm", "encoder": "classify", "prefix_lm": "lm", "encoder_decoder": "lm"}

#: The model kinds: ``decoder`` (causal), ``encoder`` (bidirectional), ``prefix_lm`` (one
#: stack, bidirectional over each row's prefix and causal after it) and
#: ``encoder_decoder`` (an encoder over the source, a decoder with cross-attention).
ModelKind = Literal["decoder", "encoder", "prefix_lm", "encoder_decoder"]


class LayerOverride(_Frozen):
    """Per-layer replacements of block slots, for hybrid stacks (e.g. MASFormer: local
    attention everywhere but full softmax in a few layers). Unset fields keep the model's.

    ``n_heads`` keeps fewer attention heads in this layer than the model's ``n_heads``,
    each still ``d_model / model.n_heads`` wide (what head pruning writes,
    :mod:`anyformer.compress.prune`); only mixers in :data:`HEAD_SUBSET_MIXERS` take it."""

    attention: AttentionRef | None = None
    norm: NormRef | None = None
    ffn: FFNRef | None = None
    norm_placement: LayoutRef | None = None
    n_heads: int | None = Field(None, gt=0, le=limits.MAX_HEADS)

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: Any) -> Any:
        return {k: v for k, v in handler(self).items() if v is not None}


class FactorizedSparsity(_Frozen):
    """DSFormer's dense x sparse factorization of the layers ``ModelSpec.factorized``
    names (:mod:`anyformer.model.dense_sparse`): each ``W [out, in]`` becomes a dense
    ``D [out, rank]`` times ``S [rank, in]`` with at most ``n`` nonzeros in every group
    of ``m`` consecutive inputs (N:M semi-structured sparsity, e.g. 2:4). ``mask``:
    ``learned`` recomputes the pattern from ``|S|`` at every forward with a
    straight-through gradient to all of ``S`` (DSFormer's Straight-Through Factorizer);
    ``fixed`` keeps the pattern chosen at factorization (a buffer in the checkpoint)."""

    n: int = Field(2, gt=0, le=256)
    m: int = Field(4, gt=0, le=256)
    mask: Literal["learned", "fixed"] = "learned"

    @model_validator(mode="after")
    def _check(self) -> FactorizedSparsity:
        if self.n > self.m:
            raise ValueError(
                f"n={self.n} exceeds m={self.m}: at most n nonzeros in each group of m "
                f"inputs; valid: 1 <= n <= m (e.g. n: 2, m: 4)"
            )
        return self


@dataclass(frozen=True)
class LayerSpec:
    """The block slots of one layer after per-layer overrides."""

    attention: AttentionRef
    norm: NormRef
    ffn: FFNRef
    norm_placement: LayoutRef


BLOCK_SLOTS = ("attention", "norm", "ffn", "norm_placement")
#: Mixers that run with fewer heads than ``d_model / d_head`` (``layers.N.n_heads``):
#: their projections are sized by ``Dims.n_heads`` and ``Dims.d_head`` alone.
HEAD_SUBSET_MIXERS = ("softmax",)
#: Input kinds whose per-example shape (``model.input_shape``) the task fills in.
SHAPED_INPUTS = ("image", "table", "audio", "series")


class EncoderSpec(_Frozen):
    """The encoder of ``kind: encoder_decoder``: ``n_layers`` blocks (``None``: the
    model's ``n_layers``) reading the source through ``embedder`` (``None``: ``tokens``),
    with ``vocab_size`` (``None``: the model's) or ``input_shape`` (image or table
    sources). Its blocks use the model's ``attention``, ``position``, ``norm``, ``ffn``
    and ``norm_placement`` (without the per-layer ``layers`` overrides, which are the
    decoder's), bidirectionally; its depth schedule is ``stack``. ``attention`` (``None``:
    the model's) gives the encoder a mixer of its own, e.g. ``softmax`` under a
    causal-only decoder mixer such as ``delta``."""

    n_layers: int | None = Field(None, gt=0, le=limits.MAX_LAYERS)
    attention: AttentionRef | None = None
    embedder: EmbedderRef | None = None
    input_shape: tuple[Annotated[int, Field(gt=0, le=limits.MAX_LEN)], ...] | None = None
    vocab_size: int | None = Field(None, gt=0, le=limits.MAX_VOCAB)


class ModelSpec(_Frozen):
    """Architecture of one model: embedder -> blocks -> head.

    ``vocab_size``, ``input_dim``, ``input_shape`` and ``n_outputs`` may be left empty
    in an experiment; the run fills them from the task before building. ``embedder``
    (slot ``embedder``: ``tokens``, ``vectors``, ``patches``, ...) reads the inputs;
    when unset, ``embed`` names it (``tokens`` or ``vectors``, the two embedders of
    earlier versions). ``input_shape`` is the per-example shape an image or table
    embedder reads (``[C, H, W]``, ``[n_columns]``). ``head`` (slot ``head``) writes
    the outputs; unset, it is ``lm`` for decoders and ``classify`` for encoders. ``norm_placement`` names the
    residual layout (``pre``, ``post``, ``sandwich``, ``sandwich_norm``, ``macaron``,
    ``parallel``); ``pool`` is how pooled heads pool the tokens (``mean`` over real
    tokens, ``first``, ``last``, or ``branches``: the mean of the CLS tokens of an
    embedder with branches, CrossViT's average of its branches' logits); ``layers``
    overrides block slots per layer, e.g.
    ``{2: {attention: softmax}}`` (on the command line ``model.layers.2.attention=softmax``).
    ``embed_norm`` puts a norm of the ``norm`` kind after the token + position embeddings,
    before dropout and the first block, in both stacks of an encoder–decoder (BERT's and
    BART's embedding LayerNorm: Devlin et al., 2019; Lewis et al., 2020).
    ``n_layers`` is the number of *distinct* blocks (each with its own weights) and
    ``layers`` keys index them; ``depth`` is the schedule that runs them (``stack``: each
    once, in order; ``looped``, ``recursive``, ...: some several times, see ``anyformer
    list depth``).

    ``kind`` (:data:`ModelKind`): ``decoder``, ``encoder``, ``prefix_lm`` or
    ``encoder_decoder``. A prefix LM is a decoder whose forward takes ``prefix_len``
    (every mixer needs the capability ``prefix``). An encoder–decoder adds ``encoder``
    (:class:`EncoderSpec`), ``share_embeddings`` (source and target token embeddings are
    one table when both are ``tokens`` of one vocabulary) and ``cross_attention`` (slot
    ``attention``, a variant with the capability ``memory``: ``cross``); its decoder
    blocks are self-attention, cross-attention and FFN sublayers in a layout with the
    capability ``cross``. ``encoder``, ``share_embeddings`` and ``cross_attention`` are
    read by encoder–decoders only.
    """

    kind: ModelKind = "decoder"
    embed: Literal["tokens", "vectors"] = "tokens"
    embedder: EmbedderRef | None = None
    vocab_size: int | None = Field(None, gt=0, le=limits.MAX_VOCAB)
    input_dim: int | None = Field(None, gt=0, le=limits.MAX_VOCAB)
    input_shape: tuple[Annotated[int, Field(gt=0, le=limits.MAX_LEN)], ...] | None = None
    #: edge features per edge of a graph task's batches (``extras['edge_attr']``
    #: ``[B, N, N, edge_dim]``); set by the task; ``None``: no edge features
    edge_dim: int | None = Field(None, gt=0, le=limits.MAX_VOCAB)
    d_model: int = Field(128, gt=0, le=limits.MAX_D_MODEL)
    n_layers: int = Field(2, gt=0, le=limits.MAX_LAYERS)
    n_heads: int = Field(4, gt=0, le=limits.MAX_HEADS)
    attention: AttentionRef = Field("softmax", validate_default=True)
    position: PositionRef = Field("rope", validate_default=True)
    norm: NormRef = Field("layernorm", validate_default=True)
    norm_placement: LayoutRef = Field("pre", validate_default=True)
    ffn: FFNRef = Field("mlp", validate_default=True)
    max_len: int = Field(512, gt=0, le=limits.MAX_LEN)
    head: HeadRef | None = None
    n_outputs: int | None = Field(None, gt=0, le=limits.MAX_VOCAB)
    pool: Literal["mean", "first", "last", "branches"] = "mean"
    tie_embeddings: bool = True
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    bias: bool = True
    init_std: float = Field(0.02, gt=0.0, le=10.0)
    layers: dict[int, LayerOverride] = Field(default_factory=dict)
    depth: DepthRef = Field("stack", validate_default=True)
    encoder: EncoderSpec | None = None
    share_embeddings: bool = True
    #: ``None``: ``cross`` (kept unset so that specs written before it hash as they did)
    cross_attention: AttentionRef | None = None
    embed_norm: bool = False
    #: Linear layers of the blocks replaced by the product of two thinner ones
    #: (``anyformer factorize``, :mod:`anyformer.model.factorized`): module name
    #: (``blocks.0.ffn.up``) -> rank
    factorized: dict[
        Annotated[str, Field(min_length=1, max_length=200)],
        Annotated[int, Field(gt=0, le=limits.MAX_D_MODEL * 16)],
    ] = Field(default_factory=dict, max_length=4096)
    #: The factorized layers as dense x N:M-sparse products (DSFormer) instead of SVD
    #: factors; ``None`` (left out of written specs): low-rank SVD factors
    factorized_sparsity: FactorizedSparsity | None = None

    @model_serializer(mode="wrap")
    def _drop_unused(self, handler: Any) -> Any:
        # the encoder–decoder's fields and edge_dim, when unset, and embed_norm when off are left out
        # of written specs (those written before them read as they did)
        data = handler(self)
        if isinstance(data, dict):
            for key in ("encoder", "cross_attention", "edge_dim", "factorized_sparsity"):
                if data.get(key, 0) is None:
                    del data[key]
            if data.get("embed_norm") is False:
                del data["embed_norm"]
            if data.get("factorized") == {}:
                del data["factorized"]
        return data

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.d_model % self.n_heads:
            lo = self.d_model - self.d_model % self.n_heads
            hint = f"e.g. {lo} or {lo + self.n_heads}" if lo else f"e.g. {self.n_heads}"
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                f"use a d_model that is a multiple of n_heads ({hint})"
            )
        if self.factorized_sparsity is not None and not self.factorized:
            raise ValueError(
                "factorized_sparsity is set but factorized names no layer: it applies to the "
                "layers model.factorized lists (module name -> rank)"
            )
        for key in self.layers:
            if not 0 <= key < self.n_layers:
                raise ValueError(
                    f"layers.{key}: there is no layer {key} (n_layers={self.n_layers}; "
                    f"valid layers: 0..{self.n_layers - 1})"
                )
        for i in range(self.n_layers):
            where = f"layers.{i}." if i in self.layers else ""
            problem = self._check_heads(i) or self._check_layer(self.layer(i), self.dims(i), where)
            if problem:
                raise ValueError(problem)
        problem = self._check_io() or self._check_kind()
        if problem:
            raise ValueError(problem)
        check_depth = getattr(self.depth.entry.cls, "check_spec", None)
        problem = check_depth(self.depth.config, self) if check_depth is not None else None
        if problem:
            raise ValueError(f"depth='{self.depth.name}': {problem}")
        return self

    def _check_heads(self, i: int) -> str | None:
        """Why ``layers.i.n_heads`` cannot hold (``None`` when unset or fine)."""
        over = self.layers.get(i)
        heads = getattr(over, "n_heads", None)
        if heads is None:
            return None
        attn = self.layer(i).attention
        if heads > self.n_heads:
            return (
                f"layers.{i}.n_heads={heads} is more than model.n_heads={self.n_heads}; a "
                f"layer keeps at most the model's heads (each d_model/n_heads wide)"
            )
        if attn.name not in HEAD_SUBSET_MIXERS:
            return (
                f"layers.{i}.n_heads={heads}: attention='{attn.name}' cannot run with fewer "
                f"heads than the model's; mixers that can: {', '.join(HEAD_SUBSET_MIXERS)}"
            )
        kv = getattr(attn.config, "kv_heads", None)
        if kv is not None and kv != heads:
            return (
                f"layers.{i}.n_heads={heads} with kv_heads={kv}: a layer with its own head "
                f"count keeps one key/value head per query head (kv_heads unset)"
            )
        pos = self.position.entry
        if pos.caps.position_mode == "bias":
            return (
                f"layers.{i}.n_heads={heads} with position='{pos.name}': its score bias is "
                f"per head of the model's n_heads; use a rotary, embedded or no position scheme"
            )
        if self.kind == "encoder_decoder":
            return f"layers.{i}.n_heads={heads}: kind=encoder_decoder keeps the model's heads"
        return None

    def _check_io(self) -> str | None:
        """The embedder and head against the inputs, the length and each other."""
        embedder, head = self.embedder_ref, self.head_ref
        if self.input_kind in SHAPED_INPUTS and self.input_shape is None:
            return None  # the task fills input_shape; validated again once it has
        for field, ref in (("embedder", embedder), ("head", head)):
            check = getattr(ref.entry.cls, "check", None)
            problem = check(ref.config, self) if check is not None else None
            if problem:
                return f"{field}='{ref.name}': {problem}"
        if head.name == "lm" and self.input_kind != "tokens":
            return (
                f"head='lm' needs an embedder that reads tokens (embedder='{embedder.name}' "
                f"reads {self.input_kind}); use token_classify or another head"
            )
        branched = getattr(self.token_layout, "branches", None) is not None
        if self.pool == "branches" and head.entry.caps.pooled and not branched:
            return (
                f"model.pool='branches' averages the CLS tokens of an embedder's "
                f"branches, but embedder='{embedder.name}' lays out one sequence; use "
                f"an embedder with branches (crossvit) or pool=mean|first|last"
            )
        length = self.token_layout.length
        if length is not None and length > self.max_len:
            return (
                f"embedder='{embedder.name}' makes {length} tokens from input_shape="
                f"{list(self.input_shape or [])}, more than max_len={self.max_len}; raise "
                f"model.max_len to at least {length}"
            )
        return None

    def _check_kind(self) -> str | None:
        """What ``prefix_lm`` and ``encoder_decoder`` need beyond the layers' checks:
        the encoder's spec, the cross-attention variant, each layout's ``cross``."""
        if self.kind != "encoder_decoder":
            if self.encoder is not None:
                return (
                    f"model.encoder is read by kind=encoder_decoder only (this model is "
                    f"kind={self.kind}); remove it or set model.kind=encoder_decoder"
                )
            return None
        cross = self.cross_attention_ref
        if not cross.entry.caps.memory:
            capable = [e.name for e in registry.entries("attention") if e.caps.memory]
            return (
                f"cross_attention='{cross.name}' cannot attend over the encoder's output (no "
                f"memory capability); use one that can: {', '.join(capable)}"
            )
        problem = cross.entry.check(cross.config, self.dims())
        if problem:
            return f"cross_attention='{cross.name}': {problem}"
        for i in range(self.n_layers):
            layout = self.layer(i).norm_placement
            if not layout.entry.caps.cross:
                capable = [e.name for e in registry.entries("layout") if e.caps.cross]
                where = f"layers.{i}." if i in self.layers else ""
                return (
                    f"{where}norm_placement='{layout.name}' has no place for the decoder's "
                    f"cross-attention sublayer (no cross capability), so it cannot serve in "
                    f"kind=encoder_decoder; use one that has: {', '.join(capable)}"
                )
        try:
            self.encoder_spec()
        except SpecError as exc:
            return f"encoder: {exc}"
        return None

    @property
    def cross_attention_ref(self) -> AttentionRef:
        """The decoder's cross-attention: ``cross_attention``, or ``cross``."""
        ref = self.cross_attention if self.cross_attention is not None else "cross"
        return ref if isinstance(ref, AttentionRef) else AttentionRef.model_validate(ref)

    def encoder_spec(self) -> ModelSpec:
        """The encoder of an encoder–decoder as a ``kind: encoder`` spec (its head is
        not built): ``encoder``'s fields over the model's blocks, sizes and dropout.
        Raises :class:`SpecError` naming the encoder's problem."""
        enc = self.encoder or EncoderSpec()
        data: dict[str, Any] = dict(
            kind="encoder",
            embedder=enc.embedder if enc.embedder is not None else "tokens",
            vocab_size=enc.vocab_size if enc.vocab_size is not None else self.vocab_size,
            input_shape=enc.input_shape,
            n_layers=enc.n_layers if enc.n_layers is not None else self.n_layers,
            n_outputs=1,  # the encoder's head is never built
            head="token_regress",
        )
        for name in ("d_model", "n_heads", "max_len", "dropout", "bias", "init_std", "embed_norm"):
            data[name] = getattr(self, name)
        for name in ("attention", "position", "norm", "norm_placement", "ffn"):
            data[name] = getattr(self, name)
        if enc.attention is not None:
            data["attention"] = enc.attention
        return parse(ModelSpec, data)

    @property
    def embedder_ref(self) -> EmbedderRef:
        """The embedder: ``embedder`` when set (it wins over ``embed``), or the one
        ``embed`` names."""
        ref = self.embedder if self.embedder is not None else self.embed
        return ref if isinstance(ref, EmbedderRef) else EmbedderRef.model_validate(ref)

    @property
    def input_kind(self) -> str:
        """What the embedder reads: ``tokens``, ``vectors``, ``image``, ``table`` or ``audio``."""
        return self.embedder_ref.entry.caps.input_kind or "tokens"

    @property
    def token_layout(self) -> Any:
        """The embedder's :class:`~anyformer.components.embedders.base.TokenLayout`."""
        ref = self.embedder_ref
        layout = getattr(ref.entry.cls, "layout", None)
        if self.input_kind in SHAPED_INPUTS and self.input_shape is None:
            layout = None  # not known before the task fills input_shape
        if layout is None:  # a user's embedder without the base class's method
            return SimpleNamespace(length=None, grid=None, n_prefix=0, branches=None)
        return layout(ref.config, self)

    @property
    def grid_pending(self) -> bool:
        """Whether the embedder lays tokens on a grid whose size the task has not set yet
        (``input_shape`` unset), or in branches (``caps.branches``): components that need
        the grid or the branches are checked later."""
        caps = self.embedder_ref.entry.caps
        return self.input_shape is None and bool(caps.grid or caps.branches)

    @property
    def head_ref(self) -> HeadRef:
        """The head: ``head``, or the kind's default (``lm`` / ``classify``)."""
        head = self.head if self.head is not None else DEFAULT_HEADS[self.kind]
        return head if isinstance(head, HeadRef) else HeadRef.model_validate(head)

    def layer(self, i: int) -> LayerSpec:
        """The block slots of layer ``i``, with its overrides applied."""
        over = self.layers.get(i)
        pick = {k: getattr(over, k, None) or getattr(self, k) for k in BLOCK_SLOTS}
        return LayerSpec(**pick)

    def _check_layer(self, layer: LayerSpec, dims: registry.Dims, where: str) -> str | None:
        attn, pos = layer.attention.entry, self.position.entry
        if attn.caps.memory:
            return (
                f"{where}attention='{attn.name}' attends over an encoder's output (memory "
                f"capability), so it cannot be a layer's self-attention; it serves as "
                f"model.cross_attention of kind=encoder_decoder"
            )
        if self.kind != "encoder" and not attn.caps.causal_safe:
            return (
                f"{where}attention='{attn.name}' is not causal-safe, so it cannot be used in a "
                f"{'decoder' if self.kind == 'encoder_decoder' else self.kind}; use "
                f"kind=encoder or a causal-safe attention"
            )
        if self.kind == "encoder" and not attn.caps.bidirectional:
            return f"{where}attention='{attn.name}' is causal-only and cannot be used in an encoder"
        if self.kind == "prefix_lm" and not attn.caps.prefix:
            capable = [e.name for e in registry.entries("attention") if e.caps.prefix]
            return (
                f"{where}attention='{attn.name}' cannot attend bidirectionally over a prefix "
                f"(no prefix capability), so it cannot serve in kind=prefix_lm; use one that "
                f"can: {', '.join(capable)}"
            )
        inputs_pending = (
            self.embedder is None
            and self.vocab_size is None
            and (self.input_dim is None and self.input_shape is None)
        )  # a task fills the embedder and its sizes later (checked again then)
        if attn.caps.graph and not self.embedder_ref.entry.caps.graph and not inputs_pending:
            graphs = [e.name for e in registry.entries("embedder") if e.caps.graph]
            return (
                f"{where}attention='{attn.name}' attends along a graph's edges "
                f"(ctx.adjacency), but embedder='{self.embedder_ref.name}' makes no graph "
                f"node tokens, so the model has no graph inputs; use a graph embedder "
                f"({', '.join(graphs)}) with a graph task (graph_atlas)"
            )
        mode = pos.caps.position_mode or "none"
        if mode not in attn.caps.position_modes:
            return (
                f"position='{pos.name}' acts by '{mode}', which {where}attention='{attn.name}' "
                f"does not support (it supports: {', '.join(attn.caps.position_modes)})"
            )
        refs = {"attention": layer.attention, "position": self.position, "norm": layer.norm}
        refs.update(ffn=layer.ffn, norm_placement=layer.norm_placement)
        for slot, ref in refs.items():
            caps = ref.entry.caps
            unknown = caps.grid and dims.grid is None or caps.branches and dims.branches is None
            if unknown and self.grid_pending:
                continue  # checked again once the task fills input_shape
            problem = ref.entry.check(ref.config, dims)
            if problem:
                prefix = "" if slot == "position" else where
                return f"{prefix}{slot}='{ref.name}': {problem}"
        if attn.caps.max_len is not None and self.max_len > attn.caps.max_len:
            return (
                f"max_len={self.max_len} exceeds what {where}attention='{attn.name}' accepts "
                f"(at most {attn.caps.max_len})"
            )
        return None

    def layer_heads(self, i: int) -> int:
        """Attention heads of layer ``i``: ``layers.i.n_heads`` or the model's."""
        heads = getattr(self.layers.get(i), "n_heads", None)
        return self.n_heads if heads is None else heads

    def dims(self, layer: int = 0) -> registry.Dims:
        """The sizes and flags components of layer ``layer`` are built with (the token
        grid, if any, from the embedder's layout)."""
        tokens = self.token_layout
        return registry.Dims(
            grid=tokens.grid,
            n_prefix=tokens.n_prefix,
            branches=getattr(tokens, "branches", None),
            d_model=self.d_model,
            n_heads=self.layer_heads(layer),
            max_len=self.max_len,
            causal=self.kind != "encoder",
            dropout=self.dropout,
            bias=self.bias,
            layer=layer,
            n_layers=self.n_layers,
            head_dim=None if self.layer_heads(layer) == self.n_heads else self.d_head,
        )

    @property
    def d_head(self) -> int:
        """The width of one attention head, ``d_model / n_heads`` (in every layer)."""
        return self.d_model // self.n_heads

    def packing_problem(self, check_head: bool = True) -> str | None:
        """Why this model cannot take packed rows (several documents per row, told apart
        by ``segments``, see :mod:`anyformer.nn.packing`), or ``None`` when it can.

        Packed documents must not see each other: every layer's mixer must have the
        capability ``packing`` (it honours the block-diagonal document mask), so must the
        depth schedule, and the head must give
        one output per token (a pooled head would mix the documents of a row).
        ``check_head=False`` skips the head, for a spec whose head the task decides later.
        """
        if self.kind in ("prefix_lm", "encoder_decoder"):
            return (
                f"packed rows (segments) are for decoders and encoders; kind={self.kind} "
                f"takes padded rows"
            )
        if check_head and self.head_ref.entry.caps.pooled:
            return (
                f"packed rows (segments) need a per-token head; head='{self.resolved_head}' "
                f"pools each row into one output"
            )
        layers: dict[str, list[int]] = {}
        for i in range(self.n_layers):
            ref = self.layer(i).attention
            if not ref.entry.caps.packing:
                layers.setdefault(ref.name, []).append(i)
        if layers:
            capable = [e.name for e in registry.entries("attention") if e.caps.packing]
            where = "; ".join(
                f"'{name}' in layers {', '.join(map(str, idx))}"
                for name, idx in sorted(layers.items())
            )
            return (
                f"attention {', '.join(repr(n) for n in sorted(layers))} cannot keep packed "
                f"documents apart (no packing capability: {where}; attention that can: "
                f"{', '.join(capable)})"
            )
        if not self.depth.entry.caps.packing:
            return f"depth='{self.depth.name}' cannot run packed rows (no packing capability)"
        return None

    @property
    def resolved_head(self) -> str:
        """The head's name, defaulting to ``lm`` for decoders (prefix LMs,
        encoder–decoders) and ``classify`` for encoders."""
        return self.head_ref.name


# --------------------------------------------------------------------------- training
class TrainSpec(_Frozen):
    """How to train: optimiser, schedule, evaluation, checkpoints and devices.

    Speed and scale (see :mod:`anyformer.training.distributed`): ``compile`` compiles each
    block with ``torch.compile`` (``None``: on for CUDA, off for CPU); ``precision`` is the
    autocast dtype (``auto``: bf16 on CUDA, fp32 on CPU; ``fp16`` adds a gradient scaler);
    ``activation_checkpointing`` recomputes each block's activations in the backward
    pass; ``distributed`` is ``ddp`` or ``fsdp`` (FSDP2) under ``torchrun``, where
    ``batch_size`` is the global batch, split evenly over the processes.

    ``packing`` trains and evaluates padding-free (:mod:`anyformer.tasks.packing`): the
    real tokens of every batch's rows are packed, whole, into as few rows as fit, with
    attention kept inside each row's documents and positions restarting per document,
    so losses, gradients and metrics are those of the padded batch; only the padding's
    compute is saved. The model must keep documents apart (softmax-family attention in
    every layer, a per-token head; see :meth:`ModelSpec.packing_problem`).
    Tokens/s (and FLOP/s, MFU) count real tokens, with or without packing.
    """

    steps: int = Field(1000, gt=0, le=limits.MAX_STEPS)
    batch_size: int = Field(32, gt=0, le=limits.MAX_BATCH)
    lr: float = Field(1e-3, gt=0.0, le=limits.MAX_LR)
    weight_decay: float = Field(0.01, ge=0.0, le=100.0)
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = Field(50, ge=0, le=limits.MAX_STEPS)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    grad_clip: float = Field(1.0, ge=0.0)
    eval_every: int = Field(250, gt=0, le=limits.MAX_STEPS)
    eval_size: int = Field(256, gt=0, le=limits.MAX_EVAL)
    #: splits evaluated (None: the task's, e.g. id and ood); ``train`` scores the first
    #: training batches (about ``eval_size`` examples, exactly as trained), to follow
    #: memorisation over steps; checked against the task by the Trainer
    eval_splits: tuple[str, ...] | None = None
    checkpoint_every: int = Field(250, gt=0, le=limits.MAX_STEPS)
    log_every: int = Field(10, gt=0, le=limits.MAX_STEPS)
    seed: int = Field(0, ge=0, lt=2**63)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, gt=0, le=4096)
    progress: bool = True
    compile: bool | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    activation_checkpointing: bool = False
    distributed: Literal["none", "ddp", "fsdp"] = "none"
    packing: bool = False
    allow_large: bool = False
    #: also write every metrics line as TensorBoard scalars under ``<run>/tensorboard``
    tensorboard: bool = False
    #: target coverage of the split-conformal intervals reported for regression heads
    #: (regress, gaussian, quantile and their per-token variants; see
    #: :mod:`anyformer.training.conformal`)
    conformal_level: float = Field(0.9, gt=0.0, lt=1.0)

    @field_validator("betas")
    @classmethod
    def _betas(cls, betas: tuple[float, float]) -> tuple[float, float]:
        for i, beta in enumerate(betas):
            if not (math.isfinite(beta) and 0.0 <= beta < 1.0):
                raise ValueError(
                    f"betas={list(betas)}: beta{i + 1}={beta} must be in [0, 1) "
                    "(AdamW's moment decay rates, e.g. [0.9, 0.98])"
                )
        return betas


# --------------------------------------------------------------------------- experiment
#: A run's name: it names the run folder, so it is one safe path component.
#: The adapter kinds (:mod:`anyformer.adapters`).
AdapterKind = Literal["lora", "prompt", "prefix", "bitfit"]


class AdapterSpec(_Frozen):
    """Parameter-efficient adaptation (:mod:`anyformer.adapters`): only the adapter's
    parameters (and, with ``train_head``, the head) train; the rest is frozen.

    ``kind``: ``lora`` (Hu et al. 2021: ``W x + alpha/rank * B A dropout(x)`` on every
    ``nn.Linear`` whose name in ``model.named_modules()`` matches ``target``, a glob such
    as ``blocks.*.mixer.*``, or a regular expression written ``re:<pattern>``),
    ``prompt`` (Lester et al. 2021: ``n_tokens`` learned vectors before the embedded
    inputs, dropped before the readout), ``prefix`` (Li and Liang 2021: ``n_tokens``
    learned keys and values per layer, softmax attention only) or ``bitfit`` (Ben Zaken
    et al. 2022: only the biases). Given by name alone (``adapter: lora``) it takes the
    defaults."""

    kind: AdapterKind
    rank: int = Field(8, gt=0, le=4096)
    alpha: float = Field(16.0, gt=0.0, le=1e6)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target: str = Field("blocks.*.mixer.*", min_length=1, max_length=1000)
    n_tokens: int = Field(8, gt=0, le=limits.MAX_LEN)
    train_head: bool = True

    @model_validator(mode="before")
    @classmethod
    def _by_name(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"kind": data}
        if isinstance(data, dict) and "name" in data and "kind" not in data:
            data = dict(data)
            data["kind"] = data.pop("name")
        return data

    @field_validator("target")
    @classmethod
    def _pattern(cls, target: str) -> str:
        if target.startswith("re:"):
            try:
                re.compile(target[3:])
            except re.error as exc:
                raise ValueError(
                    f"target={target!r} is not a regular expression ({exc}); write a glob "
                    f"such as 'blocks.*.mixer.*' or 're:<pattern>'"
                ) from None
        return target


NAME_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
MAX_NAME_LEN = 100
#: A plugin module name (``package.module``).
MODULE_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


class ExperimentSpec(_Frozen):
    """A whole experiment: which model learns which task with which objective, and how.

    ``name`` names the run folder (``<name>-<hash>``): letters, digits, ``.``, ``_`` and
    ``-``, not starting with a dot or dash, at most 100 characters. ``plugins`` lists
    modules whose code the spec uses (imported before validation, so the variants they
    register can be named); on the command line each must be allowed with
    ``--allow-import`` (see :func:`anyformer.registry.import_policy`), which records it here.

    Pretrain -> fine-tune (:mod:`anyformer.lab.init_from`): ``init_from`` names a trained
    run folder whose backbone (embedder, position, blocks, final norm; never the head or
    an objective's modules) initialises this model when the run starts fresh; ``freeze``
    lists parts kept fixed during training (``embedder``, ``position``, ``blocks``,
    ``blocks.N``, ``blocks.N-M``, ``norm``: see :func:`freeze_prefixes`) and
    ``linear_probe`` freezes everything but the head. All three are part of the hash.
    ``adapter`` (:class:`AdapterSpec`) trains a parameter-efficient adapter instead.
    """

    name: str = "custom"
    description: str = Field("", max_length=10_000)
    plugins: tuple[str, ...] = ()
    model: ModelSpec = Field(default_factory=ModelSpec)
    task: TaskRef = Field("copy", validate_default=True)
    objective: ObjectiveRef | None = None
    train: TrainSpec = Field(default_factory=TrainSpec)
    init_from: str | None = Field(None, min_length=1, max_length=4096)
    freeze: tuple[str, ...] = ()
    linear_probe: bool = False
    adapter: AdapterSpec | None = None

    @model_serializer(mode="wrap")
    def _drop_no_adapter(self, handler: Any) -> Any:
        data = handler(self)
        if isinstance(data, dict) and data.get("adapter", 0) is None:
            del data["adapter"]  # specs without one read and hash as before
        return data

    @model_validator(mode="before")
    @classmethod
    def _load_plugins(cls, data: Any) -> Any:
        plugins = data.get("plugins") if isinstance(data, dict) else None
        if not plugins:
            return data
        if not isinstance(plugins, list | tuple) or not all(isinstance(m, str) for m in plugins):
            raise ValueError(f"plugins={plugins!r}: a list of module names, e.g. [mypkg.layers]")
        for module in plugins:
            if not MODULE_PATTERN.fullmatch(module):
                raise ValueError(f"plugins: '{module}' is not a module name (e.g. mypkg.layers)")
            try:
                registry.load_plugin(module)
            except SpecError as exc:
                raise ValueError(str(exc)) from None
        return data

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if len(name) > MAX_NAME_LEN:
            raise ValueError(
                f"name of {len(name)} characters is too long (at most {MAX_NAME_LEN}): it names "
                "the run folder"
            )
        if not NAME_PATTERN.fullmatch(name):
            raise ValueError(
                f"name={name!r} must be letters, digits, '.', '_' and '-' only, not starting "
                "with '.' or '-' (it names the run folder inside --out)"
            )
        return name

    @field_validator("init_from")
    @classmethod
    def _run_path(cls, path: str | None) -> str | None:
        if path is None:
            return None
        if "\x00" in path or not path.strip():
            raise ValueError(
                f"init_from={path!r}: give the folder of a trained run, e.g. runs/x-1a2b3c4d"
            )
        return os.path.normpath(path)  # runs/x/ and runs/x are one parent (one run hash)

    @field_validator("freeze", mode="before")
    @classmethod
    def _one_part(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value  # freeze=embedder on the command line

    @model_validator(mode="after")
    def _check_freeze(self) -> ExperimentSpec:
        freeze_prefixes(self.freeze, self.model.n_layers)  # raises naming the pattern
        if self.adapter is not None and self.linear_probe:
            raise ValueError(
                f"adapter.kind={self.adapter.kind} with linear_probe=true: an adapter trains "
                f"its own parameters (and the head); choose one of them"
            )
        return self

    @model_validator(mode="after")
    def _check_packing(self) -> ExperimentSpec:
        # the head may still be left to the task (head: None); lab.run.resolve and the
        # Trainer check it once it is decided
        problem = packing_refusal(self.train, self.model, check_head=self.model.head is not None)
        if problem:
            raise ValueError(problem)
        problem = objective_problem(self)
        if problem:
            raise ValueError(problem)
        problem = task_length_problem(self)
        if problem:
            raise ValueError(problem)
        problem = limits.memory_problem(self.model, self.train)
        if problem:
            raise ValueError(problem)
        return self

    # ------------------------------------------------------------------ I/O
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentSpec:
        return parse(cls, data)

    @classmethod
    def from_yaml(cls, path: str | Path) -> ExperimentSpec:
        return cls.from_dict(load_yaml(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def save(self, path: str | Path) -> None:
        """Write the spec as YAML, atomically."""
        write_text_atomic(Path(path), self.to_yaml())

    def with_overrides(self, overrides: list[str]) -> ExperimentSpec:
        return self.from_dict(apply_overrides(self.to_dict(), overrides))

    @property
    def hash(self) -> str:
        return spec_hash(self)


# --------------------------------------------------------------------------- helpers
#: ``freeze`` patterns and the model modules they name (``blocks.N``/``blocks.N-M``
#: name single blocks or an inclusive range of them)
FREEZE_PARTS = {"embedder": "embed", "position": "position", "blocks": "blocks", "norm": "norm"}
_BLOCK_RANGE = re.compile(r"blocks\.(\d{1,4})(?:-(\d{1,4}))?")


def freeze_prefixes(patterns: tuple[str, ...] | list[str], n_layers: int) -> tuple[str, ...]:
    """The parameter-name prefixes (``embed.``, ``blocks.2.``, ...) that ``freeze``
    patterns name in a model of ``n_layers`` distinct blocks. Raises :class:`ValueError`
    naming the field, the pattern and what is valid for an unknown pattern or a block
    index out of range."""
    valid = (
        f"valid: {', '.join(FREEZE_PARTS)}, blocks.N or blocks.N-M with "
        f"0 <= N <= M <= {n_layers - 1} (n_layers={n_layers})"
    )
    prefixes: list[str] = []
    for pattern in patterns:
        if pattern in FREEZE_PARTS:
            prefixes.append(FREEZE_PARTS[pattern] + ".")
            continue
        match = _BLOCK_RANGE.fullmatch(pattern) if isinstance(pattern, str) else None
        if match is None:
            raise ValueError(f"freeze: unknown part {pattern!r} ({valid})")
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) is not None else lo
        if not lo <= hi < n_layers:
            raise ValueError(f"freeze: {pattern!r} names blocks outside the model ({valid})")
        prefixes += [f"blocks.{i}." for i in range(lo, hi + 1)]
    return tuple(dict.fromkeys(prefixes))


def task_length_problem(spec: ExperimentSpec) -> str | None:
    """A task length parameter (a name ending in ``len``: ``max_len``, ``ood_max_len``,
    ``seq_len``, ...) longer than ``model.max_len``, or ``None``.

    Every task's sequences are at least as long as these (a length counts symbols or
    tokens of one example), so such a spec could never run; it is refused before the
    task is built (building it may walk every length in its ranges)."""
    for key, value in spec.task.params.items():
        if key.endswith("len") and isinstance(value, int) and value > spec.model.max_len:
            return (
                f"task.{key}={value} is longer than model.max_len={spec.model.max_len}: the "
                f"task's sequences would not fit the model; set model.max_len to at least "
                f"{value} (the run checks the exact length) or lower task.{key}"
            )
    return None


def objective_problem(spec: ExperimentSpec, resolved: bool = False) -> str | None:
    """Why ``spec.objective`` cannot read the model's outputs, or ``None``.

    An objective class declares what it trains and reads: ``kinds`` (the model kinds),
    ``embedders`` (the embedders whose tokens it needs),
    ``heads`` (the head kinds whose outputs it understands) and ``n_outputs`` (outputs per
    target it needs); ``None`` = anything.
    Validation checks an explicit ``model.head``; a head left to the task is known once
    the spec is resolved against it (``lab.run.resolve``): pass ``resolved=True`` then,
    and the default head of the model's kind counts."""
    if spec.objective is None:
        return None
    cls = spec.objective.entry.cls
    name = spec.objective.name
    kinds = getattr(cls, "kinds", None)
    if kinds is not None and spec.model.kind not in kinds:
        return (
            f"objective='{name}' trains model.kind {' or '.join(kinds)}, but this model has "
            f"kind='{spec.model.kind}'; set model.kind to one of them or use another objective"
        )
    embedders = getattr(cls, "embedders", None)
    embedder = spec.model.embedder_ref.name
    known = spec.model.embedder is not None or resolved  # else the task may still set it
    if embedders is not None and known and embedder not in embedders:
        return (
            f"objective='{name}' trains on the tokens of embedder {' or '.join(embedders)}, "
            f"but this model has embedder='{embedder}'; set model.embedder to one of them "
            f"or use another objective"
        )
    if spec.model.head is None and not resolved:
        return None
    heads = getattr(cls, "heads", None)
    head = spec.model.resolved_head
    if heads is not None and head not in heads:
        return (
            f"objective='{name}' reads the outputs of head {' or '.join(heads)}, but this "
            f"model has head='{head}' (task '{spec.task.name}'); use an objective for "
            f"head='{head}' or leave objective unset for the task's default"
        )
    need = getattr(cls, "n_outputs", None)
    if isinstance(need, dict):  # per head: e.g. gaussian_nll needs 2 from a regress head
        need = need.get(head)
    if need is not None and spec.model.n_outputs is not None and spec.model.n_outputs != need:
        return (
            f"objective='{name}' needs {need} outputs per target, but model.n_outputs="
            f"{spec.model.n_outputs} (task '{spec.task.name}'); set model.n_outputs={need} "
            "if the task allows it, or use another objective"
        )
    return None


def packing_refusal(train: TrainSpec, model: ModelSpec, check_head: bool = True) -> str | None:
    """The error message for ``train.packing=true`` with a model that cannot take packed
    rows (see :meth:`ModelSpec.packing_problem`); ``None`` when packing is off or fine."""
    if not train.packing:
        return None
    problem = model.packing_problem(check_head=check_head)
    if problem is None:
        return None
    return (
        f"train.packing=true cannot be used with this model: {problem}. Packed documents "
        f"share a row and must not see each other; set train.packing=false to pad instead"
    )


def spec_hash(spec: BaseModel, length: int = 8) -> str:
    """A stable hash of the spec's canonical JSON form: every field and component
    parameter that differs from its default (so a field added later with a default, or a
    default written out, leaves the hash, and the run folders named by it, unchanged);
    ``description``, ``train.progress``, ``train.allow_large`` and ``train.tensorboard``,
    which change no result, do not count."""
    data = spec.model_dump(mode="json", exclude_defaults=True, context={"canonical": True})
    # presentation only: results do not depend on them
    data.pop("description", None)
    if isinstance(data.get("train"), dict):
        data["train"].pop("progress", None)
        data["train"].pop("allow_large", None)
        data["train"].pop("tensorboard", None)
        if not data["train"]:
            del data["train"]
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:length]
