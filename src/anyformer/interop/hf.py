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
from typing import Any, ClassVar

from torch import nn

from anyformer.interop.mapping import (
    Rule,
    Unsupported,
    export_state,
    import_state,
    load_ours,
    refuse,
)
from anyformer.model.transformer import Transformer, build_model
from anyformer.spec import ModelSpec, parse


class Architecture:
    """One HF family. Subclasses set ``name`` (for messages), ``classes`` (HF class name
    -> what anyformer builds of it; a class mapped to a string is refused with that
    reason) and ``ignore`` (HF buffers no rule needs), and define :meth:`spec`,
    :meth:`rules`, :meth:`export_problems` and :meth:`hf_config`."""

    name: ClassVar[str] = ""
    classes: ClassVar[dict[str, str | None]] = {}
    #: the class :func:`to_hf` builds
    export_class: ClassVar[str] = ""
    ignore: ClassVar[tuple[str, ...]] = ()

    def spec(self, hf: nn.Module) -> dict[str, Any]:
        """The anyformer model spec (a dict) computing what ``hf`` computes."""
        raise NotImplementedError

    def rules(self, spec: ModelSpec) -> list[Rule]:
        """The weight mapping of a model of ``spec``."""
        raise NotImplementedError

    def export_problems(self, spec: ModelSpec) -> list[str]:
        """What in ``spec`` the HF class cannot express (empty: it can)."""
        raise NotImplementedError

    def hf_config(self, spec: ModelSpec) -> Any:
        """The HF config of ``spec`` (after :meth:`export_problems` found nothing)."""
        raise NotImplementedError

    def after_export(self, model: Transformer, hf: nn.Module) -> None:
        """Fix-ups after the weights are written (e.g. zeroed buffers); nothing by default."""


def _archs() -> list[Architecture]:
    from anyformer.interop.archs import ARCHITECTURES

    return [cls() for cls in ARCHITECTURES]


def architecture_of(hf: nn.Module) -> Architecture:
    """The architecture that reads ``hf``'s class, or a refusal naming the class and
    the supported ones."""
    cls = type(hf).__name__
    for arch in _archs():
        if cls in arch.classes:
            reason = arch.classes[cls]
            if reason:
                raise Unsupported(f"{cls}: {reason}")
            return arch
    known = sorted(c for a in _archs() for c, why in a.classes.items() if not why)
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
    for arch in _archs():
        if not arch.export_class:
            continue
        problems = arch.export_problems(spec)
        if not problems:
            return arch
        if best is None or len(problems) < best[0]:
            best = (len(problems), arch, problems)
    assert best is not None
    _, arch, problems = best
    others = ", ".join(a.export_class for a in _archs() if a.export_class and a is not arch)
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


def want(spec: ModelSpec, arch: str, **expected: Any) -> list[str]:
    """Problems of ``spec`` against ``expected`` values: for component fields the
    registered name (``position='learned'``) or ``(name, {param: value})``; for plain
    fields the value. Each problem names the field, its value and what ``arch`` has."""
    problems = []
    for field, value in expected.items():
        have = getattr(spec, field)
        name, params = (value, {}) if not isinstance(value, tuple) else value
        if hasattr(have, "entry"):
            if have.name != name:
                problems.append(f"{field}='{have.name}' ({arch} has {name})")
                continue
            for key, need in params.items():
                got = have.params.get(key)
                if callable(need):
                    if not need(got):
                        problems.append(f"{field}.{key}={got!r} is not what {arch} has")
                elif got != need:
                    problems.append(f"{field}.{key}={got!r} ({arch} has {need!r})")
        elif have != name:
            problems.append(f"{field}={have!r} ({arch} has {name!r})")
    return problems


def common_problems(spec: ModelSpec, arch: str) -> list[str]:
    """What no supported HF class expresses: per-layer overrides, a depth schedule other
    than ``stack``, and another embedder than the architecture reads (checked apart)."""
    problems = []
    if spec.layers:
        problems.append(f"per-layer overrides model.layers ({arch}'s layers are all alike)")
    if spec.depth.name != "stack" or spec.depth.params:
        problems.append(f"depth='{spec.depth.name}' ({arch} runs each layer once: stack)")
    return problems


__all__ = [
    "Architecture",
    "architecture_of",
    "common_problems",
    "export_architecture",
    "from_hf",
    "to_hf",
    "want",
]
