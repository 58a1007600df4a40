"""``anyformer merge RUN``: fold a run's LoRA (or BitFit) adapter into its weights, as a
new run folder (:mod:`anyformer.lab.merge`)."""

from __future__ import annotations

import argparse
from typing import Any


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from anyformer.lab.merge import merge_run

    folder, record = merge_run(args.run_dir, args.out)
    worst = max(record["max_abs_difference"].values(), default=0.0)
    Console().print(
        f"merged {len(record['layers'])} LoRA layers (outputs differ by at most {worst:.2g})"
        f"\nrun folder: [bold]{folder}[/bold]  (evaluate it with: anyformer resume {folder})"
    )
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "merge",
        help="fold a run's adapter (adapter: lora / bitfit) into its weights (a new run folder)",
    )
    p.add_argument("run_dir", help="a trained run folder with an adapter")
    p.add_argument("--out", default=None, help="folder of the new run (default: beside RUN)")
    p.set_defaults(func=run)
    return p
