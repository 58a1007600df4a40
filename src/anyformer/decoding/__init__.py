"""Layer 3: decoding with a trained model (above ``model/``, which never imports it).

:func:`generate` continues a batch of prompts (greedy or sampled, with a cache or by
recomputation; :mod:`anyformer.decoding.generate`); :func:`unmask_sample` samples a
masked diffusion model by iterative unmasking (:mod:`anyformer.decoding.diffusion`).
"""

from anyformer.decoding.diffusion import unmask_sample
from anyformer.decoding.generation import (
    COLUMN_MAJOR_MIN_TOKENS,
    cache_blockers,
    column_major_candidates,
    column_major_linears,
    column_major_weight,
    direct_module_calls,
    generate,
    sample_next,
)

__all__ = [
    "COLUMN_MAJOR_MIN_TOKENS",
    "cache_blockers",
    "column_major_candidates",
    "column_major_linears",
    "column_major_weight",
    "direct_module_calls",
    "generate",
    "sample_next",
    "unmask_sample",
]
