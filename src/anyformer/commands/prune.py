"""``anyformer prune RUN``: remove attention heads and FFN neurons of a trained run
(:mod:`anyformer.compress.prune`), writing a new run folder."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from anyformer.compress.prune import prune_run

    folder, c = prune_run(
        args.run_dir, args.heads, args.ffn, args.method, args.recover_steps, args.out
    )
    h = c["headline"]
    lines = [
        f"pruned ({c['method']}): {c['params']['parent']:,} -> {c['params']['pruned']:,} "
        f"parameters, sparsity {c['sparsity']:.1%}"
    ]
    for split, m in c["metrics"].items():
        p, q = m["parent"].get(h, float("nan")), m["pruned"].get(h, float("nan"))
        lines.append(f"  {split}: {h} {p:.4g} -> {q:.4g}")
    lines.append(f"run folder: [bold]{folder}[/bold]  (prune.md compares it with its parent)")
    Console().print("\n".join(lines))
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "prune",
        help="remove attention heads and FFN neurons of a trained run (a new run folder)",
        description=(
            "Rank attention heads (Michel et al. 2019) and FFN neurons (Molchanov et al. "
            "2017) by importance on training batches and remove the least important, or "
            "with --method magnitude zero as many of the smallest weights (masked, for "
            "comparison); optionally fine-tune to recover. Writes a run folder whose "
            "prune.md compares it with its parent on the parent's evaluation."
        ),
    )
    p.add_argument("run_dir", help="a trained run folder")
    p.add_argument("--heads", type=float, default=0.25, help="fraction of heads removed")
    p.add_argument("--ffn", type=float, default=0.5, help="fraction of FFN neurons removed")
    p.add_argument("--method", choices=["importance", "magnitude"], default="importance")
    p.add_argument("--recover-steps", type=int, default=0, help="fine-tuning steps after")
    p.add_argument("--out", default=None, help="folder of the new run (default: beside RUN)")
    p.set_defaults(func=run)
    return p
