"""Registered findings (slot ``finding``) and ``reproduce``. Importing registers them."""

from anyformer.lab.findings import (  # noqa: F401
    algorithmic,
    audio,
    code,
    compression,
    depth,
    distillation,
    fusion,
    generalization,
    graph_encodings,
    graphs,
    icl,
    pretraining,
    quantization,
    series,
    vision,
)
from anyformer.lab.findings.base import Comparison, Finding, Verdict
from anyformer.lab.findings.reproduce import reproduce

__all__ = ["Comparison", "Finding", "Verdict", "reproduce"]
