"""Structured pruning of attention heads and FFN neurons, and unstructured magnitude
pruning for comparison (``anyformer prune RUN``).

**Structured** (``method="importance"``): heads and hidden units are ranked and the
lowest are *removed*, so the new model has smaller matrices and runs faster.

- Head importance is that of Michel, Levy and Neubig, "Are Sixteen Heads Really Better
  than One?" (NeurIPS 2019): a mask variable ``xi_h = 1`` multiplies each head's output
  (the input of the output projection, head by head), and ``I_h = sum_x |dL/dxi_h|``
  over training batches; the scores are normalised by their L2 norm within each layer
  (their Section 4.2) and ranked globally, keeping at least one head per layer.
- FFN neuron importance is the first-order Taylor criterion of Molchanov et al.,
  "Pruning Convolutional Neural Networks for Resource Efficient Inference" (ICLR 2017):
  ``I_j = sum |a_j * dL/da_j|`` over the tokens of the training batches, ``a_j`` being
  hidden unit ``j`` (the input of the FFN's ``down`` projection); each FFN loses the
  same fraction of its units.

The removed heads' rows of ``qkv`` and columns of ``out``, and the removed units' rows of
``up`` (``gate_up``: gate and value rows) and columns of ``down`` are cut out. The new
spec records each layer's heads (``layers.N.n_heads``) and FFN width (``layers.N.ffn``
with ``mult = units / d_model``). Before any recovery training the pruned model equals
the original with the same heads and units masked (:func:`masked`), to float rounding.

**Unstructured** (``method="magnitude"``, Han et al., "Learning both Weights and
Connections for Efficient Neural Networks", NeurIPS 2015): the smallest-magnitude
weights of every block's linear layers are set to zero, as many as the structured
plan would remove from that layer; the matrices keep their shape (no speed gain) and
the result is reported as sparsity. Recovery training keeps the zeros (their gradients
are masked).

Only mixers that can run with fewer heads are pruned by head (``softmax`` without
grouped keys; :data:`anyformer.spec.HEAD_SUBSET_MIXERS`); FFNs ``mlp`` and ``glu``. Others
are refused naming the layer and component.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from anyformer.errors import RunFolderError, SpecError
from anyformer.model.transformer import Transformer, build_model, mixer_name
from anyformer.spec import HEAD_SUBSET_MIXERS, ExperimentSpec, ModelSpec, write_text_atomic

Method = Literal["importance", "magnitude"]
#: FFNs whose hidden units can be removed
PRUNABLE_FFNS = ("mlp", "glu")


@dataclass
class Plan:
    """What survives: ``heads[i]`` the kept heads of block ``i``'s mixer, ``units[(i,
    name)]`` the kept hidden units of the FFN at ``name`` inside block ``i``."""

    heads: dict[int, list[int]] = field(default_factory=dict)
    units: dict[tuple[int, str], list[int]] = field(default_factory=dict)


# --------------------------------------------------------------------------- checks
def ffns_of(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, FFN)`` of every FFN module inside a block (``ffn``, ``ffn2``, ...)."""
    from anyformer.registry import entry_of

    found = []
    for name, module in block.named_modules():
        entry = entry_of(type(module))
        if entry is not None and entry.slot == "ffn":
            found.append((name, module))
    return found


def check_prunable(model: Transformer, heads: float, ffn: float) -> None:
    """Refuse, naming the component, a model whose heads or FFN units cannot be removed."""
    spec = model.spec
    if not 0 <= heads < 1 or not 0 <= ffn < 1:
        raise SpecError(f"--heads={heads} --ffn={ffn}: each is the fraction removed, in [0, 1)")
    if spec.kind == "encoder_decoder":
        raise SpecError("prune: model.kind=encoder_decoder is not supported (decoders, encoders)")
    if heads > 0:
        pos = spec.position.entry
        if pos.caps.position_mode == "bias":
            raise SpecError(
                f"--heads: position='{pos.name}' adds a score bias per head of the model's "
                f"n_heads, so heads cannot be removed; prune with --heads 0"
            )
        for i, block in enumerate(model.blocks):
            name = mixer_name(block.mixer)
            kv = getattr(block.mixer, "kv_heads", None)
            if name not in HEAD_SUBSET_MIXERS or kv != block.mixer.n_heads:
                why = "grouped key/value heads" if name in HEAD_SUBSET_MIXERS else "its heads"
                raise SpecError(
                    f"--heads: layer {i}'s attention='{name}' cannot lose heads ({why} "
                    f"cannot be removed); head pruning supports "
                    f"{', '.join(HEAD_SUBSET_MIXERS)} without kv_heads; use --heads 0"
                )
    if ffn > 0:
        for i, block in enumerate(model.blocks):
            found = ffns_of(block)
            names = {_entry_name(m) for _, m in found}
            bad = names - set(PRUNABLE_FFNS)
            if bad or not found:
                raise SpecError(
                    f"--ffn: layer {i}'s ffn='{', '.join(sorted(bad)) or 'none'}' has no "
                    f"hidden units that can be removed; FFN pruning supports "
                    f"{', '.join(PRUNABLE_FFNS)}; use --ffn 0"
                )


def _entry_name(module: nn.Module) -> str:
    from anyformer.registry import entry_of

    entry = entry_of(type(module))
    return entry.name if entry is not None else type(module).__name__


def _hidden(ffn: nn.Module) -> int:
    return ffn.down.in_features


# --------------------------------------------------------------------------- masks
def _head_hook(mask: torch.Tensor, d_head: int) -> Any:
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (args[0] * mask.repeat_interleave(d_head).to(args[0].dtype),)

    return hook


def _unit_hook(mask: torch.Tensor) -> Any:
    def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return (args[0] * mask.to(args[0].dtype),)

    return hook


@contextlib.contextmanager
def masked(
    model: Transformer,
    head_masks: dict[int, torch.Tensor],
    unit_masks: dict[tuple[int, str], torch.Tensor],
) -> Iterator[None]:
    """Run ``model`` with head ``h`` of block ``i`` multiplied by ``head_masks[i][h]``
    (at the input of the output projection) and hidden unit ``j`` of an FFN by
    ``unit_masks[(i, name)][j]`` (at the input of ``down``)."""
    handles = []
    try:
        for i, mask in head_masks.items():
            mixer = model.blocks[i].mixer
            handles.append(mixer.out.register_forward_pre_hook(_head_hook(mask, mixer.d_head)))
        for (i, name), mask in unit_masks.items():
            ffn = model.blocks[i].get_submodule(name)
            handles.append(ffn.down.register_forward_pre_hook(_unit_hook(mask)))
        yield
    finally:
        for h in handles:
            h.remove()


def plan_masks(
    model: Transformer, plan: Plan
) -> tuple[dict[int, torch.Tensor], dict[tuple[int, str], torch.Tensor]]:
    """0/1 masks of a plan: 1 at the kept heads and units."""
    heads = {}
    for i, kept in plan.heads.items():
        m = torch.zeros(model.blocks[i].mixer.n_heads)
        m[kept] = 1.0
        heads[i] = m
    units = {}
    for (i, name), kept in plan.units.items():
        m = torch.zeros(_hidden(model.blocks[i].get_submodule(name)))
        m[kept] = 1.0
        units[(i, name)] = m
    return heads, units


# --------------------------------------------------------------------------- importance
def batch_loss(model: nn.Module, objective: Any, batch: Any) -> torch.Tensor:
    """The objective's loss of ``model`` on one batch (the task's model inputs)."""
    from anyformer.tasks.packing import model_inputs

    return objective.loss(model(batch.inputs, **model_inputs(batch)), batch)


def importance(
    model: Transformer,
    task: Any,
    objective: Any,
    n_batches: int = 8,
    batch_size: int = 32,
) -> tuple[dict[int, torch.Tensor], dict[tuple[int, str], torch.Tensor]]:
    """Head importance (Michel et al. 2019: ``|dL/dxi_h|`` summed over ``n_batches``
    training batches, L2-normalised per layer) and FFN unit importance (Molchanov et al.
    2017: ``|a_j dL/da_j|`` summed over the same tokens) of every block."""
    device = next(model.parameters()).device
    was = model.training
    model.eval()
    xi = {
        i: torch.ones(b.mixer.n_heads, device=device, requires_grad=True)
        for i, b in enumerate(model.blocks)
        if hasattr(b.mixer, "out") and hasattr(b.mixer, "d_head")
    }
    head_scores = {i: torch.zeros_like(m) for i, m in xi.items()}
    unit_scores: dict[tuple[int, str], torch.Tensor] = {}
    seen: list[tuple[tuple[int, str], torch.Tensor]] = []

    def capture(key: tuple[int, str]) -> Any:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            seen.append((key, args[0]))

        return hook

    handles = [
        ffn.down.register_forward_pre_hook(capture((i, name)))
        for i, block in enumerate(model.blocks)
        for name, ffn in ffns_of(block)
        if hasattr(ffn, "down")
    ]
    try:
        with masked(model, xi, {}):
            for step in range(n_batches):
                seen.clear()
                batch = task.train_batch(step, batch_size).to(device)
                loss = batch_loss(model, objective, batch)
                wrt = [*xi.values(), *(a for _, a in seen)]
                grads = torch.autograd.grad(loss, wrt, allow_unused=True)
                for i, g in zip(xi, grads):
                    if g is not None:
                        head_scores[i] += g.abs()
                for (key, a), g in zip(seen, grads[len(xi) :]):
                    score = (a * g).abs().flatten(0, -2).sum(0) if g is not None else 0
                    unit_scores[key] = unit_scores.get(key, 0) + score
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    for i, s in head_scores.items():
        norm = s.norm()
        head_scores[i] = s / norm if norm > 0 else s
    return head_scores, {k: torch.as_tensor(v).detach().cpu() for k, v in unit_scores.items()}


def structured_plan(
    model: Transformer,
    heads: float,
    ffn: float,
    head_scores: dict[int, torch.Tensor],
    unit_scores: dict[tuple[int, str], torch.Tensor],
) -> Plan:
    """Keep all but the ``round(heads * total)`` least important heads (ranked over all
    layers, at least one kept per layer) and, in every FFN, all but its ``round(ffn *
    hidden)`` least important units (at least one kept)."""
    plan = Plan()
    if heads > 0:
        ranked = sorted(
            ((float(s), i, h) for i, scores in head_scores.items() for h, s in enumerate(scores)),
        )
        left = {i: len(s) for i, s in head_scores.items()}
        drop: set[tuple[int, int]] = set()
        n_drop = round(heads * sum(left.values()))
        for _, i, h in ranked:
            if len(drop) >= n_drop:
                break
            if left[i] > 1:
                drop.add((i, h))
                left[i] -= 1
        for i, scores in head_scores.items():
            plan.heads[i] = [h for h in range(len(scores)) if (i, h) not in drop]
    if ffn > 0:
        for key, scores in unit_scores.items():
            n = len(scores)
            keep = max(1, n - round(ffn * n))
            plan.units[key] = sorted(torch.argsort(scores, descending=True)[:keep].tolist())
    return plan


# --------------------------------------------------------------------------- removal
def pruned_spec(model: Transformer, plan: Plan) -> ModelSpec:
    """The model spec with each pruned layer's ``n_heads`` and FFN width."""
    spec = model.spec
    data = spec.model_dump(mode="json")
    layers: dict[int, Any] = {int(k): dict(v) for k, v in data.get("layers", {}).items()}
    for i, kept in plan.heads.items():
        if len(kept) < spec.layer_heads(i):
            layers.setdefault(i, {})["n_heads"] = len(kept)
    widths: dict[int, set[int]] = {}
    for (i, _), kept in plan.units.items():
        widths.setdefault(i, set()).add(len(kept))
    for i, sizes in widths.items():
        if len(sizes) != 1:
            raise SpecError(f"layer {i}: its FFNs would keep different widths {sorted(sizes)}")
        units = sizes.pop()
        ref = spec.layer(i).ffn
        layers.setdefault(i, {})["ffn"] = {
            "name": ref.name,
            **ref.config.model_dump(mode="json"),
            "mult": units / spec.d_model,
        }
    data["layers"] = layers
    return ModelSpec.model_validate(data)


def _head_rows(kept: list[int], n_heads: int, d_head: int, parts: int) -> torch.Tensor:
    rows = [
        part * n_heads * d_head + h * d_head + j
        for part in range(parts)
        for h in kept
        for j in range(d_head)
    ]
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def remove(model: Transformer, plan: Plan) -> tuple[Transformer, ModelSpec]:
    """The smaller model without the heads and units ``plan`` drops; its outputs equal
    ``model``'s under :func:`plan_masks`. Returns it (in ``model``'s mode) and its spec."""
    spec = pruned_spec(model, plan)
    small = build_model(spec)
    target, source = small.state_dict(), model.state_dict()
    for name, value in target.items():
        if source[name].shape == value.shape:
            value.copy_(source[name])
    for i, kept in plan.heads.items():
        big, new = model.blocks[i].mixer, small.blocks[i].mixer
        idx = _head_rows(kept, big.n_heads, big.d_head, 3)
        new.qkv.weight.copy_(big.qkv.weight[idx])
        if big.qkv.bias is not None:
            new.qkv.bias.copy_(big.qkv.bias[idx])
        new.out.weight.copy_(big.out.weight[:, _head_rows(kept, big.n_heads, big.d_head, 1)])
        if big.out.bias is not None:
            new.out.bias.copy_(big.out.bias)
    for (i, name), kept in plan.units.items():
        big, new = model.blocks[i].get_submodule(name), small.blocks[i].get_submodule(name)
        idx = torch.tensor(kept, dtype=torch.long)
        up = "gate_up" if hasattr(big, "gate_up") else "up"
        rows = torch.cat([idx, idx + big.hidden]) if up == "gate_up" else idx
        getattr(new, up).weight.copy_(getattr(big, up).weight[rows])
        if getattr(big, up).bias is not None:
            getattr(new, up).bias.copy_(getattr(big, up).bias[rows])
        new.down.weight.copy_(big.down.weight[:, idx])
        if big.down.bias is not None:
            new.down.bias.copy_(big.down.bias)
    small.train(model.training)
    return small, spec


# --------------------------------------------------------------------------- magnitude
def removed_fraction(model: Transformer, plan: Plan) -> dict[str, float]:
    """Per linear weight of the blocks (by parameter name), the fraction of its entries
    the structured ``plan`` removes."""
    out: dict[str, float] = {}
    for i, kept in plan.heads.items():
        frac = 1 - len(kept) / model.blocks[i].mixer.n_heads
        for part in ("qkv", "out"):
            out[f"blocks.{i}.mixer.{part}.weight"] = frac
    for (i, name), kept in plan.units.items():
        ffn = model.blocks[i].get_submodule(name)
        frac = 1 - len(kept) / _hidden(ffn)
        for part in ("gate_up", "up", "down"):
            if hasattr(ffn, part):
                out[f"blocks.{i}.{name}.{part}.weight"] = frac
    return out


@torch.no_grad()
def magnitude_prune(model: nn.Module, fractions: dict[str, float]) -> dict[str, torch.Tensor]:
    """Zero the ``fractions[name]`` smallest-magnitude entries of each named weight, in
    place (Han et al. 2015); returns the 0/1 masks of the kept entries."""
    params = dict(model.named_parameters())
    masks = {}
    for name, frac in fractions.items():
        w = params[name]
        k = round(frac * w.numel())
        mask = torch.ones_like(w, dtype=torch.bool)
        if k > 0:
            drop = torch.argsort(w.detach().abs().flatten())[:k]
            mask.view(-1)[drop] = False
        w.mul_(mask)
        masks[name] = mask
    return masks


def keep_masked(model: nn.Module, masks: dict[str, torch.Tensor]) -> list[Any]:
    """Gradient hooks that zero the gradients of pruned entries (they stay 0 under AdamW)."""
    params = dict(model.named_parameters())
    return [params[n].register_hook(lambda g, m=m: g * m) for n, m in masks.items()]


def sparsity(model: nn.Module) -> float:
    """The fraction of exact zeros among the weights of the blocks' linear layers."""
    total = zeros = 0
    for name, p in model.named_parameters():
        if name.startswith("blocks.") and p.dim() == 2:
            total += p.numel()
            zeros += int((p == 0).sum())
    return zeros / max(total, 1)


# --------------------------------------------------------------------------- run folders
def prune_run(
    run_dir: Path | str,
    heads: float = 0.25,
    ffn: float = 0.5,
    method: Method = "importance",
    recover_steps: int = 0,
    out: Path | str | None = None,
    n_batches: int = 8,
) -> tuple[Path, dict[str, Any]]:
    """Prune a trained run into a new run folder (``<out>/<name>-pruned-...-<hash>``).

    The folder holds the pruned spec, a checkpoint, the usual ``report.md`` (after
    ``recover_steps`` of recovery training, or at the parent's step without) and
    ``prune.json``/``prune.md``: parameters, sparsity, and the task's metrics per split of
    the parent and of the pruned model on the parent's evaluation sets. Returns the folder
    and that comparison."""
    from anyformer.lab.elastic import Variant, evaluate_variants, load_trained
    from anyformer.lab.report import write_report
    from anyformer.lab.run import Run, build_objective, build_task
    from anyformer.training.checkpoint import latest_checkpoint, save_checkpoint
    from anyformer.training.trainer import Trainer, make_optimizer

    if method not in ("importance", "magnitude"):
        raise SpecError(f"--method={method!r}: valid methods are importance, magnitude")
    if recover_steps < 0:
        raise SpecError(f"--recover-steps={recover_steps}: give 0 or more steps")
    folder = Path(run_dir)
    spec, model = load_trained(folder)
    check_prunable(model, heads, ffn)
    task = build_task(spec)
    objective = build_objective(spec, task)
    eval_size = spec.train.eval_size
    as_trained = [Variant("as trained")]
    parent_rows = evaluate_variants(model, task, objective, eval_size, chosen=as_trained)
    head_scores, unit_scores = importance(model, task, objective, n_batches, spec.train.batch_size)
    plan = structured_plan(model, heads, ffn, head_scores, unit_scores)
    masks: dict[str, torch.Tensor] = {}
    if method == "importance":
        small, small_model_spec = remove(model, plan)
    else:
        small, small_model_spec = model, model.spec
        masks = magnitude_prune(small, removed_fraction(model, plan))
    step = int(
        json.loads((latest_checkpoint(folder / "checkpoint") / "state.json").read_text())["step"]
    )
    train = spec.train.model_dump(mode="json")
    if recover_steps:
        n = recover_steps
        train |= {
            "steps": n,
            "warmup_steps": min(spec.train.warmup_steps, n // 10),
            "eval_every": min(spec.train.eval_every, n),
            "checkpoint_every": min(spec.train.checkpoint_every, n),
            "log_every": min(spec.train.log_every, n),
        }
    label = f"h{heads:g}-f{ffn:g}-{method}" + (f"-r{recover_steps}" if recover_steps else "")
    new = ExperimentSpec.from_dict(
        {
            **spec.to_dict(),
            "name": f"{spec.name}-pruned"[:100],
            "description": (
                f"{spec.name} pruned ({label}) from the run {folder}: "
                + (
                    "heads and FFN units removed"
                    if method == "importance"
                    else "unstructured magnitude pruning (masked)"
                )
            ),
            "model": small_model_spec.model_dump(mode="json"),
            "train": train,
        }
    )
    target = Path(out) if out is not None else folder.parent
    dest = target / f"{new.name}-{label}-{new.hash}"
    if dest.exists():
        raise RunFolderError(f"'{dest}' already exists; remove it or choose another --out")
    new.save(dest / "spec.yaml")
    info = {"spec_hash": new.hash, "spec": new.to_dict(), "pruned_from": str(folder)}
    start = 0 if recover_steps else step
    save_checkpoint(dest / "checkpoint", start, small, make_optimizer(small, new.train), info)
    hooks = keep_masked(small, masks)
    trainer = Trainer(small, task, objective, new.train, dest, info=info)
    try:
        result = trainer.fit()
    finally:
        trainer.close()
        for h in hooks:
            h.remove()
    run = Run(dest, new, result, task)
    write_report(run, small, objective)
    rows = evaluate_variants(small, task, objective, eval_size, chosen=as_trained)
    comparison = {
        "parent": str(folder),
        "method": method,
        "heads": heads,
        "ffn": ffn,
        "recover_steps": recover_steps,
        "headline": task.headline,
        "params": {"parent": model_params(model), "pruned": model_params(small)},
        "sparsity": sparsity(small),
        "kept_heads": {str(i): k for i, k in plan.heads.items()},
        "ffn_units": {f"{i}.{n}": len(k) for (i, n), k in plan.units.items()},
        "metrics": {
            r["split"]: {"parent": _scalars(p), "pruned": _scalars(r)}
            for p, r in zip(parent_rows, rows)
        },
    }
    write_text_atomic(dest / "prune.json", json.dumps(comparison, indent=1) + "\n")
    write_text_atomic(dest / "prune.md", comparison_markdown(comparison))
    return dest, comparison


def model_params(model: nn.Module) -> int:
    """Distinct parameters (shared tensors counted once)."""
    from anyformer.model.flops import count_params

    return count_params(model)


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and math.isfinite(float(v))}  # fmt: skip


def comparison_markdown(c: dict[str, Any]) -> str:
    """``prune.md``: the pruned model against its parent on the parent's evaluation."""
    h = c["headline"]
    lines = [
        f"# Pruned ({c['method']}: heads {c['heads']:g}, ffn {c['ffn']:g}, "
        f"recovery {c['recover_steps']} steps) from {c['parent']}\n",
        f"parameters: {c['params']['parent']:,} -> {c['params']['pruned']:,} "
        f"({c['params']['pruned'] / c['params']['parent']:.1%}); sparsity of the blocks' "
        f"weights: {c['sparsity']:.1%}\n",
        f"| split | {h} parent | {h} pruned | loss parent | loss pruned |",
        "|---|---|---|---|---|",
    ]
    for split, m in c["metrics"].items():
        p, q = m["parent"], m["pruned"]
        lines.append(
            f"| {split} | {p.get(h, float('nan')):.4g} | {q.get(h, float('nan')):.4g} | "
            f"{p.get('loss', float('nan')):.4g} | {q.get('loss', float('nan')):.4g} |"
        )
    return "\n".join(lines) + "\n"
