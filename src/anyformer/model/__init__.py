"""Layer 2: blocks, backbones and heads assembled from registered components."""

from anyformer.model.flops import count_params, forward_flops_per_token
from anyformer.model.output import ModelOutput
from anyformer.model.transformer import Transformer, build_block, build_model

__all__ = [
    "ModelOutput",
    "Transformer",
    "build_block",
    "build_model",
    "count_params",
    "forward_flops_per_token",
]
