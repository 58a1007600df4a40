"""Forward + backward time and peak memory of every token mixer against sequence length.

Each mixer is built from the registry on its own (no embeddings, FFN or norms):
``registry.get("attention", name).build(params, Dims(d_model=256, n_heads=4,
max_len=T, causal=...))``, with ``max_len`` equal to the measured length ``T`` (so
``urpe``, ``linformer``, ``prob_sparse`` and ``cosformer`` see their whole horizon). A
mixer is measured causally (decoder setting) when its registry entry is causal-safe,
otherwise bidirectionally (``linformer``); the table says which. The context carries the
``none`` positional scheme built from the registry. Input: batch 1, ``x ~ N(0, 1)``
``[1, T, 256]`` with ``requires_grad``; one measurement is ``y = mixer(x, ctx)`` followed
by ``y.backward(g)`` with a fixed random ``g``.

Time: one untimed warm-up pass, then ``--repeats`` timed passes (a single one when a pass
takes longer than ``LONG_PASS_S``); the median is reported, in seconds.

Peak memory: the largest amount of memory *allocated on top of what was live before the
pass* (parameters, input) during one forward + backward: activations kept for backward,
temporaries, gradients. On CUDA it is ``torch.cuda.max_memory_allocated`` minus the
allocation before the pass. On CPU torch has no peak counter, so the warm-up pass runs
under ``torch.profiler`` with ``profile_memory=True``: every allocation and free through
torch's CPU allocator is recorded with its size, and the peak is the largest running sum
of those sizes in time order. Memory that libraries such as oneDNN/MKL allocate outside
torch's allocator (small scratch buffers) is not seen; process RSS is not used because
the allocator's caching and other tenants of a shared machine make it noisy.

Cells are skipped, and marked ``skipped: <reason>``, when the mixer refuses the length
(its ``check_dims`` or ``caps.max_len``, e.g. ``tensor_3way`` above 256 tokens), when a
reference path (``impl=reference``, or one of its deprecated names) is asked for
more than ``REFERENCE_MAX_LEN`` tokens, or when the time or memory extrapolated from the
mixer's two previous lengths (power law through them) exceeds ``--max-seconds`` or
``--max-memory-gb``.

Targets (issue 3), computed from the measurements and printed:

- every linear-cost mixer (``caps.complexity`` in ``LINEAR_COST``) grows at most 10x in
  time from 1,024 to 8,192 tokens;
- ``linear`` is at least 3x faster than ``softmax`` at 16,384 tokens.

    python benchmarks/mixer_scaling.py                  # full run: table, PNG and JSON
    python benchmarks/mixer_scaling.py --quick          # smoke run: lengths 256, 512
    python benchmarks/mixer_scaling.py --mixers softmax,linear,"local_global:group_size=32"
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from anyformer import registry
from anyformer.components.attention.common import canonical_impl
from anyformer.components.base import Context
from anyformer.registry import Dims

RESULTS = Path(__file__).resolve().parent / "results"
LENGTHS = (256, 512, 1024, 2048, 4096, 8192, 16384)
QUICK_LENGTHS = (256, 512)
D_MODEL, N_HEADS, BATCH = 256, 4, 1
#: Reference (readable, usually quadratic or token-by-token) paths stop here.
REFERENCE_MAX_LEN = 4096
#: Complexities counted as linear in sequence length for the growth target.
LINEAR_COST = ("O(n)", "O(n w)", "O(n k)")
GROWTH_FROM, GROWTH_TO, GROWTH_MAX = 1024, 8192, 10.0
SPEEDUP_AT, SPEEDUP_MIN = 16384, 3.0
#: A pass longer than this is timed once (after the warm-up).
LONG_PASS_S = 10.0
#: Parameters used instead of a mixer's defaults where those are tuned for short inputs.
#: local_global: FIT's cost n G + (n m / G)^2 is least near G = (n m^2)^(1/3), which is
#: 40-64 for n = 4k-16k with m = 4 latents; the default G = 8 makes the global path
#: quadratic-dominated ((n / 2)^2 latent scores) at long lengths.
FAST_PARAMS: dict[str, dict[str, Any]] = {"local_global": {"group_size": 64}}
#: Variants measured besides every registered mixer's (fast) default.
EXTRA_VARIANTS = ("softmax:impl=reference",)


@dataclass
class Cell:
    """One (mixer, length) measurement, or the reason it was skipped."""

    seconds: float | None = None
    peak_mb: float | None = None
    runs: list[float] = field(default_factory=list)
    skipped: str | None = None


@dataclass
class Variant:
    """A mixer to measure: registry name plus parameter overrides, e.g. ``softmax:impl=reference``."""

    label: str
    name: str
    params: dict[str, Any]

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, _, rest = text.strip().partition(":")
        params = dict(FAST_PARAMS.get(name, {}))
        for item in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = item.partition("=")
            if not eq:
                raise SystemExit(f"--mixers: '{item}' in '{text}' is not key=value")
            params[key.strip()] = _value(value.strip())
        return cls(text.strip(), name, params)

    @property
    def is_reference(self) -> bool:
        return canonical_impl(self.params.get("impl")) == "reference"


def _value(text: str) -> Any:
    """Parse a parameter value on the command line: JSON if it parses, else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def default_variants() -> list[Variant]:
    names = registry.components("attention")
    return [Variant.parse(n) for n in names] + [Variant.parse(v) for v in EXTRA_VARIANTS]


# --------------------------------------------------------------------------- measuring
def build(variant: Variant, length: int, device: torch.device) -> tuple[Any, Context] | str:
    """The mixer and its context at ``length``, or the reason it cannot take that length."""
    entry = registry.get("attention", variant.name)
    params = entry.make_params(variant.params, where=f"attention '{variant.name}'")
    causal = entry.caps.causal_safe
    if entry.caps.max_len is not None and length > entry.caps.max_len:
        return f"{variant.name} accepts at most {entry.caps.max_len} tokens (caps.max_len)"
    if variant.is_reference and length > REFERENCE_MAX_LEN:
        return (
            f"reference path (impl={variant.params['impl']}) limited to {REFERENCE_MAX_LEN} tokens"
        )
    dims = Dims(d_model=D_MODEL, n_heads=N_HEADS, max_len=length, causal=causal, bias=True)
    problem = entry.check(params, dims)
    if problem:
        return problem
    torch.manual_seed(0)
    mixer = entry.build(params, dims).to(device).train()
    pos_entry = registry.get("position", "none")
    position = pos_entry.build(pos_entry.make_params(), dims).to(device)
    ctx = Context(torch.arange(length, device=device), causal, position)
    return mixer, ctx


def make_pass(mixer: Any, ctx: Context, length: int, device: torch.device) -> Callable[[], None]:
    gen = torch.Generator().manual_seed(length)
    x = torch.randn(BATCH, length, D_MODEL, generator=gen).to(device).requires_grad_()
    grad = torch.randn(BATCH, length, D_MODEL, generator=gen).to(device)

    def one_pass() -> None:
        mixer.zero_grad(set_to_none=True)
        x.grad = None
        mixer(x, ctx).backward(grad)

    return one_pass


def cpu_peak_bytes(fn: Callable[[], None]) -> int:
    """Peak bytes allocated by torch's CPU allocator during ``fn`` above the level before it."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    sizes: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        stack.extend(event.children)
        if event.tag == _EventType.Allocation:
            sizes.append((event.start_time_ns, event.extra_fields.alloc_size))
    running = peak = 0
    for _, size in sorted(sizes):
        running += size
        peak = max(peak, running)
    return peak


def cuda_peak_bytes(fn: Callable[[], None], device: torch.device) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def measure(one_pass: Callable[[], None], repeats: int, device: torch.device) -> Cell:
    cuda = device.type == "cuda"
    peak = cuda_peak_bytes(one_pass, device) if cuda else cpu_peak_bytes(one_pass)
    runs: list[float] = []
    for _ in range(max(1, repeats)):
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        one_pass()
        if cuda:
            torch.cuda.synchronize(device)
        runs.append(time.perf_counter() - start)
        if runs[-1] > LONG_PASS_S:
            break
    return Cell(seconds=statistics.median(runs), peak_mb=peak / 2**20, runs=runs)


def extrapolate(points: list[tuple[int, float]], length: int) -> float | None:
    """Power law through the last two ``(length, value)`` points, evaluated at ``length``."""
    if len(points) < 2:
        return None
    (l0, v0), (l1, v1) = points[-2], points[-1]
    if v0 <= 0 or v1 <= 0 or l1 == l0:
        return None
    slope = max(1.0, math.log(v1 / v0) / math.log(l1 / l0))
    return v1 * (length / l1) ** slope


def run_variant(
    variant: Variant,
    lengths: list[int],
    repeats: int,
    device: torch.device,
    max_seconds: float,
    max_memory_gb: float,
) -> dict[int, Cell]:
    cells: dict[int, Cell] = {}
    times: list[tuple[int, float]] = []
    mems: list[tuple[int, float]] = []
    for length in lengths:
        est_t, est_m = extrapolate(times, length), extrapolate(mems, length)
        if est_m is not None and est_m / 1024 > max_memory_gb:
            cells[length] = Cell(
                skipped=f"estimated {est_m / 1024:.1f} GB > cap {max_memory_gb:g} GB"
            )
            continue
        if est_t is not None and est_t > max_seconds:
            cells[length] = Cell(
                skipped=f"estimated {est_t:.0f} s per pass > cap {max_seconds:g} s"
            )
            continue
        built = build(variant, length, device)
        if isinstance(built, str):
            cells[length] = Cell(skipped=built)
            continue
        mixer, ctx = built
        try:
            cell = measure(make_pass(mixer, ctx, length, device), repeats, device)
        except (RuntimeError, MemoryError) as exc:  # out of memory, or a refusal at run time
            cell = Cell(skipped=f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        finally:
            del mixer, ctx
            if device.type == "cuda":
                torch.cuda.empty_cache()
        cells[length] = cell
        if cell.seconds is not None and cell.peak_mb is not None:
            times.append((length, cell.seconds))
            mems.append((length, max(cell.peak_mb, 1e-3)))
    return cells


# --------------------------------------------------------------------------- targets
def complexity(variant: Variant) -> str:
    return registry.get("attention", variant.name).caps.complexity


def targets(variants: list[Variant], cells: dict[str, dict[int, Cell]]) -> dict[str, Any]:
    """The issue's targets, from the measured cells (``None`` where a cell is missing)."""
    growth: dict[str, Any] = {}
    for v in variants:
        a, b = cells[v.label].get(GROWTH_FROM), cells[v.label].get(GROWTH_TO)
        ratio = a and b and a.seconds and b.seconds and b.seconds / a.seconds
        growth[v.label] = {
            "complexity": complexity(v),
            "linear_cost": complexity(v) in LINEAR_COST,
            "ratio": ratio or None,
        }
    linear_cost = {k: g for k, g in growth.items() if g["linear_cost"] and g["ratio"]}
    soft = cells.get("softmax", {}).get(SPEEDUP_AT)
    lin = cells.get("linear", {}).get(SPEEDUP_AT)
    speedup = soft.seconds / lin.seconds if soft and lin and soft.seconds and lin.seconds else None
    return {
        "growth_1k_to_8k": growth,
        "linear_cost_max_growth": GROWTH_MAX,
        "linear_cost_growth_ok": (
            all(g["ratio"] <= GROWTH_MAX for g in linear_cost.values()) if linear_cost else None
        ),
        "linear_cost_failing": sorted(k for k, g in linear_cost.items() if g["ratio"] > GROWTH_MAX),
        "linear_vs_softmax_speedup_16k": speedup,
        "linear_vs_softmax_ok": speedup >= SPEEDUP_MIN if speedup is not None else None,
    }


# --------------------------------------------------------------------------- output
def format_tables(
    variants: list[Variant], lengths: list[int], cells: dict[str, dict[int, Cell]]
) -> str:
    width = max(12, *(len(v.label) for v in variants)) + 1
    head = f"{'':{width}s}{'mode':>7s}" + "".join(f"{n:>10d}" for n in lengths)
    lines: list[str] = []
    for title, attr, fmt in (
        ("forward + backward time (s, median)", "seconds", "{:10.4f}"),
        ("peak memory above inputs and parameters (MB)", "peak_mb", "{:10.1f}"),
    ):
        lines += ["", title, head]
        for v in variants:
            mode = "causal" if registry.get("attention", v.name).caps.causal_safe else "bidir"
            row = f"{v.label:{width}s}{mode:>7s}"
            for n in lengths:
                value = getattr(cells[v.label][n], attr)
                row += fmt.format(value) if value is not None else f"{'skip':>10s}"
            lines.append(row)
    skipped = [
        f"  {v.label} @ {n}: skipped: {cells[v.label][n].skipped}"
        for v in variants
        for n in lengths
        if cells[v.label][n].skipped
    ]
    if skipped:
        lines += ["", "skipped cells:", *skipped]
    return "\n".join(lines)


def format_targets(result: dict[str, Any]) -> str:
    lines = ["", f"growth of time from {GROWTH_FROM} to {GROWTH_TO} tokens:"]
    for label, g in result["growth_1k_to_8k"].items():
        ratio = f"{g['ratio']:.2f}x" if g["ratio"] else "n/a"
        mark = ""
        if g["linear_cost"] and g["ratio"]:
            mark = "  ok" if g["ratio"] <= GROWTH_MAX else f"  FAIL (> {GROWTH_MAX:g}x)"
        lines.append(f"  {label:28s} {g['complexity']:22s} {ratio:>9s}{mark}")
    ok = result["linear_cost_growth_ok"]
    lines.append(
        f"target: linear-cost mixers ({', '.join(LINEAR_COST)}) grow <= {GROWTH_MAX:g}x: "
        + ("n/a" if ok is None else "met" if ok else f"NOT met ({result['linear_cost_failing']})")
    )
    speed = result["linear_vs_softmax_speedup_16k"]
    verdict = "n/a" if speed is None else ("met" if speed >= SPEEDUP_MIN else "NOT met")
    shown = f"{speed:.2f}x" if speed is not None else "n/a"
    lines.append(
        f"target: linear >= {SPEEDUP_MIN:g}x faster than softmax at {SPEEDUP_AT} tokens: "
        f"{shown} ({verdict})"
    )
    return "\n".join(lines)


def plot(
    variants: list[Variant], lengths: list[int], cells: dict[str, dict[int, Cell]], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    colors = plt.get_cmap("tab10")
    styles = ("-", "--", "-.", ":")
    for i, v in enumerate(variants):
        for ax, attr in zip(axes, ("seconds", "peak_mb")):
            pts = [(n, getattr(cells[v.label][n], attr)) for n in lengths]
            pts = [(n, y) for n, y in pts if y]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(
                    xs,
                    ys,
                    styles[i // 10 % 4],
                    marker="o",
                    markersize=3,
                    color=colors(i % 10),
                    label=f"{v.label} [{complexity(v)}]",
                )
    for ax, ylabel in zip(axes, ("forward + backward time (s)", "peak memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (tokens)")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_title(f"mixer alone: d_model {D_MODEL}, {N_HEADS} heads, batch {BATCH}")
    axes[1].set_title("peak memory above inputs and parameters")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine(device: torch.device, threads: int) -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# --------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--lengths", default=None, help="comma-separated lengths (default 256..16384)"
    )
    parser.add_argument(
        "--mixers",
        default=None,
        help="comma-separated mixers, each 'name' or 'name:key=value;key=value' "
        "(default: every registered mixer plus " + ", ".join(EXTRA_VARIANTS) + ")",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per cell")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="skip above this estimate")
    parser.add_argument("--max-memory-gb", type=float, default=6.0, help="skip above this estimate")
    parser.add_argument("--quick", action="store_true", help="lengths 256 and 512 (smoke run)")
    parser.add_argument(
        "--out",
        default=None,
        help="folder for the JSON and PNG (default benchmarks/results; --quick saves only "
        "when --out is given)",
    )
    parser.add_argument("--no-save", action="store_true")
    return parser.parse_args(argv)


def split_mixers(text: str) -> list[str]:
    """Split on commas between mixers; parameters inside one mixer are separated by ';'."""
    return [part.replace(";", ",") for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.lengths:
        lengths = [int(n) for n in args.lengths.split(",")]
    else:
        lengths = list(QUICK_LENGTHS if args.quick else LENGTHS)
    variants = (
        [Variant.parse(m) for m in split_mixers(args.mixers)] if args.mixers else default_variants()
    )
    load_before = os.getloadavg()
    started = time.perf_counter()
    cells: dict[str, dict[int, Cell]] = {}
    for variant in variants:
        cells[variant.label] = run_variant(
            variant, lengths, args.repeats, device, args.max_seconds, args.max_memory_gb
        )
    elapsed = time.perf_counter() - started
    result = targets(variants, cells)
    print(
        f"mixer alone, d_model {D_MODEL}, {N_HEADS} heads, batch {BATCH}, fp32, "
        f"{device}, {args.threads} threads, torch {torch.__version__}, "
        f"load average {load_before[0]:.2f} at start"
    )
    print(format_tables(variants, lengths, cells))
    print(format_targets(result))
    record = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(device, args.threads),
        "torch": torch.__version__,
        "load_average": {"start": load_before, "end": os.getloadavg()},
        "elapsed_s": elapsed,
        "config": {
            "d_model": D_MODEL,
            "n_heads": N_HEADS,
            "batch": BATCH,
            "dtype": "float32",
            "lengths": lengths,
            "repeats": args.repeats,
            "max_seconds": args.max_seconds,
            "max_memory_gb": args.max_memory_gb,
            "memory": "cuda max_memory_allocated"
            if device.type == "cuda"
            else "torch.profiler CPU allocator events, peak running sum",
        },
        "mixers": {
            v.label: {
                "name": v.name,
                "params": v.params,
                "complexity": complexity(v),
                "causal": registry.get("attention", v.name).caps.causal_safe,
                "cells": {str(n): asdict(c) for n, c in cells[v.label].items()},
            }
            for v in variants
        },
        "targets": result,
    }
    save = not args.no_save and (args.out is not None or not args.quick)
    if save:
        out = Path(args.out) if args.out else RESULTS
        out.mkdir(parents=True, exist_ok=True)
        stem = f"mixer_scaling-{dt.date.today().isoformat()}" + ("-quick" if args.quick else "")
        (out / f"{stem}.json").write_text(json.dumps(record, indent=1))
        plot(variants, lengths, cells, out / f"{stem}.png")
        print(f"wrote {out / stem}.json and .png")
        record["files"] = [str(out / f"{stem}.json"), str(out / f"{stem}.png")]
    return record


if __name__ == "__main__":
    main()
