"""``early_exit``: an exit head after every ``every``-th block, all trained jointly; in
evaluation each token (or example) stops at the first exit confident enough (ECO-M2F's
early-exit training with CALM's state propagation for per-token heads)."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import torch
from pydantic import BaseModel, Field
from torch import nn

from anyformer.components.base import Context
from anyformer.components.heads.base import build_head
from anyformer.model.depth.base import DepthSchedule, frozen
from anyformer.model.flops import forward_flops_per_token
from anyformer.model.output import ModelOutput
from anyformer.registry import Capabilities, Paper, register

if TYPE_CHECKING:
    from anyformer.model.transformer import Transformer
    from anyformer.spec import ModelSpec

ECO_M2F = Paper(
    "Efficient Transformer Encoders for Mask2Former-style models (ECO-M2F)", 2024, "Yao et al."
)


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

    model_config = frozen()
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


def _output(logits: torch.Tensor, executed: torch.Tensor, ctx: Context) -> ModelOutput:
    """An evaluation output with the blocks executed per example ``[B]`` or token
    ``[B, T]`` and their mean (over the real tokens, for per-token counts)."""
    if executed.dim() == 2 and ctx.padding_mask is not None:
        real = ctx.padding_mask.float()
        mean = (executed * real).sum() / real.sum().clamp(min=1)
    else:
        mean = executed.float().mean()
    return ModelOutput(logits, blocks_executed=executed, mean_blocks_executed=mean)


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

    Training (``model.train()``): every block runs; the forward's
    :class:`~anyformer.model.output.ModelOutput` holds the last exit's output as
    ``logits`` and the earlier exits', first to last, as ``extra_logits``; the Trainer
    minimises the mean of the objective over the exits (so every exit head learns
    jointly). The last exit is the model's own final norm and head.

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

    In evaluation the output's ``blocks_executed`` holds the blocks executed per example
    ``[B]`` or token ``[B, T]`` and ``mean_blocks_executed`` their mean (over real
    tokens). ``threshold`` is an attribute that may be changed on a trained model.

    Paper: ECO-M2F ("Efficient Transformer Encoders for Mask2Former-style models", Yao
    et al., 2024) step 1 (early-exit training) with a confidence threshold for the
    depth decision. Not supported: ECO-M2F's learned gating network (steps 2-3),
    regression heads with ``threshold < 1`` (no confidence), a KV cache (the depth varies).
    """

    params: EarlyExitParams

    def __init__(self, spec: ModelSpec, params: EarlyExitParams) -> None:
        super().__init__(spec, params)
        last = spec.n_layers - 1
        self.exit_after = sorted({i for i in range(last) if (i + 1) % params.every == 0} | {last})
        self.per_token = not spec.head_ref.entry.caps.pooled
        self.exits = nn.ModuleList()
        if not params.share_head:
            for i in self.exit_after[:-1]:
                layer, dims = spec.layer(i), spec.dims(i)
                final = layer.norm_placement.entry.caps.final_norm
                norm = layer.norm.entry.build(layer.norm.config, dims) if final else nn.Identity()
                self.exits.append(_Exit(norm, build_head(spec)))
        self.threshold = params.threshold

    @property
    def several_outputs(self) -> bool:
        return True

    @staticmethod
    def check_spec(params: EarlyExitParams, spec: ModelSpec) -> str | None:
        if params.every > spec.n_layers:
            return f"every={params.every} must be <= model.n_layers={spec.n_layers}"
        head = spec.resolved_head
        if params.threshold < 1 and head not in ("lm", "classify", "token_classify"):
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
    ) -> ModelOutput:
        if self.training:
            outs = []
            for i, block in enumerate(model.blocks):
                x = block(x, ctx)
                if i in self.exit_after:
                    outs.append(self._readout(model, len(outs), x, ctx))
            return ModelOutput(outs[-1], outs[:-1])
        if getattr(ctx, "cache", None) is not None:
            raise ValueError("depth='early_exit' cannot decode with a cache (the depth varies)")
        if self.threshold >= 1:  # never early: skip the intermediate heads
            x = self.run(model.blocks, self.order(False), x, ctx)
            executed = torch.full(x.shape[:-1], self.n_layers, device=x.device)
            if self.per_token:
                return _output(model.readout(x, ctx), executed, ctx)
            return _output(model.readout(x, ctx), executed[:, 0], ctx)
        if self.per_token:
            return self._per_token(model, x, ctx)
        return self._per_example(model, x, ctx)

    def _per_token(self, model: Transformer, x: torch.Tensor, ctx: Context) -> ModelOutput:
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
        assert result is not None
        return _output(result, executed, ctx)

    def _per_example(self, model: Transformer, x: torch.Tensor, ctx: Context) -> ModelOutput:
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
        assert result is not None
        return _output(result, executed, ctx)

    def forward_flops(self, model: Transformer, seq_len: int, training: bool = True) -> int:
        """Every block, the final head and every intermediate exit head (an upper bound in
        evaluation, where examples may stop early: see ``ModelOutput.blocks_executed``)."""
        extra = sum(forward_flops_per_token(e.head, seq_len) for e in self.exits)
        if self.params.share_head:
            extra = (len(self.exit_after) - 1) * forward_flops_per_token(model.head, seq_len)
        return super().forward_flops(model, seq_len) + extra
