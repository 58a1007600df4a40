"""One module per Hugging Face family; :data:`ARCHITECTURES` lists their classes in the
order :func:`anyformer.interop.hf.export_architecture` tries them."""

from __future__ import annotations

from anyformer.interop.archs.gpt2 import GPT2
from anyformer.interop.archs.llama import Llama

ARCHITECTURES = (GPT2, Llama)

__all__ = ["ARCHITECTURES"]
