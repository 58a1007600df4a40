"""``anyformer fuse-models RUN_A RUN_B --method ot|average``: one model from two runs of
the same model spec: B's residual stream (on a training batch's activations), then its
attention heads and FFN neurons (on their weights) aligned to A's by optimal transport, then averaged (``ot``, Singh & Jaggi 2020; Imfeld et al.
2024), or averaged as they are (``average``). Writes a new run folder whose report
compares the fused model with both parents on A's evaluation sets."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from anyformer.compress.merge_models import fuse_runs

    dest, record = fuse_runs(
        args.run_a, args.run_b, args.method, args.alpha, args.out, args.align == "residual"
    )
    for who, rows in record["results"].items():
        cells = ", ".join(f"{split} loss {r.get('loss', float('nan')):.4g}"
                          for split, r in rows.items())  # fmt: skip
        print(f"{who}: {cells}")
    print(f"fused ({args.method}) run: {dest}")
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "fuse-models", help="fuse two runs (optimal-transport alignment, then averaging)",
        description=__doc__,
    )  # fmt: skip
    parser.add_argument("run_a", help="the first run's folder (its units are the reference)")
    parser.add_argument("run_b", help="the second run's folder (same model spec)")
    parser.add_argument("--method", default="ot", choices=["ot", "average"])
    parser.add_argument(
        "--align", default="residual", choices=["residual", "units"],
        help="ot: align the residual stream (on a training batch's activations) before the "
        "heads and FFN neurons (residual, the default), or the heads and neurons only",
    )  # fmt: skip
    parser.add_argument("--alpha", type=float, default=0.5, help="weight of B (default 0.5)")
    parser.add_argument("--out", default=None, help="folder for the new run (default: A's parent)")
    parser.set_defaults(func=run)
    return parser
