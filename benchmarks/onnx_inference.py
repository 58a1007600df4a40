"""Inference speed of ONNX Runtime against eager PyTorch on the same anyformer model, in
one process.

Each model is exported with :func:`anyformer.interop.onnx.export_onnx`
(``torch.onnx.export(dynamo=True)``, dynamic batch and sequence, the exporter's graph
optimisation on) and checked against eager at several shapes (1e-4). Then a full forward
(logits of every position) of one fixed batch runs ``--iters`` times per contender per
round — eager under ``torch.inference_mode`` with ``--threads`` threads, ONNX Runtime's
CPU provider with ``intra_op_num_threads = inter_op_num_threads = --threads`` — in rounds
that alternate the two (the order flipped every round, so a machine slowing down
steadily costs both alike). Reported per model: the median milliseconds per forward over
rounds and the ratio eager / ONNX Runtime (above 1: ONNX Runtime is faster), the median
of the per-round ratios with their spread.

    python benchmarks/onnx_inference.py           # a table, writes results/
    python benchmarks/onnx_inference.py --quick   # a smoke run (tiny model, one round)
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from anyformer.training.throughput import benchmark_environment, save_benchmark

RESULTS = Path(__file__).resolve().parent / "results"

#: Each model: its anyformer spec and the batch it runs (``batch`` x ``seq`` tokens, or
#: ``batch`` images).
CONFIGS: dict[str, dict[str, Any]] = {
    # the quickstart's shape: a 2-layer decoder of width 64, rotary positions
    "quickstart_shape": dict(
        model=dict(vocab_size=32, d_model=64, n_layers=2, n_heads=4, position="rope", max_len=64),
        batch=8, seq=32,
    ),
    # GPT-2's block (learned positions, tanh GELU) at a small width and depth
    "gpt2_like_d256_L4": dict(
        model=dict(vocab_size=1024, d_model=256, n_layers=4, n_heads=4, position="learned",
                   ffn={"name": "mlp", "activation": "gelu_tanh"}, max_len=256),
        batch=4, seq=128,
    ),
    # Llama's block (rotary, RMSNorm, SwiGLU, grouped keys/values, no bias)
    "llama_like_d256_L4": dict(
        model=dict(vocab_size=1024, d_model=256, n_layers=4, n_heads=8, position="rope",
                   norm="rmsnorm", ffn={"name": "glu", "variant": "swiglu"},
                   attention={"name": "softmax", "kv_heads": 2}, bias=False, max_len=256),
        batch=4, seq=128,
    ),
    # the vision quickstart's ViT on 8x8 digits
    "vit_digits_shape": dict(
        model=dict(kind="encoder", embedder={"name": "patches", "patch_size": 2, "cls": True},
                   input_shape=[1, 8, 8], d_model=64, n_layers=3, n_heads=4, position="learned",
                   max_len=17, head="classify", pool="first", n_outputs=10),
        batch=64, seq=17,
    ),
}  # fmt: skip
QUICK: dict[str, dict[str, Any]] = {
    "tiny": dict(
        model=dict(vocab_size=16, d_model=16, n_layers=1, n_heads=2, position="learned", max_len=16),
        batch=2, seq=8,
    )
}  # fmt: skip


def build(cfg: dict[str, Any]) -> torch.nn.Module:
    from anyformer.model.transformer import build_model

    torch.manual_seed(0)
    return build_model(cfg["model"]).eval()


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def measure(cfg: dict[str, Any], rounds: int, iters: int, threads: int, folder: Path) -> dict:
    """Export and check, then time eager and ONNX Runtime in alternating rounds."""
    from anyformer.interop.onnx import check_onnx, example_inputs, export_onnx

    model = build(cfg)
    start = time.perf_counter()
    path = export_onnx(model, folder / "model.onnx", check=False)
    export_s = time.perf_counter() - start
    worst = check_onnx(model, path)
    x = example_inputs(model, cfg["batch"], cfg["seq"])
    sess = session(path, threads)
    name = sess.get_inputs()[0].name
    feed = {name: x.numpy()}
    with torch.inference_mode():
        diff = float(abs(sess.run(None, feed)[0] - model(x).numpy()).max())

    def eager() -> None:
        with torch.inference_mode():
            model(x)

    def onnx() -> None:
        sess.run(None, feed)

    contenders: dict[str, Callable[[], None]] = {"eager": eager, "onnxruntime": onnx}
    for fn in contenders.values():  # warm-up
        for _ in range(max(1, iters // 2)):
            fn()
    ms: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(rounds):
        order = list(contenders) if r % 2 == 0 else list(reversed(contenders))
        for key in order:
            t0 = time.perf_counter()
            for _ in range(iters):
                contenders[key]()
            ms[key].append(1000 * (time.perf_counter() - t0) / iters)
    ratios = [e / o for e, o in zip(ms["eager"], ms["onnxruntime"], strict=True)]
    return {
        "model": cfg["model"],
        "batch": cfg["batch"],
        "seq": cfg["seq"],
        "params": sum(p.numel() for p in model.parameters()),
        "export_s": export_s,
        "onnx_bytes": path.stat().st_size,
        "max_abs_difference_checked_shapes": worst,
        "max_abs_difference_benchmark_batch": diff,
        "ms_per_forward": {k: statistics.median(v) for k, v in ms.items()},
        "rounds_ms": ms,
        "ratio_eager_over_onnxruntime": statistics.median(ratios),
        "ratio_spread": [min(ratios), max(ratios)],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--iters", type=int, default=10, help="forwards per contender per round")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny model, one round, no file")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    rounds, iters = args.rounds, args.iters
    if args.quick:
        configs, rounds, iters = QUICK, 1, 2
    env = benchmark_environment(args.threads, ("onnx", "onnxruntime", "onnxscript"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in configs.items():
            results[name] = measure(cfg, rounds, iters, args.threads, Path(tmp) / name)
    print(f"threads {args.threads}, rounds {rounds} x {iters} forwards, load average "
          f"{env['machine']['loadavg'][0]:.1f}")  # fmt: skip
    print(
        f"{'model':22s} {'batch':>9s} {'eager ms':>9s} {'ORT ms':>9s} {'eager/ORT':>10s} {'spread':>13s}"
    )
    for name, res in results.items():
        ms = res["ms_per_forward"]
        lo, hi = res["ratio_spread"]
        print(
            f"{name:22s} {res['batch']:>4d}x{res['seq']:<4d} {ms['eager']:9.3f} "
            f"{ms['onnxruntime']:9.3f} {res['ratio_eager_over_onnxruntime']:9.2f}x "
            f"[{lo:.2f}, {hi:.2f}]"
        )
    env["machine"]["loadavg_after"] = list(os.getloadavg())
    record = {
        "benchmark": "onnx_inference",
        **env,
        "rounds": rounds,
        "iters": iters,
        "results": results,
        "note": "one process; eager and ONNX Runtime alternate each round; machine shared "
        "with other jobs (load average recorded before and after)",
    }
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, args.out, 'onnx_inference')}")
    return record


if __name__ == "__main__":
    main()
