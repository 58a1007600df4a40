"""Encoder-decoder cached generation: anyformer ``generate`` against HF
``T5ForConditionalGeneration.generate`` on identical weights.

The anyformer model has T5's architecture (``kind: encoder_decoder``, pre-norm RMSNorm
without biases, the ``t5_bias`` relative position bias per stack, a relu MLP, no bias
anywhere, one shared token embedding and an untied head, as T5 v1.0 with
``tie_word_embeddings=False``); its weights are copied into a randomly initialised HF T5
of the same shape (:func:`copy_to_t5`; T5 does not scale attention scores by
``1/sqrt(d_head)``, so its query weights are anyformer's divided by ``sqrt(d_head)``).
Before timing, greedy outputs are asserted identical and the logits of a full forward
equal. Then each model encodes the same sources and generates ``--new`` tokens greedily
with its cache (anyformer: the source encoded once and each layer's cross-attention
keys/values computed once), in rounds that alternate between the two; the median
tokens/s and the ratio anyformer / HF (the issue's target: >= 1.3x) are reported for
each size in :data:`CONFIGS`.

BART (post-norm with an extra norm after the embeddings, learned positions offset by 2)
has no anyformer layout of the same function, so it is not compared here.

    python benchmarks/seq2seq_generate_throughput.py           # a table, writes results/
    python benchmarks/seq2seq_generate_throughput.py --quick   # a tiny smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyformer.decoding import generate as decode
from anyformer.training.throughput import benchmark_environment, save_benchmark

RESULTS = Path(__file__).resolve().parent / "results"

#: T5's shape at two sizes: a small one where per-token overhead dominates, and t5-small's
#: width and depth (d 512, 8 heads, 6 + 6 layers, d_ff 2048) with a small vocabulary.
CONFIGS = {
    "small": dict(layers=2, d=128, heads=4, d_ff=512, vocab=256),
    "t5_small_shape": dict(layers=6, d=512, heads=8, d_ff=2048, vocab=512),
}


def anyformer_t5(cfg: dict[str, int]) -> nn.Module:
    """An anyformer encoder-decoder with T5's architecture."""
    from anyformer.model.transformer import build_model

    return build_model(
        dict(
            kind="encoder_decoder",
            vocab_size=cfg["vocab"],
            d_model=cfg["d"],
            n_layers=cfg["layers"],
            n_heads=cfg["heads"],
            max_len=cfg["max_len"],
            attention="softmax",
            position={"name": "t5_bias", "n_buckets": 32, "max_distance": 128},
            norm={"name": "rmsnorm", "eps": 1e-6},
            norm_placement="pre",
            ffn={"name": "mlp", "activation": "relu", "mult": cfg["d_ff"] / cfg["d"]},
            bias=False,
            tie_embeddings=False,
            share_embeddings=True,
            init_std=0.05,
        )
    )


def copy_to_t5(model: nn.Module, cfg: dict[str, int]) -> nn.Module:
    """A ``T5ForConditionalGeneration`` computing what ``model`` computes.

    anyformer scales scores by ``1/sqrt(d_head)``; T5 does not, so T5's query weights are
    anyformer's divided by ``sqrt(d_head)``. Fused ``qkv`` rows split into T5's q, k, v and
    the cross-attention's ``kv`` into k, v."""
    from transformers import T5Config, T5ForConditionalGeneration

    d, heads = cfg["d"], cfg["heads"]
    d_head = d // heads
    config = T5Config(
        vocab_size=cfg["vocab"], d_model=d, d_kv=d_head, d_ff=cfg["d_ff"],
        num_layers=cfg["layers"], num_decoder_layers=cfg["layers"], num_heads=heads,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        dropout_rate=0.0, layer_norm_epsilon=1e-6, feed_forward_proj="relu",
        tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    config.tie_word_embeddings = False  # (the keyword alone does not untie them here)
    hf = T5ForConditionalGeneration(config).eval()
    if hf.lm_head.weight is hf.shared.weight:
        raise AssertionError("HF T5 tied its head to the embedding; the mapping needs it untied")
    scale = 1.0 / math.sqrt(d_head)
    state: dict[str, torch.Tensor] = {"shared.weight": model.embed.weight}
    state["encoder.embed_tokens.weight"] = model.embed.weight
    state["decoder.embed_tokens.weight"] = model.embed.weight
    state["lm_head.weight"] = model.head.weight
    for side, stack in (("encoder", model.encoder), ("decoder", model)):
        state[f"{side}.final_layer_norm.weight"] = stack.norm.weight
        rel = stack.position.bias.weight
        state[f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = rel
        for i, block in enumerate(stack.blocks):
            pre = f"{side}.block.{i}.layer"
            q, k, v = block.mixer.qkv.weight.split(d, dim=0)
            state[f"{pre}.0.SelfAttention.q.weight"] = q * scale
            state[f"{pre}.0.SelfAttention.k.weight"] = k
            state[f"{pre}.0.SelfAttention.v.weight"] = v
            state[f"{pre}.0.SelfAttention.o.weight"] = block.mixer.out.weight
            state[f"{pre}.0.layer_norm.weight"] = block.norm1.weight
            ff = 1
            if side == "decoder":
                ck, cv = block.cross.kv.weight.split(d, dim=0)
                state[f"{pre}.1.EncDecAttention.q.weight"] = block.cross.q.weight * scale
                state[f"{pre}.1.EncDecAttention.k.weight"] = ck
                state[f"{pre}.1.EncDecAttention.v.weight"] = cv
                state[f"{pre}.1.EncDecAttention.o.weight"] = block.cross.out.weight
                state[f"{pre}.1.layer_norm.weight"] = block.norm_cross.weight
                ff = 2
            state[f"{pre}.{ff}.DenseReluDense.wi.weight"] = block.ffn.up.weight
            state[f"{pre}.{ff}.DenseReluDense.wo.weight"] = block.ffn.down.weight
            state[f"{pre}.{ff}.layer_norm.weight"] = block.norm2.weight
    with torch.no_grad():
        missing, unexpected = hf.load_state_dict(
            {k: v.detach().clone() for k, v in state.items()}, strict=False
        )
    if unexpected or missing:
        raise AssertionError(f"T5 weights not mapped: missing {missing}, unexpected {unexpected}")
    return hf


def hf_generate(hf: nn.Module, source: torch.Tensor, new: int) -> torch.Tensor:
    return hf.generate(
        input_ids=source,
        attention_mask=torch.ones_like(source),
        max_new_tokens=new,
        min_new_tokens=new,
        do_sample=False,
        use_cache=True,
        eos_token_id=None,
    )


def ours_generate(model: nn.Module, source: torch.Tensor, new: int) -> torch.Tensor:
    start = torch.zeros(source.shape[0], 1, dtype=torch.long)  # T5's decoder start: pad 0
    return decode(model, start, new, source=source, use_cache=True)


def check_same(model: nn.Module, hf: nn.Module, source: torch.Tensor, new: int) -> float:
    """Assert identical greedy outputs; return the largest logit difference of a forward."""
    with torch.no_grad():
        ours = ours_generate(model, source, new)
        theirs = hf_generate(hf, source, new)
        if not torch.equal(ours, theirs):
            raise AssertionError(f"anyformer and HF T5 greedy outputs differ:\n{ours}\n{theirs}")
        logits = model(ours, source=source)
        ref = hf(input_ids=source, decoder_input_ids=ours).logits
        diff = (logits - ref).abs().max().item()
    if diff > 1e-3:
        raise AssertionError(f"anyformer and HF T5 logits differ by {diff:.2e}")
    return diff


def measure(cfg: dict[str, int], runs: dict[str, int]) -> dict[str, Any]:
    """Check equality, then time both generators in alternating rounds."""
    cfg = {**cfg, "max_len": max(runs["source"], runs["new"] + 1)}
    torch.manual_seed(0)
    model = anyformer_t5(cfg).eval()
    hf = copy_to_t5(model, cfg)
    gen = torch.Generator().manual_seed(0)
    source = torch.randint(2, cfg["vocab"], (runs["batch"], runs["source"]), generator=gen)
    logit_diff = check_same(model, hf, source, runs["new"])
    contenders = {
        "anyformer": lambda: ours_generate(model, source, runs["new"]),
        "hf_t5": lambda: hf_generate(hf, source, runs["new"]),
    }
    for fn in contenders.values():  # warm-up
        with torch.no_grad():
            fn()
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    tokens = runs["batch"] * runs["new"]
    for _ in range(runs["rounds"]):
        for name, fn in contenders.items():
            start = time.perf_counter()
            with torch.no_grad():
                fn()
            wall[name].append(tokens / (time.perf_counter() - start))
    median = {name: statistics.median(v) for name, v in wall.items()}
    return {
        "model": cfg,
        "max_logit_difference": logit_diff,
        "tokens_per_s": median,
        "rounds": wall,
        "ratio_anyformer_vs_hf": median["anyformer"] / median["hf_t5"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--configs", default="small,t5_small_shape", help=f"of {', '.join(CONFIGS)}"
    )
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--source", type=int, default=32, help="source tokens")
    parser.add_argument("--new", type=int, default=64, help="generated tokens")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny model, one round")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = dict(batch=args.batch, source=args.source, new=args.new, rounds=args.rounds)
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    if args.quick:
        configs = {"tiny": dict(layers=1, d=64, heads=4, d_ff=128, vocab=64)}
        runs = dict(batch=2, source=8, new=8, rounds=1)
    env = benchmark_environment(args.threads, ("transformers",))
    results = {name: measure(cfg, runs) for name, cfg in configs.items()}
    print(f"runs: {runs}, threads {args.threads}, load average {env['machine']['loadavg'][0]:.1f}")
    print(f"{'model':16s} {'anyformer tok/s':>16s} {'HF T5 tok/s':>12s} {'ratio':>7s}")
    for name, res in results.items():
        tps = res["tokens_per_s"]
        print(
            f"{name:16s} {tps['anyformer']:16,.1f} {tps['hf_t5']:12,.1f} "
            f"{res['ratio_anyformer_vs_hf']:6.2f}x"
        )
    print("greedy outputs identical in every config (target ratio >= 1.3x)")
    env["machine"]["loadavg_after"] = list(os.getloadavg())
    record = {
        "benchmark": "seq2seq_generate_throughput",
        **env,
        "runs": runs,
        "results": results,
        "target_ratio": 1.3,
    }
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, args.out, 'seq2seq_generate_throughput')}")
    return record


if __name__ == "__main__":
    main()
