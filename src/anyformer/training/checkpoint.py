"""Atomic, verified checkpoints in two formats, each loadable by single-process and distributed runs.

A single-process run writes ``checkpoint/step-<N>/`` with ``model.safetensors`` (weights),
``state.pt`` (optimizer and RNG states, loadable with ``weights_only=True``) and
``state.json`` (step, the spec the run trained, and the SHA-256 of every other file).

A distributed run (``train.distributed=ddp|fsdp``) writes the same folder with ``dcp/``, a
:mod:`torch.distributed.checkpoint` (DCP) checkpoint of the model and optimizer (each rank
writes its own shards; the folder must be on a file system every rank sees), ``rng-<rank>.pt``
(each rank's random state) and ``state.json`` with ``"format": "dcp"`` and the world size.
DCP reshards on load, so a run saved on N processes resumes on M, and a single process
(no process group) loads it into a plain model. A distributed run also loads a
safetensors checkpoint (a single-process run continued on N processes).

**Publishing.** A checkpoint is written into a temporary folder ``.tmp-step-N`` and
renamed to a name that nothing points to (``step-N``, or ``step-N.1`` when ``step-N`` is
the live checkpoint of the same step saved again), then the text file
``checkpoint/latest`` is replaced atomically, and only then are older folders removed.
At every instant ``latest`` names a complete checkpoint; a crash leaves at most a
temporary or unreferenced folder, which the next save removes. Non-finite weights are
never saved (:class:`NonFiniteWeights`).

**Loading** trusts nothing in the folder (:mod:`anyformer.training.safeload`): the pointer
must name a ``step-N`` folder inside ``checkpoint/``, ``state.json`` must be well formed,
every file must match its recorded digest (checkpoints written before digests were
recorded load with a warning), nothing is unpickled except through ``weights_only`` or the
DCP-metadata unpickler, the spec recorded with the checkpoint must still match the model
(:func:`spec_changes`), and loaded weights must be finite.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from anyformer.errors import RunError, RunFolderError
from anyformer.spec import write_text_atomic
from anyformer.training.distributed import DistInfo, barrier, sum_across
from anyformer.training.safeload import (
    POINTER,
    digests,
    inside,
    load_tensors_file,
    pointer_target,
    read_dcp_metadata,
    safe_planner,
    safe_reader,
    verify_digests,
)

log = logging.getLogger(__name__)

KEEP = 2
MAX_STEP = 10**12  # a step beyond this in state.json is damage, not a run
MAX_STATE_BYTES = 16 * 2**20


class NonFiniteWeights(RunError):
    """The model holds a NaN or infinite weight, so it is not saved as a checkpoint."""

    def __init__(self, tensor: str, step: int) -> None:
        super().__init__(
            f"the weights became non-finite ('{tensor}' holds NaN or inf) by step {step}; "
            f"no checkpoint was written, the previous one is kept"
        )
        self.tensor = tensor
        self.step = step


def rng_states() -> dict[str, Any]:
    """Every global random state the training loop touches."""
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    if not isinstance(states, dict) or not isinstance(states.get("torch"), torch.Tensor):
        raise RunFolderError("the checkpoint's random state is damaged (no 'torch' state)")
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def first_non_finite(model: nn.Module) -> str | None:
    """Name of the first parameter or floating buffer (this rank's shard) that holds a NaN
    or inf, or ``None``."""
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        local = tensor.to_local() if hasattr(tensor, "to_local") else tensor
        if local.is_floating_point() and not bool(torch.isfinite(local.detach()).all()):
            return name
    return None


def _non_finite_anywhere(model: nn.Module, dist: DistInfo | None) -> str | None:
    """:func:`first_non_finite` agreed by every rank (a name, ``"<another rank>"`` or None)."""
    bad = first_non_finite(model)
    if dist is None or not dist.active or dist.world_size == 1:
        return bad
    flag = torch.tensor([1.0 if bad else 0.0], device=dist.device)
    if float(sum_across(flag, dist)) == 0:
        return None
    return bad or "<a tensor on another rank>"


def _model_spec(model: nn.Module) -> dict[str, Any] | None:
    spec = getattr(model, "spec", None)
    dump = getattr(spec, "model_dump", None)
    return dump(mode="json") if callable(dump) else None


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
    dist: DistInfo | None = None,
) -> Path:
    """Write the checkpoint of ``step`` under ``root`` atomically; keep the last two.

    ``state.json`` gets ``info``, the model's spec (``model_spec``) and the SHA-256 of
    every file (``files``). Refuses non-finite weights (:class:`NonFiniteWeights`). With an
    active ``dist`` every rank must call this (DCP format); otherwise the single-process
    safetensors format is written.
    """
    bad = _non_finite_anywhere(model, dist)
    if bad is not None:
        raise NonFiniteWeights(bad, step)
    meta: dict[str, Any] = {"step": step}
    model_spec = _model_spec(model)
    if model_spec is not None:
        meta["model_spec"] = model_spec
    if dist is not None and dist.active:
        return _save_dcp(root, step, model, optimizer, {**meta, **info}, dist)
    tmp = _start(root, step)
    save_model(model, str(tmp / "model.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng_states()}, tmp / "state.pt")
    _finish(tmp, {**meta, **info})
    return _publish(root, tmp, step)


def _finish(tmp: Path, state: dict[str, Any]) -> None:
    """Write ``state.json`` with the digests of every other file, flushed to disk."""
    state = {**state, "files": digests(tmp)}
    with open(tmp / "state.json", "w") as fh:
        fh.write(json.dumps(state, indent=1))
        fh.flush()
        os.fsync(fh.fileno())


def _remove(path: Path) -> None:
    """Delete a folder, file or link (a link itself, never what it points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _start(root: Path, step: int) -> Path:
    """A fresh ``.tmp-step-<step>`` folder; leftovers of a killed save are removed first."""
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-step-*"):
        _remove(stale)
    for stale in root.glob(".latest.*.tmp"):
        stale.unlink(missing_ok=True)
    tmp = root / f".tmp-step-{step}"
    tmp.mkdir()
    return tmp


def _live_name(root: Path) -> str | None:
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace").strip()
    return name if POINTER.fullmatch(name) else None


def _step_of(name: str) -> int:
    match = POINTER.fullmatch(name)
    return int(match.group(1)) if match else -1


def _publish(root: Path, tmp: Path, step: int) -> Path:
    """Rename ``tmp`` to a name ``latest`` does not point to, swap ``latest``, then prune.

    The live checkpoint is never removed or renamed before ``latest`` names the new one.
    """
    live = _live_name(root)
    name = f"step-{step}" if live != f"step-{step}" else f"step-{step}.1"
    final = root / name
    if final.exists():  # not live: an earlier copy, or left by a crash before the swap
        _remove(final)
    os.replace(tmp, final)
    write_text_atomic(root / "latest", name)
    _prune(root, name, live)
    return final


def _prune(root: Path, live: str, before: str | None) -> None:
    """Keep ``live`` and the newest ``KEEP - 1`` older steps (of two copies of one step,
    the one ``latest`` named ``before``); remove the rest, including folders of later
    steps that were never published."""
    live_step = _step_of(live)
    others = [
        p for p in root.iterdir() if p.is_dir() and POINTER.fullmatch(p.name) and p.name != live
    ]
    older = sorted(
        (p for p in others if _step_of(p.name) < live_step),
        key=lambda p: (_step_of(p.name), p.name == before),
    )
    keep = {p.name for p in older[len(older) - (KEEP - 1) :]} if KEEP > 1 else set()
    for path in others:
        if path.name not in keep:
            _remove(path)


def _save_dcp(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    dist: DistInfo,
) -> Path:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import get_state_dict

    tmp = root / f".tmp-step-{step}"
    if dist.is_main:
        _start(root, step)
    barrier(dist)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    try:
        dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    except CheckpointException as exc:  # a BaseException: would escape every handler
        raise RunError(
            f"the checkpoint of step {step} could not be written ({_first(exc)})"
        ) from None
    torch.save(rng_states(), tmp / f"rng-{dist.rank}.pt")
    barrier(dist)
    final = root / f"step-{step}"
    if dist.is_main:
        meta = {"format": "dcp", "world_size": dist.world_size, "mode": dist.mode}
        _finish(tmp, {**state, **meta})
        final = _publish(root, tmp, step)
    barrier(dist)
    return final


def _first(exc: BaseException) -> str:
    failures = getattr(exc, "failures", None)
    if isinstance(failures, dict) and failures:
        inner = next(iter(failures.values()))
        inner = inner[0] if isinstance(inner, tuple) else inner
        if isinstance(inner, RunFolderError):
            raise inner
        return f"{type(inner).__name__}: {inner}"
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def latest_checkpoint(root: Path) -> Path | None:
    """The folder ``checkpoint/latest`` points to, or ``None`` when there is none.

    The pointer must name a ``step-N`` folder inside ``root``; anything else (``../x``, an
    absolute path, a link out) is refused with :class:`RunFolderError` naming the file.
    """
    pointer = root / "latest"
    if root.is_symlink():
        raise RunFolderError(
            f"checkpoint folder {root} is a link (to {root.resolve()}), so its checkpoints "
            f"are not this run's; refusing to read it"
        )
    if not pointer.is_file():
        return None
    raw = pointer.read_bytes()[:1024]
    path = pointer_target(root, raw.decode("utf-8", errors="replace"))
    if not path.is_dir():
        raise RunFolderError(
            f"checkpoint pointer {pointer} names '{path.name}', which does not exist"
        )
    return path


def checkpoint_info(path: Path) -> dict[str, Any]:
    """``state.json`` of a checkpoint folder, checked, with ``format`` (``safetensors`` or
    ``dcp``): a JSON object in UTF-8 whose ``step`` is an integer in ``[0, 10**12]``."""
    state = path / "state.json"
    if not state.is_file():
        raise RunFolderError(f"checkpoint {path} is damaged: 'state.json' is missing")
    if state.stat().st_size > MAX_STATE_BYTES:
        raise RunFolderError(f"checkpoint {path} is damaged: {state} is implausibly large")
    try:
        info = json.loads(state.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise RunFolderError(f"checkpoint {path} is damaged: {state} is not UTF-8 text") from None
    except ValueError as exc:
        raise RunFolderError(f"checkpoint {path} is damaged: {state} is not JSON ({exc})") from None
    if not isinstance(info, dict):
        raise RunFolderError(
            f"checkpoint {path} is damaged: {state} holds a {type(info).__name__}, not an "
            f"object with 'step'"
        )
    step = info.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise RunFolderError(
            f"checkpoint {path} is damaged: {state} has step={step!r} (valid: an integer "
            f"from 0 to {MAX_STEP})"
        )
    info.setdefault("format", "safetensors")
    if info["format"] not in ("safetensors", "dcp"):
        raise RunFolderError(
            f"checkpoint {path} is damaged: {state} has format={info['format']!r} "
            f"(valid: 'safetensors', 'dcp')"
        )
    for key in ("spec", "model_spec"):
        if key in info and not isinstance(info[key], dict):
            raise RunFolderError(f"checkpoint {path} is damaged: {state} '{key}' is not an object")
    needed = ["model.safetensors", "state.pt"] if info["format"] != "dcp" else ["dcp/.metadata"]
    for name in needed:
        if not inside(path, name, what=f"checkpoint {path}").is_file():
            raise RunFolderError(f"checkpoint {path} is damaged: '{name}' is missing")
    return info


def spec_changes(
    saved: dict[str, Any], current: dict[str, Any], prefix: str = "", where: str = "the checkpoint"
) -> list[str]:
    """``"field: A in the checkpoint, B now"`` for every leaf field that differs (``where``
    names the saved side). Fields only one side has (added to or removed from the spec by
    another anyformer version) are not changes."""
    changes = []
    for key in sorted(set(saved) & set(current), key=str):
        name = f"{prefix}.{key}" if prefix else str(key)
        a, b = saved[key], current[key]
        if isinstance(a, dict) and isinstance(b, dict):
            changes += spec_changes(a, b, name, where)
        elif a != b:
            changes.append(f"{name}: {a!r} in {where}, {b!r} now")
    return changes


def spec_mismatch(path: Path, changes: list[str]) -> RunFolderError:
    """The error for a spec.yaml edited after ``path`` was written."""
    shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
    return RunFolderError(
        f"the spec no longer matches the checkpoint {path} (spec.yaml was changed after it "
        f"was written): {shown}. Restore those fields, or start a new run with the new spec"
    )


def verify_checkpoint(path: Path, info: dict[str, Any]) -> None:
    """Check the files of ``path`` against the digests in its ``state.json``."""
    if "files" in info:
        verify_digests(path, info["files"])
        listed = set(info["files"]) | {"state.json"}
        extra = sorted(
            p.relative_to(path).as_posix()
            for p in path.rglob("*")
            if not p.is_dir() and p.relative_to(path).as_posix() not in listed
        )
        if extra:
            raise RunFolderError(
                f"checkpoint {path} is damaged: {path / extra[0]} is not one of the files "
                f"recorded in state.json (added after the checkpoint was written)"
            )
    else:
        log.warning(
            "checkpoint %s records no file digests (written by an older anyformer): its "
            "files are loaded unverified",
            path,
        )


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    dist: DistInfo | None = None,
) -> dict[str, Any]:
    """Load weights (and optimizer/RNG state) from a checkpoint folder; returns ``state.json``.

    Either format loads into a plain model and into a DDP/FSDP-wrapped one (pass its
    ``dist``; every rank must call this then). Any missing, damaged, unsafe or altered
    file, a model whose spec differs from the recorded one, and non-finite weights raise
    :class:`RunFolderError` naming the file, the fields or the tensor.
    """
    info = checkpoint_info(path)
    verify_checkpoint(path, info)
    saved, current = info.get("model_spec"), _model_spec(model)
    changes = spec_changes(saved, current, "model") if saved and current else []
    if changes:
        raise spec_mismatch(path, changes)
    distributed = dist is not None and dist.active
    if info["format"] == "dcp":
        _load_dcp(path, model, optimizer, dist.rank if distributed else 0)
    elif distributed:
        _load_safetensors_distributed(path, model, optimizer)
    else:
        _load_safetensors(path, model, optimizer)
    bad = _non_finite_anywhere(model, dist)
    if bad is not None:
        raise RunFolderError(
            f"checkpoint {path} holds non-finite weights: '{bad}' has NaN or inf; "
            f"refusing to use it"
        )
    info.pop("format")
    return info


def _mismatch(path: Path, exc: Exception) -> RunFolderError:
    lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
    sizes = [x for x in lines if "size mismatch" in x]
    if sizes:
        return RunFolderError(
            f"checkpoint {path} does not match the model built from spec.yaml ({len(sizes)} "
            f"tensors differ in shape, first: {sizes[0][:200]}); was spec.yaml edited?"
        )
    return RunFolderError(
        f"checkpoint {path} is damaged: model.safetensors cannot be loaded "
        f"({(lines[0] if lines else type(exc).__name__)[:300]})"
    )


def _load_safetensors(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None
) -> None:
    try:
        missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=False)
    except Exception as exc:  # safetensors raises several types on corrupt files
        raise _mismatch(path, exc) from None
    if missing or unexpected:
        raise RunFolderError(
            f"checkpoint {path} does not match the model: missing {sorted(missing)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]}"
        )
    if optimizer is not None:  # weights alone (generate, evaluate) need no state.pt
        state = _load_state_pt(path)
        try:
            optimizer.load_state_dict(state["optimizer"])  # moves the state to the params
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise RunFolderError(
                f"checkpoint {path} is damaged: the optimizer state in state.pt does not fit "
                f"this model ({type(exc).__name__}: {str(exc)[:200]})"
            ) from None
        set_rng_states(state["rng"])


def _load_state_pt(path: Path) -> dict[str, Any]:
    """Optimizer and RNG state, read onto the CPU (a run saved on a GPU resumes anywhere;
    ``Optimizer.load_state_dict`` then moves each tensor to its parameter's device)."""
    state = load_tensors_file(path / "state.pt", f"checkpoint {path}")
    if not isinstance(state, dict) or not {"optimizer", "rng"} <= set(state):
        raise RunFolderError(
            f"checkpoint {path} is damaged: {path / 'state.pt'} lacks 'optimizer' or 'rng'"
        )
    return state


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
    from torch.distributed.checkpoint.api import CheckpointException
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
    read_dcp_metadata(path / "dcp")  # refuses unsafe or malformed metadata, naming it
    try:
        with warnings.catch_warnings():  # loading into one plain process is intended
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            no_dist = not torch.distributed.is_initialized()
            dcp.load(
                state,
                storage_reader=safe_reader(path / "dcp"),
                planner=safe_planner(),
                no_dist=no_dist,
            )
    except RunFolderError:
        raise
    except (Exception, CheckpointException) as exc:  # CheckpointException: a BaseException
        raise RunFolderError(
            f"checkpoint {path} cannot be loaded into this model ({_first(exc)[:300]})"
        ) from None
    if optimizer is None:
        set_model_state_dict(model, state["model"])
        return
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"]
    )
    rng = inside(path, f"rng-{rank}.pt", what=f"checkpoint {path}")
    if not rng.is_file():  # resumed on more ranks than saved: take rank 0's
        rng = inside(path, "rng-0.pt", what=f"checkpoint {path}")
    if rng.is_file():
        set_rng_states(load_tensors_file(rng, f"checkpoint {path}"))


def read_weights(path: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors named by ``like``'s keys from the checkpoint folder ``path`` (either
    format), each of ``like``'s shape, on the CPU; the model itself is left alone.

    The checkpoint is read as :func:`load_checkpoint` reads it, trusting nothing: its
    ``state.json`` checked, every file verified against its digest, the weights read from
    safetensors (no pickle) or through the DCP safe reader; ``state.pt`` (optimizer, RNG)
    is never opened. A name the checkpoint lacks, a tensor of another shape and a
    non-finite value raise :class:`RunFolderError` naming the checkpoint and the tensors.
    Used to initialise a model from another run's weights (``init_from``)."""
    info = checkpoint_info(path)
    verify_checkpoint(path, info)
    if info["format"] == "dcp":
        got = _read_dcp_weights(path, like)
    else:
        full = _full_state_from_safetensors(path)
        missing = sorted(set(like) - set(full))
        if missing:
            raise RunFolderError(
                f"checkpoint {path} lacks {len(missing)} of the tensors to load, first: "
                f"{', '.join(missing[:5])}"
            )
        got = {name: full[name] for name in like}
    wrong = [
        f"{name} {list(got[name].shape)} (needs {list(t.shape)})"
        for name, t in like.items()
        if got[name].shape != t.shape
    ]
    if wrong:
        raise RunFolderError(
            f"checkpoint {path} holds {len(wrong)} tensors of other shapes than this model's, "
            f"first: {'; '.join(wrong[:3])}"
        )
    for name, tensor in got.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise RunFolderError(
                f"checkpoint {path} holds non-finite weights: '{name}' has NaN or inf; "
                f"refusing to use it"
            )
    return got


def _read_dcp_weights(path: Path, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model tensors named by ``like`` from a DCP checkpoint (no process group)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    read_dcp_metadata(path / "dcp")  # refuses unsafe or malformed metadata, naming it
    state = {"model": {name: torch.empty_like(t, device="cpu") for name, t in like.items()}}
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(
                state,
                storage_reader=safe_reader(path / "dcp"),
                planner=safe_planner(),
                no_dist=not torch.distributed.is_initialized(),
            )
    except RunFolderError:
        raise
    except (Exception, CheckpointException) as exc:  # CheckpointException: a BaseException
        raise RunFolderError(
            f"checkpoint {path} cannot be read into this model ({_first(exc)[:300]})"
        ) from None
    return state["model"]
