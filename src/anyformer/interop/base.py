"""The interface of one Hugging Face family (:class:`Architecture`) and the checks the
families share when they decide whether an anyformer spec has an HF equivalent."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from anyformer.interop.mapping import Rule
from anyformer.model.transformer import Transformer
from anyformer.spec import ModelSpec


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


__all__ = ["Architecture", "common_problems", "want"]
