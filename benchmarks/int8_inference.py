"""int8 inference of a trained model against its float32 parent on the CPU, in one process.

Trains a wide ViT on the vision quickstart's task (scikit-learn's 8x8 digits; ``id``:
held-out digits, ``ood``: rotated ones) -- ``--d-model`` 512, ``--layers`` 2, FFN mult 4,
4x4-pixel patches and a CLS token (5 tokens), so the linear layers carry most of the work
-- for ``--steps`` steps (accuracy checked well above chance before quantizing), quantizes
it with ``anyformer quantize``'s ``int8-dynamic`` scheme (per-channel int8 weights,
per-token int8 activations, ``torch._int_mm``) into a new run folder, and reports on the
parent's own evaluation:

- the headline metric (accuracy) per split and its relative drop;
- ``model.safetensors`` of parent and quantized run (size on disk);
- inference speed: seconds per pass over the first ``--time-batches`` batches of the
  ``id`` evaluation set, the float model, the int8 model, torchao's
  ``Int8DynamicActivationInt8WeightConfig`` on the same float weights, and
  the same int8 model with its ``fbgemm`` kernel (``quantize --kernel fbgemm``:
  ``quantized::linear_dynamic`` on the int8 model's own weights
  and scales prepacked, activations quantized per tensor to 7-bit uint8, not per token)
  taking turns (the order rotated every round, a warm-up pass first), at ``--threads``
  threads; ratios from the summed times. The fbgemm twin's accuracy is reported too;
- the same kernels on the model's own linear shapes alone (``kernels``): float
  ``F.linear``, the per-token quantization alone, ``torch._int_mm`` alone, the whole
  ``Int8Linear`` and fbgemm's, as ratios of float's time.

Why not the copy task of the quickstart (the first version of this benchmark): a
d_model-512 4-layer decoder at lr 1e-3 reached only 8% exact match after 150 steps on
copies of 1-8 symbols, at 1.5-4 s a step on this shared 2-core machine; the digits ViT
learns in a few minutes.

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


def fbgemm_twin(quantized: nn.Module) -> nn.Module | None:
    """A copy of the int8 model whose dynamic :class:`Int8Linear` layers run the library's
    ``fbgemm`` kernel (PyTorch's ``quantized::linear_dynamic`` on the same int8 weights
    and scales, activations quantized per tensor, 7-bit), or None where it is missing."""
    from anyformer.compress.qmodel import set_kernel

    twin = copy.deepcopy(quantized)
    try:
        set_kernel(twin, "fbgemm", {})
    except ValueError:  # no fbgemm in this build of torch
        return None
    return twin


@torch.no_grad()
def kernels(model: nn.Module, rows: int, rounds: int) -> dict[str, Any]:
    """Per distinct linear shape of ``model`` (``[rows, in] @ [in, out]``): seconds of the
    float layer and ratios (float's time / each one's) of the per-token quantization
    alone, ``torch._int_mm`` alone, the whole :class:`Int8Linear` and fbgemm's dynamic
    linear, taking turns as :func:`interleaved` does."""
    from anyformer.compress.qlinear import Int8Linear, quantize_per_token

    shapes = sorted({(m.in_features, m.out_features) for m in model.modules()
                     if type(m) is nn.Linear})  # fmt: skip
    out = {}
    for inp, outf in shapes:
        lin = nn.Linear(inp, outf)
        q = Int8Linear.from_linear(lin)
        x = torch.randn(rows, inp)
        xq, _ = quantize_per_token(x)
        wt = q.weight_int8.t()
        fns: dict[str, Any] = {
            "float32": lambda x=x, lin=lin: lin(x),
            "per_token_quantize": lambda x=x: quantize_per_token(x),
            "int_mm": lambda xq=xq, wt=wt: torch._int_mm(xq, wt),
            "Int8Linear": lambda x=x, q=q: q(x),
        }
        twin = fbgemm_twin(nn.Sequential(q))
        if twin is not None:
            fns["fbgemm_dynamic"] = lambda x=x, f=twin[0]: f(x)
        total = {k: 0.0 for k in fns}
        for f in fns.values():
            f()
        names = list(fns)
        for r in range(rounds):
            for k in names[r % len(names) :] + names[: r % len(names)]:
                start = time.perf_counter()
                fns[k]()
                total[k] += time.perf_counter() - start
        out[f"{rows}x{inp}->{outf}"] = {
            "float32_s": total["float32"] / rounds,
            "speedup_vs_float": {k: total["float32"] / v for k, v in total.items()},
        }
    return out


def cpu_flags() -> list[str]:
    """The int8-relevant instruction sets this CPU reports (Linux only)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines()
                  if ln.startswith("flags")), [])  # fmt: skip
    return sorted(f for f in flags if "avx" in f or "vnni" in f or "amx" in f)


def main(argv: list[str] | None = None) -> dict:
    import anyformer
    from anyformer.compress.quantize import evaluate, load_float_run, quantize_run
    from anyformer.lab.loaded import load_run
    from anyformer.training.checkpoint import latest_checkpoint

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps")
    parser.add_argument("--d-model", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--time-batches", type=int, default=2, help="id batches timed")
    parser.add_argument("--eval-size", type=int, default=128, help="examples per split")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--min-accuracy", type=float, default=0.5,
                        help="refuse to quantize a parent below this id accuracy")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="tiny untrained model")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--runs", default=None, help="where the runs go (default: a temp dir)")
    parser.add_argument(
        "--run", default=None, help="measure this trained run folder instead of training one"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.d_model, args.rounds, args.eval_size = 4, 32, 2, 32
    overrides = [
        f"model.d_model={args.d_model}",
        f"model.n_layers={args.layers}",
        "model.n_heads=8" if args.d_model % 64 == 0 else "model.n_heads=4",
        "model.embedder.patch_size=4",
        "model.max_len=5",
        f"train.steps={args.steps}",
        f"train.eval_every={args.steps}",
        f"train.checkpoint_every={args.steps}",
        "train.lr=0.001",
        f"train.warmup_steps={max(1, args.steps // 10)}",
        f"train.eval_size={args.eval_size}",
        f"train.threads={args.threads}",
    ]
    spec = anyformer.load_experiment("vision_quickstart").with_overrides(overrides)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.runs) if args.runs else Path(tmp)
        start = time.perf_counter()
        if args.run:
            run_dir = Path(args.run)
        elif args.quick:
            run_dir = untrained_run(spec, root)
        else:
            run_dir = anyformer.train(spec, out=str(root / "runs")).dir
        train_s = time.perf_counter() - start
        spec, parent, task, objective, _ = load_float_run(run_dir)
        head = task.headline
        if not args.quick:
            before = evaluate(parent, task, objective, spec.train.eval_size)["id"][head]
            if before < args.min_accuracy:
                raise SystemExit(f"the parent's id {head} is {before:.3f} < "
                                 f"--min-accuracy {args.min_accuracy}: train longer")  # fmt: skip
        start = time.perf_counter()
        folder, r = quantize_run(
            run_dir, "int8-dynamic", out=root / "quantized", speed_rounds=1, kernel="int_mm"
        )
        quantize_s = time.perf_counter() - start
        trained = json.loads((latest_checkpoint(run_dir / "checkpoint") / "state.json").read_text())
        int8 = load_run(folder).model
        models = {"float32": parent, "anyformer_int8": int8}
        ao = torchao_int8(parent)
        if ao is not None:
            models["torchao_int8"] = ao
        fb = fbgemm_twin(int8)
        fbgemm_quality = None
        if fb is not None:
            models["fbgemm_int8"] = fb
            fbgemm_quality = {k: v[head] for k, v in
                              evaluate(fb, task, objective, spec.train.eval_size).items()}  # fmt: skip
        batches = task.eval_set("id", spec.train.eval_size)[: args.time_batches]
        speed = interleaved(models, batches, args.rounds)
        rows = sum(int(b.inputs.shape[0]) for b in batches[:1]) * spec.model.max_len
        kernel = kernels(parent, rows, max(3, args.rounds))
    comp = r["comparison"]
    print(f"trained {trained['step']} steps ({train_s:.0f} s); threads {args.threads}; "
          f"CPU flags {' '.join(cpu_flags())}")  # fmt: skip
    for split, c in comp.items():
        fq = f", fbgemm {fbgemm_quality[split]:.4f}" if fbgemm_quality else ""
        print(f"{split}: {head} float32 {c['parent']:.4f}, int8 {c['quantized']:.4f} "
              f"(relative drop {c['relative_drop']:.2%}){fq}")  # fmt: skip
    s = r["size_on_disk"]
    print(f"size on disk {s['parent_bytes']:,} -> {s['quantized_bytes']:,} ({s['ratio']:.2f}x)")
    for k, v in speed["speedup_vs_float"].items():
        print(f"{k:16s} {speed['seconds_per_pass'][k] * 1e3:8.1f} ms/pass  {v:5.2f}x float32")
    for shape, kr in kernel.items():
        ratios = ", ".join(f"{k} {v:.2f}x" for k, v in kr["speedup_vs_float"].items())
        print(f"kernel {shape}: float {kr['float32_s'] * 1e3:.1f} ms; {ratios}")
    record = {
        **benchmark_environment(args.threads, ("torchao",)),
        "note": "a shared machine: other jobs ran alongside (see loadavg)",
        "cpu_flags": cpu_flags(),
        "quick": args.quick,
        "experiment": "vision_quickstart",
        "model": spec.model.model_dump(mode="json", include={"d_model", "n_layers", "n_heads"}),
        "patch_size": 4,
        "task": spec.task.name,
        "trained_steps": trained["step"],
        "train_seconds": None if args.run else train_s,
        "quantize_seconds": quantize_s,
        "headline": r["headline"],
        "comparison": comp,
        "fbgemm_int8_quality": fbgemm_quality,
        "size_on_disk": s,
        "speed": speed,
        "timed_batches": len(batches),
        "timed_examples": sum(int(b.inputs.shape[0]) for b in batches),
        "kernels": kernel,
        "eval_size": spec.train.eval_size,
        "targets": {"speedup": 1.8, "relative_drop": 0.01},
    }
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, RESULTS, 'int8_inference')}")
    return record


if __name__ == "__main__":
    main()
