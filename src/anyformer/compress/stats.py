"""Activation statistics of every linear layer's input, gathered with forward pre-hooks.

For each layer (``nn.Linear`` or a quantized one) over all calibration tokens: the
max-abs of its input, the per-input-channel max-abs (what SmoothQuant's scales read) and
the kurtosis ``E[(x - mu)^4] / E[(x - mu)^2]^2`` over every input value (3 for a Gaussian;
large where a few channels or tokens carry outliers, the measure of "Quantizable
Transformers", Bondarenko et al., 2023). Moments are accumulated in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from anyformer.compress.qlinear import QuantLinear


@dataclass
class InputStats:
    """Running moments of one layer's input."""

    count: int = 0
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])
    max_abs: float = 0.0
    channel_max: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        x64 = x.double()
        self.count += x64.numel()
        p = x64
        for i in range(4):
            self.sums[i] += float(p.sum())
            if i < 3:
                p = p * x64
        ch = x.abs().amax(dim=0).float()
        self.channel_max = ch if self.channel_max is None else torch.maximum(self.channel_max, ch)
        self.max_abs = max(self.max_abs, float(ch.max()))

    @property
    def kurtosis(self) -> float:
        if self.count == 0:
            return float("nan")
        n = self.count
        m1, m2, m3, m4 = (s / n for s in self.sums)
        var = m2 - m1 * m1
        central4 = m4 - 4 * m1 * m3 + 6 * m1 * m1 * m2 - 3 * m1**4
        return float(central4 / var**2) if var > 0 else float("nan")

    def summary(self) -> dict[str, float]:
        return {"max_abs": self.max_abs, "kurtosis": self.kurtosis}


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every ``nn.Linear`` or quantized linear of ``model`` with its name, in order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear))]


@contextmanager
def recording(
    model: nn.Module, names: Iterable[str] | None = None
) -> Iterator[dict[str, InputStats]]:
    """Within the block every forward adds each linear layer's input to the yielded
    ``{name: InputStats}``; a quantized layer records what it quantizes (its input times
    its ``smooth`` factor)."""
    wanted = set(names) if names is not None else None
    stats: dict[str, InputStats] = {}
    handles = []
    for name, module in linear_layers(model):
        if wanted is not None and name not in wanted:
            continue
        stats[name] = InputStats()

        def hook(mod: nn.Module, args: tuple[Any, ...], rec: InputStats = stats[name]) -> None:
            x = args[0]
            smooth = getattr(mod, "smooth", None)
            rec.add(x * smooth if isinstance(smooth, torch.Tensor) else x)

        handles.append(module.register_forward_pre_hook(hook))
    try:
        yield stats
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def collect(
    model: nn.Module, run_batch: Callable[[Any], Any], batches: Iterable[Any]
) -> dict[str, InputStats]:
    """Statistics of every linear layer's input over ``run_batch(b)`` for each batch."""
    with recording(model) as stats:
        for b in batches:
            run_batch(b)
    return stats


def summaries(stats: dict[str, InputStats]) -> dict[str, dict[str, float]]:
    """``{layer: {max_abs, kurtosis}}``."""
    return {name: s.summary() for name, s in stats.items()}


__all__ = ["InputStats", "collect", "linear_layers", "recording", "summaries"]
