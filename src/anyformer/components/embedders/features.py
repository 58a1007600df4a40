"""Feature tokenizer for tables: one token per column (FT-Transformer), plus a CLS token."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, NonNegativeInt
from torch import nn

from anyformer.components.embedders.base import Embedder, TokenLayout
from anyformer.registry import Capabilities, Paper, register


class FeaturesParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: one entry per column: 0 = numerical, K > 0 = categorical with K categories
    #: (empty: every column numerical)
    categories: list[NonNegativeInt] = []
    cls: bool = True


def _columns(params: FeaturesParams, spec: Any) -> int | None:
    shape = getattr(spec, "input_shape", None)
    if shape is None or len(shape) != 1 or int(shape[0]) < 1:
        return None
    return int(shape[0])


@register(
    "embedder",
    "features",
    paper=Paper("Revisiting Deep Learning Models for Tabular Data", 2021, "Gorishniy et al."),
    summary="feature tokenizer: a numerical column -> value * w_j + b_j (NaN -> a learned "
    "missing vector), a categorical one -> its embedding (+ an 'unknown' row); plus CLS",
    params=FeaturesParams,
    caps=Capabilities(input_kind="table"),
)
class FeatureTokenizer(Embedder):
    """FT-Transformer's feature tokenizer over ``[B, n_columns]`` float rows.

    Column ``j`` becomes one ``d_model`` token: a numerical column's value ``x_j`` gives
    ``x_j * w_j + b_j`` (``w_j``, ``b_j`` learned per column), a NaN gives the column's
    learned "missing" vector ``m_j`` instead; a categorical column with ``K_j``
    categories holds the index as a small float and gives ``E_j[x_j] + b_j``, where
    ``E_j`` has ``K_j + 1`` rows and row ``K_j`` is the "unknown" category (also used for
    NaN, out-of-range or non-integer values). A learned CLS token comes first
    (``cls=false`` drops it). Columns carry their identity in their own parameters, so
    the tokens need no positions (use ``position: none``).
    Paper: "Revisiting Deep Learning Models for Tabular Data", Gorishniy et al., 2021.
    """

    def __init__(self, spec: Any, params: FeaturesParams) -> None:
        super().__init__()
        problem = self.check(params, spec)
        if problem:
            raise ValueError(problem)
        n = _columns(params, spec)
        assert n is not None
        kinds = list(params.categories) or [0] * n
        d = spec.d_model
        num = [j for j, k in enumerate(kinds) if k == 0]
        cat = [j for j, k in enumerate(kinds) if k > 0]
        self.register_buffer("num_cols", torch.tensor(num, dtype=torch.long), persistent=False)
        self.register_buffer("cat_cols", torch.tensor(cat, dtype=torch.long), persistent=False)
        # tokens are built as [numerical..., categorical...]; this puts them in column order
        order = torch.argsort(torch.tensor(num + cat, dtype=torch.long))
        self.register_buffer("order", order, persistent=False)
        scale = d**-0.5
        self.weight = nn.Parameter(torch.randn(len(num), d) * scale) if num else None
        self.bias_num = nn.Parameter(torch.randn(len(num), d) * scale) if num else None
        self.missing = nn.Parameter(torch.randn(len(num), d) * scale) if num else None
        sizes = [kinds[j] for j in cat]
        offsets = [sum(k + 1 for k in sizes[:i]) for i in range(len(sizes))]
        self.register_buffer("sizes", torch.tensor(sizes, dtype=torch.long), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.long), persistent=False)
        self.table = nn.Embedding(sum(k + 1 for k in sizes), d) if cat else None
        if self.table is not None:
            nn.init.normal_(self.table.weight, std=scale)
        self.bias_cat = nn.Parameter(torch.randn(len(cat), d) * scale) if cat else None
        self.cls = nn.Parameter(torch.randn(1, 1, d) * scale) if params.cls else None

    @classmethod
    def layout(cls, params: FeaturesParams, spec: Any) -> TokenLayout:
        n = _columns(params, spec)
        if n is None:
            return TokenLayout(length=None)
        return TokenLayout(length=n + int(params.cls), grid=None, n_prefix=int(params.cls))

    @classmethod
    def check(cls, params: FeaturesParams, spec: Any) -> str | None:
        n = _columns(params, spec)
        if n is None:
            shape = getattr(spec, "input_shape", None)
            shown = "None" if shape is None else str(list(shape))
            return (
                f"embedder 'features' reads table rows, but model.input_shape={shown}; it "
                f"needs [n_columns] (a table task sets it)"
            )
        if params.categories and len(params.categories) != n:
            return (
                f"embedder.categories lists {len(params.categories)} columns but "
                f"model.input_shape={list(spec.input_shape)} has {n}; give one entry per "
                f"column (0 = numerical, K = categorical with K categories)"
            )
        return None

    def category_index(self, values: torch.Tensor) -> torch.Tensor:
        """Row indices into the shared table for the categorical values ``[B, n_cat]``:
        ``offset_j + x_j``, or ``offset_j + K_j`` (unknown) for a value that is not an
        integer in ``0..K_j-1``."""
        rounded = torch.nan_to_num(values, nan=-1.0).round()
        known = (rounded == values) & (rounded >= 0) & (rounded < self.sizes)
        index = torch.where(known, rounded, self.sizes.to(values.dtype)).long()
        return self.offsets + index

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        parts = []
        if self.weight is not None:
            x = inputs[:, self.num_cols]
            nan = torch.isnan(x).unsqueeze(-1)
            value = torch.nan_to_num(x, nan=0.0).unsqueeze(-1) * self.weight + self.bias_num
            parts.append(torch.where(nan, self.missing.to(value.dtype), value))  # type: ignore[union-attr]
        if self.table is not None:
            index = self.category_index(inputs[:, self.cat_cols])
            parts.append(self.table(index) + self.bias_cat)
        tokens = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        if len(parts) > 1:
            tokens = tokens[:, self.order]
        if self.cls is not None:
            tokens = torch.cat(
                [self.cls.expand(inputs.shape[0], -1, -1).to(tokens.dtype), tokens], 1
            )
        return tokens
