"""Prompt tuning: learned virtual tokens before the inputs of a frozen model.

"The Power of Scale for Parameter-Efficient Prompt Tuning", Lester et al., 2021:
``n_tokens`` vectors ``P [n, d_model]`` are prepended to the embedder's output (before
the position scheme, so they take positions ``0 .. n-1`` and the inputs follow); the
padding mask gains ``n`` real positions in front; before the readout (final norm and
head) the ``n`` positions are dropped again, so the outputs have the shape and the
positions of the model's without prompts and pooled heads pool over the real inputs
only. ``P`` starts as the embeddings of random vocabulary tokens when the embedder has
an embedding table (the paper's "sampled vocabulary" initialisation; after a parent's
backbone is loaded, its pretrained table: :func:`init_prompt`), else
``N(0, init_std)``. Packed rows, caches, prefix LMs and encoder–decoders are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn

from anyformer.errors import SpecError


class Prompt(nn.Module):
    """The learned prompt ``tokens [n, d_model]`` of a prompt-tuned model."""

    def __init__(self, n_tokens: int, d_model: int) -> None:
        super().__init__()
        self.tokens = nn.Parameter(torch.zeros(n_tokens, d_model))


@torch.no_grad()
def init_prompt(model: Any) -> None:
    """Set ``model.prompt`` to the embeddings of ``n_tokens`` vocabulary ids drawn with a
    fixed generator from the model's embedding table as it is now (called again after a
    parent's backbone is loaded, so the prompt starts from the pretrained embeddings),
    else to ``N(0, init_std)``."""
    prompt = model.prompt
    table = getattr(model.embed, "weight", None)
    if isinstance(table, torch.Tensor) and table.dim() == 2:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(0, table.shape[0], (prompt.tokens.shape[0],), generator=g)
        prompt.tokens.copy_(table.detach()[ids.to(table.device)])
    else:
        nn.init.normal_(prompt.tokens, 0.0, model.spec.init_std)


def add_prompt(model: Any, n_tokens: int) -> Prompt:
    """Attach a :class:`Prompt` as ``model.prompt`` and the hooks that use it."""
    spec = model.spec
    if spec.kind not in ("decoder", "encoder"):
        raise SpecError(
            f"adapter.kind=prompt: model.kind={spec.kind} is not supported (decoder, encoder)"
        )
    prompt = Prompt(n_tokens, spec.d_model).to(next(model.parameters()).device)
    model.prompt = prompt
    init_prompt(model)
    n = n_tokens

    def before(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        for key in ("segments", "positions", "cache", "prefix_len"):
            if kwargs.get(key) is not None:
                raise SpecError(f"adapter.kind=prompt: a forward with {key} is not supported")
        inputs = args[0]
        if len(args) > 1:
            kwargs["padding_mask"], args = args[1], args[:1]
        mask = kwargs.get("padding_mask")
        if mask is not None:
            front = torch.ones(mask.shape[0], n, dtype=torch.bool, device=mask.device)
            kwargs["padding_mask"] = torch.cat([front, mask.bool()], dim=1)
        return (inputs, *args[1:]), kwargs

    def after_embed(module: nn.Module, args: Any, out: torch.Tensor) -> torch.Tensor:
        tokens = prompt.tokens.to(out.dtype).expand(out.shape[0], -1, -1)
        return torch.cat([tokens, out], dim=1)

    readout = model.readout

    def readout_without_prompt(x: torch.Tensor, ctx: Any, *rest: Any, **kw: Any) -> torch.Tensor:
        mask = ctx.padding_mask  # the prompt's n real positions, then the inputs' mask
        ctx = dataclasses.replace(ctx, padding_mask=None if mask is None else mask[:, n:])
        return readout(x[:, n:], ctx, *rest, **kw)

    model.register_forward_pre_hook(before, with_kwargs=True)
    model.embed.register_forward_hook(after_embed)
    model.readout = readout_without_prompt
    return prompt
