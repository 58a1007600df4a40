"""Findings about knowledge distillation (``objective: distill``): a trained teacher run
(one comparison of one variant) and students that read it through ``objective.teacher:
@teacher`` (the teacher's run of the same seed)."""

from __future__ import annotations

from typing import Any

from anyformer.lab.compare import CompareResult
from anyformer.lab.findings.base import PARENT, Comparison, Finding, Verdict, quick_train
from anyformer.objectives.distill import MINILM
from anyformer.registry import NoParams, register

#: The student variants: (objective.relations, objective.alpha) joint values.
STUDENTS = {"scratch": "none:0.0", "logits": "none:0.5", "minilm": "minilm:0.5"}
RELATIONS_ALPHA = "objective.relations,objective.alpha"


def _label(result: CompareResult, value: str) -> str:
    relations, alpha = value.split(":")
    for v in result.variants:
        if f"objective.relations={relations}" in v.overrides and any(
            o.startswith("objective.alpha=") and float(o.split("=")[1]) == float(alpha)
            for o in v.overrides
        ):
            return v.label
    raise KeyError(f"no student {value} in {[v.overrides for v in result.variants]}")


def _train(steps: int, quick: bool) -> dict[str, Any]:
    if quick:
        return quick_train(lr=3e-3, threads=1) | {"eval_every": 100000, "checkpoint_every": 100000}
    return {"steps": steps, "batch_size": 32, "lr": 3e-3, "warmup_steps": 50, "eval_size": 256,
            "eval_every": 100000, "checkpoint_every": 100000, "log_every": 50,
            "threads": 1}  # fmt: skip


@register(
    "finding",
    "minilm_beats_logit_distillation",
    paper=MINILM,
    summary="a student distilled with MiniLM's attention and value relations beats one "
    "distilled from logits only, at equal size and steps",
    params=NoParams,
)
class MiniLMBeatsLogitDistillation(Finding):
    """A teacher (the quickstart decoder: d_model 64, 2 layers, 4 heads, rotary positions)
    learns ``copy`` (1-12 symbols) for 800 steps; students of a quarter of its block
    parameters (d_model 32, 2 layers, 2 heads) train for 1200 steps on the same task,
    three ways at equal size, steps and data: from scratch (``alpha`` 0, no relations),
    logit distillation (``alpha`` 0.5, T = 2) and logit + MiniLM distillation of the last
    layer (attention distributions and value relations over 2 relation heads, ``beta`` 1).
    2 seeds, each student reading the teacher of its seed. Holds when the MiniLM
    students' mean ``id`` exact match is at least ``lead`` (0.02) above the logit-only
    students' (MiniLM, Wang et al. 2020, Table: deep self-attention distillation beats
    logit-based distillation at equal student size). Inconclusive when the teacher did
    not learn the task (``id`` exact match below 0.5): there is nothing to distil; or
    when no student learned to copy (best ``id`` token accuracy below 0.5): the
    experiment is too small to separate them (as with 400 student steps, where every
    student stayed near 0.2 token accuracy)."""

    claim = (
        "Distilling the last layer's self-attention distributions and value relations "
        "(MiniLM) into a smaller student, beside the logits, gives a better student than "
        "logit distillation alone, at equal student size and training steps."
    )
    lead = 0.02
    learned = 0.5
    student_learned = 0.5

    def comparisons(self, quick: bool) -> dict[str, Comparison]:
        task = {"name": "copy", "min_len": 1, "max_len": 12, "ood_min_len": 13,
                "ood_max_len": 20, "n_symbols": 26}  # fmt: skip
        teacher = {"kind": "decoder", "d_model": 64, "n_layers": 2, "n_heads": 4,
                   "position": "rope", "max_len": 64}  # fmt: skip
        student = teacher | {"d_model": 32, "n_heads": 2}
        if quick:
            teacher |= {"d_model": 32, "n_layers": 1, "n_heads": 2}
            student |= {"d_model": 16, "n_layers": 1, "n_heads": 2}
        seeds = 1 if quick else 2
        name = "minilm_beats_logit_distillation"
        out = {
            "teacher": Comparison(
                {"name": name, "model": teacher, "task": task, "train": _train(800, quick)},
                [("model.n_heads", [str(teacher["n_heads"])])],
                seeds=seeds,
            )
        }
        objective = {"name": "distill", "temperature": 2.0, "beta": 1.0}
        base = {"name": name, "model": student, "task": task, "objective": objective,
                "train": _train(1200, quick)}  # fmt: skip
        out["students"] = Comparison(
            base,
            [
                ("objective.teacher", [f"{PARENT}teacher"]),
                (RELATIONS_ALPHA, list(STUDENTS.values())),
            ],  # fmt: skip
            seeds=seeds,
        )
        return out

    def check(self, results: dict[str, CompareResult]) -> Verdict:
        t = results["teacher"]
        r = results["students"]
        numbers = {"teacher id exact_match": t.mean(t.variants[0].label, "exact_match")}
        for key, value in STUDENTS.items():
            label = _label(r, value)
            numbers[f"{key} id exact_match"] = r.mean(label, "exact_match")
            numbers[f"{key} id exact_match ci95"] = float(
                r.summary[label]["id"]["exact_match"].get("ci95", 0.0)
            )
            numbers[f"{key} id token_accuracy"] = r.mean(label, "token_accuracy")
        minilm, logits = numbers["minilm id exact_match"], numbers["logits id exact_match"]
        teacher = numbers["teacher id exact_match"]
        best = max(numbers[f"{key} id token_accuracy"] for key in STUDENTS)
        lead = minilm - logits
        return Verdict.decide(
            lead >= self.lead,
            numbers,
            f"student id exact match with MiniLM relations {minilm:.3f} vs logits only "
            f"{logits:.3f}: {lead:+.3f} (needs >= {self.lead:+.2f}); from scratch "
            f"{numbers['scratch id exact_match']:.3f}; teacher "
            f"{numbers['teacher id exact_match']:.3f}",
            teacher >= self.learned and best >= self.student_learned,
            f"the teacher did not learn copy (id exact match {teacher:.3f} < {self.learned})"
            if teacher < self.learned
            else f"no student learned copy (best id token accuracy {best:.3f} < "
            f"{self.student_learned})",
        )
