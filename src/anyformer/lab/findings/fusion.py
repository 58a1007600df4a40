"""Findings about fusing trained models: optimal-transport alignment against naive averaging.

The check loads the trained runs of its comparison (one variant, several seeds), fuses
seed pairs (0, 1), (2, 3), ... with :mod:`anyformer.compress.merge_models` both ways and
scores the fused models on the first run's own evaluation sets.
"""

from __future__ import annotations

from anyformer.errors import RunFolderError
from anyformer.lab.compare import CompareResult
from anyformer.lab.findings.base import Comparison, Finding, NeedsCheckpoints, Verdict
from anyformer.lab.findings.vision import _digits, learned_bar
from anyformer.registry import NoParams, Paper, register

SINGH_JAGGI = Paper("Model Fusion via Optimal Transport", 2020, "Singh and Jaggi")


def fused_accuracies(result: CompareResult, label: str) -> list[dict[str, float]]:
    """Per seed pair: ``id`` accuracy of parent A, parent B, the OT fusion (residual stream
    aligned on one training batch, then heads and neurons), the OT fusion of heads and
    neurons only (``ot units``) and the naive average.
    Raises :class:`NeedsCheckpoints` when the runs or their checkpoints are absent."""
    from anyformer.compress.merge_models import fuse
    from anyformer.lab.elastic import evaluate_variants, load_trained
    from anyformer.lab.run import build_objective, build_task

    folders = result.run_dirs(label) if result.runs.get(label) else []
    if len(folders) < 2 or not all(f.is_dir() for f in folders):
        raise NeedsCheckpoints(
            f"comparison '{result.dir}': the run folders of '{label}' are absent"
        )
    pairs = []
    for a_dir, b_dir in zip(folders[0::2], folders[1::2]):
        try:
            (spec, a), (_, b) = load_trained(a_dir), load_trained(b_dir)
        except RunFolderError as exc:
            raise NeedsCheckpoints(f"variant '{label}': {exc}") from None
        task = build_task(spec)
        objective = build_objective(spec, task)
        inputs = task.train_batch(spec.train.steps, spec.train.batch_size).inputs
        models = {"A": a, "B": b, "ot": fuse(a, b, spec, "ot", inputs=inputs)[0],
                  "ot units": fuse(a, b, spec, "ot")[0],
                  "average": fuse(a, b, spec, "average")[0]}  # fmt: skip
        row = {}
        for name, model in models.items():
            rows = evaluate_variants(model, task, objective, spec.train.eval_size)
            row[name] = next(float(r["accuracy"]) for r in rows if r["split"] == "id")
        pairs.append(row)
    return pairs


@register(
    "finding",
    "ot_fusion_beats_averaging",
    paper=SINGH_JAGGI,
    summary="fusing two runs after optimal-transport alignment of heads and neurons beats "
    "naive weight averaging",
    params=NoParams,
)
class OTFusionBeatsAveraging(Finding):
    """Four ViTs on ``digits`` (patches 2x2 with CLS, learned positions, d_model 64, 2
    layers, 4 heads, 400 steps) that differ only in their seed; seeds (0, 1) and (2, 3)
    are fused into one model each, by optimal transport (B's residual stream matched to
    A's by the correlation of their activations on one training batch, then B's heads
    and FFN neurons matched to A's on their weights, each an exact OT plan found by the
    Hungarian algorithm, then averaged) and by naive averaging. No recovery training.
    The fusion of heads and neurons alone (``ot units``, residual stream unaligned) is
    reported beside them.

    Holds when the OT fusion's ``id`` accuracy, averaged over the pairs, is at least
    ``lead`` (0.02) above naive averaging's. Inconclusive when the parents did not learn
    the task (mean parent accuracy below ``max(logreg - 0.15, majority + 0.5)``) or when
    neither fused model is clear of the majority class by 0.05 (both collapsed: the
    comparison cannot separate them). Protocol note: Imfeld et al. (2024) also use soft
    transport plans and align with activations throughout; here only the residual
    stream is aligned on activations.
    """

    claim = (
        "Fusing two Transformers trained from different seeds after aligning their attention "
        "heads and FFN neurons by optimal transport gives higher accuracy than averaging "
        "their weights directly."
    )
    lead = 0.02

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        model = {"kind": "encoder", "embedder": {"name": "patches", "patch_size": 2, "cls": True},
                 "position": "learned", "d_model": 64, "n_layers": 2, "n_heads": 4, "max_len": 17,
                 "head": "classify", "pool": "first"}  # fmt: skip
        base = _digits("ot_fusion_beats_averaging", model, quick)
        return {"main": Comparison(base, [("model.n_layers", [str(base["model"]["n_layers"])])],
                                   seeds=2 if quick else 4)}  # fmt: skip

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        r = results["main"]
        label = r.variants[0].label
        pairs = fused_accuracies(r, label)
        mean = {k: sum(p[k] for p in pairs) / len(pairs) for k in pairs[0]}
        majority = r.mean(label, "baselines.majority.accuracy")
        numbers = {f"{k} id accuracy": v for k, v in mean.items()}
        numbers |= {f"pair {i} {k} id accuracy": v for i, p in enumerate(pairs)
                    for k, v in p.items()}  # fmt: skip
        numbers |= {"majority id accuracy": majority,
                    "logreg id accuracy": r.mean(label, "baselines.logreg.accuracy"),
                    "learned at": learned_bar(r, label)}  # fmt: skip
        parents = (mean["A"] + mean["B"]) / 2
        lead = mean["ot"] - mean["average"]
        learned = parents >= numbers["learned at"]
        separable = max(mean["ot"], mean["average"]) >= majority + 0.05
        why = (
            f"the parents did not learn digits (mean id accuracy {parents:.3f}, needs >= "
            f"{numbers['learned at']:.3f})" if not learned else
            f"neither fused model is clear of the majority class {majority:.3f} by 0.05"
        )  # fmt: skip
        return Verdict.decide(
            lead >= self.lead,
            numbers,
            f"OT fusion {mean['ot']:.3f} vs naive average {mean['average']:.3f} id accuracy "
            f"(heads/neurons only {mean['ot units']:.3f}) "
            f"(lead {lead:+.3f}, needs >= {self.lead:+.2f}); parents {mean['A']:.3f} / "
            f"{mean['B']:.3f}; {len(pairs)} seed pair(s)",
            learned and separable,
            why,
        )
