"""Checkpoints from a run folder someone sent you: nothing in them runs, nothing outside the
folder is read, altered or non-finite files are refused, and publishing never loses the
live checkpoint. Every refusal is exit 2 naming the file."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from anyformer.cli import main
from anyformer.errors import RunFolderError
from anyformer.lab.run import SPEC_FILE, prepare_model, resolve
from anyformer.spec import ExperimentSpec
from anyformer.training import checkpoint as ckpt
from anyformer.training.checkpoint import (
    NonFiniteWeights,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from anyformer.training.safeload import digests
from anyformer.training.trainer import make_optimizer


class Evil:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def tiny_spec() -> ExperimentSpec:
    return resolve(
        ExperimentSpec.from_dict(
            {
                "name": "trust",
                "model": {"d_model": 16, "n_heads": 2, "n_layers": 1, "max_len": 32},
                "task": {
                    "name": "copy",
                    "min_len": 2,
                    "max_len": 4,
                    "ood_min_len": 5,
                    "ood_max_len": 6,
                },
                "train": {"steps": 6, "batch_size": 4, "progress": False, "eval_size": 4},
            }
        )
    )


def make_run(folder: Path, step: int = 3) -> tuple[ExperimentSpec, Path]:
    """A run folder with spec.yaml and a (safetensors) checkpoint at ``step``."""
    spec = tiny_spec()
    folder.mkdir(parents=True)
    spec.save(folder / SPEC_FILE)
    model = prepare_model(spec)
    info = {"spec_hash": spec.hash, "spec": spec.to_dict()}
    path = save_checkpoint(
        folder / "checkpoint", step, model, make_optimizer(model, spec.train), info
    )
    return spec, path


def rehash(path: Path) -> None:
    """Recompute the digests of a tampered checkpoint (an attacker can do this too)."""
    state = json.loads((path / "state.json").read_text())
    state["files"] = digests(path)
    (path / "state.json").write_text(json.dumps(state))


def to_dcp(path: Path, spec: ExperimentSpec, evil_lr: object = None) -> None:
    """Rewrite a safetensors checkpoint folder in the DCP format (as a distributed run
    writes it), optionally with an object in place of the learning rate."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model = prepare_model(spec)
    opt = make_optimizer(model, spec.train)
    load_checkpoint(path, model, opt)
    model_sd, optim_sd = get_state_dict(model, opt)
    if evil_lr is not None:
        optim_sd["param_groups"][0]["lr"] = evil_lr
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(
            {"model": model_sd, "optimizer": optim_sd},
            checkpoint_id=str(path / "dcp"),
            no_dist=True,
        )
    torch.save(ckpt.rng_states(), path / "rng-0.pt")
    for name in ("model.safetensors", "state.pt"):
        (path / name).unlink()
    state = json.loads((path / "state.json").read_text())
    state.update(format="dcp", world_size=1, mode="ddp")
    (path / "state.json").write_text(json.dumps(state))
    rehash(path)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


COMMANDS = {
    "resume": lambda d: ["resume", str(d)],
    "generate": lambda d: ["generate", str(d), "--prompt", "1 2", "--max-new-tokens", "2"],
    "extract": lambda d: ["extract", str(d), "--widths", "0.5"],
    "finetune": lambda d: ["finetune", str(d), "copy", "train.steps=1"],
}


def test_a_dcp_checkpoint_of_a_run_folder_loads_through_the_safe_reader(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, path = make_run(tmp_path / "run")
    model = prepare_model(spec)
    load_checkpoint(path, model)
    to_dcp(path, spec)
    again = prepare_model(spec)
    opt = make_optimizer(again, spec.train)
    assert load_checkpoint(path, again, opt)["step"] == 3
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values())
    )
    assert opt.param_groups[0]["betas"] == spec.train.betas
    code, _ = cli(capsys, *COMMANDS["generate"](tmp_path / "run"))
    assert code == 0


def test_a_dcp_checkpoint_gives_its_weights_to_a_fine_tune(tmp_path: Path) -> None:
    from anyformer.lab.init_from import backbone_state

    spec, path = make_run(tmp_path / "run")
    model = prepare_model(spec)
    load_checkpoint(path, model)
    want = backbone_state(model)
    to_dcp(path, spec)
    got = ckpt.read_weights(path, {k: torch.zeros_like(v) for k, v in want.items()})
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_malicious_dcp_metadata_runs_nothing_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    spec, path = make_run(tmp_path / "run")
    to_dcp(path, spec)
    marker = tmp_path / "pwned"
    (path / "dcp" / ".metadata").write_bytes(pickle.dumps(Evil(marker)))
    rehash(path)
    code, err = cli(capsys, *COMMANDS[command](tmp_path / "run"))
    assert not marker.exists(), "unpickling the metadata ran code"
    assert code == 2 and ".metadata" in err and "builtins.exec" in err, err
    assert "Traceback" not in err


def test_malicious_dcp_entry_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, path = make_run(tmp_path / "run")
    marker = tmp_path / "pwned"
    to_dcp(path, spec, evil_lr=Evil(marker))
    code, err = cli(capsys, *COMMANDS["resume"](tmp_path / "run"))
    assert not marker.exists(), "a DCP entry was unpickled with weights_only=False"
    assert code == 2 and "param_groups.0.lr" in err and "not plain data" in err, err


@pytest.mark.parametrize("digest", ["recomputed", "absent"])
def test_malicious_state_pt_runs_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], digest: str
) -> None:
    _, path = make_run(tmp_path / "run")
    marker = tmp_path / "pwned"
    torch.save({"optimizer": Evil(marker), "rng": {}}, path / "state.pt")
    rehash(path)
    if digest == "absent":  # a checkpoint from before digests were recorded
        state = json.loads((path / "state.json").read_text())
        del state["files"]
        (path / "state.json").write_text(json.dumps(state))
    code, err = cli(capsys, "resume", str(tmp_path / "run"))
    assert not marker.exists()
    assert code == 2 and "state.pt" in err and "unsafe" in err, err


@pytest.mark.parametrize(
    "pointer",
    ["../../other/checkpoint/step-3", "ABS", "step-3/../../../other/checkpoint/step-3", "link"],
)
@pytest.mark.parametrize("command", ["resume", "generate", "finetune"])
def test_latest_pointer_is_confined_to_the_checkpoint_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pointer: str, command: str
) -> None:
    make_run(tmp_path / "other")
    _, path = make_run(tmp_path / "run")
    root = path.parent
    shutil.rmtree(path)
    if pointer == "link":  # a step folder that is a link into another run
        (root / "step-3").symlink_to(tmp_path / "other" / "checkpoint" / "step-3")
        pointer = "step-3"
    elif pointer == "ABS":
        pointer = str(tmp_path / "other" / "checkpoint" / "step-3")
    (root / "latest").write_text(pointer)
    code, err = cli(capsys, *COMMANDS[command](tmp_path / "run"))
    assert code == 2, err
    assert "latest" in err and "refusing" in err, err


def test_a_flipped_byte_is_refused_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = make_run(tmp_path / "run")
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10  # inside the last tensor: safetensors itself still loads it
    weights.write_bytes(bytes(data))
    code, err = cli(capsys, *COMMANDS["generate"](tmp_path / "run"))
    assert code == 2 and "model.safetensors" in err and "SHA-256" in err, err


def test_non_finite_weights_are_refused_naming_the_tensor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _, path = make_run(tmp_path / "run")
    weights = path / "model.safetensors"
    tensors = load_file(str(weights))
    with safe_open(str(weights), framework="pt") as fh:
        meta = fh.metadata()
    name = sorted(tensors)[0]
    tensors[name][0] = float("nan")
    save_file(tensors, str(weights), metadata=meta)
    rehash(path)
    code, err = cli(capsys, *COMMANDS["generate"](tmp_path / "run"))
    assert code == 2 and name in err and "non-finite" in err, err


def test_a_checkpoint_without_digests_still_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec, path = make_run(tmp_path / "run")
    state = json.loads((path / "state.json").read_text())
    del state["files"]
    (path / "state.json").write_text(json.dumps(state))
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(path, prepare_model(spec))["step"] == 3
    assert "no file digests" in caplog.text


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b'{"step": -5}', "step=-5"),
        (b'{"step": 100000000000000000}', "step=100000000000000000"),
        (b'{"step": true}', "step=True"),
        (b"[1, 2]", "holds a list"),
        (b'{"step": 3, "format": "pickle"}', "format='pickle'"),
        (b'\xff\xfe{"step": 3}', "not UTF-8"),
    ],
)
def test_a_bad_state_json_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, fragment: str
) -> None:
    _, path = make_run(tmp_path / "run")
    (path / "state.json").write_bytes(content)
    code, err = cli(capsys, *COMMANDS["generate"](tmp_path / "run"))
    assert code == 2 and "state.json" in err and fragment in err, err


def test_checkpoint_exception_is_caught(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    spec, path = make_run(tmp_path / "run")
    to_dcp(path, spec)

    def failing(*args: object, **kwargs: object) -> None:
        raise CheckpointException("load failed", {0: (OSError("disk gone"), None)})

    monkeypatch.setattr(dcp, "load", failing)
    with pytest.raises(RunFolderError, match="disk gone"):
        load_checkpoint(path, prepare_model(spec))


# ------------------------------------------------------------------------ publishing
def saved(tmp_path: Path) -> tuple[ExperimentSpec, torch.nn.Module, torch.optim.Optimizer, Path]:
    spec = tiny_spec()
    model = prepare_model(spec)
    opt = make_optimizer(model, spec.train)
    root = tmp_path / "checkpoint"
    save_checkpoint(root, 6, model, opt, {})
    return spec, model, opt, root


@pytest.mark.parametrize("crash_at", [1, 2])  # 1: renaming the new folder in, 2: swapping latest
def test_saving_a_step_twice_never_leaves_latest_dangling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, crash_at: int
) -> None:
    spec, model, opt, root = saved(tmp_path)
    real, calls = os.replace, []

    def crashing(src: object, dst: object) -> None:
        calls.append(dst)
        if len(calls) == crash_at:
            raise KeyboardInterrupt  # the process dies here
        real(src, dst)

    monkeypatch.setattr(os, "replace", crashing)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(root, 6, model, opt, {})  # Ctrl-C right after a checkpoint
    monkeypatch.setattr(os, "replace", real)
    live = latest_checkpoint(root)
    assert live is not None and load_checkpoint(live, prepare_model(spec), opt)["step"] == 6
    # the next save removes what the crash left behind
    (root / ".latest.abc.tmp").write_text("step-1")
    save_checkpoint(root, 7, model, opt, {})
    assert sorted(p.name for p in root.iterdir()) == [
        "latest",
        "step-6",
        "step-7",
    ]


def test_saving_a_step_twice_publishes_the_new_copy_and_prunes(tmp_path: Path) -> None:
    spec, model, opt, root = saved(tmp_path)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_checkpoint(root, 6, model, opt, {})
    assert (root / "latest").read_text() == "step-6.1"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-6.1"]
    fresh = prepare_model(spec)
    load_checkpoint(latest_checkpoint(root), fresh)
    assert torch.equal(next(fresh.parameters()), next(model.parameters()))
    save_checkpoint(root, 6, model, opt, {})  # and a third time, back to step-6
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-6"]


def test_non_finite_weights_are_never_saved(tmp_path: Path) -> None:
    _, model, opt, root = saved(tmp_path)
    with torch.no_grad():
        next(model.parameters())[0] = float("inf")
    with pytest.raises(NonFiniteWeights, match="step 7"):
        save_checkpoint(root, 7, model, opt, {})
    assert (root / "latest").read_text() == "step-6"


def test_a_file_added_to_a_checkpoint_is_refused(tmp_path: Path) -> None:
    spec, path = make_run(tmp_path / "run")
    torch.save(ckpt.rng_states(), path / "rng-0.pt")
    with pytest.raises(RunFolderError, match="rng-0.pt is not one of the files recorded"):
        load_checkpoint(path, prepare_model(spec))


def test_fields_added_by_a_newer_version_are_not_changes() -> None:
    saved = {"model": {"d_model": 16}, "train": {"lr": 0.001}}
    current = {"model": {"d_model": 16, "new_field": 1}, "train": {"lr": 0.002}}
    assert ckpt.spec_changes(saved, current) == ["train.lr: 0.001 in the checkpoint, 0.002 now"]
