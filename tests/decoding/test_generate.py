"""Generation: cached decoding equals full recomputation for every cache-capable mixer and
compatible position scheme (generated from the registry), weight-tied blocks get one
cache slot per application, sampling is reproducible, eos stops, and models without
cache support fall back to recomputation."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch

import anyformer.decoding.generation as gen_module
from anyformer import registry
from anyformer.components.base import Cache
from anyformer.decoding.generation import (
    cache_blockers,
    column_major_linears,
    direct_module_calls,
    generate,
    sample_next,
)
from anyformer.errors import SpecError, UserError
from anyformer.model.transformer import Transformer, build_model
from anyformer.spec import ModelSpec, parse

V, PROMPT, NEW = 29, 5, 14
TOL = dict(atol=1e-4, rtol=0)

#: Parameter variants tested besides the defaults (small windows exercise the ring buffer).
VARIANTS: dict[str, list[dict[str, Any]]] = {
    "softmax": [{}, {"kv_heads": 2}, {"kv_heads": 1, "impl": "reference"}],
    "sliding_window": [{"window": 3}, {"window": 4, "impl": "reference"}],
    "linear": [{}, {"feature_map": "favor"}, {"feature_map": "cosformer"}],
    "delta": [{}, {"impl": "reference"}],
    "gated": [{}, {"impl": "reference"}],
}


def _spec(attention: dict[str, Any], position: str, **extra: Any) -> ModelSpec | None:
    data = dict(kind="decoder", vocab_size=V, d_model=32, n_heads=4, n_layers=2, max_len=48)
    data.update(attention=attention, position=position, init_std=0.2, **extra)
    try:
        return parse(ModelSpec, data)
    except SpecError:  # the capabilities exclude this combination
        return None


def _cases() -> list[Any]:
    cases = []
    for entry in registry.entries("attention"):
        if not entry.caps.kv_cache:
            continue
        for params in VARIANTS.get(entry.name, [{}]):
            for position in registry.components("position"):
                attention = {"name": entry.name, **params}
                if _spec(attention, position) is not None:
                    label = "-".join([entry.name, *map(str, params.values()), position])
                    cases.append(pytest.param(attention, position, id=label))
    return cases


CASES = _cases()


def _model(attention: Any, position: str = "none", **extra: Any) -> Transformer:
    spec = _spec(
        attention if isinstance(attention, dict) else {"name": attention}, position, **extra
    )
    assert spec is not None
    return build_model(spec).eval()


def test_every_cache_capable_mixer_is_covered() -> None:
    # cross-attention (capability memory) decodes in encoder-decoders:
    # tests/model/test_encoder_decoder.py
    capable = {
        e.name for e in registry.entries("attention") if e.caps.kv_cache and not e.caps.memory
    }
    covered = {c.values[0]["name"] for c in CASES}
    assert capable == covered
    assert {"softmax", "sliding_window", "linear", "delta", "lmu"} <= capable


@pytest.mark.parametrize(("attention", "position"), CASES)
def test_cached_greedy_equals_full_recomputation(attention: dict, position: str) -> None:
    model = _model(attention, position)
    prompt = torch.randint(0, V, (2, PROMPT))
    cached, cached_logits = generate(
        model, prompt, NEW, use_cache=True, return_logits=True, column_major=True
    )
    full, full_logits = generate(
        model, prompt, NEW, use_cache=False, return_logits=True, column_major=False
    )
    assert torch.equal(cached, full)
    torch.testing.assert_close(cached_logits, full_logits, **TOL)
    assert cached_logits.std(dim=-1).min() > 0.1  # logits are far from uniform: a real test


def test_sliding_window_cache_is_a_bounded_rolling_buffer() -> None:
    window = 3
    model = _model({"name": "sliding_window", "window": window}, "rope")
    tokens = torch.randint(0, V, (1, 30))
    cache = Cache()
    with torch.no_grad():
        steps = [model(tokens[:, :4], cache=cache)[:, -1]]
        for t in range(4, 30):
            steps.append(model(tokens[:, t : t + 1], cache=cache)[:, -1])
        full = model(tokens)[0, 3:]
    torch.testing.assert_close(torch.cat(steps), full, **TOL)
    buffers = [slot.state for slot in cache._slots]
    assert len(buffers) == 2 and all(b.keys.shape[2] == window for b in buffers)
    assert sorted(buffers[0].positions.tolist()) == [27, 28, 29]


def test_weight_tied_block_gets_one_cache_slot_per_application() -> None:
    model = _model("softmax", "rope")
    model.blocks[1] = model.blocks[0]  # one block applied twice per forward
    prompt = torch.randint(0, V, (2, PROMPT))
    cached, cl = generate(model, prompt, NEW, use_cache=True, return_logits=True)
    full, fl = generate(model, prompt, NEW, use_cache=False, return_logits=True)
    assert torch.equal(cached, full)
    torch.testing.assert_close(cl, fl, **TOL)
    cache = Cache()
    with torch.no_grad():
        model(prompt, cache=cache)
        model(prompt[:, :1], cache=cache)
    assert len(cache._slots) == 2 and cache.offset == PROMPT + 1
    first, second = (slot.state.keys for slot in cache._slots)
    assert not torch.allclose(first, second)  # the second application saw other inputs


@pytest.mark.skipif("depth" not in registry.SLOTS, reason="no depth schedules registered")
def test_looped_depth_schedule_decodes_with_a_cache() -> None:
    model = _model("softmax", "alibi", depth={"name": "looped", "loops": 3})
    prompt = torch.randint(0, V, (1, PROMPT))
    cached, cl = generate(model, prompt, NEW, use_cache=True, return_logits=True)
    full, fl = generate(model, prompt, NEW, use_cache=False, return_logits=True)
    assert torch.equal(cached, full)
    torch.testing.assert_close(cl, fl, **TOL)


def test_column_major_linears_compute_the_same_and_are_restored() -> None:
    model = _model({"name": "softmax", "kv_heads": 2}, "rope", ffn="glu", vocab_size=100)
    linears = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    widening = {n for n, m in linears.items() if m.out_features >= m.in_features}
    assert {"blocks.0.mixer.qkv", "blocks.0.ffn.gate_up", "head"} <= widening  # head: V > d
    assert "blocks.0.mixer.out" in widening  # square
    assert "blocks.0.ffn.down" not in widening  # narrowing
    tokens = torch.randint(0, 100, (3, 9))
    with torch.no_grad():
        plain = model(tokens)
        with column_major_linears(model) as changed:
            assert {n for n, m in linears.items() if any(m is c for c in changed)} == widening
            inside = model(tokens)
            for m in changed:  # the copies hold the same values in column-major order
                copy = m.__dict__["forward"].weight
                assert copy.stride() == (1, m.out_features) and torch.equal(copy, m.weight)
        after = model(tokens)
    torch.testing.assert_close(inside, plain, atol=1e-5, rtol=0)
    assert torch.equal(after, plain)
    assert not any("forward" in m.__dict__ for m in model.modules())
    with column_major_linears(model):  # recording gradients: the weights themselves are used
        model(tokens).square().mean().backward()
    qkv = model.blocks[0].mixer.qkv.weight
    assert qkv.grad is not None and qkv.grad.abs().sum() > 0


def test_direct_module_calls_skip_the_call_machinery_and_are_undone() -> None:
    model = _model({"name": "softmax"}, "rope")
    classes = {name: type(m) for name, m in model.named_modules()}
    calls: list[str] = []
    model.blocks[1].ffn.register_forward_hook(lambda *_: calls.append("hooked"))
    tokens = torch.randint(0, V, (2, 7))
    with torch.no_grad():
        plain = model(tokens)
        assert calls == ["hooked"]
        with direct_module_calls(model) as n:
            # every module but the hooked one runs its forward directly, as an instance
            # of a subclass of its own class that changes nothing else
            assert n == len(classes) - 1
            assert type(model.blocks[1].ffn) is classes["blocks.1.ffn"]
            norm = model.blocks[0].norm1
            assert type(norm) is not classes["blocks.0.norm1"]
            assert isinstance(norm, classes["blocks.0.norm1"])
            assert type(norm).__name__ == classes["blocks.0.norm1"].__name__
            inside = model(tokens)
            assert calls == ["hooked", "hooked"]  # the hooked module keeps its hooks
            with direct_module_calls(model) as nested:  # switched modules stay as they are
                assert nested == 0
            assert type(norm) is not classes["blocks.0.norm1"]
    assert torch.equal(inside, plain)
    assert {name: type(m) for name, m in model.named_modules()} == classes
    with pytest.raises(RuntimeError, match="boom"), direct_module_calls(model):
        raise RuntimeError("boom")  # an error inside still restores every class
    assert {name: type(m) for name, m in model.named_modules()} == classes
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *_: None)
    try:  # a global module hook: nothing is switched
        with direct_module_calls(model) as n:
            assert n == 0
    finally:
        handle.remove()


def test_generate_uses_direct_calls_and_restores_the_classes() -> None:
    model = _model({"name": "softmax"}, "learned")
    classes = [type(m) for m in model.modules()]
    prompt = torch.randint(0, V, (2, PROMPT))
    norm = model.blocks[0].norm1
    norm_class, seen = type(norm), []
    model.blocks[0].mixer.out.register_forward_hook(lambda *_: seen.append(type(norm)))
    out = generate(model, prompt, NEW, column_major=True)
    assert seen and all(t is not norm_class and issubclass(t, norm_class) for t in seen)
    assert [type(m) for m in model.modules()] == classes
    assert torch.equal(out, generate(model, prompt, NEW, use_cache=False, column_major=False))


def test_column_major_copies_are_kept_until_the_weight_changes() -> None:
    model = _model("softmax", "learned", vocab_size=100)
    qkv = model.blocks[0].mixer.qkv
    first = gen_module.column_major_weight(qkv)
    assert gen_module.column_major_weight(qkv) is first  # reused between calls
    assert first.stride() == (1, qkv.out_features) and torch.equal(first, qkv.weight)
    tokens = torch.randint(0, 100, (2, 7))
    with torch.no_grad():
        qkv.weight.mul_(2.0)  # an in-place update (as an optimizer step) bumps the version
        fresh = gen_module.column_major_weight(qkv)
        assert fresh is not first and torch.equal(fresh, qkv.weight)
        plain = model(tokens)
        with column_major_linears(model):
            inside = model(tokens)
    torch.testing.assert_close(inside, plain, atol=1e-5, rtol=0)


def test_column_major_generation_equals_the_plain_layout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    class Spy(gen_module._ColumnMajorForward):
        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            calls.append(x.shape[1])
            return super().__call__(x)

    monkeypatch.setattr(gen_module, "_ColumnMajorForward", Spy)
    model = _model("softmax", "learned", vocab_size=100)
    prompt = torch.randint(0, 100, (2, PROMPT))
    new = gen_module.COLUMN_MAJOR_MIN_TOKENS + 8  # long enough: the default copies
    auto, auto_logits = generate(model, prompt, new, return_logits=True)
    assert calls and set(calls) == {PROMPT, 1}  # the prefill and every decoding step
    calls.clear()
    plain, plain_logits = generate(model, prompt, new, return_logits=True, column_major=False)
    generate(model, prompt, 4)  # short: not worth a copy
    assert not calls
    assert torch.equal(auto, plain)
    torch.testing.assert_close(auto_logits, plain_logits, **TOL)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_cache_refuses_a_forward_with_a_different_number_of_calls() -> None:
    cache = Cache()
    cache.begin()
    cache.slot(), cache.slot()
    cache.end(3)
    cache.begin()
    cache.slot()
    with pytest.raises(RuntimeError, match="made 1 cached mixer calls, the first made 2"):
        cache.end(1)
    cache.begin()
    cache.slot(), cache.slot()
    with pytest.raises(RuntimeError, match="more cached mixer calls"):
        cache.slot()


def test_sampling_is_reproducible_and_the_cuts_reduce_to_greedy() -> None:
    model = _model("softmax", "rope")
    prompt = torch.randint(0, V, (3, PROMPT))

    def sample(seed: int, **kw: Any) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return generate(model, prompt, NEW, temperature=1.0, generator=gen, **kw)

    assert torch.equal(sample(1), sample(1))
    assert not torch.equal(sample(1), sample(2))
    assert torch.equal(sample(1, use_cache=True), sample(1, use_cache=False))
    greedy = generate(model, prompt, NEW)
    assert torch.equal(sample(3, top_k=1), greedy)
    assert torch.equal(sample(4, top_p=1e-6), greedy)


def test_top_k_and_top_p_keep_only_the_allowed_tokens() -> None:
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).expand(2000, 5)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, 1.0, top_k=2, generator=gen).tolist()) == {0, 1}
    probs = logits[0].softmax(-1)  # 0.64, 0.24, 0.09, ...: the 0.85 nucleus is {0, 1}
    assert probs[:2].sum() > 0.85 > probs[0]
    assert set(sample_next(logits, 1.0, top_p=0.85, generator=gen).tolist()) == {0, 1}
    assert set(sample_next(logits, 1.0, generator=gen).tolist()) == {0, 1, 2, 3, 4}


def test_eos_stops_a_row_and_generation() -> None:
    model = _model("softmax", "learned")
    prompt = torch.randint(0, V, (2, PROMPT))
    greedy = generate(model, prompt, NEW)[:, PROMPT:]
    eos = int(greedy[0, 2])
    first = [int((row == eos).nonzero()[0]) if (row == eos).any() else NEW for row in greedy]
    out = generate(model, prompt, NEW, eos=eos)[:, PROMPT:]
    assert out.shape[1] == min(NEW, max(first) + 1)  # stops once every row has ended
    for row, ref, stop in zip(out, greedy, first, strict=True):
        assert torch.equal(row[: stop + 1], ref[: min(stop + 1, len(row))])
        assert (row[stop:] == eos).all()  # a finished row is padded with eos


def _ragged(lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts of the given lengths, padded at the end with a token that is not 0."""
    width = max(lengths)
    mask = torch.arange(width) < torch.tensor(lengths)[:, None]
    tokens = torch.randint(0, V, (len(lengths), width)).masked_fill(~mask, 7)
    return tokens, mask


@pytest.mark.parametrize(("attention", "position"), CASES)
def test_ragged_prompts_continue_as_each_row_alone(
    attention: dict, position: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every cache-capable mixer: each row of a ragged batch gets the tokens and logits it
    gets alone. Attention that hides cached keys decodes the batch in one pass (the
    prompts aligned at their ends); recurrent mixers fall back to one batch per length."""
    model = _model(attention, position)
    recurrent = registry.get("attention", attention["name"]).caps.recurrent
    groups: list[int] = []
    grouped = gen_module._decode_ragged
    monkeypatch.setattr(gen_module, "_decode_ragged", lambda *a: groups.append(1) or grouped(*a))
    lengths = [5, 2, 5, 7, 1]
    prompts, mask = _ragged(lengths)
    out, logits = generate(model, prompts, NEW, padding_mask=mask, pad_id=-1, return_logits=True)
    assert bool(groups) == recurrent  # one pass unless a recurrent state forbids it
    assert out.shape == (len(lengths), max(lengths) + NEW)
    for i, n in enumerate(lengths):
        alone, alone_logits = generate(model, prompts[i : i + 1, :n], NEW, return_logits=True)
        assert torch.equal(out[i, : n + NEW], alone[0])
        assert (out[i, n + NEW :] == -1).all()  # the rest of the row is pad_id
        torch.testing.assert_close(logits[i], alone_logits[0], **TOL)


def test_a_cache_with_a_key_mask_refuses_a_mixer_that_cannot_hide_padding() -> None:
    from anyformer.components.base import UnmaskedPaddingError

    tokens = torch.randint(0, V, (2, 4))
    key_mask = torch.tensor([[False, True, True, True], [True] * 4])
    for attention, refused in (("linear", True), ("softmax", False)):
        cache = Cache(4, key_mask=key_mask, position_shift=torch.tensor([1, 0]))
        model = _model(attention, "none")
        if refused:
            with pytest.raises(UnmaskedPaddingError, match="2 of the 2 cached mixer calls"):
                model(tokens, cache=cache)
        else:
            assert torch.isfinite(model(tokens, cache=cache)).all()


@pytest.mark.parametrize(
    "extra",
    [{"depth": {"name": "looped", "loops": 3}}, {"depth": "early_exit"}],
    ids=["looped-one-pass", "early-exit-recomputed"],
)
def test_ragged_prompts_under_depth_schedules(extra: dict) -> None:
    """A weight-tied block applied several times masks padding at every application; a
    schedule without cache support decodes each prompt length by recomputation."""
    model = _model("softmax", "learned", **extra)
    lengths = [4, 1, 6]
    prompts, mask = _ragged(lengths)
    out, logits = generate(model, prompts, NEW, padding_mask=mask, return_logits=True)
    for i, n in enumerate(lengths):
        alone, alone_logits = generate(model, prompts[i : i + 1, :n], NEW, return_logits=True)
        assert torch.equal(out[i, : n + NEW], alone[0])
        torch.testing.assert_close(logits[i], alone_logits[0], **TOL)


def test_ragged_prompts_of_full_rows_are_the_plain_batch() -> None:
    model = _model("softmax", "rope")
    prompts, mask = _ragged([4, 4])
    assert torch.equal(generate(model, prompts, 4, padding_mask=mask), generate(model, prompts, 4))


@pytest.mark.parametrize("attention", ["softmax", "linear"])  # one pass; one per length
def test_ragged_prompts_with_eos(attention: str) -> None:
    model = _model(attention, "learned")
    lengths = [3, 6, 3]
    prompts, mask = _ragged(lengths)
    greedy = generate(model, prompts, NEW, padding_mask=mask)
    eos = int(greedy[1, 6 + 1])  # the long row's second new token
    out, logits = generate(model, prompts, NEW, padding_mask=mask, eos=eos, return_logits=True)
    steps = out.shape[1] - 6  # new-token columns after the longest prompt
    alone = [generate(model, prompts[i : i + 1, :n], NEW, eos=eos, return_logits=True)
             for i, n in enumerate(lengths)]  # fmt: skip
    for i, (n, (tokens, scores)) in enumerate(zip(lengths, alone, strict=True)):
        made = tokens.shape[1] - n
        assert torch.equal(out[i, : n + made], tokens[0])
        assert (out[i, n + made : n + steps] == eos).all()  # finished: eos, then pad_id
        assert (out[i, n + steps :] == 0).all()
        torch.testing.assert_close(logits[i, :made], scores[0], **TOL)
    assert steps == max(t.shape[1] - n for (t, _), n in zip(alone, lengths, strict=True))
    assert steps < NEW  # eos stopped the whole batch early


def test_bad_padding_masks_are_refused() -> None:
    model = _model("softmax", "rope")
    prompts, mask = _ragged([3, 4])
    leading = mask.flip(1)
    with pytest.raises(UserError, match="trailing padding"):
        generate(model, prompts, 2, padding_mask=leading)
    with pytest.raises(UserError, match="shape"):
        generate(model, prompts, 2, padding_mask=mask[:, :3])
    with pytest.raises(UserError, match="booleans"):
        generate(model, prompts, 2, padding_mask=mask.long())
    empty = mask.clone()
    empty[1] = False
    with pytest.raises(UserError, match="row 1 without a real token"):
        generate(model, prompts, 2, padding_mask=empty)


def test_fallback_recomputes_with_a_notice(caplog: pytest.LogCaptureFixture) -> None:
    name = next(
        e.name
        for e in registry.entries("attention")
        if not e.caps.kv_cache and e.caps.causal_safe and _spec({"name": e.name}, "none")
    )
    model = _model(name, "none")
    assert cache_blockers(model) == [name]
    prompt = torch.randint(0, V, (2, PROMPT))
    with caplog.at_level(logging.WARNING, logger="anyformer.decoding.generation"):
        out = generate(model, prompt, 8)
    assert len(caplog.records) == 1 and name in caplog.records[0].getMessage()
    expected = prompt
    with torch.no_grad():
        for _ in range(8):
            expected = torch.cat((expected, model(expected)[:, -1].argmax(-1, keepdim=True)), 1)
    assert torch.equal(out, expected)
    with pytest.raises(SpecError, match="no cache support"):
        generate(model, prompt, 2, use_cache=True)
    with pytest.raises(SpecError, match="cannot decode with a cache"):
        model(prompt, cache=Cache())


def test_bad_requests_are_refused() -> None:
    model = _model("softmax", "rope")
    prompt = torch.randint(0, V, (1, PROMPT))
    with pytest.raises(SpecError, match="max_len"):
        generate(model, prompt, 100)
    with pytest.raises(UserError, match="temperature"):
        generate(model, prompt, 2, temperature=-1.0)
    with pytest.raises(UserError, match="top_p"):
        generate(model, prompt, 2, temperature=1.0, top_p=0.0)
    encoder = build_model(dict(kind="encoder", vocab_size=V, d_model=32, n_heads=4, head="lm"))
    with pytest.raises(SpecError, match="decoder"):
        generate(encoder, prompt, 2)


def test_generate_restores_training_mode() -> None:
    model = _model("softmax", "rope", dropout=0.1).train()
    prompt = torch.randint(0, V, (1, PROMPT))
    a, b = generate(model, prompt, 6), generate(model, prompt, 6)
    assert model.training and torch.equal(a, b)  # dropout is off while generating
