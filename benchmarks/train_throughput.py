"""Training throughput of anyformer against HF GPT-2 and x-transformers, in one process.

Reference config (DESIGN.md §4): decoder, 6 layers, d_model 384, 6 heads, sequence 256,
batch 16, vocabulary 256, AdamW, forward + backward + optimizer step, fp32, 2 threads.
Each model trains ``--steps`` timed steps per round after ``--warmup`` untimed ones;
rounds alternate between models so drift on a shared machine hits all of them alike.
The median tokens/s over rounds is reported, with ratios to the fastest peer, beside the
*linear floor* (:func:`linear_floor_step`): the model's linear-layer products alone, which
bound what any implementation of the same fp32 model can reach on this machine.

    python benchmarks/train_throughput.py              # prints a table, writes results/
    python benchmarks/train_throughput.py --quick      # a smoke run (tiny, 1 round)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from anyformer.training.throughput import benchmark_environment, save_benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def anyformer_model(cfg: dict) -> nn.Module:
    from anyformer.model.transformer import build_model

    return build_model(
        dict(
            kind="decoder",
            vocab_size=cfg["vocab"],
            d_model=cfg["d"],
            n_layers=cfg["layers"],
            n_heads=cfg["heads"],
            max_len=cfg["seq"],
            position="learned",
            norm="layernorm",
            ffn={"name": "mlp", "activation": "gelu"},
            tie_embeddings=True,
            dropout=0.0,
        )
    )


def gpt2_model(cfg: dict) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=cfg["vocab"],
        n_positions=cfg["seq"],
        n_embd=cfg["d"],
        n_layer=cfg["layers"],
        n_head=cfg["heads"],
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        attn_implementation="sdpa",
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    return _Logits(model)


class _Logits(nn.Module):
    """Wraps a model returning an object with ``.logits``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).logits


def xtransformers_model(cfg: dict, fast: bool) -> nn.Module:
    from x_transformers import Decoder, TransformerWrapper

    extra = {"tie_embedding": True} if fast else {}
    return TransformerWrapper(
        num_tokens=cfg["vocab"],
        max_seq_len=cfg["seq"],
        attn_layers=Decoder(dim=cfg["d"], depth=cfg["layers"], heads=cfg["heads"], attn_flash=fast),
        **extra,
    )


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def make_step(model: nn.Module, cfg: dict) -> Callable[[], None]:
    from anyformer.spec import TrainSpec
    from anyformer.training.trainer import make_optimizer

    opt = make_optimizer(model, TrainSpec(lr=1e-4))
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, cfg["vocab"], (cfg["batch"], cfg["seq"] + 1), generator=g)
    x, y = data[:, :-1], data[:, 1:]

    def step() -> None:
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def linear_floor_step(model: nn.Module, cfg: dict) -> Callable[[], None]:
    """One training step's matrix products of ``model``'s linear layers and nothing else:
    for every ``nn.Linear`` (the head included), the forward product and the two backward
    products (gradients of input and weight) on ``batch x seq`` rows.

    Every implementation of the same fp32 model does at least these products (plus the
    attention products, which this leaves out), so ``floor tok/s / peer tok/s`` bounds the
    ratio any implementation could reach against that peer on this machine.
    """
    rows = cfg["batch"] * cfg["seq"]
    g = torch.Generator().manual_seed(0)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    weights = [
        nn.Parameter(torch.randn(m.out_features, m.in_features, generator=g) * 0.02) for m in layers
    ]
    inputs = [torch.randn(rows, m.in_features, generator=g, requires_grad=True) for m in layers]

    def step() -> None:
        total = sum(F.linear(x, w).sum() for x, w in zip(inputs, weights, strict=True))
        total.backward()  # type: ignore[union-attr]
        for t in (*weights, *inputs):
            t.grad = None

    return step


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="tiny config, one round (smoke test)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = dict(layers=6, d=384, heads=6, seq=256, batch=16, vocab=256)
    if args.quick:
        cfg = dict(layers=2, d=64, heads=4, seq=64, batch=4, vocab=256)
        args.steps, args.warmup, args.rounds = 2, 1, 1
    builders = {
        "anyformer": lambda: anyformer_model(cfg),
        "hf_gpt2": lambda: gpt2_model(cfg),
        "x_transformers": lambda: xtransformers_model(cfg, fast=False),
        "x_transformers_flash_tied": lambda: xtransformers_model(cfg, fast=True),
    }
    models, steps, params = {}, {}, {}
    for name, build in builders.items():
        torch.manual_seed(0)
        models[name] = build().train()
        params[name] = n_params(models[name])
        steps[name] = make_step(models[name], cfg)
    # the products alone, timed in the same rounds: a bound, not a contender
    steps["linear_floor"] = linear_floor_step(models["anyformer"], cfg)
    for name in steps:
        for _ in range(args.warmup):
            steps[name]()
    tokens = cfg["batch"] * cfg["seq"] * args.steps
    speeds: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name in steps:
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[name]()
            speeds[name].append(tokens / (time.perf_counter() - start))
    median = {name: statistics.median(v) for name, v in speeds.items()}
    peers = {k: v for k, v in median.items() if k not in ("anyformer", "linear_floor")}
    fastest = max(peers, key=peers.get)
    floor_ratio = median["linear_floor"] / median[fastest]
    print(f"config: {cfg}, threads {args.threads}, {args.rounds} rounds x {args.steps} steps")
    print(f"{'model':28s} {'params':>12s} {'tok/s':>10s} {'anyformer / it':>15s}")
    for name in builders:
        ratio = median["anyformer"] / median[name]
        print(f"{name:28s} {params[name]:12,d} {median[name]:10,.0f} {ratio:15.2f}")
    ratio = median["anyformer"] / median[fastest]
    print(f"linear products alone (floor): {median['linear_floor']:,.0f} tok/s")
    print(f"anyformer vs fastest peer ({fastest}): {ratio:.2f}x")
    print(
        f"the most any implementation could reach vs {fastest} (floor / peer): "
        f"{floor_ratio:.2f}x; anyformer reaches {median['anyformer'] / median['linear_floor']:.0%} "
        f"of the floor's speed"
    )
    record = {
        **benchmark_environment(args.threads, ("transformers", "x-transformers")),
        "config": cfg,
        "params": params,
        "tokens_per_s": median,
        "rounds": speeds,
        "ratio_vs_fastest_peer": ratio,
        "fastest_peer": fastest,
        # linear_floor: the model's linear-layer products alone (fwd + both bwd products);
        # no implementation of the same fp32 model trains faster on this machine
        "ratio_floor_vs_fastest_peer": floor_ratio,
        "fraction_of_floor": {k: v / median["linear_floor"] for k, v in median.items()},
    }
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, RESULTS, 'train_throughput')}")
    return record


if __name__ == "__main__":
    main()
