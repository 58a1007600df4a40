"""Worker started by ``torchrun --nproc_per_node=2`` from test_distributed.py (not a test).

    python -m torch.distributed.run --standalone --nproc_per_node=2 dist_worker.py OUT

``OUT/spec.yaml`` is the experiment. Every rank, in one gloo process group:

1. runs the command line ``anyformer run OUT/spec.yaml train.distributed=ddp --out OUT/cli``
   (what ``torchrun -m anyformer run ...`` runs);
2. trains the spec with FSDP2 into ``OUT/fsdp`` and writes its losses to
   ``OUT/fsdp-losses-<rank>.json``; rank 0 saves the gathered full weights to
   ``OUT/fsdp-full.safetensors``;
3. continues the single-process run folder ``OUT/resume`` (safetensors checkpoint) to
   twice its steps with FSDP2, writing ``OUT/resumed-losses-<rank>.json``;
4. runs the command line again with padding-free batches,
   ``train.distributed=ddp train.packing=true --out OUT/cli-packed``;
5. runs the command line with each model of ``OUT/depths.json`` (name -> overrides:
   early exits, a looped loss window, MatFormer widths) into ``OUT/cli-<name>``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

from anyformer.cli import main as cli
from anyformer.lab.run import build_objective, build_task, prepare_model
from anyformer.spec import ExperimentSpec
from anyformer.training.trainer import Trainer, TrainResult


def train(spec: ExperimentSpec, folder: Path) -> tuple[Trainer, TrainResult]:
    task = build_task(spec)
    trainer = Trainer(prepare_model(spec), task, build_objective(spec, task), spec.train, folder)
    return trainer, trainer.fit()


def main() -> None:
    torch.set_num_threads(1)
    out = Path(sys.argv[1])
    spec = ExperimentSpec.from_yaml(out / "spec.yaml")
    dist.init_process_group("gloo")  # the trainers join this group instead of forming one
    rank = dist.get_rank()
    code = cli(["run", str(out / "spec.yaml"), "train.distributed=ddp", "--out", str(out / "cli")])
    if code != 0:
        raise SystemExit(f"anyformer run exited with {code}")
    trainer, result = train(spec.with_overrides(["train.distributed=fsdp"]), out / "fsdp")
    (out / f"fsdp-losses-{rank}.json").write_text(json.dumps(result.losses))
    full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))
    if rank == 0:
        tensors = {k: v.contiguous() for k, v in full.items()}  # tied names gathered apart
        save_file(tensors, str(out / "fsdp-full.safetensors"))
    steps = f"train.steps={2 * spec.train.steps}"
    _, result = train(spec.with_overrides(["train.distributed=fsdp", steps]), out / "resume")
    (out / f"resumed-losses-{rank}.json").write_text(json.dumps(result.losses))
    packed = ["run", str(out / "spec.yaml"), "train.distributed=ddp", "train.packing=true"]
    code = cli([*packed, "--out", str(out / "cli-packed")])
    if code != 0:
        raise SystemExit(f"anyformer run (packed) exited with {code}")
    for name, overrides in json.loads((out / "depths.json").read_text()).items():
        depth = ["run", str(out / "spec.yaml"), "train.distributed=ddp", *overrides]
        code = cli([*depth, "--out", str(out / f"cli-{name}")])
        if code != 0:
            raise SystemExit(f"anyformer run ({name}) exited with {code}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
