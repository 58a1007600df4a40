"""Figures of runs and comparisons.

Conventions every figure follows:

- an interval band or error bar is clipped to the metric's range (:func:`metric_range`:
  accuracies and exact match lie in [0, 1], squared errors are >= 0), so a 95% interval
  of a bounded metric never draws impossible values;
- trivial baselines the metrics carry are drawn as grey reference lines
  (:func:`reference_values`: ``chance``, ``majority``, and ``baselines.<name>`` or
  ``baselines.<name>.<metric>``), and baseline *series* of a curve as dashed lines;
- a curve point that rests on fewer than :data:`FEW` examples (a curve's optional ``n``
  map, summed over seeds in comparisons) is annotated ``n=...``;
- every PNG is written to a temporary file and renamed.

Comparison figures: ``curve_<split>.png`` (each variant's curve with its band),
``params.png`` (headline against parameters on a log axis; a bar chart per variant when
all variants have the same size, where that axis would be one point), ``cost.png``
(headline against training FLOPs per token and against measured tokens/s) and
``loss.png`` (training loss by step, mean over seeds with its band). Run figures:
``curve.png`` and ``loss.png``, and the task's own figure (:func:`plot_task`, from the
data of :meth:`anyformer.tasks.base.Task.plot_data`, one panel per split):
``confusion.png`` (a confusion matrix with the accuracy in each panel's title),
``predicted_vs_true.png`` (predicted against true values with the conformal interval of
each point as an error bar and its coverage in the legend), ``images.png`` (input,
output, target and baseline images side by side) or ``boxes.png`` (images with their
true and predicted boxes).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anyformer.lab.compare import CompareResult
    from anyformer.tasks.plot_data import BoxesOnImages, Confusion, ImageGrid, PlotData, Scatter

#: a curve point resting on fewer examples than this is annotated with its count
FEW = 30

_UNIT = ("accuracy", "exact_match", "token_accuracy", "exact", "acc", "f1", "recall")
_NONNEG = ("mse", "mae", "perplexity", "ppl", "bits_per_byte", "bpb", "blocks")


def metric_range(name: str) -> tuple[float | None, float | None]:
    """The values metric ``name`` can take: (0, 1) for accuracies and exact match, (0,
    None) for squared errors and perplexities, (None, None) when unknown (a loss or a
    Gaussian NLL may be negative)."""
    last = name.rsplit(".", 1)[-1].lower()
    if last in _UNIT or last.endswith(("accuracy", "exact_match")) or last == "chance":
        return 0.0, 1.0
    if last in _NONNEG or last.endswith("mse"):
        return 0.0, None
    return None, None


def clip(value: float, metric: str) -> float:
    lo, hi = metric_range(metric)
    if lo is not None:
        value = max(lo, value)
    if hi is not None:
        value = min(hi, value)
    return value


def band(means: list[float], half: list[float], metric: str) -> tuple[list[float], list[float]]:
    """Lower and upper edges of ``mean ± half`` clipped to ``metric``'s range."""
    lo = [clip(m - h, metric) for m, h in zip(means, half)]
    hi = [clip(m + h, metric) for m, h in zip(means, half)]
    return lo, hi


def yerr(mean: float, half: float, metric: str) -> list[list[float]]:
    """An asymmetric error bar ``[[below], [above]]`` clipped to ``metric``'s range."""
    lo, hi = clip(mean - half, metric), clip(mean + half, metric)
    return [[max(0.0, mean - lo)], [max(0.0, hi - mean)]]


def reference_values(flat: dict[str, float], metric: str) -> dict[str, float]:
    """Trivial baselines among a split's flattened scalar metrics, for ``metric``:
    ``chance`` and ``majority`` (accuracy-like metrics only), ``baselines.<name>`` and
    ``baselines.<name>.<metric>``."""
    out: dict[str, float] = {}
    unit = metric_range(metric) == (0.0, 1.0)
    for key, value in flat.items():
        parts = key.split(".")
        if key in ("chance", "majority") or (
            parts[-1] in ("chance", "majority") and len(parts) == 2
        ):
            if unit:
                out[parts[-1]] = value
        elif parts[0] == "baselines" and (
            len(parts) == 2 or (len(parts) == 3 and parts[2] == metric)
        ):
            out[parts[1]] = value
    return out


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp)
    tmp.replace(path)
    return path


def draw_references(ax: Any, refs: dict[str, float]) -> None:
    """Grey horizontal lines, labelled, for trivial baselines."""
    styles = [":", "-.", (0, (1, 3)), (0, (5, 2))]
    for i, (name, value) in enumerate(sorted(refs.items())):
        ax.axhline(value, color="gray", alpha=0.7, linestyle=styles[i % len(styles)],
                   linewidth=1, label=f"{name} ({value:.3g})")  # fmt: skip


def annotate_counts(ax: Any, xs: list[float], ys: list[float], counts: list[float | None]) -> None:
    """``n=...`` beside points that rest on fewer than :data:`FEW` examples."""
    for x, y, n in zip(xs, ys, counts):
        if n is not None and n < FEW:
            ax.annotate(f"n={int(n)}", (x, y), textcoords="offset points", xytext=(3, 4),
                        fontsize=6, color="dimgray")  # fmt: skip


def _scale(ax: Any, metric: str) -> None:
    if metric in ("mse", "nll"):
        ax.set_yscale("symlog", linthresh=1e-3)
    lo, hi = metric_range(metric)
    if (lo, hi) == (0.0, 1.0):
        ax.set_ylim(-0.03, 1.03)


def _split_refs(result: CompareResult, split: str, metric: str) -> dict[str, float]:
    """Reference values of ``split`` averaged over variants (the data are the variants')."""
    from anyformer.lab.results import flatten

    found: dict[str, list[float]] = {}
    for s in result.summary.values():
        flat = flatten({k: v["mean"] for k, v in s.get(split, {}).items()})
        for name, value in reference_values(flat, metric).items():
            found.setdefault(name, []).append(value)
    return {k: sum(v) / len(v) for k, v in found.items()}


def plot_compare_curves(result: CompareResult, folder: Path) -> list[Path]:
    """One PNG per split: each variant's model curve with its clipped 95% band; baseline
    series dashed; scalar baselines as reference lines; few-example points annotated."""
    plt = _pyplot()
    paths = []
    splits = sorted({s for c in result.curves.values() for s in c})
    for split in splits:
        fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
        x_label = y_label = ""
        baselines_drawn: set[str] = set()
        for label, curves in result.curves.items():
            curve = curves.get(split)
            if not curve:
                continue
            x_label, y_label = curve["x"], curve["y"]
            counts = curve.get("n", {})
            for series, pts in curve["series"].items():
                xs = sorted(pts, key=float)
                ys = [pts[x]["mean"] for x in xs]
                ci = [pts[x]["ci95"] for x in xs]
                fx = [float(x) for x in xs]
                if series == "model":
                    line = ax.plot(fx, ys, "-o", markersize=3, label=label)[0]
                    lo, hi = band(ys, ci, y_label)
                    ax.fill_between(fx, lo, hi, color=line.get_color(), alpha=0.15)
                    annotate_counts(ax, fx, ys, [counts.get(x) for x in xs])
                elif series not in baselines_drawn:
                    baselines_drawn.add(series)
                    ax.plot(fx, ys, "--", color="gray", alpha=0.8, label=series)
        draw_references(ax, {k: v for k, v in _split_refs(result, split, y_label).items()
                             if k not in baselines_drawn})  # fmt: skip
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        _scale(ax, y_label)
        ax.set_title(f"{result.base.name} ({split})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(_save(fig, folder / f"curve_{split}.png"))
        plt.close(fig)
    return paths


def _headline(result: CompareResult, label: str) -> dict[str, Any] | None:
    return result.summary.get(label, {}).get("id", {}).get(result.headline)


def plot_metric_vs_params(result: CompareResult, path: Path) -> Path | None:
    """The in-distribution headline against each variant's parameter count (log axis);
    when every variant has the same size, a bar per variant instead (titled with the
    common size), since the parameter axis would hold a single point."""
    plt = _pyplot()
    metric = result.headline
    points = [(v, _headline(result, v.label)) for v in result.variants]
    points = [(v, m) for v, m in points if m is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    sizes = {v.params for v, _ in points}
    if len(sizes) == 1 or max(sizes) <= 1.01 * min(sizes):
        for i, (v, m) in enumerate(points):
            ax.bar([i], [m["mean"]], yerr=yerr(m["mean"], m["ci95"], metric), capsize=3,
                   label=v.label)  # fmt: skip
        ax.set_xticks(range(len(points)), [v.label for v, _ in points], rotation=20, fontsize=7)
        ax.set_title(f"every variant has {min(sizes):,} parameters", fontsize=9)
    else:
        for v, m in points:
            ax.errorbar([v.params], [m["mean"]], yerr=yerr(m["mean"], m["ci95"], metric),
                        fmt="o", capsize=3, label=v.label)  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
    draw_references(ax, _split_refs(result, "id", metric))
    ax.set_ylabel(f"{metric} (id)")
    _scale(ax, metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_metric_vs_cost(result: CompareResult, path: Path) -> Path | None:
    """The in-distribution headline against training FLOPs per token and against the
    measured (interleaved) training tokens/s, one panel each."""
    plt = _pyplot()
    metric = result.headline
    axes_keys = [
        ("flops_per_token", "training FLOPs per token"),
        ("tokens_per_s", "training tokens/s (interleaved)"),
    ]
    axes_keys = [
        (k, name) for k, name in axes_keys
        if any(result.cost.get(v.label, {}).get(k) for v in result.variants)
    ]  # fmt: skip
    if not axes_keys or not any(_headline(result, v.label) for v in result.variants):
        return None
    fig, axs = plt.subplots(1, len(axes_keys), figsize=(5 * len(axes_keys), 4), dpi=100,
                            squeeze=False)  # fmt: skip
    refs = _split_refs(result, "id", metric)
    for ax, (key, name) in zip(axs[0], axes_keys):
        for v in result.variants:
            m, x = _headline(result, v.label), result.cost.get(v.label, {}).get(key)
            if m is None or not x:
                continue
            ax.errorbar([x], [m["mean"]], yerr=yerr(m["mean"], m["ci95"], metric), fmt="o",
                        capsize=3, label=v.label)  # fmt: skip
        xs = [result.cost.get(v.label, {}).get(key) or 0 for v in result.variants]
        if min(xs) > 0 and max(xs) > 10 * min(xs):  # spans a decade or more
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(f"{metric} (id)")
        draw_references(ax, refs)
        _scale(ax, metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    out = _save(fig, path)
    plt.close(fig)
    return out


def plot_losses(
    series: dict[str, dict[int, tuple[float, float]]], path: Path, title: str
) -> Path | None:
    """Training loss by step per series (mean and 95% band over seeds); ``None`` when no
    run logged a loss."""
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4), dpi=100)
    for label, points in series.items():
        steps = sorted(points)
        means = [points[s][0] for s in steps]
        half = [points[s][1] for s in steps]
        style = "-o" if len(steps) <= 50 else "-"
        line = ax.plot(steps, means, style, markersize=2.5, linewidth=1.2, label=label)[0]
        if any(half) and len(steps) > 1:
            lo, hi = band(means, half, "loss")
            ax.fill_between(steps, lo, hi, color=line.get_color(), alpha=0.15)
        elif any(half):
            ax.errorbar(steps, means, yerr=half, fmt="none", color=line.get_color(), capsize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    values = [p[0] for pts in series.values() for p in pts.values()]
    if min(values) > 0 and max(values) > 20 * min(values):  # spans decades
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out = _save(fig, path)
    plt.close(fig)
    return out


#: The file each kind of task plot is written to.
TASK_PLOT_FILES = {
    "confusion": "confusion.png",
    "scatter": "predicted_vs_true.png",
    "images": "images.png",
    "boxes": "boxes.png",
}
#: At most this many points of a scatter are drawn (coverage counts them all).
MAX_SCATTER_POINTS = 1500


def plot_task(panels: list[PlotData], folder: Path, title: str) -> Path | None:
    """Draw a task's plot data (one panel per split, all of one kind) into ``folder``
    under the kind's file name (:data:`TASK_PLOT_FILES`); ``None`` without panels."""
    if not panels:
        return None
    kinds = {p.kind for p in panels}
    if len(kinds) != 1:
        raise ValueError(f"a task plot has panels of one kind, got {sorted(kinds)}")
    kind = kinds.pop()
    draw = {"confusion": _confusion, "scatter": _scatter, "images": _images, "boxes": _boxes}[kind]
    plt = _pyplot()
    fig = draw(plt, panels, title)
    out = _save(fig, folder / TASK_PLOT_FILES[kind])
    plt.close(fig)
    return out


def _confusion(plt: Any, panels: list[Confusion], title: str) -> Any:
    n = len(panels[0].labels)
    side = min(12.0, 2.0 + 0.45 * n)
    fig, axes = plt.subplots(1, len(panels), figsize=(side * len(panels), side + 0.8),
                             dpi=100, squeeze=False)  # fmt: skip
    for ax, panel in zip(axes[0], panels):
        counts = panel.counts
        ax.imshow(counts, cmap="Blues", vmin=0)
        ticks = range(len(panel.labels))
        ax.set_xticks(ticks, panel.labels, rotation=90 if n > 10 else 0, fontsize=7)
        ax.set_yticks(ticks, panel.labels, fontsize=7)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        if n <= 25:
            top = counts.max() or 1
            for i in range(n):
                for j in range(n):
                    if counts[i, j]:
                        color = "white" if counts[i, j] > top / 2 else "black"
                        ax.text(j, i, str(int(counts[i, j])), ha="center", va="center",
                                fontsize=6, color=color)  # fmt: skip
        ax.set_title(f"{panel.split}: accuracy {panel.accuracy:.3f} (n={panel.examples})",
                     fontsize=9)  # fmt: skip
    fig.suptitle(title)
    return fig


def _scatter(plt: Any, panels: list[Scatter], title: str) -> Any:
    import numpy as np

    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.6), dpi=100,
                             squeeze=False)  # fmt: skip
    for ax, panel in zip(axes[0], panels):
        n = panel.true.size
        pick = np.arange(n)
        if n > MAX_SCATTER_POINTS:  # a fixed, evenly spread subset
            pick = np.linspace(0, n - 1, MAX_SCATTER_POINTS).round().astype(np.int64)
        true, pred = panel.true[pick], panel.pred[pick]
        label = f"model (n={n}{', ' + str(len(pick)) + ' drawn' if len(pick) < n else ''})"
        if panel.lower is not None and panel.upper is not None:
            below = np.clip(pred - panel.lower[pick], 0, None)
            above = np.clip(panel.upper[pick] - pred, 0, None)
            ax.errorbar(true, pred, yerr=[below, above], fmt="none", ecolor="tab:blue",
                        alpha=0.25, linewidth=0.8,
                        label=f"conformal interval at {panel.level:g}: coverage "
                        f"{panel.coverage:.3f}")  # fmt: skip
        ax.scatter(true, pred, s=6, color="tab:blue", label=label)
        finite = np.concatenate([true[np.isfinite(true)], pred[np.isfinite(pred)]])
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            ax.plot([lo, hi], [lo, hi], color="gray", linestyle="--", linewidth=1,
                    label="predicted = true")  # fmt: skip
        ax.set_xlabel(f"true {panel.quantity}")
        ax.set_ylabel(f"predicted {panel.quantity}")
        ax.set_title(panel.split, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return fig


def _images(plt: Any, panels: list[ImageGrid], title: str) -> Any:
    rows = [(panel.split, r) for panel in panels for r in range(len(panel.images[0]))]
    columns = panels[0].columns
    fig, axes = plt.subplots(len(rows), len(columns), figsize=(1.8 * len(columns),
                             1.8 * len(rows)), dpi=100, squeeze=False)  # fmt: skip
    by_split = {panel.split: panel for panel in panels}
    for i, (split, r) in enumerate(rows):
        for j, name in enumerate(columns):
            ax = axes[i][j]
            image = by_split[split].images[j][r]
            if image.shape[-1] == 1:
                ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
            else:
                ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0 or rows[i - 1][0] != split:
                ax.set_title(name, fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{split} {r}", fontsize=8)
    fig.suptitle(title)
    return fig


def _boxes(plt: Any, panels: list[BoxesOnImages], title: str) -> Any:
    """One row of images per split, true boxes solid white, predicted dashed yellow."""
    from matplotlib.patches import Rectangle

    cols = max(len(p.images) for p in panels)
    fig, axes = plt.subplots(len(panels), cols, figsize=(1.8 * cols, 2.3 * len(panels)),
                             dpi=100, squeeze=False)  # fmt: skip
    for row, panel in zip(axes, panels):
        for j, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(panel.images):
                ax.axis("off")
                continue
            ax.imshow(panel.images[j])
            for boxes, style in ((panel.true[j], dict(edgecolor="white", linestyle="-")),
                                 (panel.pred[j], dict(edgecolor="yellow", linestyle="--"))):  # fmt: skip
                for x0, y0, x1, y1 in boxes:
                    # pixel p covers [p - 0.5, p + 0.5] in imshow's coordinates
                    ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0,
                                           fill=False, linewidth=1.2, **style))  # fmt: skip
            ax.set_title(f"{len(panel.true[j])} true, {len(panel.pred[j])} predicted", fontsize=6)
            if j == 0:
                ax.set_ylabel(panel.split, fontsize=8)
    how = panels[0].decoding
    fig.suptitle(f"{title} (true: white; predicted, {how}: yellow dashed)")
    return fig


def image_lines(paths: list[Path | None], root: Path) -> list[str]:
    """Markdown images, each its own paragraph (a blank line before and after), with
    paths relative to ``root``, so none is read as part of a table above it."""
    out: list[str] = []
    for p in paths:
        if p is not None:
            out += ["", f"![{p.stem}]({Path(p).relative_to(root).as_posix()})"]
    return [*out, ""] if out else out
