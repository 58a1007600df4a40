"""FFNs polycom and none; norms crmsnorm and batchnorm: exact forms, special cases,
validation, padding, gradients and a tiny overfit."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

import anyformer.components.norm_extra  # noqa: F401
from anyformer.components.ffn import MLP, MLPParams
from anyformer.components.ffn_extra import NoFFN, PolyCom, PolyComParams
from anyformer.components.norm_extra import (
    BatchNorm,
    BatchNormParams,
    CRMSNorm,
    CRMSNormParams,
    crms_norm,
)
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.registry import Dims, NoParams

V = 32
DIMS = Dims(16, 4, 32, causal=False)


def _spec(kind: str = "decoder", **extra: Any) -> dict[str, Any]:
    spec = dict(
        kind=kind,
        vocab_size=V,
        d_model=32,
        n_heads=4,
        n_layers=2,
        max_len=64,
        position="learned",
        **extra,
    )
    if kind == "encoder":
        spec.update(head="token_classify", n_outputs=V)
    return spec


def _overfit(spec: dict[str, Any], steps: int = 40) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(spec)
    x = torch.randint(0, V, (4, 16))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(steps):
        logits = model(x)
        if spec["kind"] == "decoder":
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1))
        else:
            loss = F.cross_entropy(logits[:, 1:].reshape(-1, V), x[:, :-1].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def _missing_grads(spec: dict[str, Any]) -> list[str]:
    model = build_model(spec)
    model(torch.randint(0, V, (2, 12))).pow(2).mean().backward()
    return [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]


# --------------------------------------------------------------------------- polycom
def test_polyrelu_and_polynorm_follow_their_formulas() -> None:
    x = torch.randn(3, 5, 16)
    relu = PolyCom(DIMS, PolyComParams(kind="polyrelu"))
    assert torch.equal(relu.coef.detach(), torch.tensor([0.0, 1 / 3, 1 / 3, 1 / 3]))
    with torch.no_grad():
        relu.coef.copy_(torch.tensor([0.2, -0.5, 0.7, 0.3]))
    h = relu.up(x)
    r = F.relu(h)
    want = 0.2 - 0.5 * r + 0.7 * r**2 + 0.3 * r**3
    torch.testing.assert_close(relu.activation(h), want)
    torch.testing.assert_close(relu(x), relu.down(want))

    norm = PolyCom(DIMS, PolyComParams(kind="polynorm", eps=1e-6))
    with torch.no_grad():
        norm.coef.copy_(torch.tensor([0.1, 0.4, -0.3, 0.9]))
    h = norm.up(x)

    def rms(u: torch.Tensor) -> torch.Tensor:
        return u / torch.sqrt(u.pow(2).mean(-1, keepdim=True) + 1e-6)

    want = 0.1 + 0.4 * rms(h) - 0.3 * rms(h**2) + 0.9 * rms(h**3)
    torch.testing.assert_close(norm.activation(h), want)


def test_polyrelu_of_order_one_is_a_relu_mlp() -> None:
    poly = PolyCom(DIMS, PolyComParams(order=1))
    assert torch.equal(poly.coef.detach(), torch.tensor([0.0, 1.0]))
    mlp = MLP(DIMS, MLPParams(activation="relu"))
    mlp.load_state_dict({k: v for k, v in poly.state_dict().items() if k != "coef"})
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(poly(x), mlp(x))


@pytest.mark.parametrize("kind", ["polyrelu", "polynorm"])
def test_polycom_gradients_and_overfit(kind: str) -> None:
    spec = _spec(ffn={"name": "polycom", "kind": kind}, attention="softmax")
    assert not _missing_grads(spec)
    first, last = _overfit(spec)
    assert last < 0.5 * first, (kind, first, last)


# --------------------------------------------------------------------------- none
def test_no_ffn_makes_the_ffn_branch_the_identity() -> None:
    assert torch.equal(NoFFN(DIMS, NoParams())(torch.randn(2, 3, 16)), torch.zeros(2, 3, 16))
    none = build_model(_spec(ffn="none")).eval()
    mlp = build_model(_spec(ffn="mlp")).eval()
    state = mlp.state_dict()
    state.update(none.state_dict())
    for i in range(2):  # an MLP that outputs zero is the same block
        state[f"blocks.{i}.ffn.down.weight"].zero_()
        state[f"blocks.{i}.ffn.down.bias"].zero_()
    mlp.load_state_dict(state)
    x = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(none(x), mlp(x))
    # the layout skips the empty branch and its norm: every parameter gets a gradient
    assert not _missing_grads(_spec(ffn="none"))
    assert none.num_params() < mlp.num_params() - 2 * (4 * 16 * 16)
    first, last = _overfit(_spec(ffn="none"))
    assert last < 0.5 * first, (first, last)


# --------------------------------------------------------------------------- crmsnorm
def test_crmsnorm_equals_layernorm_without_bias_on_zero_mean_input() -> None:
    x = torch.randn(4, 9, 16) * 3 + 1
    zero_mean = x - x.mean(-1, keepdim=True)
    g = torch.randn(16)
    ln = F.layer_norm(zero_mean, (16,), g, None, 1e-5)
    for center in (False, True):
        norm = CRMSNorm(DIMS, CRMSNormParams(center=center))
        with torch.no_grad():
            norm.weight.copy_(g)
        torch.testing.assert_close(norm(zero_mean), ln, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            norm(zero_mean), F.rms_norm(zero_mean, (16,), g, 1e-5), atol=1e-5, rtol=1e-5
        )
    # with centring, on any input: LayerNorm without bias
    norm = CRMSNorm(DIMS, CRMSNormParams())
    torch.testing.assert_close(
        norm(x), F.layer_norm(x, (16,), None, None, 1e-5), atol=1e-5, rtol=1e-5
    )
    # the compressed form: d - 1 entries normalised by the RMS of the full zero-mean vector
    y_hat = crms_norm(zero_mean[..., :-1], 1e-5)
    torch.testing.assert_close(
        y_hat, F.layer_norm(zero_mean, (16,), eps=1e-5)[..., :-1], atol=1e-5, rtol=1e-5
    )


def test_crmsnorm_model_equals_layernorm_model_without_bias() -> None:
    crms = build_model(_spec(norm="crmsnorm")).eval()
    ln = build_model(_spec(norm={"name": "layernorm", "bias": False})).eval()
    ln.load_state_dict(crms.state_dict())
    x = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(crms(x), ln(x), atol=1e-5, rtol=1e-5)
    assert not _missing_grads(_spec(norm="crmsnorm"))
    first, last = _overfit(_spec(norm="crmsnorm"))
    assert last < 0.5 * first


# --------------------------------------------------------------------------- batchnorm
def test_batchnorm_is_rejected_in_decoders() -> None:
    with pytest.raises(SpecError, match="norm='batchnorm'.*future.*kind=encoder"):
        build_model(_spec(norm="batchnorm"))
    build_model(_spec("encoder", norm="batchnorm"))


def test_batchnorm_normalises_over_every_token_of_the_batch() -> None:
    bn = BatchNorm(DIMS, BatchNormParams(momentum=0.2))
    ref = torch.nn.BatchNorm1d(16, momentum=0.2)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(16))
        bn.bias.copy_(torch.randn(16))
    ref.load_state_dict(bn.state_dict())
    x = torch.randn(3, 7, 16) * 2 + 0.5
    flat = x.reshape(-1, 16)
    torch.testing.assert_close(bn(x), ref(flat).view_as(x))
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    mean, var = flat.mean(0), flat.var(0, unbiased=False)
    torch.testing.assert_close(bn(x), (x - mean) / torch.sqrt(var + 1e-5) * bn.weight + bn.bias)
    ref(flat)  # the same number of training calls moves both running statistics alike
    bn.eval()
    ref.eval()
    torch.testing.assert_close(bn(x), ref(flat).view_as(x))


def test_repbn_and_progressive_schedule() -> None:
    x = torch.randn(2, 5, 16)
    rep = BatchNorm(DIMS, BatchNormParams(rep=True))
    plain = BatchNorm(DIMS, BatchNormParams())
    with torch.no_grad():
        rep.eta.fill_(0.7)
    torch.testing.assert_close(rep(x), plain(x) + 0.7 * x)
    prog = BatchNorm(DIMS, BatchNormParams(progressive_steps=4))
    bn = BatchNorm(DIMS, BatchNormParams())
    # first call: gamma = 1, pure LayerNorm
    torch.testing.assert_close(prog(x), F.layer_norm(x, (16,), eps=1e-5))
    assert prog.gamma() == 0.75
    torch.testing.assert_close(prog(x), 0.75 * F.layer_norm(x, (16,), eps=1e-5) + 0.25 * bn(x))
    for _ in range(3):
        prog(x)
    assert prog.gamma() == 0.0 and int(prog.steps) == 5
    torch.testing.assert_close(prog(x), bn(x))
    prog.eval()
    prog(x)
    assert int(prog.steps) == 6  # evaluation calls do not count
    assert "steps" in prog.state_dict()


def test_batchnorm_encoder_padding_in_eval_gradients_and_overfit() -> None:
    spec = _spec("encoder", norm="batchnorm", attention="softmax")
    model = build_model(spec)
    model(torch.randint(0, V, (4, 12)))  # a training step moves the running statistics
    model.eval()
    x = torch.randint(0, V, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[:, 8:] = False
    with torch.no_grad():
        torch.testing.assert_close(
            model(x, padding_mask=mask)[:, :8], model(x[:, :8]), atol=1e-5, rtol=1e-5
        )
    assert not _missing_grads(spec)
    first, last = _overfit(spec)
    assert last < 0.5 * first, (first, last)
    for extra in ({"rep": True}, {"progressive_steps": 20}):
        first, last = _overfit(
            _spec("encoder", norm={"name": "batchnorm", **extra}, attention="softmax")
        )
        assert last < 0.5 * first, (extra, first, last)


def test_norm_none_is_the_identity_and_a_norm_free_model_trains() -> None:
    from anyformer.components.norm_extra import NoNorm

    x = torch.randn(3, 5, 16)
    assert torch.equal(NoNorm(DIMS, NoParams())(x), x)
    spec = _spec(norm="none", attention="softmax")
    model = build_model(spec)
    assert not any("norm" in n for n, _ in model.named_parameters())
    first, last = _overfit(spec)
    assert last < 0.5 * first, (first, last)
