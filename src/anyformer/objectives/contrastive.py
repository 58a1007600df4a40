"""InfoNCE between paired rows: a query and the key it belongs to (retrieval).

A retrieval batch holds ``n`` queries, then the rows of their ``n`` keys (a key may
span several rows: the blocks of a long function under split-encode-aggregate). The
model embeds every row (a pooled head, e.g. ``embed``); ``extras["owner"]`` gives the
pair index of each key row, whose embeddings are averaged into the key's embedding
(SEA's aggregation by mean pooling). Query and key embeddings are L2-normalised and the
loss is the cross-entropy of each query's similarities over the batch's keys at
temperature ``temperature`` (every other pair is an in-batch negative), averaged with
the same loss from keys to queries when ``symmetric``.

Papers: UniXcoder (Guo et al., 2022) learns code representations contrastively; the
in-batch InfoNCE form is the one its code search fine-tuning uses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from anyformer.components.heads.linear import UNIXCODER
from anyformer.objectives.losses import Objective
from anyformer.registry import Capabilities, register
from anyformer.tasks.base import Batch


class InfoNCEParams(BaseModel):
    """- ``temperature``: divides the cosine similarities (0.05).
    - ``symmetric``: also the loss from keys to queries."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    temperature: float = Field(0.05, gt=0.0)
    symmetric: bool = True


def paired_embeddings(outputs: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(queries [n, d], keys [n, d])``, L2-normalised, from a retrieval batch's row
    embeddings: the first ``n`` rows are queries, the rest key rows averaged per
    ``extras["owner"]`` (the pair each key row belongs to)."""
    owner = batch.extras["owner"]
    n = outputs.shape[0] - owner.shape[0]
    emb = outputs.float()
    queries, rows = emb[:n], emb[n:]
    keys = torch.zeros(n, emb.shape[1], device=emb.device).index_add_(0, owner, rows)
    counts = torch.bincount(owner, minlength=n).clamp(min=1).unsqueeze(1)
    return F.normalize(queries, dim=-1), F.normalize(keys / counts, dim=-1)


@register(
    "objective",
    "info_nce",
    paper=UNIXCODER,
    summary="contrastive query-key loss with in-batch negatives over L2-normalised "
    "embeddings; multi-row keys mean-pooled (split-encode-aggregate)",
    params=InfoNCEParams,
    caps=Capabilities(),
)
class InfoNCE(Objective):
    """Cross-entropy of each query's similarities to the batch's keys (see the module)."""

    heads = ("embed", "regress", "classify")

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        if outputs.dim() != 2 or "owner" not in batch.extras:
            raise ValueError(
                "info_nce needs a retrieval batch (queries, then key rows with "
                "extras['owner']) and a pooled head giving [rows, d] embeddings; got "
                f"outputs {tuple(outputs.shape)}"
            )
        q, k = paired_embeddings(outputs, batch)
        logits = q @ k.T / self.params.temperature
        target = torch.arange(q.shape[0], device=q.device)
        loss = F.cross_entropy(logits, target)
        if self.params.symmetric:
            loss = (loss + F.cross_entropy(logits.T, target)) / 2
        return loss
