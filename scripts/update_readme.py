"""Regenerate the generated parts of README.md (``make docs``): the component tables
from the registry, and the measured-speed table from the newest record of each benchmark
in ``benchmarks/results/``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from anyformer.registry import markdown_tables

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
BLOCKS = {
    "components": lambda: markdown_tables(),
    "benchmarks": lambda: benchmark_table(RESULTS),
}


def newest(folder: Path, stem: str) -> dict[str, Any] | None:
    """The newest ``<stem>-<date>.json`` record in ``folder`` (None if there is none)."""
    files = sorted(folder.glob(f"{stem}-????-??-??.json"))
    return json.loads(files[-1].read_text()) if files else None


def benchmark_table(folder: Path) -> str:
    """A markdown table: each benchmark's headline ratio, its target and the bound."""
    rows = ["| benchmark | measured | target | recorded |", "|---|---|---|---|"]
    train = newest(folder, "train_throughput")
    if train:
        peer = train["fastest_peer"]
        rows.append(
            f"| training tok/s vs the fastest peer ({peer}) | "
            f"{train['ratio_vs_fastest_peer']:.2f}x (the linear-product floor allows "
            f"{train['ratio_floor_vs_fastest_peer']:.2f}x) | >= 1.2x | {train['date'][:10]} |"
        )
    vit = newest(folder, "vit_throughput")
    if vit:
        for name, res in vit["shapes"].items():
            lo, hi = res["ratio_spread"]
            rows.append(
                f"| ViT training images/s vs timm, {name} | "
                f"{res['ratio_anyformer_vs_timm']:.2f}x ({lo:.2f}-{hi:.2f} over "
                f"{vit['rounds']} rounds; the linear-product floor allows "
                f"{res['ratio_floor_vs_timm']:.2f}x) | >= 1.0x | {vit['date'][:10]} |"
            )
    tst = newest(folder, "patchtst_throughput")
    if tst:
        for name, res in tst["shapes"].items():
            lo, hi = res["ratio_spread"]
            rows.append(
                f"| PatchTST training windows/s vs plain PyTorch, {name} | "
                f"{res['ratio_anyformer_vs_reference']:.2f}x ({lo:.2f}-{hi:.2f} over "
                f"{tst['rounds']} rounds; equal parameters, equal loss with copied weights; "
                f"load average {tst['machine']['loadavg'][0]:.1f}) | >= 0.95x | "
                f"{tst['date'][:10]} |"
            )
    acc = newest(folder, "vision_accuracy")
    if acc:
        walls = [r["wall_s"] for r in acc["runs"]]
        rows.append(
            f"| ViT on digits (`vision_quickstart`), id accuracy, mean of {acc['seeds']} seeds | "
            f"{acc['mean_accuracy']['id']:.3f} (logreg {acc['mean_baselines']['id']['logreg']:.3f}, "
            f"SVC {acc['mean_baselines']['id']['svc']:.3f}; {min(walls):.0f}-{max(walls):.0f} s "
            f"per seed on {acc['machine']['threads']} thread(s)) | >= 0.97 within 180 s | "
            f"{acc['date'][:10]} |"
        )
    gen = newest(folder, "generate_throughput")
    if gen:
        for name, res in gen["results"].items():
            m = res["model"]
            hand = ""
            if "ratio_handwritten_vs_hf" in res:  # records from 2026-12-01 on
                hand = f"a handwritten eager decode reaches {res['ratio_handwritten_vs_hf']:.2f}x, "
            rows.append(
                f"| cached generation vs HF GPT-2, {name} ({m['layers']}x{m['d']}) | "
                f"{res['ratio_anyformer_vs_hf']:.2f}x ({hand}the weight floor allows "
                f"{res['ratio_floor_vs_hf']:.2f}x) | >= {gen['target_ratio']}x | "
                f"{gen['date'][:10]} |"
            )
    seq2seq = newest(folder, "seq2seq_generate_throughput")
    if seq2seq:
        for name, res in seq2seq["results"].items():
            m = res["model"]
            peer = {"hf_t5": "HF T5", "hf_bart": "HF BART"}[res.get("peer", "hf_t5")]
            rows.append(
                f"| encoder-decoder cached generation vs {peer}, {name} "
                f"({m['layers']}+{m['layers']}x{m['d']}) | {res['ratio_anyformer_vs_hf']:.2f}x "
                f"(greedy outputs identical; load average "
                f"{seq2seq['machine']['loadavg'][0]:.1f}) | >= {seq2seq['target_ratio']}x | "
                f"{seq2seq['date'][:10]} |"
            )
    ragged = newest(folder, "generate_ragged")
    if ragged:
        batch = ragged["runs"]["batch"]
        for name, res in ragged["results"].items():
            m = res["model"]
            rows.append(
                f"| generation of {batch} prompts of different lengths vs HF GPT-2 "
                f"(left-padded), {name} ({m['layers']}x{m['d']}) | "
                f"{res['ratio_anyformer_vs_hf']:.2f}x (the weight floor allows "
                f"{res['ratio_floor_vs_hf']:.2f}x) | none | {ragged['date'][:10]} |"
            )
    pack = newest(folder, "packing")
    if pack:
        for kind, res in pack["results"].items():
            rows.append(
                f"| packed vs padded tok/s, {kind} ({pack['padding_ratio']:.0%} padding) | "
                f"{res['ratio_packed_vs_padded']:.2f}x | >= {pack['target_ratio']}x | "
                f"{pack['date'][:10]} |"
            )
    mix = newest(folder, "mixer_scaling")
    if mix:
        t = mix["targets"]
        growth = {k: v["ratio"] for k, v in t["growth_1k_to_8k"].items() if v["linear_cost"]}
        worst = max(growth, key=growth.get)
        rows.append(
            f"| linear vs softmax attention at 16k tokens | "
            f"{t['linear_vs_softmax_speedup_16k']:.1f}x | >= 3x | {mix['date'][:10]} |"
        )
        rows.append(
            f"| time growth 1k -> 8k tokens, linear-cost mixers (worst: {worst}) | "
            f"{growth[worst]:.1f}x | <= {t['linear_cost_max_growth']:.0f}x | {mix['date'][:10]} |"
        )
    onnx = newest(folder, "onnx_inference")
    if onnx:
        for name, res in onnx["results"].items():
            lo, hi = res["ratio_spread"]
            rows.append(
                f"| ONNX Runtime vs eager PyTorch inference, {name} ({res['batch']}x"
                f"{res['seq']}) | {res['ratio_eager_over_onnxruntime']:.2f}x ({lo:.2f}-{hi:.2f} "
                f"over {onnx['rounds']} rounds; logits within "
                f"{res['max_abs_difference_checked_shapes']:.0e}; load average "
                f"{onnx['machine']['loadavg'][0]:.1f}) | none | {onnx['date'][:10]} |"
            )
    i8 = newest(folder, "int8_inference")
    if i8 and "kernels" in i8:  # records from the digits ViT on
        sp, c = i8["speed"]["speedup_vs_float"], i8["comparison"]["id"]
        fb = f", fbgemm's int8 {sp['fbgemm_int8']:.2f}x" if "fbgemm_int8" in sp else ""
        m = i8["model"]
        rows.append(
            f"| int8 (dynamic) vs float32 inference of a trained digits ViT "
            f"({m['n_layers']}x{m['d_model']}), 1 thread | {sp['anyformer_int8']:.2f}x{fb}; "
            f"id accuracy {c['parent']:.3f} -> {c['quantized']:.3f}, "
            f"{i8['size_on_disk']['ratio']:.1f}x smaller on disk; CPU "
            f"{'+'.join(i8['cpu_flags']) or '?'} | >= 1.8x, drop <= 1% | {i8['date'][:10]} |"
        )
    tr = newest(folder, "token_reduction")
    if tr:
        for method in ("prune", "merge"):
            parts = [f"keep {q['keep']:g}: {q['speedup_vs_keep1']:.2f}x, acc {q['id']:.3f}"
                     for q in tr["variants"].values() if q["method"] == method]  # fmt: skip
            base = tr["variants"]["keep=1"]["id"]
            rows.append(
                f"| token reduction ({method}) vs the full sequence, digits ViT with "
                f"{tr['tokens']} tokens | {'; '.join(parts)} (keep 1: acc {base:.3f}) | none | "
                f"{tr['date'][:10]} |"
            )
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
        if start not in text:
            continue
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = f"{head}{start}\n{make()}{end}{tail}"
    return text


if __name__ == "__main__":
    text = README.read_text()
    new = render(text)
    if "--check" in sys.argv:
        sys.exit(0 if new == text else "README.md generated sections are stale: run `make docs`")
    README.write_text(new)
