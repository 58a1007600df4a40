"""Model fusion of two trained runs: optimal-transport neuron alignment, then averaging.

Two Transformers trained from different seeds compute similar functions with their hidden
units in different orders, so averaging their weights entry by entry mixes unrelated
units. Singh & Jaggi ("Model Fusion via Optimal Transport", 2020) first align the units
of one model to those of the other by optimal transport, permute it accordingly, and
only then average; Imfeld et al. ("Transformer Fusion with Optimal Transport", 2024)
extend this to Transformers, treating attention heads as units.

Here, per block, model B's FFN hidden neurons and its attention heads are matched to
A's by optimal transport between uniform distributions over the units with the squared
Euclidean distance of their weights as the cost (each FFN neuron: its input row, input
bias and output column; each head: its query, key and value rows and biases and its
output columns). With equal numbers of units and uniform marginals the optimal plan is a
permutation (Birkhoff), found exactly by the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``). B is permuted, which leaves its function
unchanged, and the two are averaged with weight ``alpha`` on B. Optionally (given a
batch of inputs) B's residual stream is aligned first, as Imfeld et al. do: one
permutation of the ``d_model`` channels, shared by the embedder, positions, norms, every
block's input and output projections and the head, chosen by optimal transport with
minus the correlation of the two models' residual activations on the batch as the cost;
otherwise the residual stream is averaged as it is.
``method="average"`` is naive averaging without alignment, the baseline.

Supported: mixers whose only parameters are the fused ``qkv`` (as many key/value heads
as query heads) and ``out`` projections with no per-head position bias, and the ``mlp``
and ``glu`` FFNs; anything else is refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyformer.errors import RunFolderError, SpecError
from anyformer.model.transformer import Transformer
from anyformer.registry import capabilities
from anyformer.spec import ExperimentSpec

METHODS = ("ot", "average")


def _names(module: nn.Module) -> set[str]:
    return {n for n, _ in module.named_parameters()}


def check_same_shape(spec_a: ExperimentSpec, spec_b: ExperimentSpec) -> None:
    """Refuse two runs whose models differ in any field (naming the fields and values)."""
    a, b = spec_a.model.model_dump(mode="json"), spec_b.model.model_dump(mode="json")
    differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    if differ:
        shown = "; ".join(f"model.{k}: {a.get(k)!r} vs {b.get(k)!r}" for k in differ)
        raise SpecError(f"the two runs must share a model spec to be fused; they differ in {shown}")


def check_fusable(model: Transformer, spec: ExperimentSpec) -> None:
    """Refuse a model whose mixers or FFNs have no unit alignment here (named)."""
    mode = getattr(capabilities(model.position), "position_mode", None)
    if mode == "bias":
        raise SpecError(
            f"model.position='{spec.model.position.name}' adds a per-head score bias, so heads "
            "cannot be permuted; fusion supports embed and rotary positions"
        )
    for i, block in enumerate(model.blocks):
        mixer, ffn = getattr(block, "mixer", None), getattr(block, "ffn", None)
        ffn_name = spec.model.layer(i).ffn.name
        if mixer is None or _names(mixer) - {"qkv.weight", "qkv.bias", "out.weight", "out.bias"}:
            raise SpecError(
                f"model.attention='{spec.model.attention.name}' (block {i}) has parameters "
                "besides the fused qkv and out projections; fusion supports softmax-style mixers"
            )
        groups = getattr(mixer.qkv, "head_groups", None)
        if groups is None or len(set(groups)) != 1 or len(groups) != 3:
            raise SpecError(
                f"model.attention='{spec.model.attention.name}' (block {i}) has grouped "
                f"key/value heads {groups}; fusion needs as many key/value heads as query heads"
            )
        if ffn is None or ffn_name not in ("mlp", "glu"):
            raise SpecError(
                f"model.ffn='{ffn_name}' (block {i}) is not mlp or glu; fusion "
                "aligns the hidden neurons of those only"
            )


def assignment(cost: torch.Tensor) -> torch.Tensor:
    """The permutation ``p`` minimising ``sum_i cost[i, p[i]]`` (the exact optimal
    transport plan between uniform marginals of equal size)."""
    from scipy.optimize import linear_sum_assignment

    rows, cols = linear_sum_assignment(cost.detach().double().cpu().numpy())
    perm = torch.empty(len(rows), dtype=torch.long)
    perm[torch.as_tensor(rows)] = torch.as_tensor(cols)
    return perm


def _bias(layer: nn.Linear, n: int) -> torch.Tensor:
    return layer.bias.detach() if layer.bias is not None else torch.zeros(n)


def ffn_units(ffn: nn.Module) -> tuple[torch.Tensor, list[tuple[nn.Linear, int, int]]]:
    """One feature row per hidden neuron, and ``(linear, dim, repeat)`` for each tensor
    whose hidden axis a permutation must reorder (``repeat``: gate and up halves)."""
    down: nn.Linear = ffn.down
    if hasattr(ffn, "gate_up"):
        h, lin = down.in_features, ffn.gate_up
        w, b = lin.weight.detach(), _bias(lin, 2 * h)
        feats = [w[:h], w[h:], b[:h, None], b[h:, None], down.weight.detach().T]
        return torch.cat(feats, 1), [(lin, 0, 2), (down, 1, 1)]
    up = ffn.up
    feats = [up.weight.detach(), _bias(up, up.out_features)[:, None], down.weight.detach().T]
    return torch.cat(feats, 1), [(up, 0, 1), (down, 1, 1)]


def head_units(mixer: nn.Module) -> torch.Tensor:
    """One feature row per attention head: its q, k, v rows (and biases), out columns."""
    h, dh = mixer.qkv.head_groups[0], mixer.qkv.out_features // (3 * mixer.qkv.head_groups[0])
    w = mixer.qkv.weight.detach().view(3, h, dh, -1)
    b = _bias(mixer.qkv, 3 * h * dh).view(3, h, dh, 1)
    qkv = torch.cat([w, b], -1).permute(1, 0, 2, 3).reshape(h, -1)
    out = mixer.out.weight.detach().T.reshape(h, -1)  # [h, dh * D]
    return torch.cat([qkv, out], 1)


def _permute_linear(layer: nn.Linear, perm: torch.Tensor, dim: int, repeat: int = 1) -> None:
    """Reorder ``layer``'s hidden axis ``dim`` by ``perm`` (blocks of ``repeat`` halves)."""
    n = perm.numel()
    index = torch.cat([perm + r * n for r in range(repeat)])
    with torch.no_grad():
        layer.weight.copy_(layer.weight.index_select(dim, index))
        if layer.bias is not None and dim == 0:
            layer.bias.copy_(layer.bias[index])


def permute_heads(mixer: nn.Module, perm: torch.Tensor) -> None:
    """Reorder a mixer's heads: head ``i`` becomes the old head ``perm[i]``."""
    h = perm.numel()
    dh = mixer.qkv.out_features // (3 * h)
    inner = (perm[:, None] * dh + torch.arange(dh)).reshape(-1)
    rows = torch.cat([inner + part * h * dh for part in range(3)])
    with torch.no_grad():
        mixer.qkv.weight.copy_(mixer.qkv.weight[rows])
        if mixer.qkv.bias is not None:
            mixer.qkv.bias.copy_(mixer.qkv.bias[rows])
        mixer.out.weight.copy_(mixer.out.weight[:, inner])


def align(model_a: Transformer, model_b: Transformer) -> dict[str, Any]:
    """Permute ``model_b`` in place so its heads and FFN neurons match ``model_a``'s
    (optimal transport on weights, per block). Returns the permutations and the mean
    squared unit distance before and after."""
    info: dict[str, Any] = {"blocks": []}
    for block_a, block_b in zip(model_a.blocks, model_b.blocks, strict=True):
        row: dict[str, Any] = {}
        fa, _ = ffn_units(block_a.ffn)
        fb, targets = ffn_units(block_b.ffn)
        cost = torch.cdist(fa.double(), fb.double()) ** 2
        perm = assignment(cost)
        row["ffn_cost_before"] = float(cost.diagonal().mean())
        row["ffn_cost_after"] = float(cost[torch.arange(len(perm)), perm].mean())
        for layer, dim, repeat in targets:
            _permute_linear(layer, perm, dim, repeat)
        ha, hb = head_units(block_a.mixer), head_units(block_b.mixer)
        cost = torch.cdist(ha.double(), hb.double()) ** 2
        hperm = assignment(cost)
        row["head_cost_before"] = float(cost.diagonal().mean())
        row["head_cost_after"] = float(cost[torch.arange(len(hperm)), hperm].mean())
        permute_heads(block_b.mixer, hperm)
        row["head_perm"] = hperm.tolist()
        info["blocks"].append(row)
    return info


#: hidden (non-residual) axes of the block parameters whose size may equal d_model
HIDDEN_AXES = {"mixer.qkv.weight": 0, "mixer.qkv.bias": 0, "mixer.out.weight": 1,
               "ffn.up.weight": 0, "ffn.up.bias": 0, "ffn.gate_up.weight": 0,
               "ffn.gate_up.bias": 0, "ffn.down.weight": 1}  # fmt: skip


def permute_residual(
    model: Transformer, perm: torch.Tensor, check: torch.Tensor | None = None
) -> None:
    """Reorder the residual-stream channels of ``model`` in place: channel ``i`` becomes
    the old channel ``perm[i]``, along every axis of size ``d_model`` of every parameter
    except the hidden axes of the q/k/v, output and FFN projections. With ``check``
    (inputs), the outputs must be unchanged; otherwise the model is restored and refused
    (an embedder or head with another axis of size ``d_model``)."""
    d = perm.numel()
    state = model.state_dict()
    before = {k: v.clone() for k, v in state.items()}
    if check is not None:
        with torch.no_grad():
            ref = model(check)
    new = {}
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            new[name] = tensor
            continue
        hidden = next((ax for key, ax in HIDDEN_AXES.items() if name.endswith(key)), None)
        for axis, size in enumerate(tensor.shape):
            if size == d and axis != hidden:
                tensor = tensor.index_select(axis, perm.to(tensor.device))
        new[name] = tensor
    model.load_state_dict(new)
    if check is not None:
        with torch.no_grad():
            out = model(check)
        if not torch.allclose(out, ref, atol=1e-4, rtol=1e-4):
            model.load_state_dict(before)
            raise SpecError(
                "the residual stream of this model cannot be permuted by shape (an embedder, "
                "position table or head has another axis of size d_model); use --align units"
            )


def residual_activations(model: Transformer, inputs: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """``[N, d_model]``: the residual stream at the input of every block and after the
    last one, every token of ``inputs`` (rows of all the points stacked)."""
    seen: list[torch.Tensor] = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
             for b in model.blocks]  # fmt: skip
    hooks.append(model.blocks[-1].register_forward_hook(lambda m, a, o: seen.append(o.detach())))
    try:
        with torch.no_grad():
            model(inputs, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    return torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])


def residual_permutation(acts_a: torch.Tensor, acts_b: torch.Tensor) -> torch.Tensor:
    """The channel permutation of B maximising the summed correlation with A's channels
    (exact OT between uniform marginals, the cost being minus the correlation)."""
    za = (acts_a - acts_a.mean(0)) / acts_a.std(0).clamp_min(1e-8)
    zb = (acts_b - acts_b.mean(0)) / acts_b.std(0).clamp_min(1e-8)
    return assignment(-(za.T.double() @ zb.double()) / len(za))


def average_into(model_a: Transformer, model_b: Transformer, alpha: float = 0.5) -> None:
    """``A <- (1 - alpha) A + alpha B``, every parameter and floating buffer."""
    sb = model_b.state_dict()
    with torch.no_grad():
        for name, tensor in model_a.state_dict().items():
            if tensor.is_floating_point():
                tensor.mul_(1 - alpha).add_(sb[name].to(tensor), alpha=alpha)


def fuse(
    model_a: Transformer,
    model_b: Transformer,
    spec: ExperimentSpec,
    method: str = "ot",
    alpha: float = 0.5,
    inputs: torch.Tensor | None = None,
) -> tuple[Transformer, dict[str, Any]]:
    """A new model fusing ``model_a`` and ``model_b`` (neither is changed). With ``inputs``
    (a batch of model inputs) and ``method="ot"``, B's residual stream is first aligned to
    A's by the correlation of their activations on them (Imfeld et al.), then its heads
    and neurons by their weights."""
    import copy

    if method not in METHODS:
        raise SpecError(f"--method '{method}' is not one of {', '.join(METHODS)}")
    if not 0.0 <= alpha <= 1.0:
        raise SpecError(f"--alpha {alpha} must lie in [0, 1]")
    check_fusable(model_a, spec)
    fused, b = copy.deepcopy(model_a), copy.deepcopy(model_b)
    info: dict[str, Any] = {"method": method, "alpha": alpha}
    if method == "ot" and inputs is not None:
        perm = residual_permutation(residual_activations(fused, inputs),
                                    residual_activations(b, inputs))  # fmt: skip
        permute_residual(b, perm, inputs)
        info["residual_perm_moved"] = int((perm != torch.arange(len(perm))).sum())
    if method == "ot":
        info |= align(fused, b)
    average_into(fused, b, alpha)
    return fused.eval(), info


def _headline_rows(model: Transformer, spec: ExperimentSpec, task: Any) -> dict[str, Any]:
    from anyformer.lab.elastic import evaluate_variants
    from anyformer.lab.run import build_objective

    rows = evaluate_variants(model, task, build_objective(spec, task), spec.train.eval_size)
    return {r["split"]: {k: v for k, v in r.items() if k not in ("variant", "split")} for r in rows}


def fuse_runs(
    run_a: Path | str,
    run_b: Path | str,
    method: str = "ot",
    alpha: float = 0.5,
    out: Path | str | None = None,
    align_residual: bool = True,
) -> tuple[Path, dict[str, Any]]:
    """Fuse two runs into a new run folder ``<out>/<name>-fused-<method>-<hash>`` (``out``
    defaults to A's parent) with ``spec.yaml``, ``checkpoint/`` at A's step,
    ``fusion.json`` and ``report.md`` comparing the fused model with both parents on A's
    evaluation sets. ``align_residual``: align the residual stream first, on the
    activations of one training batch of A's task (past A's training steps). Returns the
    folder and the results."""
    from anyformer.lab.loaded import load_run
    from anyformer.training.checkpoint import latest_checkpoint, save_checkpoint
    from anyformer.training.trainer import make_optimizer

    a, b = load_run(run_a), load_run(run_b)
    check_same_shape(a.spec, b.spec)
    inputs = None
    if align_residual and method == "ot":
        batch = a.task.train_batch(a.spec.train.steps, a.spec.train.batch_size)
        inputs = batch.inputs.to(next(a.model.parameters()).device)
    fused, info = fuse(a.model, b.model, a.spec, method, alpha, inputs)
    dest = Path(out) if out is not None else a.dir.parent
    dest = dest / f"{a.spec.name}-fused-{method}-{a.spec.hash}"
    if dest.exists():
        raise RunFolderError(f"'{dest}' already exists; remove it or choose another --out")
    results = {
        "parent_a": _headline_rows(a.model, a.spec, a.task),
        "parent_b": _headline_rows(b.model, a.spec, a.task),
        "fused": _headline_rows(fused, a.spec, a.task),
    }
    state = json.loads((latest_checkpoint(a.dir / "checkpoint") / "state.json").read_text())
    a.spec.save(dest / "spec.yaml")
    extra = {"spec_hash": a.spec.hash, "fused_from": [str(a.dir), str(b.dir)], "method": method}
    save_checkpoint(dest / "checkpoint", int(state["step"]), fused,
                    make_optimizer(fused, a.spec.train), extra)  # fmt: skip
    record = {"parents": [str(a.dir), str(b.dir)], **info, "results": results}
    (dest / "fusion.json").write_text(json.dumps(record, indent=1) + "\n")
    (dest / "report.md").write_text(report_markdown(a.spec, a.task.headline, record))
    return dest, record


def report_markdown(spec: ExperimentSpec, headline: str, record: dict[str, Any]) -> str:
    """The fused run's report: each split's metrics for parent A, parent B and the fusion."""
    lines = [
        f"# {spec.name}: model fusion ({record['method']}, alpha={record['alpha']:g})\n",
        f"Parents: `{record['parents'][0]}` (A) and `{record['parents'][1]}` (B).\n",
        f"| model | split | {headline} | loss |",
        "|---|---|---|---|",
    ]
    for who, rows in record["results"].items():
        for split, r in rows.items():
            lines.append(f"| {who} | {split} | {r.get(headline, float('nan')):.4g} | "
                         f"{r.get('loss', float('nan')):.4g} |")  # fmt: skip
    return "\n".join(lines) + "\n"


__all__ = ["METHODS", "align", "check_fusable", "check_same_shape", "fuse", "fuse_runs"]
