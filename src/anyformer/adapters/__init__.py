"""Parameter-efficient adaptation of any model: LoRA, prompt tuning, prefix tuning and
BitFit (``ExperimentSpec.adapter``, :class:`~anyformer.spec.AdapterSpec`).

:func:`apply_adapter` adds an adapter to a built model and freezes everything else:
only the adapter's parameters train, and the head when ``train_head`` (a head tied to
the embedder stays frozen, since training it would train the embedding). The backbone's
parameter names never change (adapter parameters are new children: ``*.lora_A``,
``*.lora_B``, ``prompt.tokens``, ``blocks.N.mixer.prefix.*``), so a parent run's
checkpoint loads into an adapted model (:func:`is_adapter_key` tells which keys are the
adapter's). :func:`adapter_state` is what ``adapter.safetensors`` holds, LoRA factors
under peft's names (``base_model.model.<layer>.lora_A.weight``) so that
``peft.set_peft_model_state_dict`` loads them into a peft model of the same layers;
:func:`peft_config` is the matching ``adapter_config.json``. :func:`merge` folds LoRA
into the weights (``anyformer merge RUN``).

- :mod:`.lora`: Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", 2021;
- :mod:`.prompt`: Lester et al., "The Power of Scale for Parameter-Efficient Prompt
  Tuning", 2021;
- :mod:`.prefix`: Li and Liang, "Prefix-Tuning: Optimizing Continuous Prompts for
  Generation", 2021;
- BitFit: Ben Zaken et al., "BitFit: Simple Parameter-efficient Fine-tuning for
  Transformer-based Masked Language-models", 2022 (every bias term trains, nothing else).
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyformer.adapters.lora import add_lora, lora_layers, merge_lora
from anyformer.adapters.prefix import add_prefix
from anyformer.adapters.prompt import add_prompt
from anyformer.errors import SpecError
from anyformer.spec import AdapterSpec

__all__ = [
    "PEFT_PREFIX",
    "adapter_state",
    "apply_adapter",
    "is_adapter_key",
    "load_adapter_state",
    "matching_linears",
    "merge",
    "peft_config",
    "save_adapter",
    "trainable_names",
]

#: what peft puts before a module's name in its state dicts
PEFT_PREFIX = "base_model.model."
_ADAPTER_KEY = re.compile(r"(^|\.)(lora_A|lora_B|prefix)\.|^prompt\.")


def is_adapter_key(name: str) -> bool:
    """Whether a state-dict key belongs to an adapter (not the backbone or head)."""
    return bool(_ADAPTER_KEY.search(name))


def _matches(name: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.fullmatch(target[3:], name) is not None
    return fnmatch.fnmatchcase(name, target)


def matching_linears(model: nn.Module, target: str) -> list[tuple[str, nn.Linear]]:
    """``(name, layer)`` of every ``nn.Linear`` whose name matches ``target`` (a glob, or
    ``re:<pattern>`` matched against the whole name). Refused naming ``adapter.target``
    when none does."""
    found = [
        (n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear) and _matches(n, target)
    ]
    bypassed = [
        (n, m.weight_read_by_parent) for n, m in found if hasattr(m, "weight_read_by_parent")
    ]
    if bypassed:
        name, why = bypassed[0]
        raise SpecError(
            f"adapter.target={target!r} matches '{name}': {why}, so a LoRA update on it "
            f"would never run; choose a target without it (e.g. 're:.*(?<!first)')"
        )
    if not found:
        names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
        raise SpecError(
            f"adapter.target={target!r} matches no linear layer of the model; its linear "
            f"layers are named {shown} (a glob such as 'blocks.*.mixer.*' or 're:<pattern>')"
        )
    return found


def _head_trainable(model: nn.Module) -> bool:
    head, embed = getattr(model, "head", None), getattr(model, "embed", None)
    tied = getattr(head, "weight", None) is not None and head.weight is getattr(embed, "weight", 0)
    return not tied


def apply_adapter(model: nn.Module, spec: AdapterSpec | None) -> list[str]:
    """Add ``spec``'s adapter to ``model`` in place and freeze the rest; returns the
    names of the parameters that train. ``None``: nothing (every name)."""
    if spec is None:
        return [n for n, _ in model.named_parameters()]
    if spec.kind == "lora":
        for _, layer in matching_linears(model, spec.target):
            add_lora(layer, spec.rank, spec.alpha, spec.dropout)
    elif spec.kind == "prompt":
        add_prompt(model, spec.n_tokens)
    elif spec.kind == "prefix":
        add_prefix(model, spec.n_tokens)
    keep = set()
    if spec.train_head and _head_trainable(model):
        keep |= {id(p) for p in model.head.parameters()}
    names = []
    for name, p in model.named_parameters():
        adapter = is_adapter_key(name) or (spec.kind == "bitfit" and name.endswith(".bias"))
        train = adapter or id(p) in keep
        p.requires_grad_(train)
        if train:
            names.append(name)
    if spec.kind == "bitfit" and not any(n.endswith(".bias") for n in names):
        raise SpecError(
            "adapter.kind=bitfit: the model has no biases to train (model.bias=false); "
            "set model.bias=true or use adapter.kind=lora"
        )
    return names


def trainable_names(model: nn.Module) -> list[str]:
    """Names of the parameters that train (``requires_grad``)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def adapter_state(
    model: nn.Module, spec: AdapterSpec, head: bool = True
) -> dict[str, torch.Tensor]:
    """What ``adapter.safetensors`` holds: the adapter's parameters (LoRA factors under
    peft's key names, ``base_model.model.<layer>.lora_A.weight``; BitFit's biases; the
    prompt or prefixes) and, with ``head``, the trained head's parameters."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad and not is_adapter_key(name):
            continue
        if head is False and name.startswith("head."):
            continue
        key = PEFT_PREFIX + name if spec.kind == "lora" and is_adapter_key(name) else name
        out[key] = p.detach().contiguous().cpu()
    return out


@torch.no_grad()
def load_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy an :func:`adapter_state` back into an adapted model (keys in either naming)."""
    params = dict(model.named_parameters())
    for key, value in state.items():
        name = key.removeprefix(PEFT_PREFIX)
        if name not in params:
            raise SpecError(f"adapter state key {key!r} names no parameter of this model")
        params[name].copy_(value)


def peft_config(model: nn.Module, spec: AdapterSpec) -> dict[str, Any]:
    """A peft ``LoraConfig`` (as ``adapter_config.json``) for the layers ``spec`` adapts:
    ``target_modules`` names each adapted layer fully, so peft wraps exactly those."""
    if spec.kind != "lora":
        raise SpecError(f"adapter.kind={spec.kind}: only lora has a peft LoraConfig")
    return {
        "peft_type": "LORA",
        "r": spec.rank,
        "lora_alpha": spec.alpha,
        "lora_dropout": spec.dropout,
        "target_modules": [name for name, _ in lora_layers(model)],
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "init_lora_weights": True,
        "task_type": None,
    }


def save_adapter(folder: Path, model: nn.Module, spec: AdapterSpec) -> list[Path]:
    """Write ``adapter.safetensors`` (:func:`adapter_state`), ``adapter.yaml`` (the
    adapter's spec) and, for LoRA, peft's ``adapter_config.json`` into ``folder``, each
    atomically; returns the paths."""
    import json

    import yaml
    from safetensors.torch import save_file

    from anyformer.spec import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / "adapter.safetensors"
    tmp = weights.with_suffix(".tmp")
    save_file(adapter_state(model, spec), str(tmp))
    tmp.replace(weights)
    written = [weights, folder / "adapter.yaml"]
    write_text_atomic(written[1], yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    if spec.kind == "lora":
        written.append(folder / "adapter_config.json")
        write_text_atomic(written[2], json.dumps(peft_config(model, spec), indent=1) + "\n")
    return written


def merge(model: nn.Module, spec: AdapterSpec) -> list[str]:
    """Fold the adapter into the model's weights (LoRA; BitFit's biases already are
    weights); the merged model needs no adapter. Prompt and prefix tuning add inputs,
    not weights, and are refused naming ``adapter.kind``."""
    if spec.kind in ("prompt", "prefix"):
        raise SpecError(
            f"adapter.kind={spec.kind} adds learned {'tokens' if spec.kind == 'prompt' else 'keys and values'}, "
            f"not a weight update, so it cannot be merged into the model (lora and bitfit can)"
        )
    for p in model.parameters():
        p.requires_grad_(True)
    return merge_lora(model)
