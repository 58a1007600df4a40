"""Encoder-decoder cached generation: anyformer ``generate`` against HF
``T5ForConditionalGeneration.generate`` and ``BartForConditionalGeneration.generate`` on
identical weights.

T5: the anyformer model has T5's architecture (``kind: encoder_decoder``, pre-norm RMSNorm
without biases, the ``t5_bias`` relative position bias per stack, a relu MLP, no bias
anywhere, one shared token embedding and an untied head, as T5 v1.0 with
``tie_word_embeddings=False``); its weights are copied into a randomly initialised HF T5
of the same shape (:func:`copy_to_t5`, which is :func:`anyformer.interop.to_hf`; T5 does
not scale attention scores by ``1/sqrt(d_head)``, so its query weights are anyformer's
divided by ``sqrt(d_head)``).

BART ("BART: Denoising Sequence-to-Sequence Pre-training for Natural Language
Generation, Translation, and Comprehension", Lewis et al., 2020): a randomly initialised
HF ``BartForConditionalGeneration`` is converted into anyformer
(:func:`anyformer_from_bart`): learned positions (HF's table has two extra leading rows,
its offset of 2, which are dropped), ``embed_norm`` (BART's ``layernorm_embedding`` in
both stacks), post-norm LayerNorm blocks with biases everywhere, an exact-GELU MLP, one
shared embedding tied to the head (``final_logits_bias`` must be zero). Both decode from
BART's ``decoder_start_token_id`` (2); HF's generation is configured plainly
(:func:`plain_generation`: greedy, one beam, no forced BOS/EOS, no n-gram ban, no EOS).

Before timing, greedy outputs are asserted identical and the logits of a full forward
equal. Then each model encodes the same sources and generates ``--new`` tokens greedily
with its cache (anyformer: the source encoded once and each layer's cross-attention
keys/values computed once), in rounds that alternate between the two; the median
tokens/s and the ratio anyformer / HF (the issue's target: >= 1.3x) are reported for
each size in :data:`CONFIGS`.

    python benchmarks/seq2seq_generate_throughput.py           # a table, writes results/
    python benchmarks/seq2seq_generate_throughput.py --quick   # a tiny smoke run
"""

from __future__ import annotations

import argparse
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

#: Each family at two sizes: a small one where per-token overhead dominates, and a
#: released model's width and depth with a small vocabulary: t5-small's (d 512, 8 heads,
#: 6 + 6 layers, d_ff 2048) and bart-base's (d 768, 12 heads, 6 + 6 layers, d_ff 3072).
CONFIGS = {
    "small": dict(family="t5", layers=2, d=128, heads=4, d_ff=512, vocab=256),
    "t5_small_shape": dict(family="t5", layers=6, d=512, heads=8, d_ff=2048, vocab=512),
    "bart_small": dict(family="bart", layers=2, d=128, heads=4, d_ff=512, vocab=256),
    "bart_base_shape": dict(family="bart", layers=6, d=768, heads=12, d_ff=3072, vocab=512),
}
#: The quick mode's tiny model of each family.
QUICK = {
    "tiny": dict(family="t5", layers=1, d=64, heads=4, d_ff=128, vocab=64),
    "bart_tiny": dict(family="bart", layers=1, d=64, heads=4, d_ff=128, vocab=64),
}
#: The decoder's first token: T5's ``decoder_start_token_id`` (pad, 0), BART's (``</s>``, 2).
START = {"t5": 0, "bart": 2}


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
    """A ``T5ForConditionalGeneration`` computing what ``model`` computes:
    :func:`anyformer.interop.to_hf` (:mod:`anyformer.interop.archs.t5`: T5's query weights
    are anyformer's divided by ``sqrt(d_head)``, since T5 does not scale its scores; fused
    ``qkv`` rows split into q, k, v and the cross-attention's ``kv`` into k, v)."""
    from anyformer.interop import to_hf

    hf = to_hf(model)
    if hf.lm_head.weight is hf.shared.weight:
        raise AssertionError("HF T5 tied its head to the embedding; the mapping needs it untied")
    if hf.config.d_ff != cfg["d_ff"] or hf.config.num_layers != cfg["layers"]:
        raise AssertionError(f"T5 shape differs from {cfg}: {hf.config}")
    return hf


def hf_bart(cfg: dict[str, Any]) -> nn.Module:
    """A randomly initialised ``BartForConditionalGeneration`` of ``cfg``'s shape (no
    dropout, no embedding scale, ``init_std`` 0.05 so that greedy choices are not near
    ties), its generation configured plainly."""
    from transformers import BartConfig, BartForConditionalGeneration

    config = BartConfig(
        vocab_size=cfg["vocab"], max_position_embeddings=cfg["max_len"], d_model=cfg["d"],
        encoder_layers=cfg["layers"], decoder_layers=cfg["layers"],
        encoder_attention_heads=cfg["heads"], decoder_attention_heads=cfg["heads"],
        encoder_ffn_dim=cfg["d_ff"], decoder_ffn_dim=cfg["d_ff"], activation_function="gelu",
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=False,
        init_std=0.05, pad_token_id=1, bos_token_id=0, eos_token_id=2,
        decoder_start_token_id=START["bart"], forced_eos_token_id=None,
    )  # fmt: skip
    return plain_generation(BartForConditionalGeneration(config).eval())


def plain_generation(hf: nn.Module) -> nn.Module:
    """Set ``hf``'s generation to plain greedy decoding from its
    ``decoder_start_token_id``: one beam, no sampling, no forced BOS/EOS, no n-gram ban,
    no minimum length and no EOS (every row runs ``max_new_tokens``), which is what
    anyformer's ``generate`` does."""
    g = hf.generation_config
    g.num_beams, g.do_sample, g.num_beam_groups = 1, False, 1
    g.forced_bos_token_id = g.forced_eos_token_id = None
    g.no_repeat_ngram_size, g.repetition_penalty = 0, 1.0
    if g.min_length:  # (0 is its default; setting it makes generate warn of min_new_tokens)
        g.min_length = 0
    g.eos_token_id, g.max_length = None, None
    g.decoder_start_token_id = hf.config.decoder_start_token_id
    return hf


def anyformer_from_bart(hf: nn.Module) -> nn.Module:
    """The anyformer encoder-decoder computing what HF ``BartForConditionalGeneration``
    ``hf`` computes, its weights copied in.

    Learned positions (HF's table has ``max_position_embeddings + 2`` rows, the first two
    never read: its offset of 2), ``embed_norm`` (``layernorm_embedding``), post-norm
    blocks, fused ``qkv`` rows stacked from q, k, v (BART scales q by ``d_head ** -0.5``
    after its projection, bias included, which is anyformer's score scale), cross-
    attention ``kv`` from k, v. Refuses what anyformer does not compute: a scaled
    embedding, a non-zero ``final_logits_bias``, encoder and decoder of other widths,
    heads or FFN sizes, separate encoder and decoder embeddings, another activation."""
    from anyformer.model.transformer import build_model

    c = hf.config
    acts = {"gelu": "gelu", "relu": "relu", "silu": "silu", "swish": "silu"}
    problems = []
    if c.scale_embedding:
        problems.append("scale_embedding=True (anyformer's token embedding is not scaled)")
    if c.activation_function not in acts:
        problems.append(f"activation_function={c.activation_function!r} (valid: {list(acts)})")
    if c.encoder_attention_heads != c.decoder_attention_heads:
        problems.append("encoder_attention_heads != decoder_attention_heads")
    if c.encoder_ffn_dim != c.decoder_ffn_dim:
        problems.append("encoder_ffn_dim != decoder_ffn_dim")
    if torch.any(hf.final_logits_bias != 0):
        problems.append("a non-zero final_logits_bias (anyformer's lm head has no bias)")
    bart = hf.model
    if not (
        bart.encoder.embed_tokens.weight is bart.shared.weight is bart.decoder.embed_tokens.weight
    ):
        problems.append("encoder and decoder token embeddings that are not one table")
    if problems:
        raise ValueError("cannot convert this BART into anyformer: " + "; ".join(problems))
    tied = hf.lm_head.weight is bart.shared.weight
    model = build_model(
        dict(
            kind="encoder_decoder",
            vocab_size=c.vocab_size,
            d_model=c.d_model,
            n_layers=c.decoder_layers,
            encoder={"n_layers": c.encoder_layers},
            n_heads=c.decoder_attention_heads,
            max_len=c.max_position_embeddings,
            attention="softmax",
            position="learned",
            norm={"name": "layernorm", "eps": 1e-5},  # torch's LayerNorm default, BART's
            norm_placement="post",
            ffn={
                "name": "mlp",
                "activation": acts[c.activation_function],
                "mult": c.decoder_ffn_dim / c.d_model,
            },
            bias=True,
            tie_embeddings=tied,
            share_embeddings=True,
            embed_norm=True,
        )  # fmt: skip
    )
    state: dict[str, torch.Tensor] = {
        "embed.weight": bart.shared.weight,
        "encoder.embed.weight": bart.shared.weight,
        "head.weight": hf.lm_head.weight,
    }

    def linear(name: str, *parts: nn.Linear) -> None:
        state[f"{name}.weight"] = torch.cat([p.weight for p in parts])
        state[f"{name}.bias"] = torch.cat([p.bias for p in parts])

    for prefix, stack in (("encoder.", bart.encoder), ("", bart.decoder)):
        offset = stack.embed_positions.offset  # 2: rows 0 and 1 are never read
        state[f"{prefix}position.table.weight"] = stack.embed_positions.weight[offset:]
        linear(f"{prefix}embed_norm", stack.layernorm_embedding)
        for i, layer in enumerate(stack.layers):
            pre = f"{prefix}blocks.{i}"
            att = layer.self_attn
            linear(f"{pre}.mixer.qkv", att.q_proj, att.k_proj, att.v_proj)
            linear(f"{pre}.mixer.out", att.out_proj)
            linear(f"{pre}.norm1", layer.self_attn_layer_norm)
            if not prefix:  # the decoder's cross-attention
                cross = layer.encoder_attn
                linear(f"{pre}.cross.q", cross.q_proj)
                linear(f"{pre}.cross.kv", cross.k_proj, cross.v_proj)
                linear(f"{pre}.cross.out", cross.out_proj)
                linear(f"{pre}.norm_cross", layer.encoder_attn_layer_norm)
            linear(f"{pre}.ffn.up", layer.fc1)
            linear(f"{pre}.ffn.down", layer.fc2)
            linear(f"{pre}.norm2", layer.final_layer_norm)
    with torch.no_grad():
        model.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=True)
    return model.eval()


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


def ours_generate(
    model: nn.Module, source: torch.Tensor, new: int, start_id: int = START["t5"]
) -> torch.Tensor:
    """anyformer's cached greedy generation of ``new`` tokens after ``start_id``."""
    start = torch.full((source.shape[0], 1), start_id, dtype=torch.long)
    return decode(model, start, new, source=source, use_cache=True)


def check_same(
    model: nn.Module,
    hf: nn.Module,
    source: torch.Tensor,
    new: int,
    start_id: int = START["t5"],
    peer: str = "HF T5",
) -> float:
    """Assert identical greedy outputs; return the largest logit difference of a forward."""
    with torch.no_grad():
        ours = ours_generate(model, source, new, start_id)
        theirs = hf_generate(hf, source, new)
        if not torch.equal(ours, theirs):
            raise AssertionError(f"anyformer and {peer} greedy outputs differ:\n{ours}\n{theirs}")
        logits = model(ours, source=source)
        ref = hf(input_ids=source, decoder_input_ids=ours).logits
        diff = (logits - ref).abs().max().item()
    if diff > 1e-3:
        raise AssertionError(f"anyformer and {peer} logits differ by {diff:.2e}")
    return diff


def build_pair(cfg: dict[str, Any]) -> tuple[nn.Module, nn.Module]:
    """``(anyformer model, HF model)`` with identical weights for ``cfg``'s family."""
    torch.manual_seed(0)
    if cfg["family"] == "bart":
        hf = hf_bart(cfg)
        return anyformer_from_bart(hf), hf
    model = anyformer_t5(cfg).eval()
    return model, copy_to_t5(model, cfg)


def measure(cfg: dict[str, Any], runs: dict[str, int]) -> dict[str, Any]:
    """Check equality, then time both generators in alternating rounds."""
    cfg = {**cfg, "max_len": max(runs["source"], runs["new"] + 1)}
    family = cfg["family"]
    model, hf = build_pair(cfg)
    start_id = START[family]
    gen = torch.Generator().manual_seed(0)
    low = 3 if family == "bart" else 2  # no special token (BART: bos 0, pad 1, eos 2)
    source = torch.randint(low, cfg["vocab"], (runs["batch"], runs["source"]), generator=gen)
    peer = f"hf_{family}"
    logit_diff = check_same(model, hf, source, runs["new"], start_id, f"HF {family.upper()}")
    contenders = {
        "anyformer": lambda: ours_generate(model, source, runs["new"], start_id),
        peer: lambda: hf_generate(hf, source, runs["new"]),
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
        "peer": peer,
        "ratio_anyformer_vs_hf": median["anyformer"] / median[peer],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
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
        configs = {
            name: cfg
            for name, cfg in QUICK.items()
            if any(cfg["family"] == CONFIGS[c]["family"] for c in args.configs.split(","))
        }
        runs = dict(batch=2, source=8, new=8, rounds=1)
    env = benchmark_environment(args.threads, ("transformers",))
    results = {name: measure(cfg, runs) for name, cfg in configs.items()}
    print(f"runs: {runs}, threads {args.threads}, load average {env['machine']['loadavg'][0]:.1f}")
    print(f"{'model':16s} {'peer':8s} {'anyformer tok/s':>16s} {'HF tok/s':>12s} {'ratio':>7s}")
    for name, res in results.items():
        tps = res["tokens_per_s"]
        print(
            f"{name:16s} {res['peer']:8s} {tps['anyformer']:16,.1f} {tps[res['peer']]:12,.1f} "
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
