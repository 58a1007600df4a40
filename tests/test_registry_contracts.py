"""Slot contracts: registration checks a class against its slot, building goes through
``Entry.build``, capabilities live in one record, and slots load their own modules."""

from __future__ import annotations

import subprocess
import sys

import pytest
from torch import nn

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.registry import CONTRACTS, Capabilities, Dims, NoParams, Paper, register


def test_every_builtin_variant_meets_its_slot_contract() -> None:
    for slot in registry.slots():
        for entry in registry.entries(slot):
            assert registry.contract_problems(slot, entry.cls) == [], (slot, entry.name)


@pytest.mark.parametrize(
    ("slot", "missing"),
    [("attention", "forward"), ("task", "subclass"), ("objective", "subclass")],
)
def test_register_refuses_a_class_that_breaks_its_slot(slot: str, missing: str) -> None:
    class Broken(nn.Module):
        def __init__(self, dims: Dims, params: NoParams) -> None:
            super().__init__()

    with pytest.raises(TypeError) as info:
        register(slot, "broken_for_test", paper=None, summary="")(Broken)
    message = str(info.value)
    assert "Broken" in message and slot in message and missing in message
    assert "broken_for_test" not in registry.components(slot)


def test_register_refuses_a_constructor_of_the_wrong_shape() -> None:
    class WrongArgs(nn.Module):
        def __init__(self, params: NoParams) -> None:  # mixers take (dims, params)
            super().__init__()

        def forward(self, x, ctx):  # type: ignore[no-untyped-def]
            return x

    with pytest.raises(TypeError, match=r"constructor does not take \(dims, params\)"):
        register("attention", "wrong_args_for_test", paper=None, summary="")(WrongArgs)


def test_build_passes_the_slot_arguments_and_refuses_others() -> None:
    entry = registry.get("norm", "rmsnorm")
    dims = Dims(d_model=8, n_heads=2, max_len=4, causal=True)
    by_position = entry.build(entry.make_params(), dims)
    by_name = entry.build(entry.make_params(), dims=dims)
    assert type(by_position) is type(by_name) is entry.cls
    with pytest.raises(TypeError, match="missing: dims"):
        entry.build(entry.make_params())
    with pytest.raises(TypeError, match="unexpected: seed"):
        entry.build(entry.make_params(), dims=dims, seed=0)


def test_subclass_named_by_path_resolves_to_itself_not_its_parent() -> None:
    """A user's subclass of a registered mixer used to inherit ``registry_entry`` and so
    resolve silently to the parent class."""
    from anyformer.components.attention.softmax import SoftmaxAttention

    entry = registry.get("attention", f"{__name__}:LoudSoftmax")
    assert entry.cls is LoudSoftmax and entry.cls is not SoftmaxAttention
    parent = registry.get("attention", "softmax")
    assert entry.params is parent.params and entry.caps == parent.caps  # inherited
    assert registry.entry_of(SoftmaxAttention) is parent


def test_a_path_to_something_not_of_the_slot_is_refused() -> None:
    with pytest.raises(SpecError, match="is not a attention: it is a builtin_function"):
        registry.get("attention", "os:getcwd")
    with pytest.raises(SpecError, match="does not subclass"):
        registry.get("task", "torch.nn:Linear")
    with pytest.raises(SpecError, match="registered as a attention, not a task"):
        registry.get("task", f"{__name__}:LoudSoftmax")


def test_capabilities_have_one_default_each_and_are_read_from_the_registry() -> None:
    defaults = Capabilities()
    assert (defaults.packing, defaults.empty, defaults.final_norm) == (False, False, True)
    assert registry.get("attention", "softmax").caps.packing
    assert not registry.get("attention", "linear").caps.packing
    assert registry.get("ffn", "none").caps.empty
    assert not registry.get("layout", "post").caps.final_norm
    assert registry.get("depth", "stack").caps.packing
    assert not registry.get("depth", "continuous_thought").caps.packing
    assert not registry.get("depth", "early_exit").caps.kv_cache
    for slot in CONTRACTS:  # no variant sets a loose capability attribute any more
        for entry in registry.entries(slot):
            for old in ("supports_packing", "supports_cache", "empty", "final_norm"):
                assert not hasattr(entry.cls, old), (slot, entry.name, old)


def test_building_a_model_loads_only_the_model_slots() -> None:
    code = """
import sys, anyformer
anyformer.build_model(dict(vocab_size=16, d_model=16, n_layers=1, n_heads=2))
anyformer.ModelSpec()
loaded = sorted({m.split('.')[1] for m in sys.modules if m.startswith('anyformer.')})
print(' '.join(loaded))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert not loaded & {"lab", "training", "tasks", "objectives", "cli"}, loaded
    assert {"model", "components", "registry"} <= loaded


def test_a_throwaway_component_in_every_slot_is_picked_up() -> None:
    """A class registered in a slot is listed at once (the contract tests iterate the
    registry, so they pick it up too)."""
    from anyformer.components.base import PositionScheme

    class Tmp(PositionScheme):
        def __init__(self, dims: Dims, params: NoParams) -> None:
            super().__init__()

    register("position", "tmp_for_test", paper=Paper("t", 2026), summary="t")(Tmp)
    try:
        assert "tmp_for_test" in registry.components("position")
    finally:
        registry._REGISTRY["position"].pop("tmp_for_test")
        registry._BY_CLASS.pop(Tmp)


from anyformer.components.attention.softmax import SoftmaxAttention  # noqa: E402


class LoudSoftmax(SoftmaxAttention):
    """A user's subclass (module level, so a dotted path can name it)."""
