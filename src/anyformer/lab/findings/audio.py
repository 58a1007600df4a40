"""Findings about audio Transformers on ``tones`` (synthetic sound events in 0.5 s clips).

The models read the clip as AST patches of its log-mel spectrogram
(``spectrogram_patches``: 32 mel bands, 4x4 patches, an 8x8 grid of 64 patches and a
CLS token) and classify it from the CLS token (``classify``, ``pool: first``). A model
counts as having learned ``tones`` when its ``id`` accuracy is at least
``MAJORITY_MARGIN`` above the majority class's on the same clips.
"""

from __future__ import annotations

from typing import Any

from anyformer.lab.compare import CompareResult
from anyformer.lab.findings.base import Comparison, Finding, Verdict, quick_train
from anyformer.registry import NoParams, Paper, register

#: a model learned tones (6 classes) when this far above the majority class
MAJORITY_MARGIN = 0.3

PASST = Paper("Efficient Training of Audio Transformers with Patchout", 2022, "Koutini et al.")


def _tones(name: str, model: dict[str, Any], quick: bool) -> dict[str, Any]:
    """A base experiment on ``tones`` (ood: lower SNR) with one training thread."""
    train = {"steps": 600, "batch_size": 32, "lr": 2e-3, "warmup_steps": 50, "eval_size": 500,
             "threads": 1}  # fmt: skip
    if quick:
        model = {**model, "d_model": 32, "n_layers": 1, "n_heads": 2}
        train = quick_train(lr=2e-3, threads=1)
    train |= {"eval_every": 100000, "checkpoint_every": 100000}
    return {"name": name, "model": model, "task": {"name": "tones"}, "train": train}


@register(
    "finding",
    "patchout_speeds_audio",
    paper=PASST,
    summary="patchout (dropping half the spectrogram patches in training) speeds audio "
    "Transformer training with a small accuracy cost",
    params=NoParams,
)
class PatchoutSpeedsAudio(Finding):
    """Two AST-style encoders on ``tones`` (width 64, 3 layers, 4x4 patches of a 32-band
    log-mel spectrogram: 64 patches and a CLS token, PaSST's learned time and frequency
    positions added before patchout, no model positions) that differ only in PaSST's
    patchout: none, or ``unstructured`` patchout dropping 32 of the 64 patches (0.5) of
    every training clip (evaluation sees every patch). Training speed is the comparison's
    interleaved measurement (every variant in turn, in the same process, after all
    runs: 6 rounds of 5 steps on the same batches; the rate counts clips, so its ratio
    is the ratio of training steps per second). Holds when patchout trains at least
    ``speedup`` (1.2x) as many steps per second and its mean ``id`` accuracy over the
    seeds is at most ``cost`` (0.05) below the model without patchout. Inconclusive when
    the model without patchout did not learn ``tones`` (``id`` accuracy below the
    majority class plus 0.3): an accuracy cost against nothing says nothing."""

    claim = (
        "Patchout (dropping a random half of the spectrogram patches in training) speeds "
        "up training of an audio spectrogram Transformer at a small cost in accuracy."
    )
    speedup = 1.2
    cost = 0.05

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        embedder = {"name": "spectrogram_patches", "patch_time": 4, "patch_freq": 4,
                    "cls": True, "positions": "time_freq"}  # fmt: skip
        model = {"kind": "encoder", "embedder": embedder, "position": "none", "d_model": 64,
                 "n_layers": 3, "n_heads": 4, "max_len": 65, "head": "classify",
                 "pool": "first"}  # fmt: skip
        base = _tones("patchout_speeds_audio", model, quick)
        common = "name: spectrogram_patches, patch_time: 4, patch_freq: 4, cls: true, "
        common += "positions: time_freq"
        axes = [
            (
                "model.embedder",
                [
                    "{" + common + "}",
                    "{" + common + ", patchout: unstructured, patchout_tokens: 32}",
                ],
            )
        ]
        timing = (2, 2) if quick else (6, 5)
        return {"main": Comparison(base, axes, seeds=1 if quick else 3, timing=timing)}

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        full, patched = (v.label for v in r.variants)
        numbers: dict[str, float] = {}
        for name, label in (("full", full), ("patchout", patched)):
            numbers[f"{name} id accuracy"] = r.mean(label, "accuracy")
            numbers[f"{name} ood accuracy"] = r.mean(label, "accuracy", "ood")
            ci = r.summary[label]["id"]["accuracy"].get("ci95", 0.0)
            numbers[f"{name} id accuracy ci95"] = float(ci)
            rate = r.cost.get(label, {}).get("tokens_per_s")
            numbers[f"{name} train rate"] = float(rate or 0.0)
        numbers["logreg id accuracy"] = r.mean(full, "baselines.logreg.accuracy")
        numbers["majority id accuracy"] = r.mean(full, "baselines.majority.accuracy")
        numbers["learned at"] = numbers["majority id accuracy"] + MAJORITY_MARGIN
        base_rate = numbers["full train rate"]
        speed = numbers["patchout train rate"] / base_rate if base_rate > 0 else 0.0
        drop = numbers["full id accuracy"] - numbers["patchout id accuracy"]
        numbers |= {"speedup": speed, "accuracy cost": drop}
        acc = numbers["full id accuracy"]
        return Verdict.decide(
            speed >= self.speedup and drop <= self.cost,
            numbers,
            f"patchout trains {speed:.2f}x the steps per second (needs >= {self.speedup:.1f}x) "
            f"at an id accuracy cost of {drop:+.3f} (needs <= {self.cost:.2f}; 95% intervals "
            f"over seeds ±{numbers['full id accuracy ci95']:.3f} and "
            f"±{numbers['patchout id accuracy ci95']:.3f})",
            acc >= numbers["learned at"],
            f"the model without patchout did not learn tones (id accuracy {acc:.3f}, needs >= "
            f"{numbers['learned at']:.3f})",
        )
