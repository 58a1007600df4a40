"""The one training loop: AdamW, warmup + cosine, clipping, evaluation, checkpoints.

Everything random is seeded from ``train.seed``: model initialisation (by the caller,
under :func:`seed_everything`), dropout (the global torch generator, saved in every
checkpoint) and data (the task draws batch ``step`` from ``(seed, step)``). A run of
2N steps and a run of N steps resumed to 2N therefore see the same data, the same
learning rates and the same optimizer state, and on CPU produce bit-identical losses.

Speed and scale are flags of ``train`` applied around the single-device model (see
:mod:`anyformer.training.distributed` for the order): ``precision`` (autocast),
``activation_checkpointing``, ``compile`` and ``distributed`` (DDP or FSDP2 under
``torchrun``; rank 0 alone logs, writes metrics and shows progress). Every logged
training line carries ``tokens_per_s``, ``flops_per_s`` and, on a GPU whose peak is
known, ``mfu`` (:mod:`anyformer.training.throughput`); tokens are real tokens (padding
is not counted).

``train.packing`` makes training and evaluation padding-free: every batch is packed with
:func:`~anyformer.tasks.packing.pack_batch` before the forward pass (several documents
per row, kept apart by ``segments``), the loss is computed on the packed batch (the
same mean as on the padded one), and evaluation outputs are mapped back to the padded
rows, so the task's ``score`` sees what it would without packing (0 at padding).

Stopping: Ctrl-C and SIGTERM save a checkpoint of the current step and return an
interrupted result (the CLI exits 130); a non-finite loss raises :class:`RunError` with
the likely cause (:meth:`Trainer._advice`) and never saves non-finite weights.
``metrics.jsonl`` is append-only while training and trimmed atomically to the checkpoint
a run (re)starts from (:func:`trim_metrics`).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anyformer.errors import RunError, SpecError
from anyformer.nn.packing import Packed
from anyformer.objectives.losses import CORRUPT_TRAIN, attach_objective
from anyformer.spec import ModelSpec, TrainSpec, packing_refusal
from anyformer.tasks.base import Batch, Task, torch_generator
from anyformer.tasks.packing import model_inputs, pack_batch
from anyformer.training.checkpoint import (
    NonFiniteWeights,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from anyformer.training.conformal import calibration_steps, conformal_head
from anyformer.training.conformal import report as conformal_report
from anyformer.training.distributed import (
    close_distributed,
    graph_breaks,
    init_distributed,
    loss_weight,
    parallelize,
    shard_batch,
    sum_across,
)
from anyformer.training.precision import autocast, grad_scaler, resolve_precision
from anyformer.training.runlog import (  # noqa: F401 - trim_metrics is re-exported
    Terminated,
    _Progress,
    _sigterm_as_interrupt,
    trim_metrics,
)
from anyformer.training.schedule import lr_at
from anyformer.training.tensorboard import TensorBoardWriter
from anyformer.training.throughput import Throughput, peak_flops

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch global generators (model init and dropout use these)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            "train.device='cuda' but no CUDA device is available (valid here: cpu, auto)"
        )
    return torch.device(name)


def make_optimizer(model: nn.Module, train: TrainSpec) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (not on biases, norm gains or 1-d params)."""
    seen: set[int] = set()
    decay, no_decay = [], []
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # the fused CUDA kernel for plain tensors on a GPU; foreach elsewhere (CPU, FSDP's DTensors)
    params = decay + no_decay
    fused = bool(params) and all(p.is_cuda and type(p) is nn.Parameter for p in params)
    if fused:
        return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, fused=True)
    return torch.optim.AdamW(groups, lr=train.lr, betas=train.betas, foreach=True)


#: the name of the evaluation split drawn from the training data (``train.eval_splits``)
TRAIN_SPLIT = "train"


def check_eval_splits(train: TrainSpec, task: Task, name: str | None = None) -> tuple[str, ...]:
    """The splits to evaluate: ``train.eval_splits`` checked against the task's splits and
    ``train`` (SpecError naming the bad value and the valid ones), else the task's.
    ``name`` is the task's registered name for the message (default: its class name)."""
    if train.eval_splits is None:
        return tuple(task.splits)
    valid = (*task.splits, TRAIN_SPLIT)
    if not train.eval_splits:
        raise SpecError(f"train.eval_splits is empty; name at least one of: {', '.join(valid)}")
    for split in train.eval_splits:
        if split not in valid:
            raise SpecError(
                f"train.eval_splits: '{split}' is not a split of task "
                f"'{name or type(task).__name__}' "
                f"(valid: {', '.join(valid)})"
            )
    if len(set(train.eval_splits)) != len(train.eval_splits):
        raise SpecError(f"train.eval_splits={list(train.eval_splits)} names a split twice")
    return tuple(train.eval_splits)


@dataclass
class TrainResult:
    """What a finished (or interrupted) training run leaves."""

    step: int
    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    interrupted: bool = False
    seconds: float = 0.0
    losses: list[tuple[int, float]] = field(default_factory=list)
    tokens_per_s: float = 0.0  # mean training throughput of this session (all ranks)


class Trainer:
    """Train ``model`` on ``task`` with ``objective`` as ``train`` says.

    With ``run_dir`` the trainer appends to ``run_dir/metrics.jsonl`` and checkpoints to
    ``run_dir/checkpoint/``; :meth:`fit` resumes from the latest checkpoint there
    (refusing one past ``train.steps``). The learning rate of step ``s`` is always
    ``lr_at(s, train)`` of the current ``train.steps``: a resume with more steps re-plans
    the schedule from there on.
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        objective: Any,
        train: TrainSpec,
        run_dir: Path | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.train = train
        device = resolve_device(train.device)
        self.precision = resolve_precision(train.precision, device)
        if self.precision == "fp16" and train.distributed == "fsdp":
            raise SpecError(
                "train.precision='fp16' is not supported with train.distributed='fsdp' (the "
                "gradient scaler cannot see other ranks' shards); use train.precision=bf16"
            )
        spec = getattr(model, "spec", None)
        problem = packing_refusal(train, spec) if isinstance(spec, ModelSpec) else None
        if problem:  # a spec validated before its head was decided, or a model built by hand
            raise SpecError(problem)
        self.eval_splits = check_eval_splits(train, task)
        self.compile = device.type == "cuda" if train.compile is None else train.compile
        self.dist = init_distributed(train.distributed, device)
        self.device = self.dist.device  # cuda:LOCAL_RANK under torchrun
        if hasattr(objective, "module"):  # the objective's own modules train with the model
            attach_objective(model, objective)
            if getattr(model, "objective_module", None) is not None and train.distributed != "none":
                raise SpecError(
                    f"objective '{type(objective).__name__}' trains modules of its own besides "
                    f"the model, which train.distributed={train.distributed!r} does not support "
                    f"yet; use train.distributed=none"
                )
        self.model = model.to(self.device)
        # the module to evaluate and checkpoint is self.model (changed in place);
        # the one to train is self.wrapped (the DDP wrapper under ddp, else the same module)
        self.wrapped = parallelize(self.model, train, self.dist, self.compile)
        self.task = task
        self.objective = objective
        self.run_dir = run_dir if self.dist.is_main else None
        self.tensorboard = (
            TensorBoardWriter(self.run_dir)
            if train.tensorboard and self.run_dir is not None
            else None
        )
        self.checkpoint_dir = run_dir / "checkpoint" if run_dir is not None else None
        self.info = info or {}
        self.optimizer = make_optimizer(self.model, train)
        self.scaler = grad_scaler(self.device, self.precision)
        flops = getattr(model, "flops_per_token", None)
        self.meter = Throughput(
            flops if callable(flops) else None,
            peak_flops(self.device, self.precision),
            self.dist.world_size,
        )
        self._graph_breaks: dict[str, int] = {}
        self._train_sample: list[Batch] | None = None
        self.step = 0
        self.start_step = 0  # the step this session started (or resumed) at
        self.grad_norms: deque[tuple[int, torch.Tensor]] = deque(maxlen=64)
        self.last_tokens = 0
        self.last_seq_len = 0

    # ------------------------------------------------------------------ pieces
    def pack(self, batch: Batch) -> tuple[Batch, Packed]:
        """``batch`` packed padding-free (``train.packing``), with its layout."""
        try:
            return pack_batch(batch)
        except ValueError as exc:  # leading padding, empty rows: the task's batches do not fit
            name = type(self.task).__name__
            raise RunError(
                f"train.packing=true: a batch of task {name} cannot be packed ({exc}); "
                f"set train.packing=false"
            ) from None

    def predict(self, batch: Batch) -> torch.Tensor:
        """Outputs of the model on ``batch`` (packed and mapped back with ``train.packing``)."""
        if not self.train.packing:
            b = batch.to(self.device)
            with autocast(self.device, self.precision):
                return self.model(b.inputs, **model_inputs(b))
        packed, layout = self.pack(batch)
        b = packed.to(self.device)
        with autocast(self.device, self.precision):
            out = self.model(b.inputs, **model_inputs(b))
        return layout.unpack_padded(out, int(batch.inputs.shape[1]))

    def evaluate(self) -> dict[str, dict[str, Any]]:
        """Metrics of every evaluated split (``train.eval_splits``, by default the task's)
        at the current weights."""
        was_training = self.model.training
        self.model.eval()
        head = conformal_head(self.model)
        # the outputs are kept only for a head whose intervals are reported
        seen: dict[str, list[tuple[torch.Tensor, Batch]]] = {s: [] for s in self.eval_splits}
        try:
            metrics = {
                split: self._evaluate_split(split, seen[split] if head else None)
                for split in self.eval_splits
            }
            if head is not None:
                self._add_conformal(head, metrics, seen)
            return metrics
        finally:
            self.model.train(was_training)

    def _add_conformal(
        self,
        head: str,
        metrics: dict[str, dict[str, Any]],
        seen: dict[str, list[tuple[torch.Tensor, Batch]]],
    ) -> None:
        """Split-conformal coverage and width per split (:mod:`anyformer.training.conformal`),
        calibrated on the training batches just past ``train.steps``."""
        t = self.train
        with torch.no_grad():
            calibration = [
                (self.predict(b), b)
                for b in (
                    self.task.train_batch(step, t.batch_size)
                    for step in calibration_steps(t.steps, t.eval_size, t.batch_size)
                )
            ]
        for split, summary in conformal_report(head, calibration, seen, t.conformal_level).items():
            metrics[split]["conformal"] = summary

    def _evaluate_split(
        self, split: str, seen: list[tuple[torch.Tensor, Batch]] | None = None
    ) -> dict[str, Any]:
        """Metrics of one split; the (outputs, batch) pairs are appended to ``seen``."""
        if split != TRAIN_SPLIT:

            def predict(batch: Batch) -> torch.Tensor:
                out = self.predict(batch)
                if seen is not None:
                    seen.append((out, batch))
                return out

            # a task that decodes (completion_with_tests) may generate with the model's cache
            predict.model = self.model  # type: ignore[attr-defined]
            return self.task.evaluate(predict, split, self.train.eval_size, self.objective)
        batches = self.train_sample()
        corrupted = getattr(self.objective, "evaluation_batches", None)
        if corrupted is not None:
            batches = corrupted(batches, split)
        with torch.no_grad():
            outputs = [self.predict(b) for b in batches]
            if seen is not None:
                seen.extend(zip(outputs, batches))
            metrics = self.task.score([o.float().cpu() for o in outputs], batches)
            total, weight = 0.0, 0
            for out, b in zip(outputs, batches):
                n = int(b.loss_mask.sum())
                total += float(self.objective(out, b.to(out.device))) * n
                weight += n
        metrics["loss"] = total / max(weight, 1)
        return metrics

    def train_sample(self) -> list[Batch]:
        """The ``train`` evaluation split: the training batches of steps ``0 .. k-1``, the
        first ``k = ceil(eval_size / batch_size)`` batches the model trained on (the same
        examples at every evaluation)."""
        if self._train_sample is None:
            k = -(-self.train.eval_size // self.train.batch_size)
            self._train_sample = [self.task.train_batch(i, self.train.batch_size) for i in range(k)]
        return self._train_sample

    def _log(self, record: dict[str, Any]) -> None:
        """Append one line to ``metrics.jsonl`` (append-only while training), stamped
        with its wall-clock ``time`` (seconds since the epoch), and mirror it to
        TensorBoard when ``train.tensorboard``."""
        if self.run_dir is None:
            return
        record = {**record, "time": round(time.time(), 3)}
        with open(self.run_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self.tensorboard.write(record)

    def _checkpoint(self) -> None:
        if self.checkpoint_dir is None:
            return
        try:
            save_checkpoint(
                self.checkpoint_dir, self.step, self.model, self.optimizer, self.info, self.dist
            )
        except NonFiniteWeights as exc:
            raise RunError(f"{exc}; {self._advice(self.step - 1)}") from None

    def _resume(self) -> None:
        if self.checkpoint_dir is not None:
            path = latest_checkpoint(self.checkpoint_dir)
            if path is not None:
                state = load_checkpoint(path, self.model, self.optimizer, self.dist)
                if state["step"] > self.train.steps:
                    raise SpecError(
                        f"train.steps={self.train.steps} is below the step of the checkpoint "
                        f"{path} ({state['step']}); a run cannot go back: give train.steps of "
                        f"at least {state['step']}"
                    )
                self.step = state["step"]
                log.info("resumed from %s at step %d", path, self.step)
        self.start_step = self.step
        if self.run_dir is not None:
            trim_metrics(self.run_dir / "metrics.jsonl", self.step)

    def _advice(self, step: int) -> str:
        """The likely cause of a divergence at (0-based) ``step``, from what was seen: the
        step (before any update: the initial model), the gradient norms of the last steps
        (non-finite or exploding), and settings that cannot work (lr, weight decay)."""
        t = self.train
        causes, fixes = [], []
        if not math.isfinite(t.lr) or t.lr >= 1.0:
            causes.append(f"train.lr={t.lr} is far too large")
        if math.isfinite(t.lr) and t.weight_decay * t.lr >= 1.0:
            causes.append(
                f"train.weight_decay x train.lr = {t.weight_decay * t.lr:.3g} >= 1, so every "
                f"step's decay overshoots zero (use a weight_decay below {1 / t.lr:.3g})"
            )
        if step == 0:
            causes.append(
                "the loss was non-finite before any update, so the initial model or the "
                "objective produces it (check model.init_std and the initialisation"
                + (", and train.precision: fp16 overflows" if self.precision == "fp16" else "")
                + ")"
            )
            return "likely cause: " + "; ".join(causes)
        norms = []
        for s, n in self.grad_norms:
            try:
                norms.append((s, float(n.full_tensor() if hasattr(n, "full_tensor") else n)))
            except RuntimeError:
                continue
        finite = [n for _, n in norms if math.isfinite(n)]
        if norms and not math.isfinite(norms[-1][1]):
            causes.append(f"the gradients became non-finite at step {norms[-1][0]}")
        elif len(finite) >= 4 and finite[-1] > 10 * sorted(finite[:-1])[len(finite[:-1]) // 2]:
            typical = sorted(finite[:-1])[len(finite[:-1]) // 2]
            causes.append(
                f"the gradient norm exploded from about {typical:.3g} to {finite[-1]:.3g} "
                f"by step {norms[-1][0]}"
            )
        if step - self.start_step < 3 and self.start_step == 0:
            causes.append(f"it diverged within the first updates at train.lr={t.lr}")
        if self.precision == "fp16":
            causes.append("train.precision=fp16 can overflow (bf16 cannot)")
        fixes.append(f"lower train.lr (now {t.lr})")
        if not t.grad_clip:
            fixes.append("set train.grad_clip (now 0: off)")
        if step < max(t.warmup_steps, 1) * 2:
            fixes.append(f"lengthen train.warmup_steps (now {t.warmup_steps})")
        head = ("likely cause: " + "; ".join(causes) + ". ") if causes else ""
        return head + "Try: " + ", or ".join(fixes)

    def training_outputs(self, batch: Batch, step: int) -> list[tuple[float, torch.Tensor]]:
        """``[(loss weight, outputs)]`` of one step: ``[(1.0, model(inputs))]``, or, when
        the model trains several outputs per step, the model's ``training_outputs``: the
        exits of an ``early_exit`` depth or the iterates of a looped loss window, each
        weighted ``1 / n``, and the widths of ``matformer`` FFNs (one forward each); the
        loss is the weighted sum of the objective over them. Every forward runs through
        ``self.wrapped`` (the DDP wrapper under ddp): the extra outputs come back in the
        forward's ``ModelOutput`` like a plain output, and DDP reduces the gradient of
        the one backward over all forwards of the step."""
        # padding_mask; segments/positions when packed; source/source_mask, prefix_len
        kwargs = model_inputs(batch)
        if getattr(self.model, "trains_several_outputs", False):
            return self.model.training_outputs(
                batch.inputs, step=step, module=self.wrapped, **kwargs
            )
        return [(1.0, self.wrapped(batch.inputs, **kwargs))]

    def train_step(self, step: int) -> float:
        """One optimizer step on batch ``step``; returns the loss of the global batch.

        Under DDP/FSDP each rank trains on its slice of the global batch, its loss scaled
        so that the ranks' averaged gradients are those of the global batch. With
        ``train.packing`` each rank packs its slice.
        """
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, self.train)
        batch = self.task.train_batch(step, self.train.batch_size)
        if getattr(self.objective, "corrupts", False):  # the global batch, before sharding
            batch = self.objective.corrupt(
                batch, torch_generator(self.train.seed, CORRUPT_TRAIN, step)
            )
        self.last_tokens = batch.n_real_tokens  # the global batch's, padding not counted
        world, weight = self.dist.world_size, 1.0
        if world > 1:
            local = shard_batch(batch, self.dist.rank, world)
            weight = loss_weight(batch, local, world)
            batch = local
        if self.train.packing:
            batch, _ = self.pack(batch)
        self.last_seq_len = int(batch.inputs.shape[1])
        batch = batch.to(self.device)

        def forward(b: Batch) -> list[tuple[float, torch.Tensor]]:
            with autocast(self.device, self.precision):
                return self.training_outputs(b, step)

        if hasattr(self.objective, "training_loss"):
            loss = self.objective.training_loss(self.model, batch, step, forward)
        else:  # a plain callable loss(outputs, batch)
            loss = sum(w * self.objective(outputs, batch) for w, outputs in forward(batch))
        if weight != 1.0:
            loss = loss * weight
        value = float(sum_across(loss.detach(), self.dist)) / world
        if not math.isfinite(value):
            raise RunError(f"the loss became {value} at step {step + 1}; {self._advice(step)}")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:  # fp16: scale the loss, unscale before clipping
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.train.grad_clip:
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.train.grad_clip)
        else:
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            norm = nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        self.grad_norms.append((step + 1, norm.detach()))  # read only to explain a divergence
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return value

    def close(self) -> None:
        """Leave the process group if this trainer formed it (a no-op otherwise)."""
        close_distributed(self.dist)

    def _report_graph_breaks(self) -> None:
        """Log graph breaks torch.compile met since the last call (rank 0)."""
        if not self.compile or not self.dist.is_main:
            return
        current = graph_breaks()
        new = {k: v - self._graph_breaks.get(k, 0) for k, v in current.items()}
        new = {k: v for k, v in new.items() if v > 0}
        if new:
            lines = "\n".join(f"  {n}x {reason}" for reason, n in sorted(new.items()))
            log.warning(
                "torch.compile: %d graph break(s) by step %d:\n%s",
                sum(new.values()),
                self.step,
                lines,
            )
        elif not self._graph_breaks and self.step == 1:
            log.info("torch.compile: no graph breaks in the blocks")
        self._graph_breaks = current

    # ------------------------------------------------------------------ loop
    def fit(self, until: int | None = None) -> TrainResult:
        """Train to ``train.steps`` (resuming if a checkpoint exists); evaluate at the end.

        ``until`` pauses earlier: the run stops after that step with a checkpoint, as an
        interruption would, and a later :meth:`fit` continues it.
        """
        stop = self.train.steps if until is None else min(until, self.train.steps)
        if self.train.threads:
            torch.set_num_threads(self.train.threads)
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._resume()
        with _sigterm_as_interrupt():
            return self._loop(stop)

    def _loop(self, stop: int) -> TrainResult:
        self.model.train()
        result = TrainResult(step=self.step)
        start = time.perf_counter()
        tokens = 0  # tokens trained on in this session (for the speed display)
        show = self.train.progress and self.dist.is_main
        progress = _Progress(self.train, self.step) if show else None
        meter = self.meter
        try:
            while self.step < stop:
                step = self.step
                loss = self.train_step(step)
                self.step = step + 1
                tokens += self.last_tokens
                meter.add(self.last_tokens, self.last_seq_len)
                result.losses.append((self.step, loss))
                if self.step == 1 or self.step % self.train.log_every == 0:
                    self._report_graph_breaks()
                if self.step % self.train.log_every == 0 or self.step == self.train.steps:
                    lr = self.optimizer.param_groups[0]["lr"]
                    self._log({"step": self.step, "loss": loss, "lr": lr, **meter.report()})
                if progress is not None:
                    progress.update(self.step, loss, tokens)
                with meter.paused():
                    if self.step % self.train.eval_every == 0 or self.step == self.train.steps:
                        for split, metrics in self.evaluate().items():
                            self._log({"step": self.step, "split": split, **metrics})
                            result.final[split] = metrics
                    if self.step % self.train.checkpoint_every == 0 or self.step in (
                        stop,
                        self.train.steps,
                    ):
                        self._checkpoint()
        except KeyboardInterrupt:
            self._checkpoint()
            result.interrupted = True
        finally:
            if progress is not None:
                progress.close()
        result.interrupted = result.interrupted or self.step < self.train.steps
        if not result.final and not result.interrupted:
            for split, metrics in self.evaluate().items():
                result.final[split] = metrics
        result.step = self.step
        result.seconds = time.perf_counter() - start
        result.tokens_per_s = meter.mean_tokens_per_s
        return result
