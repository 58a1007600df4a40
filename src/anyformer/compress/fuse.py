"""Layer removal with learnable fusion (FuseGPT, Pei et al. 2024): a shallower model.

FuseGPT ("FuseGPT: Learnable Layers Fusion of Generative Pre-trained Transformers")
ranks the blocks of a trained model by how much information is lost when each is
removed, drops the least important ones and, instead of throwing their weights away,
injects them into the corresponding layers of the neighbouring blocks, each injected
weight scaled entry-wise by a learnable low-rank matrix and tuned by a short fine-tune.

Here:

- :func:`block_importance` is the increase of the training loss (on training batches)
  when a block is skipped, each block alone (FuseGPT's Macro Influence measures the
  lost information after removal; the loss increase is the same idea read on the
  objective);
- :func:`drop_blocks` builds the model with ``n_layers - K`` blocks that holds the kept
  blocks' weights (exactly the parent with those blocks skipped);
- :func:`attach_fusion` wraps every linear layer of the kept block nearest to each
  dropped block (the following one on a tie) as ``W' = W + (a b^T) ⊙ W_d`` and
  ``bias' = bias + a ⊙ bias_d``, ``W_d`` the dropped block's weight for the same layer,
  frozen, with ``a`` initialised at 0 and ``b`` at 1 (so the fused model starts as the
  plain removal); :func:`recover` trains ``a`` and ``b`` (everything else frozen) on the
  objective, and :func:`fold` writes ``W'`` back as plain weights.

Norms of dropped blocks are not fused (only their linear layers). Supported: the
``stack`` depth schedule and objectives that score one forward pass of the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anyformer.errors import RunFolderError, SpecError
from anyformer.model.transformer import Transformer, build_model
from anyformer.spec import ExperimentSpec
from anyformer.tasks.base import Batch
from anyformer.tasks.packing import model_inputs


def check_droppable(spec: ExperimentSpec, objective: Any, drop: int) -> None:
    """Refuse what layer removal cannot handle, naming the field."""
    depth = spec.model.depth.name
    if depth != "stack":
        raise SpecError(
            f"model.depth='{depth}': removing blocks is supported for the 'stack' schedule only"
        )
    if not 1 <= drop < spec.model.n_layers:
        raise SpecError(
            f"--drop {drop}: must be between 1 and model.n_layers - 1 = {spec.model.n_layers - 1}"
        )
    from anyformer.objectives.losses import Objective

    if getattr(objective, "corrupts", False) or (
        isinstance(objective, Objective)
        and type(objective).training_loss is not Objective.training_loss
    ):
        raise SpecError(
            f"objective '{spec.objective.name if spec.objective else objective}' drives the "
            "model itself; layer fusion supports objectives scoring one forward pass"
        )


def batch_loss(model: nn.Module, objective: Any, batch: Batch) -> torch.Tensor:
    """The objective's loss of ``model`` on ``batch`` (one forward pass)."""
    return objective.loss(model(batch.inputs, **model_inputs(batch)), batch)


def drop_blocks(
    model: Transformer, spec: ExperimentSpec, drop: list[int]
) -> tuple[Transformer, ExperimentSpec]:
    """The model without blocks ``drop`` (their indices), as a model with fewer
    ``n_layers`` holding the other weights, and its spec."""
    keep = [i for i in range(len(model.blocks)) if i not in set(drop)]
    model_dict = spec.model.model_dump(mode="json") | {"n_layers": len(keep)}
    # per-layer overrides follow their blocks to the new indices
    model_dict["layers"] = {str(keep.index(int(i))): v
                            for i, v in (model_dict.get("layers") or {}).items()
                            if int(i) in keep}  # fmt: skip
    new = ExperimentSpec.from_dict({**spec.to_dict(), "model": model_dict})
    small = build_model(new.model)
    state = {}
    for name, tensor in model.state_dict().items():
        if name.startswith("blocks."):
            _, index, rest = name.split(".", 2)
            if int(index) not in keep:
                continue
            name = f"blocks.{keep.index(int(index))}.{rest}"
        state[name] = tensor
    small.load_state_dict(state)
    return small.to(next(model.parameters()).device).eval(), new


@torch.no_grad()
def block_importance(
    model: Transformer, spec: ExperimentSpec, objective: Any, batches: list[Batch]
) -> list[float]:
    """Per block: mean loss on ``batches`` with the block skipped minus the full model's."""
    model.eval()
    base = sum(float(batch_loss(model, objective, b)) for b in batches) / len(batches)
    scores = []
    for i in range(len(model.blocks)):
        small, _ = drop_blocks(model, spec, [i])
        loss = sum(float(batch_loss(small, objective, b)) for b in batches) / len(batches)
        scores.append(loss - base)
    return scores


class FusedLinear(nn.Module):
    """``x -> x (W + (a b^T) ⊙ W_d)^T + bias + a ⊙ bias_d``: a kept linear layer with a
    dropped block's weights injected through a learnable rank-one coefficient matrix
    (``a`` at 0 and ``b`` at 1 to start: the layer is ``W`` exactly). ``W_d`` may stack
    several dropped blocks' weights (one ``a``, ``b`` pair each)."""

    def __init__(self, base: nn.Linear, injected: list[nn.Linear]) -> None:
        super().__init__()
        self.base = base
        out, inp = base.weight.shape
        self.register_buffer("w_d", torch.stack([m.weight.detach().clone() for m in injected]))
        biases = [m.bias.detach().clone() if m.bias is not None else torch.zeros(out)
                  for m in injected]  # fmt: skip
        self.register_buffer("b_d", torch.stack(biases))
        self.a = nn.Parameter(torch.zeros(len(injected), out, device=base.weight.device))
        self.b = nn.Parameter(torch.ones(len(injected), inp, device=base.weight.device))

    def fused(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        coef = self.a[:, :, None] * self.b[:, None, :]
        weight = self.base.weight + (coef * self.w_d).sum(0)
        bias = self.base.bias
        if bias is not None:
            bias = bias + (self.a * self.b_d).sum(0)
        return weight, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.fused()
        return F.linear(x, weight, bias)


def neighbours(n_layers: int, drop: list[int]) -> dict[int, list[int]]:
    """``{kept block index in the small model: [dropped parent indices]}``: each dropped
    block goes to the nearest kept block (the following one on a tie)."""
    keep = [i for i in range(n_layers) if i not in set(drop)]
    out: dict[int, list[int]] = {}
    for d in drop:
        nearest = min(keep, key=lambda k: (abs(k - d), k < d))
        out.setdefault(keep.index(nearest), []).append(d)
    return out


def attach_fusion(small: Transformer, parent: Transformer, drop: list[int]) -> list[FusedLinear]:
    """Wrap the linear layers of each receiving block of ``small`` as :class:`FusedLinear`
    over the same layers of its dropped neighbours in ``parent``; returns the wrappers."""
    wrappers = []
    for kept, dropped in neighbours(len(parent.blocks), drop).items():
        block = small.blocks[kept]
        for name, module in list(block.named_modules()):
            if not isinstance(module, nn.Linear):
                continue
            donors = [parent.blocks[d].get_submodule(name) for d in dropped]
            if any(not isinstance(m, nn.Linear) or m.weight.shape != module.weight.shape
                   for m in donors):  # fmt: skip
                continue
            owner_name, _, attr = name.rpartition(".")
            owner = block.get_submodule(owner_name) if owner_name else block
            wrapper = FusedLinear(module, donors)
            for key, value in vars(module).items():  # flags such as head_groups travel
                if not key.startswith("_") and key != "training":
                    setattr(wrapper, key, value)
            setattr(owner, attr, wrapper)
            wrappers.append(wrapper)
    return wrappers


def fold(small: Transformer) -> Transformer:
    """Replace every :class:`FusedLinear` of ``small`` by its plain fused ``nn.Linear``."""
    for block in small.blocks:
        for name, module in list(block.named_modules()):
            if isinstance(module, FusedLinear):
                weight, bias = module.fused()
                with torch.no_grad():
                    module.base.weight.copy_(weight)
                    if bias is not None:
                        module.base.bias.copy_(bias)
                owner_name, _, attr = name.rpartition(".")
                owner = block.get_submodule(owner_name) if owner_name else block
                setattr(owner, attr, module.base)
    return small


def recover(
    small: Transformer,
    wrappers: list[FusedLinear],
    objective: Any,
    batches: list[Batch],
    lr: float,
) -> list[float]:
    """Train the fusion coefficients (only) one step per batch with Adam; the losses."""
    params = [p for w in wrappers for p in (w.a, w.b)]
    frozen = [p for p in small.parameters() if all(p is not q for q in params)]
    saved = [p.requires_grad for p in frozen]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.Adam(params, lr=lr)
    small.train()
    losses = []
    try:
        for batch in batches:
            loss = batch_loss(small, objective, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
    finally:
        for p, flag in zip(frozen, saved):
            p.requires_grad_(flag)
        small.eval()
    return losses


def fuse_layers(
    model: Transformer,
    spec: ExperimentSpec,
    objective: Any,
    batches: list[Batch],
    drop: int,
    recover_batches: list[Batch] | None = None,
    lr: float = 1e-2,
) -> tuple[Transformer, ExperimentSpec, dict[str, Any]]:
    """Drop the ``drop`` least important blocks of ``model`` and fuse them into their
    neighbours, with a recovery fine-tune of the coefficients on ``recover_batches``."""
    check_droppable(spec, objective, drop)
    scores = block_importance(model, spec, objective, batches)
    dropped = sorted(sorted(range(len(scores)), key=lambda i: scores[i])[:drop])
    small, new = drop_blocks(model, spec, dropped)
    wrappers = attach_fusion(small, model, dropped)
    losses = recover(small, wrappers, objective, recover_batches, lr) if recover_batches else []
    fold(small)
    info = {"importance": scores, "dropped": dropped, "recovery_losses": losses,
            "receivers": {str(k): v for k, v in neighbours(len(scores), dropped).items()}}  # fmt: skip
    return small.eval(), new, info


def fuse_layers_run(
    run_dir: Path | str,
    drop: int,
    recover_steps: int = 0,
    lr: float | None = None,
    importance_batches: int = 4,
    out: Path | str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """``anyformer fuse-layers``: write the fused shallower model of a run as a new run
    folder (``spec.yaml`` with ``n_layers - drop``, ``checkpoint/``, ``fusion.json``,
    ``report.md`` comparing it with the parent and with plain removal)."""
    from anyformer.compress.merge_models import _headline_rows
    from anyformer.lab.loaded import load_run
    from anyformer.lab.run import build_objective
    from anyformer.training.checkpoint import latest_checkpoint, save_checkpoint
    from anyformer.training.trainer import make_optimizer

    run = load_run(run_dir)
    spec, task = run.spec, run.task
    objective = build_objective(spec, task)
    check_droppable(spec, objective, drop)
    if recover_steps < 0:
        raise SpecError(f"--recover-steps {recover_steps} must be >= 0")
    bs = spec.train.batch_size
    # batches past the run's own training steps, so the recovery data is fresh
    first = spec.train.steps
    batches = [task.train_batch(first + i, bs) for i in range(importance_batches)]
    recovery = [task.train_batch(first + importance_batches + i, bs) for i in range(recover_steps)]
    device = next(run.model.parameters()).device
    batches = [b.to(device) for b in batches]
    recovery = [b.to(device) for b in recovery]
    small, new, info = fuse_layers(run.model, spec, objective, batches, drop, recovery,
                                   lr if lr is not None else spec.train.lr)  # fmt: skip
    removed, _ = drop_blocks(run.model, spec, info["dropped"])
    dest = (
        Path(out) if out is not None else run.dir.parent
    ) / f"{spec.name}-fused{drop}-{new.hash}"
    if dest.exists():
        raise RunFolderError(f"'{dest}' already exists; remove it or choose another --out")
    results = {
        f"parent ({spec.model.n_layers} blocks)": _headline_rows(run.model, spec, task),
        f"removed ({new.model.n_layers} blocks)": _headline_rows(removed, new, task),
        f"fused + {recover_steps} recovery steps": _headline_rows(small, new, task),
    }
    state = json.loads((latest_checkpoint(run.dir / "checkpoint") / "state.json").read_text())
    new.save(dest / "spec.yaml")
    extra = {"spec_hash": new.hash, "fused_from": str(run.dir), "dropped": info["dropped"]}
    save_checkpoint(dest / "checkpoint", int(state["step"]), small,
                    make_optimizer(small, new.train), extra)  # fmt: skip
    record = {"parent": str(run.dir), "drop": drop, "recover_steps": recover_steps, **info,
              "params": {"parent": run.model.num_params(), "fused": small.num_params()},
              "results": results}  # fmt: skip
    (dest / "fusion.json").write_text(json.dumps(record, indent=1) + "\n")
    (dest / "report.md").write_text(_report(spec, task.headline, record))
    return dest, record


def _report(spec: ExperimentSpec, headline: str, record: dict[str, Any]) -> str:
    imp = ", ".join(f"{i}: {s:+.4f}" for i, s in enumerate(record["importance"]))
    lines = [
        f"# {spec.name}: layer fusion (FuseGPT), {record['drop']} block(s) dropped\n",
        f"Parent: `{record['parent']}`. Loss increase when each block is skipped: {imp}. "
        f"Dropped {record['dropped']}, fused into (new index: parent blocks) "
        f"{record['receivers']}. Parameters {record['params']['parent']:,} → "
        f"{record['params']['fused']:,}.\n",
        f"| model | split | {headline} | loss |",
        "|---|---|---|---|",
    ]
    for who, rows in record["results"].items():
        for split, r in rows.items():
            lines.append(f"| {who} | {split} | {r.get(headline, float('nan')):.4g} | "
                         f"{r.get('loss', float('nan')):.4g} |")  # fmt: skip
    return "\n".join(lines) + "\n"


__all__ = ["FusedLinear", "attach_fusion", "block_importance", "drop_blocks", "fold",
           "fuse_layers", "fuse_layers_run", "recover"]  # fmt: skip
