"""``anyformer factorize RUN --rank r | --energy e [--sparsity N:M]``: low-rank SVD
factorization of a run's linear layers, or DSFormer's dense x N:M-sparse one, into a new
run folder (:mod:`anyformer.compress.factorize`)."""

from __future__ import annotations

import argparse
from typing import Any


def cmd_factorize(args: argparse.Namespace) -> int:
    from rich.console import Console

    from anyformer.compress.factorize import factorize_run, parse_sparsity
    from anyformer.errors import SpecError

    sparsity = parse_sparsity(args.sparsity, args.mask) if args.sparsity else None
    if sparsity is None and (args.mask != "learned" or args.equal_params):
        flag = "--equal-params" if args.equal_params else f"--mask={args.mask}"
        raise SpecError(f"{flag} needs --sparsity N:M (dense x sparse factorization)")
    folder, record = factorize_run(args.run_dir, args.rank, args.energy, args.out, sparsity,
                                   args.equal_params)  # fmt: skip
    console = Console()
    h = record["headline"]
    for r in record["rows"]:
        console.print(f"{r['variant']:>10} {r['split']:>5}: {h} {r.get(h, float('nan')):.4g} "
                      f"loss {r.get('loss', float('nan')):.4g}  params {r['params']:,}")  # fmt: skip
    approx = record["approximation"]
    console.print(
        f"{len(record['ranks'])} layers factorized; parameters x{record['params_ratio']:.3f}; "
        f"relative weight error {approx['mean_error']:.4f} (the SVD at the same weights: "
        f"{approx['mean_svd_error_same_weights']:.4f})\n"
        f"run folder: [bold]{folder}[/bold]  (report.md compares it with the parent)"
    )
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "factorize",
        help="low-rank SVD (or DSFormer dense x N:M-sparse) factorization of a run's "
        "linear layers (a new run folder)",
    )
    p.add_argument("run_dir", help="the trained run's folder, e.g. runs/quickstart-1a2b3c4d")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--rank", type=int, default=None, help="one rank for every linear layer")
    how.add_argument("--energy", type=float, default=None,
                     help="per layer, the smallest rank keeping this fraction of sum(s^2)")  # fmt: skip
    p.add_argument("--sparsity", default=None, metavar="N:M",
                   help="DSFormer: dense D [out, r] times S [r, in] with N nonzeros in every M "
                   "inputs (e.g. 2:4) instead of SVD factors")  # fmt: skip
    p.add_argument("--mask", default="learned", choices=("learned", "fixed"),
                   help="with --sparsity: the N:M pattern re-chosen from |S| at every forward "
                   "with a straight-through gradient (learned), or kept (fixed)")  # fmt: skip
    p.add_argument("--equal-params", action="store_true",
                   help="with --sparsity: --rank is the SVD rank whose stored weights each "
                   "layer's dense x sparse factors match")  # fmt: skip
    p.add_argument("--out", default=None, help="parent of the new folder (default: the run's)")
    p.set_defaults(func=cmd_factorize)
    return p
