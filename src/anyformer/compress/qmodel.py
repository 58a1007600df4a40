"""Quantizing a model's linear layers in place, refusing what has no int8 path, and
rebuilding a quantized model's layers from the record kept with its checkpoint."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyformer.compress.qlinear import (
    Int4WeightLinear,
    Int8Linear,
    QuantLinear,
    fbgemm_available,
)
from anyformer.errors import RunFolderError, UserError
from anyformer.registry import entry_of

SCHEMES = ("int8-dynamic", "int8-static", "int4-weight")

#: A component refused when the matrix weights it multiplies itself (parameters of two
#: or more dimensions outside ``nn.Linear``, ``nn.Embedding`` and convolutions) exceed
#: this share of its ``nn.Linear`` weights: quantizing its linears would leave most of
#: its computation in float. Smaller ones (a gated attention's gates) stay float32.
CUSTOM_SHARE = 0.25

_OWNED = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, QuantLinear)


class NotQuantizable(UserError):
    """A model holds a component with no int8 path (exit 2)."""


def custom_weights(module: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """Parameters of ``module`` (recursively) with two or more dimensions that are not
    held by a linear, embedding or convolution layer: weights of custom matmuls."""
    found = []
    for name, sub in module.named_modules():
        if isinstance(sub, _OWNED):
            continue
        for pname, p in sub.named_parameters(recurse=False):
            if p.dim() >= 2:
                found.append((f"{name}.{pname}" if name else pname, tuple(p.shape)))
    return found


def refusals(model: nn.Module) -> list[str]:
    """Why each registered component of ``model`` that cannot be quantized is refused."""
    reasons = []
    for path, module in model.named_modules():
        bypassed = getattr(module, "weight_read_by_parent", None)
        if bypassed:
            reasons.append(f"'{path}': {bypassed}, so it has no int8 path")
            continue
        entry = entry_of(type(module))
        if entry is None or entry.slot not in ("attention", "ffn"):
            continue
        if (entry.slot, entry.name) in READS_WEIGHTS:
            why = READS_WEIGHTS[(entry.slot, entry.name)]
            reasons.append(
                f"{entry.slot} '{entry.name}' ({path}) {why}, so it has no int8 path (extract "
                f"a width first: anyformer extract RUN --widths W)"
            )
            continue
        custom = custom_weights(module)
        n_custom = sum(int(torch.Size(s).numel()) for _, s in custom)
        n_linear = sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))
        if n_custom and n_custom > CUSTOM_SHARE * n_linear:
            shown = ", ".join(f"{n} {list(s)}" for n, s in custom[:3])
            reasons.append(
                f"{entry.slot} '{entry.name}' ({path}) multiplies by weights outside nn.Linear "
                f"({shown}: {n_custom} of {n_custom + n_linear} weights), so it has no int8 "
                f"path; only models whose {entry.slot} keeps its weights in nn.Linear layers "
                f"can be quantized"
            )
    return reasons


def check_quantizable(model: nn.Module) -> None:
    """Raise :class:`NotQuantizable` naming every component that cannot be quantized."""
    reasons = refusals(model)
    if reasons:
        raise NotQuantizable("cannot quantize this model: " + "; ".join(reasons))


#: Registered components that read their linear layers' weights themselves (slices,
#: per-width views), so replacing the layers would leave them no int8 path.
READS_WEIGHTS = {("ffn", "matformer"): "slices its linear layers' weights per width"}


def plain_linears(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """The layers that are quantized: exactly ``nn.Linear`` (subclasses such as the linear
    heads pool or read their own weight in their forward and stay float32)."""
    return [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)


@torch.no_grad()
def quantize_linears(
    model: nn.Module,
    scheme: str,
    smooth: dict[str, torch.Tensor] | None = None,
    input_scales: dict[str, float] | None = None,
    group_size: int = 32,
) -> dict[str, dict[str, Any]]:
    """Replace every ``nn.Linear`` of ``model`` by its quantized form; returns each layer's
    record (``scheme``, ``smooth``, ``bias``, ``group_size``) for :func:`rebuild`.

    ``smooth`` gives the input factor of layers smoothed without a fold; ``input_scales``
    (``int8-static``) each layer's calibrated activation scale (a layer the calibration
    never reached gets dynamic activations and says so in its record)."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r} (valid: {', '.join(SCHEMES)})")
    smooth = smooth or {}
    records: dict[str, dict[str, Any]] = {}
    for name, module in plain_linears(model):
        factor = smooth.get(name)
        new: QuantLinear
        if scheme == "int4-weight":
            new = Int4WeightLinear.from_linear(module, group_size, factor)
        else:
            scale = (input_scales or {}).get(name) if scheme == "int8-static" else None
            new = Int8Linear.from_linear(module, factor, scale)
        _replace(model, name, new)
        records[name] = {
            "scheme": new.scheme,
            "in": module.in_features,
            "out": module.out_features,
            "bias": module.bias is not None,
            "smooth": factor is not None,
            "group_size": group_size,
            "kernel": getattr(new, "kernel", None),
        }
    return records


def set_kernel(model: nn.Module, kernel: str, records: dict[str, dict[str, Any]]) -> int:
    """Run every dynamic :class:`Int8Linear` of ``model`` with ``kernel`` and note it in its
    ``records`` entry; returns how many layers it set."""
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, Int8Linear) and m.input_scale is None:
            m.kernel = kernel
            if name in records:
                records[name]["kernel"] = kernel
            n += 1
    return n


def rebuild(model: nn.Module, records: dict[str, dict[str, Any]]) -> None:
    """Turn the float ``model`` (built from the spec) into the quantized layout the
    ``records`` of :func:`quantize_linears` describe, with placeholder values, so the
    quantized checkpoint loads into it (safetensors: no code runs on loading)."""
    for name, rec in records.items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise UserError(
                f"quantized layer '{name}' is not in the model built from the spec"
            ) from None
        if not isinstance(old, nn.Linear) or (old.in_features, old.out_features) != (
            rec["in"],
            rec["out"],
        ):
            raise UserError(
                f"quantized layer '{name}' does not match the model built from the spec"
            )
        scheme = rec["scheme"]
        new: QuantLinear
        if scheme == "int4-weight":
            new = Int4WeightLinear(
                rec["in"], rec["out"], rec["bias"], rec["smooth"], int(rec["group_size"])
            )
        elif scheme in ("int8-dynamic", "int8-static"):
            new = Int8Linear(
                rec["in"], rec["out"], rec["bias"], rec["smooth"], scheme == "int8-static"
            )
            kernel = rec.get("kernel") or "int_mm"
            if kernel == "fbgemm" and not fbgemm_available():
                warnings.warn(
                    f"quantized layer '{name}' was measured fastest with the fbgemm kernel, "
                    "which this PyTorch build lacks: it runs on torch._int_mm (per-token "
                    "activations) instead",
                    stacklevel=2,
                )
                kernel = "int_mm"
            try:
                new.kernel = kernel
            except ValueError as exc:
                raise UserError(f"quantized layer '{name}': {exc}") from None
        else:
            raise UserError(f"quantized layer '{name}' has unknown scheme {scheme!r}")
        new.head_groups = getattr(old, "head_groups", None)
        _replace(model, name, new)


def rebuild_from_checkpoint(model: nn.Module, layout: Any, where: Path | str) -> None:
    """:func:`rebuild` from the ``quantization`` record of a checkpoint's ``state.json``
    (``{"scheme", "layers": {name: record}}``), refusing a malformed record naming ``where``."""
    layers = layout.get("layers") if isinstance(layout, dict) else None
    keys = {"scheme", "in", "out", "bias", "smooth", "group_size"}
    if not isinstance(layers, dict) or not all(
        isinstance(r, dict) and keys <= set(r) for r in layers.values()
    ):
        raise RunFolderError(f"checkpoint {where} is damaged: its quantization record is malformed")
    try:
        rebuild(model, layers)
    except (UserError, TypeError, ValueError) as exc:
        raise RunFolderError(f"checkpoint {where}: {exc}") from None


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the linear layers' weights (with scales) and of everything else."""
    linear = other = 0
    seen: set[int] = set()
    for module in model.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        for t in tensors:
            if id(t) in seen:
                continue
            seen.add(id(t))
            size = t.numel() * t.element_size()
            if isinstance(module, (nn.Linear, QuantLinear)):
                linear += size
            else:
                other += size
    return {"linear": linear, "other": other}


__all__ = [
    "CUSTOM_SHARE",
    "SCHEMES",
    "NotQuantizable",
    "check_quantizable",
    "custom_weights",
    "plain_linears",
    "quantize_linears",
    "rebuild",
    "rebuild_from_checkpoint",
    "refusals",
    "weight_bytes",
]
