"""ONNX export of an anyformer model (``torch.onnx.export(..., dynamo=True)``) with
dynamic batch and sequence axes, checked against eager PyTorch with ONNX Runtime.

Token models (decoders, encoders, prefix LMs without a prefix) take ``input_ids``
``[batch, sequence]`` (int64) and return ``logits``; image models take ``pixel_values``
``[batch, C, H, W]`` (dynamic batch; the image size is the spec's). Encoder–decoders
are refused (their cached decoding is a loop ONNX does not hold), as are components
the exporter cannot trace, named in the refusal.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anyformer.interop.mapping import Unsupported
from anyformer.model.transformer import Transformer

#: Shapes (batch, sequence) :func:`check_onnx` runs by default; sequences above the
#: model's ``max_len`` are skipped.
CHECK_SHAPES = ((1, 1), (2, 7), (3, 16), (1, 33))


class LogitsOnly(nn.Module):
    """``model(inputs)`` with no keyword arguments: what the exporter traces."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model(inputs)


def example_inputs(model: Transformer, batch: int = 2, seq: int = 8) -> torch.Tensor:
    """A random input of the model's kind: token ids ``[batch, seq]`` or images."""
    spec = model.spec
    gen = torch.Generator().manual_seed(batch * 1000 + seq)
    if spec.input_kind == "image":
        shape = tuple(spec.input_shape or ())
        return torch.randn(batch, *shape, generator=gen)
    if spec.input_kind != "tokens":
        raise Unsupported(
            f"ONNX export reads token ids or images; embedder='{spec.embedder_ref.name}' "
            f"reads {spec.input_kind}"
        )
    return torch.randint(0, spec.vocab_size or 1, (batch, seq), generator=gen)


def export_onnx(model: Transformer, path: str | Path, check: bool = True) -> Path:
    """Write ``model`` (eval mode) as ONNX at ``path`` with dynamic batch (and sequence,
    for token models) axes; with ``check`` run it with ONNX Runtime at several shapes
    (:func:`check_onnx`) and raise if it differs from eager by more than 1e-4."""
    spec = model.spec
    if spec.kind == "encoder_decoder":
        raise Unsupported(
            "kind=encoder_decoder has no ONNX export here (two inputs and a cached decoding "
            "loop); export it with --format hf or safetensors"
        )
    model = model.eval()
    x = example_inputs(model)
    batch = torch.export.Dim("batch", min=1, max=1024)
    if spec.input_kind == "image":
        dynamic: dict[str, Any] = {"inputs": {0: batch}}
        names = ["pixel_values"]
    else:
        seq = torch.export.Dim("sequence", min=1, max=spec.max_len)
        dynamic = {"inputs": {0: batch, 1: seq}}
        names = ["input_ids"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                LogitsOnly(model).eval(), (x,), dynamo=True, dynamic_shapes=dynamic,
                input_names=names, output_names=["logits"], verbose=False,
            )  # fmt: skip
        except Exception as exc:  # the exporter's own errors: name what it could not trace
            raise Unsupported(f"ONNX export failed for this model ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:300]})") from None  # fmt: skip
    program.save(str(path))
    if check:
        check_onnx(model, path)
    return path


def check_onnx(
    model: Transformer,
    path: str | Path,
    shapes: tuple[tuple[int, int], ...] = CHECK_SHAPES,
    atol: float = 1e-4,
) -> float:
    """The largest absolute difference between ONNX Runtime's logits and eager PyTorch's
    over ``shapes`` (``(batch, sequence)``; image models use the batch only); raises
    ``AssertionError`` above ``atol``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    worst = 0.0
    for batch, seq in shapes:
        if model.spec.input_kind != "image" and seq > model.spec.max_len:
            continue
        x = example_inputs(model, batch, seq)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(None, {name: x.numpy()})
        diff = float(abs(got - expected).max())
        if got.shape != expected.shape or diff > atol:
            raise AssertionError(
                f"ONNX Runtime differs from eager at batch {batch}, sequence {seq}: shape "
                f"{got.shape} vs {expected.shape}, max difference {diff:.2e} (allowed {atol})"
            )
        worst = max(worst, diff)
    return worst


__all__ = ["CHECK_SHAPES", "check_onnx", "example_inputs", "export_onnx"]
