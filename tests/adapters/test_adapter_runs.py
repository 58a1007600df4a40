"""Adapters in runs: ``anyformer finetune PARENT TASK adapter.kind=lora`` trains only the
adapter and the new head (the parent's backbone weights are unchanged in the child's
checkpoint), writes ``adapter.safetensors`` with peft's key names, ``adapter.yaml`` and
``adapter_config.json``; ``anyformer merge`` writes a run without the adapter whose
outputs equal the adapted model's (1e-5); merging prompt tuning is refused by name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from anyformer.cli import main
from anyformer.lab.elastic import load_trained
from anyformer.lab.run import run_experiment
from anyformer.spec import ExperimentSpec

TRAIN = {"steps": 6, "batch_size": 8, "eval_every": 6, "eval_size": 8, "checkpoint_every": 6,
         "log_every": 3, "progress": False, "warmup_steps": 1, "lr": 0.01}  # fmt: skip
TASK = {"name": "copy", "min_len": 2, "max_len": 4, "ood_min_len": 5, "ood_max_len": 6}


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = ExperimentSpec.from_dict({
        "name": "parent",
        "model": {"d_model": 16, "n_heads": 2, "n_layers": 2, "max_len": 32,
                  "tie_embeddings": False},
        "task": TASK, "train": TRAIN,
    })  # fmt: skip
    return run_experiment(spec, out=tmp_path_factory.mktemp("runs")).dir


def finetune(parent: Path, out: Path, *overrides: str) -> Path:
    code = main(["finetune", str(parent), "copy", "train.steps=4", "train.eval_every=4",
                 "train.checkpoint_every=4", *overrides, "--out", str(out)])  # fmt: skip
    assert code == 0
    (folder,) = out.iterdir()
    return folder


def test_finetune_with_lora_trains_only_the_adapter(parent: Path, tmp_path: Path) -> None:
    child = finetune(parent, tmp_path, "adapter.kind=lora", "adapter.rank=2",
                     "adapter.target=blocks.*.mixer.*")  # fmt: skip
    _, before = load_trained(parent)
    spec, after = load_trained(child)
    assert spec.adapter is not None and spec.adapter.rank == 2
    old = before.state_dict()
    for name, value in after.state_dict().items():
        if name.startswith("blocks.") and "lora_" not in name:
            assert torch.equal(value, old[name]), name
    state = load_file(str(child / "adapter.safetensors"))
    assert "base_model.model.blocks.0.mixer.qkv.lora_A.weight" in state
    assert any(k.startswith("head.") for k in state)
    config = json.loads((child / "adapter_config.json").read_text())
    assert config["r"] == 2 and "blocks.1.mixer.out" in config["target_modules"]
    assert (child / "adapter.yaml").is_file()
    # merge: a run without the adapter, equal outputs
    merged_out = tmp_path / "merged"
    assert main(["merge", str(child), "--out", str(merged_out)]) == 0
    (merged,) = merged_out.iterdir()
    record = json.loads((merged / "merge.json").read_text())
    assert len(record["layers"]) == 4
    assert max(record["max_abs_difference"].values()) < 1e-5
    mspec, mmodel = load_trained(merged)
    assert mspec.adapter is None and not any("lora" in k for k in mmodel.state_dict())
    x = torch.randint(0, 8, (2, 5))
    after.eval()
    mmodel.eval()
    assert torch.allclose(mmodel(x), after(x), atol=1e-5)


def test_merge_refuses_prompt_tuning_by_name(parent: Path, tmp_path: Path, capsys: Any) -> None:
    child = finetune(parent, tmp_path / "p", "adapter=prompt", "adapter.n_tokens=2")
    assert main(["merge", str(child)]) == 2
    assert "adapter.kind=prompt" in capsys.readouterr().err


def test_finetune_from_an_adapted_run_is_refused(parent: Path, tmp_path: Path, capsys: Any) -> None:
    child = finetune(parent, tmp_path / "l", "adapter.kind=lora")
    code = main(["finetune", str(child), "copy", "train.steps=2", "--out", str(tmp_path / "x")])
    assert code == 2
    assert "adapter.kind=lora" in capsys.readouterr().err
