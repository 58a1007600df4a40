"""``anyformer factorize RUN --rank r | --energy e``: low-rank SVD factorization of a
run's linear layers into a new run folder (:mod:`anyformer.compress.factorize`)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_factorize(args: argparse.Namespace) -> int:
    from rich.console import Console

    from anyformer.compress.factorize import factorize_run

    folder, record = factorize_run(args.run_dir, args.rank, args.energy, args.out)
    console = Console()
    h = record["headline"]
    for r in record["rows"]:
        console.print(f"{r['variant']:>10} {r['split']:>5}: {h} {r.get(h, float('nan')):.4g} "
                      f"loss {r.get('loss', float('nan')):.4g}  params {r['params']:,}")  # fmt: skip
    console.print(
        f"{len(record['ranks'])} layers factorized; parameters x{record['params_ratio']:.3f}\n"
        f"run folder: [bold]{folder}[/bold]  (report.md compares it with the parent)"
    )
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "factorize", help="low-rank SVD factorization of a run's linear layers (a new run folder)"
    )
    p.add_argument("run_dir", help="the trained run's folder, e.g. runs/quickstart-1a2b3c4d")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, default=None, help="one rank for every linear layer")
    how.add_argument("--energy", type=float, default=None,
                     help="per layer, the smallest rank keeping this fraction of sum(s^2)")  # fmt: skip
    p.add_argument("--out", default=None, help="parent of the new folder (default: the run's)")
    p.set_defaults(func=cmd_factorize)
    return p
