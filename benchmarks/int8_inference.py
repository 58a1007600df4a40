"""int8 inference of a trained model against its float32 parent on the CPU, in one process.

Trains the quickstart task (copy) with a wider model (``--d-model``, 4 layers, FFN mult 4,
so the linear layers carry most of the work), quantizes it with ``anyformer quantize``'s
``int8-dynamic`` scheme (per-channel int8 weights, per-token int8 activations,
``torch._int_mm``) into a new run folder, and reports on the parent's own evaluation:

- the headline metric (exact match) per split and its relative drop;
- ``model.safetensors`` of parent and quantized run (size on disk);
- inference speed: seconds per pass over the ``id`` evaluation set, the float model, the
  int8 model and torchao's ``Int8DynamicActivationInt8WeightConfig`` on the same float
  weights taking turns (the order rotated every round, a warm-up pass first), at
  ``--threads`` threads; ratios from the summed times.

    python benchmarks/int8_inference.py            # trains (~minutes), writes results/
    python benchmarks/int8_inference.py --quick    # a smoke run (tiny untrained model)
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyformer.training.throughput import benchmark_environment, save_benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def torchao_int8(model: nn.Module) -> nn.Module | None:
    """A copy of ``model`` with torchao's dynamic int8 on its plain linear layers, or None
    when torchao is missing or refuses."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        return None
    twin = copy.deepcopy(model)
    try:
        quantize_(
            twin,
            Int8DynamicActivationInt8WeightConfig(),
            filter_fn=lambda m, _: type(m) is nn.Linear,
        )
    except Exception:  # noqa: BLE001 - an optional comparison only
        return None
    return twin


@torch.no_grad()
def interleaved(models: dict[str, nn.Module], batches: list[Any], rounds: int) -> dict[str, Any]:
    """Seconds per pass over ``batches`` of each model, taking turns, order rotated."""
    from anyformer.compress.quantize import forward

    names = list(models)
    for m in models.values():
        for b in batches:
            forward(m, b)
    per_round: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for k in order:
            start = time.perf_counter()
            for b in batches:
                forward(models[k], b)
            per_round[k].append(time.perf_counter() - start)
    total = {k: sum(v) for k, v in per_round.items()}
    return {
        "seconds_per_pass": {k: v / rounds for k, v in total.items()},
        "speedup_vs_float": {k: total["float32"] / v for k, v in total.items()},
        "rounds": rounds,
    }


def untrained_run(spec: Any, root: Path) -> Path:
    """A run folder of ``spec`` with its initial weights as checkpoint (``--quick``)."""
    from anyformer.lab.run import SPEC_FILE, prepare_model, resolve
    from anyformer.training.checkpoint import save_checkpoint

    spec = resolve(spec)
    folder = root / "runs" / f"{spec.name}-{spec.hash}"
    folder.mkdir(parents=True)
    spec.save(folder / SPEC_FILE)
    model = prepare_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    save_checkpoint(folder / "checkpoint", 0, model, opt, {"spec_hash": spec.hash})
    return folder


def main(argv: list[str] | None = None) -> dict:
    import anyformer
    from anyformer.compress.quantize import load_float_run, quantize_run
    from anyformer.training.checkpoint import latest_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=250, help="training steps")
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny untrained model")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--runs", default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument(
        "--untrained",
        action="store_true",
        help="measure the initial weights (speed and size only; the metric drop says nothing)",
    )
    parser.add_argument(
        "--run", default=None, help="measure this trained run folder instead of training one"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.d_model, args.rounds = 4, 32, 2
    overrides = [
        f"model.d_model={args.d_model}",
        "model.n_layers=4",
        "model.n_heads=4",
        f"train.steps={args.steps}",
        f"train.eval_every={args.steps}",
        f"train.checkpoint_every={args.steps}",
        "train.lr=0.001",
        f"train.warmup_steps={min(100, args.steps // 10)}",
        f"train.eval_size={32 if args.quick else 256}",
    ]
    spec = anyformer.load_experiment("quickstart").with_overrides(overrides)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.runs) if args.runs else Path(tmp)
        start = time.perf_counter()
        run_dir = (
            untrained_run(spec, root)
            if args.quick
            else anyformer.train(spec, out=str(root / "runs")).dir
        )
        train_s = time.perf_counter() - start
        torch.set_num_threads(args.threads)  # training above used torch's default
        folder, r = quantize_run(run_dir, "int8-dynamic", out=root / "quantized")
        spec, parent, task, _, _ = load_float_run(run_dir)
        trained = json.loads((latest_checkpoint(run_dir / "checkpoint") / "state.json").read_text())
        from anyformer.lab.loaded import load_run

        models = {"float32": parent, "anyformer_int8": load_run(folder).model}
        ao = torchao_int8(parent)
        if ao is not None:
            models["torchao_int8"] = ao
        batches = task.eval_set("id", spec.train.eval_size)
        speed = interleaved(models, batches, args.rounds)
    comp = r["comparison"]
    print(f"trained {trained['step']} steps; threads {args.threads}")
    for split, c in comp.items():
        print(
            f"{split}: exact_match float32 {c['parent']:.4f}, int8 {c['quantized']:.4f} "
            f"(relative drop {c['relative_drop']:.2%})"
        )
    s = r["size_on_disk"]
    print(f"size on disk {s['parent_bytes']:,} -> {s['quantized_bytes']:,} ({s['ratio']:.2f}x)")
    for k, v in speed["speedup_vs_float"].items():
        print(f"{k:16s} {speed['seconds_per_pass'][k] * 1e3:8.1f} ms/pass  {v:5.2f}x float32")
    record = {
        **benchmark_environment(args.threads, ("torchao",)),
        "note": "a shared machine: other jobs ran alongside (see loadavg)",
        "model": spec.model.model_dump(mode="json", include={"d_model", "n_layers", "n_heads"}),
        "task": spec.task.name,
        "trained_steps": trained["step"],
        "train_seconds": None if args.run else train_s,
        "headline": r["headline"],
        "comparison": comp,
        "size_on_disk": s,
        "speed": speed,
        "eval_batches": len(batches),
        "targets": {"speedup": 1.8, "relative_drop": 0.01},
    }
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, RESULTS, 'int8_inference')}")
    return record


if __name__ == "__main__":
    main()
