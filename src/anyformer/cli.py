"""The ``anyformer`` command line: run, resume, fine-tune, list and show experiments; check
components.

Heavy modules (torch, the registry's components, matplotlib) are imported inside the
commands, so ``anyformer --help`` stays fast. Every user error (bad spec, bad argument,
bad file) exits with status 2 and a one-paragraph message, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: the run saved a checkpoint and stopped


def _rank() -> int:
    """This process's rank under ``torchrun`` (0 otherwise)."""
    import os

    return int(os.environ.get("RANK", "0"))


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


def _print_results(run: Any) -> None:
    from rich.table import Table

    from anyformer.lab.report import conformal_note, results_rows

    rows = results_rows(run, baselines=True)
    headline = run.task.headline
    names = [headline] + sorted({k for _, m in rows for k in m} - {headline})
    table = Table(title=f"{run.spec.name} · {run.spec.task.name} · step {run.result.step}")
    table.add_column("split")
    for name in names:
        table.add_column(name, justify="right")
    labels = {"id": "in-distribution (id)", "ood": "out-of-distribution (ood)"}
    for split, m in rows:
        baseline = split.endswith(" baseline")
        label = "  " + split.partition(" · ")[2] if baseline else labels.get(split, split)
        cells = (f"{m[n]:.4g}" if n in m else "-" for n in names)
        table.add_row(label, *cells, style="dim" if baseline else None)
    console = _console()
    console.print(table)
    note = conformal_note(run)
    if note:
        console.print(note)
    console.print(
        f"run folder: [bold]{run.dir}[/bold]  (report.md, metrics.jsonl, plots/, checkpoint/)"
    )


def _finish(run: Any) -> int:
    if _rank() != 0:  # under torchrun only rank 0 prints
        return EXIT_INTERRUPTED if run.result.interrupted else 0
    if run.result.interrupted:
        _console(stderr=True).print(
            f"interrupted at step {run.result.step}; checkpoint saved. "
            f"Continue with: anyformer resume {run.dir}"
        )
        return EXIT_INTERRUPTED
    _print_results(run)
    return 0


def _load_spec(args: argparse.Namespace, rename: bool = True) -> Any:
    """The experiment of ``args`` with its overrides (named after the task it runs when
    ``rename``: :func:`~anyformer.lab.run.apply_run_overrides`); the ``--allow-import``
    modules are recorded in its ``plugins`` (so the run folder says what code it imported)."""
    from anyformer.cli_checks import check_override_values, check_warmup
    from anyformer.lab import load_experiment
    from anyformer.lab.run import apply_run_overrides

    check_override_values(args.overrides)
    base = load_experiment(args.experiment)
    spec = (
        apply_run_overrides(base, args.overrides) if rename else base.with_overrides(args.overrides)
    )
    check_warmup(spec, args.overrides)
    allowed = [m for m in getattr(args, "allow_import", []) or [] if m not in spec.plugins]
    if allowed:
        spec = type(spec).from_dict({**spec.to_dict(), "plugins": [*spec.plugins, *allowed]})
    return spec


def cmd_run(args: argparse.Namespace) -> int:
    from anyformer.cli_checks import check_resolved
    from anyformer.lab import run_experiment

    spec = _load_spec(args)
    check_resolved(spec)
    origin = {"experiment": args.experiment, "overrides": list(args.overrides),
              "command": _command(args)}  # fmt: skip
    return _finish(run_experiment(spec, out=args.out, provenance=origin))


def _command(args: argparse.Namespace) -> str:
    """The command line as typed (for run reports)."""
    import shlex

    return shlex.join(["anyformer", *getattr(args, "argv", [])])


def cmd_resume(args: argparse.Namespace) -> int:
    from anyformer.cli_checks import check_override_values
    from anyformer.lab.run import resume_run

    check_override_values(args.overrides)
    return _finish(resume_run(args.run_dir, args.overrides, command=_command(args)))


def cmd_finetune(args: argparse.Namespace) -> int:
    from anyformer.cli_checks import check_override_values, check_resolved
    from anyformer.lab import run_experiment
    from anyformer.lab.init_from import finetune_spec

    check_override_values(args.overrides)
    spec = finetune_spec(args.run_dir, args.task, args.overrides)
    allowed = [m for m in args.allow_import if m not in spec.plugins]
    if allowed:
        spec = type(spec).from_dict({**spec.to_dict(), "plugins": [*spec.plugins, *allowed]})
    check_resolved(spec)
    origin = {"finetune": args.run_dir, "task": args.task, "overrides": list(args.overrides),
              "command": _command(args)}  # fmt: skip
    return _finish(run_experiment(spec, out=args.out, provenance=origin))


def cmd_list(args: argparse.Namespace) -> int:
    from rich.table import Table

    from anyformer import cli_show, registry
    from anyformer.errors import SpecError, did_you_mean

    if args.slot == "runs":
        _console().print(cli_show.runs_table(args.name or "runs"))
        return 0
    slots = registry.slots()
    if args.slot is not None and args.slot not in slots:
        raise SpecError(
            f"unknown slot '{args.slot}'{did_you_mean(args.slot, slots)} (valid: {', '.join(slots)})"
        )
    console = _console()
    if args.name is not None:  # one component: its parameters
        entry = registry.get(args.slot, args.name, where=args.slot)
        console.print(cli_show.parameter_table(entry))
        return 0
    for slot in [args.slot] if args.slot else slots:
        table = Table(title=f"{slot}: {registry.SLOTS.get(slot, '')}", title_justify="left")
        entries = registry.entries(slot)
        # names never break mid-word: the column is as wide as the longest name
        width = max((len(e.name) for e in entries), default=4)
        table.add_column("name", no_wrap=True, min_width=width)
        for col in ("summary", "paper"):
            table.add_column(col, overflow="fold")
        finding = slot == "finding"
        if finding:
            table.add_column("last verdict", overflow="fold")
        mixer = slot == "attention"
        if mixer:
            for col in ("complexity", "causal", "encoder", "recurrent"):
                table.add_column(col)
        for entry in registry.entries(slot):
            row = [entry.name, entry.summary, str(entry.paper) if entry.paper else "-"]
            if mixer:
                caps = entry.caps
                row += [
                    caps.complexity,
                    _yes(caps.causal_safe),
                    _yes(caps.bidirectional),
                    _yes(caps.recurrent),
                ]
            if finding:
                row.append(cli_show.last_verdict(entry.name, args.findings_dir))
            table.add_row(*row)
        console.print(table)
    from anyformer.lab import experiment_names

    if args.slot is None:
        console.print("experiments: " + ", ".join(experiment_names()))
    return 0


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def cmd_show(args: argparse.Namespace) -> int:
    from anyformer import cli_show
    from anyformer.cli_checks import check_resolved
    from anyformer.lab import experiment_names

    is_file = args.experiment.endswith((".yaml", ".yml")) or Path(args.experiment).is_file()
    known = is_file or args.experiment in experiment_names()
    if not known and cli_show.component_entries(args.experiment):  # a component's parameters
        for table in cli_show.show_component(args.experiment):
            _console().print(table)
        return 0
    spec = check_resolved(_load_spec(args))
    if args.summary:
        console = _console()
        for table in cli_show.summary_tables(spec, console.width):
            console.print(table)
        return 0
    sys.stdout.write(spec.to_yaml())
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from anyformer.cli_checks import check_generate_args
    from anyformer.decoding import generate
    from anyformer.lab.generate import (
        decode_tokens,
        encode_prompt,
        encode_sources,
        load_run_model,
        run_codec,
    )

    check_generate_args(args)
    spec, model = load_run_model(args.run_dir)
    check_generate_args(args, vocab_size=model.spec.vocab_size)
    text = None if args.ids else run_codec(spec, args.run_dir)  # a text run's tokenizer
    prompts = [encode_prompt(p, model.spec.vocab_size or 0, text)[0] for p in args.prompt]
    lengths = torch.tensor([len(p) for p in prompts])
    batch = torch.nn.utils.rnn.pad_sequence(prompts, batch_first=True)  # padded at the end
    mask = torch.arange(batch.shape[1]) < lengths[:, None]
    sources = encode_sources(args.source or [], model, len(prompts), text)  # encoder-decoders
    generator = torch.Generator().manual_seed(args.seed)
    out = generate(
        model, batch, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
        top_p=args.top_p, eos=args.eos, generator=generator, padding_mask=mask, **sources,
    )  # fmt: skip
    made = out.shape[1] - batch.shape[1]  # new tokens per row (a row may end at eos)
    for i, (given, n) in enumerate(zip(args.prompt, lengths.tolist(), strict=True)):
        new = out[i, n : n + made].tolist()
        if args.eos is not None and args.eos in new:  # a finished row repeats eos
            new = new[: new.index(args.eos) + 1]
        shown = given + decode_tokens(new, text) if text else decode_tokens(new, False)
        sys.stdout.write(shown + "\n")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from rich.table import Table

    from anyformer.lab.compare import compare, parse_axis, table_rows

    if not args.vary:
        raise _usage(
            "compare needs at least one --vary KEY=A,B,... (e.g. --vary model.position=rope,alibi)"
        )
    from anyformer.cli_checks import check_axes, check_resolved, parse_lrs

    base = _load_spec(args, rename=False)
    check_resolved(base)
    axes = [parse_axis(v) for v in args.vary]
    check_axes(args.vary, axes, base)
    lrs = parse_lrs(args.lrs) if args.lrs else None
    out = args.out  # None: comparisons/<name>-<axes>-<grid key>
    console = _console()
    result = compare(
        base, axes, out, seeds=args.seeds, match_params=args.match_params, lrs=lrs, jobs=args.jobs,
        progress=lambda msg: console.print(f"[dim]{msg}[/dim]"),
    )  # fmt: skip
    head, rows = table_rows(result)
    table = Table(title=f"{base.name}: mean ± 95% interval over {args.seeds} seed(s)")
    for col in head:
        table.add_column(col, justify="left" if col == "variant" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print(f"report: [bold]{result.dir / 'report.md'}[/bold]")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from rich.table import Table

    from anyformer.lab.findings.reproduce import publish_findings, reproduce

    if not args.findings and not args.all:
        raise _usage("name one or more findings, or --all (anyformer list finding shows them)")
    if args.findings and args.all:
        raise _usage(
            f"--all reproduces every finding; drop --all to reproduce only "
            f"{', '.join(args.findings)}, or drop the names"
        )
    if args.recheck:
        return _recheck(args)
    if args.write_docs and args.quick:
        raise _usage(
            "--write-docs cannot be combined with --quick: docs/findings.md is written only "
            "from full runs (quick verdicts are pipeline checks, not results); drop --quick "
            "or --write-docs"
        )
    console = _console()
    reps = reproduce(args.findings, out=args.out, quick=args.quick,
                     progress=lambda msg: console.print(f"[dim]{msg}[/dim]"))  # fmt: skip
    table = Table(
        title="findings"
        + (" (quick: pipeline check, verdicts not meaningful)" if args.quick else "")
    )
    for col in ("finding", "verdict", "deciding numbers", "report"):
        table.add_column(col, overflow="fold")
    for rep in reps:
        table.add_row(rep.name, rep.verdict.label, rep.verdict.reason, str(rep.dir / "report.md"))
    console.print(table)
    if args.write_docs:
        from pathlib import Path

        copied = publish_findings(args.out, Path("docs"))
        console.print(
            f"wrote docs/findings.md and docs/findings/<name>/ for {len(copied)} findings"
        )
    return 0


def _recheck(args: argparse.Namespace) -> int:
    """``reproduce --recheck``: the current checks applied to the recorded full runs in
    ``--findings-dir``; with ``--write-docs``, docs/findings.md from those records."""
    from pathlib import Path

    from rich.table import Table

    from anyformer.lab.findings.recheck import recheck
    from anyformer.lab.findings.reproduce import findings_markdown, verdict_status
    from anyformer.spec import write_text_atomic

    if args.quick:
        raise _usage("--recheck re-checks recorded full runs; it cannot be combined with --quick")
    folder = Path(args.findings_dir)
    done = recheck(args.findings, folder)
    table = Table(title=f"findings re-checked from the full runs recorded in {folder}")
    for col in ("finding", "before", "after", "reason"):
        table.add_column(col, overflow="fold")
    for name, (previous, verdict) in done.items():
        table.add_row(name, verdict_status(previous), verdict.label, verdict.reason)
    console = _console()
    console.print(table)
    if args.write_docs:
        path = folder.parent / "findings.md"
        write_text_atomic(path, findings_markdown(folder, published=True))
        console.print(f"wrote {path}")
    return 0


def _usage(message: str) -> Exception:
    from anyformer.errors import UserError

    return UserError(message)


def cmd_extract(args: argparse.Namespace) -> int:
    from anyformer.cli_checks import check_widths
    from anyformer.lab.elastic import extract_run

    check_widths(args.run_dir, args.widths)
    widths = args.widths[0] if len(args.widths) == 1 else args.widths
    folder, nested, small = extract_run(args.run_dir, widths, args.out)
    _console().print(
        f"extracted widths {args.widths}: {small.num_params():,} parameters "
        f"(nested model: {nested.num_params():,})\nrun folder: [bold]{folder}[/bold]  "
        f"(evaluate it with: anyformer resume {folder})"
    )
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Run a slot's contract checks on a component; 0 when none fails, 1 when one does."""
    from anyformer.lab.check import check_component

    console = _console()

    def progress(outcome: Any) -> None:
        colour = {"passed": "green", "failed": "red", "skipped": "dim"}[outcome.status]
        console.print(f"[dim]{outcome.check.name}:[/dim] [{colour}]{outcome.status}[/]")

    report = check_component(args.component, args.slot, progress=progress)
    console.print(report.rich_table())
    return 0 if report.passed else 1


def _add_check_parser(sub: Any) -> None:
    chk = sub.add_parser(
        "check", help="run a slot's contract checks on a component (yours: PATH:Class)"
    )
    chk.add_argument(
        "component",
        help="path/to/file.py:Class or package.module:Class (the file or module is imported)",
    )
    chk.add_argument("--slot", required=True, help="the slot it fills, e.g. attention, norm, ffn")
    chk.set_defaults(func=cmd_check)


def build_parser() -> argparse.ArgumentParser:
    from anyformer import __version__
    from anyformer.cli_checks import positive_int

    parser = argparse.ArgumentParser(
        prog="anyformer",
        description="Build, train and compare Transformer variants from one spec.",
    )
    parser.add_argument("--version", action="version", version=f"anyformer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="train an experiment (default: quickstart)")
    run.add_argument(
        "experiment", nargs="?", default="quickstart", help="a built-in name or a .yaml spec"
    )
    run.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="e.g. model.position=alibi train.steps=500",
    )
    run.add_argument("--out", default="runs", help="parent folder of run folders (default: runs)")
    run.set_defaults(func=cmd_run)
    resume = sub.add_parser("resume", help="continue a run from its last checkpoint")
    resume.add_argument("run_dir", help="the run's folder, e.g. runs/quickstart-1a2b3c4d")
    resume.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="e.g. train.steps=2000")
    resume.set_defaults(func=cmd_resume)
    fin = sub.add_parser(
        "finetune",
        help="train a new head (and the backbone, unless frozen) on TASK from a trained run",
    )
    fin.add_argument(
        "run_dir", help="the parent run's folder, e.g. runs/pretrain_quickstart-1a2b3c4d"
    )
    fin.add_argument("task", help="the task to fine-tune on (anyformer list task)")
    fin.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="e.g. task.output=largest_class train.steps=300 freeze=[embedder,blocks.0] "
        "linear_probe=true",
    )
    fin.add_argument("--out", default="runs", help="parent folder of run folders (default: runs)")
    fin.set_defaults(func=cmd_finetune)
    lst = sub.add_parser(
        "list",
        help="list registered components (one table per slot), a component's parameters "
        "(list SLOT NAME) or run folders with their metrics (list runs DIR)",
    )
    lst.add_argument("slot", nargs="?", default=None, help="only this slot, e.g. attention")
    lst.add_argument(
        "name", nargs="?", default=None, help="a component of SLOT (its parameters), or DIR"
    )
    lst.add_argument(
        "--findings-dir", default="findings", help="where reproduce wrote verdicts (findings)"
    )
    lst.set_defaults(func=cmd_list)
    show = sub.add_parser(
        "show", help="print an experiment's resolved spec as YAML, or a component's parameters"
    )
    show.add_argument("experiment", help="a built-in name, a .yaml spec or a component name")
    show.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    show.add_argument(
        "--summary",
        action="store_true",
        help="parameters, FLOPs per token and a per-layer table instead of the YAML (no training)",
    )
    show.set_defaults(func=cmd_show)
    ext = sub.add_parser(
        "extract", help="write a MatFormer submodel of a run as a standalone run folder"
    )
    ext.add_argument("run_dir", help="the run's folder (its model uses ffn: matformer)")
    ext.add_argument(
        "--widths",
        nargs="+",
        type=float,
        required=True,
        metavar="W",
        help="one FFN width fraction for every block, or one per distinct block (Mix'n'Match)",
    )
    ext.add_argument("--out", default=None, help="parent of the new folder (default: the run's)")
    ext.set_defaults(func=cmd_extract)
    gen = sub.add_parser("generate", help="continue a prompt with a trained run's model")
    gen.add_argument("run_dir", help="the run's folder, e.g. runs/quickstart-1a2b3c4d")
    gen.add_argument(
        "--prompt",
        required=True,
        action="append",
        help="text for byte-level tasks, else space-separated token ids ('1 5 7'); repeat "
        "it to continue several prompts as one batch (one output line each)",
    )
    gen.add_argument(
        "--source",
        action="append",
        default=None,
        help="an encoder_decoder run's source for each --prompt (encoded like a prompt); "
        "the prompt then starts the decoder's output (e.g. its BOS id)",
    )
    gen.add_argument("--max-new-tokens", type=int, default=32, help="tokens to add (default 32)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-k", type=int, default=None, help="sample from the k likeliest")
    gen.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold")
    gen.add_argument("--eos", type=int, default=None, help="token id that ends generation")
    gen.add_argument("--seed", type=int, default=0, help="seed of the sampling generator")
    gen.add_argument(
        "--ids", action="store_true", help="read --prompt as token ids even for a byte-level task"
    )
    gen.set_defaults(func=cmd_generate)
    cmp = sub.add_parser("compare", help="train a grid of variants over seeds and aggregate")
    cmp.add_argument("experiment", help="a built-in name or a .yaml spec")
    cmp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="applied to every variant")
    cmp.add_argument(
        "--vary", action="append", default=[], metavar="KEY=A,B,C", help="an axis of the grid"
    )
    cmp.add_argument(
        "--seeds", type=positive_int("--seeds"), default=3, help="seeds per variant (default 3)"
    )
    cmp.add_argument(
        "--match-params", action="store_true", help="adjust d_model to match parameter counts (5%%)"
    )
    cmp.add_argument(
        "--lrs", default=None, help="learning-rate grid, e.g. 1e-3,3e-3 (best per variant counts)"
    )
    cmp.add_argument(
        "--jobs", type=positive_int("--jobs"), default=1, help="runs in parallel (processes)"
    )
    cmp.add_argument(
        "--out", default=None, help="report folder (default comparisons/<name>-<axes>-<grid hash>)"
    )
    cmp.set_defaults(func=cmd_compare)
    rep = sub.add_parser("reproduce", help="reproduce published findings and check their claims")
    rep.add_argument("findings", nargs="*", help="finding names (anyformer list finding)")
    rep.add_argument("--all", action="store_true", help="every registered finding")
    rep.add_argument(
        "--quick", action="store_true", help="toy size: proves the pipeline in seconds"
    )
    rep.add_argument(
        "--out", default="findings", help="parent folder of the reports (default findings)"
    )
    rep.add_argument("--write-docs", action="store_true", help="write docs/findings.md (full mode)")
    rep.add_argument(
        "--recheck", action="store_true",
        help="apply the current checks to the recorded full runs in --findings-dir and "
        "rewrite their reports (trains nothing)",
    )  # fmt: skip
    rep.add_argument(
        "--findings-dir", default="docs/findings",
        help="recorded full runs for --recheck (default docs/findings; docs/findings.md "
        "beside it with --write-docs)",
    )  # fmt: skip
    rep.set_defaults(func=cmd_reproduce)
    for command in (run, resume, fin, show, ext, gen, cmp):
        command.add_argument(
            "--allow-import",
            action="append",
            default=[],
            metavar="MODULE",
            help="allow the spec to import MODULE (and its submodules) for a dotted path "
            "like 'MODULE.sub:Class' or its plugins; recorded in the run's spec. Without "
            "it a spec imports no code (repeatable)",
        )
    _add_check_parser(sub)
    from anyformer.commands import add_all

    add_all(sub)  # one module per further command (anyformer/commands/)
    return parser


def _split_overrides(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``run KEY=VALUE`` (no name) means the quickstart with overrides."""
    if (
        getattr(args, "experiment", None)
        and "=" in args.experiment
        and args.command in ("run", "show")
    ):
        args.overrides = [args.experiment, *args.overrides]
        args.experiment = "quickstart"
    if args.command == "finetune" and "=" in args.task:
        parser.error(f"finetune needs a TASK before the overrides (got '{args.task}'), e.g. "
                     f"anyformer finetune {args.run_dir} digits train.steps=300")  # fmt: skip
    for item in getattr(args, "overrides", []) or []:
        if "=" not in item:
            parser.error(f"argument '{item}' is not KEY=VALUE (e.g. train.steps=500)")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.command is None:
        parser.print_help()
        return 0
    _split_overrides(parser, args)
    import logging

    level = logging.WARNING if _rank() == 0 else logging.ERROR  # other ranks: errors only
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from anyformer import registry
    from anyformer.errors import RunError, UserError

    try:
        # a spec (or run folder) imports only the code the user allows (--allow-import)
        # (anyformer check imports the component its command line names)
        allowed = None if args.command == "check" else getattr(args, "allow_import", [])
        with registry.import_policy(allowed):
            return int(args.func(args))
    except UserError as exc:
        _console(stderr=True).print(f"[bold red]error:[/bold red] {exc}", soft_wrap=True)
        return EXIT_USER_ERROR
    except RunError as exc:
        _console(stderr=True).print(f"[bold red]run stopped:[/bold red] {exc}", soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        _console(stderr=True).print("interrupted")
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
