"""``anyformer distill TEACHER_RUN STUDENT_SPEC [KEY=VALUE ...]``: train a student from a
trained run with logit and MiniLM attention-relation distillation
(:mod:`anyformer.compress.distill`)."""

from __future__ import annotations

import argparse
import shlex
from typing import Any


def cmd_distill(args: argparse.Namespace) -> int:
    from rich.console import Console

    from anyformer.cli_checks import check_override_values
    from anyformer.compress.distill import distill_run

    check_override_values(args.overrides)
    params: dict[str, Any] = {
        "alpha": args.alpha,
        "temperature": args.temperature,
        "relations": args.relations,
        "beta": args.beta,
    }
    if args.relation_heads is not None:
        params["relation_heads"] = args.relation_heads
    command = shlex.join(["anyformer", *getattr(args, "argv", [])])
    run = distill_run(args.teacher, args.student, args.overrides, params, args.out, command)
    console = Console()
    if run.result.interrupted:
        console.print(f"interrupted; continue with: anyformer resume {run.dir}")
        return 130
    import json

    record = json.loads((run.dir / "parent.json").read_text())
    for r in record["rows"]:
        h = record["headline"]
        console.print(f"{r['variant']:>8} {r['split']:>5}: {h} {r.get(h, float('nan')):.4g} "
                      f"loss {r.get('loss', float('nan')):.4g}  params {r['params']:,}")  # fmt: skip
    console.print(f"run folder: [bold]{run.dir}[/bold]  (report.md compares it with the teacher)")
    return 0


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "distill",
        help="train a smaller student from a trained run (logit + MiniLM attention distillation)",
    )
    p.add_argument("teacher", help="the teacher run's folder, e.g. runs/quickstart-1a2b3c4d")
    p.add_argument("student", help="the student: a built-in experiment name or a .yaml spec")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="overrides of the student spec, e.g. model.d_model=32 train.steps=500")  # fmt: skip
    p.add_argument("--alpha", type=float, default=0.5,
                   help="weight of the logit KL against the task loss (default 0.5)")  # fmt: skip
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T")
    p.add_argument("--relations", choices=("none", "minilm", "minilm_v2"), default="minilm",
                   help="none: logits only; minilm: attention distributions + value relations; "
                   "minilm_v2: q-q, k-k, v-v relations (default minilm)")  # fmt: skip
    p.add_argument("--beta", type=float, default=1.0, help="weight of the relation terms")
    p.add_argument("--relation-heads", type=int, default=None,
                   help="relation heads (default: gcd of both head counts)")  # fmt: skip
    p.add_argument("--out", default=None, help="parent of the new folder (default: the teacher's)")
    p.set_defaults(func=cmd_distill)
    return p
