"""Speed–accuracy curve of token reduction (``anyformer reduce-tokens``) on a trained ViT.

Trains the vision quickstart (scikit-learn's 8x8 digits, ``id``: held-out digits, ``ood``:
the same digits rotated by 15-30 degrees) with 1x1-pixel patches, so each image is 64
pixel tokens and a CLS token (65 tokens; the quickstart's 2x2 patches give 17, too few
for a shorter sequence to pay for the reduction), then, in one process, evaluates the
trained model with its tokens reduced before block ``--at`` to ``ceil(keep * T)`` for each
keep ratio and both methods of :mod:`anyformer.compress.tokens`: attention-based pruning
(IA-RED²-style) and ToMe merging. ``merge`` can at most halve the tokens in one step, so
``keep < 0.5`` is recorded as refused for it.

Per variant: accuracy (the headline) on ``id`` and ``ood`` and the tokens the later blocks
see; inference time: one pass over the ``id`` evaluation set per variant, every variant
taking turns (a warm-up pass each first, the order rotated every round so every variant
takes every place equally often: :func:`anyformer.training.cost.interleaved_speed`), at
``--threads`` threads; speed-ups from the summed times against keep = 1.

    python benchmarks/token_reduction.py            # trains (~minutes), writes results/
    python benchmarks/token_reduction.py --quick    # a smoke run (tiny model, few steps)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from anyformer.training.throughput import benchmark_environment, save_benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def variants(keeps: list[float]) -> list[tuple[str, float]]:
    """(method, keep) pairs: keep = 1 once (the unreduced model), then both methods."""
    out = [("none", 1.0)]
    for method in ("prune", "merge"):
        out += [(method, k) for k in keeps if k < 1.0]
    return out


def label(method: str, keep: float) -> str:
    return "keep=1" if method == "none" else f"{method}@{keep:g}"


def main(argv: list[str] | None = None) -> dict:
    import anyformer
    from anyformer.compress.tokens import check_reducible, reduced
    from anyformer.errors import SpecError
    from anyformer.lab.loaded import load_run
    from anyformer.lab.run import build_objective
    from anyformer.tasks.packing import model_inputs
    from anyformer.training.cost import interleaved_speed

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=600, help="training steps")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--patch-size", type=int, default=1, choices=[1, 2, 4])
    parser.add_argument("--at", type=int, default=1, help="block before which to reduce")
    parser.add_argument("--keeps", default="1,0.75,0.5,0.25")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny model, few steps")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--run", default=None, help="measure this trained run folder instead")
    parser.add_argument("--runs", default=None, help="where the run goes (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.d_model, args.layers, args.rounds = 20, 16, 2, 1
    keeps = sorted({float(k) for k in args.keeps.split(",")} | {1.0}, reverse=True)
    tokens = (8 // args.patch_size) ** 2 + 1
    overrides = [
        f"model.embedder.patch_size={args.patch_size}",
        f"model.max_len={tokens}",
        f"model.d_model={args.d_model}",
        f"model.n_layers={args.layers}",
        f"train.steps={args.steps}",
        f"train.eval_every={args.steps}",
        f"train.checkpoint_every={args.steps}",
        f"train.warmup_steps={min(50, max(1, args.steps // 10))}",
        f"train.threads={args.threads}",
        "train.lr=0.002",
    ] + (["train.eval_size=64", "train.batch_size=16"] if args.quick else [])
    spec = anyformer.load_experiment("vision_quickstart").with_overrides(overrides)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run_dir = Path(args.run) if args.run else anyformer.train(spec, out=args.runs or tmp).dir
        train_s = time.perf_counter() - start
        run = load_run(run_dir)
    spec, model, task = run.spec, run.model.eval(), run.task
    objective = build_objective(spec, task)
    size = spec.train.eval_size
    head = task.headline

    quality: dict[str, Any] = {}
    refused: dict[str, str] = {}
    kept: list[tuple[str, float]] = []
    for method, keep in variants(keeps):
        name = label(method, keep)
        m = "prune" if method == "none" else method
        scores: dict[str, float] = {}
        try:
            check_reducible(model, spec, m, keep, args.at)
            with reduced(model, keep, m, args.at) as counts, torch.no_grad():
                for split in task.splits:
                    metrics = task.evaluate(
                        lambda b: model(b.inputs, **model_inputs(b)), split, size, objective
                    )
                    scores[split] = float(metrics[head])
        except SpecError as exc:
            refused[name] = str(exc)
            continue
        kept.append((method, keep))
        quality[name] = {"method": method, "keep": keep, "tokens_after": counts[-1], **scores}

    batches = task.eval_set("id", size)
    n_tokens = sum(int(b.inputs.shape[0]) for b in batches) * tokens

    def stepper(method: str, keep: float) -> Any:
        m = "prune" if method == "none" else method

        @torch.no_grad()
        def step(_: int) -> tuple[int, float]:
            with reduced(model, keep, m, args.at):
                for b in batches:
                    model(b.inputs, **model_inputs(b))
            return n_tokens, 0.0

        return step

    speed = interleaved_speed(
        {label(m, k): stepper(m, k) for m, k in kept}, rounds=args.rounds, steps=1
    )
    base = speed["keep=1"]["tokens_per_s"]
    for name, s in speed.items():
        quality[name]["seconds_per_pass"] = n_tokens / s["tokens_per_s"]
        quality[name]["speedup_vs_keep1"] = s["tokens_per_s"] / base
        rounds_s = [n_tokens / v for v in s["rounds_tokens_per_s"]]
        quality[name]["spread_s"] = [min(rounds_s), max(rounds_s)]

    print(f"trained {spec.train.steps} steps in {train_s:.0f} s; {tokens} tokens, "
          f"reduced before block {args.at} of {args.layers}; threads {args.threads}")  # fmt: skip
    for name, q in quality.items():
        print(f"{name:12s} tokens {q['tokens_after']:3d}  {head} id {q['id']:.4f} "
              f"ood {q['ood']:.4f}  {q['seconds_per_pass'] * 1e3:7.1f} ms/pass "
              f"{q['speedup_vs_keep1']:5.2f}x")  # fmt: skip
    for name, why in refused.items():
        print(f"{name:12s} refused: {why}")
    record = {
        **benchmark_environment(args.threads),
        "note": "a shared machine: other jobs ran alongside (see loadavg)",
        "quick": args.quick,
        "experiment": "vision_quickstart",
        "model": spec.model.model_dump(mode="json", include={"d_model", "n_layers", "n_heads"}),
        "patch_size": args.patch_size,
        "tokens": tokens,
        "reduce_before_block": args.at,
        "trained_steps": spec.train.steps,
        "train_seconds": None if args.run else train_s,
        "headline": head,
        "eval_size": size,
        "eval_batches": len(batches),
        "rounds": len(speed["keep=1"]["rounds_tokens_per_s"]),
        "variants": quality,
        "refused": refused,
    }
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, RESULTS, 'token_reduction')}")
    return record


if __name__ == "__main__":
    main()
