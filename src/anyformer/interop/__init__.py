"""Interop: Hugging Face models in (:func:`from_hf`) and out (:func:`to_hf`), run folders
imported from HF directories and exported as HF, ONNX or safetensors (layer 5)."""

from __future__ import annotations

from anyformer.interop.hf import from_hf, to_hf

__all__ = ["from_hf", "to_hf"]
