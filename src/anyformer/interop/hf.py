"""Hugging Face ``transformers`` models in and out of anyformer: :func:`from_hf` and
:func:`to_hf`.

Each supported architecture is an :class:`Architecture` (one module per family in
:mod:`anyformer.interop.archs`): the HF classes it reads, the anyformer spec of an HF
config (refusing by name every option anyformer cannot express), the weight
:class:`~anyformer.interop.mapping.Rule` list between the two state dicts, and the HF
config of an anyformer spec (refusing by name every component HF's class cannot express).
"""

from __future__ import annotations

import importlib

from torch import nn

from anyformer.interop.archs import ARCHITECTURES
from anyformer.interop.base import Architecture
from anyformer.interop.mapping import Unsupported, export_state, import_state, load_ours, refuse
from anyformer.model.transformer import Transformer, build_model
from anyformer.spec import ModelSpec, parse


def architectures() -> list[Architecture]:
    """One instance of every supported family, in export order."""
    return [cls() for cls in ARCHITECTURES]


def architecture_of(hf: nn.Module) -> Architecture:
    """The architecture that reads ``hf``'s class, or a refusal naming the class and
    the supported ones."""
    cls = type(hf).__name__
    for arch in architectures():
        if cls in arch.classes:
            reason = arch.classes[cls]
            if reason:
                raise Unsupported(f"{cls}: {reason}")
            return arch
    known = sorted(c for a in architectures() for c, why in a.classes.items() if not why)
    raise Unsupported(f"{cls} is not a supported architecture (supported: {', '.join(known)})")


def from_hf(hf: nn.Module) -> tuple[ModelSpec, Transformer]:
    """``(spec, model)``: the anyformer model computing what the HF model ``hf`` computes
    (equal logits), its weights copied in; in eval mode. Refuses (:class:`Unsupported`, a
    ``SpecError``) an unsupported class or any option anyformer cannot express, by name."""
    arch = architecture_of(hf)
    spec = parse(ModelSpec, arch.spec(hf))
    rules = arch.rules(spec)
    state = import_state(hf, rules, type(hf).__name__, arch.ignore)
    model = build_model(spec)
    load_ours(model, state)
    return spec, model.eval()


def export_architecture(spec: ModelSpec) -> Architecture:
    """The architecture whose HF class expresses ``spec``; refuses naming, for the
    closest one, every component it cannot express."""
    best: tuple[int, Architecture, list[str]] | None = None
    for arch in architectures():
        if not arch.export_class:
            continue
        problems = arch.export_problems(spec)
        if not problems:
            return arch
        if best is None or len(problems) < best[0]:
            best = (len(problems), arch, problems)
    assert best is not None
    _, arch, problems = best
    others = ", ".join(a.export_class for a in architectures() if a.export_class and a is not arch)
    refuse(
        f"this model has no Hugging Face equivalent (closest: {arch.export_class}, which "
        f"cannot express it; others tried: {others})",
        problems,
    )
    raise AssertionError("unreachable")


def to_hf(model: Transformer) -> nn.Module:
    """An HF ``transformers`` model computing what ``model`` computes (eval mode), its
    weights copied in; refuses a model with components HF's class cannot express."""
    spec = model.spec
    arch = export_architecture(spec)
    transformers = importlib.import_module("transformers")
    config = arch.hf_config(spec)
    transformers.logging.disable_progress_bar()
    hf = getattr(transformers, arch.export_class)(config).eval()
    export_state(model, hf, arch.rules(spec), arch.export_class, arch.ignore)
    arch.after_export(model, hf)
    return hf


__all__ = [
    "Architecture",
    "architecture_of",
    "architectures",
    "export_architecture",
    "from_hf",
    "to_hf",
]
