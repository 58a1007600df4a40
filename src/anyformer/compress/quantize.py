"""Post-training quantization of a trained run (``anyformer quantize``).

:func:`quantize_model` quantizes every ``nn.Linear`` of a model in place
(:mod:`anyformer.compress.qlinear`: int8 weights per output channel with dynamic per-token
or calibrated static int8 activations, or group-wise int4 weights), after an optional
SmoothQuant re-parameterisation (:mod:`anyformer.compress.smooth`), and records each
layer's input statistics (max-abs, kurtosis) before and after.
:func:`quantize_run` does it for a run folder, calibrating on the run's training batches
(the task's ``train_batch`` of steps 0, 1, ...), and writes a new run folder: the parent's
``spec.yaml``, a ``checkpoint/`` whose ``model.safetensors`` holds the int8 / packed int4
weights and float32 scales (the layer layout is recorded in ``state.json``, so
``anyformer generate`` and :func:`anyformer.lab.loaded.load_run` rebuild the layers and
load it without unpickling anything), ``quantization.json`` and a ``report.md`` comparing
it with its parent on the parent's own evaluation: the headline metric per split and its
relative drop, size on disk and the inference speed ratio.

The int8 product is anyformer's own (``torch._int_mm``), not torchao's: on this CPU
(torch 2.13, torchao 0.18, one thread) torchao's ``Int8DynamicActivationInt8WeightConfig``
ran a 512x256 @ 256x1024 linear at 0.86x fp32's time and a 64x64 @ 64x256 one at 9.5x
(slower), where ``_int_mm`` with per-token quantization took 0.32x and 1.3x;
``Int4WeightOnlyConfig`` needs the ``mslk`` kernels, absent on CPU
(``benchmarks/int8_inference.py`` measures both paths again). That speed needs a CPU with
int8 dot-product instructions (VNNI): on an AVX2-only one (an AMD EPYC, 2026-12-02)
``torch._int_mm`` alone took about 20x float32's time at the same shapes, while PyTorch's
fbgemm dynamic linear (per-tensor 7-bit activations) ran faster than float32. So the
dynamic scheme's kernel is measured, not assumed: ``--kernel auto`` (the default) times a
pass over the calibration batches with each kernel this PyTorch has, in turn, and keeps
the faster (:func:`choose_kernel`; the timings are in ``quantization.json``);
``--kernel int_mm|fbgemm`` forces one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyformer.compress.qlinear import KERNELS, fbgemm_available
from anyformer.compress.qmodel import (
    SCHEMES,
    NotQuantizable,
    check_quantizable,
    custom_weights,
    quantize_linears,
    set_kernel,
    weight_bytes,
)
from anyformer.compress.smooth import smooth_model
from anyformer.compress.stats import collect, recording, summaries
from anyformer.errors import RunFolderError, SpecError
from anyformer.lab.run import build_objective, check_checkpoint_spec, load_run_spec, task_for_run
from anyformer.model.transformer import Transformer, build_model
from anyformer.objectives.losses import attach_objective
from anyformer.spec import ExperimentSpec, write_text_atomic
from anyformer.tasks.base import Batch, Task
from anyformer.tasks.packing import model_inputs


def forward(model: nn.Module, batch: Batch) -> torch.Tensor:
    """The model's outputs on ``batch`` (as evaluation runs it)."""
    out = model(batch.inputs, **model_inputs(batch))
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    batches: Sequence[Batch],
    scheme: str,
    smooth: float | None = None,
    group_size: int = 32,
    kernel: str = "int_mm",
) -> dict[str, Any]:
    """Quantize ``model`` (eval mode, float32) in place, calibrated on ``batches``;
    ``kernel`` (``int8-dynamic``): ``int_mm``, ``fbgemm`` or ``auto`` (:func:`choose_kernel`).

    Returns the record: ``scheme``, ``layers`` (each layer's layout, what
    :func:`anyformer.compress.qmodel.rebuild` reads), ``stats_before`` / ``stats_after``
    (``{layer: {max_abs, kurtosis}}`` of each linear layer's input in the float model and
    of what the quantized layer quantizes), ``smoothing`` and ``kept_float`` (weights of
    custom matmuls and linear subclasses such as heads, left in float32). Raises
    :class:`NotQuantizable` for a model with a component that has no int8 path."""
    if scheme not in SCHEMES:
        raise SpecError(f"--scheme {scheme!r} is not a scheme (valid: {', '.join(SCHEMES)})")
    if not batches:
        raise SpecError("--calibration-batches must be at least 1")
    check_kernel(scheme, kernel)
    check_quantizable(model)
    model.eval()
    before = collect(model, lambda b: forward(model, b), batches)
    factors: dict[str, torch.Tensor] = {}
    smoothing = None
    if smooth is not None:
        smoothing = smooth_model(model, before, smooth, lambda: forward(model, batches[0]))
        factors = smoothing.unfolded
    scales = None
    if scheme == "int8-static":
        with recording(model) as seen:  # after the smoothing hooks: sees X / s
            for b in batches:
                forward(model, b)
        scales = {n: max(s.max_abs, 1e-8) / 127 for n, s in seen.items() if s.count}
    if smoothing is not None:
        smoothing.remove_hooks()  # the quantized layers carry the factors as buffers
    kept = [
        f"{n} ({type(m).__name__}: its forward reads its own weight)"
        for n, m in model.named_modules()
        if isinstance(m, nn.Linear) and type(m) is not nn.Linear
    ] + [f"{n} {list(s)}" for n, s in custom_weights(model)]
    layers = quantize_linears(model, scheme, factors, scales, group_size)
    try:
        forward(model, batches[0])
    except (AttributeError, RuntimeError, TypeError) as exc:
        raise NotQuantizable(
            f"the quantized model fails on a calibration batch ({type(exc).__name__}: "
            f"{str(exc)[:200]}): a component reads its linear layers in a way the int8 "
            f"layers do not support"
        ) from None
    choice = choose_kernel(model, batches, kernel, layers) if scheme == "int8-dynamic" else None
    after = collect(model, lambda b: forward(model, b), batches)
    return {
        "scheme": scheme,
        "kernel": choice,
        "group_size": group_size if scheme == "int4-weight" else None,
        "calibration_batches": len(batches),
        "layers": layers,
        "stats_before": summaries(before),
        "stats_after": summaries(after),
        "smoothing": smoothing.record() if smoothing is not None else None,
        "kept_float": kept,
    }


def check_kernel(scheme: str, kernel: str) -> None:
    """Refuse a kernel the scheme cannot run, naming the option."""
    if kernel not in (*KERNELS, "auto"):
        raise SpecError(f"--kernel {kernel!r} is not a kernel (valid: auto, {', '.join(KERNELS)})")
    if kernel == "fbgemm" and scheme != "int8-dynamic":
        raise SpecError(
            f"--kernel fbgemm quantizes activations dynamically: it runs int8-dynamic only, "
            f"not {scheme} (use --kernel auto or int_mm)"
        )
    if kernel == "fbgemm" and not fbgemm_available():
        raise SpecError("--kernel fbgemm: this PyTorch build has no fbgemm int8 kernel")


@torch.no_grad()
def choose_kernel(
    model: nn.Module,
    batches: Sequence[Batch],
    kernel: str,
    layers: dict[str, dict[str, Any]],
    rounds: int = 2,
) -> dict[str, Any]:
    """Set the dynamic int8 layers' kernel: ``kernel`` itself, or for ``auto`` the faster of
    the available ones over a pass of ``batches`` (a warm-up pass each, then ``rounds``
    passes each in turn). Returns ``{"kernel", "requested", "seconds"}``."""
    candidates = [k for k in KERNELS if k != "fbgemm" or fbgemm_available()]
    if kernel != "auto" or len(candidates) == 1:
        chosen = candidates[0] if kernel == "auto" else kernel
        set_kernel(model, chosen, layers)
        return {"kernel": chosen, "requested": kernel, "seconds": None}
    seconds = dict.fromkeys(candidates, 0.0)
    for r in range(rounds + 1):
        for k in candidates if r % 2 == 0 else candidates[::-1]:
            set_kernel(model, k, layers)
            start = time.perf_counter()
            for b in batches:
                forward(model, b)
            if r:  # round 0 warms up (and packs the fbgemm weights)
                seconds[k] += time.perf_counter() - start
    chosen = min(candidates, key=lambda k: seconds[k])
    set_kernel(model, chosen, layers)
    return {"kernel": chosen, "requested": kernel, "seconds": seconds}


# ------------------------------------------------------------------ run folders
def load_float_run(run_dir: Path | str) -> tuple[ExperimentSpec, Transformer, Task, Any, Path]:
    """A run's spec, float model (latest checkpoint, eval mode), task, objective and
    checkpoint folder. A run that is itself quantized is refused."""
    from anyformer.training.checkpoint import checkpoint_info, latest_checkpoint, load_checkpoint

    folder = Path(run_dir)
    spec = load_run_spec(folder)
    path = latest_checkpoint(folder / "checkpoint")
    if path is None:
        raise RunFolderError(f"run '{run_dir}' has no checkpoint (checkpoint/latest is missing)")
    if "quantization" in checkpoint_info(path):
        raise NotQuantizable(
            f"run '{run_dir}' is already quantized; quantize its parent "
            f"({checkpoint_info(path).get('quantized_from', 'the run it came from')})"
        )
    check_checkpoint_spec(folder, spec)
    task = task_for_run(spec, folder)  # with the run's own tokenizer, if it kept one
    objective = build_objective(spec, task)
    model = build_model(spec.model)
    attach_objective(model, objective)
    load_checkpoint(path, model)
    return spec, model.eval(), task, objective, path


def calibration_batches(task: Task, spec: ExperimentSpec, n: int) -> list[Batch]:
    """The run's first ``n`` training batches (steps 0..n-1 at its batch size)."""
    return [task.train_batch(step, spec.train.batch_size) for step in range(n)]


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, objective: Any, eval_size: int) -> dict[str, Any]:
    """The task's metrics of ``model`` on each split's evaluation set."""
    return {
        split: task.evaluate(lambda b: forward(model, b), split, eval_size, objective)
        for split in task.splits
    }


@torch.no_grad()
def speed_ratio(
    parent: nn.Module, child: nn.Module, batches: Sequence[Batch], rounds: int = 5
) -> dict[str, float]:
    """Seconds per pass over ``batches`` of each model, measured alternately (the order
    swapped every round, after a warm-up pass each), and ``ratio`` = parent / child
    (above 1: the child is faster), from the summed times."""
    models = {"parent": parent, "child": child}
    for m in models.values():
        for b in batches:
            forward(m, b)
    total = {"parent": 0.0, "child": 0.0}
    for r in range(rounds):
        for key in ("parent", "child") if r % 2 == 0 else ("child", "parent"):
            start = time.perf_counter()
            for b in batches:
                forward(models[key], b)
            total[key] += time.perf_counter() - start
    return {
        "parent_s": total["parent"] / rounds,
        "quantized_s": total["child"] / rounds,
        "ratio": total["parent"] / max(total["child"], 1e-12),
        "rounds": rounds,
        "threads": torch.get_num_threads(),
    }


def relative_drop(parent: float, child: float, higher_is_better: bool) -> float:
    """How much worse ``child`` is than ``parent``, relative to ``|parent|`` (negative:
    better)."""
    diff = parent - child if higher_is_better else child - parent
    return diff / abs(parent) if parent else (0.0 if diff == 0 else float("inf"))


def quantize_run(
    run_dir: Path | str,
    scheme: str,
    smooth: float | None = None,
    calibration: int = 8,
    out: Path | str | None = None,
    group_size: int = 32,
    eval_size: int | None = None,
    speed_rounds: int = 5,
    kernel: str = "auto",
) -> tuple[Path, dict[str, Any]]:
    """Quantize a run and write the new run folder (see the module docstring); returns
    the folder and its ``results`` (also in ``quantization.json``). ``speed_rounds``:
    rounds of :func:`speed_ratio` (fewer where the int8 kernel is slow, e.g. a CPU
    without VNNI instructions)."""
    from anyformer.training.checkpoint import save_checkpoint

    if smooth is not None and not 0.0 <= smooth <= 1.0:
        raise SpecError(f"--smooth {smooth} is not a migration strength (valid: 0 to 1)")
    if calibration < 1:
        raise SpecError(f"--calibration-batches {calibration} must be at least 1")
    check_kernel(scheme, kernel)
    folder = Path(run_dir)
    spec, model, task, objective, path = load_float_run(folder)
    check_quantizable(model)
    parent = load_float_run(folder)[1]  # the float model, kept for comparison
    batches = calibration_batches(task, spec, calibration)
    record = quantize_model(model, batches, scheme, smooth, group_size, kernel)
    size = eval_size or spec.train.eval_size
    m_parent = evaluate(parent, task, objective, size)
    m_child = evaluate(model, task, objective, size)
    headline = task.headline
    higher = bool(getattr(task, "higher_is_better", True))
    comparison = {
        split: {
            "parent": m_parent[split].get(headline),
            "quantized": m_child[split].get(headline),
            "relative_drop": relative_drop(
                float(m_parent[split][headline]), float(m_child[split][headline]), higher
            )
            if headline in m_parent[split] and headline in m_child[split]
            else None,
            "parent_loss": m_parent[split].get("loss"),
            "quantized_loss": m_child[split].get("loss"),
        }
        for split in task.splits
    }
    speed = speed_ratio(parent, model, task.eval_set(task.splits[0], size), speed_rounds)
    suffix = scheme + (f"-s{smooth:g}" if smooth is not None else "")
    key = hashlib.sha256(
        json.dumps([spec.hash, scheme, smooth, calibration, group_size, kernel]).encode()
    ).hexdigest()[:8]
    target = Path(out) if out is not None else folder.parent
    dest = target / f"{spec.name}-{suffix}-{key}"
    if dest.exists():
        raise RunFolderError(f"'{dest}' already exists; remove it or choose another --out")
    state = json.loads((path / "state.json").read_text())
    spec.save(dest / "spec.yaml")
    artifacts = getattr(task, "artifacts", None)
    for name, text in (artifacts() if callable(artifacts) else {}).items():
        write_text_atomic(dest / name, text)  # e.g. the trained tokenizer
    layout = {"scheme": scheme, "layers": record["layers"]}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params or [nn.Parameter(torch.zeros(1))], lr=0.0)
    ckpt = save_checkpoint(
        dest / "checkpoint",
        int(state["step"]),
        model,
        optimizer,
        {"spec_hash": spec.hash, "quantized_from": str(folder), "quantization": layout},
    )
    parent_bytes = (path / "model.safetensors").stat().st_size
    child_bytes = (ckpt / "model.safetensors").stat().st_size
    results = {
        "parent": str(folder),
        "headline": headline,
        "higher_is_better": higher,
        "comparison": comparison,
        "parent_metrics": m_parent,
        "quantized_metrics": m_child,
        "size_on_disk": {
            "parent_bytes": parent_bytes,
            "quantized_bytes": child_bytes,
            "ratio": parent_bytes / child_bytes,
            "linear_weights_parent": weight_bytes(parent)["linear"],
            "linear_weights_quantized": weight_bytes(model)["linear"],
        },
        "speed": speed,
        "eval_size": size,
        **{k: v for k, v in record.items() if k != "layers"},
        "layers": sorted(record["layers"]),
    }
    write_text_atomic(dest / "quantization.json", json.dumps(results, indent=1) + "\n")
    write_text_atomic(dest / "report.md", report_markdown(spec.name, results))
    return dest, results


def _f(v: Any, fmt: str = ".4g") -> str:
    return format(v, fmt) if isinstance(v, (int, float)) and v is not None else "-"


def report_markdown(name: str, r: dict[str, Any]) -> str:
    """The new run's report: comparison with the parent, size, speed, outlier statistics."""
    h = r["headline"]
    lines = [
        f"# {name}: {r['scheme']} post-training quantization",
        "",
        f"Parent run: `{r['parent']}`; calibrated on its first {r['calibration_batches']} "
        f"training batches; evaluated on the parent's own evaluation sets "
        f"({r['eval_size']} examples per split).",
        "",
        f"| split | parent {h} | quantized {h} | relative drop | parent loss | quantized loss |",
        "|---|---|---|---|---|---|",
    ]
    for split, c in r["comparison"].items():
        lines.append(
            f"| {split} | {_f(c['parent'])} | {_f(c['quantized'])} | "
            f"{_f(c['relative_drop'], '.2%') if c['relative_drop'] is not None else '-'} | "
            f"{_f(c['parent_loss'])} | {_f(c['quantized_loss'])} |"
        )
    s, sp = r["size_on_disk"], r["speed"]
    lines += [
        "",
        f"Size on disk (model.safetensors): parent {s['parent_bytes']:,} bytes, quantized "
        f"{s['quantized_bytes']:,} bytes ({s['ratio']:.2f}x smaller); linear-layer weights "
        f"{s['linear_weights_parent']:,} -> {s['linear_weights_quantized']:,} bytes.",
        "",
        f"Inference speed (the `{next(iter(r['comparison']))}` evaluation set, models "
        f"alternating, {sp['rounds']} rounds, {sp['threads']} thread(s)): parent "
        f"{sp['parent_s'] * 1e3:.1f} ms, quantized {sp['quantized_s'] * 1e3:.1f} ms per pass: "
        f"**{sp['ratio']:.2f}x**.",
        "",
    ]
    k = r.get("kernel")
    if k:
        timed = k.get("seconds")
        lines += [
            f"int8 kernel: `{k['kernel']}` (asked: `{k['requested']}`"
            + (
                "; one calibration pass each: "
                + ", ".join(f"{n} {t * 1e3:.1f} ms" for n, t in timed.items())
                if timed
                else ""
            )
            + ").",
            "",
        ]
    if r["smoothing"]:
        sm = r["smoothing"]
        lines += [
            f"SmoothQuant re-parameterisation (alpha {sm['alpha']}): folded into norms "
            f"{sorted(sm['folded_into_norms']) or 'none'}; divided inside the layer: "
            f"{sm['divided_in_layer'] or 'none'}; skipped: {sm['skipped'] or 'none'}; "
            f"smoothed float model vs original: max relative output difference "
            f"{sm['max_relative_output_difference']:.2e}.",
            "",
        ]
    if r["kept_float"]:
        lines += [f"Kept in float32: {', '.join(r['kept_float'])}.", ""]
    lines += [
        "Input statistics of each linear layer over the calibration batches (before: the "
        "float model; after: what the quantized layer quantizes, i.e. after smoothing, with "
        "the quantization error of earlier layers):",
        "",
        "| layer | max-abs before | kurtosis before | max-abs after | kurtosis after |",
        "|---|---|---|---|---|",
    ]
    after = r["stats_after"]
    for layer, b in r["stats_before"].items():
        a = after.get(layer, {})
        lines.append(
            f"| {layer} | {_f(b['max_abs'])} | {_f(b['kurtosis'])} | "
            f"{_f(a.get('max_abs'))} | {_f(a.get('kurtosis'))} |"
        )
    return "\n".join(lines) + "\n"


__all__ = [
    "calibration_batches",
    "evaluate",
    "forward",
    "load_float_run",
    "quantize_model",
    "quantize_run",
    "relative_drop",
    "report_markdown",
    "speed_ratio",
]
