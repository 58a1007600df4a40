"""Pretrain -> fine-tune: start a model from another run's backbone, and freeze parts of it.

``ExperimentSpec.init_from`` names a trained run folder (the *parent*). When a run with
``init_from`` starts fresh (its own folder holds no checkpoint yet), :func:`init_backbone`
copies the parent's **backbone** into the new model: every weight and buffer whose
top-level module is not in :data:`NOT_BACKBONE`, which for the decoder and encoder is the
embedder (``embed``), the position scheme (``position``), the blocks (``blocks``) and the
final norm (``norm``). The head (``head``) is the new task's, freshly initialised with the
run's seed, the depth schedule's own modules (``depth``: early-exit heads) likewise, and an
objective's modules (``objective_module``, e.g. an MAE decoder) are never read. A resumed
run restores everything from its own checkpoint and does not read the parent again.

The parent's checkpoint is read through the trust machinery of
:mod:`anyformer.training.checkpoint` (:func:`~anyformer.training.checkpoint.read_weights`:
the latest checkpoint the folder's pointer names, confined to the folder, every file
checked against its SHA-256 digest, safetensors or the DCP safe reader, no pickle,
finite values). The two models must have the same backbone: :func:`backbone_changes`
compares every model field but the head's (``head``, ``n_outputs``, ``pool``,
``tie_embeddings``) and those that change no weight (``dropout``, ``init_std``), and a
difference is refused naming each field with both values. An encoder child of an
encoder–decoder parent starts from the parent's encoder (:meth:`Parent.source`: the
backbone compared with the parent's ``encoder_spec()``, weights read from ``encoder.*``).

``freeze`` and ``linear_probe`` (:func:`apply_freeze`) set ``requires_grad=False`` on the
parameters they name before the optimizer is made, so the optimizer holds only the
trainable ones (:func:`~anyformer.training.trainer.make_optimizer` skips frozen
parameters) and frozen weights stay bit-identical through training.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyformer.errors import RunFolderError, SpecError
from anyformer.spec import ExperimentSpec, ModelSpec, freeze_prefixes

log = logging.getLogger(__name__)

#: Top-level modules that are not the backbone: the task's head, the depth schedule's own
#: modules (early-exit heads) and an objective's modules.
NOT_BACKBONE = ("head", "depth", "objective_module")
#: Model fields that may differ between parent and child: the head's, and those that
#: change no weight's shape or meaning.
FREE_FIELDS = ("head", "n_outputs", "pool", "tie_embeddings", "dropout", "init_std")


@dataclass(frozen=True)
class Parent:
    """The run a model is initialised from: its folder, resolved spec and the checkpoint
    (``checkpoint/step-N``) its ``latest`` pointer names."""

    folder: Path
    spec: ExperimentSpec
    checkpoint: Path

    def source(self, child: ModelSpec) -> tuple[ModelSpec, str]:
        """The part of the parent's model that a ``child`` model starts from, and the
        prefix of its names in the parent's checkpoint: the whole model (``""``), or, for
        an encoder child of an encoder–decoder parent, the parent's encoder (its
        :meth:`~anyformer.spec.ModelSpec.encoder_spec`, names under ``"encoder."``): a
        T5-style pretrained encoder fine-tuned alone on a classification task."""
        model = self.spec.model
        if model.kind == "encoder_decoder" and child.kind == "encoder":
            return model.encoder_spec(), "encoder."
        return model, ""

    @property
    def step(self) -> int:
        from anyformer.training.checkpoint import checkpoint_info

        return int(checkpoint_info(self.checkpoint)["step"])

    def record(self) -> dict[str, Any]:
        """What provenance.json keeps about the parent."""
        return {
            "init_from": str(self.folder),
            "parent_path": os.path.abspath(self.folder),
            "parent_spec_hash": self.spec.hash,
            "parent_checkpoint": self.checkpoint.name,
            "parent_step": self.step,
        }


def read_parent(run_dir: str | Path, field: str = "init_from") -> Parent:
    """The parent run at ``run_dir``: a folder holding ``spec.yaml`` and a checkpoint.
    Refused with :class:`RunFolderError` naming ``field`` and the path otherwise."""
    from anyformer.training.checkpoint import latest_checkpoint

    folder = Path(run_dir)
    where = f"{field}='{run_dir}'"
    if not folder.is_dir():
        raise RunFolderError(
            f"{where} is not a folder; give the folder of a trained run (runs/<name>-<hash>)"
        )
    spec_file = folder / "spec.yaml"
    if not spec_file.is_file():
        raise RunFolderError(
            f"{where} is not a run folder: it has no spec.yaml (a run folder holds "
            f"spec.yaml, metrics.jsonl and checkpoint/)"
        )
    try:
        spec = ExperimentSpec.from_yaml(spec_file)
    except SpecError as exc:
        raise RunFolderError(f"{where}: its spec.yaml is not a valid spec ({exc})") from None
    path = latest_checkpoint(folder / "checkpoint")
    if path is None:
        raise RunFolderError(
            f"{where} has no checkpoint to start from ({folder / 'checkpoint' / 'latest'} "
            f"is missing); train it first (anyformer resume {folder})"
        )
    return Parent(folder, spec, path)


def backbone_fields(model: ModelSpec) -> dict[str, Any]:
    """The fields of ``model`` that decide its backbone's weights (every field but
    :data:`FREE_FIELDS`; the embedder as its resolved reference)."""
    data = model.model_dump(mode="json")
    for key in (*FREE_FIELDS, "embed"):
        data.pop(key, None)
    data["embedder"] = model.embedder_ref.model_dump(mode="json")
    return data


def backbone_changes(parent: ModelSpec, child: ModelSpec) -> list[str]:
    """``"model.field: A in the parent run, B now"`` for every backbone field that differs."""
    from anyformer.training.checkpoint import spec_changes

    return spec_changes(
        backbone_fields(parent), backbone_fields(child), "model", where="the parent run"
    )


def check_init_from(spec: ExperimentSpec) -> Parent | None:
    """The parent of a resolved ``spec`` with ``init_from``, checked: a run folder with a
    checkpoint, whose model has the same backbone as ``spec.model``. ``None`` without
    ``init_from``. Raises :class:`RunFolderError` (a bad folder) or :class:`SpecError`
    (another backbone, naming every field that differs)."""
    if spec.init_from is None:
        return None
    parent = read_parent(spec.init_from)
    adapter = parent.spec.adapter
    if adapter is not None and adapter.kind != "bitfit":  # BitFit's biases are backbone weights
        raise SpecError(
            f"init_from='{spec.init_from}': the parent run trained adapter.kind="
            f"{adapter.kind}, which its backbone weights do not hold; "
            + (
                f"merge it first (anyformer merge {spec.init_from}) and start from the merged run"
                if adapter.kind == "lora"
                else "start from the run it was adapted from"
            )
        )
    changes = backbone_changes(parent.source(spec.model)[0], spec.model)
    if changes:
        raise SpecError(
            f"init_from='{spec.init_from}': the parent run's backbone differs from this "
            f"model's in {len(changes)} field(s): {'; '.join(changes)}. A fine-tuned model "
            f"keeps its parent's backbone; change only the head, the task and training"
        )
    return parent


def backbone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's entries of ``model.state_dict()`` (:data:`NOT_BACKBONE` and an
    adapter's parameters, :func:`anyformer.adapters.is_adapter_key`, left out)."""
    from anyformer.adapters import is_adapter_key

    return {
        name: tensor
        for name, tensor in model.state_dict().items()
        if name.split(".", 1)[0] not in NOT_BACKBONE and not is_adapter_key(name)
    }


def init_backbone(model: nn.Module, parent: Parent) -> list[str]:
    """Copy the parent's backbone weights into ``model`` in place; returns the names
    copied. A prompt-tuned model's prompt is drawn again from the loaded embedding table. Reads the parent's latest checkpoint with
    :func:`~anyformer.training.checkpoint.read_weights` (verified, no pickle)."""
    from anyformer.training.checkpoint import read_weights

    target = backbone_state(model)
    prefix = parent.source(model.spec)[1] if hasattr(model, "spec") else ""
    weights = read_weights(parent.checkpoint, {prefix + k: t for k, t in target.items()})
    with torch.no_grad():
        for name, tensor in target.items():
            tensor.copy_(weights[prefix + name])
    if isinstance(getattr(model, "prompt", None), nn.Module):
        from anyformer.adapters.prompt import init_prompt

        init_prompt(model)  # sampled from the loaded (pretrained) embeddings
    log.info("initialised %d backbone tensors from %s", len(target), parent.checkpoint)
    return sorted(target)


def frozen_names(model: nn.Module, spec: ExperimentSpec) -> list[str]:
    """Names of the parameters ``spec.freeze`` and ``spec.linear_probe`` freeze (each
    shared parameter once, under its first name)."""
    if spec.linear_probe:
        keep: set[int] = set()
        for part in ("head", "objective_module"):
            module = getattr(model, part, None)
            if isinstance(module, nn.Module):
                keep |= {id(p) for p in module.parameters()}
        return [n for n, p in model.named_parameters() if id(p) not in keep]
    prefixes = freeze_prefixes(spec.freeze, spec.model.n_layers)
    return [n for n, _ in model.named_parameters() if n.startswith(prefixes)]


def apply_freeze(model: nn.Module, spec: ExperimentSpec) -> list[str]:
    """Set ``requires_grad=False`` on the parameters ``spec`` freezes; returns their
    names. ``linear_probe`` with a language-model head tied to the embedder is refused
    (the head's weight *is* the embedder's, so the probe would train the embedding)."""
    if not (spec.freeze or spec.linear_probe):
        return []
    head = getattr(model, "head", None)
    embed = getattr(model, "embed", None)
    tied = (
        head is not None
        and embed is not None
        and getattr(head, "weight", None) is not None
        and head.weight is getattr(embed, "weight", None)
    )
    if spec.linear_probe and tied:
        raise SpecError(
            f"linear_probe=true with head='{spec.model.resolved_head}' tied to the embedder "
            f"(model.tie_embeddings=true) would train the embedding too; set "
            f"model.tie_embeddings=false"
        )
    names = frozen_names(model, spec)
    params = dict(model.named_parameters())
    for pattern in () if spec.linear_probe else spec.freeze:
        prefixes = freeze_prefixes([pattern], spec.model.n_layers)
        if not any(name.startswith(prefixes) for name in params):
            log.warning("freeze: %r names no parameters of this model (nothing to freeze)", pattern)
    for name in names:
        params[name].requires_grad_(False)
    if tied and not head.weight.requires_grad:
        log.warning("the head's weight is the embedder's (tied) and is frozen with it")
    if not any(p.requires_grad for p in model.parameters()):
        raise SpecError(
            f"freeze={list(spec.freeze)} freezes every parameter of the model: nothing "
            f"would train; leave the head or some blocks out of freeze"
        )
    return names


def parent_link(run_dir: Path, init_from: str) -> str:
    """The parent's ``report.md`` relative to ``run_dir`` (a Markdown link target)."""
    target = Path(os.path.abspath(init_from)) / "report.md"
    return Path(os.path.relpath(target, os.path.abspath(run_dir))).as_posix()


def finetune_spec(
    run_dir: str | Path, task: str, overrides: list[str] | tuple[str, ...] = ()
) -> ExperimentSpec:
    """The spec ``anyformer finetune RUN_DIR TASK [KEY=VALUE ...]`` runs: the parent's model
    without its head (``head`` and ``n_outputs`` are left to the new task, which decides
    them when the run is resolved), the parent's training settings (its ``eval_splits``
    left to the new task), ``task`` with its defaults (the parent's parameters when it is
    the parent's task) and the task's default objective,
    ``init_from=RUN_DIR``, then ``overrides`` (``task.*``, ``train.*``, ``freeze``,
    ``linear_probe``, ...). Named ``<task>-from-<parent name>``.

    The parent must be a run folder with a checkpoint (:func:`read_parent`, refused with
    :class:`RunFolderError` naming the path); its checkpoint is verified when the run
    loads it, before the new run folder is made."""
    from anyformer.spec import apply_overrides

    parent = read_parent(run_dir, field="RUN_DIR")
    base = parent.spec.to_dict()
    model = {k: v for k, v in base["model"].items() if k not in ("head", "n_outputs")}
    train = {k: v for k, v in base["train"].items() if k != "eval_splits"}
    name = f"{task}-from-{parent.spec.name}"[:100]
    data: dict[str, Any] = {
        "name": name,
        "description": (
            f"Fine-tuned on task '{task}' from the run {run_dir} (experiment "
            f"'{parent.spec.name}', task '{parent.spec.task.name}', spec hash "
            f"{parent.spec.hash}): its backbone, a new head."
        ),
        "plugins": list(parent.spec.plugins),
        "model": model,
        # the parent's own task keeps its parameters (a linear probe of the same task)
        "task": base["task"] if task == parent.spec.task.name else task,
        "train": train,
        "init_from": str(run_dir),
    }
    if overrides:
        data = apply_overrides(data, list(overrides))
    return ExperimentSpec.from_dict(data)
