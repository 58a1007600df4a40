"""Contract checks of the ``objective`` slot: on a task it matches, the loss of a toy
model is a finite scalar whose gradients are finite and reach the model. An objective
no such task fits (``pinball``, which reads a quantile head) is checked on the outputs
of the first head it names (``Objective.heads``), fitted to it by ``Objective.for_head``."""

from __future__ import annotations

import torch

from anyformer import registry
from anyformer.lab.contracts import CheckFailure, contract_check
from anyformer.lab.contracts.task import toy_setup
from anyformer.registry import Entry
from anyformer.tasks.base import Batch
from anyformer.tasks.packing import model_inputs

SLOT = "objective"
#: Tasks tried, in order, for an objective that no task names as its default: one with
#: token outputs (logits) and one with real-valued outputs.
FALLBACK_TASKS = ("copy", "icl_linear_regression")


def matching_tasks(entry: Entry) -> list[str]:
    """Tasks whose default objective is this one, else :data:`FALLBACK_TASKS`."""
    named = [e.name for e in registry.entries("task") if e.cls.default_objective == entry.name]
    return named[:1] or list(FALLBACK_TASKS)


def loss_on(task_name: str, objective: str) -> None:
    """One training batch of ``task_name`` through a toy model: the objective gives a
    finite scalar, and its gradients are finite and not all zero."""
    _, task, model, loss_fn = toy_setup(task_name, objective)
    batch = task.train_batch(0, 4)
    out = model(batch.inputs, **model_inputs(batch))
    loss = loss_fn(out, batch)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        raise CheckFailure(f"on task {task_name} the loss is not a scalar tensor")
    if not torch.isfinite(loss):
        raise CheckFailure(f"on task {task_name} the loss is {float(loss.detach())}")
    loss.backward()
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
