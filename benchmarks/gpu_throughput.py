"""Training throughput and MFU of a GPT-2-small-shaped anyformer decoder on one GPU.

GPT-2 small (124M): 12 layers, d_model 768, 12 heads, sequence 1024, vocabulary 50257,
learned positions, GELU MLP, LayerNorm, tied embeddings, no dropout. It trains through the
real :class:`~anyformer.training.trainer.Trainer` step (autocast, per-block torch.compile,
AdamW, gradient clipping) on random tokens; the loss (cross-entropy over every position)
is compiled too. After ``--warmup`` untimed steps (which include compilation) it times
``--steps`` steps and reports tokens/s, achieved FLOP/s (the model's own FLOP estimate,
``model.flops_per_token``) and MFU against the GPU's peak dense FLOP/s
(:mod:`anyformer.training.throughput`). Target: MFU >= 45% on an H100.

    python benchmarks/gpu_throughput.py                 # needs CUDA; writes results/
    python benchmarks/gpu_throughput.py --batch 32      # other batch sizes, etc.
    python benchmarks/gpu_throughput.py --quick         # tiny CPU smoke run, nothing saved
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from anyformer.model.transformer import build_model
from anyformer.spec import TrainSpec
from anyformer.tasks.base import Batch, Task
from anyformer.training.throughput import benchmark_environment, peak_flops, save_benchmark
from anyformer.training.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results"
GPT2_SMALL = dict(layers=12, d=768, heads=12, seq=1024, vocab=50257, batch=16)
TINY = dict(layers=2, d=64, heads=4, seq=64, vocab=256, batch=4)


class RandomTokens(Task):
    """Uniform random tokens; the target is the next token. Batches are made once."""

    splits = ()

    def __init__(self, vocab: int, seq: int, batch: int) -> None:
        super().__init__(None, 0)
        g = torch.Generator().manual_seed(0)
        self.batches = [torch.randint(0, vocab, (batch, seq + 1), generator=g) for _ in range(4)]

    def train_batch(self, step: int, batch_size: int) -> Batch:
        data = self.batches[step % len(self.batches)]
        mask = torch.ones(data.shape[0], data.shape[1] - 1, dtype=torch.bool)
        return Batch(data[:, :-1], data[:, 1:], mask)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=None, help="sequences per step (16)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (1024)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (compilation)")
    parser.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--no-compile", action="store_true", help="eager mode")
    parser.add_argument("--activation-checkpointing", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny model on CPU (smoke test)")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    if not cuda and not args.quick:
        sys.stderr.write(
            "gpu_throughput.py measures GPU training throughput and MFU, and no CUDA device "
            "is available here. Run it on a GPU machine, or pass --quick for a tiny CPU "
            "smoke run of the same code path.\n"
        )
        return 2
    cfg = dict(TINY if args.quick else GPT2_SMALL)
    cfg["batch"] = args.batch or cfg["batch"]
    cfg["seq"] = args.seq or cfg["seq"]
    if args.quick:
        args.steps, args.warmup = 3, 1
        torch.set_num_threads(1)
    if cuda:
        torch.set_float32_matmul_precision("high")  # fp32 runs use TF32 (and its peak)
    device = "cuda" if cuda else "cpu"
    precision = args.precision if cuda else "fp32"
    compile = (not args.no_compile) and cuda
    train = TrainSpec(
        steps=args.warmup + args.steps,
        batch_size=cfg["batch"],
        lr=6e-4,
        warmup_steps=0,
        device=device,
        precision=precision,
        compile=compile,
        activation_checkpointing=args.activation_checkpointing,
        progress=False,
    )
    torch.manual_seed(0)
    model = build_model(
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
    n_params = model.num_params()
    flops_per_token = model.flops_per_token(cfg["seq"])
    task = RandomTokens(cfg["vocab"], cfg["seq"], cfg["batch"])
    loss = torch.compile(cross_entropy) if compile else cross_entropy
    trainer = Trainer(model, task, lambda logits, batch: loss(logits, batch.targets), train)
    t0 = time.perf_counter()
    for step in range(args.warmup):
        trainer.train_step(step)
    warmup_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(args.warmup, args.warmup + args.steps):
        t = time.perf_counter()
        trainer.train_step(step)
        if cuda:  # the loss is read before backward and the optimizer step finish
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    tokens = cfg["batch"] * cfg["seq"]
    total = sum(times)
    tok_s = tokens * args.steps / total
    flops_s = flops_per_token * tok_s
    peak = peak_flops(trainer.device, precision)
    mfu = flops_s / peak if peak else None
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    print(f"device: {name}; config: {cfg}; precision {precision}; compile {compile}")
    print(f"parameters: {n_params:,}; training FLOPs per token: {flops_per_token / 1e9:.3f} G")
    print(f"warmup ({args.warmup} steps, incl. compilation): {warmup_s:.1f} s")
    print(f"median step: {statistics.median(times) * 1e3:.1f} ms; tokens/s: {tok_s:,.0f}")
    print(f"achieved: {flops_s / 1e12:.1f} TFLOP/s; " + (f"MFU: {mfu:.1%}" if mfu else "MFU: n/a"))
    if args.quick or args.no_save:
        return 0
    env = benchmark_environment(torch.get_num_threads(), ("anyformer",))
    record = {
        **env,
        "config": cfg,
        "precision": precision,
        "compile": compile,
        "activation_checkpointing": args.activation_checkpointing,
        "params": n_params,
        "flops_per_token": flops_per_token,
        "steps": args.steps,
        "warmup_s": warmup_s,
        "median_step_s": statistics.median(times),
        "tokens_per_s": tok_s,
        "flops_per_s": flops_s,
        "peak_flops": peak,
        "mfu": mfu,
        "max_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
    }
    print(f"wrote {save_benchmark(record, RESULTS, 'gpu_throughput')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
