"""``anyformer fuse-layers RUN --drop K [--recover-steps N]``: a shallower model (FuseGPT,
Pei et al. 2024): the K blocks whose removal raises the training loss least are
dropped and their linear layers injected into the nearest kept block through learnable
rank-one coefficients (starting at 0), tuned for N steps on training batches. Writes a
new run folder whose report compares it with the parent and with plain removal."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from anyformer.compress.fuse import fuse_layers_run

    dest, record = fuse_layers_run(args.run_dir, args.drop, args.recover_steps, args.lr,
                                   args.importance_batches, args.out)  # fmt: skip
    print(f"dropped blocks {record['dropped']} (loss increase when skipped: "
          + ", ".join(f"{s:+.4f}" for s in record["importance"]) + ")")  # fmt: skip
    for who, rows in record["results"].items():
        cells = ", ".join(f"{split} loss {r.get('loss', float('nan')):.4g}"
                          for split, r in rows.items())  # fmt: skip
        print(f"{who}: {cells}")
    print(f"fused run: {dest}")
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "fuse-layers", help="drop the least important blocks, fusing them into neighbours",
        description=__doc__,
    )  # fmt: skip
    parser.add_argument("run_dir", help="the run's folder, e.g. runs/quickstart-1a2b3c4d")
    parser.add_argument("--drop", type=int, required=True, help="blocks to remove")
    parser.add_argument("--recover-steps", type=int, default=0,
                        help="fine-tune steps of the fusion coefficients (default 0)")  # fmt: skip
    parser.add_argument("--lr", type=float, default=None, help="recovery lr (default train.lr)")
    parser.add_argument("--importance-batches", type=int, default=4,
                        help="training batches that rank the blocks (default 4)")  # fmt: skip
    parser.add_argument("--out", default=None, help="folder for the new run (default: the run's)")
    parser.set_defaults(func=run)
    return parser
