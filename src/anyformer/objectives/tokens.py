"""What the token-level pretraining objectives share: reserved token ids, real positions,
and the masked cross-entropy.

The corrupting objectives (``mlm``, ``span_corruption``, ``masked_diffusion``) write
tokens no task emits: a mask token, T5's sentinels. They take them from the top of the
model's vocabulary (``vocab_size - 1``, ``vocab_size - 2``, ...) unless told otherwise,
so the model's ``vocab_size`` must include them: byte-level text (``text_corpus``) never
holds the bytes ``0xF5``-``0xFF`` (invalid in UTF-8), so its vocabulary of 256 already
has 11 free ids; for a task whose last ids are real tokens set ``model.vocab_size``
larger than the task's (a larger vocabulary is allowed). A reserved id that occurs in a
batch's real tokens is refused when the batch is corrupted, naming the id.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from anyformer.errors import SpecError
from anyformer.objectives.losses import Objective
from anyformer.spec import ModelSpec
from anyformer.tasks.base import Batch

#: Batch extras that describe the task's own layout of a row and stop being true once a
#: corruption rewrites it (a sequence task's scored answer positions, its prefix).
LAYOUT_EXTRAS = ("score_mask", "prefix_len", "source", "source_mask")


def real_positions(batch: Batch) -> torch.Tensor:
    """Bool ``[B, T]``: the batch's real (not padding) input positions."""
    if batch.padding_mask is not None:
        return batch.padding_mask.bool()
    return torch.ones(batch.inputs.shape[:2], dtype=torch.bool, device=batch.inputs.device)


def masked_cross_entropy(
    outputs: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of ``outputs [B, T, V]`` against ``targets [B, T]`` over the
    positions of ``mask`` (0 with a zero gradient when ``mask`` is empty)."""
    flat = mask.reshape(-1)
    logits = outputs.reshape(-1, outputs.shape[-1])[flat].float()
    if logits.shape[0] == 0:
        return outputs.sum() * 0.0
    return F.cross_entropy(logits, targets.reshape(-1)[flat])


def plain_batch(batch: Batch, **changes: object) -> Batch:
    """``batch`` with fields replaced by ``changes`` and the layout extras
    (:data:`LAYOUT_EXTRAS`) dropped unless given in ``changes['extras']``."""
    extras = {k: v for k, v in batch.extras.items() if k not in LAYOUT_EXTRAS}
    extras.update(changes.pop("extras", {}))  # type: ignore[arg-type]
    fields = {
        "inputs": batch.inputs,
        "targets": batch.targets,
        "loss_mask": batch.loss_mask,
        "padding_mask": batch.padding_mask,
        "group": batch.group,
        **changes,
    }
    return Batch(**fields, extras=extras)  # type: ignore[arg-type]


def cls_params(cls: type) -> Any:
    """The default parameters of a registered objective class."""
    from anyformer.registry import entry_of

    entry = entry_of(cls)
    if entry is None:
        raise TypeError(f"{cls.__name__} is not a registered objective")
    return entry.make_params()


class TokenObjective(Objective):
    """An objective that writes reserved token ids into its batches.

    ``reserved_ids`` (class attribute) is how many ids it takes from the top of the
    vocabulary by default; :meth:`for_model` reads the model's ``vocab_size`` (called when
    the run is built), after which :meth:`ids` gives them."""

    #: Ids taken from the top of the vocabulary when the parameters name none.
    reserved_ids = 1
    vocab_size: int | None = None

    @classmethod
    def contract_model(cls, task_vocab: int | None, task_len: int) -> dict[str, Any]:
        """A vocabulary with the default reserved ids above the task's, and the first
        head the objective reads (an encoder's default head pools)."""
        fields: dict[str, Any] = {"head": cls.heads[0]} if cls.heads else {}
        if task_vocab is not None:
            fields["vocab_size"] = task_vocab + cls(cls_params(cls)).reserved_ids
        return fields

    def for_model(self, model: ModelSpec) -> Objective:
        if model.vocab_size is None:
            raise SpecError(
                f"objective '{self.name}' writes token ids and needs model.vocab_size; "
                "this model reads no tokens (embed: tokens)"
            )
        self.vocab_size = model.vocab_size
        for field, value in self.explicit_ids().items():
            if not 0 <= value < model.vocab_size:
                raise SpecError(
                    f"objective.{field}={value} is not a token id of this model "
                    f"(model.vocab_size={model.vocab_size}: ids 0..{model.vocab_size - 1})"
                )
        if model.vocab_size < self.reserved_ids + 1:
            raise SpecError(
                f"objective '{self.name}' reserves {self.reserved_ids} token ids; "
                f"model.vocab_size={model.vocab_size} is too small"
            )
        return self

    @property
    def name(self) -> str:
        from anyformer.registry import entry_of

        entry = entry_of(type(self))
        return entry.name if entry is not None else type(self).__name__

    def explicit_ids(self) -> dict[str, int]:
        """The reserved ids the parameters set, by parameter name."""
        return {}

    def vocab(self) -> int:
        """The model's ``vocab_size`` (read by :meth:`for_model`)."""
        if self.vocab_size is None:
            raise RuntimeError(
                f"objective '{self.name}' needs the model's vocabulary: build it with "
                "anyformer.lab.run.build_objective, or call objective.for_model(spec.model)"
            )
        return self.vocab_size

    def top_ids(self, count: int) -> list[int]:
        """The ``count`` highest ids of the vocabulary, highest first."""
        vocab = self.vocab()
        return [vocab - 1 - i for i in range(count)]

    def check_free(self, batch: Batch, ids: list[int], field: str) -> None:
        """Refuse a batch whose real tokens hold one of the reserved ``ids``."""
        tokens = batch.inputs[real_positions(batch)]
        if "source" in batch.extras:
            source = batch.extras["source"]
            mask = batch.extras.get("source_mask")
            tokens = torch.cat(
                [tokens, source[mask.bool()] if mask is not None else source.reshape(-1)]
            )
        used = torch.isin(tokens, torch.tensor(ids, dtype=tokens.dtype, device=tokens.device))
        if bool(used.any()):
            clash = sorted({int(t) for t in tokens[used].unique()})
            raise SpecError(
                f"objective '{self.name}' reserves token id(s) {clash} ({field}), but the task's "
                f"data hold them; set model.vocab_size above the task's vocabulary (the top "
                f"ids are then free) or set objective.{field} to ids the task never uses"
            )
