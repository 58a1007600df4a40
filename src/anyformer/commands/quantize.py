"""``anyformer quantize RUN --scheme int8-dynamic|int8-static|int4-weight``: post-training
quantization of a trained run into a new run folder (:mod:`anyformer.compress.quantize`)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_quantize(args: argparse.Namespace) -> int:
    from rich.console import Console

    from anyformer.compress.quantize import quantize_run

    folder, r = quantize_run(
        args.run_dir,
        args.scheme,
        smooth=args.smooth,
        calibration=args.calibration_batches,
        out=args.out,
        group_size=args.group_size,
        kernel=args.kernel,
    )
    console = Console()
    h = r["headline"]
    for split, c in r["comparison"].items():
        drop = c["relative_drop"]
        console.print(
            f"{split}: {h} {c['parent']:.4g} -> {c['quantized']:.4g}"
            + (f" (relative drop {drop:.2%})" if drop is not None else "")
        )
    s, sp = r["size_on_disk"], r["speed"]
    console.print(
        f"size on disk {s['parent_bytes']:,} -> {s['quantized_bytes']:,} bytes "
        f"({s['ratio']:.2f}x smaller); speed {sp['ratio']:.2f}x the parent's "
        f"({sp['threads']} thread(s))"
        + (f"; int8 kernel {r['kernel']['kernel']}" if r.get("kernel") else "")
        + f"\nrun folder: [bold]{folder}[/bold]  (report.md; "
        f"anyformer generate {folder} works on it)"
    )
    return 0


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--smooth {text!r} is not a number in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--smooth {value} is outside [0, 1]")
    return value


def add_parser(sub: Any) -> argparse.ArgumentParser:
    from anyformer.cli_checks import positive_int

    p = sub.add_parser(
        "quantize",
        help="post-training int8/int4 quantization of a run into a new run folder",
    )
    p.add_argument("run_dir", help="the trained run's folder, e.g. runs/quickstart-1a2b3c4d")
    p.add_argument(
        "--scheme",
        required=True,
        choices=["int8-dynamic", "int8-static", "int4-weight"],
        help="int8 weights with per-token (dynamic) or calibrated (static) int8 "
        "activations, or group-wise int4 weights only",
    )
    p.add_argument(
        "--smooth",
        type=_fraction,
        default=None,
        metavar="ALPHA",
        help="SmoothQuant re-parameterisation first, migration strength ALPHA (e.g. 0.5)",
    )
    p.add_argument(
        "--calibration-batches",
        type=positive_int("--calibration-batches"),
        default=8,
        help="training batches to calibrate on (default 8)",
    )
    p.add_argument(
        "--group-size",
        type=positive_int("--group-size"),
        default=32,
        help="input channels per int4 scale (int4-weight; default 32)",
    )
    p.add_argument(
        "--kernel",
        choices=["auto", "int_mm", "fbgemm"],
        default="auto",
        help="int8-dynamic's product: torch._int_mm with per-token activations, PyTorch's "
        "fbgemm dynamic linear (per-tensor activations), or auto: the faster of the two, "
        "measured on the calibration batches (default)",
    )
    p.add_argument("--out", default=None, help="parent of the new folder (default: the run's)")
    p.set_defaults(func=cmd_quantize)
    return p
