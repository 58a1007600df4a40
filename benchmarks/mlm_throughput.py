"""Masked-language-model training throughput of anyformer against Hugging Face's
``BertForMaskedLM`` of the same shape, in one process.

Shapes match: vocabulary, width, depth, heads, MLP ratio 4 with exact GELU, learned
absolute positions, post-norm LayerNorm (eps 1e-12) around every sublayer, biases on every
projection, tied input and output embeddings, a LayerNorm on the embeddings
(``model.embed_norm``). BERT has parts anyformer's encoder does not (token-type embeddings,
the MLM "transform" layer of the head); the parameter counts are reported and asserted
within 3%. Dropout is off in both
(``hidden_dropout_prob = attention_probs_dropout_prob = 0``; anyformer's default is 0).

A training step: BERT's corruption of a fixed batch (15% of the tokens chosen, 80% of those
replaced by a mask id, 10% by a random id, 10% kept; the same corrupted batch for both
models), forward, cross-entropy on the chosen positions, backward and AdamW, fp32,
each library as it trains an MLM: anyformer's ``mlm`` objective runs the output layer
on the chosen positions alone (``readout_mask``; the same loss and gradients, tested in
tests/objectives/test_token_objectives.py), ``BertForMaskedLM`` computes the logits of
every position. ``--full-readout`` makes anyformer compute every position too.
``--threads`` threads. Steps are timed with
:func:`anyformer.training.cost.interleaved_speed` (a warm-up round, then rounds in which
each contender runs ``--steps`` steps in turn, the order rotated every round). Reported:
median tokens/s over rounds and the ratio anyformer / BERT (median of per-round ratios,
with their spread).

    python benchmarks/mlm_throughput.py            # prints a table, writes results/
    python benchmarks/mlm_throughput.py --quick    # a smoke run (tiny shapes, 1 round)
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
LN_EPS = 1e-12  # BERT's LayerNorm eps

SHAPES = {
    # a BERT-mini-like stack on byte-sized text
    "v512_d256_L4_T128": dict(vocab=512, d=256, depth=4, heads=4, seq=128, batch=16),
    # a wider vocabulary, where the tied output layer dominates
    "v8192_d256_L4_T128": dict(vocab=8192, d=256, depth=4, heads=4, seq=128, batch=16),
}
QUICK_SHAPES = {"v64_d32_L2_T16": dict(vocab=64, d=32, depth=2, heads=2, seq=16, batch=4)}


def anyformer_mlm(shape: dict) -> nn.Module:
    from anyformer.model.transformer import build_model

    return build_model(
        dict(
            kind="encoder",
            vocab_size=shape["vocab"],
            d_model=shape["d"],
            n_layers=shape["depth"],
            n_heads=shape["heads"],
            max_len=shape["seq"],
            position="learned",
            norm={"name": "layernorm", "eps": LN_EPS},
            norm_placement="post",
            embed_norm=True,
            ffn={"name": "mlp", "activation": "gelu", "mult": 4.0},
            head="lm",
            tie_embeddings=True,
        )
    )


def bert_mlm(shape: dict) -> nn.Module:
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["d"],
        num_hidden_layers=shape["depth"],
        num_attention_heads=shape["heads"],
        intermediate_size=4 * shape["d"],
        hidden_act="gelu",
        max_position_embeddings=shape["seq"],
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        layer_norm_eps=LN_EPS,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    return BertForMaskedLM(config)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def corrupted_batch(shape: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs, targets, chosen): BERT's 80/10/10 corruption of random tokens; the mask id
    is the last one of the vocabulary."""
    g = torch.Generator().manual_seed(0)
    b, t, v = shape["batch"], shape["seq"], shape["vocab"]
    targets = torch.randint(0, v - 1, (b, t), generator=g)
    chosen = torch.rand(b, t, generator=g) < 0.15
    roll = torch.rand(b, t, generator=g)
    inputs = targets.clone()
    inputs[chosen & (roll < 0.8)] = v - 1
    random_ids = torch.randint(0, v - 1, (b, t), generator=g)
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = random_ids[swap]
    return inputs, targets, chosen


def train_stepper(
    model: nn.Module,
    shape: dict,
    logits_of: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> Callable[[int], tuple[int, float]]:
    """One AdamW step of masked-token cross-entropy on the fixed corrupted batch."""
    from anyformer.spec import TrainSpec
    from anyformer.training.trainer import make_optimizer

    opt = make_optimizer(model, TrainSpec(lr=1e-4))
    inputs, targets, chosen = corrupted_batch(shape)

    def step(_: int) -> tuple[int, float]:
        logits = logits_of(inputs, chosen)  # [N, V] at the chosen positions
        loss = F.cross_entropy(logits, targets[chosen])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return inputs.numel(), 0.0

    return step


def measure(
    shape: dict, rounds: int, steps: int, max_gap: float = 0.03, full_readout: bool = False
) -> dict:
    """Interleaved tokens/s of anyformer and BERT at one shape."""
    from anyformer.training.cost import interleaved_speed

    torch.manual_seed(0)
    ours, bert = anyformer_mlm(shape).train(), bert_mlm(shape).train()
    params = {"anyformer": n_params(ours), "bert": n_params(bert)}
    gap = abs(params["anyformer"] - params["bert"]) / params["bert"]
    assert gap <= max_gap, f"parameter counts differ by {gap:.1%}: {params}"

    def ours_logits(ids: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        if full_readout:
            return ours(ids)[chosen]
        return ours(ids, readout_mask=chosen)

    steppers = {
        "anyformer": train_stepper(ours, shape, ours_logits),
        "bert": train_stepper(bert, shape, lambda ids, chosen: bert(input_ids=ids).logits[chosen]),
    }
    speeds = interleaved_speed(steppers, rounds, steps)
    per_round = {k: v["rounds_tokens_per_s"] for k, v in speeds.items()}
    ratios = [a / b for a, b in zip(per_round["anyformer"], per_round["bert"], strict=True)]
    return {
        "shape": shape,
        "params": params,
        "param_gap": gap,
        "tokens_per_s": {k: statistics.median(v) for k, v in per_round.items()},
        "rounds_tokens_per_s": per_round,
        "ratio_anyformer_vs_bert": statistics.median(ratios),
        "ratio_spread": [min(ratios), max(ratios)],
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=10, help="rounded up to a multiple of 2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny shapes, one round (smoke test)")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument(
        "--full-readout", action="store_true", help="anyformer computes every position's logits"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shapes = QUICK_SHAPES if args.quick else SHAPES
    if args.quick:
        args.steps, args.rounds = 1, 1
    gap = 0.1 if args.quick else 0.03  # BERT's extra parts weigh more in a tiny model
    results = {
        name: measure(s, args.rounds, args.steps, gap, args.full_readout)
        for name, s in shapes.items()
    }
    n_rounds = len(next(iter(results.values()))["rounds_tokens_per_s"]["bert"])
    print(f"threads {args.threads}, {n_rounds} rounds (rotated) x {args.steps} steps")
    print(f"{'shape':20s} {'params':>10s} {'bert params':>11s} {'anyformer':>10s} "
          f"{'bert':>10s} {'any/bert':>9s} {'spread':>12s}")  # fmt: skip
    for name, r in results.items():
        s, lo_hi = r["tokens_per_s"], r["ratio_spread"]
        print(
            f"{name:20s} {r['params']['anyformer']:10,d} {r['params']['bert']:11,d} "
            f"{s['anyformer']:10,.0f} {s['bert']:10,.0f} {r['ratio_anyformer_vs_bert']:9.2f} "
            f"{lo_hi[0]:5.2f}-{lo_hi[1]:<6.2f}"
        )
    print("tokens/s: median over rounds; any/bert: median of per-round ratios (spread: min-max)")
    record = {
        **benchmark_environment(args.threads, ("transformers",)),
        "rounds": n_rounds,
        "steps": args.steps,
        "anyformer_readout": "every position" if args.full_readout else "chosen positions",
        "shapes": results,
    }
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, RESULTS, 'mlm_throughput')}")
    return record


if __name__ == "__main__":
    main()
