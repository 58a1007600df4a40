"""Run an experiment into a folder: resolve the spec against its task, train, report.

``runs/<name>-<hash>/`` holds ``spec.yaml`` (the resolved spec), ``metrics.jsonl``,
``checkpoint/``, ``provenance.json`` (each session's command, overrides, version, date
and machine), ``report.md`` and ``plots/*.png``. Running a spec whose folder exists
continues that run from its last checkpoint instead of starting over.

One process writes a run folder at a time (:func:`run_lock`): ``.lock`` holds the
writer's PID and host under an exclusive ``flock``, so a second ``anyformer run`` on the
same folder is refused with the holder named, and the lock of a process that died (even
by SIGKILL) is free again because the kernel drops its ``flock``.

A run is named after its spec's ``name``, except when overrides change the task of a
named experiment without naming the run (:func:`apply_run_overrides`): ``anyformer run
quickstart task=icl_linear_regression`` is the run ``icl_linear_regression-<hash>``, not
``quickstart-<hash>``, and its description says which experiment and overrides it came from.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from anyformer import registry
from anyformer.errors import RunFolderError, SpecError
from anyformer.lab.report import record_session, write_report
from anyformer.model.transformer import Transformer, build_model
from anyformer.objectives.losses import Objective
from anyformer.spec import SHAPED_INPUTS, ExperimentSpec, HeadRef, ModelSpec, packing_refusal
from anyformer.spec_io import write_text_atomic
from anyformer.tasks.base import Task
from anyformer.training.distributed import env_rank
from anyformer.training.trainer import (
    Trainer,
    TrainResult,
    check_eval_splits,
    resolve_device,
    seed_everything,
)

log = logging.getLogger(__name__)

SPEC_FILE = "spec.yaml"
LOCK_FILE = ".lock"

# train.* fields that may change when a run resumes: they do not change what was trained
RESUMABLE = frozenset(
    {
        "steps",
        "eval_every",
        "eval_size",
        "eval_splits",
        "tensorboard",
        "checkpoint_every",
        "log_every",
        "progress",
        "device",
        "threads",
        "compile",
        "precision",
        "activation_checkpointing",
        "distributed",
        "packing",
    }
)
_HELD: dict[Path, tuple[int, int]] = {}  # folder -> (file descriptor, depth) of our locks


def _holder(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(errors="replace")[:4096])
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _pid_alive(pid: Any) -> bool:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _acquire(folder: Path) -> int:
    import fcntl

    path = folder / LOCK_FILE
    for _ in range(10):
        try:  # never through a link: a shared folder's .lock must not truncate another file
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            raise RunFolderError(
                f"{path} is a link (to {path.resolve()}), not a lock file; remove it"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            holder = _holder(path)
            unsupported = exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
            same_host = holder.get("host") == socket.gethostname()
            if unsupported and same_host and not _pid_alive(holder.get("pid")):
                path.unlink(missing_ok=True)  # no flock here: a dead writer's file
                continue
            since = holder.get("since")
            when = (
                time.strftime("%Y-%m-%d %H:%M", time.localtime(since))
                if isinstance(since, (int, float))
                else "?"
            )
            raise RunFolderError(
                f"run folder {folder} is in use by process {holder.get('pid', '?')} on "
                f"{holder.get('host', '?')} (since {when}; lock file {path}); wait for it to "
                f"finish or stop it, then run again"
            ) from None
        try:  # the file may have been removed by its last holder after we opened it
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(record).encode())
        return fd
    raise RunFolderError(f"could not take the lock {path} (it keeps changing)")


@contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder/.lock`` for the block (re-entrant in one process; rank 0 alone under
    ``torchrun``). Refuses with :class:`RunFolderError` naming the holder's PID and host
    while another live process holds it; released on any exit, Ctrl-C included."""
    if env_rank() != 0:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    key = folder.resolve()
    if key in _HELD:
        fd, depth = _HELD[key]
        _HELD[key] = (fd, depth + 1)
        try:
            yield
        finally:
            _HELD[key] = (fd, _HELD[key][1] - 1)
        return
    fd = _acquire(folder)
    _HELD[key] = (fd, 1)
    try:
        yield
    finally:
        del _HELD[key]
        (folder / LOCK_FILE).unlink(missing_ok=True)  # before closing: nobody holds it now
        os.close(fd)


def _trained(spec_dict: dict[str, Any]) -> dict[str, Any]:
    """The fields of a spec that decide what a checkpoint holds (not name, description or
    the resumable ``train`` fields)."""
    out = {k: v for k, v in spec_dict.items() if k not in ("name", "description")}
    train = out.get("train")
    if isinstance(train, dict):
        out["train"] = {k: v for k, v in train.items() if k not in RESUMABLE}
    return out


def check_checkpoint_spec(folder: Path, spec: ExperimentSpec) -> None:
    """Refuse a run folder whose latest checkpoint was trained under another spec (listing
    the changed fields) or is past ``spec.train.steps``."""
    from anyformer.training.checkpoint import (
        checkpoint_info,
        latest_checkpoint,
        spec_changes,
        spec_mismatch,
    )

    path = latest_checkpoint(folder / "checkpoint")
    if path is None:
        return
    info = checkpoint_info(path)
    saved = info.get("spec")
    if isinstance(saved, dict) and info.get("spec_hash") != spec.hash:
        changes = spec_changes(_trained(saved), _trained(spec.to_dict()))
        if changes:
            raise spec_mismatch(path, changes)
    if info["step"] > spec.train.steps:
        raise SpecError(
            f"train.steps={spec.train.steps} is below the step of the checkpoint {path} "
            f"({info['step']}); a run cannot go back: give train.steps of at least "
            f"{info['step']}"
        )


@dataclass
class Run:
    """A finished (or interrupted) run: its folder, spec and final metrics per split."""

    dir: Path
    spec: ExperimentSpec
    result: TrainResult
    task: Task

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.result.final

    def headline(self) -> dict[str, float]:
        """The task's headline metric per split, e.g. ``{'id': 0.99, 'ood': 0.12}``."""
        name = self.task.headline
        return {split: float(m[name]) for split, m in self.metrics.items() if name in m}


def build_task(spec: ExperimentSpec) -> Task:
    """The task of ``spec``, seeded by ``spec.train.seed``."""
    try:
        return spec.task.entry.build(spec.task.config, seed=spec.train.seed)
    except ValueError as exc:  # a task refuses parameters it cannot serve, with the reason
        raise SpecError(f"task '{spec.task.name}': {exc}") from None


def task_for_run(spec: ExperimentSpec, *folders: Path | str | None) -> Task:
    """The task of ``spec`` with what a run folder kept for it (a text task's trained
    tokenizer), from the first of ``folders`` that holds it (a run's own folder, then its
    ``init_from`` parent); else the task as :func:`build_task` makes it."""
    task = build_task(spec)
    restore = getattr(task, "restore_artifacts", None)
    for folder in folders if restore is not None else ():
        if folder is None or not Path(folder).is_dir():
            continue
        try:
            if restore(Path(folder)):
                break
        except ValueError as exc:
            raise RunFolderError(f"task '{spec.task.name}': {exc}") from None
    return task


def save_task_artifacts(task: Task, folder: Path) -> None:
    """Write the files a task keeps in its run folder (e.g. ``tokenizer.json``) once."""
    artifacts = getattr(task, "artifacts", None)
    if artifacts is None:
        return
    for name, text in artifacts().items():
        path = folder / name
        if not path.exists():
            write_text_atomic(path, text)


def build_objective(spec: ExperimentSpec, task: Task) -> Objective:
    """The run's objective (the task's default unless named), fitted to the model's head
    (:meth:`~anyformer.objectives.losses.Objective.for_head`: ``pinball`` takes the
    quantile head's levels and refuses other ones) and to the model
    (:meth:`~anyformer.objectives.losses.Objective.for_model`: ``mlm`` reads the
    vocabulary for its mask token)."""
    if spec.objective is not None:
        objective = spec.objective.entry.build(spec.objective.config)
    else:
        objective = registry.get("objective", task.default_objective).build()
    head = spec.model.head_ref
    objective = objective.for_head(head.name, head.config)
    fit = getattr(objective, "for_model", None)  # a plain callable loss has none
    return fit(spec.model) if fit is not None else objective


def resolve(spec: ExperimentSpec) -> ExperimentSpec:
    """Fill the model fields the task decides (vocabulary, input size, head) and check the rest.

    A field the user set explicitly must agree with the task; ``max_len`` must cover the
    task's longest sequence; ``train.packing`` needs a per-token head once the head is
    decided (:func:`~anyformer.spec.packing_refusal`). A task with a ``form`` parameter
    (the sequence tasks) writes its rows for ``model.kind`` (:func:`with_task_form`).
    """
    spec = with_teacher_model(with_task_form(spec))
    task = build_task(spec)
    model = spec.model.model_dump(mode="json")
    defaults = ModelSpec.model_fields
    # fields the objective decides instead of the task (rtd's discriminator head): the
    # user's value if set, else the objective's
    name = spec.objective.name if spec.objective is not None else task.default_objective
    cls = registry.get("objective", name).cls
    decided = getattr(cls, "model_io", None) or {}
    for key, value in decided.items():
        if model[key] is None or model[key] == defaults[key].default:
            need = getattr(cls, "n_outputs", None)
            if key == "n_outputs" and spec.model.head is not None:  # the user's head
                value = need.get(spec.model.head.name, value) if isinstance(need, dict) else value
            model[key] = value
    io = dict(task.model_io())
    _check_kind(model, io.pop("kind", None), spec.task.name)
    if "encoder" in io:
        model["encoder"] = _fill_encoder(model.get("encoder"), io.pop("encoder"), spec.task.name)
    for key, value in io.items():
        if key in decided:
            continue
        current = model.get(key)  # unset optional fields (edge_dim) are left out
        if key == "input_shape" and value is not None:
            value = list(value)
        if current is None or current == defaults[key].default or current == value:
            model[key] = value
        elif key == "embedder" or (key == "head" and _same_shape_head(current, value)):
            continue  # the user's own choice of embedder or head; validation checks it
        elif not (key == "vocab_size" and current > value):  # a larger vocabulary is allowed
            raise SpecError(
                f"model.{key}={current!r} does not fit task '{spec.task.name}', "
                f"which needs {key}={value!r}; remove model.{key} to let the task set it"
            )
    need = task.max_seq_len()
    kind = getattr(task, "input_kind", None)
    if kind is not None:
        _check_input_kind(model, kind, spec.task.name)
    # an image, table, audio or series embedder decides the token count itself (ModelSpec
    # validation checks it against max_len); the task's count assumes one token per value
    if kind not in SHAPED_INPUTS and model["max_len"] < need:
        raise SpecError(
            f"model.max_len={model['max_len']} is shorter than the longest sequence of task "
            f"'{spec.task.name}' ({need}); set model.max_len to at least {need}"
        )
    data = spec.to_dict()
    data["model"] = model
    if spec.objective is None:
        data["objective"] = task.default_objective
    resolved = ExperimentSpec.from_dict(data)
    problem = packing_refusal(resolved.train, resolved.model)
    if problem:
        raise SpecError(problem)
    build_objective(resolved, task)  # an objective that cannot read the head is refused here
    return resolved


#: The row forms (task parameter ``form``) each model kind reads; the first is the one a
#: run sets when the task's ``form`` is left None (``decoder`` rows are the tasks' default).
KIND_FORMS = {
    "decoder": ("decoder",),
    "encoder": ("decoder",),
    "prefix_lm": ("prefix_lm",),
    "encoder_decoder": ("encoder_decoder",),
}


def with_task_form(spec: ExperimentSpec) -> ExperimentSpec:
    """``spec`` with ``task.form`` set from ``model.kind`` when the task has a ``form``
    parameter, the user left it None and the kind is ``prefix_lm`` or
    ``encoder_decoder``; a form the user set that the kind cannot read is refused
    naming both (:data:`KIND_FORMS`)."""
    if "form" not in spec.task.entry.params.model_fields:
        return spec
    kind = spec.model.kind
    valid = KIND_FORMS.get(kind, ("decoder",))
    form = spec.task.params.get("form")
    if form is None:
        if valid[0] == "decoder":
            return spec
        data = spec.to_dict()
        data["task"] = {"name": spec.task.name, **spec.task.params, "form": valid[0]}
        return ExperimentSpec.from_dict(data)
    if form not in valid:
        raise SpecError(
            f"task.form='{form}' does not fit model.kind='{kind}', which reads "
            f"{' or '.join(valid)} rows; remove task.form to let model.kind decide it, or set "
            f"model.kind='{form}'"
        )
    return spec


def _ref_name(value: Any) -> str:
    return value if isinstance(value, str) else dict(value).get("name", "")


def _same_shape_head(chosen: Any, task_head: Any) -> bool:
    """Whether the user's head gives outputs of the task's head's shape (both pooled,
    or both per token); the objective check then decides whether it can be trained. A
    task that asks for a head with parameters (``dense`` at a scale) needs exactly it."""
    if isinstance(task_head, dict):
        return HeadRef.model_validate(chosen) == HeadRef.model_validate(task_head)
    try:
        a = registry.get("head", _ref_name(chosen)).caps.pooled
        b = registry.get("head", _ref_name(task_head)).caps.pooled
    except SpecError:
        return False
    return a == b


def _check_kind(model: dict[str, Any], need: str | None, task: str) -> None:
    """Refuse a model of another kind than the one the task needs (a task that reads a
    source with an encoder and writes tokens with a decoder needs ``encoder_decoder``);
    the kind is the user's choice, never filled in."""
    if need is not None and model["kind"] != need:
        raise SpecError(
            f"model.kind={model['kind']!r} does not fit task '{task}', which needs "
            f"model.kind={need!r} (an encoder reading its source, a decoder writing its "
            f"tokens); set model.kind={need}"
        )


def _fill_encoder(
    current: dict[str, Any] | None, need: dict[str, Any], task: str
) -> dict[str, Any]:
    """The model's ``encoder`` with the fields the task decides filled in: a field the
    user left unset takes the task's value; the user's own ``embedder`` is kept if it
    reads what the task's embedder reads; any other field must agree."""
    enc = dict(current or {})
    for key, value in need.items():
        mine = enc.get(key)
        if key == "input_shape" and mine is not None:
            mine = list(mine)
        if mine is None or mine == value:
            enc[key] = value
        elif key == "embedder":
            wants = registry.get("embedder", _ref_name(value)).caps.input_kind or "tokens"
            _check_input_kind({"embedder": mine}, wants, task, field="model.encoder.embedder")
        else:
            raise SpecError(
                f"model.encoder.{key}={mine!r} does not fit task '{task}', which needs "
                f"{key}={value!r}; remove model.encoder.{key} to let the task set it"
            )
    return enc


def _check_input_kind(
    model: dict[str, Any], kind: str, task: str, field: str = "model.embedder"
) -> None:
    """Refuse an embedder that reads something other than the task's inputs."""
    name = _ref_name(model.get("embedder") or model.get("embed") or "tokens")
    reads = registry.get("embedder", name, where=field).caps.input_kind
    if reads is not None and reads != kind:
        readers = [e.name for e in registry.entries("embedder") if e.caps.input_kind == kind]
        raise SpecError(
            f"{field}='{name}' reads {reads}, but task '{task}' gives {kind} "
            f"(embedders for {kind}: {', '.join(readers) or 'none'})"
        )


def apply_run_overrides(base: ExperimentSpec, overrides: list[str]) -> ExperimentSpec:
    """``base`` with ``overrides``. Unless they set ``name`` or ``description``: when they
    change the task, the run is named after the task it runs and its description says
    where it came from (the base's description is about another task); when they change
    the model, task parameters or objective, the description notes those overrides (the
    base's text may name what they changed)."""
    spec = base.with_overrides(overrides) if overrides else base
    keys = {item.split("=", 1)[0].strip() for item in overrides}
    if keys & {"name", "description"}:
        return spec
    data = spec.to_dict()
    if spec.task.name != base.task.name:
        data["name"] = spec.task.name
        data["description"] = f"experiment '{base.name}' with overrides: {' '.join(overrides)}"
    else:
        changed = [o for o in overrides if o.split(".", 1)[0].split("=", 1)[0] != "train"]
        if not changed:
            return spec
        data["description"] = (
            f"{base.description.rstrip()} (Run with overrides: {' '.join(changed)}.)".lstrip()
        )
    return ExperimentSpec.from_dict(data)


def run_folder(spec: ExperimentSpec, out: Path | str = "runs") -> Path:
    return Path(out) / f"{spec.name}-{spec.hash}"


def prepare_model(spec: ExperimentSpec) -> Transformer:
    """Build the model with the run's seed, so initial weights are reproducible, with
    ``spec.adapter`` added (:func:`anyformer.adapters.apply_adapter`: the rest frozen)."""
    from anyformer.adapters import apply_adapter

    seed_everything(spec.train.seed)
    model = build_model(spec.model)
    apply_adapter(model, spec.adapter)
    return model


def run_experiment(
    spec: ExperimentSpec,
    out: Path | str = "runs",
    run_dir: Path | None = None,
    provenance: dict[str, Any] | None = None,
) -> Run:
    """Train ``spec`` in its run folder (resuming it if it exists), then write the report.

    ``provenance`` (e.g. ``{"experiment": ..., "overrides": [...]}``) is recorded with the
    command line, version, date and machine of this session in ``provenance.json``."""
    spec = resolve(spec)
    # everything that can refuse the spec runs before the run folder is made
    resolve_device(spec.train.device)
    folder = run_dir or run_folder(spec, out)
    task = task_for_run(spec, folder, spec.init_from)
    check_eval_splits(spec.train, task, spec.task.name)
    model = prepare_model(spec)
    provenance = start_from_parent(spec, model, folder, provenance)
    provenance = start_teacher(spec, model, folder, task, provenance)
    with run_lock(folder):
        check_checkpoint_spec(folder, spec)
        saved = folder / SPEC_FILE
        main = env_rank() == 0  # under torchrun only rank 0 writes the spec and the report
        if main and not saved.exists():
            spec.save(saved)
        if main:
            record_session(folder, provenance)
            save_task_artifacts(task, folder)
        info = {"spec_hash": spec.hash, "spec": spec.to_dict()}
        objective = build_objective(spec, task)
        trainer = Trainer(model, task, objective, spec.train, folder, info=info)
        try:
            result = trainer.fit()
        finally:
            trainer.close()
        run = Run(folder, spec, result, task)
        if main and spec.adapter is not None:
            from anyformer.adapters import save_adapter

            save_adapter(folder, model, spec.adapter)
        if main and not result.interrupted:
            write_report(run, model, objective)
    return run


def start_from_parent(
    spec: ExperimentSpec,
    model: Transformer,
    folder: Path,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Apply ``spec.init_from`` and ``spec.freeze``/``linear_probe`` to a freshly built
    ``model`` (:mod:`anyformer.lab.init_from`); returns ``provenance`` with the parent
    recorded when the backbone was loaded.

    The parent's backbone is loaded only when ``folder`` holds no checkpoint yet: a
    resumed fine-tune run restores every weight from its own checkpoint (and needs the
    parent no more). Freezing applies on every start, before the optimizer is made."""
    from anyformer.lab.init_from import apply_freeze, check_init_from, init_backbone
    from anyformer.training.checkpoint import latest_checkpoint

    if spec.init_from is not None and latest_checkpoint(folder / "checkpoint") is None:
        parent = check_init_from(spec)
        if parent is not None:
            init_backbone(model, parent)
            provenance = {**(provenance or {}), **parent.record()}
    apply_freeze(model, spec)
    return provenance


def teacher_run(spec: ExperimentSpec) -> str | None:
    """The run folder an objective distils from (``objective.teacher``, for objectives
    with ``teacher`` and ``teacher_model`` parameters, e.g. ``distill``), or None."""
    ref = spec.objective
    if ref is None or "teacher_model" not in ref.entry.params.model_fields:
        return None
    return getattr(ref.config, "teacher", None)


def with_teacher_model(spec: ExperimentSpec) -> ExperimentSpec:
    """``spec`` with ``objective.teacher_model`` read from the teacher run's ``spec.yaml``
    when unset (a finding's ``@<key>`` placeholder is left for its substitution)."""
    from anyformer.lab.init_from import read_parent

    teacher = teacher_run(spec)
    if teacher is None or teacher.startswith("@") or spec.objective.config.teacher_model:  # type: ignore[union-attr]
        return spec
    parent = read_parent(teacher, field="objective.teacher")
    data = spec.to_dict()
    objective = spec.objective.model_dump(mode="json")  # type: ignore[union-attr]
    data["objective"] = {**objective, "teacher_model": parent.spec.model.model_dump(mode="json")}
    return ExperimentSpec.from_dict(data)


def start_teacher(
    spec: ExperimentSpec,
    model: Transformer,
    folder: Path,
    task: Task,
    provenance: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Load the trained weights of the run ``objective.teacher`` names into the frozen
    teacher the objective's module holds (``objective_module.teacher.model``) when
    ``folder`` holds no checkpoint yet (a resumed run has them in its own checkpoint).
    The checkpoint is read verified (:func:`~anyformer.training.checkpoint.read_weights`);
    returns ``provenance`` with the teacher recorded."""
    from anyformer.lab.init_from import read_parent
    from anyformer.objectives.losses import attach_objective
    from anyformer.training.checkpoint import latest_checkpoint, read_weights

    teacher = teacher_run(spec)
    if teacher is None or latest_checkpoint(folder / "checkpoint") is not None:
        return provenance
    parent = read_parent(teacher, field="objective.teacher")
    attach_objective(model, build_objective(spec, task))
    target = model.objective_module.teacher.model.state_dict()  # type: ignore[union-attr]
    weights = read_weights(parent.checkpoint, target)
    with torch.no_grad():
        for name, tensor in target.items():
            tensor.copy_(weights[name])
    return {**(provenance or {}), "teacher": parent.record()}


def load_run_spec(run_dir: Path | str) -> ExperimentSpec:
    """The spec saved in a run folder; a clear error if the folder is not a run."""
    folder = Path(run_dir)
    if not folder.is_dir():
        raise RunFolderError(
            f"'{run_dir}' is not a folder; give the folder of a run (runs/<name>-<hash>)"
        )
    if not (folder / SPEC_FILE).is_file():
        raise RunFolderError(
            f"'{run_dir}' is not a run folder: it has no {SPEC_FILE} "
            f"(a run folder holds spec.yaml, metrics.jsonl and checkpoint/)"
        )
    return ExperimentSpec.from_yaml(folder / SPEC_FILE)


def resume_run(
    run_dir: Path | str, overrides: list[str] | None = None, command: str | None = None
) -> Run:
    """Continue a run from its last checkpoint, optionally with overrides such as
    ``train.steps=2000``. Only ``train.*`` fields that do not change what was already
    computed (steps, evaluation splits, cadence and size, checkpoint cadence, progress,
    device, threads, and how it runs: compile, precision, activation checkpointing,
    distributed, packing) may
    change; a run saved on N processes resumes on M (``train.distributed=none`` for
    one)."""
    from anyformer.training.checkpoint import latest_checkpoint

    folder = Path(run_dir)
    spec = load_run_spec(folder)
    if latest_checkpoint(folder / "checkpoint") is None:
        raise RunFolderError(
            f"run '{run_dir}' has no checkpoint to resume from (checkpoint/latest is missing)"
        )
    with run_lock(folder):
        check_checkpoint_spec(folder, spec)
        if overrides:
            for item in overrides:
                key = item.split("=", 1)[0]
                section, _, field = key.partition(".")
                if section != "train" or field not in RESUMABLE:
                    raise SpecError(
                        f"'{key}' cannot change when resuming (it would change what was "
                        f"already trained); resumable overrides: "
                        f"{', '.join('train.' + a for a in sorted(RESUMABLE))}"
                    )
            new = spec.with_overrides(overrides)
            check_checkpoint_spec(folder, new)  # e.g. train.steps below the checkpoint's
            if env_rank() == 0:
                new.save(folder / SPEC_FILE)
            spec = new
        return run_experiment(
            spec,
            run_dir=folder,
            provenance={"resumed": True, "overrides": list(overrides or []), "command": command},
        )
