"""Run folders in and out: ``anyformer import hf:PATH`` and ``anyformer export RUN``.

Import reads a local directory written by ``save_pretrained`` — its ``config.json`` and
safetensors weights only (``use_safetensors=True``; pickled ``.bin`` files are never
loaded, nothing is downloaded, remote code never runs) — converts it with
:func:`~anyformer.interop.hf.from_hf` and writes a run folder (``spec.yaml``,
``checkpoint/step-0``, ``provenance.json``) that ``anyformer generate`` and ``anyformer
export`` read like a trained run's.

Export reads a run's latest checkpoint and writes ``--format hf`` (a ``save_pretrained``
directory), ``onnx`` (:mod:`anyformer.interop.onnx`) or ``safetensors`` (the weights by
``safetensors.torch.save_model``, which stores tied weights once); each beside a copy of
the run's spec, ``anyformer_spec.yaml``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from anyformer.errors import RunFolderError, UserError
from anyformer.interop.hf import architectures, from_hf, to_hf
from anyformer.interop.mapping import Unsupported
from anyformer.model.transformer import Transformer
from anyformer.spec import ExperimentSpec, ModelSpec

#: The task written into an imported run's spec, by model kind and input: what
#: ``anyformer generate`` and ``export`` need to load the run (the task's vocabulary is
#: not the model's; ``anyformer resume`` would refuse it, naming the field).
TASKS = {"decoder": "copy", "encoder_decoder": "reverse", "image": "digits", "encoder": "copy"}
FORMATS = ("hf", "onnx", "safetensors")
#: The run's spec, copied beside every export
SPEC_COPY = "anyformer_spec.yaml"


def hf_directory(path: str | Path) -> Path:
    """``path`` as a local ``save_pretrained`` directory with safetensors weights, or a
    :class:`~anyformer.errors.UserError` saying why not (a hub id, no config, pickles)."""
    folder = Path(path)
    if not folder.is_dir():
        raise UserError(
            f"hf:{path} is not a local directory; anyformer import downloads nothing (hub "
            f"ids are refused): save the model with save_pretrained() and give its folder"
        )
    if not (folder / "config.json").is_file():
        raise UserError(f"hf:{path} has no config.json; give a folder written by save_pretrained()")
    names = {p.name for p in folder.iterdir()}
    if not any(n.endswith(".safetensors") for n in names):
        pickles = sorted(n for n in names if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
        raise UserError(
            f"hf:{path} holds no .safetensors weights"
            + (f" (only {', '.join(pickles)}: pickle files are never loaded)" if pickles else "")
            + "; save the model with save_pretrained(safe_serialization=True)"
        )
    return folder


def load_hf(path: str | Path) -> Any:
    """The HF model saved in the local directory ``path`` (eval mode), its class taken
    from ``config.json``'s ``architectures`` and checked against the supported ones
    before anything is built; weights from safetensors only."""
    folder = hf_directory(path)
    try:
        config = json.loads((folder / "config.json").read_text())
    except ValueError as exc:
        raise UserError(f"hf:{path}/config.json is not JSON: {exc}") from None
    names = config.get("architectures") or []
    if not isinstance(names, list) or len(names) != 1 or not isinstance(names[0], str):
        raise UserError(
            f"hf:{path}/config.json must name one class in 'architectures' (got {names!r})"
        )
    name = names[0]
    known = {c: why for a in architectures() for c, why in a.classes.items()}
    if name not in known:
        supported = sorted(c for c, why in known.items() if not why)
        raise Unsupported(
            f"{name} is not a supported architecture (supported: {', '.join(supported)})"
        )
    if known[name]:
        raise Unsupported(f"{name}: {known[name]}")
    import transformers

    transformers.logging.disable_progress_bar()
    cls = getattr(transformers, name)
    return cls.from_pretrained(folder, use_safetensors=True, local_files_only=True).eval()


def _task_for(spec: ModelSpec) -> dict[str, Any]:
    """The stand-in task: the smallest lengths, so it fits any model's ``max_len``."""
    if spec.input_kind == "image":
        return {"name": TASKS["image"]}
    return {"name": TASKS.get(spec.kind, "copy"), "min_len": 1, "max_len": 1,
            "ood_min_len": 2, "ood_max_len": 2, "n_symbols": 2}  # fmt: skip


def write_run(
    model: Transformer, out: str | Path, name: str, description: str, provenance: dict[str, Any]
) -> Path:
    """A run folder ``<out>/<name>-<hash>`` holding ``model`` at step 0: ``spec.yaml``,
    ``checkpoint/`` and ``provenance.json``. Refuses a folder that exists."""
    from anyformer.lab.report import record_session
    from anyformer.training.checkpoint import save_checkpoint
    from anyformer.training.trainer import make_optimizer

    spec = ExperimentSpec.from_dict(
        {
            "name": name,
            "description": description,
            "model": model.spec.model_dump(mode="json"),
            "task": _task_for(model.spec),
        }
    )
    dest = Path(out) / f"{spec.name}-{spec.hash}"
    if dest.exists():
        raise RunFolderError(f"'{dest}' already exists; remove it or choose another --out")
    spec.save(dest / "spec.yaml")
    save_checkpoint(
        dest / "checkpoint", 0, model, make_optimizer(model, spec.train),
        {"spec_hash": spec.hash, **provenance},
    )  # fmt: skip
    record_session(dest, provenance)
    return dest


def import_hf(source: str, out: str | Path = "runs") -> tuple[Path, ModelSpec]:
    """``anyformer import hf:PATH``: the run folder of the HF model saved at ``PATH``."""
    if not source.startswith("hf:"):
        raise UserError(f"'{source}': give hf:PATH, a folder written by save_pretrained()")
    path = source[3:]
    hf = load_hf(path)
    spec, model = from_hf(hf)
    cls = type(hf).__name__
    name = f"hf-{hf.config.model_type}".replace("_", "-")
    dest = write_run(
        model, out, name, f"{cls} imported from {path} (anyformer import)",
        {"imported_from": str(Path(path).resolve()), "hf_class": cls},
    )  # fmt: skip
    return dest, spec


def export_run(run_dir: str | Path, fmt: str, out: str | Path) -> Path:
    """``anyformer export RUN --format hf|onnx|safetensors --out DIR``: writes ``DIR``
    (refused when it exists and is not empty) and returns it."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    from anyformer.lab.generate import load_run_model

    dest = Path(out)
    if dest.exists() and any(dest.iterdir()):
        raise UserError(f"--out '{dest}' exists and is not empty; choose another folder")
    spec, model = load_run_model(run_dir)
    if getattr(model, "objective_module", None) is not None and fmt != "safetensors":
        raise Unsupported(
            f"run '{run_dir}' carries its objective's own modules (objective="
            f"{spec.objective.name if spec.objective else '?'}); export the backbone's "
            f"weights with --format safetensors"
        )
    if fmt == "hf":
        hf = to_hf(model)  # refused by name before anything is written
        dest.mkdir(parents=True, exist_ok=True)
        hf.save_pretrained(dest)
    elif fmt == "onnx":
        from anyformer.interop.onnx import export_onnx

        export_onnx(model, dest / "model.onnx", check=True)
    else:
        from safetensors.torch import save_model

        dest.mkdir(parents=True, exist_ok=True)
        save_model(model, str(dest / "model.safetensors"))
    shutil.copyfile(Path(run_dir) / "spec.yaml", dest / SPEC_COPY)
    return dest


__all__ = ["FORMATS", "export_run", "hf_directory", "import_hf", "load_hf", "write_run"]
