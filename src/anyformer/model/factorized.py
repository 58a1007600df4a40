"""Low-rank factorization of linear layers (Greenformers; ``anyformer factorize``).

A weight ``W [out, in]`` is replaced by its truncated singular value decomposition
``W ~ U_r S_r V_r^T``, computed as two linear layers: ``first = sqrt(S_r) V_r^T [r, in]``
(no bias) and ``second = U_r sqrt(S_r) [out, r]`` (with the original bias). At rank
``r`` the layer has ``r (in + out)`` weights instead of ``in out``; by Eckart-Young the
truncation is the best rank-``r`` approximation in Frobenius norm, and at full rank
``min(in, out)`` it equals the original. ``ModelSpec.factorized`` records the rank of
each replaced layer by module name, so a factorized model is rebuilt from its spec
(:func:`apply_factorized`) and its weights load from its checkpoint. With
``ModelSpec.factorized_sparsity`` the same layers become DSFormer's dense x N:M-sparse
products instead (:mod:`anyformer.model.dense_sparse`).

Paper: "Greenformers: Improving Computation and Memory Efficiency in Transformer Models
via Low-Rank Approximation", Cahyawijaya, 2021.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from anyformer.errors import SpecError
from anyformer.model.dense_sparse import DenseSparseLinear, dense_sparse_linear

#: Attributes of a linear layer other code reads (the fused q/k/v split, the residual
#: projection's scaled init); a factorized layer keeps them.
KEPT_ATTRIBUTES = ("head_groups", "residual_projection")


class FactorizedLinear(nn.Module):
    """``second(first(x))``: a rank-``rank`` linear map ``in_features -> out_features``."""

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.first = nn.Linear(in_features, rank, bias=False)
        self.second = nn.Linear(rank, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x))

    def n_weights(self) -> int:
        """Weights without the bias: ``rank (in + out)``."""
        return self.rank * (self.in_features + self.out_features)

    @property
    def weight(self) -> torch.Tensor:
        """The dense ``[out, in]`` weight this layer computes (``second.weight @ first.weight``)."""
        return self.second.weight @ self.first.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.second.bias

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"


def max_rank(linear: nn.Linear) -> int:
    """The largest rank a layer can be factorized at: ``min(in, out)``."""
    return min(linear.in_features, linear.out_features)


def factorized_params(linear: nn.Linear, rank: int) -> int:
    """Parameters of ``linear`` factorized at ``rank``: ``rank (in + out)`` plus the bias."""
    bias = linear.out_features if linear.bias is not None else 0
    return rank * (linear.in_features + linear.out_features) + bias


def saves_params(linear: nn.Linear, rank: int) -> bool:
    """Whether factorizing at ``rank`` leaves fewer weights: ``rank (in + out) < in out``."""
    return (
        rank * (linear.in_features + linear.out_features) < linear.in_features * linear.out_features
    )


def singular_values(linear: nn.Linear) -> torch.Tensor:
    """The singular values of the layer's weight, largest first (float64)."""
    return torch.linalg.svdvals(linear.weight.detach().double())


def rank_for_energy(values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values keep ``energy`` of ``sum(s^2)``."""
    power = values.double().pow(2)
    kept = power.cumsum(0) / power.sum().clamp_min(1e-300)
    return int(torch.searchsorted(kept, torch.tensor(energy, dtype=kept.dtype) - 1e-12).item()) + 1


@torch.no_grad()
def factorize_linear(linear: nn.Linear, rank: int) -> FactorizedLinear:
    """The truncated SVD of ``linear`` at ``rank`` as a :class:`FactorizedLinear`."""
    if not 1 <= rank <= max_rank(linear):
        raise ValueError(f"rank {rank} outside 1..{max_rank(linear)}")
    w = linear.weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    new = FactorizedLinear(linear.in_features, linear.out_features, rank, linear.bias is not None)
    new.to(device=linear.weight.device, dtype=linear.weight.dtype)
    new.first.weight.copy_((root[:, None] * vh[:rank]).to(linear.weight.dtype))
    new.second.weight.copy_((u[:, :rank] * root[None, :]).to(linear.weight.dtype))
    if linear.bias is not None:
        new.second.bias.copy_(linear.bias)
    for name in KEPT_ATTRIBUTES:
        if hasattr(linear, name):
            setattr(new, name, getattr(linear, name))
    return new


def factorizable(model: nn.Module) -> dict[str, nn.Linear]:
    """The linear layers of the model's blocks by module name (``blocks.0.mixer.qkv``):
    the embedder, position scheme and head (often tied to the embedder) stay dense."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        return {}
    return {
        f"blocks.{name}": module
        for name, module in blocks.named_modules()
        if type(module) is nn.Linear
    }


def apply_factorized(
    model: nn.Module, ranks: Mapping[str, int], sparsity: Any = None, iters: int = 0
) -> nn.Module:
    """Replace each named linear layer of ``model`` by its SVD at the given rank, in place
    (the structure ``ModelSpec.factorized`` records; a checkpoint then loads the weights),
    or, with ``sparsity`` (``ModelSpec.factorized_sparsity``: ``n``, ``m``, ``mask``), by
    its dense x N:M-sparse fit with ``iters`` rounds of alternating least squares.
    Refuses, naming ``model.factorized``, a name that is no linear layer of the blocks or a
    rank above ``min(in, out)``, and, naming ``model.factorized_sparsity.m``, a layer whose
    inputs are not a multiple of ``m``."""
    layers = factorizable(model)
    for name, rank in ranks.items():
        linear = layers.get(name)
        if linear is None:
            known = ", ".join(list(layers)[:6])
            raise SpecError(
                f"model.factorized: '{name}' is not a linear layer of the blocks (e.g. {known})"
            )
        if rank > max_rank(linear):
            raise SpecError(
                f"model.factorized.{name}={rank} exceeds the layer's rank "
                f"{max_rank(linear)} ({linear.out_features}x{linear.in_features}); "
                f"valid: 1..{max_rank(linear)}"
            )
        if sparsity is not None and linear.in_features % sparsity.m:
            raise SpecError(
                f"model.factorized_sparsity.m={sparsity.m}: layer '{name}' has "
                f"{linear.in_features} inputs, not a multiple of m; valid: an m dividing "
                f"every factorized layer's inputs (e.g. 4)"
            )
        if sparsity is None:
            new: nn.Module = factorize_linear(linear, rank)
        else:
            learned = sparsity.mask == "learned"
            new = dense_sparse_linear(linear, rank, sparsity.n, sparsity.m, learned, iters)
            for attr in KEPT_ATTRIBUTES:
                if hasattr(linear, attr):
                    setattr(new, attr, getattr(linear, attr))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, new)
    return model


def stored_params(model: nn.Module) -> int:
    """Parameters a factorized model stores: every parameter (shared ones once), with
    the sparse factor of each :class:`DenseSparseLinear` counted at its nonzeros
    (``rank in n / m``) instead of its dense ``rank in`` (the mask's position bits are
    not parameters: :func:`~anyformer.model.dense_sparse.mask_bits`)."""
    seen: dict[int, int] = {id(p): p.numel() for p in model.parameters()}
    for module in model.modules():
        if isinstance(module, DenseSparseLinear):
            s = module.first.weight
            seen[id(s)] = s.numel() * module.n // module.m
    return sum(seen.values())


__all__ = [
    "FactorizedLinear",
    "apply_factorized",
    "factorizable",
    "factorize_linear",
    "factorized_params",
    "max_rank",
    "rank_for_energy",
    "saves_params",
    "singular_values",
    "stored_params",
]
