"""Fair comparisons: a grid of variants × seeds (× learning rates), aggregated with intervals.

A comparison is a base experiment and a list of axes (``model.position=rope,alibi``).
Every variant is trained for every seed in its own run folder under the comparison's
folder, so an interrupted comparison resumes: finished runs are read back, not redone.
Metrics are aggregated over seeds as a mean and a 95% t-interval. With
``match_params`` each variant's ``d_model`` is adjusted so its parameter count is within
5% of the first variant's (iso-parameter comparison). With a learning-rate grid every
variant is trained at every rate and the rate with the best mean headline metric on the
in-distribution split counts, as in MAD-lab's protocol.

A comparison folder belongs to one grid: the base spec, the axes with their values,
``match_params`` and the learning rates (:func:`grid_key`; the seed count is left out,
so more seeds extend a comparison and reuse its runs). The default folder
(:func:`default_folder`) carries that key, and :func:`compare` refuses a folder that
holds another grid unless told to replace it. Each variant's cost (parameters, FLOPs
per token, tokens/s measured interleaved across variants, wall time and peak memory of
its runs; :mod:`anyformer.lab.cost`) is reported beside its metrics.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anyformer.errors import SpecError
from anyformer.lab.compare_report import (  # noqa: F401  (re-exported)
    cost_markdown,
    table_markdown,
    table_rows,
    write_compare_report,
)
from anyformer.lab.results import flatten, mean_interval, training_losses
from anyformer.lab.run import build_task, resolve, run_folder
from anyformer.spec import ExperimentSpec, write_text_atomic

log = logging.getLogger(__name__)


def split_top(text: str, sep: str) -> list[str]:
    """``text`` split at each ``sep`` outside ``{...}`` and ``[...]``, so that a value may be
    a YAML flow mapping or list: ``softmax,{name: sliding_window, window: 8}`` has two."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


def value_label(value: str) -> str:
    """A short label for an axis value: a flow mapping with a ``name`` reads
    ``name(key=value;...)`` (``{name: sliding_window, window: 8}`` ->
    ``sliding_window(window=8)``); anything else is itself."""
    if not value.startswith("{"):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if not isinstance(parsed, dict) or "name" not in parsed:
        return value
    rest = ";".join(f"{k}={v}" for k, v in parsed.items() if k != "name")
    return f"{parsed['name']}({rest})" if rest else str(parsed["name"])


def parse_axis(text: str) -> tuple[str, list[str]]:
    """``model.position=rope,alibi`` -> (``model.position``, [``rope``, ``alibi``]).

    A joint axis varies several keys together: ``model.n_layers,model.n_heads=1:8,4:2``.
    A value may be a YAML flow mapping, to switch to a component with its own
    parameters: ``model.attention=softmax,{name: sliding_window, window: 8}``."""
    key, sep, values = text.partition("=")
    n_keys = len(key.split(","))
    items = [v.strip() for v in split_top(values, ",") if v.strip()]
    if n_keys > 1 and values.count(":") == 0:
        raise SpecError(f"--vary '{text}': a joint axis takes values like 1:8,4:2")
    if not sep or not key or not items:
        raise SpecError(f"--vary '{text}' is not KEY=A,B,C (e.g. model.position=rope,alibi,none)")
    return key, items


def _joint(key: str, value: str) -> list[tuple[str, str]]:
    """A joint axis ``a,b`` with value ``x:y`` sets a=x and b=y together."""
    keys = key.split(",")
    if len(keys) == 1:
        return [(key, value)]
    values = split_top(value, ":")
    if len(values) != len(keys):
        raise SpecError(f"joint axis '{key}' needs {len(keys)} values joined by ':', got '{value}'")
    return list(zip(keys, values))


@dataclass
class Variant:
    """One point of the grid: a label, its overrides and the resolved spec (seed 0)."""

    label: str
    overrides: list[str]
    spec: ExperimentSpec
    params: int = 0


@dataclass
class CompareResult:
    """Aggregated results: per variant, per split, per metric: (mean, half-width, values)."""

    dir: Path
    base: ExperimentSpec
    axes: list[tuple[str, list[str]]]
    variants: list[Variant]
    summary: dict[str, dict[str, dict[str, dict[str, Any]]]] = field(default_factory=dict)
    curves: dict[str, dict[str, Any]] = field(default_factory=dict)
    headline: str = ""
    higher_is_better: bool = True
    lrs: dict[str, float] = field(default_factory=dict)
    #: run folders per variant label and learning rate (None without an lr grid), by seed
    runs: dict[str, dict[Any, list[Path]]] = field(default_factory=dict)
    match_params: bool = False
    #: per variant: params, flops_per_token, tokens_per_s, wall_s, peak_memory_bytes, ...
    cost: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: per variant: mean training loss over seeds by step ({step: (mean, ci95)})
    losses: dict[str, dict[int, tuple[float, float]]] = field(default_factory=dict)
    grid: dict[str, Any] = field(default_factory=dict)

    def mean(self, variant: str, metric: str, split: str = "id") -> float:
        return float(self.summary[variant][split][metric]["mean"])

    def run_dirs(self, variant: str) -> list[Path]:
        """The run folder of every seed of ``variant`` at its chosen learning rate."""
        return list(self.runs[variant][self.lrs.get(variant)])

    def to_json(self) -> dict[str, Any]:
        return {
            "grid": self.grid,
            "base": self.base.to_dict(),
            "axes": [{"key": k, "values": v} for k, v in self.axes],
            "variants": [
                {
                    "label": v.label,
                    "overrides": v.overrides,
                    "params": v.params,
                    "d_model": v.spec.model.d_model,
                    "ffn": v.spec.model.ffn.name,
                    "ffn_mult": v.spec.model.ffn.params.get("mult"),
                }
                for v in self.variants
            ],  # fmt: skip
            "match_params": self.match_params,
            "cost": self.cost,
            "headline": self.headline,
            "higher_is_better": self.higher_is_better,
            "learning_rates": self.lrs,
            # relative to the comparison folder, so that the record moves with it
            "runs": {
                label: [_relative(d, self.dir) for d in self.run_dirs(label)] for label in self.runs
            },
            "summary": self.summary,
            "curves": self.curves,
            "losses": {k: {str(s): list(v) for s, v in c.items()} for k, c in self.losses.items()},
        }


def grid_key(
    base: ExperimentSpec,
    axes: list[tuple[str, list[str]]],
    match_params: bool = False,
    lrs: list[float] | None = None,
) -> dict[str, Any]:
    """What defines a comparison's results (not the seed count): the base spec's hash, the
    axes with their values, ``match_params`` and the learning-rate grid, with ``key``, a
    short hash of all of them."""
    grid = {
        "base": base.name,
        "base_hash": base.with_overrides(["train.progress=false"]).hash,
        "axes": [[k, list(v)] for k, v in axes],
        "match_params": bool(match_params),
        "lrs": [float(x) for x in lrs] if lrs else None,
    }
    text = json.dumps(grid, sort_keys=True, separators=(",", ":"))
    return {"key": hashlib.sha256(text.encode()).hexdigest()[:8], **grid}


def default_folder(
    base: ExperimentSpec,
    axes: list[tuple[str, list[str]]],
    match_params: bool = False,
    lrs: list[float] | None = None,
    root: Path | str = "comparisons",
) -> Path:
    """``<root>/<name>-<axis names>-<grid key>``: two comparisons over the same axes with
    other values, overrides or options get different folders."""
    names = "-".join(k.split(".")[-1] for k, _ in axes)
    return Path(root) / f"{base.name}-{names}-{grid_key(base, axes, match_params, lrs)['key']}"


GRID_FILE = "grid.json"


def _legacy_grid(path: Path, grid: dict[str, Any]) -> dict[str, Any]:
    """The grid of a ``results.json`` written before grids were recorded: the same grid
    when its base spec and axes match (``match_params`` and rates were not recorded)."""
    try:
        saved = json.loads(path.read_text())
        old = {
            "key": "?",
            "base": saved["base"]["name"],
            "base_hash": ExperimentSpec.from_dict(saved["base"]).hash,
            "axes": [[a["key"], list(a["values"])] for a in saved["axes"]],
        }
    except (OSError, ValueError, KeyError, TypeError, SpecError):
        return {"key": "?"}
    if old["base_hash"] == grid["base_hash"] and old["axes"] == grid["axes"]:
        old["key"] = grid["key"]
    return old


def claim_folder(folder: Path, grid: dict[str, Any], replace: bool = False) -> None:
    """Record ``grid`` as the comparison of ``folder``; refuse (SpecError) a folder that
    holds another comparison, unless ``replace`` (its runs stay; its report and results
    are rewritten)."""
    path = folder / GRID_FILE
    old: dict[str, Any] | None = None
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = None
    elif (folder / "results.json").is_file():  # written before grids were recorded
        old = _legacy_grid(folder / "results.json", grid)
    if old is not None and old.get("key") != grid["key"] and not replace:

        def axes(g: dict[str, Any]) -> str:
            return "; ".join(f"{k}={','.join(v)}" for k, v in g.get("axes", [])) or "unknown"

        raise SpecError(
            f"comparison folder '{folder}' already holds another comparison (grid {old.get('key')}: "
            f"base {old.get('base', '?')} {old.get('base_hash', '')}, axes {axes(old)}); this one "
            f"is grid {grid['key']} (base {grid['base']} {grid['base_hash']}, axes {axes(grid)}). "
            f"Choose another --out, or leave --out unset for a folder named by the grid"
        )
    write_text_atomic(path, json.dumps(grid, indent=1))


def count_params(spec: ExperimentSpec) -> int:
    """Parameters of the spec's model, counted without allocating weights."""
    import torch

    from anyformer.model.transformer import build_model

    with torch.device("meta"):
        return build_model(spec.model).num_params()


def _with(spec: ExperimentSpec, overrides: list[str]) -> ExperimentSpec:
    return resolve(spec.with_overrides(overrides)) if overrides else spec


def match_width(spec: ExperimentSpec, target: int, tolerance: float = 0.05) -> ExperimentSpec:
    """The spec with the ``d_model`` whose parameter count is nearest ``target``.

    Widths are multiples of ``n_heads``, then the FFN's ``mult`` is tuned in steps of
    0.1 if the width alone cannot get close; widths the spec refuses (e.g. odd head sizes
    with rotary positions) are skipped. Raises when no width comes within ``tolerance``.
    """
    step = spec.model.n_heads
    best, best_gap = spec, abs(count_params(spec) - target) / target
    for width in range(step, 8 * spec.model.d_model + step, step):
        try:
            candidate = _with(spec, [f"model.d_model={width}"])
        except SpecError:
            continue
        gap = abs(count_params(candidate) - target) / target
        if gap < best_gap:
            best, best_gap = candidate, gap
    if best_gap > tolerance and "mult" in best.model.ffn.params | _param_names(best):
        best, best_gap = _match_ffn_mult(best, target, best_gap)
    if best_gap > tolerance:
        raise SpecError(
            f"cannot match {target:,} parameters within {tolerance:.0%} by changing model.d_model "
            f"(closest: {count_params(best):,}); change n_layers or the FFN size instead"
        )
    return best


def _param_names(spec: ExperimentSpec) -> dict[str, Any]:
    return dict.fromkeys(spec.model.ffn.entry.params.model_fields)


def _match_ffn_mult(spec: ExperimentSpec, target: int, gap: float) -> tuple[ExperimentSpec, float]:
    """Fine-tune the FFN's hidden-size multiplier (after the width search)."""
    best, best_gap = spec, gap
    name = spec.model.ffn.name
    for tenths in range(5, 161):
        try:
            candidate = _with(spec, [f"model.ffn.mult={tenths / 10}"])
        except SpecError:
            continue
        g = abs(count_params(candidate) - target) / target
        if g < best_gap:
            best, best_gap = candidate, g
    log.info("matched parameters with %s mult=%s", name, best.model.ffn.params.get("mult"))
    return best, best_gap


def make_variants(
    base: ExperimentSpec, axes: list[tuple[str, list[str]]], match_params: bool
) -> list[Variant]:
    """The grid of variants (first axis varies slowest)."""
    variants = []
    for combo in itertools.product(*[[(k, v) for v in values] for k, values in axes]):
        pairs = [pair for k, v in combo for pair in _joint(k, v)]
        overrides = [f"{k}={v}" for k, v in pairs]
        label = ",".join(f"{k.split('.')[-1]}={value_label(v)}" for k, v in pairs) or "base"
        try:
            spec = resolve(base.with_overrides(overrides))
        except SpecError as exc:
            raise SpecError(f"variant '{label}': {exc}") from None
        variants.append(Variant(label, overrides, spec))
    if match_params and variants:
        target = count_params(variants[0].spec)
        for v in variants[1:]:
            v.spec = match_width(v.spec, target)
            if v.spec.model.d_model != base.model.d_model:
                v.overrides = [*v.overrides, f"model.d_model={v.spec.model.d_model}"]
            if "mult" in v.spec.model.ffn.params:
                v.overrides = [*v.overrides, f"model.ffn.mult={v.spec.model.ffn.params['mult']}"]
    for v in variants:
        v.params = count_params(v.spec)
    return variants


def _run_one(
    job: tuple[dict[str, Any], str, int | None, dict[str, Any] | None],
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (or read back) one run; returns its final metrics per split and its cost
    (``cost.json``: wall time and mean training tokens/s of its last session)."""
    spec_dict, folder, threads, provenance = job
    from anyformer.lab.run import run_experiment

    if threads:
        import torch

        torch.set_num_threads(threads)
    spec = ExperimentSpec.from_dict(spec_dict)
    done, cost_file = Path(folder) / "final.json", Path(folder) / "cost.json"
    if done.is_file():
        cost = json.loads(cost_file.read_text()) if cost_file.is_file() else {}
        return json.loads(done.read_text()), cost
    run = run_experiment(spec, run_dir=Path(folder), provenance=provenance)
    if run.result.interrupted:
        raise KeyboardInterrupt
    final = {split: m for split, m in run.metrics.items()}
    cost = {
        "wall_s": run.result.seconds,
        "train_tokens_per_s": run.result.tokens_per_s,
    }
    write_text_atomic(cost_file, json.dumps(cost))
    write_text_atomic(done, json.dumps(final))
    return final, cost


def compare(
    base: ExperimentSpec,
    axes: list[tuple[str, list[str]]],
    out: Path | str | None,
    seeds: int = 1,
    match_params: bool = False,
    lrs: list[float] | None = None,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
    replace: bool = False,
    timing: tuple[int, int] | None = (3, 3),
    per_seed: dict[str, list[str]] | None = None,
) -> CompareResult:
    """Run the grid and aggregate it; writes ``report.md``, ``results.json`` and plots.

    ``out`` is the comparison folder (``None``: :func:`default_folder`); a folder holding
    another grid is refused unless ``replace``. ``timing`` = (rounds, steps) of the
    interleaved speed measurement after training (``None`` skips it). ``per_seed``
    replaces override values seed by seed: a variant's override ``KEY=VALUE`` whose
    ``VALUE`` is a key of ``per_seed`` becomes ``KEY=per_seed[VALUE][seed]`` in the run
    of that seed (a finding's fine-tuned variants start from the parent run of their own
    seed: ``init_from=@<parent>``); the grid (and its folder) keeps ``VALUE``."""
    grid = grid_key(base, axes, match_params, lrs)
    folder = Path(out) if out is not None else default_folder(base, axes, match_params, lrs)
    base = base.with_overrides(["train.progress=false"])
    variants = make_variants(base, axes, match_params)
    claim_folder(folder, grid, replace)
    # the headline is the task instance's: table and shapes choose it from their parameters
    task = build_task(variants[0].spec)
    cells = []
    for v in variants:
        for lr in lrs or [None]:
            for seed in range(seeds):
                extra = [f"train.seed={base.train.seed + seed}"] + (
                    [f"train.lr={lr}"] if lr else []
                )
                extra += seed_values([*base_values(base, per_seed), *v.overrides], per_seed, seed)
                spec = v.spec.with_overrides(extra)
                cells.append((v.label, lr, seed, spec, [*v.overrides, *extra]))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    work = [
        (s.to_dict(), str(run_folder(s, folder / "runs")), threads if jobs > 1 else None,
         {"comparison": str(folder), "experiment": base.name, "overrides": overrides})
        for *_, s, overrides in cells
    ]  # fmt: skip
    if jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            outcomes = pool.map(_run_one, work)
    else:
        outcomes = []
        for i, job in enumerate(work):
            if progress:
                label, lr, seed, *_ = cells[i]
                progress(f"[{i + 1}/{len(work)}] {label} seed {seed}" + (f" lr {lr}" if lr else ""))
            outcomes.append(_run_one(job))
    result = CompareResult(folder, base, axes, variants, headline=task.headline,
                           higher_is_better=task.higher_is_better,
                           match_params=match_params, grid=grid)  # fmt: skip
    by_variant: dict[str, dict[Any, list[dict[str, Any]]]] = {}
    run_costs: dict[str, dict[Any, list[dict[str, Any]]]] = {}
    for (label, lr, *_), (final, cost), (_, run_dir, *_) in zip(cells, outcomes, work):
        by_variant.setdefault(label, {}).setdefault(lr, []).append(final)
        run_costs.setdefault(label, {}).setdefault(lr, []).append(cost)
        result.runs.setdefault(label, {}).setdefault(lr, []).append(Path(run_dir))
    for label, per_lr in by_variant.items():
        best_lr = _best_lr(per_lr, result.headline, result.higher_is_better)
        if best_lr is not None:
            result.lrs[label] = best_lr
        result.summary[label], result.curves[label] = aggregate(per_lr[best_lr])
    from anyformer.lab.cost import variant_costs

    result.losses = {label: training_losses(result.run_dirs(label)) for label in by_variant}
    if progress and timing:
        progress(f"timing {len(variants)} variants, interleaved ({timing[0]} rounds)")
    result.cost = variant_costs(variants, run_costs, result.lrs, timing)
    write_compare_report(result)
    return result


def base_values(base: ExperimentSpec, per_seed: dict[str, list[str]] | None) -> list[str]:
    """``init_from=VALUE`` when the base spec's ``init_from`` is a key of ``per_seed``."""
    if per_seed and base.init_from in per_seed:
        return [f"init_from={base.init_from}"]
    return []


def seed_values(
    overrides: list[str], per_seed: dict[str, list[str]] | None, seed: int
) -> list[str]:
    """The overrides among ``overrides`` whose value ``per_seed`` replaces, with the value
    of run ``seed`` (see :func:`compare`)."""
    out = []
    for item in overrides:
        key, _, value = item.partition("=")
        if per_seed and value in per_seed:
            out.append(f"{key}={per_seed[value][seed]}")
    return out


def _relative(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def _best_lr(per_lr: dict[Any, list[dict[str, Any]]], headline: str, higher: bool) -> Any:
    def score(lr: Any) -> float:
        vals = [
            f["id"][headline] for f in per_lr[lr] if "id" in f and f["id"].get(headline) is not None
        ]
        if not vals:
            return -math.inf
        m = sum(vals) / len(vals)
        return m if higher else -m

    return max(per_lr, key=score)


def aggregate(finals: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Mean and 95% interval of every scalar metric and every curve point, over seeds."""
    summary: dict[str, dict[str, Any]] = {}
    curves: dict[str, Any] = {}
    for split in finals[0]:
        metrics: dict[str, list[float]] = {}
        points: dict[str, dict[str, list[float]]] = {}
        counts: dict[str, float] = {}
        x_label = y_label = ""
        for final in finals:
            m = final.get(split, {})
            for k, v in flatten({k: v for k, v in m.items() if k != "curve"}).items():
                metrics.setdefault(k, []).append(v)
            curve = m.get("curve")
            if curve:
                x_label, y_label = curve.get("x", ""), curve.get("y", "")
                for series, pts in curve["series"].items():
                    for x, y in pts.items():
                        if y is not None:
                            points.setdefault(series, {}).setdefault(x, []).append(float(y))
                for x, n in (curve.get("n") or {}).items():  # examples per point, over seeds
                    counts[x] = counts.get(x, 0) + float(n)
        summary[split] = {
            k: dict(zip(("mean", "ci95"), mean_interval(v)), values=v, n=len(v))
            for k, v in metrics.items()
        }
        if points:
            curves[split] = {
                "x": x_label,
                "y": y_label,
                "series": {
                    s: {x: dict(zip(("mean", "ci95"), mean_interval(v))) for x, v in pts.items()}
                    for s, pts in points.items()
                },
            }
            if counts:
                curves[split]["n"] = counts
    return summary, curves
