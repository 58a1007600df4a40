"""Findings about pretraining objectives: what a self-supervised objective leaves in the
backbone for fine-tuning, and what an auxiliary objective does to the main one.

The pretrain -> fine-tune findings run two stages: each pretraining comparison has one
variant, and the fine-tuning comparison varies ``init_from`` over ``null`` (from
scratch) and ``@<pretraining comparison>`` (that comparison's run of the same seed:
:class:`~anyformer.lab.findings.base.Comparison`). Every fine-tuned variant and the
from-scratch one train the same model on the same task for the same steps at the same
learning rate; only the starting weights differ.
"""

from __future__ import annotations

from typing import Any

from anyformer.lab.compare import CompareResult
from anyformer.lab.findings.base import PARENT, Comparison, Finding, Verdict, quick_train
from anyformer.lab.findings.vision import learned_bar
from anyformer.objectives.masked_patches import MAE
from anyformer.registry import NoParams, Paper, register

MTP = Paper(
    "Better & Faster Large Language Models via Multi-token Prediction", 2024, "Gloeckle et al."
)

#: Fine-tuning variants on ``digits``: from scratch, then from each pretraining comparison.
SCRATCH = "null"


def _label(result: CompareResult, value: str) -> str:
    """The label of the variant whose ``init_from`` is ``value``."""
    for v in result.variants:
        if f"init_from={value}" in v.overrides:
            return v.label
    raise KeyError(f"no variant with init_from={value} in {[v.label for v in result.variants]}")


def _ci95(result: CompareResult, label: str, metric: str = "accuracy") -> float:
    return float(result.summary[label]["id"][metric].get("ci95", 0.0))


def _train(steps: int, lr: float, quick: bool, **extra: Any) -> dict[str, Any]:
    """A training budget of ``steps`` (quick: the toy budget), evaluated once at the end,
    one thread (the comparisons are timed on a shared CPU)."""
    train = {"steps": steps, "batch_size": 64, "lr": lr, "warmup_steps": max(steps // 20, 5),
             "eval_size": 360, "threads": 1, "log_every": 50, **extra}  # fmt: skip
    if quick:
        train = quick_train(lr=lr, threads=1, **extra)
    return train | {"eval_every": 100000, "checkpoint_every": 100000}


# --------------------------------------------------------------------------- MAE
@register(
    "finding",
    "mae_high_mask_ratio",
    paper=MAE,
    summary="MAE pretraining with 75% of the patches masked fine-tunes better than with 25%",
    params=NoParams,
)
class MAEHighMaskRatio(Finding):
    """A ViT on ``digits`` (8x8 images as 2x2 patches: 16 tokens and a CLS token,
    fixed 2-D sin-cos positions, d_model 64, 2 layers, 4 heads) is pretrained with MAE
    (``masked_patches``: the encoder sees only the visible patches, a 2-layer decoder of
    width 32 reconstructs the masked ones' normalised pixels) on the ``digits`` training
    images for 600 steps, once with ``mask_ratio`` 0.25 and once with 0.75 (2 seeds
    each: the budget of a shared 2-core CPU). Each pretrained backbone is then fine-tuned end to end on ``digits``
    classification (a new head at the CLS token) for 400 steps at lr 2e-3, beside the
    same model trained from scratch for the same 400 steps. Holds when the 75% backbone's
    mean fine-tuned ``id`` accuracy over the seeds is at least ``lead`` (0.01) above the
    25% backbone's (MAE's Figure 5: fine-tuning accuracy peaks near 75% and falls
    towards low ratios). Inconclusive when no fine-tuned model learned the task
    (``id`` accuracy below the logistic regression's minus 0.15 or the majority class
    plus 0.5, whichever is higher). The from-scratch accuracy is reported beside them
    (does pretraining help at all here?) but does not decide the claim."""

    claim = (
        "MAE pretraining with a high masking ratio (75% of the patches) gives a backbone that "
        "fine-tunes to a higher accuracy than one pretrained with a low ratio (25%)."
    )
    lead = 0.01
    ratios = ("0.25", "0.75")

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        model = {"kind": "encoder", "embedder": {"name": "patches", "patch_size": 2, "cls": True},
                 "position": "sincos_2d", "d_model": 64, "n_layers": 2, "n_heads": 4,
                 "max_len": 17, "head": "classify", "pool": "first"}  # fmt: skip
        if quick:
            model |= {"d_model": 32, "n_layers": 1, "n_heads": 2}
        seeds = 1 if quick else 2
        out = {}
        for ratio in self.ratios:
            pretrain = {"name": "mae_high_mask_ratio", "model": model, "task": {"name": "digits"},
                        "objective": {"name": "masked_patches", "mask_ratio": float(ratio)},
                        "train": _train(600, 3e-3, quick)}  # fmt: skip
            out[f"mae{ratio[2:]}"] = Comparison(
                pretrain, [("objective.mask_ratio", [ratio])], seeds=seeds
            )
        finetune = {"name": "mae_high_mask_ratio", "model": model, "task": {"name": "digits"},
                    "train": _train(400, 2e-3, quick)}  # fmt: skip
        parents = [SCRATCH] + [f"{PARENT}mae{r[2:]}" for r in self.ratios]
        out["finetune"] = Comparison(finetune, [("init_from", parents)], seeds=seeds)
        return out

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["finetune"]
        labels = {"scratch": _label(r, SCRATCH)}
        labels |= {f"mask {r_[2:]}%": _label(r, f"{PARENT}mae{r_[2:]}") for r_ in self.ratios}
        numbers = {f"{k} id accuracy": r.mean(v, "accuracy") for k, v in labels.items()}
        numbers |= {f"{k} id accuracy ci95": _ci95(r, v) for k, v in labels.items()}
        for ratio in self.ratios:
            pre = results[f"mae{ratio[2:]}"]
            loss = pre.summary[pre.variants[0].label]["id"].get("loss")
            if loss is not None:
                numbers[f"mask {ratio[2:]}% pretraining id loss"] = float(loss["mean"])
        first = labels["scratch"]
        numbers["logreg id accuracy"] = r.mean(first, "baselines.logreg.accuracy")
        numbers["majority id accuracy"] = r.mean(first, "baselines.majority.accuracy")
        numbers["learned at"] = learned_bar(r, first)
        high, low = numbers["mask 75% id accuracy"], numbers["mask 25% id accuracy"]
        lead = high - low
        best = max(high, low)
        return Verdict.decide(
            lead >= self.lead,
            numbers,
            f"fine-tuned id accuracy after 75% masking {high:.3f} (±{numbers['mask 75% id accuracy ci95']:.3f}) "
            f"vs 25% {low:.3f} (±{numbers['mask 25% id accuracy ci95']:.3f}): {lead:+.3f} "
            f"(needs >= {self.lead:+.2f}); from scratch {numbers['scratch id accuracy']:.3f}",
            best >= numbers["learned at"],
            f"no fine-tuned model learned digits (best id accuracy {best:.3f}, needs >= "
            f"{numbers['learned at']:.3f})",
        )  # fmt: skip


# --------------------------------------------------------------------------- MTP
@register(
    "finding",
    "multi_token_next_byte",
    paper=MTP,
    summary="predicting the next 4 bytes with 4 heads leaves next-byte prediction at least as "
    "good as next-byte training, at equal steps",
    params=NoParams,
)
class MultiTokenNextByte(Finding):
    """Three byte-level decoders on ``text_corpus`` (English pydoc help topics; 64-byte
    windows; d_model 64, 2 layers, 4 heads, rotary positions) trained for 500 steps of
    16 windows at lr 3e-3 with the same data order (2 seeds): ``causal_lm`` (next byte) and
    ``multi_token`` with k = 2 and k = 4 (k heads on a shared trunk and unembedding,
    the loss the mean over the k offsets). Every model is scored the same way: the
    next-byte head's bits per byte and accuracy on held-out topics (``id``). Holds when
    the k = 4 model's next-byte bits per byte is at most ``tolerance`` (1%) above the
    next-byte model's (Gloeckle et al.: multi-token prediction improves models, most of
    all byte-level ones, though at small sizes it can lag). Inconclusive when the
    next-byte model does not beat the bigram baseline's bits per byte by 10%. Equal
    steps and tokens is the paper's protocol; the extra heads cost compute beside the
    shared trunk (reported as FLOPs per token in the comparison's table)."""

    claim = (
        "Training a byte-level language model to predict the next 4 bytes with 4 heads on a "
        "shared trunk gives a next-byte predictor at least as good as training on the next "
        "byte alone, at equal steps and data."
    )
    tolerance = 0.01

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        model = {"kind": "decoder", "d_model": 64, "n_layers": 2, "n_heads": 4,
                 "position": "rope", "max_len": 64}  # fmt: skip
        task = {"name": "text_corpus", "seq_len": 64}
        train = _train(500, 3e-3, quick, batch_size=16)
        train["eval_size"] = 256
        if quick:
            model |= {"d_model": 32, "n_layers": 1, "n_heads": 2, "max_len": 32}
            task["seq_len"] = 32
            train["eval_size"] = 32
        base = {"name": "multi_token_next_byte", "model": model, "task": task, "train": train}
        axes = [("objective", ["causal_lm", "{name: multi_token, k: 2}",
                               "{name: multi_token, k: 4}"])]  # fmt: skip
        return {"main": Comparison(base, axes, seeds=1 if quick else 2)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        ntp, k2, k4 = (v.label for v in r.variants)
        labels = {"next-byte": ntp, "k=2": k2, "k=4": k4}
        numbers = {f"{k} id bits_per_byte": r.mean(v, "bits_per_byte") for k, v in labels.items()}
        numbers |= {f"{k} id accuracy": r.mean(v, "accuracy") for k, v in labels.items()}
        numbers |= {f"{k} id bits_per_byte ci95": _ci95(r, v, "bits_per_byte")
                    for k, v in labels.items()}  # fmt: skip
        bigram = r.mean(ntp, "baselines.bigram.bits_per_byte")
        numbers["bigram id bits_per_byte"] = bigram
        base, four = numbers["next-byte id bits_per_byte"], numbers["k=4 id bits_per_byte"]
        ratio = four / base if base > 0 else float("inf")
        numbers["k=4 / next-byte bits_per_byte"] = ratio
        return Verdict.decide(
            ratio <= 1 + self.tolerance,
            numbers,
            f"next-byte bits per byte: k=4 {four:.3f} vs next-byte training {base:.3f} "
            f"({ratio - 1:+.1%}, needs <= {self.tolerance:+.0%}); k=2 "
            f"{numbers['k=2 id bits_per_byte']:.3f}; bigram {bigram:.3f}",
            base <= 0.9 * bigram,
            f"the next-byte model did not beat the bigram baseline by 10% ({base:.3f} vs "
            f"{bigram:.3f} bits per byte)",
        )


# --------------------------------------------------------------------------- MP3
MP3 = Paper("Position Prediction as an Effective Pretraining Strategy", 2022, "Zhai et al.")


@register(
    "finding",
    "mp3_pretraining_beats_scratch",
    paper=MP3,
    summary="MP3 position-prediction pretraining then fine-tuning beats training from scratch "
    "for the same total steps",
    params=NoParams,
)
class MP3PretrainingBeatsScratch(Finding):
    """A ViT without position information (``position: none``; 8x8 ``digits`` images as
    2x2 patches, 16 tokens and a CLS token, d_model 64, 2 layers, 4 heads) is pretrained
    with MP3 (``position_prediction``: every token classifies its own position among the
    17 from content alone, half of the patches hidden from attention as keys and values)
    on the ``digits`` training images for 400 steps, then fine-tuned end to end on
    ``digits`` classification (a new head at the CLS token, still without positions) for
    300 steps at lr 2e-3. The same model is trained from scratch on the classification
    for the same 700 steps in total (2 seeds each). Holds when the fine-tuned model's
    mean ``id`` accuracy is at least ``lead`` (0.01) above the from-scratch one's (MP3's
    claim: position-prediction pretraining improves on training from scratch, most of
    all on small data sets; ``digits`` has 1,437 training images). Inconclusive when
    neither model learned the task (``id`` accuracy below the logistic regression's
    minus 0.15 or the majority class plus 0.5, whichever is higher). Position accuracy
    of the pretraining (``id``, of the 17 positions) is reported beside."""

    claim = (
        "Pretraining a vision Transformer to predict its patches' positions from content "
        "(MP3, positions withheld) and then fine-tuning it beats training it from scratch "
        "for the same total number of steps."
    )
    lead = 0.01
    pretrain_steps, finetune_steps = 400, 300

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        model = {"kind": "encoder", "embedder": {"name": "patches", "patch_size": 2, "cls": True},
                 "position": "none", "d_model": 64, "n_layers": 2, "n_heads": 4,
                 "max_len": 17, "head": "classify", "pool": "first"}  # fmt: skip
        if quick:
            model |= {"d_model": 32, "n_layers": 1, "n_heads": 2}
        seeds = 1 if quick else 2
        task = {"name": "digits"}
        pre, fine = self.pretrain_steps, self.finetune_steps
        pretrain = {"name": "mp3_pretraining_beats_scratch", "task": task,
                    "model": model | {"head": "token_classify", "n_outputs": 17},
                    "objective": {"name": "position_prediction", "mask_ratio": 0.5},
                    "train": _train(pre, 3e-3, quick)}  # fmt: skip
        finetune = {"name": "mp3_pretraining_beats_scratch", "model": model, "task": task,
                    "train": _train(fine, 2e-3, quick)}  # fmt: skip
        scratch = {"name": "mp3_pretraining_beats_scratch", "model": model, "task": task,
                   "train": _train(pre + fine, 2e-3, quick)}  # fmt: skip
        return {
            "mp3": Comparison(pretrain, [("objective.mask_ratio", ["0.5"])], seeds=seeds),
            "finetune": Comparison(finetune, [("init_from", [f"{PARENT}mp3"])], seeds=seeds),
            "scratch": Comparison(
                scratch, [("train.steps", [str(scratch["train"]["steps"])])], seeds=seeds
            ),  # fmt: skip
        }

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        pre, fine, scratch = results["mp3"], results["finetune"], results["scratch"]
        (p,), (f,), (s,) = (tuple(v.label for v in r.variants) for r in (pre, fine, scratch))
        numbers = {
            "fine-tuned id accuracy": fine.mean(f, "accuracy"),
            "from scratch id accuracy": scratch.mean(s, "accuracy"),
            "fine-tuned id accuracy ci95": _ci95(fine, f),
            "from scratch id accuracy ci95": _ci95(scratch, s),
            "pretraining id position accuracy": pre.mean(p, "accuracy"),
            "logreg id accuracy": scratch.mean(s, "baselines.logreg.accuracy"),
            "majority id accuracy": scratch.mean(s, "baselines.majority.accuracy"),
            "learned at": learned_bar(scratch, s),
        }
        tuned, plain = numbers["fine-tuned id accuracy"], numbers["from scratch id accuracy"]
        lead, best = tuned - plain, max(tuned, plain)
        return Verdict.decide(
            lead >= self.lead,
            numbers,
            f"fine-tuned after MP3 {tuned:.3f} (±{numbers['fine-tuned id accuracy ci95']:.3f}) vs "
            f"from scratch {plain:.3f} (±{numbers['from scratch id accuracy ci95']:.3f}) id "
            f"accuracy at equal total steps: {lead:+.3f} (needs >= {self.lead:+.2f}); MP3 "
            f"position accuracy {numbers['pretraining id position accuracy']:.3f} (chance 1/17)",
            best >= numbers["learned at"],
            f"neither model learned digits (best id accuracy {best:.3f}, needs >= "
            f"{numbers['learned at']:.3f})",
        )  # fmt: skip
