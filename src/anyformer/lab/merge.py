"""``anyformer merge RUN``: fold a run's LoRA adapter into its weights, as a new run
folder whose model needs no adapter (:func:`anyformer.adapters.merge`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from anyformer.errors import RunFolderError, SpecError
from anyformer.spec import ExperimentSpec, write_text_atomic


def merge_run(run_dir: Path | str, out: Path | str | None = None) -> tuple[Path, dict[str, Any]]:
    """Write ``<out>/<name>-merged-<hash>``: the run's spec without ``adapter`` and a
    checkpoint at the run's step holding the merged weights. ``merge.json`` records the
    largest difference between the merged and the adapted model's outputs on the first
    evaluation batch of every split (float rounding: below 1e-5)."""
    from anyformer.adapters import merge
    from anyformer.lab.elastic import load_trained
    from anyformer.lab.run import build_task
    from anyformer.tasks.packing import model_inputs
    from anyformer.training.checkpoint import latest_checkpoint, save_checkpoint
    from anyformer.training.trainer import make_optimizer

    folder = Path(run_dir)
    spec, model = load_trained(folder)
    if spec.adapter is None:
        raise SpecError(f"run '{run_dir}' has no adapter to merge (its spec sets no adapter)")
    task = build_task(spec)
    model.eval()
    batches = {split: task.eval_set(split, spec.train.eval_size)[0] for split in task.splits}
    with torch.no_grad():
        before = {s: model(b.inputs, **model_inputs(b)) for s, b in batches.items()}
        merged = merge(model, spec.adapter)
        after = {s: model(b.inputs, **model_inputs(b)) for s, b in batches.items()}
    data = {k: v for k, v in spec.to_dict().items() if k != "adapter"}
    new = ExperimentSpec.from_dict({**data, "name": f"{spec.name}-merged"[:100]})
    target = Path(out) if out is not None else folder.parent
    dest = target / f"{new.name}-{new.hash}"
    if dest.exists():
        raise RunFolderError(f"'{dest}' already exists; remove it or choose another --out")
    step = int(
        json.loads((latest_checkpoint(folder / "checkpoint") / "state.json").read_text())["step"]
    )
    new.save(dest / "spec.yaml")
    info = {"spec_hash": new.hash, "spec": new.to_dict(), "merged_from": str(folder)}
    save_checkpoint(dest / "checkpoint", step, model, make_optimizer(model, new.train), info)
    record = {
        "merged_from": str(folder),
        "adapter": spec.adapter.model_dump(mode="json"),
        "layers": merged,
        "max_abs_difference": {s: float((after[s] - before[s]).abs().max()) for s in batches},
    }
    write_text_atomic(dest / "merge.json", json.dumps(record, indent=1) + "\n")
    return dest, record
