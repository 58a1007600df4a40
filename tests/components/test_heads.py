"""The gaussian, quantile and dense heads, the pinball objective and the head contract
checks: output layouts, exact computations, losses on batches, refusals, and a tiny
heteroscedastic regression whose predicted variance tracks the true noise."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torch import nn

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.lab.contracts import CheckFailure, checks_for
from anyformer.lab.contracts.head import GridSpec
from anyformer.objectives.losses import build_objective
from anyformer.registry import Capabilities, Entry, NoParams
from anyformer.spec import ModelSpec
from anyformer.tasks.base import Batch

D = 16


def spec(n_outputs: int | None = 1, pool: str = "mean", **grid: object) -> GridSpec:
    base = ModelSpec(
        kind="encoder", d_model=D, n_heads=2, n_layers=1, n_outputs=n_outputs, pool=pool
    )
    return GridSpec(base, grid.get("input_shape"), grid.get("grid"), grid.get("n_prefix", 0))


def head(name: str, s: GridSpec | None = None, **params: object) -> nn.Module:
    entry = registry.get("head", name)
    return entry.build(entry.make_params(params), s or spec())


def batch(targets: torch.Tensor, mask: torch.Tensor | None = None) -> Batch:
    if mask is None:
        mask = torch.ones(targets.shape[0], dtype=torch.bool)
    return Batch(inputs=torch.zeros(targets.shape[0], 1), targets=targets, loss_mask=mask)


def objective(name: str, **params: object):
    entry = registry.get("objective", name)
    return build_objective(name, entry.make_params(params))


# --------------------------------------------------------------------------- gaussian
@pytest.mark.parametrize(
    ("n_outputs", "per_token", "shape"),
    [(1, False, (4, 2)), (3, False, (4, 3, 2)), (1, True, (4, 6, 2)), (3, True, (4, 6, 3, 2))],
)
def test_gaussian_layout_is_the_targets_shape_then_mean_and_log_variance(
    n_outputs: int, per_token: bool, shape: tuple[int, ...]
) -> None:
    name = "token_gaussian" if per_token else "gaussian"
    h = head(name, spec(n_outputs))
    x = torch.randn(4, 6, D)
    out = h(x, None)
    assert out.shape == shape and h.n_values() == 2
    assert registry.get("head", name).caps.pooled is not per_token
    feats = x if per_token else x.mean(1)
    expected = F.linear(feats, h.proj.weight, h.proj.bias).unflatten(-1, (n_outputs, 2))
    torch.testing.assert_close(out, expected.squeeze(-2) if n_outputs == 1 else expected)


@pytest.mark.parametrize("pool", ["mean", "first", "last"])
def test_gaussian_pools_over_real_tokens_only(pool: str) -> None:
    h = head("gaussian", spec(2, pool))
    x = torch.randn(2, 5, D)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = h(x, mask)
    for row, n in ((0, 3), (1, 5)):
        real = x[row, :n]
        feat = {"mean": real.mean(0), "first": real[0], "last": real[-1]}[pool]
        torch.testing.assert_close(out[row], h.proj(feat).view(2, 2))


def test_gaussian_nll_and_mse_read_the_gaussian_layout() -> None:
    h = head("gaussian", spec(3))
    out = h(torch.randn(5, 4, D), None)
    y = torch.randn(5, 3)
    mask = torch.tensor([True, False, True, True, False])
    mu, log_var = out[mask][..., 0], out[mask][..., 1]
    nll = 0.5 * (log_var + (y[mask] - mu) ** 2 / log_var.exp()).mean()
    torch.testing.assert_close(objective("gaussian_nll")(out, batch(y, mask)), nll)
    torch.testing.assert_close(objective("mse")(out, batch(y, mask)), ((y[mask] - mu) ** 2).mean())
    one = head("gaussian", spec(1))(torch.randn(5, 4, D), None)  # targets [B]: outputs [B, 2]
    assert torch.isfinite(objective("gaussian_nll")(one, batch(torch.randn(5))))


def test_mse_refuses_outputs_it_would_broadcast() -> None:
    # A [B, 1, 2] output beside targets [B] used to broadcast to a [B, B, 2] difference.
    with pytest.raises(ValueError, match=r"mse needs outputs shaped like the targets \(4,\)"):
        objective("mse")(torch.randn(4, 1, 2), batch(torch.randn(4)))


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.numpy(), b.numpy()).statistic)


def test_gaussian_head_learns_heteroscedastic_noise() -> None:
    """y = sin(3x) + (0.1 + x^2) eps: after a short full-batch fit of a small trunk and
    the gaussian head with gaussian_nll, the predicted standard deviation ranks like
    the true one (Spearman > 0.8) on fresh points."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)

    def data(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.rand(n, 1, generator=g) * 2 - 1
        sigma = 0.1 + x[:, 0] ** 2
        return x, torch.sin(3 * x[:, 0]) + sigma * torch.randn(n, generator=g), sigma

    trunk = nn.Sequential(nn.Linear(1, 32), nn.GELU(), nn.Linear(32, D), nn.GELU())
    h = head("gaussian", spec(1))
    loss_fn = objective("gaussian_nll")
    opt = torch.optim.Adam([*trunk.parameters(), *h.parameters()], lr=1e-2)
    x, y, _ = data(2000)
    for _ in range(300):
        opt.zero_grad()
        loss = loss_fn(h(trunk(x).unsqueeze(1), None), batch(y))
        loss.backward()
        opt.step()
    x, _, sigma = data(1000)
    with torch.no_grad():
        pred_sigma = (0.5 * h(trunk(x).unsqueeze(1), None)[:, 1]).exp()
    rho = _spearman(pred_sigma, sigma)
    print(f"spearman(predicted sigma, true sigma) = {rho:.3f}")
    assert rho > 0.8


# --------------------------------------------------------------------------- quantile
def test_quantile_outputs_are_non_crossing_and_in_level_order() -> None:
    h = head("quantile", spec(2), levels=[0.05, 0.5, 0.6, 0.95])
    out = h(10 * torch.randn(8, 3, D), None)
    assert out.shape == (8, 2, 4) and h.n_values() == 4
    assert (out.diff(dim=-1) > 0).all()
    raw = h.proj(10 * torch.randn(8, 3, D).mean(1)).view(8, 2, 4)
    assert raw.diff(dim=-1).lt(0).any()  # the free values do cross: the transform orders them
    free = head("token_quantile", spec(1), levels=[0.1, 0.9], monotone=False)
    x = torch.randn(2, 5, D)
    torch.testing.assert_close(free(x, None), free.proj(x))


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        ([0.9, 0.1], "must be strictly increasing"),
        ([0.5, 0.5], "must be strictly increasing"),
        ([0.0, 0.5], "strictly between 0 and 1"),
        ([0.5, 1.2], "strictly between 0 and 1"),
        ([], "at least one level"),
    ],
)
def test_bad_levels_are_refused_naming_the_field(levels: list[float], message: str) -> None:
    for slot, name in (("head", "quantile"), ("head", "token_quantile"), ("objective", "pinball")):
        with pytest.raises(SpecError, match=rf"levels=.*{message}"):
            registry.get(slot, name).make_params({"levels": levels})


def test_pinball_loss_is_the_quantile_loss_on_a_batch() -> None:
    h = head("quantile", spec(1), levels=[0.1, 0.5, 0.9])
    out = h(torch.randn(6, 4, D), None).detach()
    y = torch.randn(6)
    mask = torch.tensor([True, True, False, True, True, False])
    loss = objective("pinball", levels=[0.1, 0.5, 0.9])(out, batch(y, mask))
    expected = []
    for i in mask.nonzero()[:, 0]:
        for j, tau in enumerate((0.1, 0.5, 0.9)):
            d = float(y[i] - out[i, j])
            expected.append(tau * d if d >= 0 else (tau - 1) * d)
    assert float(loss) == pytest.approx(sum(expected) / len(expected), rel=1e-6)


def test_pinball_minimiser_is_the_empirical_quantile() -> None:
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4000, generator=g) ** 3
    levels = (0.1, 0.5, 0.9)
    q = torch.zeros(1, len(levels), requires_grad=True)
    loss_fn = objective("pinball", levels=list(levels))
    opt = torch.optim.Adam([q], lr=0.05)
    for step in range(600):
        for group in opt.param_groups:
            group["lr"] = 0.05 * (1 - step / 600) + 1e-3
        opt.zero_grad()
        loss_fn(q.expand(len(y), -1), batch(y)).backward()
        opt.step()
    torch.testing.assert_close(
        q[0].detach(), torch.quantile(y, torch.tensor(levels)), atol=0.03, rtol=0
    )


def test_pinball_takes_the_head_levels_and_refuses_a_mismatch() -> None:
    params = registry.get("head", "quantile").make_params({"levels": [0.05, 0.5, 0.95]})
    bound = objective("pinball").for_head("quantile", params)
    assert bound.params.levels == (0.05, 0.5, 0.95)
    same = objective("pinball", levels=[0.05, 0.5, 0.95])
    assert same.for_head("quantile", params) is same
    with pytest.raises(
        SpecError,
        match=r"pinball' levels=\[0.1, 0.5, 0.9\] differ from head 'quantile' levels="
        r"\[0.05, 0.5, 0.95\]",
    ):
        objective("pinball", levels=[0.1, 0.5, 0.9]).for_head("quantile", params)
    with pytest.raises(SpecError, match="needs a head with quantile levels.*got head 'regress'"):
        objective("pinball").for_head("regress", NoParams())
    with pytest.raises(ValueError, match="has no levels"):
        objective("pinball")(torch.zeros(2, 3), batch(torch.zeros(2)))
    with pytest.raises(ValueError, match=r"needs outputs \[..., 3\]"):
        objective("pinball", levels=[0.1, 0.5, 0.9])(torch.zeros(2, 2), batch(torch.zeros(2)))


# --------------------------------------------------------------------------- dense
def image_spec(scale_out: int | None = 3, grid: tuple[int, int] | None = (2, 2)) -> GridSpec:
    return spec(scale_out, input_shape=(3, 8, 8), grid=grid, n_prefix=1)


def test_dense_head_is_a_pixel_shuffle_of_per_patch_values() -> None:
    h = head("dense", image_spec(), scale=2)
    x = torch.randn(2, 5, D)
    out = h(x, None)
    assert out.shape == (2, 3, 16, 16)
    values = h.proj(x[:, 1:]).view(2, 2, 2, -1).permute(0, 3, 1, 2)  # [B, C*r^2, gh, gw]
    torch.testing.assert_close(out, F.pixel_shuffle(values, 8))
    changed = x.clone()
    changed[:, 1 + 1 * 2 + 0] += 1.0  # grid cell (1, 0): output rows 8..15, columns 0..7
    diff = (h(changed, None) - out).abs().sum(dim=(0, 1)) > 0
    assert diff[8:, :8].all() and not diff[:8].any() and not diff[:, 8:].any()
    prefix = x.clone()
    prefix[:, 0] += 5.0  # the prefix token is dropped
    torch.testing.assert_close(h(prefix, None), out)


def test_dense_head_loss_with_mse_on_images() -> None:
    h = head("dense", image_spec(3), scale=2)
    out = h(torch.randn(3, 5, D), None)
    y = torch.randn(3, 3, 16, 16)
    mask = torch.tensor([True, False, True])
    torch.testing.assert_close(objective("mse")(out, batch(y, mask)), ((out - y)[mask] ** 2).mean())
    with pytest.raises(
        ValueError, match=r"mse needs outputs shaped like the targets \(3, 3, 8, 8\)"
    ):
        objective("mse")(out, batch(torch.randn(3, 3, 8, 8)))


def test_dense_out_channels_default_and_refusals() -> None:
    assert head("dense", image_spec(None), scale=1)(torch.randn(1, 5, D), None).shape == (
        1,
        3,
        8,
        8,
    )
    assert head("dense", image_spec(None), out_channels=1)(torch.randn(1, 5, D), None).shape == (
        1,
        1,
        8,
        8,
    )
    entry = registry.get("head", "dense")
    cases = [
        ({"out_channels": 2}, image_spec(3), "out_channels=2 differs from model.n_outputs=3"),
        ({}, image_spec(grid=None), "needs tokens on a 2-D grid"),
        ({}, image_spec(grid=(3, 3)), "output height 8 does not split into the grid's 3"),
        ({}, spec(3), r"needs images: model.input_shape=\[C, H, W\], got None"),
    ]
    for params, s, message in cases:
        p = entry.make_params(params)
        assert entry.cls.check(p, s) is not None
        with pytest.raises(ValueError, match=message):
            entry.build(p, s)
    h = head("dense", image_spec())
    with pytest.raises(
        ValueError, match=r"1 prefix tokens and a 2x2 grid \(at least 5 tokens\), got 4"
    ):
        h(torch.randn(1, 4, D), None)
    with pytest.raises(SpecError, match="scale=0"):
        entry.make_params({"scale": 0})


# --------------------------------------------------------------------------- contract checks
def _check(name: str):
    (found,) = [c for c in checks_for("head") if c.name == name]
    return found


class _PoolsPadding(nn.Linear):
    """A broken pooled head: it averages over every token, padding included."""

    pooled = True

    def __init__(self, spec: object, params: object) -> None:
        super().__init__(D, 2)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(x.mean(1))


class _Unused(_PoolsPadding):
    """A broken head: a parameter the forward never uses."""

    def __init__(self, spec: object, params: object) -> None:
        super().__init__(spec, params)
        self.unused = nn.Parameter(torch.ones(3))


def _entry(cls: type) -> Entry:
    return Entry("head", "broken", cls, None, "", NoParams, Capabilities(pooled=True))


def test_head_checks_catch_what_they_are_for() -> None:
    with pytest.raises(CheckFailure, match="padding tokens changed the output"):
        _check("padding_invariant").run(_entry(_PoolsPadding))
    with pytest.raises(CheckFailure, match="no gradient reaches unused"):
        _check("gradient_reaches_every_parameter").run(_entry(_Unused))
    per_token = Entry("head", "broken", _PoolsPadding, None, "", NoParams, Capabilities())
    with pytest.raises(CheckFailure, match="pooled=True disagrees with its registry capability"):
        _check("output_shape").run(per_token)
    undeclared = type("Undeclared", (_PoolsPadding,), {"pooled": False})
    with pytest.raises(CheckFailure, match="per-token head gives"):
        _check("output_shape").run(Entry("head", "b", undeclared, None, "", NoParams))


def _experiment(head: dict, objective: object) -> object:
    from anyformer.spec import ExperimentSpec

    model = {"kind": "encoder", "embed": "vectors", "input_dim": 4, "n_outputs": 1, "head": head}
    return ExperimentSpec.from_dict(
        {"task": "icl_linear_regression", "model": model, "objective": objective}
    )


def test_a_run_fits_pinball_to_its_quantile_head_and_trains_through_the_model() -> None:
    from anyformer.lab.run import build_objective
    from anyformer.model.transformer import build_model

    spec = _experiment({"name": "quantile", "levels": [0.05, 0.5, 0.95]}, "pinball")
    loss_fn = build_objective(spec, None)
    assert loss_fn.params.levels == (0.05, 0.5, 0.95)
    model = build_model(spec.model)
    x = torch.randn(4, 6, 4)
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[0, 3:] = False
    out = model(x, padding_mask=mask)
    assert out.shape == (4, 3)
    torch.testing.assert_close(model(x[:1, :3])[0], out[0])  # padding is pooled out
    loss = loss_fn(out, batch(torch.randn(4)))
    loss.backward()
    assert torch.isfinite(loss) and model.head.proj.weight.grad.abs().sum() > 0
    bad = _experiment({"name": "quantile"}, {"name": "pinball", "levels": [0.25, 0.75]})
    with pytest.raises(SpecError, match=r"levels=\[0.25, 0.75\] differ from head 'quantile'"):
        build_objective(bad, None)
    per_token = _experiment("token_gaussian", "gaussian_nll")
    model = build_model(per_token.model)
    assert model(x).shape == (4, 6, 2) and not model.pooled


def test_a_per_token_quantile_head_serves_a_per_token_regression_task() -> None:
    from anyformer.lab.run import build_objective, build_task, prepare_model, resolve
    from anyformer.spec import ExperimentSpec

    def experiment(objective: object) -> ExperimentSpec:
        head = {"name": "token_quantile", "levels": [0.1, 0.5, 0.9]}
        model = {"d_model": 16, "n_layers": 1, "n_heads": 2, "head": head}
        data = {"task": "icl_linear_regression", "model": model, "objective": objective}
        return ExperimentSpec.from_dict(data)

    with pytest.raises(SpecError, match=r"levels=\[0.2, 0.8\] differ from head 'token_quantile'"):
        resolve(experiment({"name": "pinball", "levels": [0.2, 0.8]}))
    spec = resolve(experiment("pinball"))
    task = build_task(spec)
    model, loss_fn = prepare_model(spec), build_objective(spec, task)
    b = task.train_batch(0, 4)
    out = model(b.inputs, padding_mask=b.padding_mask)
    assert out.shape == (*b.targets.shape, 3)
    loss = loss_fn(out, b)
    loss.backward()
    assert torch.isfinite(loss) and model.head.proj.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cls_position", ["first", "last"])
def test_dense_head_on_patch_tokens_of_a_model(cls_position: str) -> None:
    """Through a model with the patches embedder (a CLS token before or after the grid):
    the image comes out at twice the size, and the CLS token's hidden state is unused."""
    from anyformer.model.transformer import build_model
    from anyformer.spec import parse

    data = dict(
        kind="encoder", d_model=D, n_heads=2, n_layers=1, position="none", input_shape=[3, 8, 8],
        embedder={"name": "patches", "patch_size": 4, "cls": True, "cls_position": cls_position},
        head={"name": "dense", "scale": 2},
    )  # fmt: skip
    model = build_model(parse(ModelSpec, data))
    images = torch.rand(2, 3, 8, 8)
    assert model(images).shape == (2, 3, 16, 16)
    hidden: list[torch.Tensor] = []
    model.head.register_forward_hook(lambda m, args, out: hidden.append(args[0]))
    out = model(images)
    grid = hidden[0][:, 1:5] if cls_position == "first" else hidden[0][:, :4]
    values = model.head.proj(grid).view(2, 2, 2, -1).permute(0, 3, 1, 2)
    torch.testing.assert_close(out, F.pixel_shuffle(values, 8))


def test_spec_validation_pairs_the_new_heads_with_their_objectives() -> None:
    assert _experiment("gaussian", "gaussian_nll").objective.name == "gaussian_nll"
    assert _experiment("token_gaussian", "gaussian_nll").model.n_outputs == 1
    dense = {"name": "dense", "scale": 2}
    with pytest.raises(SpecError, match="objective='pinball' reads the outputs of head quantile"):
        _experiment("regress", "pinball")
    with pytest.raises(SpecError, match="objective='gaussian_nll' needs 2 outputs per target"):
        _experiment("regress", "gaussian_nll")  # a plain head needs (mean, log-variance)
    from anyformer.spec import ExperimentSpec

    images = {
        "kind": "encoder", "embedder": {"name": "patches", "patch_size": 4},
        "input_shape": [3, 8, 8], "head": dense, "n_outputs": 3,
    }  # fmt: skip
    spec = ExperimentSpec.from_dict(
        {"task": "icl_linear_regression", "model": images, "objective": "mse"}
    )
    assert spec.model.head_ref.name == "dense"
    with pytest.raises(SpecError, match="head='dense': head 'dense' needs images"):
        _experiment(dense, "mse")
