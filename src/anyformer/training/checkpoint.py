"""Atomic checkpoints in two formats, each loadable by single-process and distributed runs.

A single-process run writes ``checkpoint/step-<N>/`` with ``model.safetensors`` (weights),
``state.pt`` (optimizer and RNG states, loadable with ``weights_only=True``) and
``state.json`` (step and spec hash).

A distributed run (``train.distributed=ddp|fsdp``) writes the same folder with ``dcp/``, a
:mod:`torch.distributed.checkpoint` (DCP) checkpoint of the model and optimizer (each rank
writes its own shards; the folder must be on a file system every rank sees), ``rng-<rank>.pt``
(each rank's random state) and ``state.json`` with ``"format": "dcp"`` and the world size.
DCP reshards on load, so a run saved on N processes resumes on M, and a single process
(no process group) loads it into a plain model. A distributed run also loads a
safetensors checkpoint (a single-process run continued on N processes).

Either way the checkpoint is written into a temporary folder and renamed into place, then
the text file ``checkpoint/latest`` is replaced atomically, so an interruption at any
moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from anyformer.errors import RunFolderError
from anyformer.spec import write_text_atomic
from anyformer.training.distributed import DistInfo, barrier

KEEP = 2


def rng_states() -> dict[str, Any]:
    """Every global random state the training loop touches."""
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
    dist: DistInfo | None = None,
) -> Path:
    """Write the checkpoint of ``step`` under ``root`` atomically; keep the last two.

    With an active ``dist`` every rank must call this (DCP format); otherwise the
    single-process safetensors format is written.
    """
    if dist is not None and dist.active:
        return _save_dcp(root, step, model, optimizer, info, dist)
    final, tmp = _start(root, step)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng_states()}, tmp / "state.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **info}, indent=1))
    _publish(root, tmp, final)
    return final


def _start(root: Path, step: int) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step}"
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return final, tmp


def _publish(root: Path, tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``, point ``latest`` at it and prune older checkpoints."""
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    write_text_atomic(root / "latest", final.name)
    old = sorted(
        (p for p in root.glob("step-*") if p.is_dir() and p != final),
        key=lambda p: int(p.name.split("-")[1]),
    )
    for path in old[: max(len(old) - (KEEP - 1), 0)]:
        shutil.rmtree(path, ignore_errors=True)


def _save_dcp(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
    dist: DistInfo,
) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    final, tmp = root / f"step-{step}", root / f".tmp-step-{step}"
    if dist.is_main:
        _start(root, step)
    barrier(dist)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    torch.save(rng_states(), tmp / f"rng-{dist.rank}.pt")
    barrier(dist)
    if dist.is_main:
        meta = {"step": step, "format": "dcp", "world_size": dist.world_size, "mode": dist.mode}
        (tmp / "state.json").write_text(json.dumps({**meta, **info}, indent=1))
        _publish(root, tmp, final)
    barrier(dist)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``checkpoint/latest`` points to, or ``None`` when there is none."""
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not path.is_dir():
        raise RunFolderError(
            f"checkpoint pointer {pointer} names '{path.name}', which does not exist"
        )
    return path


def checkpoint_info(path: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint folder, with ``format`` (``safetensors`` or ``dcp``)."""
    if not (path / "state.json").is_file():
        raise RunFolderError(f"checkpoint {path} is damaged: 'state.json' is missing")
    try:
        info = json.loads((path / "state.json").read_text())
        info["step"] = int(info["step"])
    except (ValueError, KeyError, TypeError) as exc:
        raise RunFolderError(
            f"checkpoint {path} is damaged: state.json is unreadable ({exc})"
        ) from None
    info.setdefault("format", "safetensors")
    needed = ["model.safetensors", "state.pt"] if info["format"] != "dcp" else ["dcp/.metadata"]
    for name in needed:
        if not (path / name).is_file():
            raise RunFolderError(f"checkpoint {path} is damaged: '{name}' is missing")
    return info


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    dist: DistInfo | None = None,
) -> dict[str, Any]:
    """Load weights (and optimizer/RNG state) from a checkpoint folder; returns ``state.json``.

    Either format loads into a plain model and into a DDP/FSDP-wrapped one (pass its
    ``dist``; every rank must call this then). Any missing or damaged file raises
    :class:`RunFolderError` naming it.
    """
    info = checkpoint_info(path)
    distributed = dist is not None and dist.active
    if info["format"] == "dcp":
        _load_dcp(path, model, optimizer, dist.rank if distributed else 0)
    elif distributed:
        _load_safetensors_distributed(path, model, optimizer)
    else:
        _load_safetensors(path, model, optimizer)
    info.pop("format")
    return info


def _load_safetensors(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> None:
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except Exception as exc:  # safetensors raises several types on corrupt files
        raise RunFolderError(
            f"checkpoint {path} is damaged: model.safetensors cannot be loaded ({exc})"
        ) from None
    if missing or unexpected:
        raise RunFolderError(
            f"checkpoint {path} does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if optimizer is not None:  # weights alone (generate, evaluate) need no state.pt
        state = _load_state_pt(path)
        optimizer.load_state_dict(state["optimizer"])  # moves the state to the params
        set_rng_states(state["rng"])


def _load_state_pt(path: Path) -> dict[str, Any]:
    """Optimizer and RNG state, read onto the CPU (a run saved on a GPU resumes anywhere;
    ``Optimizer.load_state_dict`` then moves each tensor to its parameter's device)."""
    try:
        return torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RunFolderError(
            f"checkpoint {path} is damaged: state.pt cannot be loaded ({exc})"
        ) from None


def _full_state_from_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The weights of a safetensors checkpoint with tied names restored (``save_model``
    drops all but one name of a shared tensor and records the others in the metadata)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path / "model.safetensors"))
        with safe_open(str(path / "model.safetensors"), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:
        raise RunFolderError(
            f"checkpoint {path} is damaged: model.safetensors cannot be loaded ({exc})"
        ) from None
    for removed, kept in meta.items():
        if kept in weights and removed not in weights:
            weights[removed] = weights[kept]
    return weights


def _load_safetensors_distributed(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> None:
    """A single-process checkpoint into a DDP/FSDP model: full tensors, sharded on load."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    full = StateDictOptions(full_state_dict=True)
    try:
        set_model_state_dict(model, _full_state_from_safetensors(path), options=full)
    except (RuntimeError, KeyError) as exc:
        raise RunFolderError(f"checkpoint {path} does not match the model ({exc})") from None
    if optimizer is None:
        return
    state = _load_state_pt(path)
    plain = state["optimizer"]
    # the optimizer's own groups name its parameters in the same order as the saved ids
    template = get_optimizer_state_dict(model, optimizer)
    fqn: dict[int, str] = {}
    for mine, saved in zip(template["param_groups"], plain["param_groups"]):
        fqn.update(zip(saved["params"], mine["params"]))
    by_name = {
        "state": {fqn[i]: s for i, s in plain["state"].items()},
        "param_groups": [
            {**g, "params": [fqn[i] for i in g["params"]]} for g in plain["param_groups"]
        ],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=full)
    set_rng_states(state["rng"])


def _load_dcp(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None, rank: int
) -> None:
    """A DCP checkpoint into any model: plain (no process group), DDP or FSDP, any world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    if optimizer is not None:
        model_sd, optim_sd = get_state_dict(model, optimizer)
        state: dict[str, Any] = {"model": model_sd, "optimizer": optim_sd}
    else:
        state = {"model": get_model_state_dict(model)}
    try:
        with warnings.catch_warnings():  # loading into one plain process is intended
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            no_dist = not torch.distributed.is_initialized()
            dcp.load(state, checkpoint_id=str(path / "dcp"), no_dist=no_dist)
    except Exception as exc:  # DCP wraps reader and planner errors in several types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunFolderError(
            f"checkpoint {path} cannot be loaded into this model ({first})"
        ) from None
    if optimizer is None:
        set_model_state_dict(model, state["model"])
        return
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    rng = path / f"rng-{rank}.pt"
    if not rng.is_file():  # resumed on more ranks than saved: take rank 0's
        rng = path / "rng-0.pt"
    if rng.is_file():
        set_rng_states(torch.load(rng, map_location="cpu", weights_only=True))
