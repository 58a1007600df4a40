"""Plots of comparisons: a metric against the task's curve axis, and against parameters."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anyformer.lab.compare import CompareResult


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


def plot_compare_curves(result: CompareResult, folder: Path) -> list[Path]:
    """One PNG per split: each variant's model curve with its 95% band; baselines dashed."""
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
            for series, pts in curve["series"].items():
                xs = sorted(pts, key=float)
                ys = [pts[x]["mean"] for x in xs]
                ci = [pts[x]["ci95"] for x in xs]
                fx = [float(x) for x in xs]
                if series == "model":
                    line = ax.plot(fx, ys, "-o", markersize=3, label=label)[0]
                    lo = [y - c for y, c in zip(ys, ci)]
                    hi = [y + c for y, c in zip(ys, ci)]
                    ax.fill_between(fx, lo, hi, color=line.get_color(), alpha=0.15)
                elif series not in baselines_drawn:
                    baselines_drawn.add(series)
                    ax.plot(fx, ys, "--", color="gray", alpha=0.8, label=series)
        ax.set_xlabel(x_label)
        ax.set_ylabel(y_label)
        if y_label in ("mse", "nll"):
            ax.set_yscale("symlog", linthresh=1e-3)
        ax.set_title(f"{result.base.name} ({split})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        paths.append(_save(fig, folder / f"curve_{split}.png"))
        plt.close(fig)
    return paths


def plot_metric_vs_params(result: CompareResult, path: Path) -> Path | None:
    """The headline metric (in-distribution) against each variant's parameter count."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=100)
    drawn = False
    for v in result.variants:
        m = result.summary.get(v.label, {}).get("id", {}).get(result.headline)
        if m is None:
            continue
        ax.errorbar([v.params], [m["mean"]], yerr=[m["ci95"]], fmt="o", capsize=3, label=v.label)
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(f"{result.headline} (id)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    out = _save(fig, path)
    plt.close(fig)
    return out
