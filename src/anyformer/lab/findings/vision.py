"""Findings about small vision Transformers on ``digits`` (8x8 images, ood: rotated).

Every model here reads the 8x8 digit as 16 tokens (a 4x4 grid) and ends in the
``classify`` head; the checks read the ``accuracy`` of the ``id`` split and the task's
own baselines on the same images (``baselines.logreg`` and ``baselines.majority``).
A model counts as having learned the task when its accuracy reaches the logistic
regression's within ``LOGREG_MARGIN`` and is well clear of the majority class
(:func:`learned_bar`).
"""

from __future__ import annotations

from typing import Any

from anyformer.lab.compare import CompareResult
from anyformer.lab.findings.base import Comparison, Finding, Verdict, quick_train
from anyformer.registry import NoParams, Paper, register

#: a model learned digits when it is at most this far below the logistic regression ...
LOGREG_MARGIN = 0.15
#: ... and at least this far above the majority class
MAJORITY_MARGIN = 0.5


def learned_bar(result: CompareResult, label: str) -> float:
    """The ``id`` accuracy a model must reach to count as having learned ``digits``:
    ``max(logreg - LOGREG_MARGIN, majority + MAJORITY_MARGIN)`` of the same evaluation."""
    logreg = result.mean(label, "baselines.logreg.accuracy")
    majority = result.mean(label, "baselines.majority.accuracy")
    return max(logreg - LOGREG_MARGIN, majority + MAJORITY_MARGIN)


def _digits(name: str, model: dict[str, Any], quick: bool, steps: int = 400) -> dict[str, Any]:
    """A base experiment on ``digits`` (rotated ood) with one training thread."""
    train = {"steps": steps, "batch_size": 64, "lr": 3e-3, "warmup_steps": 30, "eval_size": 360,
             "threads": 1}  # fmt: skip
    if quick:
        model = {**model, "d_model": 32, "n_layers": 1, "n_heads": 2}
        train = quick_train(lr=3e-3, threads=1)
    train |= {"eval_every": 100000, "checkpoint_every": 100000}
    return {"name": name, "model": model, "task": {"name": "digits"}, "train": train}


def _ci95(result: CompareResult, label: str) -> float:
    """Half-width of the 95% interval of a variant's ``id`` accuracy over its seeds."""
    return float(result.summary[label]["id"]["accuracy"].get("ci95", 0.0))


def _learned_numbers(r: CompareResult, labels: dict[str, str]) -> dict[str, float]:
    """``id`` accuracy of each variant and the baselines (of the first variant's runs)."""
    first = next(iter(labels.values()))
    numbers = {f"{name} id accuracy": r.mean(label, "accuracy") for name, label in labels.items()}
    numbers |= {f"{name} ood accuracy": r.mean(label, "accuracy", "ood")
                for name, label in labels.items()}  # fmt: skip
    numbers |= {f"{name} id accuracy ci95": _ci95(r, label) for name, label in labels.items()}
    numbers["logreg id accuracy"] = r.mean(first, "baselines.logreg.accuracy")
    numbers["majority id accuracy"] = r.mean(first, "baselines.majority.accuracy")
    numbers["learned at"] = learned_bar(r, first)
    return numbers


CVT = Paper(
    "CvT: Introducing Convolutions to Vision Transformers", 2021, "Wu et al."
)  # fmt: skip


@register(
    "finding",
    "conv_embedding_beats_patches",
    paper=CVT,
    summary="a convolutional token embedding beats plain patch embedding on small data at "
    "equal parameters",
    params=NoParams,
)
class ConvEmbeddingBeatsPatches(Finding):
    """Two ViTs on ``digits`` (1,437 training images) that differ only in how the image
    becomes tokens: ``patches`` (non-overlapping 2x2 patches, linear projection) and
    ``conv_stem`` (CvT's overlapping 3x3 convolution, stride 2, padding 1, then a
    LayerNorm); both give a 4x4 grid of 16 tokens plus a CLS token, learned positions,
    d_model 64, 2 layers. Their parameter counts differ only by the embedding (within 1%).
    Holds when the convolutional embedding's mean ``id`` accuracy over the seeds is at
    least ``lead`` (0.01) above the patch embedding's. Inconclusive when neither model
    learned the task (``id`` accuracy below the logistic regression's minus 0.15 or the
    majority class plus 0.5, whichever is higher), or when the parameter counts are more
    than 5% apart (the claim is at equal parameters)."""

    claim = (
        "A convolutional token embedding (CvT's overlapping conv stem) gives a vision "
        "Transformer higher accuracy on small data than plain patch embedding at equal "
        "parameters."
    )
    lead = 0.01
    params_tolerance = 0.05
    embedders = ["patches", "conv_stem"]

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        model = {"kind": "encoder", "embedder": {"name": "patches", "patch_size": 2, "cls": True},
                 "position": "learned", "d_model": 64, "n_layers": 2, "n_heads": 4, "max_len": 17,
                 "head": "classify", "pool": "first"}  # fmt: skip
        base = _digits("conv_embedding_beats_patches", model, quick)
        axes = [
            (
                "model.embedder",
                [
                    "{name: patches, patch_size: 2, cls: true}",
                    "{name: conv_stem, kernel: 3, stride: 2, cls: true}",
                ],
            )
        ]
        return {"main": Comparison(base, axes, seeds=1 if quick else 3)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        patches, conv = (v.label for v in r.variants)
        numbers = _learned_numbers(r, {"patches": patches, "conv_stem": conv})
        p_params, c_params = (float(v.params) for v in r.variants)
        gap = abs(c_params - p_params) / max(p_params, 1.0)
        numbers |= {"patches params": p_params, "conv_stem params": c_params}
        lead = numbers["conv_stem id accuracy"] - numbers["patches id accuracy"]
        best = max(numbers["conv_stem id accuracy"], numbers["patches id accuracy"])
        learned = best >= numbers["learned at"]
        return Verdict.decide(
            lead >= self.lead,
            numbers,
            f"conv_stem − patches id accuracy {lead:+.3f} (needs >= {self.lead:+.2f}; 95% "
            f"intervals over seeds ±{numbers['conv_stem id accuracy ci95']:.3f} and "
            f"±{numbers['patches id accuracy ci95']:.3f}); "
            f"parameters {c_params:,.0f} vs {p_params:,.0f} ({gap:.1%} apart)",
            learned and gap <= self.params_tolerance,
            (f"neither model learned digits (best id accuracy {best:.3f}, needs >= "
             f"{numbers['learned at']:.3f})") if not learned else
            f"parameter counts {gap:.1%} apart (needs <= {self.params_tolerance:.0%})",
        )  # fmt: skip


ILLAMA = Paper(
    "Adapting LLaMA Decoder to Vision Transformer", 2024, "Wang et al."
)  # fmt: skip


@register(
    "finding",
    "causal_vit_matches_bidirectional",
    paper=ILLAMA,
    summary="a causal-masked LLaMA-style ViT (iLLaMA) is about as accurate as a bidirectional one",
    params=NoParams,
)
class CausalViTMatchesBidirectional(Finding):
    """iLLaMA as a spec: 2x2 patches with the CLS token placed after the grid
    (``cls_position: last``, so under the causal mask it reads every patch), RMSNorm,
    SwiGLU (``glu``) and axial 2-D RoPE (``rope_2d``), d_model 64, 2 layers, pooled at
    the CLS token (``pool: last``). The two variants differ only in the mask:
    ``kind: decoder`` (causal) and ``kind: encoder`` (bidirectional). Holds when the
    causal model's mean ``id`` accuracy over the seeds is at most ``margin`` (0.03) below
    the bidirectional one's (a causal model ahead also matches). Inconclusive when the
    bidirectional model did not learn the task (``id`` accuracy below
    the logistic regression's minus 0.15 or the majority class plus 0.5, whichever is
    higher): two models that learned nothing are alike too."""

    claim = (
        "A causal-masked LLaMA-style vision Transformer (RMSNorm, SwiGLU, 2-D RoPE, CLS token "
        "after the patches) is about as accurate as the same model with bidirectional "
        "attention."
    )
    margin = 0.03

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        model = {"kind": "encoder", "d_model": 64, "n_layers": 2, "n_heads": 4, "max_len": 17,
                 "embedder": {"name": "patches", "patch_size": 2, "cls": True,
                              "cls_position": "last"},
                 "position": "rope_2d", "norm": "rmsnorm", "ffn": "glu", "head": "classify",
                 "pool": "last", "input_shape": [1, 8, 8]}  # fmt: skip
        base = _digits("causal_vit_matches_bidirectional", model, quick)
        axes = [("model.kind", ["encoder", "decoder"])]
        return {"main": Comparison(base, axes, seeds=1 if quick else 3)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        bidir, causal = (v.label for v in r.variants)
        numbers = _learned_numbers(r, {"bidirectional": bidir, "causal": causal})
        gap = numbers["causal id accuracy"] - numbers["bidirectional id accuracy"]
        acc = numbers["bidirectional id accuracy"]
        return Verdict.decide(
            gap >= -self.margin,
            numbers,
            f"causal − bidirectional id accuracy {gap:+.3f} (needs >= {-self.margin:+.2f}; 95% "
            f"intervals over seeds ±{numbers['causal id accuracy ci95']:.3f} and "
            f"±{numbers['bidirectional id accuracy ci95']:.3f})",
            acc >= numbers["learned at"],
            f"the bidirectional model did not learn digits (id accuracy {acc:.3f}, needs >= "
            f"{numbers['learned at']:.3f})",
        )


POOLFORMER = Paper("MetaFormer Is Actually What You Need for Vision", 2022, "Yu et al.")


@register(
    "finding",
    "pooling_mixer_near_attention",
    paper=POOLFORMER,
    summary="a pooling token mixer (PoolFormer) reaches most of attention's accuracy at lower cost",
    params=NoParams,
)
class PoolingMixerNearAttention(Finding):
    """Two MetaFormers on ``digits`` that differ only in the token mixer: softmax
    attention and PoolFormer's ``pooling`` (mean over a window of 3 tokens minus the
    token; no parameters). Both read 2x2 patches (16 tokens, no CLS) with learned
    positions, d_model 64, 2 layers, and average the tokens (``pool: mean``), as
    PoolFormer does. Note that the library's pooling is 1-D over the row-major patch
    sequence (PoolFormer pools 3x3 over the 2-D grid), so it mixes along rows and across
    a row's end. Holds when the pooling model's mean ``id`` accuracy is at least
    ``fraction`` (90%) of attention's and its training FLOPs per token are lower (the
    comparison's cost columns; parameters are reported too). Inconclusive when the
    attention model did not learn the task (``id`` accuracy below the logistic
    regression's minus 0.15 or the majority class plus 0.5, whichever is higher):
    a fraction of nothing says nothing."""

    claim = (
        "A token mixer that only averages neighbouring tokens (PoolFormer's pooling) reaches "
        "most of self-attention's accuracy at a lower cost."
    )
    fraction = 0.9

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        model = {"kind": "encoder", "embedder": {"name": "patches", "patch_size": 2, "cls": False},
                 "position": "learned", "d_model": 64, "n_layers": 2, "n_heads": 4, "max_len": 16,
                 "head": "classify", "pool": "mean"}  # fmt: skip
        base = _digits("pooling_mixer_near_attention", model, quick)
        axes = [("model.attention", ["softmax", "pooling"])]
        return {"main": Comparison(base, axes, seeds=1 if quick else 3)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        attn, pool = (v.label for v in r.variants)
        numbers = _learned_numbers(r, {"attention": attn, "pooling": pool})
        for name, label in (("attention", attn), ("pooling", pool)):
            cost = r.cost.get(label, {})
            numbers[f"{name} params"] = float(cost.get("params", 0.0))
            numbers[f"{name} flops_per_token"] = float(cost.get("flops_per_token", 0.0))
        acc = numbers["attention id accuracy"]
        ratio = numbers["pooling id accuracy"] / acc if acc > 0 else 0.0
        flops = numbers["pooling flops_per_token"] / max(numbers["attention flops_per_token"], 1.0)
        numbers |= {"accuracy ratio": ratio, "flops ratio": flops}
        return Verdict.decide(
            ratio >= self.fraction and flops < 1.0,
            numbers,
            f"pooling reaches {ratio:.1%} of attention's id accuracy (needs >= "
            f"{self.fraction:.0%}) at {flops:.2f}x its training FLOPs per token (needs < 1) "
            f"and {numbers['pooling params']:,.0f} vs {numbers['attention params']:,.0f} "
            "parameters",
            acc >= numbers["learned at"],
            f"the attention model did not learn digits (id accuracy {acc:.3f}, needs >= "
            f"{numbers['learned at']:.3f})",
        )
