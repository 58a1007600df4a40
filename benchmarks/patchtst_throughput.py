"""PatchTST-shaped training throughput of anyformer against a plain PyTorch reference, in
one process.

anyformer's model is ``patches_1d`` (channel-independent: each variate's patches a row of
their own) with RevIN, learned positions, pre-norm encoder layers (LayerNorm, softmax
attention, a GELU MLP) and the ``forecast`` head (each variate's tokens flattened and
mapped to its horizon), built from a spec. The reference, :class:`PatchTSTReference`
below, writes the same network out plainly in PyTorch: RevIN by hand, ``unfold``, one
``nn.Linear`` per projection, ``F.scaled_dot_product_attention``, ``F.layer_norm``. Both
have the same parameters (``NAMES`` maps one's names to the other's): the parameter
counts are asserted equal, and with anyformer's weights copied into the reference both give the same loss on the
same batch (asserted to 1e-5, relative).

A training step is forward + MSE + backward + AdamW on one batch of random windows, fp32,
``--threads`` threads. Steps are timed with
:func:`anyformer.training.cost.interleaved_speed` (a warm-up round, then rounds in which
each contender trains ``--steps`` steps in turn, the order rotated each round). Reported:
the median windows/s over rounds and the ratio anyformer / reference (median of the
per-round ratios, with their min and max); the target is >= 0.95.

    python benchmarks/patchtst_throughput.py              # prints a table, writes results/
    python benchmarks/patchtst_throughput.py --quick      # a smoke run (tiny shapes, 1 round)
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anyformer.training.throughput import benchmark_environment, save_benchmark

RESULTS = Path(__file__).resolve().parent / "results"
EPS = 1e-5  # RevIN's and LayerNorm's epsilon, in both models

SHAPES = {
    # PatchTST/42-like on an ETT-sized input: 7 variates, lookback 336, patches of 16 every 8
    "ett_l336_p16_d64": dict(
        variates=7,
        lookback=336,
        patch=16,
        stride=8,
        d=64,
        layers=3,
        heads=4,
        ff=128,
        horizon=96,
        batch=32,
    ),  # fmt: skip
}
QUICK_SHAPES = {
    "tiny_l48_p8_d16": dict(
        variates=3,
        lookback=48,
        patch=8,
        stride=4,
        d=16,
        layers=1,
        heads=2,
        ff=32,
        horizon=12,
        batch=4,
    ),  # fmt: skip
}


def n_patches(shape: dict) -> int:
    return (shape["lookback"] - shape["patch"]) // shape["stride"] + 1


def anyformer_patchtst(shape: dict) -> nn.Module:
    from anyformer.model.transformer import build_model

    return build_model(
        dict(
            kind="encoder",
            embedder={
                "name": "patches_1d",
                "patch_len": shape["patch"],
                "stride": shape["stride"],
                "revin": True,
            },  # fmt: skip
            input_shape=[shape["lookback"], shape["variates"]],
            d_model=shape["d"],
            n_layers=shape["layers"],
            n_heads=shape["heads"],
            max_len=n_patches(shape),
            position="learned",
            norm={"name": "layernorm", "eps": EPS},
            ffn={"name": "mlp", "activation": "gelu", "mult": shape["ff"] / shape["d"]},
            head="forecast",
            n_outputs=shape["horizon"],
        )
    )


class ReferenceBlock(nn.Module):
    """A pre-norm encoder layer: ``x + out(attn(ln1(x)))``, then ``x + down(gelu(up(ln2(x))))``."""

    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.up = nn.Linear(d, ff)
        self.down = nn.Linear(ff, d)
        self.ln1_w, self.ln1_b = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
        self.ln2_w, self.ln2_b = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        a = F.layer_norm(x, (d,), self.ln1_w, self.ln1_b, EPS)
        q, k, v = self.qkv(a).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, d_head]
        x = x + self.out(y.transpose(1, 2).reshape(b, t, d))
        a = F.layer_norm(x, (d,), self.ln2_w, self.ln2_b, EPS)
        return x + self.down(F.gelu(self.up(a)))


class PatchTSTReference(nn.Module):
    """PatchTST (Nie et al., 2023), channel-independent, written plainly: RevIN, patches of
    each variate as a row of their own, a linear patch embedding plus learned positions,
    pre-norm encoder layers, a final LayerNorm, each variate's tokens flattened and mapped
    to its horizon, RevIN undone. ``[B, L, C] -> [B, H, C]``."""

    def __init__(self, shape: dict) -> None:
        super().__init__()
        c, d, n = shape["variates"], shape["d"], n_patches(shape)
        self.patch, self.stride, self.horizon = shape["patch"], shape["stride"], shape["horizon"]
        self.gamma, self.beta = nn.Parameter(torch.ones(c)), nn.Parameter(torch.zeros(c))
        self.embed = nn.Linear(shape["patch"], d)
        self.pos = nn.Parameter(torch.zeros(n, d))
        self.blocks = nn.ModuleList(
            ReferenceBlock(d, shape["heads"], shape["ff"]) for _ in range(shape["layers"])
        )
        self.norm_w, self.norm_b = nn.Parameter(torch.ones(d)), nn.Parameter(torch.zeros(d))
        self.head = nn.Linear(n * d, shape["horizon"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        mean = x.mean(1, keepdim=True)
        std = torch.sqrt(x.var(1, keepdim=True, unbiased=False) + EPS)
        z = (x - mean) / std * self.gamma + self.beta
        patches = z.transpose(1, 2).unfold(-1, self.patch, self.stride)  # [B, C, N, P]
        h = self.embed(patches).flatten(0, 1) + self.pos  # [B*C, N, D]
        for block in self.blocks:
            h = block(h)
        h = F.layer_norm(h, h.shape[-1:], self.norm_w, self.norm_b, EPS)
        y = self.head(h.flatten(1)).view(b, c, self.horizon).transpose(1, 2)
        return (y - self.beta) / self.gamma * std + mean


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


#: anyformer's parameter names -> the reference's (``{i}``: the layer)
NAMES = {
    "embed.revin.gamma": "gamma", "embed.revin.beta": "beta",
    "embed.proj.weight": "embed.weight", "embed.proj.bias": "embed.bias",
    "position.table.weight": "pos", "norm.weight": "norm_w", "norm.bias": "norm_b",
    "head.proj.weight": "head.weight", "head.proj.bias": "head.bias",
}  # fmt: skip
BLOCK_NAMES = {
    "mixer.qkv": "qkv", "mixer.out": "out", "ffn.up": "up", "ffn.down": "down",
    "norm1.weight": "ln1_w", "norm1.bias": "ln1_b", "norm2.weight": "ln2_w",
    "norm2.bias": "ln2_b",
}  # fmt: skip


def reference_name(name: str) -> str:
    """The reference's name of anyformer's parameter ``name``."""
    if name in NAMES:
        return NAMES[name]
    _, i, rest = name.split(".", 2)
    for ours, ref in BLOCK_NAMES.items():
        if rest.startswith(ours):
            return f"blocks.{i}.{ref}{rest[len(ours) :]}"
    raise KeyError(name)


def copy_weights(source: nn.Module, target: nn.Module) -> None:
    """Copy anyformer's parameters into the reference, every one of them (shapes checked)."""
    ref = dict(target.named_parameters())
    mapped = {reference_name(n): p for n, p in source.named_parameters()}
    assert set(mapped) == set(ref), set(mapped) ^ set(ref)
    with torch.no_grad():
        for name, p in mapped.items():
            assert p.shape == ref[name].shape, (name, p.shape, ref[name].shape)
            ref[name].copy_(p)


def data(shape: dict) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape["batch"], shape["lookback"], shape["variates"], generator=g)
    y = torch.randn(shape["batch"], shape["horizon"], shape["variates"], generator=g)
    return x.cumsum(1) * 0.1, y


def losses_with_copied_weights(shape: dict) -> tuple[float, float]:
    """The MSE of anyformer's model and of the reference given anyformer's weights."""
    torch.manual_seed(0)
    ours = anyformer_patchtst(shape)
    ref = PatchTSTReference(shape)
    copy_weights(ours, ref)
    x, y = data(shape)
    with torch.no_grad():
        return float(F.mse_loss(ours(x), y)), float(F.mse_loss(ref(x), y))


def train_stepper(model: nn.Module, shape: dict) -> Callable[[int], tuple[int, float]]:
    """One AdamW training step on a fixed batch; returns (windows, 0.0)."""
    from anyformer.spec import TrainSpec
    from anyformer.training.trainer import make_optimizer

    opt = make_optimizer(model, TrainSpec(lr=1e-4))
    x, y = data(shape)

    def step(_: int) -> tuple[int, float]:
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return shape["batch"], 0.0

    return step


def measure(shape: dict, rounds: int, steps: int) -> dict:
    """Interleaved windows/s of anyformer and the reference at one shape."""
    from anyformer.training.cost import interleaved_speed

    torch.manual_seed(0)
    models = {"anyformer": anyformer_patchtst(shape).train(),
              "reference": PatchTSTReference(shape).train()}  # fmt: skip
    params = {k: n_params(m) for k, m in models.items()}
    assert params["anyformer"] == params["reference"], f"parameter counts differ: {params}"
    ours, ref = losses_with_copied_weights(shape)
    assert abs(ours - ref) <= 1e-5 * abs(ref), f"losses differ with copied weights: {ours}, {ref}"
    steppers = {k: train_stepper(m, shape) for k, m in models.items()}
    speeds = interleaved_speed(steppers, rounds, steps)
    per_round = {k: v["rounds_tokens_per_s"] for k, v in speeds.items()}
    ratios = [a / r for a, r in zip(per_round["anyformer"], per_round["reference"], strict=True)]
    return {
        "shape": shape,
        "params": params,
        "loss_copied_weights": {"anyformer": ours, "reference": ref},
        "windows_per_s": {k: statistics.median(v) for k, v in per_round.items()},
        "rounds_windows_per_s": per_round,
        "ratio_anyformer_vs_reference": statistics.median(ratios),
        "ratio_spread": [min(ratios), max(ratios)],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=20, help="rounded up to a multiple of 2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one round (smoke test)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.quick:
        args.steps, args.rounds = 1, 1
    results = {name: measure(shape, args.rounds, args.steps) for name, shape in shapes.items()}
    n_rounds = len(next(iter(results.values()))["rounds_windows_per_s"]["reference"])
    print(f"threads {args.threads}, {n_rounds} rounds (rotated) x {args.steps} steps")
    print(f"{'shape':18s} {'params':>10s} {'anyformer':>10s} {'reference':>10s} "
          f"{'any/ref':>8s} {'spread':>12s}")  # fmt: skip
    for name, r in results.items():
        s, (lo, hi) = r["windows_per_s"], r["ratio_spread"]
        print(
            f"{name:18s} {r['params']['anyformer']:10,d} {s['anyformer']:10,.1f} "
            f"{s['reference']:10,.1f} {r['ratio_anyformer_vs_reference']:8.3f} "
            f"{lo:5.2f}-{hi:<6.2f}"
        )
    print("windows/s: median over rounds; any/ref: median of per-round ratios (spread: min-max)")
    record = {
        **benchmark_environment(args.threads, ()),
        "rounds": n_rounds,
        "steps": args.steps,
        "shapes": results,
    }
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, RESULTS, 'patchtst_throughput')}")
    return record


if __name__ == "__main__":
    main()
