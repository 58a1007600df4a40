"""``anyformer reduce-tokens RUN --keep 1,0.75,0.5 --method prune|merge [--at B]``: a
trained encoder evaluated with its tokens reduced before block B (default 1) at each
keep ratio: attention-based pruning (IA-RED²-style, Pan et al. 2021) or merging of the
most similar tokens (ToMe, Bolya et al. 2023). Writes the speed–accuracy curve to
``token_reduction.md`` and ``.json`` in the run folder."""

from __future__ import annotations

import argparse
from typing import Any

from anyformer.errors import SpecError


def _keeps(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SpecError(
            f"--keep '{text}': give keep ratios in (0, 1] separated by commas"
        ) from None
    if not values:
        raise SpecError("--keep: give at least one keep ratio in (0, 1]")
    return values


def run(args: argparse.Namespace) -> int:
    from anyformer.compress.tokens import evaluate_keep_ratios

    rows = evaluate_keep_ratios(args.run_dir, _keeps(args.keep), args.method, args.at,
                                args.eval_size)  # fmt: skip
    for r in rows:
        print(f"keep {r['keep']:g} {r['split']}: {r['tokens_after']} tokens, loss "
              f"{r.get('loss', float('nan')):.4g}, {r['speedup']:.2f}x")  # fmt: skip
    print(f"wrote {args.run_dir}/token_reduction.md")
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "reduce-tokens", help="evaluate an encoder run with fewer tokens (prune or merge)",
        description=__doc__,
    )  # fmt: skip
    parser.add_argument("run_dir", help="the run's folder, e.g. runs/vision_quickstart-1a2b3c4d")
    parser.add_argument("--keep", default="1,0.75,0.5,0.25",
                        help="keep ratios, comma-separated (default 1,0.75,0.5,0.25)")  # fmt: skip
    parser.add_argument("--method", default="prune", choices=["prune", "merge"])
    parser.add_argument("--at", type=int, default=1, help="block before which to reduce")
    parser.add_argument("--eval-size", type=int, default=None, help="default train.eval_size")
    parser.set_defaults(func=run)
    return parser
