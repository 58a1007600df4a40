"""DeltaNet: chunked (WY) == sequential recurrence == step, delta-rule semantics, causality."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import anyformer.components.attention.delta  # noqa: F401 - registers "delta"
from anyformer.components.base import Context
from anyformer.components.position import NoPosition
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.nn.linear_scan import (
    delta_rule_chunked,
    delta_rule_recurrent,
    linear_attention_recurrent,
)
from anyformer.registry import Dims, get

TOL = dict(atol=1e-4, rtol=1e-4)


def model(**params: object) -> torch.nn.Module:
    torch.manual_seed(0)
    spec = dict(kind="decoder", vocab_size=32, d_model=32, n_heads=4, n_layers=2, max_len=64)
    return build_model(dict(spec, attention={"name": "delta", **params}, position="none")).eval()


def mixer(**params: object) -> torch.nn.Module:
    """A stand-alone mixer with O(1)-scale weights, so tolerances mean something."""
    entry = get("attention", "delta")
    module = entry.build(entry.make_params(params), Dims(32, 4, 64, causal=True))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p.shape[-1]))
    return module


def random_inputs(t: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(2, 3, t, 8, generator=gen), dim=-1)
    k = F.normalize(torch.randn(2, 3, t, 8, generator=gen), dim=-1)
    v = torch.randn(2, 3, t, 6, generator=gen)
    beta = torch.rand(2, 3, t, generator=gen)
    return q, k, v, beta


# --------------------------------------------------------------------------- kernels
@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_chunked_equals_sequential_recurrence(chunk: int) -> None:
    q, k, v, beta = random_inputs(37)
    start = torch.randn(2, 3, 8, 6, generator=torch.Generator().manual_seed(9))
    ref_out, ref_state = delta_rule_recurrent(q, k, v, beta, start)
    out, state = delta_rule_chunked(q, k, v, beta, chunk, start)
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(state, ref_state, atol=1e-5, rtol=1e-5)


def test_delta_rule_overwrites_where_linear_attention_adds() -> None:
    keys = torch.eye(4)[None, None]  # orthonormal keys e_0..e_3
    k = torch.cat((keys, keys[:, :, :1]), dim=2)  # write e_0 again at the end
    v = torch.randn(1, 1, 5, 3, generator=torch.Generator().manual_seed(2))
    beta = torch.ones(1, 1, 5)
    _, state = delta_rule_chunked(k, k, v, beta, chunk_size=2)
    # beta = 1: the new value replaces the old one under e_0, the others stay exact
    torch.testing.assert_close(state[0, 0, 0], v[0, 0, 4])
    torch.testing.assert_close(state[0, 0, 1:], v[0, 0, 1:4])
    # additive linear attention (identity features) instead sums both values under e_0
    added = linear_attention_recurrent(k, k, v, eps=0.0)[0, 0, 4]
    torch.testing.assert_close(added, (v[0, 0, 0] + v[0, 0, 4]) / 2)


def test_zero_beta_writes_nothing() -> None:
    q, k, v, beta = random_inputs(12, seed=3)
    _, state = delta_rule_chunked(q, k, v, torch.zeros_like(beta), 4)
    assert torch.equal(state, torch.zeros_like(state))


# --------------------------------------------------------------------------- the component
def test_component_chunked_equals_recurrent_and_step() -> None:
    chunked, recurrent = mixer(chunk_size=8), mixer(impl="reference")
    x = torch.randn(2, 27, 32, generator=torch.Generator().manual_seed(4))
    ctx = Context(torch.arange(27), True, NoPosition(None, None))
    y = chunked(x, ctx)
    assert y.abs().mean() > 0.05  # weights are O(1): the tolerance below is meaningful
    torch.testing.assert_close(y, recurrent(x, ctx), **TOL)
    state, steps = None, []
    for t in range(27):
        y_t, state = chunked.step(x[:, t], state)
        steps.append(y_t)
    torch.testing.assert_close(torch.stack(steps, 1), y, **TOL)
    assert state.shape == (2, 4, 8, 8)  # constant-size fast-weight state


@pytest.mark.parametrize("impl", ["fast", "reference"])
def test_decoder_causal_by_perturbation_and_left_padding(impl: str) -> None:
    net = model(impl=impl, chunk_size=4)
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(0, 32, (2, 16), generator=gen)
    changed = tokens.clone()
    changed[:, 9] = (changed[:, 9] + 1) % 32
    a, b = net(tokens), net(changed)
    torch.testing.assert_close(a[:, :9], b[:, :9], atol=0, rtol=0)
    assert (a[:, 9] - b[:, 9]).abs().max() > 1e-4
    # padded tokens on the left get beta = 0: they write nothing
    left = torch.cat((torch.randint(0, 32, (2, 3), generator=gen), tokens), dim=1)
    mask = torch.ones(2, 19, dtype=torch.bool)
    mask[:, :3] = False
    torch.testing.assert_close(net(left, mask)[:, 3:], a, atol=1e-6, rtol=1e-5)


def test_encoder_is_rejected_with_a_reason() -> None:
    with pytest.raises(SpecError, match="cannot be used in an encoder"):
        build_model(dict(kind="encoder", vocab_size=32, d_model=32, attention="delta", n_outputs=2))
    assert get("attention", "delta").caps.bidirectional is False
    with pytest.raises(SpecError, match="does not support"):
        build_model(dict(vocab_size=32, d_model=32, attention="delta", position="rope"))


# --------------------------------------------------------------------------- learning
def test_gradients_reach_every_parameter() -> None:
    net = model(chunk_size=4).train()
    tokens = torch.randint(0, 32, (2, 12), generator=torch.Generator().manual_seed(6))
    net(tokens).logsumexp(-1).mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_tiny_overfit() -> None:
    net = model(chunk_size=8).train()
    tokens = torch.randint(0, 32, (8, 17), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(net(tokens[:, :-1]).reshape(-1, 32), tokens[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
