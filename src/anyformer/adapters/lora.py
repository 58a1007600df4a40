"""LoRA: a trainable low-rank update beside frozen linear layers.

"LoRA: Low-Rank Adaptation of Large Language Models", Hu et al., 2021: a linear layer
``h = W x + b`` becomes ``h = W x + b + (alpha / r) B A dropout(x)`` with ``A [r, in]``
(Kaiming-uniform, as in the paper's code and peft) and ``B [out, r]`` (zeros, so the
adapted model starts equal to the base). The factors are child modules of the layer
itself, ``<name>.lora_A`` and ``<name>.lora_B`` (``nn.Linear`` without bias), and the
update is added by a forward hook, so the base weights keep their names (checkpoints and
``init_from`` read them unchanged) and the state-dict keys are peft's without its
``base_model.model.`` prefix and adapter name. :func:`merge_lora` folds ``(alpha / r) B
A`` into ``W`` and removes the factors.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def _hook(scaling: float, dropout: nn.Module) -> Any:
    def hook(module: nn.Linear, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> torch.Tensor:
        x = args[0]
        return out + module.lora_B(module.lora_A(dropout(x))) * scaling

    return hook


def add_lora(linear: nn.Linear, rank: int, alpha: float, dropout: float) -> None:
    """Give ``linear`` the factors ``lora_A [rank, in]`` and ``lora_B [out, rank]`` and
    the hook adding their update (in place)."""
    if hasattr(linear, "lora_A"):
        raise ValueError("this layer already has a LoRA adapter")
    weight = linear.weight
    linear.lora_A = nn.Linear(linear.in_features, rank, bias=False).to(weight.device, weight.dtype)
    linear.lora_B = nn.Linear(rank, linear.out_features, bias=False).to(weight.device, weight.dtype)
    nn.init.kaiming_uniform_(linear.lora_A.weight, a=math.sqrt(5))
    nn.init.zeros_(linear.lora_B.weight)
    linear.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
    for part in (linear.lora_A, linear.lora_B, linear.lora_dropout):
        part.train(linear.training)  # the layer's mode (dropout off in evaluation)
    linear.lora_scaling = alpha / rank
    linear.lora_handle = linear.register_forward_hook(_hook(alpha / rank, linear.lora_dropout))


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """``(name, layer)`` of every layer carrying a LoRA adapter."""
    return [(n, m) for n, m in model.named_modules() if hasattr(m, "lora_handle")]


@torch.no_grad()
def merge_lora(model: nn.Module) -> list[str]:
    """Fold every adapter into its layer's weight (``W += alpha/r B A``) and remove it;
    returns the layers merged. The merged model computes what the adapted one did (in
    evaluation mode, where LoRA's dropout is off) up to float rounding."""
    merged = []
    for name, layer in lora_layers(model):
        delta = layer.lora_B.weight @ layer.lora_A.weight
        layer.weight += delta.to(layer.weight.dtype) * layer.lora_scaling
        layer.lora_handle.remove()
        for attr in ("lora_A", "lora_B", "lora_dropout"):
            delattr(layer, attr)
        del layer.lora_handle, layer.lora_scaling
        merged.append(name)
    return merged
