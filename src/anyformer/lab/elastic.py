"""Elastic models in the lab: quality against evaluation depth, exit threshold and width,
and extraction of MatFormer submodels into run folders of their own.

- :func:`variants` lists the settings a trained model can be evaluated at without
  retraining: the number of loops (``looped``, ``algoformer``), the confidence threshold
  (``early_exit``) and every trained width (``matformer`` FFNs);
- :func:`evaluate_variants` scores a model at each of them on every split of its task,
  with the blocks executed per example/token, the parameters a standalone model at that
  setting would have and its FLOPs per token;
- :func:`evaluate_run` does it for a run folder and writes ``variants.json`` and
  ``variants.md`` there;
- :func:`extract_run` writes a MatFormer submodel as a new run folder (``anyformer
  extract``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from anyformer.errors import RunFolderError, SpecError
from anyformer.lab.run import build_objective, build_task, load_run_spec, prepare_model
from anyformer.model.elastic import extract, granularities, nested_ffns, widths_set
from anyformer.model.transformer import Transformer
from anyformer.spec import ExperimentSpec, write_text_atomic
from anyformer.tasks.base import Batch, Task
from anyformer.tasks.packing import model_inputs

#: Confidence thresholds an ``early_exit`` model is evaluated at.
THRESHOLDS = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass
class Variant:
    """A setting to evaluate at: attributes of ``model.depth`` and the FFN widths."""

    name: str
    depth: dict[str, Any] = field(default_factory=dict)
    widths: float | Sequence[float] | None = None


def loop_counts(trained: int) -> list[int]:
    """Evaluation loop counts around the trained one: 1, T/2, T, 3T/2, 2T, 3T."""
    return sorted({1, max(1, trained // 2), trained, trained * 3 // 2, 2 * trained, 3 * trained})


def variants(model: Transformer) -> list[Variant]:
    """Every evaluation setting of ``model`` (just ``as trained`` for a plain model)."""
    depth = model.depth
    found: list[Variant] = []
    if hasattr(depth, "eval_loops"):
        found += [Variant(f"loops={t}", {"eval_loops": t}) for t in loop_counts(depth.params.loops)]
    elif hasattr(depth, "threshold"):  # early exit
        found += [Variant(f"threshold={t:g}", {"threshold": t}) for t in THRESHOLDS]
    if nested_ffns(model):
        found += [Variant(f"width={w:g}", widths=w) for w in granularities(model)]
    return found or [Variant("as trained")]


@contextlib.contextmanager
def applied(model: Transformer, variant: Variant) -> Iterator[None]:
    """Run inside the block at ``variant``; the model is restored afterwards."""
    saved = {k: getattr(model.depth, k) for k in variant.depth}
    for k, v in variant.depth.items():
        setattr(model.depth, k, v)
    try:
        with widths_set(model, variant.widths):
            yield
    finally:
        for k, v in saved.items():
            setattr(model.depth, k, v)


def evaluate_variants(
    model: Transformer,
    task: Task,
    objective: Any,
    eval_size: int,
    chosen: list[Variant] | None = None,
    seq_len: int | None = None,
) -> list[dict[str, Any]]:
    """One row per (variant, split): the task's metrics plus ``blocks`` (mean blocks
    executed per example, or per token for per-token early exits), ``params`` (of a
    standalone model at that width) and ``flops_per_token`` (forward, at ``seq_len``)."""
    device = next(model.parameters()).device
    seq_len = seq_len or task.max_seq_len()
    was_training = model.training
    model.eval()
    rows = []
    try:
        for variant in chosen or variants(model):
            with applied(model, variant):
                params = model.num_params()
                if variant.widths is not None:
                    params = extract(model, variant.widths)[0].num_params()
                flops = model.depth.forward_flops(model, seq_len, training=False)
                order = getattr(model.depth, "order", None)
                blocks = float(len(order(False))) if callable(order) else float("nan")
                for split in task.splits:
                    seen: list[tuple[float, int]] = []

                    def predict(b: Batch, seen: list[tuple[float, int]] = seen) -> torch.Tensor:
                        b = b.to(device)
                        out = model(b.inputs, **model_inputs(b), return_outputs=True)
                        if out.mean_blocks_executed is not None:
                            seen.append((float(out.mean_blocks_executed), b.inputs.shape[0]))
                        return out.logits

                    metrics = task.evaluate(predict, split, eval_size, objective)
                    if seen:
                        blocks = sum(e * n for e, n in seen) / sum(n for _, n in seen)
                    scalars = {
                        k: v
                        for k, v in metrics.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)
                    }
                    rows.append(
                        {
                            "variant": variant.name,
                            "split": split,
                            "blocks": blocks,
                            "params": params,
                            "flops_per_token": flops,
                            **scalars,
                        }
                    )
    finally:
        model.train(was_training)
    return rows


def load_trained(run_dir: Path | str) -> tuple[ExperimentSpec, Transformer]:
    """The spec of a run folder and its model with the latest checkpoint's weights."""
    from anyformer.training.checkpoint import latest_checkpoint, load_checkpoint

    folder = Path(run_dir)
    spec = load_run_spec(folder)
    path = latest_checkpoint(folder / "checkpoint")
    if path is None:
        raise RunFolderError(f"run '{run_dir}' has no checkpoint (checkpoint/latest is missing)")
    model = prepare_model(spec)
    load_checkpoint(path, model)
    return spec, model


def rows_markdown(rows: list[dict[str, Any]], headline: str) -> str:
    """A markdown table of :func:`evaluate_variants` rows."""
    keys = ["variant", "split", headline, "loss", "blocks", "params", "flops_per_token"]
    keys = [k for k in dict.fromkeys(keys) if any(k in r for r in rows)]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = [f"{r[k]:.4g}" if isinstance(r.get(k), float) else str(r.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def evaluate_run(run_dir: Path | str, eval_size: int | None = None) -> list[dict[str, Any]]:
    """Evaluate a run's model at every variant; writes ``variants.json`` and ``variants.md``."""
    folder = Path(run_dir)
    spec, model = load_trained(folder)
    task = build_task(spec)
    rows = evaluate_variants(
        model, task, build_objective(spec, task), eval_size or spec.train.eval_size
    )
    write_text_atomic(folder / "variants.json", json.dumps(rows, indent=1) + "\n")
    title = f"# {spec.name}: quality against evaluation depth / exit threshold / width\n\n"
    write_text_atomic(folder / "variants.md", title + rows_markdown(rows, task.headline))
    return rows


def extract_run(
    run_dir: Path | str, widths: float | Sequence[float], out: Path | str | None = None
) -> tuple[Path, Transformer, Transformer]:
    """Write the MatFormer submodel of a run at ``widths`` as a new run folder.

    The folder (``<out>/<name>-w<widths>-<hash>``, ``out`` defaulting to the run's parent)
    holds ``spec.yaml`` (the run's spec with the extracted model: plain ``mlp`` FFNs) and
    ``checkpoint/`` at the run's step, so ``anyformer resume`` evaluates it and reports.
    Returns the folder, the nested model and the extracted one.
    """
    from anyformer.training.checkpoint import latest_checkpoint, save_checkpoint
    from anyformer.training.trainer import make_optimizer

    folder = Path(run_dir)
    spec, model = load_trained(folder)
    if not nested_ffns(model):
        raise SpecError(
            f"run '{run_dir}' has no nested FFNs to extract from (its model uses "
            f"ffn='{spec.model.ffn.name}'; extraction needs ffn: matformer)"
        )
    small, small_spec = extract(model, widths)
    new = ExperimentSpec.from_dict({**spec.to_dict(), "model": small_spec.model_dump(mode="json")})
    label = "-".join(f"{w:g}" for w in ([widths] if isinstance(widths, (int, float)) else widths))
    target = Path(out) if out is not None else folder.parent
    dest = target / f"{spec.name}-w{label}-{new.hash}"
    if dest.exists():
        raise RunFolderError(f"'{dest}' already exists; remove it or choose another --out")
    state = json.loads((latest_checkpoint(folder / "checkpoint") / "state.json").read_text())
    new.save(dest / "spec.yaml")
    save_checkpoint(
        dest / "checkpoint",
        int(state["step"]),
        small,
        make_optimizer(small, new.train),
        {"spec_hash": new.hash, "extracted_from": str(folder), "widths": widths},
    )
    return dest, model, small
