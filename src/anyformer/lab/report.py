"""Reports of runs: what ran, where and how, its results, and its figures.

``report.md`` is generated from the resolved spec, not from the experiment it started
from: the task with its parameters, the objective, the model (kind, depth schedule,
sizes, components with their parameters, per-layer overrides), parameters and FLOPs per
token, the training settings; then every session of the run (``provenance.json``: the
command line, the experiment and overrides, the anyformer version, the date, the
platform, python and torch versions, CPU and GPU); the final metrics of every evaluated
split; for MatFormer models the results at every trained width; and the figures
``plots/curve.png`` (the task's curves), the task's own plot (a confusion matrix,
predicted against true values with conformal intervals, or an image grid) and
``plots/loss.png`` (training loss by step).
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from anyformer.spec import write_text_atomic

if TYPE_CHECKING:
    from anyformer.lab.run import Run

log = logging.getLogger(__name__)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The plain numbers among a split's metrics (curves and tables left out), with the
    split-conformal summary flattened in (``conformal.coverage``, ``conformal.width``)."""
    out = {k: float(v) for k, v in metrics.items() if _number(v)}
    conformal = metrics.get("conformal")
    if isinstance(conformal, dict):  # the level and calibration size are the run's, not the split's
        out |= {f"conformal.{k}": float(conformal[k]) for k in CONFORMAL_COLUMNS if k in conformal}
    return out


#: The split-conformal numbers shown per split (``level`` is shown once, by :func:`conformal_note`).
CONFORMAL_COLUMNS = ("coverage", "width")


def conformal_note(run: Run) -> str | None:
    """One line on the split-conformal intervals of a run (level, calibration points),
    or ``None`` when its head has none."""
    for m in run.metrics.values():
        c = m.get("conformal") if isinstance(m, dict) else None
        if isinstance(c, dict):
            return (
                f"conformal.coverage / conformal.width: split-conformal intervals at level "
                f"{c['level']:g}, calibrated on {c['n_calibration']} targets of training "
                f"batches after the last step"
            )
    return None


def baseline_rows(
    metrics: dict[str, Any], split: str, headline: str
) -> list[tuple[str, dict[str, float]]]:
    """One row per baseline of a split (``baselines.<name>.<headline>``), labelled
    ``<split> · <name> baseline`` and holding only the headline metric; baselines
    without a scalar headline are left out."""
    base = metrics.get("baselines")
    if not isinstance(base, dict):
        return []
    return [
        (f"{split} · {name} baseline", {headline: float(m[headline])})
        for name, m in base.items()
        if isinstance(m, dict) and _number(m.get(headline))
    ]


def results_rows(run: Run, baselines: bool = False) -> list[tuple[str, dict[str, float]]]:
    """(split, scalar metrics) for every evaluated split, the task's splits first (then
    ``train`` when ``train.eval_splits`` asks for it). With ``baselines`` each split is
    followed by its baselines' headline metric (:func:`baseline_rows`)."""
    order = [*run.task.splits, *(s for s in run.metrics if s not in run.task.splits)]
    rows = []
    for split in order:
        if split in run.metrics:
            rows.append((split, scalar_metrics(run.metrics[split])))
            if baselines:
                rows += baseline_rows(run.metrics[split], split, run.task.headline)
    return rows


def curves(metrics: dict[str, dict[str, Any]]) -> tuple[str, str, dict[str, dict[float, float]]]:
    """Merge every split's ``curve`` into one set of named series keyed by x."""
    x_label, y_label, series = "", "", {}
    for split, m in metrics.items():
        curve = m.get("curve")
        if not curve:
            continue
        x_label, y_label = curve.get("x", x_label), curve.get("y", y_label)
        for name, points in curve["series"].items():
            key = f"model ({split})" if name == "model" and len(metrics) > 1 else name
            series.setdefault(key, {}).update({float(x): float(y) for x, y in points.items()})
    return x_label, y_label, series


def plot_curves(metrics: dict[str, dict[str, Any]], path: Path, title: str) -> Path | None:
    """Plot the merged curves to ``path``; ``None`` when the task reports no curve.
    Scalar baselines are grey reference lines, and points resting on few examples (a
    curve's ``n``) are annotated."""
    from anyformer.lab.plots import (
        _pyplot,
        _save,
        _scale,
        annotate_counts,
        draw_references,
        reference_values,
    )
    from anyformer.lab.results import flatten

    x_label, y_label, series = curves(metrics)
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, points in series.items():
        xs = sorted(points)
        style = "-o" if name.startswith("model") else "--"
        ax.plot(xs, [points[x] for x in xs], style, label=name, markersize=3)
    for m in metrics.values():
        counts = (m.get("curve") or {}).get("n") or {}
        model = (m.get("curve") or {}).get("series", {}).get("model", {})
        xs = sorted(model, key=float)
        annotate_counts(ax, [float(x) for x in xs], [model[x] for x in xs],
                        [counts.get(x) for x in xs])  # fmt: skip
    refs: dict[str, float] = {}
    for m in metrics.values():
        flat = flatten({k: v for k, v in m.items() if k != "curve"})
        refs.update({k: v for k, v in reference_values(flat, y_label).items() if k not in series})
    draw_references(ax, refs)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    _scale(ax, y_label)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out = _save(fig, path)
    plt.close(fig)
    return out


PROVENANCE_FILE = "provenance.json"


def session_record(provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """This session: ``provenance`` plus the command line, anyformer's version, the date
    (UTC), the machine and the versions of python and torch."""
    import torch

    from anyformer.training.throughput import benchmark_environment

    env = benchmark_environment(torch.get_num_threads(), packages=("anyformer",))
    env["machine"].pop("loadavg", None)
    given = dict(provenance or {})
    return {
        **given,
        "command": given.get("command") or _python_command(),
        "anyformer": env["versions"].pop("anyformer", "unknown (not installed)"),
        **env,
    }


def _python_command() -> str | None:
    """This process's command line (``python -m anyformer ...`` for the module)."""
    if not sys.argv or not sys.argv[0]:
        return None
    if sys.argv[0].endswith("anyformer/__main__.py"):
        return " ".join(["python -m anyformer", *map(shlex.quote, sys.argv[1:])])
    return shlex.join(sys.argv)


def read_sessions(folder: Path) -> list[dict[str, Any]]:
    """The sessions recorded in a run folder (oldest first; [] when none or unreadable)."""
    try:
        data = json.loads((Path(folder) / PROVENANCE_FILE).read_text())
    except (OSError, ValueError):
        return []
    return (
        [s for s in data.get("sessions", []) if isinstance(s, dict)]
        if isinstance(data, dict)
        else []
    )


def record_session(folder: Path, provenance: dict[str, Any] | None = None) -> None:
    """Append this session to the run folder's ``provenance.json`` (atomically)."""
    sessions = [*read_sessions(folder), session_record(provenance)]
    write_text_atomic(Path(folder) / PROVENANCE_FILE, json.dumps({"sessions": sessions}, indent=1))


def _component(ref: Any) -> str:
    params = {k: v for k, v in (ref.params or {}).items() if v is not None}
    inner = ", ".join(f"{k}={v}" for k, v in params.items())
    return f"`{ref.name}`" + (f" ({inner})" if inner else "")


def what_ran(run: Run, model: nn.Module) -> list[str]:
    """Markdown bullets describing the task, objective, model and training that ran."""
    from anyformer import registry

    spec, m = run.spec, run.spec.model
    entry = registry.get("task", spec.task.name)
    summary = f" — {entry.summary}" if entry.summary else ""
    params = getattr(model, "num_params", lambda: 0)()
    flops = getattr(model, "flops_per_token", None)
    seq = run.task.max_seq_len()
    objective = spec.objective.name if spec.objective else "-"
    lines = [
        f"- task: {_component(spec.task)}{summary}",
        f"- objective: `{objective}`",
        f"- model: {m.kind}, {m.n_layers} distinct blocks, d_model {m.d_model}, "
        f"{m.n_heads} heads, depth schedule {_component(m.depth)}",
        f"- components: attention {_component(m.attention)}, position {_component(m.position)}, "
        f"ffn {_component(m.ffn)}, norm {_component(m.norm)} ({m.norm_placement.name})"
        + (", and after the embeddings (embed_norm)" if m.embed_norm else ""),
    ]
    if m.kind == "encoder_decoder":
        enc = m.encoder_spec()
        lines.append(
            f"- encoder: {enc.n_layers} blocks of attention {_component(enc.attention)}, "
            f"embedder {_component(enc.embedder_ref)}; cross-attention "
            f"{_component(m.cross_attention_ref)}; shared embeddings: "
            f"{getattr(model, 'shares_embeddings', m.share_embeddings)}"
        )
    if m.layers:
        lines.append(f"- per-layer overrides: `{json.dumps(m.model_dump(mode='json')['layers'])}`")
    lines += [f"- parameters: {params:,}"]
    if callable(flops):
        lines[-1] += f"; training FLOPs per token at length {seq}: {flops(seq):.3g}"
    t = spec.train
    lines += [
        f"- training: {run.result.step} of {t.steps} steps, batch size {t.batch_size}, lr {t.lr}, "
        f"seed {t.seed}; {run.result.seconds:.1f} s in the last session",
        f"- spec hash: `{spec.hash}` (the full spec is `spec.yaml`)",
    ]
    return lines + parent_lines(run)


def parent_lines(run: Run) -> list[str]:
    """For a fine-tuned run (``init_from``): a bullet linking the parent run's report
    (relative to this run's folder) with the checkpoint its backbone came from; for a run
    with ``freeze`` or ``linear_probe`` one naming what was frozen."""
    from anyformer.lab.init_from import parent_link

    spec = run.spec
    frozen = []
    if spec.linear_probe:
        frozen.append("- frozen: everything but the head (linear probe)")
    elif spec.freeze:
        frozen.append(f"- frozen: {', '.join(spec.freeze)}")
    if spec.init_from is None:
        return frozen
    came = next((s for s in read_sessions(run.dir) if s.get("init_from")), {})
    step = came.get("parent_step")
    source = f" (backbone from its checkpoint at step {step}" if step is not None else ""
    if source and came.get("parent_spec_hash"):
        source += f", spec hash `{came['parent_spec_hash']}`"
    source += ")" if source else ""
    # the path recorded when the backbone was read: a resume from another working folder
    # still links the right report
    where = came.get("parent_path")
    where = where if isinstance(where, str) and where else spec.init_from
    lines = [
        f"- initialised from the run [{spec.init_from}]({parent_link(run.dir, where)})"
        f"{source}: embedder, position, blocks and final norm; the head is new"
    ]
    return lines + frozen


def provenance_lines(folder: Path) -> list[str]:
    """One bullet per recorded session: when, what command, where."""
    out = []
    for i, s in enumerate(read_sessions(folder), 1):
        machine, versions = s.get("machine", {}), s.get("versions", {})
        what = "resumed" if s.get("resumed") else "started"
        if s.get("comparison"):
            what += f" by the comparison `{s['comparison']}`"
        where = f"{machine.get('platform', '?')}, {machine.get('processor', '?')} x{machine.get('cpus', '?')}"
        if machine.get("gpu"):
            where += f", GPU {machine['gpu']} x{machine.get('gpu_count', 1)}"
        parts = [f"{i}. {s.get('date', '?')}: {what}"]
        if s.get("command"):
            parts.append(f"command `{s['command']}`")
        if s.get("experiment"):
            parts.append(f"experiment `{s['experiment']}`")
        if s.get("overrides"):
            parts.append("overrides " + " ".join(f"`{o}`" for o in s["overrides"]))
        if s.get("init_from"):
            parts.append(f"backbone from `{s['init_from']}` ({s.get('parent_checkpoint', '?')})")
        parts.append(f"anyformer {s.get('anyformer', '?')}, python {versions.get('python', '?')}, "
                     f"torch {versions.get('torch', '?')}; {where}")  # fmt: skip
        out.append("; ".join(parts))
    return out


def width_rows(run: Run, model: nn.Module, objective: Any) -> list[dict[str, Any]]:
    """For a MatFormer model: the metrics of every split at every trained width (the
    model set to that width, no retraining), with ``params``, those of a standalone model
    extracted at that width; ``[]`` for a model without nested FFNs."""
    import torch

    from anyformer.model.elastic import extract
    from anyformer.model.widths import granularities, nested_ffns, widths_set
    from anyformer.tasks.packing import model_inputs

    if not nested_ffns(model):
        return []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()

    def predict(b: Any) -> torch.Tensor:
        b = b.to(device)
        return model(b.inputs, **model_inputs(b))

    rows = []
    try:
        for width in granularities(model):
            with widths_set(model, width):
                params = extract(model, width)[0].num_params()
                for split in run.metrics:
                    if split not in run.task.splits:
                        continue
                    metrics = run.task.evaluate(predict, split, run.spec.train.eval_size, objective)
                    rows.append({"width": f"{width:g}", "split": split, "params": params,
                                 **scalar_metrics(metrics)})  # fmt: skip
    finally:
        model.train(was_training)
    return rows


def rows_table(rows: list[dict[str, Any]], headline: str) -> list[str]:
    """Markdown table of :func:`width_rows`: width, split, headline, loss, params."""
    keys = [k for k in ("width", "split", headline, "loss", "params") if any(k in r for r in rows)]
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        out.append("| " + " | ".join(cells) + " |")
    return out


def write_report(run: Run, model: nn.Module, objective: Any = None) -> Path:
    """Write ``report.md``, ``plots/curve.png``, the task's own plot
    (:mod:`anyformer.lab.task_plot`: ``confusion.png``, ``predicted_vs_true.png``,
    ``images.png`` or ``boxes.png``) and ``plots/loss.png`` into the run folder (``objective`` gives the
    loss of each MatFormer width)."""
    from anyformer.lab.plots import image_lines, plot_losses
    from anyformer.lab.results import read_losses
    from anyformer.lab.task_plot import write_task_plot

    spec = run.spec
    plot = plot_curves(
        run.metrics, run.dir / "plots" / "curve.png", f"{spec.name}: {spec.task.name}"
    )
    task_plot = write_task_plot(run, model)
    losses = {step: (loss, 0.0) for step, loss in read_losses(run.dir).items()}
    loss_plot = plot_losses({"train": losses}, run.dir / "plots" / "loss.png",
                            f"{spec.name}: training loss")  # fmt: skip
    lines = [f"# {spec.name}", ""]
    if spec.description:
        lines += [spec.description, ""]
    lines += ["## What ran", "", *what_ran(run, model), ""]
    sessions = provenance_lines(run.dir)
    if sessions:
        lines += ["## Sessions", "", *sessions, ""]
    lines += ["## Results", ""]
    rows = results_rows(run, baselines=True)
    headline = run.task.headline
    names = [headline] + sorted({k for _, m in rows for k in m} - {headline})
    lines.append("| split | " + " | ".join(names) + " |")
    lines.append("|---" * (len(names) + 1) + "|")
    for split, m in rows:
        lines.append(
            f"| {split} | " + " | ".join(f"{m[k]:.4g}" if k in m else "" for k in names) + " |"
        )
    note = conformal_note(run)
    if note:
        lines += ["", note]
    widths = width_rows(run, model, objective)
    if widths:
        lines += ["", "## MatFormer widths", "",
                  "Every trained width of the nested FFNs, evaluated without retraining "
                  "(params: a standalone model extracted at that width).", ""]  # fmt: skip
        lines += rows_table(widths, run.task.headline)
    lines += image_lines([plot, task_plot, loss_plot], run.dir)
    path = run.dir / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path
