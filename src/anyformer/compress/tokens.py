"""Token reduction in encoders at inference: attention-based pruning and token merging.

Between two blocks of a trained encoder the token sequence is shortened once, so the
blocks after it run on fewer tokens:

- ``prune`` (IA-RED², Pan et al., "IA-RED²: Interpretability-Aware Redundancy
  Reduction for Vision Transformers", 2021, here without its learned policy): the
  tokens that receive the least attention are dropped. Attention received is the
  softmax attention of the next block's own query/key projections (on its first norm of
  the hidden states, rotary positions applied), averaged over heads and over the
  queries: the first (CLS) token's query when the model pools the first token, every
  real query otherwise. The ``ceil(keep * T)`` most attended tokens stay, in order.
- ``merge`` (ToMe, Bolya et al., "Token Merging: Your ViT But Faster", 2023): bipartite
  soft matching. Tokens alternate between sets A and B; each A token is matched to its
  most similar B token (cosine similarity of the hidden states), and the ``T - ceil(keep
  * T)`` best-matched A tokens are merged into their B partners by size-weighted
  averaging (ToMe's proportional attention is not applied).

The first token is never removed when the head pools it (``model.pool: first``); padded
tokens are removed first. ``keep = 1`` runs the model unchanged. Models with a pooled
head (one output per row) only: per-token outputs need every token.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from anyformer.errors import SpecError
from anyformer.model.transformer import Transformer

METHODS = ("prune", "merge")


def check_reducible(model: Transformer, spec: Any, method: str, keep: float, at: int) -> None:
    """Refuse what token reduction cannot handle, naming the field or option."""
    if method not in METHODS:
        raise SpecError(f"--method '{method}' is not one of {', '.join(METHODS)}")
    if not 0.0 < keep <= 1.0:
        raise SpecError(f"--keep {keep:g} must lie in (0, 1]")
    if spec.model.kind != "encoder" or not model.pooled:
        raise SpecError(
            f"model.kind='{spec.model.kind}' (head {type(model.head).__name__}): token reduction "
            "needs an encoder with a pooled head (one output per row)"
        )
    if getattr(model.head, "how", None) not in ("mean", "first"):
        raise SpecError(
            f"model.pool='{spec.model.pool}': token reduction keeps the pooled tokens for "
            "model.pool mean or first only"
        )
    if not 0 <= at < len(model.blocks):
        raise SpecError(f"--at {at}: must be a block index in 0..{len(model.blocks) - 1}")
    if method == "prune" and not hasattr(model.blocks[at].mixer, "qkv"):
        raise SpecError(
            f"model.attention='{spec.model.attention.name}' has no qkv projection to score "
            "tokens by attention; use --method merge"
        )


def _gather(t: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    if t is None:
        return None
    if t.dim() == 3:
        return t.gather(1, index[..., None].expand(-1, -1, t.shape[-1]))
    return t.gather(1, index)


def attention_received(block: Any, x: torch.Tensor, ctx: Any, first_query: bool) -> torch.Tensor:
    """``[B, T]``: attention each token receives from the block's queries (see module)."""
    from anyformer.components.attention.qkv import project_qkv

    norm = getattr(block, "norm1", None)
    h = norm(x) if norm is not None else F.layer_norm(x, x.shape[-1:])
    q, k, _ = project_qkv(block.mixer.qkv, h)
    if k.shape[1] != q.shape[1]:  # grouped keys: repeat them per query head
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    pos = ctx.positions
    q, k = ctx.position.rotate(q, k, pos, pos)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    real = ctx.padding_mask
    if real is not None:
        scores = scores.masked_fill(~real[:, None, None, :], float("-inf"))
    attn = scores.softmax(-1).mean(1)  # [B, Tq, Tk]
    if first_query:
        return attn[:, 0]
    if real is None:
        return attn.mean(1)
    w = real.to(attn.dtype)
    return (attn * w[:, :, None]).sum(1) / w.sum(1, keepdim=True).clamp_min(1)


def _positions(ctx: Any, b: int, t: int) -> torch.Tensor:
    pos = ctx.positions
    return pos.expand(b, t) if pos.dim() == 1 else pos


def prune_tokens(x: torch.Tensor, ctx: Any, block: Any, k: int, protect_first: bool) -> tuple:
    """Keep the ``k`` tokens of ``x`` that receive the most attention (order kept)."""
    b, t, _ = x.shape
    score = attention_received(block, x, ctx, protect_first).clone()
    if ctx.padding_mask is not None:
        score = score.masked_fill(~ctx.padding_mask, -1.0)
    if protect_first:
        score[:, 0] = float("inf")
    index = score.topk(k, dim=1).indices.sort(dim=1).values
    new = dataclasses.replace(ctx, positions=_gather(_positions(ctx, b, t), index),
                              padding_mask=_gather(ctx.padding_mask, index))  # fmt: skip
    return _gather(x, index), new, None


def merge_tokens(
    x: torch.Tensor, ctx: Any, sizes: torch.Tensor, k: int, protect_first: bool
) -> tuple:
    """ToMe bipartite soft matching: merge ``T - k`` tokens of set A (even positions)
    into their most similar token of set B (odd positions), size-weighted."""
    b, t, d = x.shape
    r = t - k
    a_idx, b_idx = torch.arange(0, t, 2), torch.arange(1, t, 2)
    if r > len(a_idx) - int(protect_first):
        raise SpecError(f"--keep: merging can at most halve the tokens ({t} -> {t - len(a_idx)})")
    xn = F.normalize(x, dim=-1)
    sim = xn[:, a_idx] @ xn[:, b_idx].transpose(1, 2)  # [B, |A|, |B|]
    real = ctx.padding_mask
    if real is not None:  # padded A tokens go first, never into a padded B token
        sim = sim.masked_fill(~real[:, b_idx][:, None, :], -3.0)
        sim = torch.where(~real[:, a_idx][:, :, None], torch.full_like(sim, 3.0), sim)
    best, partner = sim.max(-1)  # [B, |A|]
    if protect_first:
        best[:, 0] = float("-inf")
    order = best.argsort(dim=1, descending=True)
    merged, kept_a = order[:, :r], order[:, r:].sort(dim=1).values
    xs = x * sizes[..., None]
    dst = xs[:, b_idx].clone()
    size_b = sizes[:, b_idx].clone()
    src_a = a_idx[merged]  # [B, r] token indices
    dst_j = partner.gather(1, merged)  # [B, r] indices into B
    dst.scatter_add_(
        1, dst_j[..., None].expand(-1, -1, d), xs.gather(1, src_a[..., None].expand(-1, -1, d))
    )
    size_b.scatter_add_(1, dst_j, sizes.gather(1, src_a))
    # the kept tokens, in their original order: surviving A tokens and every B token
    keep_idx = torch.cat([a_idx[kept_a], b_idx.expand(b, -1)], 1)
    order_idx = keep_idx.argsort(dim=1)
    keep_idx = keep_idx.gather(1, order_idx)
    values = torch.cat([xs.gather(1, a_idx[kept_a][..., None].expand(-1, -1, d)), dst], 1)
    new_sizes = torch.cat([sizes.gather(1, a_idx[kept_a]), size_b], 1).gather(1, order_idx)
    values = values.gather(1, order_idx[..., None].expand(-1, -1, d)) / new_sizes[..., None]
    new = dataclasses.replace(ctx, positions=_gather(_positions(ctx, b, t), keep_idx),
                              padding_mask=_gather(real, keep_idx))  # fmt: skip
    return values, new, new_sizes


@contextlib.contextmanager
def reduced(
    model: Transformer, keep: float, method: str = "prune", at: int = 1
) -> Iterator[list[int]]:
    """Run ``model`` with its tokens reduced to ``ceil(keep * T)`` before block ``at``
    (block indices of the depth schedule's order). Yields a list that collects the token
    count each forward pass leaves for the blocks after ``at``."""
    counts: list[int] = []
    protect = getattr(model.head, "how", None) == "first"
    depth = model.depth
    plain = depth.run

    def run(blocks: Any, order: list[int], x: torch.Tensor, ctx: Any) -> torch.Tensor:
        modules = list(blocks)
        sizes = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device)
        for step, i in enumerate(order):
            if step == at:
                k = max(1, math.ceil(keep * x.shape[1]))
                if k < x.shape[1]:
                    if method == "prune":
                        x, ctx, _ = prune_tokens(x, ctx, modules[i], k, protect)
                    else:
                        x, ctx, sizes = merge_tokens(x, ctx, sizes, k, protect)
                counts.append(int(x.shape[1]))
            x = modules[i](x, ctx)
        return x

    depth.run = run
    try:
        yield counts
    finally:
        depth.run = plain


def evaluate_keep_ratios(
    run_dir: Path | str,
    keeps: list[float],
    method: str = "prune",
    at: int = 1,
    eval_size: int | None = None,
) -> list[dict[str, Any]]:
    """Score a trained encoder run at each keep ratio (``id`` split and the others) with
    the wall time of the evaluation; writes ``token_reduction.json`` and
    ``token_reduction.md`` into the run folder. Returns the rows."""
    from anyformer.lab.loaded import load_run
    from anyformer.lab.run import build_objective
    from anyformer.spec import write_text_atomic
    from anyformer.tasks.packing import model_inputs

    run = load_run(run_dir)
    spec, model, task = run.spec, run.model, run.task
    for keep in keeps:
        check_reducible(model, spec, method, keep, at)
    objective = build_objective(spec, task)
    device = next(model.parameters()).device
    rows = []
    for keep in keeps:
        with reduced(model, keep, method, at) as counts, torch.no_grad():
            for split in task.splits:
                elapsed = [0.0]

                def predict(b: Any, elapsed: list[float] = elapsed) -> torch.Tensor:
                    b = b.to(device)
                    start = time.perf_counter()
                    out = model(b.inputs, **model_inputs(b))
                    elapsed[0] += time.perf_counter() - start
                    return out

                metrics = task.evaluate(
                    predict, split, eval_size or spec.train.eval_size, objective
                )
                scalars = {k: v for k, v in metrics.items()
                           if isinstance(v, (int, float)) and not isinstance(v, bool)}  # fmt: skip
                rows.append({"keep": keep, "method": method, "split": split,
                             "tokens_after": counts[-1] if counts else None,
                             "forward_s": elapsed[0], **scalars})  # fmt: skip
    base = {r["split"]: r["forward_s"] for r in rows if r["keep"] == max(keeps)}
    for r in rows:
        r["speedup"] = base[r["split"]] / max(r["forward_s"], 1e-12)
    folder = Path(run_dir)
    write_text_atomic(folder / "token_reduction.json", json.dumps(rows, indent=1) + "\n")
    head = task.headline
    lines = [f"# {spec.name}: token reduction ({method}, before block {at})\n",
             "Speed-up is against the largest keep ratio, forward passes only, one "
             "process; the machine may be loaded by other jobs.\n",
             f"| keep | split | tokens after | {head} | forward s | speed-up |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['keep']:g} | {r['split']} | {r['tokens_after']} | "
                     f"{r.get(head, float('nan')):.4g} | {r['forward_s']:.3f} | "
                     f"{r['speedup']:.2f}x |")  # fmt: skip
    write_text_atomic(folder / "token_reduction.md", "\n".join(lines) + "\n")
    return rows


__all__ = ["METHODS", "check_reducible", "evaluate_keep_ratios", "merge_tokens", "prune_tokens",
           "reduced"]  # fmt: skip
