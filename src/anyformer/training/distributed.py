"""Scaling a single-device model from outside: process groups, wrapping and data shards.

Model code never knows it is distributed (DESIGN.md §2). The Trainer calls
:func:`init_distributed` and then :func:`parallelize`, which applies, in this fixed order
(the order torchtitan uses, each step wrapping what the previous one produced):

1. **activation checkpointing** (``train.activation_checkpointing``): each entry of
   ``model.blocks`` recomputes its forward pass during backward
   (:func:`torch.utils.checkpoint.checkpoint`, non-reentrant, RNG state preserved, so
   losses and gradients are unchanged). The block's ``forward`` is replaced on the
   instance, so parameter names (and checkpoints) do not change;
2. **torch.compile** (``train.compile``): each block is compiled in place
   (``block.compile()``; identical blocks share one compiled graph); graph breaks are
   collected by :func:`graph_breaks` and listed in the log by the Trainer;
3. **FSDP2 or DDP** (``train.distributed``): ``fsdp`` applies
   :func:`torch.distributed.fsdp.fully_shard` to every block, then to the root module
   (embeddings, final norm and head); ``ddp`` wraps the model in
   :class:`~torch.nn.parallel.DistributedDataParallel`.

Processes are launched by ``torchrun``, which sets ``RANK``, ``WORLD_SIZE`` and
``LOCAL_RANK``; the backend is NCCL on CUDA and gloo on CPU. With ``train.distributed``
set but no ``torchrun`` the run forms a one-process group, so the same code path (and
checkpoint format) works on one process. Each rank draws the *global* batch of a step
(``task.train_batch(step, batch_size)``, exactly what a single process trains on) and
keeps its contiguous slice of rows (:func:`shard_batch`), so a distributed run sees the
same data as a single-process one.
"""

from __future__ import annotations

import logging
import os
import types
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from anyformer.errors import SpecError
from anyformer.spec import TrainSpec
from anyformer.tasks.base import Batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: the mode, its rank among ``world_size`` and its device."""

    mode: str = "none"
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process created the group (and destroys it in close())

    @property
    def active(self) -> bool:
        """True when parameters live in a process group (``ddp`` or ``fsdp``)."""
        return self.mode != "none"

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs, writes metrics, reports and progress."""
        return self.rank == 0


def env_rank() -> int:
    """The global rank ``torchrun`` gave this process (0 when not launched by torchrun)."""
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(mode: str, device: torch.device) -> DistInfo:
    """Join (or form) the process group ``mode`` needs; the device becomes ``cuda:LOCAL_RANK``.

    ``mode='none'`` under ``torchrun`` with several processes is refused: every process
    would train the whole model and write into the same run folder.
    """
    world = env_world_size()
    if mode == "none":
        if world > 1:
            raise SpecError(
                f"this process was launched with WORLD_SIZE={world} (torchrun) but "
                f"train.distributed='none'; set train.distributed=ddp or train.distributed=fsdp"
            )
        return DistInfo(device=device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend)  # env:// from torchrun
        else:  # one process, no launcher: an in-memory store is enough
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        owns = True
    return DistInfo(mode, dist.get_rank(), dist.get_world_size(), local_rank, device, owns)


def close_distributed(info: DistInfo) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.active and info.world_size > 1:
        dist.barrier()


# --------------------------------------------------------------------------- data
def shard_batch(batch: Batch, rank: int, world_size: int) -> Batch:
    """Rank ``rank``'s contiguous slice of the rows of the global ``batch``.

    Every tensor whose first dimension is the batch (inputs, targets, masks, extras) is
    sliced; the global batch size must be divisible by ``world_size``.
    """
    rows = batch.inputs.shape[0]
    if rows % world_size:
        raise SpecError(
            f"train.batch_size={rows} is not divisible by the {world_size} processes; "
            f"use a multiple of {world_size} (e.g. {rows - rows % world_size or world_size})"
        )
    per = rows // world_size
    lo, hi = rank * per, (rank + 1) * per

    def cut(value: Any) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == rows:
            return value[lo:hi]
        return value

    parts = {f.name: cut(getattr(batch, f.name)) for f in fields(batch)}
    parts["extras"] = {k: cut(v) for k, v in batch.extras.items()}
    return Batch(**parts)


def loss_weight(global_batch: Batch, local_batch: Batch, world_size: int) -> float:
    """Factor that makes the mean of the ranks' losses the loss of the global batch.

    A rank's objective averages over its own counted positions (``loss_mask``); scaling
    it by ``world * n_local / n_global`` makes DDP's and FSDP's gradient average equal the
    gradient of the global mean loss, even when ranks count different numbers of tokens.
    """
    total = int(global_batch.loss_mask.sum())
    if total == 0:
        return 1.0
    return world_size * int(local_batch.loss_mask.sum()) / total


def sum_across(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``value`` over the ranks (``value`` itself on one process)."""
    if info.active and info.world_size > 1:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


# --------------------------------------------------------------------------- wrapping
def _blocks(model: nn.Module, what: str) -> list[nn.Module]:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise SpecError(
            f"{what} needs a model with a 'blocks' ModuleList (anyformer's Transformer has one); "
            f"got {type(model).__name__}"
        )
    return list(blocks)


def apply_activation_checkpointing(model: nn.Module) -> None:
    """Make every block recompute its activations in the backward pass (non-reentrant)."""
    from torch.utils.checkpoint import checkpoint

    for block in _blocks(model, "train.activation_checkpointing"):
        if getattr(block, "_anyformer_checkpointed", False):
            continue
        inner = block.forward

        def forward(self: nn.Module, *args: Any, _inner: Any = inner, **kwargs: Any) -> Any:
            return checkpoint(_inner, *args, use_reentrant=False, **kwargs)

        block.forward = types.MethodType(forward, block)
        block._anyformer_checkpointed = True


def apply_compile(model: nn.Module) -> None:
    """Compile every block in place (names of parameters are unchanged)."""
    for block in _blocks(model, "train.compile"):
        block.compile()


def apply_fsdp(model: nn.Module, info: DistInfo) -> None:
    """FSDP2: shard each block's parameters, then the rest (embeddings, norm, head) at the root."""
    from torch.distributed.fsdp import fully_shard

    blocks = _blocks(model, "train.distributed='fsdp'")
    for i, block in enumerate(blocks):
        # the last block's parameters are needed at once by backward: keep them gathered
        fully_shard(block, reshard_after_forward=i < len(blocks) - 1)
    fully_shard(model)


def apply_ddp(model: nn.Module, info: DistInfo) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [info.device.index] if info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def parallelize(model: nn.Module, train: TrainSpec, info: DistInfo, compile: bool) -> nn.Module:
    """Apply activation checkpointing -> compile -> FSDP/DDP; returns the module to train.

    ``model`` is changed in place (and stays the module to evaluate and checkpoint); the
    returned module is ``model`` itself except under DDP, where it is the DDP wrapper.
    """
    if train.activation_checkpointing:
        apply_activation_checkpointing(model)
    if compile:
        apply_compile(model)
    if info.mode == "fsdp":
        apply_fsdp(model, info)
    elif info.mode == "ddp":
        return apply_ddp(model, info)
    return model


def graph_breaks() -> dict[str, int]:
    """The graph breaks torch.compile has met in this process: first line of reason -> count."""
    from torch._dynamo.utils import counters

    out: dict[str, int] = {}
    for reason, count in counters["graph_break"].items():
        line = str(reason).strip().splitlines()[0] if str(reason).strip() else "unknown"
        out[line] = out.get(line, 0) + int(count)
    return out
