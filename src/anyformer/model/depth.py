"""Depth schedules: which of a model's distinct blocks run, how often and in what order.

A model builds ``model.n_layers`` *distinct* blocks (``model.blocks``; per-layer
overrides ``model.layers.<i>`` index these), and its depth schedule decides how they
run. A schedule is registered in the ``depth`` slot and built as ``cls(spec, params)``
(it sees the whole :class:`~anyformer.spec.ModelSpec`, since a schedule may add heads);
an optional ``check_spec(params, spec) -> str | None`` rejects combinations it cannot
serve, naming the field and what would be valid. Its forward is::

    schedule(model, x, ctx, inputs) -> outputs

where ``x`` is the embedded input ``[B, T, D]`` (positions added, dropout applied),
``ctx`` the mixers' :class:`~anyformer.components.base.Context`, ``inputs`` the model's
raw inputs and ``outputs`` what the model returns (``model.readout`` applies the final
norm, pooling and head). Schedules hold no block weights themselves, so a model with
the default ``stack`` has exactly the parameters and state-dict keys it had before
schedules existed. Weight sharing is therefore automatic in parameter counts (a
tensor is counted once); FLOPs come from :meth:`DepthSchedule.forward_flops`, which
counts every block *execution*.

Schedules: ``stack``, ``looped``, ``algoformer``, ``recursive``, ``early_exit``,
``continuous_thought`` (see each class).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from anyformer.components.base import Context
from anyformer.model.flops import forward_flops_per_token
from anyformer.registry import Capabilities, NoParams, Paper, register

if TYPE_CHECKING:
    from anyformer.model.transformer import Transformer
    from anyformer.spec import ModelSpec

YANG = Paper(
    "Looped Transformers are Better at Learning Learning Algorithms",
    2024,
    "Yang, Lee, Nowak & Papailiopoulos",
)
ALGOFORMER = Paper(
    "On the Expressive Power of a Variant of the Looped Transformer (AlgoFormer)",
    2024,
    "Gao et al.",
)
SRET = Paper("Sliced Recursive Transformer", 2022, "Shen, Liu & Xing")
ECO_M2F = Paper(
    "Efficient Transformer Encoders for Mask2Former-style models (ECO-M2F)", 2024, "Yao et al."
)
SUPERPOSITION = Paper(
    "Reasoning by Superposition: A Theoretical Perspective on Chain of Continuous Thought",
    2025,
    "Zhu et al.",
)


def _frozen() -> ConfigDict:
    return ConfigDict(extra="forbid", frozen=True)


class DepthSchedule(nn.Module):
    """Base class: runs the blocks listed by :meth:`order`, then the model's readout.

    Its registry capabilities say what it allows: ``kv_cache``, whether incremental
    decoding with a cache is possible (the cache keys its slots by mixer call order, so
    a fixed schedule is fine; one whose depth varies per step, or that re-runs the
    prefix, leaves it False and ``generate`` recomputes the whole sequence instead);
    ``packing``, whether packed rows (``ctx.segments``) may run through it (the blocks
    keep documents apart; a schedule that moves tokens across positions leaves it False
    and :meth:`~anyformer.spec.ModelSpec.packing_problem` refuses packing).
    """

    #: Whether a training forward stores several outputs in ``exit_outputs`` for the
    #: Trainer to average the loss over (early exits, a looped model's loss window).
    several_outputs = False

    def __init__(self, spec: ModelSpec, params: BaseModel) -> None:
        super().__init__()
        self.n_layers = spec.n_layers
        self.params = params

    def order(self, training: bool) -> list[int]:
        """Indices of the distinct blocks run by one forward pass, in order."""
        return list(range(self.n_layers))

    @property
    def executed_depth(self) -> int:
        """Block executions of a training forward pass (residual-branch init uses it)."""
        return len(self.order(training=True))

    def run(
        self, blocks: nn.ModuleList, order: list[int], x: torch.Tensor, ctx: Context
    ) -> torch.Tensor:
        modules = list(blocks)  # indexing a ModuleList costs more than a list, per call
        for i in order:
            x = modules[i](x, ctx)
        return x

    def forward(
        self, model: Transformer, x: torch.Tensor, ctx: Context, inputs: torch.Tensor
    ) -> torch.Tensor:
        x = self.run(model.blocks, self.order(self.training), x, ctx)
        return model.readout(x, ctx)

    def forward_flops(self, model: Transformer, seq_len: int, training: bool = True) -> int:
        """Forward FLOPs per token of a training (or evaluation) pass: every block
        execution and the head."""
        per_block = [forward_flops_per_token(b, seq_len) for b in model.blocks]
        blocks = sum(per_block[i] for i in self.order(training))
        return blocks + forward_flops_per_token(model.head, seq_len)


def _layers_total(spec: ModelSpec, need: int, how: str) -> str | None:
    if spec.n_layers == need:
        return None
    return (
        f"{how} = {need} distinct blocks, but model.n_layers={spec.n_layers} "
        f"(n_layers counts the distinct blocks, each with its own weights); "
        f"set model.n_layers={need}"
    )


# --------------------------------------------------------------------------- stack
@register(
    "depth",
    "stack",
    paper=None,
    summary="the usual stack: each of the n_layers distinct blocks once, in order",
    params=NoParams,
    caps=Capabilities(complexity="O(L)", kv_cache=True, packing=True),
)
class Stack(DepthSchedule):
    """x -> block_0 -> block_1 -> ... -> block_{L-1} -> readout (``L = n_layers``)."""


# --------------------------------------------------------------------------- looped
class LoopedParams(BaseModel):
    """- ``loops``: times the loop body (all ``n_layers`` blocks, in order) runs in training.
    - ``loops_eval``: times it runs in evaluation mode (``model.eval()``); None = ``loops``.
    - ``inject_input``: re-add the embedded input before every iteration
      (``h_0 = 0``, ``h_{t+1} = body(h_t + x)``, as in Yang et al.); False runs
      ``h_0 = x``, ``h_{t+1} = body(h_t)``. With ``loops = 1`` both equal ``stack``.
    - ``loss_window``: in training, the loss is the mean over the outputs (final norm and
      head) after each of the last ``loss_window`` iterations, Yang et al.'s window of
      iterations, which teaches every iterate in it to be an answer; 1 = the last only.
    """

    model_config = _frozen()
    loops: int = Field(4, ge=1)
    loops_eval: int | None = Field(None, ge=1)
    inject_input: bool = True
    loss_window: int = Field(1, ge=1)


def _loop(
    blocks: list[nn.Module],
    x: torch.Tensor,
    ctx: Context,
    loops: int,
    inject: bool,
    keep_last: int = 0,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """``(h_T, [h_{T-keep_last+1}, ..., h_T])``: the iterate after ``loops`` passes of
    ``blocks`` and the last ``keep_last`` iterates (none when 0)."""
    h = torch.zeros_like(x) if inject else x
    kept = []
    for t in range(loops):
        if inject:
            h = h + x
        for block in blocks:
            h = block(h, ctx)
        if t >= loops - keep_last:
            kept.append(h)
    return h, kept


class _Iterated(DepthSchedule):
    """Shared by the schedules that loop blocks (``looped``, ``algoformer``): the loop
    count in training and evaluation, and the loss window over the last iterates."""

    def __init__(self, spec: ModelSpec, params: BaseModel) -> None:
        super().__init__(spec, params)
        self.eval_loops = params.loops_eval or params.loops  # type: ignore[attr-defined]
        self.several_outputs = params.loss_window > 1  # type: ignore[attr-defined]
        self.exit_outputs: list[torch.Tensor] = []

    def loops(self, training: bool) -> int:
        """Iterations in training, or in evaluation (``eval_loops``, settable at run time)."""
        return self.params.loops if training else self.eval_loops  # type: ignore[attr-defined]

    def window(self) -> int:
        """Iterates to keep for the loss in this forward (0: only the final output)."""
        return self.params.loss_window if self.training and self.several_outputs else 0  # type: ignore[attr-defined]

    def read_out(
        self,
        model: Transformer,
        final: torch.Tensor,
        kept: list[torch.Tensor],
        ctx: Context,
        finish: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The output of the final iterate; with a loss window, every kept iterate's
        output (``finish`` applied first, e.g. a post-transformer) goes to
        :attr:`exit_outputs` and the last of them is returned."""
        finish = finish or (lambda h: h)
        if kept:
            self.exit_outputs = [model.readout(finish(h), ctx) for h in kept]
            return self.exit_outputs[-1]
        return model.readout(finish(final), ctx)


def _window_problem(params: BaseModel) -> str | None:
    window, loops = params.loss_window, params.loops  # type: ignore[attr-defined]
    if window > loops:
        return (
            f"loss_window={window} must be <= loops={loops} "
            f"(the window counts the last training iterations)"
        )
    return None


@register(
    "depth",
    "looped",
    paper=YANG,
    summary="weight-tied loop: the n_layers blocks applied `loops` times (loops_eval at "
    "evaluation), optionally re-injecting the input",
    params=LoopedParams,
    caps=Capabilities(complexity="O(L T)", kv_cache=True, packing=True),
)
class Looped(_Iterated):
    """The ``n_layers`` distinct blocks form one loop body, applied ``loops`` times.

    With ``inject_input`` each iteration reads ``h_t + x`` (``x`` the embedded input,
    ``h_0 = 0``), the looped Transformer of Yang et al. (2024) for in-context learning;
    evaluation may run a different number of iterations (``loops_eval``) to test
    whether more iterations keep refining the answer. With ``loss_window = b > 1`` a
    training forward also reads out the last ``b`` iterates and stores them in
    :attr:`exit_outputs` (the Trainer averages the loss over them), as Yang et al. train.
    Parameters are those of one body; FLOPs are ``loops`` bodies (the window's extra
    readouts are not counted). Per-layer overrides index the body's blocks.
    Not supported: truncated backpropagation through the early iterations, and
    stopping criteria on the iterate (the count is fixed).
    """

    params: LoopedParams

    @staticmethod
    def check_spec(params: LoopedParams, spec: ModelSpec) -> str | None:
        return _window_problem(params)

    def order(self, training: bool) -> list[int]:
        return list(range(self.n_layers)) * self.loops(training)

    def forward(
        self, model: Transformer, x: torch.Tensor, ctx: Context, inputs: torch.Tensor
    ) -> torch.Tensor:
        window = self.window()
        h, kept = _loop(
            list(model.blocks), x, ctx, self.loops(self.training), self.params.inject_input, window
        )
        return self.read_out(model, h, kept, ctx)


# --------------------------------------------------------------------------- algoformer
class AlgoFormerParams(BaseModel):
    """- ``n_pre``, ``n_loop``, ``n_post``: distinct blocks of the pre-transformer, the
      looped transformer and the post-transformer (blocks ``0..n_pre-1``, then the next
      ``n_loop``, then the last ``n_post``); they must add up to ``model.n_layers``.
    - ``loops``: iterations of the looped part in training; ``loops_eval``: in
      evaluation (None = ``loops``).
    - ``inject_input``: re-add the pre-transformer's output before every iteration
      (as the looped Transformer of Yang et al. re-adds its input).
    - ``loss_window``: as for ``looped``: in training, the loss is the mean over the last
      ``loss_window`` iterates, each through the post-transformer and the head.
    """

    model_config = _frozen()
    n_pre: int = Field(1, ge=0)
    n_loop: int = Field(1, ge=1)
    n_post: int = Field(1, ge=0)
    loops: int = Field(4, ge=1)
    loops_eval: int | None = Field(None, ge=1)
    inject_input: bool = False
    loss_window: int = Field(1, ge=1)


@register(
    "depth",
    "algoformer",
    paper=ALGOFORMER,
    summary="pre-transformer -> looped transformer (T iterations) -> post-transformer",
    params=AlgoFormerParams,
    caps=Capabilities(complexity="O(L T)", kv_cache=True, packing=True),
)
class AlgoFormer(_Iterated):
    """pre blocks (task pre-processing) -> loop blocks x T (an iterative algorithm) ->
    post blocks (read-out), each part with its own weights.

    Paper: "On the Expressive Power of a Variant of the Looped Transformer", Gao et al.,
    2024. ``n_pre + n_loop + n_post = model.n_layers``; per-layer override ``i`` is
    distinct block ``i`` in that order. Not supported: different widths per part.
    """

    params: AlgoFormerParams

    @staticmethod
    def check_spec(params: AlgoFormerParams, spec: ModelSpec) -> str | None:
        need = params.n_pre + params.n_loop + params.n_post
        how = f"n_pre={params.n_pre} + n_loop={params.n_loop} + n_post={params.n_post}"
        return _layers_total(spec, need, how) or _window_problem(params)

    def parts(self) -> tuple[list[int], list[int], list[int]]:
        p = self.params
        idx = list(range(self.n_layers))
        return idx[: p.n_pre], idx[p.n_pre : p.n_pre + p.n_loop], idx[p.n_pre + p.n_loop :]

    def order(self, training: bool) -> list[int]:
        pre, loop, post = self.parts()
        return pre + loop * self.loops(training) + post

    def forward(
        self, model: Transformer, x: torch.Tensor, ctx: Context, inputs: torch.Tensor
    ) -> torch.Tensor:
        pre, loop, post = self.parts()
        x = self.run(model.blocks, pre, x, ctx)
        body = [model.blocks[i] for i in loop]
        h, kept = _loop(
            body, x, ctx, self.loops(self.training), self.params.inject_input, self.window()
        )
        return self.read_out(model, h, kept, ctx, lambda h: self.run(model.blocks, post, h, ctx))


# --------------------------------------------------------------------------- recursive
class RecursiveParams(BaseModel):
    """- ``k``: times each block is applied in a row (its weights shared); ``k = 1`` is
    ``stack``."""

    model_config = _frozen()
    k: int = Field(2, ge=1)


@register(
    "depth",
    "recursive",
    paper=SRET,
    summary="SReT recursion: each block applied k times in a row with shared weights",
    params=RecursiveParams,
    caps=Capabilities(complexity="O(L k)", kv_cache=True, packing=True),
)
class Recursive(DepthSchedule):
    """block_0^k -> block_1^k -> ... (each block applied ``k`` times in sequence).

    Paper: "Sliced Recursive Transformer", Shen, Liu & Xing, 2022 (the naive recursion
    that shares weights across depth). Not supported: SReT's sliced group
    self-attention across recursions and its learnable residual scaling.
    """

    params: RecursiveParams

    def order(self, training: bool) -> list[int]:
        return [i for i in range(self.n_layers) for _ in range(self.params.k)]


# --------------------------------------------------------------------------- early exit
class EarlyExitParams(BaseModel):
    """- ``every``: an exit after every ``every``-th block (blocks ``every-1``,
      ``2 every-1``, ...) and always after the last one.
    - ``threshold``: at evaluation a unit (a token for per-token heads, an example for
      pooled heads) stops at the first exit whose confidence, the largest softmax
      probability of that exit's head, is ``>= threshold``; 0 = always the first exit,
      1 = always the last (never early).
    - ``share_head``: intermediate exits use the model's final norm and head (no extra
      parameters) instead of their own norm and head.
    """

    model_config = _frozen()
    every: int = Field(1, ge=1)
    threshold: float = Field(1.0, ge=0.0, le=1.0)
    share_head: bool = False


class _Exit(nn.Module):
    def __init__(self, norm: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.norm, self.head = norm, head


def _rows(ctx: Context, rows: torch.Tensor) -> Context:
    """The context of a subset of the batch's rows."""
    pick = {}
    for name in ("padding_mask", "segments"):
        value = getattr(ctx, name, None)
        if value is not None:
            pick[name] = value[rows]
    if ctx.positions.dim() == 2:
        pick["positions"] = ctx.positions[rows]
    return dataclasses.replace(ctx, **pick)


@register(
    "depth",
    "early_exit",
    paper=ECO_M2F,
    summary="a head after every block (or every k), trained jointly; at inference each token "
    "(or example, for pooled heads) stops at the first exit confident enough",
    params=EarlyExitParams,
    caps=Capabilities(complexity="O(L)", packing=True),
)
class EarlyExit(DepthSchedule):
    """Exits (norm + head) after blocks ``every-1, 2 every-1, ...`` and the last block.

    Training (``model.train()``): every block runs, the forward returns the last exit's
    output and stores every exit's output, first to last, in :attr:`exit_outputs`;
    :meth:`Transformer.training_outputs` hands them to the Trainer, which minimises the
    mean of the objective over the exits (so every exit head learns jointly). The last
    exit is the model's own final norm and head.

    Evaluation, with ``threshold < 1``:

    - pooled heads (``classify``): each example leaves the batch at the first exit whose
      confidence reaches ``threshold``; the remaining rows run on (compute is saved);
    - per-token heads (``lm``, ``token_classify``): each *token* exits on its own, and
      its hidden state is frozen from then on, so deeper blocks of later tokens read the
      exited token's last state (the state propagation of CALM, "Confident Adaptive
      Language Modeling", Schuster et al., 2022). A token's depth depends only on itself
      and earlier tokens, so a decoder stays causal. In this full-sequence form every
      block still runs on the whole sequence (frozen tokens are masked); the saving is
      what token-by-token decoding would skip.

    :attr:`last_exit` holds the blocks executed per example ``[B]`` or token ``[B, T]``
    and :attr:`blocks_executed` their mean (over real tokens).

    Paper: ECO-M2F ("Efficient Transformer Encoders for Mask2Former-style models", Yao
    et al., 2024) step 1 (early-exit training) with a confidence threshold for the
    depth decision. Not supported: ECO-M2F's learned gating network (steps 2-3),
    regression heads with ``threshold < 1`` (no confidence), a KV cache (the depth varies).
    """

    params: EarlyExitParams
    several_outputs = True

    def __init__(self, spec: ModelSpec, params: EarlyExitParams) -> None:
        super().__init__(spec, params)
        last = spec.n_layers - 1
        self.exit_after = sorted({i for i in range(last) if (i + 1) % params.every == 0} | {last})
        self.per_token = spec.resolved_head in ("lm", "token_classify", "token_regress")
        self.exits = nn.ModuleList()
        if not params.share_head:
            head_kind = spec.resolved_head
            n_out = spec.vocab_size if head_kind == "lm" else spec.n_outputs
            for i in self.exit_after[:-1]:
                layer, dims = spec.layer(i), spec.dims(i)
                final = layer.norm_placement.entry.caps.final_norm
                norm = layer.norm.entry.build(layer.norm.config, dims) if final else nn.Identity()
                head = nn.Linear(spec.d_model, n_out or 1, bias=head_kind != "lm")
                self.exits.append(_Exit(norm, head))
        self.exit_outputs: list[torch.Tensor] = []
        self.last_exit: torch.Tensor | None = None
        self.blocks_executed: float | None = None
        self.threshold = params.threshold

    @staticmethod
    def check_spec(params: EarlyExitParams, spec: ModelSpec) -> str | None:
        if params.every > spec.n_layers:
            return f"every={params.every} must be <= model.n_layers={spec.n_layers}"
        head = spec.resolved_head
        if params.threshold < 1 and head in ("regress", "token_regress"):
            return (
                f"threshold={params.threshold} needs a head with a softmax confidence "
                f"(lm, classify, token_classify); head='{head}' has none, use threshold=1"
            )
        return None

    def _readout(self, model: Transformer, j: int, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if j == len(self.exit_after) - 1 or self.params.share_head:
            return model.readout(x, ctx)
        ex = self.exits[j]
        return model.readout(x, ctx, norm=ex.norm, head=ex.head)

    @staticmethod
    def confidence(out: torch.Tensor) -> torch.Tensor:
        """The largest softmax probability over the last dimension (per example or token)."""
        return out.float().softmax(-1).amax(-1)

    def forward(
        self, model: Transformer, x: torch.Tensor, ctx: Context, inputs: torch.Tensor
    ) -> torch.Tensor:
        if self.training:
            outs = []
            for i, block in enumerate(model.blocks):
                x = block(x, ctx)
                if i in self.exit_after:
                    outs.append(self._readout(model, len(outs), x, ctx))
            self.exit_outputs = outs
            return outs[-1]
        if getattr(ctx, "cache", None) is not None:
            raise ValueError("depth='early_exit' cannot decode with a cache (the depth varies)")
        if self.threshold >= 1:  # never early: skip the intermediate heads
            x = self.run(model.blocks, self.order(False), x, ctx)
            self._record(torch.full(x.shape[:-1], self.n_layers, device=x.device), ctx)
            return model.readout(x, ctx)
        if self.per_token:
            return self._per_token(model, x, ctx)
        return self._per_example(model, x, ctx)

    def _record(self, executed: torch.Tensor, ctx: Context) -> None:
        self.last_exit = executed
        if executed.dim() == 2 and ctx.padding_mask is not None:
            real = ctx.padding_mask.float()
            self.blocks_executed = float((executed * real).sum() / real.sum().clamp(min=1))
        else:
            self.blocks_executed = float(executed.float().mean())

    def _per_token(self, model: Transformer, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        exited = torch.zeros(x.shape[:-1], dtype=torch.bool, device=x.device)
        executed = torch.zeros(x.shape[:-1], dtype=torch.long, device=x.device)
        result: torch.Tensor | None = None
        for i, block in enumerate(model.blocks):
            x = torch.where(exited[..., None], x, block(x, ctx))
            executed += (~exited).long()
            if i not in self.exit_after:
                continue
            out = self._readout(model, self.exit_after.index(i), x, ctx)
            result = torch.zeros_like(out) if result is None else result
            stop = (
                ~exited
                if i == self.exit_after[-1]
                else ~exited & (self.confidence(out) >= self.threshold)
            )
            result = torch.where(stop[..., None], out, result)
            exited = exited | stop
            if bool(exited.all()):
                break
        self._record(executed, ctx)
        assert result is not None
        return result

    def _per_example(self, model: Transformer, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        b = x.shape[0]
        rows = torch.arange(b, device=x.device)
        executed = torch.zeros(b, dtype=torch.long, device=x.device)
        result: torch.Tensor | None = None
        sub = ctx
        for i, block in enumerate(model.blocks):
            x = block(x, sub)
            executed[rows] += 1
            if i not in self.exit_after:
                continue
            out = self._readout(model, self.exit_after.index(i), x, sub)
            if result is None:
                result = out.new_zeros((b, *out.shape[1:]))
            if i == self.exit_after[-1]:
                result[rows] = out
                break
            done = self.confidence(out) >= self.threshold
            result[rows[done]] = out[done]
            keep = ~done
            if not bool(keep.any()):
                break
            rows, x = rows[keep], x[keep]
            sub = _rows(ctx, rows)
        self._record(executed, ctx)
        assert result is not None
        return result

    def forward_flops(self, model: Transformer, seq_len: int, training: bool = True) -> int:
        """Every block, the final head and every intermediate exit head (an upper bound in
        evaluation, where examples may stop early: see :attr:`blocks_executed`)."""
        extra = sum(forward_flops_per_token(e.head, seq_len) for e in self.exits)
        if self.params.share_head:
            extra = (len(self.exit_after) - 1) * forward_flops_per_token(model.head, seq_len)
        return super().forward_flops(model, seq_len) + extra


# --------------------------------------------------------------------------- continuous thought
class ContinuousThoughtParams(BaseModel):
    """- ``thoughts``: continuous thought steps ``m`` inserted after the prompt (0 = plain
      ``stack``).
    - ``sep_token``: the token that ends the prompt (the first one in each row; 2 is
      ``SEP`` of the algorithmic tasks). Every row must contain it.
    """

    model_config = _frozen()
    thoughts: int = Field(2, ge=0)
    sep_token: int = Field(2, ge=0)


@register(
    "depth",
    "continuous_thought",
    paper=SUPERPOSITION,
    summary="decoders: m continuous thoughts after the prompt, each the last hidden state "
    "fed back as the next input embedding (Coconut)",
    params=ContinuousThoughtParams,
    caps=Capabilities(complexity="O(L m)"),
)
class ContinuousThought(DepthSchedule):
    """Chain of continuous thought: the stack runs on ``[prompt, thoughts, answer]``.

    Let ``s`` be the position of the first ``sep_token`` in a row. The model's input
    sequence becomes ``e_0 .. e_s, c_1 .. c_m, e_{s+1} .. e_{T-1}`` (``e`` token
    embeddings, positions ``0 .. T+m-1``), where thought ``c_j`` is the final-normed last
    hidden state (what the head reads) at the position just before it, computed
    sequentially: pass ``j`` runs the blocks on the prefix up to ``c_{j-1}`` and reads
    ``c_j`` (the graph is kept, so training backpropagates through every thought).
    A final pass over the whole sequence gives the outputs, returned at the original
    ``T`` positions: position ``t < s`` reads ``t``, the prompt's last position ``s``
    reads the last thought ``s + m`` (it predicts the first answer token, exactly what
    SEP predicts without thoughts), ``t > s`` reads ``t + m``. Teacher forcing is
    unchanged: the answer tokens follow the thoughts, targets stay aligned with inputs.
    Uncached greedy decoding works (each forward recomputes the same thoughts).

    Papers: "Reasoning by Superposition", Zhu et al., 2025; Coconut ("Training Large
    Language Models to Reason in a Continuous Latent Space", Hao et al., 2024). Not
    supported: KV caches, packed rows, Coconut's multi-stage curriculum (replacing
    language CoT steps by thoughts), encoders and vector inputs. Cost: ``m + 1`` passes,
    ``max_len`` must cover ``T + m``.
    """

    params: ContinuousThoughtParams

    @staticmethod
    def check_spec(params: ContinuousThoughtParams, spec: ModelSpec) -> str | None:
        if spec.kind != "decoder" or spec.embed != "tokens":
            return (
                f"needs kind='decoder' and embed='tokens' (got kind='{spec.kind}', "
                f"embed='{spec.embed}'): thoughts follow a token prompt causally"
            )
        if spec.vocab_size is not None and params.sep_token >= spec.vocab_size:
            return f"sep_token={params.sep_token} must be < model.vocab_size={spec.vocab_size}"
        return None

    def forward(
        self, model: Transformer, x: torch.Tensor, ctx: Context, inputs: torch.Tensor
    ) -> torch.Tensor:
        m = self.params.thoughts
        if m == 0:
            return super().forward(model, x, ctx, inputs)
        if getattr(ctx, "cache", None) is not None or getattr(ctx, "segments", None) is not None:
            raise ValueError("depth='continuous_thought' supports neither a cache nor packed rows")
        b, t = inputs.shape
        total = t + m
        if total > model.spec.max_len:
            raise ValueError(
                f"input length {t} + {m} thoughts exceeds model.max_len={model.spec.max_len}"
            )
        is_sep = inputs == self.params.sep_token
        missing = (~is_sep.any(1)).nonzero()
        if missing.numel():
            raise ValueError(
                f"depth='continuous_thought': row {int(missing[0])} has no "
                f"sep_token={self.params.sep_token} to place the thoughts after"
            )
        s = is_sep.int().argmax(1)  # first SEP per row, [B]
        dev = inputs.device
        p = torch.arange(total, device=dev).expand(b, total)
        thought = (p > s[:, None]) & (p <= s[:, None] + m)
        src = torch.where(p <= s[:, None], p, p - m).clamp(0, t - 1)
        base = model.embed(inputs).gather(1, src[..., None].expand(-1, -1, model.spec.d_model))
        mask = None
        if ctx.padding_mask is not None:
            mask = ctx.padding_mask.gather(1, src) | thought
        positions = torch.arange(total, device=dev)
        long_ctx = dataclasses.replace(ctx, positions=positions, padding_mask=mask)
        rows = torch.arange(b, device=dev)
        thoughts: list[torch.Tensor] = []

        def hidden(n: int) -> torch.Tensor:
            emb = base[:, :n]
            for j, c in enumerate(thoughts):  # place c_{j+1} at position s + j + 1
                at = (p[:, :n] == (s + j + 1)[:, None]).unsqueeze(-1)
                emb = torch.where(at, c[:, None, :], emb)
            h = model.drop(model.position.embed(emb, positions[:n]))
            sub = dataclasses.replace(
                long_ctx,
                positions=positions[:n],
                padding_mask=None if mask is None else mask[:, :n],
            )
            for block in model.blocks:
                h = block(h, sub)
            return h

        for j in range(m):
            n = int(s.max()) + j + 1  # every row's position s + j lies inside the prefix
            thoughts.append(model.norm(hidden(n))[rows, s + j])
        h = hidden(total)
        out_pos = torch.arange(t, device=dev).expand(b, t)
        out_pos = torch.where(out_pos < s[:, None], out_pos, out_pos + m)
        out_pos = torch.where(torch.arange(t, device=dev) == s[:, None], s[:, None] + m, out_pos)
        h = h.gather(1, out_pos[..., None].expand(-1, -1, h.shape[-1]))
        return model.readout(h, ctx)

    def forward_flops(self, model: Transformer, seq_len: int, training: bool = True) -> int:
        """Upper bound: ``m + 1`` passes over ``seq_len + m`` tokens, per original token."""
        m = self.params.thoughts
        long = seq_len + m
        per_pass = sum(forward_flops_per_token(b, long) for b in model.blocks)
        blocks = (m + 1) * per_pass * long // seq_len
        return blocks + forward_flops_per_token(model.head, seq_len)
