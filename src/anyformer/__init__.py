"""anyformer: every Transformer variant as one named, tested component, and a lab to compare them.

The public API is loaded lazily so that ``import anyformer`` (and ``anyformer --help``)
stays fast::

    import anyformer
    model = anyformer.build_model(dict(vocab_size=64, attention="softmax", position="alibi"))
    anyformer.components("attention")
    run = anyformer.train(anyformer.load_experiment("quickstart"))
    anyformer.check("mypkg.attn:MyAttention", "attention")   # the registry's contract tests
    loaded = anyformer.load_run(run.dir)                    # spec, model and task of a run
    spec, model = anyformer.from_hf(hf_model)               # a transformers model, converted

``anyformer.components`` is both the function listing a slot's variants and the
subpackage of built-in components (``anyformer.components.attention`` ...): importing
the subpackage does not replace the function.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "ModelSpec": ("anyformer.spec", "ModelSpec"),
    "ExperimentSpec": ("anyformer.spec", "ExperimentSpec"),
    "TrainSpec": ("anyformer.spec", "TrainSpec"),
    "build_model": ("anyformer.model.transformer", "build_model"),
    "generate": ("anyformer.decoding", "generate"),
    "register": ("anyformer.registry", "register"),
    "load_experiment": ("anyformer.lab.experiments", "load_experiment"),
    "load_run": ("anyformer.lab.loaded", "load_run"),
    "LoadedRun": ("anyformer.lab.loaded", "LoadedRun"),
    "Run": ("anyformer.lab.run", "Run"),
    "from_hf": ("anyformer.interop.hf", "from_hf"),
    "to_hf": ("anyformer.interop.hf", "to_hf"),
}

if TYPE_CHECKING:
    from anyformer.lab.check import CheckReport
    from anyformer.lab.run import Run
    from anyformer.spec import ExperimentSpec


class _Components:
    """``anyformer.components(slot)`` lists a slot's variants; attribute access reaches the
    subpackage :mod:`anyformer.components` (``anyformer.components.attention``)."""

    __name__ = "anyformer.components"

    def __call__(self, slot: str) -> list[str]:
        """Names of the variants registered in ``slot``, sorted."""
        from anyformer.registry import components as names

        return names(slot)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(importlib.import_module("anyformer.components"), name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(importlib.import_module("anyformer.components"))))

    def __repr__(self) -> str:
        return "<anyformer.components: components(slot) and the built-in components package>"


components = _Components()


def train(spec: ExperimentSpec | dict[str, Any] | str, out: str = "runs") -> Run:
    """Train an experiment (a spec, a dict, a built-in name or a YAML path) into a run folder.

    Returns the :class:`~anyformer.lab.run.Run`: its folder, resolved spec and final metrics.
    """
    from anyformer.lab.experiments import load_experiment
    from anyformer.lab.run import run_experiment
    from anyformer.spec import ExperimentSpec

    if isinstance(spec, str):
        spec = load_experiment(spec)
    elif isinstance(spec, dict):
        spec = ExperimentSpec.from_dict(spec)
    return run_experiment(spec, out=out)


def check(component: type | str, slot: str, *, allow_import: bool = True) -> CheckReport:
    """Run the registry's contract checks of ``slot`` on a component (a class, or a
    ``"package.module:Class"`` path) and return the table of what passed and failed."""
    from anyformer.lab.check import check_component

    return check_component(component, slot, allow_import=allow_import)


__all__ = sorted([*_LAZY, "train", "components", "check", "__version__"])


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'anyformer' has no attribute '{name}'")


def __dir__() -> list[str]:
    return list(__all__)


class _Package(types.ModuleType):
    """The ``anyformer`` module: a subpackage import never replaces a public name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "components" and isinstance(value, types.ModuleType):
            return  # the import system binding the subpackage; the callable forwards to it
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
