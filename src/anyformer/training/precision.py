"""Mixed precision: which dtype the forward pass computes in, and the fp16 gradient scaler.

``train.precision='auto'`` means bf16 on CUDA (fp16 on GPUs without bf16, e.g. V100/T4)
and fp32 on CPU, where bf16 autocast is slower than fp32 (DESIGN.md §4). bf16 and fp16
use :func:`torch.autocast`: parameters, optimizer states and gradients stay fp32, and
matrix products run in the low precision. fp16 also scales the loss with a
:class:`torch.amp.GradScaler` so small gradients do not underflow.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from anyformer.errors import SpecError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16() -> bool:
    """Whether the current GPU computes bf16 in hardware (compute capability 8.0 and up).
    ``torch.cuda.is_bf16_supported()`` alone also says yes where bf16 is only emulated
    (V100, T4), which is slower than fp16 there."""
    return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16``/``fp16`` on CUDA, ``fp32`` on CPU; checks the GPU supports it."""
    cuda = device.type == "cuda"
    if name == "auto":
        if not cuda:
            return "fp32"
        return "bf16" if native_bf16() else "fp16"
    if name == "bf16" and cuda and not torch.cuda.is_bf16_supported():
        raise SpecError(
            f"train.precision='bf16' but {torch.cuda.get_device_name(device)} has no bf16 "
            f"support; use train.precision=fp16 or fp32"
        )
    return name


def autocast(device: torch.device, precision: str) -> Any:
    """The context a forward pass runs under: autocast for bf16/fp16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=DTYPES[precision])


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16, else ``None``."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" else None
