"""ViT training throughput of anyformer against timm's ``VisionTransformer``, in one process.

Both models have the same shape (patch, width, depth, heads, MLP ratio 4, CLS token read
by the head, learned positions over CLS + patches, pre-norm LayerNorm with eps 1e-6,
exact GELU, qkv bias): tests/peers/test_vit_timm.py shows they compute the same logits
once timm's weights are copied in, and the parameter counts are asserted within 2%
(they are equal). A training step is forward + cross-entropy + backward + AdamW on one
batch of random images, fp32, ``--threads`` threads.

Steps are timed with :func:`anyformer.training.cost.interleaved_speed`: a warm-up round,
then rounds in which every contender trains ``--steps`` steps in turn, the order rotated
each round so a slow spell of a shared machine touches all alike. Reported: the median
images/s over rounds, the ratio anyformer / timm (median of the per-round ratios, with
their min and max), and the *linear floor* as in train_throughput.py: the model's
matrix products alone (every ``nn.Linear`` and the patch projection, forward and both
backward products, on the rows each really sees), which bound what any implementation of
the same fp32 model can reach on this machine.

    python benchmarks/vit_throughput.py              # prints a table, writes results/
    python benchmarks/vit_throughput.py --quick      # a smoke run (tiny shapes, 1 round)
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
LN_EPS = 1e-6  # timm's ViT LayerNorm eps; anyformer's spec chooses the same

SHAPES = {
    # CIFAR-sized: 32x32 RGB, 8x8 patches of 4 pixels (65 tokens), a ViT-Tiny-wide stack
    "rgb32_p4_d192": dict(channels=3, size=32, patch=4, d=192, depth=6, heads=3, batch=16),
    # digits-sized: scikit-learn's 8x8 grey digits, patches of 2 (17 tokens)
    "digits8_p2_d128": dict(channels=1, size=8, patch=2, d=128, depth=4, heads=4, batch=64),
}
QUICK_SHAPES = {
    "rgb16_p4_d32": dict(channels=3, size=16, patch=4, d=32, depth=2, heads=2, batch=4),
    "digits8_p2_d32": dict(channels=1, size=8, patch=2, d=32, depth=2, heads=2, batch=8),
}
CLASSES = 10


def anyformer_vit(shape: dict) -> nn.Module:
    from anyformer.model.transformer import build_model

    return build_model(
        dict(
            kind="encoder",
            embedder={"name": "patches", "patch_size": shape["patch"], "cls": True},
            input_shape=[shape["channels"], shape["size"], shape["size"]],
            d_model=shape["d"],
            n_layers=shape["depth"],
            n_heads=shape["heads"],
            max_len=1 + (shape["size"] // shape["patch"]) ** 2,
            position="learned",
            norm={"name": "layernorm", "eps": LN_EPS},
            ffn={"name": "mlp", "activation": "gelu", "mult": 4.0},
            head="classify",
            pool="first",
            n_outputs=CLASSES,
        )
    )


def timm_vit(shape: dict) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=shape["size"],
        patch_size=shape["patch"],
        in_chans=shape["channels"],
        num_classes=CLASSES,
        embed_dim=shape["d"],
        depth=shape["depth"],
        num_heads=shape["heads"],
        mlp_ratio=4.0,
        qkv_bias=True,
        class_token=True,
        global_pool="token",
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def data(shape: dict) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(
        shape["batch"], shape["channels"], shape["size"], shape["size"], generator=g
    )
    return images, torch.randint(0, CLASSES, (shape["batch"],), generator=g)


def train_stepper(model: nn.Module, shape: dict) -> Callable[[int], tuple[int, float]]:
    """One AdamW training step on a fixed batch; returns (images, 0.0)."""
    from anyformer.spec import TrainSpec
    from anyformer.training.trainer import make_optimizer

    opt = make_optimizer(model, TrainSpec(lr=1e-4))
    images, labels = data(shape)

    def step(_: int) -> tuple[int, float]:
        loss = F.cross_entropy(model(images), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return shape["batch"], 0.0

    return step


def linear_products(model: nn.Module, shape: dict) -> list[tuple[int, int, int]]:
    """``(rows, in_features, out_features)`` of every matrix product of a ViT's step: the
    patch projection (a linear map of each flattened patch), each block's ``nn.Linear``
    on every token, and the head on the pooled rows (one per image)."""
    b, grid = shape["batch"], (shape["size"] // shape["patch"]) ** 2
    tokens = b * (1 + grid)
    products = [(b * grid, shape["channels"] * shape["patch"] ** 2, shape["d"])]
    head = getattr(model, "head", None)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            products.append((b if m is head else tokens, m.in_features, m.out_features))
    return products


def linear_floor_stepper(model: nn.Module, shape: dict) -> Callable[[int], tuple[int, float]]:
    """The forward product and both backward products (input and weight gradients) of
    every :func:`linear_products` entry, and nothing else: no implementation of the same
    fp32 model does less work per step."""
    g = torch.Generator().manual_seed(0)
    products = linear_products(model, shape)
    weights = [nn.Parameter(torch.randn(o, i, generator=g) * 0.02) for _, i, o in products]
    inputs = [torch.randn(r, i, generator=g, requires_grad=True) for r, i, _ in products]

    def step(_: int) -> tuple[int, float]:
        total = sum(F.linear(x, w).sum() for x, w in zip(inputs, weights, strict=True))
        total.backward()  # type: ignore[union-attr]
        for t in (*weights, *inputs):
            t.grad = None
        return shape["batch"], 0.0

    return step


def measure(shape: dict, rounds: int, steps: int) -> dict:
    """Interleaved images/s of anyformer, timm and the linear floor at one shape."""
    from anyformer.training.cost import interleaved_speed

    torch.manual_seed(0)
    models = {"anyformer": anyformer_vit(shape).train(), "timm": timm_vit(shape).train()}
    params = {k: n_params(m) for k, m in models.items()}
    gap = abs(params["anyformer"] - params["timm"]) / params["timm"]
    assert gap <= 0.02, f"parameter counts differ by {gap:.1%}: {params}"
    steppers = {k: train_stepper(m, shape) for k, m in models.items()}
    steppers["linear_floor"] = linear_floor_stepper(models["anyformer"], shape)
    speeds = interleaved_speed(steppers, rounds, steps)
    per_round = {k: v["rounds_tokens_per_s"] for k, v in speeds.items()}
    ratios = [a / t for a, t in zip(per_round["anyformer"], per_round["timm"], strict=True)]
    median = {k: statistics.median(v) for k, v in per_round.items()}
    return {
        "shape": shape,
        "params": params,
        "param_gap": gap,
        "images_per_s": median,
        "rounds_images_per_s": per_round,
        "ratio_anyformer_vs_timm": statistics.median(ratios),
        "ratio_spread": [min(ratios), max(ratios)],
        # linear_floor: the matrix products alone; no implementation of the same fp32 model
        # trains faster on this machine, so floor / timm bounds any implementation's ratio
        "ratio_floor_vs_timm": median["linear_floor"] / median["timm"],
        "fraction_of_floor": {k: v / median["linear_floor"] for k, v in median.items()},
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=15, help="rounded up to a multiple of 3")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one round (smoke test)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.quick:
        args.steps, args.rounds = 1, 1
    results = {name: measure(shape, args.rounds, args.steps) for name, shape in shapes.items()}
    n_rounds = len(next(iter(results.values()))["rounds_images_per_s"]["timm"])
    print(f"threads {args.threads}, {n_rounds} rounds (rotated) x {args.steps} steps")
    print(f"{'shape':18s} {'params':>10s} {'anyformer':>10s} {'timm':>10s} {'floor':>10s} "
          f"{'any/timm':>9s} {'spread':>12s} {'floor/timm':>10s}")  # fmt: skip
    for name, r in results.items():
        s, lo_hi = r["images_per_s"], r["ratio_spread"]
        print(
            f"{name:18s} {r['params']['anyformer']:10,d} {s['anyformer']:10,.0f} "
            f"{s['timm']:10,.0f} {s['linear_floor']:10,.0f} {r['ratio_anyformer_vs_timm']:9.2f} "
            f"{lo_hi[0]:5.2f}-{lo_hi[1]:<6.2f} {r['ratio_floor_vs_timm']:10.2f}"
        )
    print("images/s: median over rounds; any/timm: median of per-round ratios (spread: min-max)")
    record = {
        **benchmark_environment(args.threads, ("timm", "torchvision")),
        # interleaved_speed rounds up to a multiple of the contenders (3)
        "rounds": n_rounds,
        "steps": args.steps,
        "shapes": results,
    }
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, RESULTS, 'vit_throughput')}")
    return record


if __name__ == "__main__":
    main()
