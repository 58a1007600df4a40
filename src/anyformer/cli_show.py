"""What ``anyformer list`` and ``anyformer show`` print besides the registry tables (layer 6):
a component's parameters, an experiment's size summary, run folders with their headline
metrics and the last verdict of each finding.

Files read from folders (``metrics.jsonl``, ``verdict.json``) may be torn, foreign or
huge: each is read within a size limit, a line that does not parse is skipped, and a
file that cannot be read shows as ``-``.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from anyformer import registry
from anyformer.errors import SpecError, did_you_mean

#: Most bytes read from one metrics or verdict file.
MAX_READ = 8_000_000


# --------------------------------------------------------------------------- components
def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "choice"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _choices(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) is typing.Literal:
        return list(typing.get_args(annotation))
    for arg in typing.get_args(annotation):
        found = _choices(arg)
        if found:
            return found
    return []


_SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<=", "multiple_of": "multiple of",
            "min_length": "length >=", "max_length": "length <="}  # fmt: skip


def _constraint(meta: Any) -> str:
    """``Gt(gt=0)`` -> ``> 0``; anything else as pydantic writes it."""
    for attr, symbol in _SYMBOLS.items():
        value = getattr(meta, attr, None)
        if value is not None:
            return f"{symbol} {value}"
    return str(meta)


def component_entries(name: str) -> list[registry.Entry]:
    """Every registered variant called ``name`` (a name may exist in several slots)."""
    return [e for slot in registry.slots() for e in registry.entries(slot) if e.name == name]


def parameter_table(entry: registry.Entry) -> Table:
    """A variant's parameters: name, type, default, choices and constraints."""
    table = Table(
        title=f"{entry.slot} '{entry.name}': {entry.summary}"
        + (f"\npaper: {entry.paper}" if entry.paper else ""),
        title_justify="left",
    )
    table.add_column("parameter", no_wrap=True)
    for col in ("type", "default", "choices / constraints"):
        table.add_column(col, overflow="fold")
    fields = entry.params.model_fields
    for key, info in fields.items():
        default = (
            "(required)"
            if info.is_required()
            else repr(info.get_default(call_default_factory=True))
        )
        limits = [_constraint(m) for m in info.metadata]
        choices = _choices(info.annotation)
        shown = ", ".join(map(str, choices)) if choices else "; ".join(limits)
        table.add_row(key, _type_name(info.annotation), default, shown or "-")
    if not fields:
        table.add_row("(none)", "-", "-", "-")
    return table


def show_component(name: str) -> list[Table]:
    """Tables of the parameters of every variant called ``name``; :class:`SpecError` if none."""
    found = component_entries(name)
    if not found:
        names = {e.name for s in registry.slots() for e in registry.entries(s)}
        raise SpecError(
            f"'{name}' is neither an experiment nor a registered component"
            f"{did_you_mean(name, names)} (anyformer list shows them)"
        )
    return [parameter_table(e) for e in found]


# --------------------------------------------------------------------------- summary
def summary_tables(spec: Any, width: int = 100) -> list[Any]:
    """An experiment's size without training: parameters, FLOPs per token and one row per
    distinct block (its slots, parameters, FLOPs per token and executions per pass); on a
    terminal narrower than the table (``width``) each block is one line."""
    from anyformer.lab.run import prepare_model
    from anyformer.model.flops import count_params, forward_flops_per_token
    from anyformer.spec_limits import estimate_memory

    model = prepare_model(spec)
    m = spec.model
    seq = m.max_len
    order = model.depth.order(True)
    head = Table(title=f"{spec.name}: {spec.task.name}", title_justify="left")
    head.add_column("quantity", no_wrap=True)
    head.add_column("value", justify="right")
    est = estimate_memory(m, spec.train)
    rows = [
        ("parameters", f"{model.num_params():,}"),
        ("parameters without embeddings", f"{model.num_params(exclude_embeddings=True):,}"),
        (f"training FLOPs per token (T={seq})", f"{model.flops_per_token(seq):,}"),
        ("distinct blocks / executions per pass", f"{m.n_layers} / {len(order)}"),
        ("d_model / heads / max_len", f"{m.d_model} / {m.n_heads} / {seq}"),
        ("depth", m.depth.name),
        ("estimated training memory", f"{est.total / 2**20:,.1f} MiB"),
    ]
    encoder = getattr(model, "encoder", None)
    if encoder is not None:  # an encoder-decoder: the table's blocks are the decoder's
        enc = encoder.spec
        rows.insert(4, ("encoder blocks (mixer, params)", f"{enc.n_layers} ({enc.attention.name}, "
                        f"{count_params(encoder.blocks):,})"))  # fmt: skip
    for key, value in rows:
        head.add_row(key, value)
    layers = Table(title="blocks", title_justify="left")
    rows: list[tuple[str, ...]] = []
    for i, block in enumerate(model.blocks):
        layer = m.layer(i)
        rows.append((
            str(i), layer.attention.name, layer.ffn.name, layer.norm.name,
            layer.norm_placement.name, f"{count_params(block):,}",
            f"{3 * forward_flops_per_token(block, seq):,}", str(order.count(i)),
        ))  # fmt: skip
    columns = ("#", "mixer", "ffn", "norm", "layout", "params", "FLOPs/tok", "runs")
    widths = [max(len(col), *(len(r[j]) for r in rows)) for j, col in enumerate(columns)]
    if sum(widths) + 3 * len(widths) + 1 > width:  # too narrow for a table: one line each
        lines = Table.grid()
        lines.add_column(overflow="fold")
        for r in rows:
            lines.add_row(
                f"block {r[0]}: {r[1]} / {r[2]} / {r[3]} / {r[4]}; {r[5]} params; "
                f"{r[6]} FLOPs/token; runs {r[7]}x"
            )
        return [head, Text("blocks"), lines]
    for j, col in enumerate(columns):
        # names and numbers are never broken or cut: each column is as wide as its values
        layers.add_column(
            col, justify="right" if j == 0 or j >= 5 else "left", no_wrap=True,
            min_width=widths[j],
        )  # fmt: skip
    for row in rows:
        layers.add_row(*row)
    return [head, layers]


# --------------------------------------------------------------------------- runs
def _read_json(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_READ:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def last_metrics(folder: Path) -> tuple[int | None, dict[str, dict[str, Any]]]:
    """The last step logged and the last evaluation per split in ``metrics.jsonl``
    (torn or foreign lines are skipped; only the last :data:`MAX_READ` bytes are read)."""
    path = folder / "metrics.jsonl"
    try:
        with path.open("rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            fh.seek(max(0, size - MAX_READ))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return None, {}
    step, evals = None, {}
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        if isinstance(record.get("step"), int):
            step = max(step or 0, record["step"])
        if isinstance(record.get("split"), str):
            evals[record["split"]] = record
    return step, evals


def runs_table(root: Path | str) -> Table:
    """One row per run folder under ``root``: name, task, step and headline metrics."""
    from anyformer.lab.run import load_run_spec

    root = Path(root)
    if not root.is_dir():
        raise SpecError(f"'{root}' is not a folder (list runs DIR lists the run folders in DIR)")
    table = Table(title=f"runs in {root}", title_justify="left")
    table.add_column("run", no_wrap=True)
    for col in ("task", "step", "metric", "id", "ood"):
        table.add_column(col, justify="right" if col in ("step", "id", "ood") else "left")
    for folder in sorted(p for p in root.iterdir() if (p / "spec.yaml").is_file()):
        try:
            spec = load_run_spec(folder)
        except Exception as exc:  # a damaged folder is listed, not fatal
            table.add_row(folder.name, f"unreadable spec: {str(exc)[:60]}", "-", "-", "-", "-")
            continue
        task = registry.get("task", spec.task.name)
        headline = getattr(task.cls, "headline", "")
        step, evals = last_metrics(folder)
        values = []
        for split in ("id", "ood"):
            value = evals.get(split, {}).get(headline)
            values.append(f"{value:.4g}" if isinstance(value, int | float) else "-")
        table.add_row(folder.name, spec.task.name, str(step) if step is not None else "-",
                      headline or "-", *values)  # fmt: skip
    return table


# --------------------------------------------------------------------------- findings
def last_verdict(name: str, root: Path | str = "findings") -> str:
    """The last verdict of finding ``name`` under ``root`` (a full run before a quick
    one), e.g. ``holds (2026-11-30)``; ``-`` when it has not been run."""
    for mode in ("full", "quick"):
        record = _read_json(Path(root) / mode / name / "verdict.json")
        if isinstance(record, dict) and "holds" in record:
            holds = record["holds"]
            label = {True: "holds", False: "does not hold"}.get(holds, str(holds))
            date = str(record.get("date", ""))[:10]
            return f"{label} ({mode}{', ' + date if date else ''})"
    return "-"
