"""The core Transformer: embedder -> blocks -> final norm -> head.

Initialisation (documented, as in GPT-2): every linear and embedding weight is drawn
from N(0, init_std); biases start at zero; output projections that write into the
residual stream (marked ``residual_projection``) use N(0, init_std / sqrt(2 n_layers));
norm gains start at one.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from typing import Any, Literal, overload

import torch
from torch import nn

from anyformer.components.base import Cache, Context, PositionScheme, dropout_or_identity
from anyformer.components.heads.base import build_head
from anyformer.errors import SpecError
from anyformer.model.depth import DepthSchedule
from anyformer.model.factorized import apply_factorized
from anyformer.model.flops import count_params, forward_flops_per_token
from anyformer.model.output import ModelOutput
from anyformer.model.widths import nested_ffns, training_widths, widths_set
from anyformer.nn.graph_ops import token_mask_scope
from anyformer.nn.packing import positions_from_segments
from anyformer.registry import Dims, capabilities, entry_of
from anyformer.spec import LayerSpec, ModelSpec, parse


def _build(ref: Any, dims: Dims) -> nn.Module:
    return ref.entry.build(ref.config, dims=dims)


class BlockParts:
    """Makes the norm, mixer and FFN of one layer; a residual layout asks for as many as it
    needs. ``cross`` is the cross-attention of an encoder–decoder's decoder layer
    (``None`` elsewhere): :meth:`cross` builds it, or returns ``None``."""

    def __init__(self, layer: LayerSpec, dims: Dims, cross: Any = None) -> None:
        self.layer, self.dims, self.cross_ref = layer, dims, cross

    def norm(self) -> nn.Module:
        return _build(self.layer.norm, self.dims)

    def mixer(self) -> nn.Module:
        return _build(self.layer.attention, self.dims)

    def ffn(self) -> nn.Module:
        return _build(self.layer.ffn, self.dims)

    def cross(self) -> nn.Module | None:
        return _build(self.cross_ref, self.dims) if self.cross_ref is not None else None


def build_block(spec: ModelSpec, index: int) -> nn.Module:
    """Layer ``index`` of ``spec``: its residual layout around its mixer and FFN (and, in
    an encoder–decoder's decoder, its cross-attention, ``spec.cross_attention_ref``)."""
    layer, dims = spec.layer(index), spec.dims(index)
    cross = spec.cross_attention_ref if spec.kind == "encoder_decoder" else None
    ref = layer.norm_placement
    return ref.entry.build(ref.config, dims=dims, parts=BlockParts(layer, dims, cross))


def mixers(model: nn.Module) -> list[nn.Module]:
    """The token mixers of ``model`` (each block's ``mixer``), each once, in module order."""
    found: dict[int, nn.Module] = {}
    for module in model.modules():
        mixer = getattr(module, "mixer", None)
        if isinstance(mixer, nn.Module):
            found.setdefault(id(mixer), mixer)
    return list(found.values())


def mixer_name(mixer: nn.Module) -> str:
    """The registry name of a mixer (its class name when it is not registered)."""
    entry = entry_of(type(mixer))
    return entry.name if entry is not None else type(mixer).__name__


def check_packing(model: Transformer) -> None:
    """Refuse packed rows (``segments`` or per-row ``positions``) for a model that cannot
    keep documents apart (:meth:`~anyformer.spec.ModelSpec.packing_problem`: a pooled
    head, a mixer or a depth schedule whose capabilities lack ``packing``)."""
    problem = model.spec.packing_problem()
    if problem:
        raise SpecError(f"{problem}; pass padded rows (padding_mask) instead of segments")


def cache_blockers(model: nn.Module) -> list[str]:
    """What keeps the model from decoding with a cache (empty: nothing): the names of
    mixers whose registry capabilities lack ``kv_cache``, and ``depth=<name>`` when the
    depth schedule's capabilities lack it (its depth varies per step)."""
    blockers = set()
    # the decoding stack's blocks only (an encoder–decoder's encoder runs once, uncached)
    stack = getattr(model, "blocks", model)
    crosses = [m.cross for m in stack.modules() if isinstance(getattr(m, "cross", None), nn.Module)]
    for mixer in [*mixers(stack), *crosses]:
        if not capabilities(mixer).kv_cache:
            blockers.add(mixer_name(mixer))
    depth = getattr(model, "depth", None)
    if depth is not None and not capabilities(depth).kv_cache:
        entry = entry_of(type(depth))
        blockers.add(f"depth={entry.name if entry is not None else type(depth).__name__}")
    return sorted(blockers)


def check_cache(model: Transformer) -> None:
    """Refuse a cache for a model with a mixer (or depth schedule) that cannot use one: it
    would see only the new tokens and silently compute something else."""
    blockers = cache_blockers(model)
    if blockers:
        raise SpecError(
            f"{', '.join(blockers)} cannot decode with a cache (no kv_cache capability); "
            f"recompute the full sequence instead (decoding.generate() falls back by itself)"
        )


def fold_rows(
    rows: int,
    padding_mask: torch.Tensor | None,
    segments: torch.Tensor | None,
    positions: torch.Tensor | None,
    cache: Cache | None,
) -> torch.Tensor | None:
    """The padding mask of an embedder that makes ``rows`` rows of tokens per input
    (``TokenLayout.rows``): each input's mask repeated for its rows. Packed rows, per-row
    positions and a cache are refused: they describe the inputs' rows, not the folded ones."""
    if (
        segments is not None
        or cache is not None
        or (positions is not None and positions.dim() == 2)
    ):
        raise ValueError(
            f"the embedder folds {rows} rows per input into the batch; segments, per-row "
            f"positions and a cache are not supported with it"
        )
    return None if padding_mask is None else padding_mask.repeat_interleave(rows, dim=0)


class Transformer(nn.Module):
    """A decoder (causal), encoder (bidirectional) or prefix LM Transformer built from a
    :class:`ModelSpec` (the encoder–decoder, :class:`~anyformer.model.encoder_decoder.
    EncoderDecoder`, is this class with an encoder and cross-attention added).

    ``forward(inputs, padding_mask=None)`` takes token ids ``[B, T]`` (or vectors
    ``[B, T, input_dim]`` with ``embed='vectors'``) and returns a tensor: per-token
    outputs ``[B, T, V]`` for ``lm``/``token_*`` heads, pooled ``[B, V]`` for
    ``classify``/``regress``. ``padding_mask`` is ``[B, T]``, True at real tokens.
    ``blocks`` holds the ``n_layers`` distinct blocks; the depth schedule ``depth``
    (:mod:`anyformer.model.depth`) decides which run, how often and in what order.

    Keyword-only extras: ``segments`` ``[B, T]`` document ids of packed rows (see
    :mod:`anyformer.nn.packing`; attention stays inside a document and positions restart
    per document unless ``positions`` is given); ``positions`` ``[T]`` or ``[B, T]``
    overrides the default ``offset + arange(T)``; ``cache`` (a
    :class:`~anyformer.components.base.Cache`) decodes incrementally: the inputs are the
    tokens after the ``cache.offset`` already seen (see :func:`anyformer.decoding.generate`);
    ``return_outputs=True`` returns a :class:`~anyformer.model.output.ModelOutput` (the
    outputs and everything else the pass computed: exits, loss-window iterates, blocks
    executed) instead of the outputs alone. A forward writes nothing on the modules.
    ``prefix_len`` ``[B]`` (``kind: prefix_lm`` only): each row's prefix, over which
    attention is bidirectional (causal after it); ``None``: a plain decoder.

    ``head=False`` builds no head (``head`` is the identity): the forward returns the
    final hidden states ``[B, T, d_model]`` (an encoder–decoder's encoder).
    """

    def __init__(self, spec: ModelSpec, head: bool = True) -> None:
        super().__init__()
        self.spec = spec
        self.causal = spec.kind != "encoder"
        self.head_kind = spec.resolved_head if head else "none"
        embedder = spec.embedder_ref
        try:
            self.embed: nn.Module = embedder.entry.build(embedder.config, spec=spec)
        except ValueError as exc:  # a required size the task did not fill
            raise SpecError(str(exc)) from None
        self.position: PositionScheme = _build(spec.position, spec.dims())
        # ``embed_norm``: a norm of the model's kind over token + position embeddings
        self.embed_norm = _build(spec.norm, spec.dims()) if spec.embed_norm else None
        self.drop = dropout_or_identity(spec.dropout)
        # graph edge features (model.edge_dim, from the task) -> ctx.edges in model width
        self.edge_embed = nn.Linear(spec.edge_dim, spec.d_model) if spec.edge_dim else None
        self.blocks = nn.ModuleList(build_block(spec, i) for i in range(spec.n_layers))
        last = spec.layer(spec.n_layers - 1)
        final = capabilities(self.blocks[-1]).final_norm
        self.norm = _build(last.norm, spec.dims(spec.n_layers - 1)) if final else nn.Identity()
        self.head = build_head(spec) if head else nn.Identity()
        self.pooled = capabilities(self.head).pooled if head else False
        self.depth: DepthSchedule = spec.depth.entry.build(spec.depth.config, spec=spec)
        self.reset_parameters()
        if spec.factorized:
            apply_factorized(self, spec.factorized, spec.factorized_sparsity)
        if self.head_kind == "lm" and spec.tie_embeddings:
            self.head.weight = self.embed.weight

    def reset_parameters(self) -> None:
        std = self.spec.init_std
        # scaled by the block *executions* (== n_layers for a stack): a looped model adds
        # loops x n_layers residual branches
        residual_std = std / math.sqrt(2 * self.depth.executed_depth)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                s = residual_std if getattr(module, "residual_projection", False) else std
                nn.init.normal_(module.weight, 0.0, s)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)

    # ------------------------------------------------------------------ forward
    @overload
    def forward(
        self,
        inputs: torch.Tensor,
        padding_mask: torch.Tensor | None = ...,
        *,
        positions: torch.Tensor | None = ...,
        segments: torch.Tensor | None = ...,
        cache: Cache | None = ...,
        last_only: bool = ...,
        prefix_len: torch.Tensor | None = ...,
        readout_mask: torch.Tensor | None = ...,
        adjacency: torch.Tensor | None = ...,
        edge_attr: torch.Tensor | None = ...,
        source: torch.Tensor | None = ...,
        source_mask: torch.Tensor | None = ...,
        return_outputs: Literal[False] = ...,
    ) -> torch.Tensor: ...

    @overload
    def forward(
        self,
        inputs: torch.Tensor,
        padding_mask: torch.Tensor | None = ...,
        *,
        positions: torch.Tensor | None = ...,
        segments: torch.Tensor | None = ...,
        cache: Cache | None = ...,
        last_only: bool = ...,
        prefix_len: torch.Tensor | None = ...,
        readout_mask: torch.Tensor | None = ...,
        adjacency: torch.Tensor | None = ...,
        edge_attr: torch.Tensor | None = ...,
        source: torch.Tensor | None = ...,
        source_mask: torch.Tensor | None = ...,
        return_outputs: Literal[True],
    ) -> ModelOutput: ...

    def forward(
        self,
        inputs: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        *,
        positions: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        cache: Cache | None = None,
        last_only: bool = False,
        prefix_len: torch.Tensor | None = None,
        readout_mask: torch.Tensor | None = None,
        adjacency: torch.Tensor | None = None,
        edge_attr: torch.Tensor | None = None,
        source: torch.Tensor | None = None,
        source_mask: torch.Tensor | None = None,
        return_outputs: bool = False,
    ) -> torch.Tensor | ModelOutput:
        """Outputs ``[B, T, ...]`` for ``inputs [B, T]``; with ``last_only`` the head runs on
        the last position alone and the outputs are ``[B, 1, ...]`` (what generation
        needs: over a long prompt and a large vocabulary the head costs as much as many
        decoding steps). Only for heads applied per position (not pooled ones). With
        ``return_outputs`` the result is the pass's :class:`ModelOutput`. ``prefix_len``
        ``[B]``: a prefix LM's prefix per row (``kind: prefix_lm`` only). ``readout_mask``
        ``[B, T]`` bool: the head runs on the selected positions alone and the outputs are
        ``[N, ...]`` for the N of them (row-major; equal to ``outputs[readout_mask]`` of a
        full forward), for per-position heads. ``adjacency`` ``[B, T, T]`` bool: a batch of
        graphs' dense adjacency over the node tokens, for mixers with the capability
        ``graph`` (``Context.adjacency``); ``edge_attr`` ``[B, T, T, E]`` their edge
        features (zeros off the edges), embedded to ``Context.edges`` by a model with
        ``edge_dim = E`` (:meth:`embed_edges`). ``source``/``source_mask`` are an
        encoder–decoder's (:class:`~anyformer.model.encoder_decoder.EncoderDecoder`); this
        stack refuses them rather than ignore an input."""
        if source is not None or source_mask is not None:
            raise SpecError(
                f"source is read by model.kind=encoder_decoder; this model is "
                f"kind={self.spec.kind} (give it rows without source, or set "
                f"model.kind=encoder_decoder)"
            )
        if prefix_len is not None:
            if self.spec.kind != "prefix_lm":
                raise SpecError(
                    f"prefix_len is read by model.kind=prefix_lm; this model is "
                    f"kind={self.spec.kind} (give it rows without prefix_len)"
                )
            if prefix_len.shape != inputs.shape[:1]:
                raise ValueError(
                    f"prefix_len must be one length per row, shape [{inputs.shape[0]}], got "
                    f"{tuple(prefix_len.shape)}"
                )
            prefix_len = prefix_len.to(device=inputs.device, dtype=torch.long)
        return self._forward(
            inputs, padding_mask, positions, segments, cache, last_only, return_outputs,
            prefix_len=prefix_len, readout_mask=readout_mask,
            adjacency=None if adjacency is None else adjacency.to(inputs.device, torch.bool),
            edges=self.embed_edges(edge_attr, inputs.device),
        )  # fmt: skip

    def _forward(
        self,
        inputs: torch.Tensor,
        padding_mask: torch.Tensor | None,
        positions: torch.Tensor | None,
        segments: torch.Tensor | None,
        cache: Cache | None,
        last_only: bool,
        return_outputs: bool,
        **context: Any,
    ) -> torch.Tensor | ModelOutput:
        """The forward of every kind: embed, run the depth schedule with a
        :class:`Context` that also carries ``context`` (``prefix_len``; an
        encoder–decoder's ``memory`` and ``memory_mask``), read out."""
        if last_only and self.pooled:
            raise ValueError("last_only needs a per-position head; this model pools")
        readout_mask = context.get("readout_mask")
        if readout_mask is not None and (self.pooled or last_only):
            raise ValueError(
                "readout_mask selects positions for a per-position head; this model pools"
                if self.pooled
                else "give readout_mask or last_only, not both"
            )
        embedded = self.embed(inputs)
        t = embedded.shape[1]  # tokens, not the raw input's second axis (image channels)
        if embedded.shape[0] != inputs.shape[0]:  # rows folded into the batch (TokenLayout.rows)
            padding_mask = fold_rows(embedded.shape[0] // inputs.shape[0], padding_mask,
                                     segments, positions, cache)  # fmt: skip
        offset = 0 if cache is None else cache.offset
        if offset + t > self.spec.max_len:
            raise SpecError(
                f"input length {offset + t} exceeds model.max_len={self.spec.max_len}; "
                f"raise model.max_len to at least {offset + t}"
            )
        if cache is not None and (positions is not None or segments is not None):
            raise ValueError("a cache sets positions itself; pass neither positions nor segments")
        if cache is not None and cache.offset == 0:
            check_cache(self)
        if segments is not None or (positions is not None and positions.dim() == 2):
            check_packing(self)
        if positions is None and segments is not None:
            positions = positions_from_segments(segments)
        elif positions is None:
            positions = torch.arange(offset, offset + t, device=inputs.device)
        embed_positions = positions
        if cache is not None and cache.position_shift is not None:  # rows padded in front
            embed_positions = (positions - cache.position_shift[:, None]).clamp(min=0)
        x = self.embed_positions(embedded, embed_positions)
        state = getattr(self.embed, "readout_state", None)
        if state is not None:
            context["embed_state"] = state(inputs)
        ctx = Context(
            positions, self.causal, self.position, padding_mask, segments, cache, last_only,
            **context,
        )  # fmt: skip
        if cache is not None:
            cache.begin()
        with token_mask_scope(padding_mask):  # for norms that mask padding (batchnorm)
            out = self.depth(self, x, ctx, inputs)  # the depth schedule runs the blocks
        if cache is not None:
            cache.end(t)
        if not isinstance(out, ModelOutput):  # a user's schedule returning the outputs
            out = ModelOutput(out)
        return out if return_outputs else out.logits

    def embed_edges(
        self, edge_attr: torch.Tensor | None, device: torch.device
    ) -> torch.Tensor | None:
        """``Context.edges`` ``[B, T, T, d_model]``: the linear embedding of a graph batch's
        edge features ``edge_attr [B, T, T, edge_dim]`` (``None`` without them). A model
        built without ``edge_dim`` refuses edge features rather than ignore them."""
        if edge_attr is None:
            return None
        if self.edge_embed is None:
            raise SpecError(
                f"the batch carries edge features (edge_attr, {edge_attr.shape[-1]} per "
                f"edge) but model.edge_dim is unset; set model.edge_dim={edge_attr.shape[-1]} "
                f"(a graph task fills it)"
            )
        return self.edge_embed(edge_attr.to(device, self.edge_embed.weight.dtype))

    def embed_positions(self, embedded: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """What the first block reads: ``dropout(norm(position.embed(embedded, positions)))``
        for embedded inputs ``[B, T, D]``, the norm only with ``model.embed_norm`` (the
        embedding LayerNorm of BERT, Devlin et al. 2019, and BART, Lewis et al. 2020)."""
        x = self.position.embed(embedded, positions)
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        return self.drop(x)

    def readout(
        self,
        x: torch.Tensor,
        ctx: Context,
        norm: nn.Module | None = None,
        head: nn.Module | None = None,
    ) -> torch.Tensor:
        """Final norm, pooling (pooled heads, over ``ctx.padding_mask``) and head on the
        last hidden states, on the last position alone when ``ctx.last_only`` (on the
        positions of ``ctx.readout_mask`` alone, ``[N, ...]``, when it is given); a depth
        schedule with several exits passes each exit's own ``norm`` and ``head``."""
        if ctx.last_only:
            x = x[:, -1:]
        elif ctx.readout_mask is not None:  # [1, N, D]: the head sees a row of N tokens
            x = x[ctx.readout_mask.to(x.device)][None]
        x = (self.norm if norm is None else norm)(x)
        head = self.head if head is None else head
        if getattr(head, "reads_state", False):  # the embedder's readout_state (RevIN)
            return head(x, ctx.padding_mask, state=ctx.embed_state)
        if self.pooled:
            return head(x, ctx.padding_mask)
        return head(x)[0] if ctx.readout_mask is not None else head(x)

    @property
    def trains_several_outputs(self) -> bool:
        """Whether a training step has several outputs to weight (early exits, a looped
        loss window, or nested widths), rather than the single output of :meth:`forward`."""
        return self.depth.several_outputs or bool(nested_ffns(self))

    def training_outputs(
        self,
        inputs: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        step: int = 0,
        *,
        positions: torch.Tensor | None = None,
        segments: torch.Tensor | None = None,
        module: Callable[..., Any] | None = None,
        **inputs_extra: Any,
    ) -> list[tuple[float, torch.Tensor]]:
        """``[(weight, outputs), ...]``: the Trainer minimises the weighted sum of the
        objective over these. One ``(1.0, logits)`` for most models; an ``early_exit``
        depth gives every exit weight ``1 / n_exits`` (a ``looped`` loss window every
        iterate in it, ``1 / loss_window``; :meth:`ModelOutput.weighted`); nested
        MatFormer FFNs give each trained width its own forward (all of them, or one
        sampled by ``step``). ``positions`` and ``segments`` (packed rows) are passed to
        every forward. ``module`` runs the forward instead of the model itself: its
        data-parallel wrapper (DDP), which sees the exits in the returned
        :class:`ModelOutput` like any other output. ``inputs_extra`` (``prefix_len``; an
        encoder–decoder's ``source``, ``source_mask``) go to every forward too."""
        run = self if module is None else module
        pairs: list[tuple[float, torch.Tensor]] = []
        for weight, widths in training_widths(self, step):
            with widths_set(self, widths):
                out = run(
                    inputs, padding_mask, positions=positions, segments=segments,
                    return_outputs=True, **inputs_extra,
                )  # fmt: skip
            pairs += out.weighted(weight)
        return pairs

    # ------------------------------------------------------------------ accounting
    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Distinct trainable parameters; optionally without token/position embeddings."""
        exclude: tuple[nn.Module, ...] = (self.embed, self.position) if exclude_embeddings else ()
        return count_params(self, exclude)

    def flops_per_token(self, seq_len: int) -> int:
        """Estimated training FLOPs per token at ``seq_len``: 3x the forward pass
        (backward costs twice the forward), matrix products only. The depth schedule
        counts every block *execution* (a block looped T times counts T times) and the
        heads; parameters shared by those executions are counted once by :meth:`num_params`."""
        forward = self.depth.forward_flops(self, seq_len)
        if isinstance(self.embed, nn.Linear):
            forward += forward_flops_per_token(self.embed, seq_len)
        return 3 * forward


#: The model class of each kind that :class:`Transformer` does not build itself, as
#: ``"module:Class"``: named as data and imported on first use, since those modules
#: import this one.
KIND_CLASSES = {"encoder_decoder": "anyformer.model.encoder_decoder:EncoderDecoder"}


def build_model(spec: ModelSpec | dict[str, Any]) -> Transformer:
    """Build the model of a :class:`ModelSpec` or a plain dict: a :class:`Transformer`,
    or for ``kind: encoder_decoder`` an
    :class:`~anyformer.model.encoder_decoder.EncoderDecoder` (a subclass)."""
    if not isinstance(spec, ModelSpec):
        spec = parse(ModelSpec, spec)
    path = KIND_CLASSES.get(spec.kind)
    if path is None:
        return Transformer(spec)
    module, _, name = path.partition(":")
    cls: type[Transformer] = getattr(importlib.import_module(module), name)
    return cls(spec)
