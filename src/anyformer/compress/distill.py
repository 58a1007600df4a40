"""``anyformer distill TEACHER_RUN STUDENT_SPEC``: train a student of any shape from a
trained run with logit and MiniLM attention-relation distillation.

The student run's spec is the student experiment (its model and training) on the
teacher's task, with ``objective: distill`` (:class:`~anyformer.objectives.distill.Distill`)
naming the teacher run (``teacher``), its model spec and the teacher's objective as its
base. When the run starts, :func:`~anyformer.lab.run.start_teacher` loads the teacher's
trained weights into the frozen teacher the objective holds
(``objective_module.teacher``), which the student's checkpoints then keep, so the
Trainer, ``anyformer resume`` and reports work unchanged (``anyformer run`` of a spec
with ``objective: {name: distill, teacher: runs/...}`` does the same). The report ends with the
student compared with the teacher on the teacher's evaluation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from anyformer.compress.parent_report import compare_with_parent
from anyformer.lab.experiments import load_experiment
from anyformer.lab.loaded import load_run
from anyformer.lab.run import Run, resolve, run_experiment, run_folder
from anyformer.spec import ExperimentSpec


def student_spec(
    teacher: ExperimentSpec,
    teacher_dir: Path | str,
    student: str | Path | ExperimentSpec,
    overrides: list[str] | None = None,
    distill: dict[str, Any] | None = None,
) -> ExperimentSpec:
    """The student's resolved spec: ``student`` (an experiment name, a YAML file or a spec)
    with ``overrides``, on the teacher's task, trained by ``objective: distill`` with the
    teacher's model and objective and the ``distill`` parameters (``alpha``,
    ``temperature``, ``relations``, ...)."""
    base = student if isinstance(student, ExperimentSpec) else load_experiment(student)
    base = base.with_overrides(list(overrides or []))
    objective = {
        "name": "distill",
        **(distill or {}),
        "base": teacher.objective.model_dump(mode="json") if teacher.objective else None,
        "teacher_model": teacher.model.model_dump(mode="json"),
        "teacher": str(teacher_dir),
    }
    if objective["base"] is None:
        objective.pop("base")
    data = base.to_dict()
    data.update(task=teacher.task.model_dump(mode="json"), objective=objective)
    data["name"] = f"{teacher.name}-distill"
    data["plugins"] = sorted({*teacher.plugins, *base.plugins})
    return resolve(ExperimentSpec.from_dict(data))


def distill_run(
    teacher_dir: Path | str,
    student: str | Path | ExperimentSpec,
    overrides: list[str] | None = None,
    distill: dict[str, Any] | None = None,
    out: Path | str | None = None,
    command: str | None = None,
) -> Run:
    """Train the student of ``teacher_dir`` (see :func:`student_spec`) in a new run folder
    under ``out`` (default: the teacher's parent folder); a folder that exists is resumed.
    Appends the comparison with the teacher to its report and ``parent.json``."""
    teacher = load_run(teacher_dir)
    spec = student_spec(teacher.spec, teacher_dir, student, overrides, distill)
    folder = run_folder(spec, Path(out) if out is not None else Path(teacher_dir).parent)
    provenance = {"distill": str(teacher_dir), "student": str(student),
                  "overrides": list(overrides or []), "command": command}  # fmt: skip
    run = run_experiment(spec, run_dir=folder, provenance=provenance)
    if not run.result.interrupted:
        student_run = load_run(folder)
        compare_with_parent(
            folder,
            "Compared with the teacher",
            ("teacher", teacher.spec, teacher.model),
            ("student", student_run.model),
            teacher.task,
            extra={"teacher": str(teacher_dir)},
        )
    return run


__all__ = ["distill_run", "student_spec"]
