"""SmoothQuant-style scale re-parameterisation of linear layers before quantization.

"SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models", Xiao et al., 2023: a few input channels of a linear layer carry activation
outliers that per-token int8 cannot represent well, while its weights are easy to
quantize. For each input channel j, with ``a_j = max |X_j|`` over calibration tokens and
``w_j = max_o |W_oj|``, the factor ``s_j = a_j^alpha / w_j^(1 - alpha)`` moves the
difficulty from the activations to the weights: ``X W^T = (X / s)(W s)^T`` exactly.

Layers reading the same tensor (a fused q/k/v, a GLU's two input projections) share one
``s`` (``w_j`` is their maximum). Where that tensor is the output of a norm with a
per-channel gain (LayerNorm, RMSNorm), ``1 / s`` is folded into the norm's gain and bias,
so nothing runs at inference; the fold is kept only if the model's outputs on a
calibration batch are unchanged (another reader of the norm's output, e.g. a gated
attention's gate, would see the scaled values), otherwise the layer divides its own input
by ``s`` (``smooth`` buffer of the quantized layer, a forward pre-hook in the float model).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from anyformer.compress.stats import InputStats
from anyformer.registry import entry_of

#: Largest |difference| of the outputs, relative to their max-abs, that still counts as
#: "the smoothed float model equals the original" (float rounding of the rescaling).
FOLD_TOLERANCE = 1e-5


@dataclass
class Smoothing:
    """What :func:`smooth_model` did: per layer the factor its input is multiplied by
    (``1 / s``) where it was not folded (``unfolded``), the norm each folded group went
    into (``folded``: ``{norm: [layers]}``), the layers left alone and why (``skipped``),
    and the largest relative output difference of the smoothed float model (``max_diff``)."""

    alpha: float
    unfolded: dict[str, torch.Tensor] = field(default_factory=dict)
    folded: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    max_diff: float = 0.0
    hooks: list[Any] = field(default_factory=list, repr=False)

    def remove_hooks(self) -> None:
        for h in self.hooks:
            h.remove()
        self.hooks.clear()

    def record(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "folded_into_norms": self.folded,
            "divided_in_layer": sorted(self.unfolded),
            "skipped": self.skipped,
            "max_relative_output_difference": self.max_diff,
        }


def is_norm(module: nn.Module) -> bool:
    """A norm with a per-channel gain ``weight`` (registered in slot ``norm`` or torch's)."""
    entry = entry_of(type(module))
    named = isinstance(module, (nn.LayerNorm, nn.RMSNorm)) or (
        entry is not None and entry.slot == "norm"
    )
    weight = getattr(module, "weight", None)
    return named and isinstance(weight, nn.Parameter) and weight.dim() == 1


def input_groups(model: nn.Module, run: Callable[[], Any]) -> list[tuple[str | None, list[str]]]:
    """Linear layers grouped by the tensor they read in one forward (``run()``), each
    group with the norm that produced that tensor (or ``None``)."""
    made_by: dict[int, str] = {}
    groups: dict[int, list[str]] = {}
    keep: list[torch.Tensor] = []  # tensors stay alive, so their ids stay unique
    handles = []
    for name, module in model.named_modules():
        if is_norm(module):

            def out_hook(m: nn.Module, a: Any, out: Any, name: str = name) -> None:
                if isinstance(out, torch.Tensor):
                    keep.append(out)
                    made_by.setdefault(id(out), name)

            handles.append(module.register_forward_hook(out_hook))
        elif type(module) is nn.Linear:  # what quantize_linears quantizes

            def in_hook(m: nn.Module, args: tuple[Any, ...], name: str = name) -> None:
                keep.append(args[0])
                members = groups.setdefault(id(args[0]), [])
                if name not in members:
                    members.append(name)

            handles.append(module.register_forward_pre_hook(in_hook))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    # a layer called on several tensors (a shared block, several exits) belongs to its first
    seen: set[str] = set()
    result = []
    for key, names in groups.items():
        names = [n for n in names if n not in seen]
        seen.update(names)
        if names:
            result.append((made_by.get(key), names))
    return result


def smoothing_factor(
    act_max: torch.Tensor, weights: list[torch.Tensor], alpha: float
) -> torch.Tensor:
    """``s_j = max|X_j|^alpha / max|W_:j|^(1 - alpha)`` (1 where either is 0)."""
    w_max = torch.stack([w.detach().abs().amax(dim=0) for w in weights]).amax(dim=0).float()
    a = act_max.float()
    s = a.pow(alpha) / w_max.pow(1 - alpha)
    ok = (a > 0) & (w_max > 0) & torch.isfinite(s)
    return torch.where(ok, s, torch.ones_like(s)).clamp(1e-5, 1e5)


def _relative_diff(a: Any, b: Any) -> float:
    a, b = _logits(a), _logits(b)
    return float((a - b).abs().max() / a.abs().max().clamp_min(1e-12))


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def smooth_model(
    model: nn.Module,
    stats: dict[str, InputStats],
    alpha: float,
    run: Callable[[], Any],
) -> Smoothing:
    """Re-parameterise every linear layer of ``model`` in place (see the module docstring)
    from the calibration ``stats`` (:func:`anyformer.compress.stats.collect` of the float
    model); ``run()`` is one forward on a calibration batch, used to find which tensor
    each layer reads and to check each fold. Unfolded layers get a forward pre-hook
    dividing their input by ``s`` (``Smoothing.remove_hooks`` removes them)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    modules = dict(model.named_modules())
    result = Smoothing(alpha)
    reference = run()
    shared = _shared_weights(model)
    for norm_name, names in input_groups(model, run):
        layers = [modules[n] for n in names]
        if any(n not in stats or stats[n].channel_max is None for n in names):
            result.skipped.update({n: "not reached by the calibration batches" for n in names})
            continue
        if any(id(m.weight) in shared for m in layers):
            result.skipped.update(
                {n: "its weight is shared (tied) with another module" for n in names}
            )
            continue
        s = smoothing_factor(stats[names[0]].channel_max, [m.weight for m in layers], alpha)
        for m in layers:
            m.weight.mul_(s)
        if norm_name is not None and _fold(modules[norm_name], s, reference, run):
            result.folded[norm_name] = names
            continue
        for n, m in zip(names, layers):
            result.unfolded[n] = 1.0 / s
            result.hooks.append(m.register_forward_pre_hook(_divide_hook(1.0 / s)))
    result.max_diff = _relative_diff(reference, run())
    return result


def _fold(norm: nn.Module, s: torch.Tensor, reference: Any, run: Callable[[], Any]) -> bool:
    """Divide the norm's gain (and bias) by ``s``; undo it unless outputs are unchanged."""
    bias = getattr(norm, "bias", None)
    norm.weight.div_(s)
    if isinstance(bias, nn.Parameter):
        bias.div_(s)
    if _relative_diff(reference, run()) <= FOLD_TOLERANCE:
        return True
    norm.weight.mul_(s)
    if isinstance(bias, nn.Parameter):
        bias.mul_(s)
    return False


def _divide_hook(inv: torch.Tensor) -> Callable[..., tuple[torch.Tensor, ...]]:
    def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        return (args[0] * inv, *args[1:])

    return hook


def _shared_weights(model: nn.Module) -> set[int]:
    """ids of parameters held by more than one module (tied embeddings and heads)."""
    count: dict[int, int] = {}
    for module in model.modules():
        for p in module.parameters(recurse=False):
            count[id(p)] = count.get(id(p), 0) + 1
    return {k for k, v in count.items() if v > 1}


__all__ = ["Smoothing", "input_groups", "is_norm", "smooth_model", "smoothing_factor"]
