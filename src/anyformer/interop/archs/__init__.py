"""One module per Hugging Face family; :data:`ARCHITECTURES` lists their classes in the
order :func:`anyformer.interop.hf.export_architecture` tries them."""

from __future__ import annotations

from anyformer.interop.archs.bert import Bert
from anyformer.interop.archs.gpt2 import GPT2
from anyformer.interop.archs.llama import Llama
from anyformer.interop.archs.neox import GPTNeoX
from anyformer.interop.archs.t5 import T5
from anyformer.interop.archs.vit import ViT

ARCHITECTURES = (GPT2, Llama, GPTNeoX, Bert, ViT, T5)

__all__ = ["ARCHITECTURES"]
