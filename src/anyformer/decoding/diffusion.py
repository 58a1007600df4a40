"""Sampling from a masked diffusion language model by iterative unmasking.

:func:`unmask_sample` starts from rows that are all mask tokens (after an optional
prompt), and over ``steps`` steps unmasks them: at each step the model (a bidirectional
encoder trained with ``masked_diffusion``, "Simple and Effective Masked Diffusion
Language Models", Sahoo et al., 2024) predicts every position, a token is chosen for
each masked position (the most likely at ``temperature=0``, else sampled from
``softmax(logits / temperature)``; never the mask token), and a fixed number of masked
positions take their token: ``floor(M (s + 1) / steps) - floor(M s / steps)`` at step
``s`` for ``M`` masked positions, so every position is unmasked by the last step. Which
ones: the most confident (highest probability of the chosen token; ``order=
"confidence"``, as MaskGIT and LLaDA's low-confidence remasking) or uniformly at random
(``order="random"``, the ancestral sampler's order with its counts fixed). With one step
per token, greedy and confidence-ordered, it is greedy unmasking: one token at a time,
the most confident. Unmasked tokens stay (MDLM's carry-over).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from anyformer.errors import UserError


@torch.no_grad()
def unmask_sample(
    model: nn.Module,
    length: int,
    mask_token: int,
    *,
    n: int = 1,
    prompt: torch.Tensor | None = None,
    steps: int | None = None,
    temperature: float = 0.0,
    order: Literal["confidence", "random"] = "confidence",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``[n, length]`` token ids sampled from ``model`` (which maps ``[n, length]`` ids to
    ``[n, length, V]`` logits) by unmasking (module docstring). ``prompt`` ``[n, P]``
    fixes the first ``P`` tokens; ``steps`` defaults to one per masked token."""
    device = next(model.parameters()).device
    x = torch.full((n, length), mask_token, dtype=torch.long, device=device)
    start = 0
    if prompt is not None:
        if prompt.dim() != 2 or prompt.shape[0] != n or prompt.shape[1] > length:
            raise UserError(
                f"prompt must be [n={n}, P <= length={length}] token ids, got {tuple(prompt.shape)}"
            )
        start = prompt.shape[1]
        x[:, :start] = prompt.to(device)
    masked_total = length - start
    steps = masked_total if steps is None else steps
    if masked_total == 0:
        return x
    if not 1 <= steps <= masked_total:
        raise UserError(f"steps={steps} must be between 1 and the {masked_total} masked tokens")
    if order not in ("confidence", "random"):
        raise UserError(f"order='{order}' is not one of: confidence, random")
    for s in range(steps):
        count = masked_total * (s + 1) // steps - masked_total * s // steps
        logits = model(x).float()
        logits[..., mask_token] = float("-inf")
        if temperature == 0:
            probs = logits.softmax(dim=-1)
            chosen = probs.argmax(dim=-1)
        else:
            probs = (logits / temperature).softmax(dim=-1)
            flat = probs.reshape(-1, probs.shape[-1]).cpu()
            chosen = torch.multinomial(flat, 1, generator=generator).reshape(n, length).to(device)
        confidence = probs.gather(-1, chosen[..., None])[..., 0]
        if order == "random":
            confidence = torch.rand((n, length), generator=generator).to(device)
        still = x == mask_token
        still[:, :start] = False
        confidence = confidence.masked_fill(~still, float("-inf"))
        pick = confidence.topk(count, dim=-1).indices
        rows = torch.arange(n, device=device)[:, None]
        x[rows, pick] = chosen[rows, pick]
    return x
