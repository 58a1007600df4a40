"""Contract tests generated from the registry: every variant of every slot × that slot's
checks (:mod:`anyformer.lab.contracts`), so a component is tested the moment it is
registered; and each check shown to catch the defect it is for."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from pydantic import BaseModel
from torch import nn

import anyformer
from anyformer import registry
from anyformer.errors import SpecError
from anyformer.lab.contracts import NotApplicable, cases, checks_for
from anyformer.registry import CONTRACTS, Dims, NoParams, Paper, register


def _params() -> list[Any]:
    return [
        pytest.param(
            slot,
            name,
            check.name,
            id=f"{slot}-{name}-{check.name}",
            marks=[pytest.mark.slow] if check.slow else [],
        )
        for slot, name, check in cases()
    ]


_STDLIB = "reads every function of the standard library (extracted, tokenized, mutated)"
#: tasks whose default data takes minutes to build, and what it is: the same checks run
#: in tests/tasks on small parameters
HEAVY_DEFAULTS = {
    **dict.fromkeys(
        ("code_lm", "code_search", "defect_detection", "repair", "method_name"), _STDLIB
    ),
    "graph_sbm": "generates 500 SBM graphs with Laplacian encodings",
    "graph_motifs": "generates 400 motif graphs with Laplacian encodings",
}


def _task_not_checkable(name: str, check: str) -> str | None:
    """Why task ``name`` cannot go through ``check`` with its default parameters, or None:
    a task that reads a user's data has required parameters (its tests run it on a
    fixture), and a toy model (check ``scores``) needs the embedder and head the task
    asks for to be registered."""
    entry = registry.get("task", name)
    required = [f for f, info in entry.params.model_fields.items() if info.is_required()]
    if required:
        return f"task '{name}' needs {', '.join(required)} (tests/tasks run it on a fixture)"
    if name in HEAVY_DEFAULTS:
        return (
            f"task '{name}' {HEAVY_DEFAULTS[name]} by default; "
            f"tests/tasks/test_task_contract.py runs every data check on a small one"
        )
    if check != "scores":
        return None
    io = entry.build(entry.make_params(), 0).model_io()
    wanted = {"embedder": io.get("embedder"), "head": io.get("head")}
    for slot, ref in wanted.items():
        ref_name = ref if isinstance(ref, str) or ref is None else ref["name"]
        if ref_name is not None and ref_name not in registry.components(slot):
            return f"task '{name}' needs the {slot} '{ref_name}', not registered yet"
    return None


@pytest.mark.parametrize(("slot", "name", "check"), _params())
def test_contract(slot: str, name: str, check: str) -> None:
    (found,) = [c for c in checks_for(slot) if c.name == check]
    if slot == "task":
        why = _task_not_checkable(name, check)
        if why:
            pytest.skip(why)
    try:
        found.run(registry.get(slot, name))
    except NotApplicable as exc:
        pytest.skip(str(exc))


def test_every_slot_has_contract_checks() -> None:
    for slot in CONTRACTS:
        assert checks_for(slot), slot
    with pytest.raises(SpecError, match="unknown slot 'nrom'; did you mean 'norm'"):
        checks_for("nrom")


# --------------------------------------------------------------------------- generation
def _throwaways() -> dict[str, type]:
    """One subclass of a built-in variant per slot (a new class, so a new variant)."""
    return {
        slot: type(f"Throwaway_{slot}", (registry.entries(slot)[0].cls,), {"__doc__": "t"})
        for slot in CONTRACTS
    }


def test_a_throwaway_component_in_every_slot_gets_every_check_of_its_slot() -> None:
    classes = _throwaways()
    for slot, cls in classes.items():
        parent = registry.entries(slot)[0]
        register(
            slot,
            "throwaway_for_test",
            paper=Paper("t", 2026),
            summary="t",
            params=parent.params,
            caps=parent.caps,
        )(cls)
    try:
        generated = {(slot, name, check.name) for slot, name, check in cases()}
        for slot in CONTRACTS:
            for check in checks_for(slot):
                assert (slot, "throwaway_for_test", check.name) in generated
        ids = {p.id for p in _params()}
        assert "norm-throwaway_for_test-per_token" in ids
        # and the generated checks run on it: a subclass changing nothing passes them
        norm = anyformer.check(classes["norm"], "norm")
        assert norm.passed and norm.name == "throwaway_for_test", norm.table()
    finally:
        for slot, cls in classes.items():
            registry._REGISTRY[slot].pop("throwaway_for_test", None)
            registry._BY_CLASS.pop(cls, None)
    assert all(name != "throwaway_for_test" for _, name, _ in cases(["norm"]))


# --------------------------------------------------------------------------- each check bites
def _attention(**methods: Any) -> type:
    """A small multi-head softmax attention; ``methods`` replace parts of it."""

    class Probe(nn.Module):
        def __init__(self, dims: Dims, params: NoParams) -> None:
            super().__init__()
            self.h, self.d = dims.n_heads, dims.d_head
            self.qkv = nn.Linear(dims.d_model, 3 * dims.d_model)
            self.out = nn.Linear(dims.d_model, dims.d_model)

        def causal_mask(self, t: int) -> torch.Tensor:
            return torch.ones(t, t, dtype=torch.bool).tril()

        def hide_padding(self, keep: torch.Tensor, ctx: Any) -> torch.Tensor:
            return keep if ctx.padding_mask is None else keep & ctx.padding_mask[:, None, None, :]

        def allowed(self, t: int, ctx: Any) -> torch.Tensor:
            keep = self.causal_mask(t) if ctx.causal else torch.ones(t, t, dtype=torch.bool)
            return self.hide_padding(keep, ctx)

        def forward(self, x: torch.Tensor, ctx: Any) -> torch.Tensor:
            b, t, d = x.shape
            q, k, v = self.qkv(x).view(b, t, 3, self.h, self.d).permute(2, 0, 3, 1, 4)
            s = (q @ k.transpose(-1, -2) / self.d**0.5).masked_fill(~self.allowed(t, ctx), -1e9)
            return self.out((s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))

    for name, fn in methods.items():
        setattr(Probe, name, fn)
    return Probe


def _failed(report: Any) -> dict[str, str]:
    return {o.check.name: o.reason for o in report.outcomes if o.status == "failed"}


def test_a_correct_attention_passes_and_leaves_the_registry_as_it_was() -> None:
    before = registry.components("attention")
    report = anyformer.check(_attention(), "attention")
    assert report.passed, report.table()
    assert [r[1] for r in report.rows()] == ["passed"] * 4 + ["skipped"] * 2  # no kv_cache, prefix
    assert report.note.startswith("not registered: checked with causal_safe, bidirectional")
    assert registry.components("attention") == before


def test_the_causality_check_catches_a_mask_that_leaks_the_next_token() -> None:
    def leaky(self: Any, t: int) -> torch.Tensor:
        return torch.ones(t, t, dtype=torch.bool).tril(diagonal=1)  # query i sees key i + 1

    report = anyformer.check(_attention(causal_mask=leaky), "attention")
    failed = _failed(report)
    assert not report.passed and set(failed) == {"causal"}
    assert "causality: changing token 7 changed earlier outputs" in failed["causal"]


def test_the_padding_check_catches_a_mixer_that_attends_to_padding() -> None:
    def unmasked(self: Any, keep: torch.Tensor, ctx: Any) -> torch.Tensor:
        return keep

    failed = _failed(anyformer.check(_attention(hide_padding=unmasked), "attention"))
    assert set(failed) == {"encoder_padding"}
    assert "padding changed the outputs of real tokens" in failed["encoder_padding"]


def test_the_gradient_check_names_an_unused_parameter() -> None:
    class Unused(_attention()):  # type: ignore[misc]
        def __init__(self, dims: Dims, params: NoParams) -> None:
            super().__init__(dims, params)
            self.unused = nn.Parameter(torch.ones(3))

    failed = _failed(anyformer.check(Unused, "attention"))
    assert set(failed) == {"gradients"}
    assert "no gradient reaches blocks.0.mixer.unused, blocks.1.mixer.unused" in failed["gradients"]


def test_the_cache_check_catches_a_mixer_that_claims_a_cache_it_ignores() -> None:
    """Declaring kv_cache without keeping past keys: the prefill (token 0) is right, the
    first token decoded alone (token 1) sees only itself."""
    cls = _attention()
    register(
        "attention",
        "cacheless_for_test",
        paper=None,
        summary="t",
        caps=registry.Capabilities(kv_cache=True),
    )(cls)
    try:
        failed = _failed(anyformer.check(cls, "attention"))
    finally:
        registry._REGISTRY["attention"].pop("cacheless_for_test")
        registry._BY_CLASS.pop(cls)
    assert set(failed) == {"kv_cache"}
    assert (
        "cached logits differ from recomputation at new token 1 (position=none)"
        in failed["kv_cache"]
    )


def test_the_per_token_check_catches_a_norm_over_the_sequence() -> None:
    class SequenceNorm(nn.Module):
        def __init__(self, dims: Dims, params: NoParams) -> None:
            super().__init__()
            self.g = nn.Parameter(torch.ones(dims.d_model))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return (x - x.mean(dim=1, keepdim=True)) * self.g  # centres over tokens

    failed = _failed(anyformer.check(SequenceNorm, "norm"))
    assert set(failed) == {"per_token"}
    assert "changed other tokens' outputs (evaluation mode)" in failed["per_token"]


def test_the_ffn_gradient_check_catches_a_detached_branch() -> None:
    class Detached(nn.Module):
        def __init__(self, dims: Dims, params: NoParams) -> None:
            super().__init__()
            self.up = nn.Linear(dims.d_model, dims.d_model)
            self.gate = nn.Linear(dims.d_model, dims.d_model)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.up(x) * self.gate(x).detach().sigmoid()

    failed = _failed(anyformer.check(Detached, "ffn"))
    assert failed == {
        "gradients": "no gradient reaches gate.weight, gate.bias "
        "(loss = sum(output * random weights))"
    }


def test_the_position_checks_catch_an_embedding_that_adds_the_next_token() -> None:
    from anyformer.components.base import PositionScheme

    class Peek(PositionScheme):
        def __init__(self, dims: Dims, params: NoParams) -> None:
            super().__init__()

        def embed(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
            return x + x.roll(-1, dims=1)

    failed = _failed(anyformer.check(Peek, "position"))
    assert "causal" in failed and "changing token 7 changed earlier outputs" in failed["causal"]


def test_the_depth_check_catches_a_schedule_that_reads_the_future() -> None:
    from anyformer.model.depth import Stack

    class Ahead(Stack):
        def forward(self, model: Any, x: torch.Tensor, ctx: Any, inputs: Any) -> Any:
            return super().forward(model, x + 0.5 * x.roll(-1, dims=1), ctx, inputs)

    failed = _failed(anyformer.check(Ahead, "depth"))
    assert "causal" in failed and "training mode" in failed["causal"]


def test_the_task_check_catches_batches_drawn_from_the_global_generator() -> None:
    copy = registry.get("task", "copy").cls

    class Global(copy):  # type: ignore[misc, valid-type]
        def train_batch(self, step: int, batch_size: int) -> Any:
            batch = super().train_batch(step, batch_size)
            batch.inputs = torch.randint_like(batch.inputs, 4, 10)
            return batch

    failed = _failed(anyformer.check(Global, "task"))
    assert failed == {
        "train_deterministic": "step 0: two instances with seed 0 give different batches"
    }


def test_the_objective_check_catches_a_loss_that_is_not_finite() -> None:
    from anyformer.objectives.losses import Objective

    class LogOfZero(Objective):
        def __init__(self, params: BaseModel) -> None:
            super().__init__(params)

        def loss(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
            return (outputs * 0).sum().log()

    failed = _failed(anyformer.check(LogOfZero, "objective"))
    assert "on task copy the loss is -inf" in failed["finite_loss"]


def test_the_finding_check_catches_a_variant_that_does_not_validate() -> None:
    from anyformer.lab.findings.base import Comparison, Finding

    class Bad(Finding):
        claim = "a claim"

        def comparisons(self, quick: bool) -> dict[str, Comparison]:
            base = {"name": "x", "task": "copy", "model": {"d_model": 16, "n_heads": 2}}
            return {"main": Comparison(base, [("model.position", ["rope", "ropee"])])}

        def check(self, results: Any) -> Any:
            raise NotImplementedError

    failed = _failed(anyformer.check(Bad, "finding"))
    assert "comparison 'main': variant 'position=ropee'" in failed["comparisons"]
    assert "did you mean 'rope'" in failed["comparisons"]


# --------------------------------------------------------------------------- bad input
def test_bad_input_is_refused_naming_what_is_wrong() -> None:
    class NoForward(nn.Module):
        def __init__(self, dims: Dims, params: NoParams) -> None:
            super().__init__()

    with pytest.raises(SpecError, match=r"cannot be a attention: it does not define forward\(\)"):
        anyformer.check(NoForward, "attention")
    with pytest.raises(SpecError, match="'attnetion' is not a slot; did you mean 'attention'"):
        anyformer.check(NoForward, "attnetion")
    with pytest.raises(SpecError, match="module 'no_such_module' could not be imported"):
        anyformer.check("no_such_module:X", "norm")
    with pytest.raises(SpecError, match="has no class 'RMSNrom'; did you mean 'RMSNorm'"):
        anyformer.check("anyformer.components.norm:RMSNrom", "norm")
    with pytest.raises(SpecError, match="is registered as a norm, not a ffn"):
        anyformer.check("anyformer.components.norm:RMSNorm", "ffn")
    with pytest.raises(SpecError, match="allow_import=False"):
        anyformer.check("json.tool:Nothing", "norm", allow_import=False)


def test_a_component_that_crashes_fails_with_the_exception_shown_as_written() -> None:
    class Crashes(nn.Module):
        def __init__(self, dims: Dims, params: NoParams) -> None:
            super().__init__()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise ValueError("shape [B, T] expected [/]")  # rich markup must not apply

    report = anyformer.check(Crashes, "norm")
    assert {o.status for o in report.outcomes} == {"failed"}
    assert "raised ValueError: shape [B, T] expected [/]" in report.failed[0].reason
    assert "expected [/]" in report.table(width=200)
