"""What every Hugging Face architecture mapping shares: weight rules that run both ways,
the check that a config holds nothing anyformer cannot express, and refusals by name.

A mapping is a list of :class:`Rule`: one anyformer state-dict key, the HF keys it is
made from, and the two functions between them (copied, transposed for GPT-2's
``Conv1D``, concatenated for fused q/k/v, scaled for T5's unscaled scores). Importing
reads every rule forwards and loads the result strictly (every anyformer tensor comes
from HF); every HF tensor must be read by some rule, or the import is refused naming
the tensors left over. Exporting runs the rules backwards into a freshly built HF model
and refuses the HF tensors no rule writes.

Registers nothing; needs ``transformers`` only when an HF model is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from anyformer.errors import SpecError

Tensors = Sequence[torch.Tensor]


@dataclass(frozen=True)
class Rule:
    """``ours`` (an anyformer state-dict key) is ``load(HF tensors of theirs)``; the HF
    tensors are ``save(ours)``, in the order of ``theirs``."""

    ours: str
    theirs: tuple[str, ...]
    load: Callable[[Tensors], torch.Tensor]
    save: Callable[[torch.Tensor], Tensors]


def same(ours: str, theirs: str) -> Rule:
    """The tensor as it is."""
    return Rule(ours, (theirs,), lambda ts: ts[0], lambda t: [t])


def transposed(ours: str, theirs: str) -> Rule:
    """GPT-2's ``Conv1D`` stores ``[in, out]``; ``nn.Linear`` ``[out, in]``."""
    return Rule(ours, (theirs,), lambda ts: ts[0].t(), lambda t: [t.t()])


def stacked(ours: str, theirs: Sequence[str], sizes: Sequence[int]) -> Rule:
    """Rows of ``ours`` are the HF tensors one after another (fused q/k/v, gate/up)."""
    return Rule(ours, tuple(theirs), lambda ts: torch.cat(list(ts)), lambda t: t.split(list(sizes)))


def scaled(ours: str, theirs: str, factor: float) -> Rule:
    """``ours = factor * theirs`` (T5's queries: its scores are not divided by sqrt(d_head))."""
    return Rule(ours, (theirs,), lambda ts: ts[0] * factor, lambda t: [t / factor])


def stacked_scaled(
    ours: str, theirs: Sequence[str], sizes: Sequence[int], factors: Sequence[float]
) -> Rule:
    """:func:`stacked` with each part scaled by its factor."""
    return Rule(
        ours,
        tuple(theirs),
        lambda ts: torch.cat([t * f for t, f in zip(ts, factors, strict=True)]),
        lambda t: [p / f for p, f in zip(t.split(list(sizes)), factors, strict=True)],
    )


def linear(
    ours: str, theirs: str, bias: bool, rule: Callable[[str, str], Rule] = same
) -> list[Rule]:
    """The weight (and bias) of one linear or norm layer."""
    rules = [rule(f"{ours}.weight", f"{theirs}.weight")]
    if bias:
        rules.append(same(f"{ours}.bias", f"{theirs}.bias"))
    return rules


def fused(ours: str, theirs: Sequence[str], sizes: Sequence[int], bias: bool) -> list[Rule]:
    """Separate HF projections (q, k, v) as one fused anyformer projection."""
    rules = [stacked(f"{ours}.weight", [f"{t}.weight" for t in theirs], sizes)]
    if bias:
        rules.append(stacked(f"{ours}.bias", [f"{t}.bias" for t in theirs], sizes))
    return rules


class Unsupported(SpecError):
    """A model (or run) with a part the other side cannot express; exit status 2."""


def refuse(what: str, problems: Iterable[str]) -> None:
    """Raise :class:`Unsupported` listing every problem, when there is one."""
    problems = list(problems)
    if problems:
        raise Unsupported(f"{what}: " + "; ".join(problems))


#: Config fields that change nothing an imported model computes in evaluation: bookkeeping,
#: token ids, dropout (a converted model runs in eval mode; ``model.dropout`` stays 0),
#: initialisation and output switches.
HARMLESS = frozenset(
    {
        "transformers_version", "architectures", "model_type", "dtype", "torch_dtype",
        "_name_or_path", "name_or_path", "bos_token_id", "eos_token_id", "pad_token_id",
        "sep_token_id", "cls_token_id", "decoder_start_token_id", "initializer_range",
        "initializer_factor", "use_cache", "id2label", "label2id", "problem_type",
        "output_attentions", "output_hidden_states", "return_dict", "return_dict_in_generate",
        "chunk_size_feed_forward", "is_decoder", "classifier_dropout", "tokenizer_class",
        "task_specific_params", "finetuning_task", "prefix", "_attn_implementation",
        "_attn_implementation_autoset", "use_return_dict", "gradient_checkpointing",
    }
)  # fmt: skip


def config_problems(config: Any, arch: str, handled: Iterable[str]) -> list[str]:
    """The fields of ``config`` set to a non-default value that neither the mapping
    (``handled``) nor :data:`HARMLESS` accounts for (dropout probabilities are harmless)."""
    diff = config.to_diff_dict()
    known = set(handled) | HARMLESS
    return [
        f"config field {key}={value!r} (non-default; anyformer has no equivalent for {arch})"
        for key, value in sorted(diff.items())
        if key not in known and "dropout" not in key and not key.endswith("pdrop")
    ]


def import_state(
    hf: nn.Module, rules: list[Rule], arch: str, ignore: Iterable[str] = ()
) -> dict[str, torch.Tensor]:
    """anyformer's state dict from ``hf``'s by ``rules``; refuses HF tensors no rule reads
    (other than buffers named in ``ignore``, matched as suffixes)."""
    theirs = {k: v.detach() for k, v in hf.state_dict().items()}
    used = {key for rule in rules for key in rule.theirs}
    missing = sorted(used - theirs.keys())
    if missing:
        raise Unsupported(f"this {arch} lacks tensors the mapping reads: {', '.join(missing[:6])}")
    skip = tuple(ignore)
    left = sorted(k for k in theirs.keys() - used if not k.endswith(skip))
    refuse(
        f"cannot import this {arch}",
        [f"tensors with no anyformer equivalent: {', '.join(left[:8])}"] if left else [],
    )
    return {rule.ours: rule.load([theirs[k] for k in rule.theirs]).clone() for rule in rules}


def load_ours(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load ``state`` strictly (every anyformer tensor mapped, nothing extra)."""
    with torch.no_grad():
        model.load_state_dict(state, strict=True)


def export_state(
    model: nn.Module, hf: nn.Module, rules: list[Rule], arch: str, ignore: Iterable[str] = ()
) -> None:
    """Write ``model``'s weights into ``hf`` by ``rules`` run backwards; refuses anyformer
    tensors no rule reads and HF tensors no rule writes (buffers in ``ignore`` aside)."""
    ours = {k: v.detach() for k, v in model.state_dict().items()}
    read = {rule.ours for rule in rules}
    left = sorted(ours.keys() - read)
    refuse(
        f"cannot export this model as {arch}",
        [f"tensors with no HF equivalent: {', '.join(left[:8])}"] if left else [],
    )
    state: dict[str, torch.Tensor] = {}
    for rule in rules:
        for key, tensor in zip(rule.theirs, rule.save(ours[rule.ours]), strict=True):
            state[key] = tensor.contiguous().clone()
    with torch.no_grad():
        missing, unexpected = hf.load_state_dict(state, strict=False)
    skip = tuple(ignore)
    missing = [k for k in missing if not k.endswith(skip)]
    if missing or unexpected:
        raise AssertionError(
            f"{arch} mapping incomplete: missing {missing}, unexpected {unexpected}"
        )


__all__ = [
    "HARMLESS",
    "Rule",
    "Unsupported",
    "config_problems",
    "export_state",
    "fused",
    "import_state",
    "linear",
    "load_ours",
    "refuse",
    "same",
    "scaled",
    "stacked",
    "stacked_scaled",
    "transposed",
]
