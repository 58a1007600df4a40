"""Cached generation throughput: anyformer ``generate`` against HF ``GPT2LMHeadModel.generate``.

Both run the *same* GPT-2-shaped model: an anyformer decoder with learned positions,
pre-norm layernorm, a gelu MLP and tied embeddings is built, and its weights are copied
into a ``GPT2LMHeadModel`` (:func:`copy_to_gpt2`; GPT-2's ``Conv1D`` stores weights
transposed). Before timing, greedy outputs of the two are asserted identical and the
logits of a full forward equal. Then each model generates ``--new`` tokens greedily
(with its KV cache) from the same prompts, in rounds that alternate between the two
so machine drift hits both alike; the median tokens/s (wall clock, and per CPU second,
which a shared machine disturbs less) is reported with the ratio anyformer / HF
(target >= 1.5x), for each model size in :data:`CONFIGS`. Beside them runs the *weight
floor* (:func:`weight_floor`): the model's matrix products alone, which bounds what any
implementation of the same fp32 model can reach, so the record also says how much time
per token each generator spends beyond the products; and a *handwritten* decoder
(:func:`handwritten_decoder`), the same decode as one flat function of eager calls: the
least-overhead eager program, which says what share of it anyformer's general model
code reaches.

    python benchmarks/generate_throughput.py           # prints a table, writes results/
    python benchmarks/generate_throughput.py --quick   # a tiny smoke run (nothing written)
    python benchmarks/generate_throughput.py --configs small,reference,gpt2_small
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from anyformer.decoding import generate as decode
from anyformer.training.throughput import benchmark_environment, save_benchmark

RESULTS = Path(__file__).resolve().parent / "results"


def anyformer_gpt2(cfg: dict[str, int]) -> nn.Module:
    """An anyformer decoder with GPT-2's architecture."""
    from anyformer.model.transformer import build_model

    return build_model(
        dict(
            kind="decoder",
            vocab_size=cfg["vocab"],
            d_model=cfg["d"],
            n_layers=cfg["layers"],
            n_heads=cfg["heads"],
            max_len=cfg["max_len"],
            attention="softmax",
            position="learned",
            norm="layernorm",
            norm_placement="pre",
            ffn={"name": "mlp", "activation": "gelu", "mult": 4.0},
            tie_embeddings=True,
            bias=True,
            dropout=0.0,
        )
    ).eval()


def gpt2_config(cfg: dict[str, int]) -> Any:
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=cfg["vocab"],
        n_positions=cfg["max_len"],
        n_embd=cfg["d"],
        n_layer=cfg["layers"],
        n_head=cfg["heads"],
        n_inner=4 * cfg["d"],
        activation_function="gelu",  # exact GELU, as anyformer's mlp
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=0,
        attn_implementation="sdpa",
    )


@torch.no_grad()
def copy_to_gpt2(model: nn.Module, cfg: dict[str, int]) -> nn.Module:
    """A ``GPT2LMHeadModel`` holding ``model``'s weights (``model`` as built by
    :func:`anyformer_gpt2`). Linear weights ``[out, in]`` become Conv1D ``[in, out]``."""
    from transformers import GPT2LMHeadModel

    hf = GPT2LMHeadModel(gpt2_config(cfg)).eval()
    t = hf.transformer
    t.wte.weight.copy_(model.embed.weight)
    t.wpe.weight.copy_(model.position.table.weight)
    for block, layer in zip(model.blocks, t.h, strict=True):
        pairs = [
            (block.norm1, layer.ln_1, False),
            (block.mixer.qkv, layer.attn.c_attn, True),
            (block.mixer.out, layer.attn.c_proj, True),
            (block.norm2, layer.ln_2, False),
            (block.ffn.up, layer.mlp.c_fc, True),
            (block.ffn.down, layer.mlp.c_proj, True),
        ]
        for src, dst, transpose in pairs:
            dst.weight.copy_(src.weight.T if transpose else src.weight)
            dst.bias.copy_(src.bias)
    t.ln_f.weight.copy_(model.norm.weight)
    t.ln_f.bias.copy_(model.norm.bias)
    hf.tie_weights()
    return hf


def hf_generate(hf: nn.Module, prompt: torch.Tensor, new: int) -> torch.Tensor:
    return hf.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new,
        do_sample=False,
        use_cache=True,
        pad_token_id=0,
    )


def check_same(model: nn.Module, hf: nn.Module, prompt: torch.Tensor, new: int) -> float:
    """Assert identical greedy outputs; return the largest logit difference of a forward."""
    with torch.no_grad():
        ours = decode(model, prompt, new)
        theirs = hf_generate(hf, prompt, new)
        if not torch.equal(ours, theirs):
            raise AssertionError("anyformer and HF GPT-2 greedy outputs differ")
        diff = (model(ours) - hf(ours).logits).abs().max().item()
    if diff > 1e-3:
        raise AssertionError(f"anyformer and HF GPT-2 logits differ by {diff:.2e}")
    return diff


#: GPT-2's architecture at three sizes: a small laptop-scale model, where framework
#: overhead per generated token dominates; DESIGN.md's reference decoder, where reading
#: the weights once per token (memory bandwidth) is already most of the time at batch 1;
#: and GPT-2 small itself (124M parameters, its 50,257-token vocabulary), where it is
#: nearly all of it (not run by default: about three minutes).
CONFIGS = {
    "small": dict(layers=4, d=128, heads=4, vocab=256),
    "reference": dict(layers=6, d=384, heads=6, vocab=256),
    "gpt2_small": dict(layers=12, d=768, heads=12, vocab=50257),
}


def weight_floor(model: nn.Module, batch: int) -> Callable[[int], None]:
    """A generator of ``n`` tokens that does nothing but the model's matrix products: every
    ``nn.Linear`` once per token, on ``[batch, in]`` inputs, from the weight layout
    anyformer decodes with (column-major where :func:`column_major_linears` would use it).

    No implementation of the same fp32 model can decode faster than this (it streams each
    weight once per token and skips attention, norms, activations, caches and sampling),
    so ``floor tok/s / HF tok/s`` bounds the ratio any implementation could reach.
    """
    from anyformer.decoding.generation import column_major_candidates, column_major_weight

    column = {id(m) for m in column_major_candidates(model)}
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    weights = [(column_major_weight(m) if id(m) in column else m.weight, m.bias) for m in layers]
    inputs = [torch.randn(batch, m.in_features) for m in layers]

    def run(n: int) -> None:
        with torch.inference_mode():
            for _ in range(n):
                for x, (w, b) in zip(inputs, weights, strict=True):
                    F.linear(x, w, b)

    return run


def handwritten_decoder(model: nn.Module) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The same GPT-2 decode written as one flat function of plain ``torch.nn.functional``
    calls: no modules, no cache objects, no dispatch over components; one preallocated
    key/value buffer per block, the weights in the layout anyformer decodes with.

    It is the least-overhead *eager* program for this model (what a single-purpose
    script would run), so ``handwritten tok/s / HF tok/s`` is what an eager
    implementation reaches here, and anyformer's share of it is the price of its
    generality. Greedy only; outputs are checked equal to anyformer's.
    """
    from anyformer.decoding.generation import column_major_candidates, column_major_weight

    column = {id(m) for m in column_major_candidates(model)}

    def weight(linear: nn.Linear) -> torch.Tensor:
        return column_major_weight(linear) if id(linear) in column else linear.weight

    blocks = [
        (b.norm1, weight(b.mixer.qkv), b.mixer.qkv.bias, weight(b.mixer.out), b.mixer.out.bias,
         b.norm2, weight(b.ffn.up), b.ffn.up.bias, weight(b.ffn.down), b.ffn.down.bias)
        for b in model.blocks
    ]  # fmt: skip
    d, heads = model.spec.d_model, model.spec.n_heads
    embed, table, final = model.embed.weight, model.position.table.weight, model.norm
    head = weight(model.head)  # the tied embedding, column-major where anyformer's is

    @torch.inference_mode()
    def generate(prompt: torch.Tensor, new: int) -> torch.Tensor:
        batch, t = prompt.shape
        size = (batch, heads, t + new, d // heads)
        keys = [torch.zeros(size) for _ in blocks]
        values = [torch.zeros(size) for _ in blocks]
        tokens, pos, out = prompt, 0, [prompt]
        for _ in range(new):
            t = tokens.shape[1]
            x = F.embedding(tokens, embed) + table[pos : pos + t]
            for i, (n1, wqkv, bqkv, wout, bout, n2, wup, bup, wdown, bdown) in enumerate(blocks):
                h = F.layer_norm(x, (d,), n1.weight, n1.bias, n1.eps)
                qkv = F.linear(h, wqkv, bqkv).view(batch, t, 3, heads, d // heads)
                q, k, v = qkv.permute(2, 0, 3, 1, 4)
                keys[i][:, :, pos : pos + t] = k
                values[i][:, :, pos : pos + t] = v
                k, v = keys[i][:, :, : pos + t], values[i][:, :, : pos + t]
                y = F.scaled_dot_product_attention(q, k, v, is_causal=t > 1)
                x = x + F.linear(y.transpose(1, 2).reshape(batch, t, d), wout, bout)
                h = F.layer_norm(x, (d,), n2.weight, n2.bias, n2.eps)
                x = x + F.linear(F.gelu(F.linear(h, wup, bup)), wdown, bdown)
            h = F.layer_norm(x[:, -1], (d,), final.weight, final.bias, final.eps)
            tokens = F.linear(h, head).argmax(-1, keepdim=True)
            out.append(tokens)
            pos += t
        return torch.cat(out, dim=1)

    return generate


def time_contenders(
    contenders: dict[str, Callable[[], Any]], tokens: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Tokens/s of each contender per round (wall clock and per CPU second), after one
    warm-up call each; the rounds alternate between contenders so machine drift hits all
    alike."""
    for fn in contenders.values():  # warm-up
        fn()
    wall: dict[str, list[float]] = {name: [] for name in contenders}
    cpu: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            with torch.no_grad():
                fn()
            wall[name].append(tokens / (time.perf_counter() - start))
            cpu[name].append(tokens / (time.process_time() - start_cpu))
    return wall, cpu


def model_pair(
    cfg: dict[str, int], runs: dict[str, int]
) -> tuple[dict[str, int], nn.Module, nn.Module, torch.Generator]:
    """The config sized for the run (``max_len`` = prompt + new tokens), the seeded
    anyformer model, the HF GPT-2 holding its weights, and the generator prompts are
    drawn from."""
    cfg = {**cfg, "max_len": runs["prompt"] + runs["new"]}
    torch.manual_seed(0)
    model = anyformer_gpt2(cfg)
    return cfg, model, copy_to_gpt2(model, cfg), torch.Generator().manual_seed(0)


def measure_ragged(cfg: dict[str, int], runs: dict[str, int]) -> dict[str, Any]:
    """Prompts of different lengths in one batch: anyformer takes them padded at the end
    with a ``padding_mask`` (decoded in one pass, aligned at their ends), HF padded in
    front with an ``attention_mask`` (its batched-generation convention). Every row's
    new tokens are asserted identical between the two before timing."""
    cfg, model, hf, gen = model_pair(cfg, runs)
    batch, width, new = runs["batch"], runs["prompt"], runs["new"]
    lengths = torch.randint(max(1, width // 4), width + 1, (batch,), generator=gen)
    lengths[0] = width  # the longest prompt fills the width, the last is the shortest
    lengths[-1] = max(1, width // 4) if batch > 1 else width
    tokens = torch.randint(0, cfg["vocab"], (batch, width), generator=gen)
    mask = torch.arange(width) < lengths[:, None]  # real tokens first (anyformer)
    front = mask.flip(1)  # real tokens last (HF)
    ours = tokens.masked_fill(~mask, 0)
    theirs = torch.stack([row.roll(width - int(n)) for row, n in zip(ours, lengths)])

    def hf_ragged() -> torch.Tensor:
        return hf.generate(
            theirs, attention_mask=front.long(), max_new_tokens=new, do_sample=False,
            use_cache=True, pad_token_id=0,
        )  # fmt: skip

    with torch.no_grad():
        a, b = decode(model, ours, new, padding_mask=mask), hf_ragged()
    for row, n in enumerate(lengths.tolist()):
        if not torch.equal(a[row, n : n + new], b[row, width:]):
            raise AssertionError(f"row {row}: anyformer and HF GPT-2 ragged outputs differ")
    floor = weight_floor(model, batch)
    contenders = {
        "anyformer": lambda: decode(model, ours, new, padding_mask=mask),
        "hf_gpt2": hf_ragged,
        "weight_floor": lambda: floor(new),
    }
    wall, cpu = time_contenders(contenders, batch * new, runs["rounds"])
    median = {name: statistics.median(v) for name, v in wall.items()}
    return {
        "model": cfg,
        "prompt_lengths": lengths.tolist(),
        "tokens_per_s": median,
        "tokens_per_cpu_s": {name: statistics.median(v) for name, v in cpu.items()},
        "rounds": wall,
        "ratio_anyformer_vs_hf": median["anyformer"] / median["hf_gpt2"],
        "ratio_floor_vs_hf": median["weight_floor"] / median["hf_gpt2"],
    }


def measure(cfg: dict[str, int], runs: dict[str, int]) -> dict[str, Any]:
    """Check equality, then time both generators in alternating rounds (wall and CPU time)."""
    cfg, model, hf, gen = model_pair(cfg, runs)
    prompt = torch.randint(0, cfg["vocab"], (runs["batch"], runs["prompt"]), generator=gen)
    logit_diff = check_same(model, hf, prompt, runs["new"])
    floor = weight_floor(model, runs["batch"])
    handwritten = handwritten_decoder(model)
    if not torch.equal(handwritten(prompt, runs["new"]), decode(model, prompt, runs["new"])):
        raise AssertionError("the handwritten decoder and anyformer greedy outputs differ")
    contenders = {
        "anyformer": lambda: decode(model, prompt, runs["new"]),
        "hf_gpt2": lambda: hf_generate(hf, prompt, runs["new"]),
        "handwritten": lambda: handwritten(prompt, runs["new"]),
        "weight_floor": lambda: floor(runs["new"]),
    }
    wall, cpu = time_contenders(contenders, runs["batch"] * runs["new"], runs["rounds"])
    median = {name: statistics.median(v) for name, v in wall.items()}
    median_cpu = {name: statistics.median(v) for name, v in cpu.items()}
    return {
        "model": cfg,
        "max_logit_difference": logit_diff,
        "tokens_per_s": median,
        "tokens_per_cpu_s": median_cpu,
        "rounds": wall,
        "rounds_cpu": cpu,
        "ratio_anyformer_vs_hf": median["anyformer"] / median["hf_gpt2"],
        "ratio_cpu_time": median_cpu["anyformer"] / median_cpu["hf_gpt2"],
        # the most any implementation of this fp32 model could reach against HF here
        "ratio_floor_vs_hf": median["weight_floor"] / median["hf_gpt2"],
        # what the least-overhead eager program reaches, and anyformer's share of it
        "ratio_handwritten_vs_hf": median["handwritten"] / median["hf_gpt2"],
        "anyformer_share_of_handwritten": median["anyformer"] / median["handwritten"],
        # time per token beyond the matrix products, in ms
        "overhead_ms_per_token": {
            name: 1e3 * (1 / median[name] - 1 / median["weight_floor"]) * runs["batch"]
            for name in ("anyformer", "hf_gpt2", "handwritten")
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="small,reference", help=f"of {', '.join(CONFIGS)}")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new", type=int, default=128, help="generated tokens")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny model, one round")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the JSON")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument(
        "--ragged",
        action="store_true",
        help="a batch (--batch, e.g. 8) of prompts of different lengths; recorded apart",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = dict(batch=args.batch, prompt=args.prompt, new=args.new, rounds=args.rounds)
    configs = {name: CONFIGS[name] for name in args.configs.split(",")}
    if args.quick:
        configs = {"tiny": dict(layers=2, d=64, heads=4, vocab=128)}
        runs = dict(batch=2, prompt=8, new=8, rounds=1)
    env = benchmark_environment(args.threads, ("transformers",))  # load average before
    if args.ragged:
        return ragged_main(args, configs, runs, env)
    results = {name: measure(cfg, runs) for name, cfg in configs.items()}
    print(f"runs: {runs}, threads {args.threads}, load average {env['machine']['loadavg'][0]:.1f}")
    print(
        f"{'model':10s} {'anyformer tok/s':>16s} {'HF tok/s':>10s} {'ratio':>7s} "
        f"{'ratio (CPU time)':>17s} {'handwritten/HF':>15s} {'floor/HF':>9s} "
        f"{'ms/tok beyond the floor (ours, HF, handwritten)':>48s}"
    )
    for name, res in results.items():
        over = res["overhead_ms_per_token"]
        print(
            f"{name:10s} {res['tokens_per_s']['anyformer']:16,.1f} "
            f"{res['tokens_per_s']['hf_gpt2']:10,.1f} {res['ratio_anyformer_vs_hf']:6.2f}x "
            f"{res['ratio_cpu_time']:16.2f}x {res['ratio_handwritten_vs_hf']:14.2f}x "
            f"{res['ratio_floor_vs_hf']:8.2f}x "
            f"{over['anyformer']:28.2f}, {over['hf_gpt2']:.2f}, {over['handwritten']:.2f}"
        )
    print(
        "greedy outputs identical in every config (target ratio >= 1.5x). handwritten: the "
        "same decode as one flat eager function; floor: the matrix products alone, the "
        "most any implementation of this fp32 model could reach"
    )
    return finish_record(args, "generate_throughput", env, runs, results, target_ratio=1.5)


def finish_record(
    args: argparse.Namespace,
    name: str,
    env: dict[str, Any],
    runs: dict[str, int],
    results: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """The benchmark record (the load average after the runs added), saved as ``name``
    unless ``--no-save`` or ``--quick``."""
    env["machine"]["loadavg_after"] = list(os.getloadavg())
    record = {"benchmark": name, **env, "runs": runs, "results": results, **extra}
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, args.out, name)}")
    return record


def ragged_main(
    args: argparse.Namespace,
    configs: dict[str, dict[str, int]],
    runs: dict[str, int],
    env: dict[str, Any],
) -> dict[str, Any]:
    """``--ragged``: time, print and record (as ``generate_ragged``) every config."""
    results = {name: measure_ragged(cfg, runs) for name, cfg in configs.items()}
    print(f"runs: {runs}, threads {args.threads}, prompts of different lengths")
    print(
        f"{'model':10s} {'anyformer tok/s':>16s} {'HF tok/s':>10s} {'ratio':>7s} {'floor/HF':>9s}"
    )
    for name, res in results.items():
        speed = res["tokens_per_s"]
        print(
            f"{name:10s} {speed['anyformer']:16,.1f} {speed['hf_gpt2']:10,.1f} "
            f"{res['ratio_anyformer_vs_hf']:6.2f}x {res['ratio_floor_vs_hf']:8.2f}x"
        )
    print("every row's new tokens identical to HF's (left-padded, with an attention mask)")
    return finish_record(args, "generate_ragged", env, runs, results)


if __name__ == "__main__":
    main()
