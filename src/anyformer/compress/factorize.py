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

With ``sparsity`` (``--sparsity N:M``, DSFormer) each chosen layer becomes a dense
``D [out, r]`` times an N:M-sparse ``S [r, in]`` (:mod:`anyformer.model.dense_sparse`),
fitted from the SVD by alternating least squares (``FIT_ITERS`` rounds), recorded as
``model.factorized`` plus ``model.factorized_sparsity`` (``n``, ``m``, ``mask``); with
``mask: learned`` recovery training is DSFormer's Straight-Through Factorizer.
``equal_params`` reads ``rank`` as the SVD rank to match: each layer then gets the
largest dense x sparse rank that stores no more weights than rank-``rank`` SVD factors
(``r (out + in n / m) <= rank (in + out)``). Every layer's relative approximation error
``||W - W'|| / ||W||`` is recorded, beside the SVD's at the same stored weights.
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
from anyformer.model.dense_sparse import dense_sparse_params, mask_bits, relative_error
from anyformer.model.factorized import (
    apply_factorized,
    factorizable,
    max_rank,
    rank_for_energy,
    saves_params,
    singular_values,
)
from anyformer.model.flops import count_params
from anyformer.spec import ExperimentSpec, FactorizedSparsity

#: rounds of alternating least squares fitting a dense x sparse factorization
FIT_ITERS = 5


def parse_sparsity(text: str, mask: str = "learned") -> FactorizedSparsity:
    """``"N:M"`` (and ``mask``) as a :class:`FactorizedSparsity`; refused naming
    ``--sparsity`` / ``--mask``, the value and what is valid."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SpecError(f"--sparsity={text!r} is invalid: give N:M with 1 <= N <= M, e.g. 2:4")
    n, m = (int(p) for p in parts)
    if not 1 <= n <= m <= 256:
        raise SpecError(f"--sparsity={text!r} is invalid: needs 1 <= N <= M <= 256, e.g. 2:4")
    if mask not in ("learned", "fixed"):
        raise SpecError(f"--mask={mask!r} is invalid; valid: learned, fixed")
    return FactorizedSparsity(n=n, m=m, mask=mask)  # type: ignore[arg-type]


def _layer_params(lin: nn.Linear, rank: int, sparsity: FactorizedSparsity | None) -> int:
    """Weights of ``lin`` factorized at ``rank`` (no bias)."""
    if sparsity is None:
        return rank * (lin.in_features + lin.out_features)
    return dense_sparse_params(lin.in_features, lin.out_features, rank, sparsity.n,
                               sparsity.m, bias=False)  # fmt: skip


def matched_rank(lin: nn.Linear, svd_rank: int, sparsity: FactorizedSparsity) -> int:
    """The largest dense x sparse rank (at most ``min(in, out)``) storing no more
    weights than ``lin``'s SVD factors at ``svd_rank``."""
    budget = svd_rank * (lin.in_features + lin.out_features)
    r = min(max_rank(lin), svd_rank)
    while r < max_rank(lin) and _layer_params(lin, r + 1, sparsity) <= budget:
        r += 1
    return r


def choose_ranks(
    model: nn.Module,
    rank: int | None = None,
    energy: float | None = None,
    sparsity: FactorizedSparsity | None = None,
    equal_params: bool = False,
) -> dict[str, int]:
    """The rank of each layer to factorize: ``rank`` (capped at each layer's
    ``min(in, out)``) or the smallest keeping ``energy``; with ``sparsity`` and
    ``equal_params`` the dense x sparse rank matching those SVD factors' weights
    (:func:`matched_rank`). Layers where factorizing saves no weights are left out
    (with ``sparsity``, also layers whose inputs are not a multiple of ``m``). Exactly
    one of ``rank`` and ``energy`` is given; bad values are refused naming the option,
    the value and what is valid."""
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
    if equal_params and sparsity is None:
        raise SpecError("--equal-params needs --sparsity N:M (it matches dense x sparse "
                        "factors to the SVD's weights)")  # fmt: skip
    ranks = {}
    for name, lin in layers.items():
        r = min(rank, max_rank(lin)) if rank is not None else None
        if r is None:
            r = rank_for_energy(singular_values(lin), energy)  # type: ignore[arg-type]
        if sparsity is None:
            if saves_params(lin, r):
                ranks[name] = r
            continue
        if lin.in_features % sparsity.m:
            continue
        if equal_params:
            r = matched_rank(lin, r, sparsity)
        if _layer_params(lin, r, sparsity) < lin.in_features * lin.out_features:
            ranks[name] = r
    return ranks


def approximation_report(
    dense: dict[str, nn.Linear], small: nn.Module, ranks: dict[str, int],
    sparsity: FactorizedSparsity | None,
) -> dict[str, Any]:  # fmt: skip
    """Per layer: the relative error ``||W - W'|| / ||W||`` of the factorized layer, its
    stored weights, and the error of the SVD storing at most as many (the truncation
    error, Eckart-Young); plus the weighted mean errors and the mask's bits."""
    layers = {n: small.get_submodule(n) for n in ranks}
    rows, bits = {}, 0
    for name, lin in dense.items():
        if name not in ranks:
            continue
        weights = _layer_params(lin, ranks[name], sparsity)
        svd_rank = weights // (lin.in_features + lin.out_features)
        s = singular_values(lin)
        svd_err = float(s[svd_rank:].pow(2).sum().sqrt() / s.pow(2).sum().sqrt().clamp_min(1e-300))
        rows[name] = {
            "rank": ranks[name],
            "weights": weights,
            "error": relative_error(layers[name], lin.weight),
            "svd_rank_same_weights": svd_rank,
            "svd_error_same_weights": svd_err,
        }
        if sparsity is not None:
            bits += mask_bits(lin.in_features, ranks[name], sparsity.n, sparsity.m)
    total = sum(r["weights"] for r in rows.values()) or 1
    return {
        "layers": rows,
        "mean_error": sum(r["error"] * r["weights"] for r in rows.values()) / total,
        "mean_svd_error_same_weights": sum(
            r["svd_error_same_weights"] * r["weights"] for r in rows.values()
        )
        / total,
        "mask_bits": bits,
    }


def factorize_run(
    run_dir: Path | str,
    rank: int | None = None,
    energy: float | None = None,
    out: Path | str | None = None,
    sparsity: FactorizedSparsity | None = None,
    equal_params: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Write the factorized model of a run as a new run folder
    (``<out>/<name>-r<rank>|e<energy>-<hash>``, ``out`` defaulting to the run's parent
    folder), evaluate it and compare it with the parent. Returns the folder and the
    record written to its ``parent.json``."""
    from anyformer.training.checkpoint import latest_checkpoint, save_checkpoint
    from anyformer.training.trainer import make_optimizer

    parent = load_run(run_dir)
    ranks = choose_ranks(parent.model, rank, energy, sparsity, equal_params)
    if not ranks:
        raise SpecError(
            f"factorize: at {'--rank=' + str(rank) if rank else '--energy=' + str(energy)} no "
            f"layer would get smaller (a layer saves weights only when r (in + out) < in out)"
        )
    small = copy.deepcopy(parent.model)
    apply_factorized(small, ranks, sparsity, FIT_ITERS)
    model_data = {**parent.spec.model.model_dump(mode="json"), "factorized": ranks}
    if sparsity is not None:
        model_data["factorized_sparsity"] = sparsity.model_dump(mode="json")
    new = ExperimentSpec.from_dict({**parent.spec.to_dict(), "model": model_data})
    label = f"r{rank}" if rank is not None else f"e{energy:g}"
    if sparsity is not None:
        label += f"-{'eq' if equal_params else ''}ds{sparsity.n}of{sparsity.m}{sparsity.mask[0]}"
    approx = approximation_report(factorizable(parent.model), small, ranks, sparsity)
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
    provenance = {"factorize": str(folder), "rank": rank, "energy": energy}
    if sparsity is not None:
        provenance |= {"sparsity": f"{sparsity.n}:{sparsity.m}", "mask": sparsity.mask,
                       "equal_params": equal_params}  # fmt: skip
    run_experiment(new, run_dir=dest, provenance=provenance)
    child = load_run(dest)
    before, after = own_params(parent.model), own_params(child.model)  # nonzeros of S
    extra = {
        "parent": str(folder),
        "ranks": ranks,
        "params_parent": before,
        "params_factorized": after,
        "params_ratio": after / before,
        "approximation": approx,
    }
    if sparsity is not None:
        extra |= {"sparsity": sparsity.model_dump(mode="json"),
                  "params_dense_storage": count_params(child.model)}  # fmt: skip
    kind = "low-rank SVD" if sparsity is None else (
        f"dense x {sparsity.n}:{sparsity.m}-sparse, {sparsity.mask} mask")  # fmt: skip
    compare_with_parent(
        dest,
        f"Compared with the parent ({kind} factorization)",
        ("parent", parent.spec, parent.model),
        ("factorized", child.model),
        parent.task,
        extra=extra,
    )
    return dest, json.loads((dest / "parent.json").read_text())


__all__ = [
    "FIT_ITERS",
    "approximation_report",
    "choose_ranks",
    "factorize_run",
    "matched_rank",
    "parse_sparsity",
]
