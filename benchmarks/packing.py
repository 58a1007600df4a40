"""Padding-free (packed) vs padded training steps on a batch with long-tailed lengths.

A batch of ``--batch`` sequences has lengths drawn from a seeded long-tailed (Pareto)
distribution, so padding every row to the longest wastes most of the batch (the
padding ratio is printed and must be >= 50%). One training step (forward, backward,
AdamW) runs either on the padded batch or on the same sequences packed, whole, into
rows of the longest length (``anyformer.tasks.packing.pack_batch``: block-diagonal
attention, positions restarting per document; ByteTransformer, Zhai et al., 2023).

The padded baseline is the fastest correct padded step: a decoder needs no padding
mask when padding trails (the causal mask keeps it out of real tokens, so SDPA's fused
causal kernel runs); an encoder needs one. Throughput counts real tokens only. Rounds
alternate between the two forms; the median tokens/s and the ratio packed / padded are
reported (target >= 1.6x). Before timing, the two losses are checked equal.

    python benchmarks/packing.py            # decoder and encoder; writes results/
    python benchmarks/packing.py --quick    # a tiny smoke run (nothing written)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anyformer.model.transformer import build_model
from anyformer.objectives.losses import CausalLM, CausalLMParams
from anyformer.spec import TrainSpec
from anyformer.tasks.base import Batch
from anyformer.tasks.packing import model_inputs, pack_batch, random_padded_batch
from anyformer.training.throughput import benchmark_environment, save_benchmark
from anyformer.training.trainer import make_optimizer

RESULTS = Path(__file__).resolve().parent / "results"


def long_tailed_lengths(n: int, shortest: int, longest: int, seed: int) -> list[int]:
    """``n`` lengths ``shortest * (1 + Pareto(1.2))``, capped at ``longest``; the longest
    row is always present so that the padded batch has its worst-case width."""
    rng = np.random.default_rng(seed)
    lengths = np.minimum(shortest * (1 + rng.pareto(1.2, n)), longest).astype(int)
    lengths[0] = longest
    return [int(x) for x in lengths]


def make_step(model: nn.Module, batch: Batch, use_mask: bool) -> Callable[[], float]:
    """One training step on ``batch``; ``use_mask=False`` leaves out the padding mask
    (valid for a causal model whose padding trails)."""
    opt = make_optimizer(model, TrainSpec(lr=1e-4))
    objective = CausalLM(CausalLMParams(answer_only=True))  # counts loss_mask = real tokens
    kwargs = model_inputs(batch)
    if not use_mask:
        kwargs.pop("padding_mask")

    def step() -> float:
        loss = objective(model(batch.inputs, **kwargs), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def run_kind(kind: str, cfg: dict[str, int], batch: Batch, rounds: int, steps: int) -> dict:
    spec = dict(
        kind=kind,
        vocab_size=cfg["vocab"],
        d_model=cfg["d"],
        n_layers=cfg["layers"],
        n_heads=cfg["heads"],
        max_len=cfg["max_len"],
        attention="softmax",
        position="rope",
        head="lm",
        dropout=0.0,
    )
    packed, _ = pack_batch(batch)
    torch.manual_seed(0)
    models = {"padded": build_model(spec), "packed": build_model(spec)}
    models["packed"].load_state_dict(models["padded"].state_dict())
    steps_fn = {
        "padded": make_step(models["padded"], batch, use_mask=kind == "encoder"),
        "packed": make_step(models["packed"], packed, use_mask=True),
    }
    first = {name: fn() for name, fn in steps_fn.items()}  # also the warm-up
    if abs(first["padded"] - first["packed"]) > 1e-4:
        raise AssertionError(f"{kind}: packed and padded losses differ: {first}")
    real = int(batch.loss_mask.sum())
    speeds: dict[str, list[float]] = {name: [] for name in steps_fn}
    for _ in range(rounds):
        for name, fn in steps_fn.items():
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            speeds[name].append(real * steps / (time.perf_counter() - start))
    median = {name: statistics.median(v) for name, v in speeds.items()}
    return {
        "rows": {"padded": list(batch.inputs.shape), "packed": list(packed.inputs.shape)},
        "first_loss": first,
        "real_tokens_per_s": median,
        "rounds": speeds,
        "ratio_packed_vs_padded": median["packed"] / median["padded"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32, help="sequences per batch")
    parser.add_argument("--shortest", type=int, default=16)
    parser.add_argument("--longest", type=int, default=256)
    parser.add_argument("--kinds", default="decoder,encoder")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny model, one round")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = dict(layers=args.layers, d=args.d, heads=args.heads, vocab=args.vocab)
    shape = dict(batch=args.batch, shortest=args.shortest, longest=args.longest)
    rounds, steps = args.rounds, args.steps
    if args.quick:
        cfg = dict(layers=1, d=32, heads=4, vocab=64)
        shape = dict(batch=8, shortest=4, longest=32)
        rounds, steps = 1, 1
    cfg["max_len"] = shape["longest"]
    lengths = long_tailed_lengths(shape["batch"], shape["shortest"], shape["longest"], args.seed)
    batch = random_padded_batch(lengths, cfg["vocab"], torch.Generator().manual_seed(args.seed))
    padding_ratio = 1 - sum(lengths) / (len(lengths) * max(lengths))
    if padding_ratio < 0.5:
        raise AssertionError(f"padding ratio {padding_ratio:.0%} < 50%: lengths not skewed enough")
    print(f"model: {cfg}; batch: {shape}; threads {args.threads}")
    print(f"lengths: {sorted(lengths, reverse=True)}; padding ratio {padding_ratio:.1%}")
    results = {}
    for kind in args.kinds.split(","):
        results[kind] = res = run_kind(kind, cfg, batch, rounds, steps)
        speed = res["real_tokens_per_s"]
        print(
            f"{kind:8s} rows padded {res['rows']['padded']} packed {res['rows']['packed']}: "
            f"padded {speed['padded']:,.0f} tok/s, packed {speed['packed']:,.0f} tok/s, "
            f"ratio {res['ratio_packed_vs_padded']:.2f}x (target >= 1.6x)"
        )
    record = {
        "benchmark": "packing",
        **benchmark_environment(args.threads, ("numpy",)),
        "model": cfg,
        "batch": shape,
        "lengths": lengths,
        "padding_ratio": padding_ratio,
        "results": results,
        "target_ratio": 1.6,
    }
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, args.out, 'packing')}")
    return record


if __name__ == "__main__":
    main()
