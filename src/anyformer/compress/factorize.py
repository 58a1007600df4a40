"""``anyformer factorize RUN --rank r | --energy e``: low-rank SVD factorization of a
trained run's linear layers into a new, smaller run folder (Greenformers).

Every linear layer of the blocks (q/k/v and output projections, FFN layers; the embedder
and the head stay dense) is replaced by its truncated SVD ``W ~ U_r S_r V_r^T`` as two
thinner linear layers (:mod:`anyformer.model.factorized`), at one rank for all (``rank``)
or at the smallest rank of each layer keeping ``energy`` of its squared singular values.
A layer whose factorization would not save weights (``r (in + out) >= in out``) stays
dense. The new folder's spec records each layer's rank (``model.factorized``), its
checkpoint holds the factorized weights at the parent's step, and its report compares it
with the parent on the parent's evaluation; ``anyformer resume`` continues training it
(recovery fine-tuning with ``train.steps`` raised).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from torch import nn

from anyformer.compress.parent_report import compare_with_parent, own_params
from anyformer.errors import RunFolderError, SpecError
from anyformer.lab.loaded import load_run
from anyformer.lab.run import run_experiment
from anyformer.model.factorized import (
    apply_factorized,
    factorizable,
    max_rank,
    rank_for_energy,
    saves_params,
    singular_values,
)
from anyformer.spec import ExperimentSpec


def choose_ranks(
    model: nn.Module, rank: int | None = None, energy: float | None = None
) -> dict[str, int]:
    """The rank of each layer to factorize: ``rank`` (capped at each layer's
    ``min(in, out)``) or the smallest keeping ``energy``; layers where factorizing saves
    no weights are left out. Exactly one of ``rank`` and ``energy`` is given; bad values
    are refused naming the option, the value and what is valid."""
    layers = factorizable(model)
    if not layers:
        raise SpecError("factorize: the model has no linear layers in its blocks to factorize")
    if (rank is None) == (energy is None):
        raise SpecError("factorize: give exactly one of --rank and --energy")
    largest = max(max_rank(lin) for lin in layers.values())
    if rank is not None and not 1 <= rank <= largest:
        raise SpecError(
            f"--rank={rank} is invalid: the model's linear layers have rank at most "
            f"{largest}; valid: 1..{largest}"
        )
    if energy is not None and not 0.0 < energy <= 1.0:
        raise SpecError(f"--energy={energy} is invalid: a fraction in (0, 1] of sum(s^2)")
    ranks = {}
    for name, lin in layers.items():
        r = min(rank, max_rank(lin)) if rank is not None else None
        if r is None:
            r = rank_for_energy(singular_values(lin), energy)  # type: ignore[arg-type]
        if saves_params(lin, r):
            ranks[name] = r
    return ranks


def factorize_run(
    run_dir: Path | str,
    rank: int | None = None,
    energy: float | None = None,
    out: Path | str | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Write the factorized model of a run as a new run folder
    (``<out>/<name>-r<rank>|e<energy>-<hash>``, ``out`` defaulting to the run's parent
    folder), evaluate it and compare it with the parent. Returns the folder and the
    record written to its ``parent.json``."""
    from anyformer.training.checkpoint import latest_checkpoint, save_checkpoint
    from anyformer.training.trainer import make_optimizer

    parent = load_run(run_dir)
    ranks = choose_ranks(parent.model, rank, energy)
    if not ranks:
        raise SpecError(
            f"factorize: at {'--rank=' + str(rank) if rank else '--energy=' + str(energy)} no "
            f"layer would get smaller (a layer saves weights only when r (in + out) < in out)"
        )
    small = copy.deepcopy(parent.model)
    apply_factorized(small, ranks)
    model_data = {**parent.spec.model.model_dump(mode="json"), "factorized": ranks}
    new = ExperimentSpec.from_dict({**parent.spec.to_dict(), "model": model_data})
    label = f"r{rank}" if rank is not None else f"e{energy:g}"
    folder = Path(run_dir)
    dest = (
        Path(out) if out is not None else folder.parent
    ) / f"{parent.spec.name}-{label}-{new.hash}"
    if dest.exists():
        raise RunFolderError(f"'{dest}' already exists; remove it or choose another --out")
    state = json.loads((latest_checkpoint(folder / "checkpoint") / "state.json").read_text())
    new.save(dest / "spec.yaml")
    info = {"spec_hash": new.hash, "spec": new.to_dict(), "factorized_from": str(folder)}
    save_checkpoint(
        dest / "checkpoint", int(state["step"]), small, make_optimizer(small, new.train), info
    )
    run_experiment(
        new, run_dir=dest, provenance={"factorize": str(folder), "rank": rank, "energy": energy}
    )
    child = load_run(dest)
    before, after = own_params(parent.model), own_params(child.model)
    extra = {
        "parent": str(folder),
        "ranks": ranks,
        "params_parent": before,
        "params_factorized": after,
        "params_ratio": after / before,
    }
    compare_with_parent(
        dest,
        "Compared with the parent (low-rank SVD factorization)",
        ("parent", parent.spec, parent.model),
        ("factorized", child.model),
        parent.task,
        extra=extra,
    )
    return dest, json.loads((dest / "parent.json").read_text())


__all__ = ["choose_ranks", "factorize_run"]
