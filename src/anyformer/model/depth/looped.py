"""Weight-tied loops: ``looped`` (the ``n_layers`` blocks as one body applied ``loops``
times, Yang et al.) and ``algoformer`` (pre blocks, a looped part, post blocks; Gao et
al.), both with a loss window over their last iterates."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, Field
from torch import nn

from anyformer.components.base import Context
from anyformer.model.depth.base import DepthSchedule, frozen, layers_total
from anyformer.model.output import ModelOutput
from anyformer.registry import Capabilities, Paper, register

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

    model_config = frozen()
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

    @property
    def several_outputs(self) -> bool:
        return self.params.loss_window > 1  # type: ignore[attr-defined]

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
    ) -> ModelOutput:
        """The output of the final iterate; with a loss window, every kept iterate's
        output (``finish`` applied first, e.g. a post-transformer): the last one as
        ``logits``, the earlier ones as ``extra_logits``."""
        finish = finish or (lambda h: h)
        if kept:
            outs = [model.readout(finish(h), ctx) for h in kept]
            return ModelOutput(outs[-1], outs[:-1])
        return ModelOutput(model.readout(finish(final), ctx))


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
    training forward also reads out the last ``b`` iterates and returns them in its
    :class:`ModelOutput` (the Trainer averages the loss over them), as Yang et al. train.
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
    ) -> ModelOutput:
        window = self.window()
        h, kept = _loop(
            list(model.blocks), x, ctx, self.loops(self.training), self.params.inject_input, window
        )
        return self.read_out(model, h, kept, ctx)


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

    model_config = frozen()
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
        return layers_total(spec, need, how) or _window_problem(params)

    def parts(self) -> tuple[list[int], list[int], list[int]]:
        p = self.params
        idx = list(range(self.n_layers))
        return idx[: p.n_pre], idx[p.n_pre : p.n_pre + p.n_loop], idx[p.n_pre + p.n_loop :]

    def order(self, training: bool) -> list[int]:
        pre, loop, post = self.parts()
        return pre + loop * self.loops(training) + post

    def forward(
        self, model: Transformer, x: torch.Tensor, ctx: Context, inputs: torch.Tensor
    ) -> ModelOutput:
        pre, loop, post = self.parts()
        x = self.run(model.blocks, pre, x, ctx)
        body = [model.blocks[i] for i in loop]
        h, kept = _loop(
            body, x, ctx, self.loops(self.training), self.params.inject_input, self.window()
        )
        return self.read_out(model, h, kept, ctx, lambda h: self.run(model.blocks, post, h, ctx))
