"""Quantized replacements of ``nn.Linear``: int8 weights with dynamic or static int8
activations, and group-wise int4 weights.

Weights are quantized symmetrically per output channel (int8: ``w_q = round(w / s)``,
``s = max_j |w_oj| / 127``) or per group of ``group_size`` input channels of each output
channel (int4: ``s = max |w| / 7`` over the group, values in ``[-8, 7]`` stored two to a
byte). Activations (int8 schemes) are quantized symmetrically per token, from each row's
max-abs (``dynamic``, as in "LLM.int8()"/ZeroQuant's per-token scheme) or with one scale
fixed by calibration (``static``: the max-abs of the layer's input over the calibration
batches). The int8 product ``x_q w_q^T`` runs in int32 (``torch._int_mm``), rescaled by
``s_x s_w``; where that kernel is missing the operands are dequantized and multiplied in
float (same values up to float rounding).

Two kernels run the dynamic int8 product (``Int8Linear.kernel``, chosen by measurement
in ``anyformer quantize --kernel auto``): ``int_mm`` is the scheme above; ``fbgemm`` hands
the same int8 weights and scales, prepacked, to PyTorch's ``quantized::linear_dynamic``,
which quantizes the activations per tensor (asymmetric uint8 over a 7-bit range) instead
of per token. On CPUs without int8 dot-product instructions (VNNI) ``torch._int_mm`` is
far slower than float while fbgemm stays faster (``benchmarks/int8_inference.py``).

An optional per-input-channel factor ``smooth`` (``1 / s`` of SmoothQuant, Xiao et al.,
2023, when it could not be folded into a preceding norm) multiplies the input before it is
quantized. Every tensor is a buffer of the module, so ``model.safetensors`` holds int8 /
packed-uint8 weights and float32 scales only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

QMAX8 = 127
QMAX4 = 7
#: kernels of the dynamic int8 product (see the module docstring)
KERNELS = ("int_mm", "fbgemm")


def fbgemm_available() -> bool:
    """Whether this build of PyTorch has the fbgemm / x86 dynamic int8 linear."""
    engines = set(torch.backends.quantized.supported_engines)
    return bool(engines & {"fbgemm", "x86"}) and hasattr(torch.ops.quantized, "linear_dynamic")


def prepack_fbgemm(
    weight_int8: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None
) -> object:
    """The fbgemm packed form of per-channel int8 weights (values and scales unchanged)."""
    import warnings

    zero = torch.zeros(weight_int8.shape[0], dtype=torch.long)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the per-channel quantized-tensor constructor
        w = torch._make_per_channel_quantized_tensor(weight_int8, weight_scale.double(), zero, 0)
        return torch.ops.quantized.linear_prepack(w, bias)


def quantize_per_channel(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of ``weight [out, in]`` per output row: ``(w_q int8, scale [out])``
    with ``weight ~= w_q * scale[:, None]``; all-zero rows get scale 1."""
    w = weight.detach().float()
    scale = w.abs().amax(dim=1) / QMAX8
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / scale[:, None]).clamp_(-QMAX8, QMAX8).to(torch.int8)
    return q, scale


def quantize_per_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 of ``x [N, in]`` per row: ``(x_q int8, scale [N, 1])``."""
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / QMAX8
    q = torch.round(x / scale).clamp_(-QMAX8, QMAX8).to(torch.int8)
    return q, scale


def int8_matmul(xq: torch.Tensor, wq: torch.Tensor) -> torch.Tensor:
    """``xq [N, in] @ wq [out, in]^T`` accumulated in int32, returned as float32."""
    try:
        return torch._int_mm(xq, wq.t()).float()
    except RuntimeError:  # no int8 kernel for this device / shape: dequantized float product
        return xq.float() @ wq.float().t()


def quantize_groups_int4(
    weight: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 of ``weight [out, in]`` per group of ``group_size`` input channels:
    ``(packed uint8 [out, ceil(in / 2)], scale [out, n_groups])``; ``in`` is padded with
    zeros to a multiple of ``group_size`` for the scales (the padding is not stored)."""
    w = weight.detach().float()
    out, inp = w.shape
    groups = -(-inp // group_size)
    padded = F.pad(w, (0, groups * group_size - inp)).view(out, groups, group_size)
    scale = padded.abs().amax(dim=2) / QMAX4
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(padded / scale[..., None]).clamp_(-QMAX4 - 1, QMAX4)
    q = q.view(out, -1)[:, :inp].to(torch.int16) + 8  # 0..15
    if inp % 2:
        q = F.pad(q, (0, 1), value=8)
    packed = (q[:, 0::2] | (q[:, 1::2] << 4)).to(torch.uint8)
    return packed, scale


def dequantize_int4(
    packed: torch.Tensor, scale: torch.Tensor, in_features: int, group_size: int
) -> torch.Tensor:
    """The float weight ``[out, in]`` of :func:`quantize_groups_int4`'s output."""
    p = packed.to(torch.int16)
    q = torch.stack([p & 15, p >> 4], dim=-1).view(p.shape[0], -1)[:, :in_features] - 8
    groups = scale.shape[1]
    q = F.pad(q.float(), (0, groups * group_size - in_features)).view(
        p.shape[0], groups, group_size
    )
    return (q * scale[..., None]).view(p.shape[0], -1)[:, :in_features]


class QuantLinear(nn.Module):
    """Base of the quantized linears: ``in_features``, ``out_features``, optional
    ``bias`` and ``smooth`` buffers, and what every scheme shares."""

    scheme: str = ""

    def __init__(self, in_features: int, out_features: int, bias: bool, smooth: bool) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self.register_buffer("smooth", torch.ones(in_features) if smooth else None)
        self.head_groups = None  # copied from a fused q/k/v projection

    @property
    def weight(self) -> torch.Tensor:
        """The float weight the quantized values stand for (for code that reads a layer's
        ``weight``, e.g. its dtype; the forward never uses it)."""
        return self.dequantized()

    def dequantized(self) -> torch.Tensor:
        raise NotImplementedError

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().reshape(-1, self.in_features)
        return x * self.smooth if self.smooth is not None else x

    def _finish(self, y: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"scheme={self.scheme}, bias={self.bias is not None}, "
            f"smooth={self.smooth is not None}"
        )


class Int8Linear(QuantLinear):
    """``y = (q(x) w_q^T) s_x s_w + b``: int8 weights per output channel; int8 activations
    per token (``static=False``) or with the calibrated per-tensor scale ``input_scale``."""

    def __init__(
        self, in_features: int, out_features: int, bias: bool, smooth: bool, static: bool
    ) -> None:
        super().__init__(in_features, out_features, bias, smooth)
        self.scheme = "int8-static" if static else "int8-dynamic"
        self.register_buffer(
            "weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8)
        )
        self.register_buffer("weight_scale", torch.ones(out_features))
        self.register_buffer("input_scale", torch.ones(()) if static else None)
        self._kernel = "int_mm"
        self._packed: object | None = None

    @property
    def kernel(self) -> str:
        """``int_mm`` or ``fbgemm`` (dynamic activations only); see the module docstring."""
        return self._kernel

    @kernel.setter
    def kernel(self, name: str) -> None:
        if name not in KERNELS:
            raise ValueError(f"kernel {name!r} is not one of {', '.join(KERNELS)}")
        if name == "fbgemm" and self.input_scale is not None:
            raise ValueError("the fbgemm kernel quantizes activations dynamically: not int8-static")
        if name == "fbgemm" and not fbgemm_available():
            raise ValueError("this PyTorch build has no fbgemm int8 kernel")
        self._kernel = name
        self._packed = None

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        self._packed = None  # new weights: pack again
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[arg-type]

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        smooth: torch.Tensor | None = None,
        input_scale: float | None = None,
    ) -> Int8Linear:
        """Quantize ``linear`` (its weight already multiplied by ``1 / smooth`` per input
        channel when ``smooth`` is given); ``input_scale`` makes it static."""
        q = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            smooth is not None,
            input_scale is not None,
        )
        q.weight_int8, q.weight_scale = quantize_per_channel(linear.weight)
        if linear.bias is not None:
            q.bias = linear.bias.detach().float().clone()
        if smooth is not None:
            q.smooth = smooth.detach().float().clone()
        if input_scale is not None:
            q.input_scale = torch.tensor(float(input_scale))
        q.head_groups = getattr(linear, "head_groups", None)
        return q

    def dequantized(self) -> torch.Tensor:
        """The float weight ``w_q * s_w`` (divided by ``smooth``'s factor it is not)."""
        return self.weight_int8.float() * self.weight_scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = self._input(x)
        if self._kernel == "fbgemm":
            if self._packed is None:
                self._packed = prepack_fbgemm(self.weight_int8, self.weight_scale, self.bias)
            y = torch.ops.quantized.linear_dynamic(x.contiguous(), self._packed, True)
            return y.view(*shape[:-1], self.out_features)
        if self.input_scale is None:
            xq, sx = quantize_per_token(x)
        else:
            sx = self.input_scale
            xq = torch.round(x / sx).clamp_(-QMAX8, QMAX8).to(torch.int8)
        y = int8_matmul(xq, self.weight_int8) * (sx * self.weight_scale)
        return self._finish(y, shape)


class Int4WeightLinear(QuantLinear):
    """Weight-only int4 (group-wise scales); the input stays float: ``y = x W_deq^T + b``
    with ``W_deq`` dequantized once per call (or cached while ``cache`` is on, which
    trades the memory saving for speed)."""

    scheme = "int4-weight"

    def __init__(
        self, in_features: int, out_features: int, bias: bool, smooth: bool, group_size: int
    ) -> None:
        super().__init__(in_features, out_features, bias, smooth)
        self.group_size = group_size
        groups = -(-in_features // group_size)
        packed = (in_features + 1) // 2
        self.register_buffer("weight_int4", torch.zeros(out_features, packed, dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out_features, groups))
        self._cached: torch.Tensor | None = None
        self.cache = True

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, group_size: int, smooth: torch.Tensor | None = None
    ) -> Int4WeightLinear:
        q = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            smooth is not None,
            group_size,
        )
        q.weight_int4, q.weight_scale = quantize_groups_int4(linear.weight, group_size)
        if linear.bias is not None:
            q.bias = linear.bias.detach().float().clone()
        if smooth is not None:
            q.smooth = smooth.detach().float().clone()
        q.head_groups = getattr(linear, "head_groups", None)
        return q

    def dequantized(self) -> torch.Tensor:
        """The float weight ``[out, in]`` the int4 values and scales stand for."""
        return dequantize_int4(
            self.weight_int4, self.weight_scale, self.in_features, self.group_size
        )

    def _load_from_state_dict(self, *args: object, **kwargs: object) -> None:
        self._cached = None
        super()._load_from_state_dict(*args, **kwargs)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = self._input(x)
        weight = self._cached if self._cached is not None else self.dequantized()
        if self.cache:
            self._cached = weight
        return self._finish(x @ weight.t(), shape)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


__all__ = [
    "KERNELS",
    "Int4WeightLinear",
    "Int8Linear",
    "QuantLinear",
    "dequantize_int4",
    "fbgemm_available",
    "int8_matmul",
    "prepack_fbgemm",
    "quantize_groups_int4",
    "quantize_per_channel",
    "quantize_per_token",
]
