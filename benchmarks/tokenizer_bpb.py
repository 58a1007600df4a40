"""Tokenizers on code at equal training steps: bits per byte of UTF-8 ``bytes``, byte-level
``bpe`` and ``unigram`` (each at two equal vocabulary sizes) on ``code_lm``.

Every variant trains the same decoder (width 64, 2 layers, 4 heads, rotary positions) on
the same functions in the same order (``code_lm`` draws a step's rows by index, whatever
the tokenizer) for the same steps, batch and learning rate; only the tokenizer (and so the
embedding and unembedding size) differs. Bits per byte compare across tokenizers only
over the same bytes: ``code_lm`` divides a row's summed cross-entropy (in bits) by the
bytes its scored target tokens stand for, but a row is a function's first ``seq_len``
*tokens*, which covers more of the function under a subword tokenizer. So every function
is cut to its first ``max_chars`` characters before tokenizing and ``seq_len`` is set to
hold them all under every tokenizer; the record's ``scored_bytes`` (tokens x bytes per
token of the ``id`` evaluation) is then the same for every variant, and each row's
separator is scored by all of them. Recorded per variant: ``id`` bits per byte (held-out
library modules) and ``ood`` (the library's test suite), bytes per token (its inverse,
tokens per byte), the unigram baseline's bits per byte under the same tokenizer,
parameters, and wall time (one thread; tokenizer training included, cached afterwards).

    python benchmarks/tokenizer_bpb.py                  # idlelib, 300 steps, writes results/
    python benchmarks/tokenizer_bpb.py --seeds 2
    python benchmarks/tokenizer_bpb.py --quick          # a smoke run (few steps, tiny library)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from anyformer.training.throughput import benchmark_environment, save_benchmark

RESULTS = Path(__file__).resolve().parent / "results"
#: (tokenizer, vocabulary size) of each variant; bytes has 256 ids whatever is asked.
VARIANTS = (("bytes", 256), ("bpe", 1024), ("unigram", 1024), ("bpe", 4096), ("unigram", 4096))
LIBRARY = "idlelib"  # ~1,000 training functions, ~200 held out (id), its test suite (ood)


def variant_spec(tokenizer: str, vocab: int, seed: int, args: argparse.Namespace) -> dict:
    """The run of one tokenizer: the same model, data and budget for every variant."""
    task: dict[str, Any] = {"name": "code_lm", "tokenizer": tokenizer, "root": args.root,
                            "max_chars": args.max_chars, "seq_len": args.max_chars + 64,
                            "val_fraction": args.val_fraction}  # fmt: skip
    if tokenizer != "bytes":
        task["vocab_size"] = vocab
    model = {"kind": "decoder", "d_model": args.d_model, "n_layers": 2, "n_heads": 4,
             "position": "rope", "max_len": args.max_chars + 64}  # fmt: skip
    train = {"steps": args.steps, "batch_size": args.batch_size, "lr": 3e-3,
             "warmup_steps": max(args.steps // 20, 2), "eval_size": args.eval_size,
             "eval_every": 100000, "checkpoint_every": 100000, "threads": args.threads,
             "seed": seed, "progress": False}  # fmt: skip
    return {"name": "tokenizer_bpb", "model": model, "task": task, "train": train}


def run_variant(tokenizer: str, vocab: int, seed: int, args: argparse.Namespace) -> dict:
    """Train one variant in a temporary run folder; its final metrics and wall time."""
    from anyformer.lab.compare import count_params
    from anyformer.lab.run import run_experiment
    from anyformer.spec import ExperimentSpec

    spec = ExperimentSpec.from_dict(variant_spec(tokenizer, vocab, seed, args))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = run_experiment(spec, out=tmp)
        wall = time.perf_counter() - start
        params = count_params(run.spec)
    final = run.result.final
    out: dict[str, Any] = {"tokenizer": tokenizer, "vocab_size": vocab, "seed": seed,
                           "params": params, "wall_s": round(wall, 1)}  # fmt: skip
    for split in ("id", "ood"):
        m = final[split]
        out[split] = {
            "bits_per_byte": m["bits_per_byte"],
            "bits_per_token": m["bits_per_token"],
            "bytes_per_token": m["bytes_per_token"],
            "tokens_per_byte": 1.0 / m["bytes_per_token"],
            "scored_bytes": round(m["tokens"] * m["bytes_per_token"]),
            "unigram_bits_per_byte": m["baselines"]["unigram"]["bits_per_byte"],
        }
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--max-chars", type=int, default=256)
    parser.add_argument("--eval-size", type=int, default=200)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--root", default=None, help=f"library folder (default: stdlib {LIBRARY})")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny library, 10 steps")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    from anyformer.tasks.text import stdlib_root

    variants = VARIANTS
    if args.quick:
        from anyformer.lab.findings.code import quick_library

        args.root = args.root or quick_library()
        args.steps, args.batch_size, args.max_chars, args.eval_size = 10, 4, 96, 8
        args.d_model, args.seeds, args.val_fraction = 32, 1, 0.3
        variants = (("bytes", 256), ("bpe", 300), ("unigram", 300))
    args.root = args.root or str(stdlib_root() / LIBRARY)
    runs = [run_variant(t, v, s, args) for s in range(args.seeds) for t, v in variants]
    summary = {}
    for t, v in variants:
        mine = [r for r in runs if r["tokenizer"] == t and r["vocab_size"] == v]
        summary[f"{t}-{v}"] = {
            split: {key: statistics.fmean(r[split][key] for r in mine)
                    for key in ("bits_per_byte", "tokens_per_byte", "unigram_bits_per_byte")}
            for split in ("id", "ood")
        } | {"wall_s": statistics.fmean(r["wall_s"] for r in mine), "params": mine[0]["params"]}  # fmt: skip
    base = summary["bytes-256"]["id"]["bits_per_byte"]
    for row in summary.values():
        row["id_bpb_vs_bytes"] = row["id"]["bits_per_byte"] / base
    same = len({r["id"]["scored_bytes"] for r in runs}) == 1
    record = {
        **benchmark_environment(args.threads, ("tokenizers", "numpy")),
        "quick": args.quick,
        "library": args.root,
        "settings": {
            k: getattr(args, k)
            for k in ("steps", "batch_size", "d_model", "max_chars", "eval_size", "seeds")
        },  # fmt: skip
        "runs": runs,
        "summary": summary,
        "same_scored_bytes": same,
    }
    print(f"{'variant':>14} {'id bpb':>7} {'ood bpb':>7} {'tok/byte':>8} {'unigram':>7} "
          f"{'vs bytes':>8} {'params':>8} {'wall s':>6}")  # fmt: skip
    for name, row in summary.items():
        print(f"{name:>14} {row['id']['bits_per_byte']:7.3f} {row['ood']['bits_per_byte']:7.3f} "
              f"{row['id']['tokens_per_byte']:8.3f} {row['id']['unigram_bits_per_byte']:7.3f} "
              f"{row['id_bpb_vs_bytes']:8.3f} {row['params']:8d} {row['wall_s']:6.1f}")  # fmt: skip
    print(
        f"every variant scored the same id bytes: {same} "
        f"({sorted({r['id']['scored_bytes'] for r in runs})})"
    )
    if not (args.no_save or args.quick):
        print(f"wrote {save_benchmark(record, RESULTS, 'tokenizer_bpb')}")
    return record


if __name__ == "__main__":
    main()
