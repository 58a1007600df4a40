"""Contract checks of the ``objective`` slot: on a task it matches, the loss of a toy
model is a finite scalar whose gradients are finite and reach the model. An objective
no such task fits (``pinball``, which reads a quantile head) is checked on the outputs
of the first head it names (``Objective.heads``), fitted to it by ``Objective.for_head``.

The toy model is built as the objective declares: of its first model kind
(``Objective.kinds``) and embedder (``Objective.embedders``, on a task whose inputs that
embedder reads). An objective that corrupts batches is given a corrupted one; one that
drives the model itself (its own ``training_loss``, modules of its own) is attached to
the model and its training loss checked, then its evaluation loss on a fixed evaluation
batch."""

from __future__ import annotations

from typing import Any

import torch

from anyformer import registry
from anyformer.lab.contracts import CheckFailure, contract_check
from anyformer.lab.contracts.task import toy_setup
from anyformer.objectives.losses import CORRUPT_TRAIN, Objective, attach_objective
from anyformer.registry import Entry
from anyformer.tasks.base import Batch, torch_generator
from anyformer.tasks.packing import model_inputs

SLOT = "objective"
#: Tasks tried, in order, for an objective that no task names as its default: one with
#: token outputs (logits) and one with real-valued outputs.
FALLBACK_TASKS = ("copy", "icl_linear_regression")


def small_task_params(task_name: str) -> dict[str, Any]:
    """Parameters that keep a contract check's task small: ``code_lm`` (which the
    identifier objectives read) reads the standard library's ``unittest`` package, with
    its test suite as ``ood`` and 30% of its modules as ``id``, instead of every module
    (minutes to extract cold)."""
    if task_name == "code_lm":
        from anyformer.tasks.text import stdlib_root

        library = stdlib_root() / "unittest"
        if (library / "test").is_dir():
            return {"root": str(library), "val_fraction": 0.3}
    return {}


def matching_tasks(entry: Entry) -> list[str]:
    """The tasks the objective names (``tasks``: e.g. ``masked_identifier`` reads the
    identifier marks only ``code_lm`` puts in its batches); else tasks whose default
    objective is this one; else, for an objective that needs an
    embedder (``Objective.embedders``), the first two tasks whose inputs that embedder
    reads; else :data:`FALLBACK_TASKS`."""
    own = getattr(entry.cls, "tasks", None)  # the tasks whose batches carry what it reads
    if own:
        return list(own)[:1]
    named = [e.name for e in registry.entries("task") if e.cls.default_objective == entry.name]
    if named:
        return named[:1]
    embedders = getattr(entry.cls, "embedders", None)
    if embedders:
        reads = {registry.get("embedder", name).caps.input_kind for name in embedders}
        fits = [
            e.name
            for e in registry.entries("task")
            if (getattr(e.cls, "input_kind", None) or "tokens") in reads
        ]
        fits = [name for name in FALLBACK_TASKS if name in fits] or fits
        return fits[:2]
    return list(FALLBACK_TASKS)


def toy_model_fields(entry: Entry, task_name: str | None = None) -> dict[str, Any]:
    """Model fields the objective's declarations ask for: its first kind when it cannot
    train a decoder, its first embedder, and on ``task_name`` what
    ``Objective.contract_model`` asks (room for reserved token ids above the task's
    vocabulary, no position scheme)."""
    fields: dict[str, Any] = {}
    kinds = getattr(entry.cls, "kinds", None)
    if kinds and "decoder" not in kinds:
        fields["kind"] = kinds[0]
    embedders = getattr(entry.cls, "embedders", None)
    if embedders:
        fields["embedder"] = embedders[0]
    ask = getattr(entry.cls, "contract_model", None)
    if ask is not None and task_name is not None:
        task_entry = registry.get("task", task_name)
        task = task_entry.build(task_entry.make_params(), 0)
        fields.update(ask(task.model_io().get("vocab_size"), task.max_seq_len()))
    return fields


def _drives(objective: Any) -> bool:
    """Whether the objective computes its training loss itself or owns modules."""
    cls = type(objective)
    return cls.training_loss is not Objective.training_loss or cls.module is not Objective.module


def loss_on(task_name: str, objective: str) -> None:
    """One training batch of ``task_name`` through a toy model: the objective gives a
    finite scalar, and its gradients are finite and not all zero. An objective that
    corrupts batches sees a corrupted one; one that drives the model is attached to it,
    its ``training_loss`` checked, and then its evaluation loss on a fixed evaluation
    batch (finite)."""
    entry = registry.get(SLOT, objective)
    fields = toy_model_fields(entry, task_name)
    _, task, model, loss_fn = toy_setup(task_name, objective, fields, small_task_params(task_name))
    batch = task.train_batch(0, 4)
    if getattr(loss_fn, "corrupts", False):
        batch = loss_fn.corrupt(batch, torch_generator(0, CORRUPT_TRAIN, 0))
    if _drives(loss_fn):
        attach_objective(model, loss_fn)

        def forward(b: Batch) -> list[tuple[float, torch.Tensor]]:
            return model.training_outputs(b.inputs, step=0, **model_inputs(b))

        loss = loss_fn.training_loss(model, batch, 0, forward)
    else:
        out = model(batch.inputs, **model_inputs(batch))
        loss = loss_fn(out, batch)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise CheckFailure(f"on task {task_name} the loss is not a scalar tensor")
    if not torch.isfinite(loss):
        raise CheckFailure(f"on task {task_name} the loss is {float(loss.detach())}")
    loss.backward()
    if _drives(loss_fn):
        model.eval()
        with torch.no_grad():
            fixed = loss_fn.evaluation_batches([task.train_batch(1, 4)], "id")[0]
            value = loss_fn(model(fixed.inputs, **model_inputs(fixed)), fixed)
        if not torch.isfinite(value):
            raise CheckFailure(f"on task {task_name} the evaluation loss is {float(value)}")
        model.train()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads or not all(torch.isfinite(g).all() for g in grads):
        raise CheckFailure(f"on task {task_name} the gradients are missing or not finite")
    if not any(bool(g.abs().sum() > 0) for g in grads):
        raise CheckFailure(f"on task {task_name} every gradient is zero")


def loss_through_head(entry: Entry, head_name: str) -> None:
    """Random hidden states through the toy ``head_name`` head (:mod:`.head`), random
    targets of the outputs' shape less the values axis: a finite scalar loss whose
    gradients reach the head."""
    from anyformer.lab.contracts.head import B, hidden, toy_spec

    head_entry = registry.get("head", head_name)
    params = head_entry.make_params()
    head = head_entry.build(params, toy_spec(head_entry))
    objective = entry.build().for_head(head_name, params)
    out = head(hidden(6), None)
    targets = torch.randn(out.shape[:-1])
    batch = Batch(
        inputs=torch.zeros(B, 6), targets=targets, loss_mask=torch.ones(B, dtype=torch.bool)
    )
    loss = objective(out, batch)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not torch.isfinite(loss):
        raise CheckFailure(f"through head '{head_name}' the loss is not a finite scalar: {loss}")
    loss.backward()
    grads = [p.grad for p in head.parameters()]
    if any(g is None or not torch.isfinite(g).all() for g in grads):
        raise CheckFailure(f"through head '{head_name}' gradients are missing or not finite")
    if not any(bool(g.abs().sum() > 0) for g in grads):
        raise CheckFailure(f"through head '{head_name}' every gradient is zero")


@contract_check(SLOT, "finite_loss")
def finite_loss(entry: Entry) -> None:
    """a finite loss and finite, non-zero gradients on a task it matches (or through a head it names)"""
    reasons = []
    for task_name in matching_tasks(entry):
        try:
            loss_on(task_name, entry.name)
            return
        except Exception as exc:  # noqa: BLE001 - collect why each task did not fit
            reasons.append(f"{task_name}: {exc}")
    heads = getattr(entry.cls, "heads", None) or ()
    if heads:  # no task fits: the outputs of the first head it reads, on their own
        loss_through_head(entry, heads[0])
        return
    raise CheckFailure("no finite loss on any matching task (" + "; ".join(reasons) + ")")
