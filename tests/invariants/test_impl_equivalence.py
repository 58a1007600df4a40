"""Every ``impl`` of every mixer equals its ``reference``, in outputs and in gradients.

Generated from the registry: each variant of the ``attention`` slot whose parameters have
an ``impl`` field is built once per value of that field and once with
``impl='reference'`` (same weights), in float64, and run

- causal and bidirectional, where its capabilities and ``check_dims`` allow;
- with no position scheme, a rotary one and a learned score bias, where it honours them;
- over rows that are unpadded, padded on the right and padded on the left, (for
  mixers with ``caps.packing``) over packed rows of several documents, and (for mixers
  with ``caps.prefix``) over prefix-LM rows (``prefix_len`` 0, 5 and all, padded).

The loss is a fixed random projection of the outputs at real tokens. Outputs at real
tokens, the input gradient and the gradient of every parameter (the mixer's and the
position scheme's) must agree to ``atol=1e-9, rtol=1e-7``: float64 leaves only rounding,
so any gap above that is a different function or a wrong backward. A mixer's params class
may list ``IMPL_CHECK``, parameter overrides to check with (a small chunk, a short window,
grouped heads), so that the fast form's blocks and options are exercised at the test's
length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, get_args

import pytest
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from anyformer import registry
from anyformer.components.attention.common import (
    DEPRECATED_IMPLS,
    Impl,
    merge_heads,
    reference_attention,
)
from anyformer.components.attention.qkv import QKVHeads
from anyformer.components.base import Context
from anyformer.errors import SpecError
from anyformer.lab.contracts.mixer import mixer_dims
from anyformer.registry import Capabilities, Dims, Entry, Paper

ATOL, RTOL = 1e-9, 1e-7
B, T, D, H = 3, 11, 16, 2
#: one position scheme per way a scheme can act on a mixer (``embed`` acts before it)
POSITIONS = {"none": "none", "rotary": "rope", "bias": "t5_bias"}


def impl_mixers() -> list[str]:
    """Every mixer of the registry with an ``impl`` parameter."""
    return [e.name for e in registry.entries("attention") if "impl" in e.params.model_fields]


def fast_impls(entry: Entry) -> list[str]:
    """The values of the mixer's ``impl`` field other than ``reference``."""
    values = get_args(entry.params.model_fields["impl"].annotation)
    assert "reference" in values, f"{entry.name}: impl must offer 'reference'"
    return [v for v in values if v != "reference"]


@dataclass
class Case:
    causal: bool
    position: str
    rows: str  # "plain" (no mask), "padded", "packed" or "prefix"

    def __str__(self) -> str:
        return f"{'causal' if self.causal else 'bidirectional'}, {self.position}, {self.rows}"


def cases(entry: Entry, params: BaseModel) -> list[Case]:
    out = []
    for causal in (True, False):
        if not (entry.caps.causal_safe if causal else entry.caps.bidirectional):
            continue
        if entry.check(params, mixer_dims(entry, D, H, T, causal, max_len=16)) is not None:
            continue
        out.append(Case(causal, "none", "plain"))
        for mode, position in POSITIONS.items():
            if mode in entry.caps.position_modes:
                out.append(Case(causal, position, "padded"))
        rotary = "rotary" in entry.caps.position_modes
        if entry.caps.packing:
            out.append(Case(causal, "rope" if rotary else "none", "packed"))
        if entry.caps.prefix and causal:
            out.append(Case(causal, "rope" if rotary else "none", "prefix"))
    return out


def _context(case: Case, position: nn.Module) -> tuple[Context, torch.Tensor]:
    """The context of a case and the boolean mask of the real tokens ``[B, T]``."""
    real = torch.ones(B, T, dtype=torch.bool)
    if case.rows == "packed":
        segments = torch.tensor([[0] * 4 + [1] * 7, [0] * 11, [0] * 2 + [1] * 5 + [2] * 4])
        starts = torch.cat(
            [torch.ones(B, 1, dtype=torch.bool), segments[:, 1:] != segments[:, :-1]], 1
        )
        index = torch.arange(T).expand(B, T)
        first = torch.cummax(torch.where(starts, index, 0), dim=1).values
        ctx = Context(index - first, case.causal, position, segments=segments)
        return ctx, real
    if case.rows == "plain":
        return Context(torch.arange(T), case.causal, position), real
    real[1, -3:] = False  # padded on the right
    real[2, :2] = False  # padded on the left
    if case.rows == "prefix":  # a prefix LM: rows with no prefix, a prefix of 5, all prefix
        prefix = torch.tensor([0, 5, T])
        return Context(torch.arange(T), True, position, real, prefix_len=prefix), real
    return Context(torch.arange(T), case.causal, position, padding_mask=real), real


def _run(
    entry: Entry, params: BaseModel, case: Case, x: torch.Tensor, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor | None]]:
    """Outputs, input gradient and parameter gradients of one impl on one case."""
    dims = mixer_dims(entry, D, H, T, case.causal, max_len=16)
    torch.manual_seed(1)
    mixer = entry.build(params, dims).double().train()
    torch.manual_seed(2)
    position = registry.get("position", case.position).build(None, dims).double()
    with torch.no_grad():  # learned biases start at zero; make them matter
        for p in position.parameters():
            p.normal_()
    x = x.clone().requires_grad_(True)
    ctx, real = _context(case, position)
    y = mixer(x, ctx)
    (y * w * real[..., None]).sum().backward()
    grads = {f"mixer.{n}": p.grad for n, p in mixer.named_parameters()}
    grads.update({f"position.{n}": p.grad for n, p in position.named_parameters()})
    return y.detach() * real[..., None], x.grad, grads  # type: ignore[return-value]


def check_params(entry: Entry) -> list[dict[str, Any]]:
    """The parameter sets the check builds the mixer with: its ``IMPL_CHECK`` (a tuple of
    overrides, e.g. a small chunk and grouped heads), or its defaults."""
    return [dict(p) for p in getattr(entry.params, "IMPL_CHECK", ({},))]


def impl_mismatches(entry: Entry) -> list[str]:
    """What differs between each fast ``impl`` of ``entry`` and its ``reference``, on every
    case the mixer supports (empty when everything agrees)."""
    problems = []
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    w = torch.randn(B, T, D, generator=gen, dtype=torch.float64)
    for overrides in check_params(entry):
        reference = entry.make_params({**overrides, "impl": "reference"})
        for impl in fast_impls(entry):
            fast = entry.make_params({**overrides, "impl": impl})
            where = ", ".join(f"{k}={v}" for k, v in {"impl": impl, **overrides}.items())
            for case in cases(entry, fast):
                want = _run(entry, reference, case, x, w)
                got = _run(entry, fast, case, x, w)
                pairs = [("output", got[0], want[0]), ("input gradient", got[1], want[1])]
                pairs += [(f"gradient of {n}", g, want[2][n]) for n, g in got[2].items()]
                for what, a, b in pairs:
                    if a is None or b is None:
                        if (a is None) != (b is None):
                            problems.append(f"{where}, {case}: {what} is missing in one impl")
                        continue
                    if not torch.allclose(a, b, atol=ATOL, rtol=RTOL):
                        gap = (a - b).abs().max().item()
                        problems.append(f"{where}, {case}: {what} differs by {gap:.3g}")
    return problems


@pytest.mark.parametrize("attention", impl_mixers())
def test_every_impl_equals_the_reference_in_outputs_and_gradients(attention: str) -> None:
    entry = registry.get("attention", attention)
    assert all(cases(entry, entry.make_params(p)) for p in check_params(entry))
    problems = impl_mismatches(entry)
    assert not problems, f"{attention}:\n" + "\n".join(problems)


def test_the_mixers_with_an_impl_are_all_the_registry_has() -> None:
    """The list above is the registry's, not a hand-kept one: it holds every mixer known to
    have an ``impl`` today (so a refactor cannot silently drop one)."""
    known = {"binary_hash", "causal_conv", "collapsed", "complex", "delta", "differential"}
    known |= {"gated", "linear", "lmu", "prob_sparse", "sliding_window", "softmax", "symmetric"}
    assert known <= set(impl_mixers())


# --------------------------------------------------------------------------- the check bites
class _LeakyParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    impl: Impl = "fast"


class _DetachedKeys(QKVHeads):
    """Softmax attention whose fast path computes the same outputs but stops the gradient
    through the keys: the kind of bug an outputs-only comparison cannot see."""

    def __init__(self, dims: Dims, params: _LeakyParams) -> None:
        super().__init__(dims)
        self.impl = params.impl

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        q, k, v = self.project(x)
        if self.impl == "fast":
            k = k.detach()
        bias = torch.zeros(x.shape[1], x.shape[1], dtype=x.dtype)
        if ctx.causal:
            bias = bias.masked_fill(torch.ones_like(bias, dtype=torch.bool).triu(1), -1e30)
        return self.out(merge_heads(reference_attention(q, k, v, bias)))


def test_a_fast_path_with_a_wrong_backward_is_caught() -> None:
    entry = Entry(
        "attention", "detached_keys", _DetachedKeys, Paper("a test", 2026), "test",
        _LeakyParams, Capabilities(bidirectional=False, position_modes=("none",)),
    )  # fmt: skip
    problems = impl_mismatches(entry)
    assert problems and not any("output" in p for p in problems)
    assert any("input gradient" in p for p in problems)
    assert any("gradient of mixer.qkv.weight" in p for p in problems)


# --------------------------------------------------------------------------- vocabulary
@pytest.mark.parametrize("attention", impl_mixers())
def test_impl_is_fast_or_reference_and_old_names_still_validate(attention: str) -> None:
    entry = registry.get("attention", attention)
    assert sorted(get_args(entry.params.model_fields["impl"].annotation)) == ["fast", "reference"]
    assert entry.make_params({}).impl == "fast"  # type: ignore[attr-defined]
    for old, new in DEPRECATED_IMPLS.items():
        assert entry.make_params({"impl": old}).impl == new  # type: ignore[attr-defined]
    with pytest.raises(SpecError, match=r"impl='quick'.*'fast' or 'reference'"):
        entry.make_params({"impl": "quick"}, where="attention")


def _old_spec(attention: Any) -> dict[str, Any]:
    return {
        "kind": "decoder",
        "vocab_size": 11,
        "d_model": 16,
        "n_heads": 2,
        "max_len": 16,
        "position": "none",
        "attention": attention,
    }


def test_an_old_spec_validates_and_is_written_back_with_the_new_name() -> None:
    from anyformer.spec import ModelSpec, parse

    old = parse(ModelSpec, _old_spec({"name": "delta", "impl": "recurrent"}))
    assert old.attention.params["impl"] == "reference"
    assert old == parse(ModelSpec, _old_spec({"name": "delta", "impl": "reference"}))
    written = old.model_dump(mode="json")["attention"]
    assert written["impl"] == "reference"
    with pytest.raises(SpecError, match=r"attention: impl='quick': .*'fast' or 'reference'"):
        parse(ModelSpec, _old_spec({"name": "softmax", "impl": "quick"}))


@pytest.mark.parametrize(
    ("attention", "recorded"),
    [  # spec_hash of these specs computed by the code before the rename
        ({"name": "delta", "impl": "chunked"}, "03bc1aeb"),
        ("delta", "03bc1aeb"),
        ({"name": "softmax", "impl": "sdpa"}, "75175fce"),
        ({"name": "softmax", "impl": "reference"}, "88a4c2f1"),
    ],
)
def test_run_folder_hashes_of_default_and_reference_impls_are_unchanged(
    attention: Any, recorded: str
) -> None:
    """A default impl (under its old name or none) is left out of the hash, and
    ``reference`` kept its name, so those runs keep their folders. (Specs that chose
    ``recurrent``, ``masked`` or ``direct`` now say ``reference`` and hash anew.)"""
    from anyformer.spec import ModelSpec, parse, spec_hash

    assert spec_hash(parse(ModelSpec, _old_spec(attention))) == recorded
