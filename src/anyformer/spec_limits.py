"""Sane bounds for spec values and an up-front memory estimate (layer 0).

A spec is input from a file someone may have sent you: a ``d_model`` of 65536, a
billion-token vocabulary or ``batch_size: 1e8`` would allocate until the machine gives
out. Every size field of the specs has an upper bound (the constants below), every
component parameter a generic one (:func:`param_problem`: finite numbers, integers of
at most :data:`MAX_PARAM_INT`), and :func:`memory_problem` refuses a spec whose
estimated training memory exceeds the machine's (``train.allow_large=true`` overrides).

The estimate (:func:`estimate_memory`) is deliberately simple and errs high:

- parameters ``P``: the embedding ``V d`` (and an untied head ``V d``), per distinct block
  ``4 d^2`` for the mixer plus ``2 m d^2`` for the FFN (``m`` its ``mult``, 4 if it has
  none; ``3 m d^2`` for gated FFNs); 16 bytes each (fp32 weight, gradient and AdamW's two
  moments);
- activations of one batch: per block *execution* ``B T (16 d + 2 m d)`` floats kept for
  the backward pass plus ``B H T^2`` attention scores, with ``T = max_len``; and the
  logits ``3 B T V`` (logits, softmax and their gradient); 4 bytes each.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

#: Largest model width.
MAX_D_MODEL = 65_536
#: Most distinct blocks.
MAX_LAYERS = 1_024
#: Most attention heads.
MAX_HEADS = 1_024
#: Largest vocabulary, input size or number of outputs.
MAX_VOCAB = 16_777_216
#: Longest sequence a model may be built for.
MAX_LEN = 1_048_576
#: Largest batch.
MAX_BATCH = 1_048_576
#: Most training steps (and the largest evaluation / checkpoint / log interval).
MAX_STEPS = 1_000_000_000
#: Most evaluation examples per split.
MAX_EVAL = 10_000_000
#: Largest integer a component parameter may hold.
MAX_PARAM_INT = 10_000_000
#: Largest integer a task parameter may hold (its counts and lengths: a task builds its
#: tables and length ranges when it is created, before any size check can run).
MAX_TASK_INT = 100_000
#: Largest learning rate.
MAX_LR = 10.0

GATED_FFNS = ("glu",)


def param_problem(value: Any, where: str, limit: int = MAX_PARAM_INT) -> str | None:
    """Why a component parameter value is refused (``None`` when it is fine): a number
    that is not finite, or one beyond ``limit`` in size (lists and mappings are checked
    element by element)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where}={value!r} is not a finite number"
    if isinstance(value, int | float) and abs(value) > limit:
        return f"{where}={value!r} is out of range: at most {limit:,} in size"
    if isinstance(value, dict):
        for key, item in value.items():
            problem = param_problem(item, f"{where}.{key}", limit)
            if problem:
                return problem
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            problem = param_problem(item, f"{where}.{i}", limit)
            if problem:
                return problem
    return None


@dataclass(frozen=True)
class MemoryEstimate:
    """Estimated training memory of a spec, in bytes (see the module docstring)."""

    params: int
    param_bytes: int
    activation_bytes: int

    @property
    def total(self) -> int:
        return self.param_bytes + self.activation_bytes


def _executions(depth_name: str, depth_params: dict[str, Any], n_layers: int) -> int:
    """Block executions of one training pass (an upper bound for unknown schedules)."""
    loops = depth_params.get("loops") or depth_params.get("k") or 1
    thoughts = depth_params.get("thoughts") or 0
    return n_layers * max(int(loops), 1) * (int(thoughts) + 1)


def estimate_memory(model: Any, train: Any) -> MemoryEstimate:
    """Estimate the training memory of ``model`` (a ``ModelSpec``) trained with ``train``
    (a ``TrainSpec``) on batches of ``train.batch_size`` rows of ``model.max_len`` tokens."""
    d, layers, heads = model.d_model, model.n_layers, model.n_heads
    vocab = max(model.vocab_size or 0, model.input_dim or 0)
    outputs = model.n_outputs or vocab
    block = 0
    widest = 0.0
    for i in range(layers):
        ffn = model.layer(i).ffn
        mult = float(ffn.params.get("mult", 4.0) or 0.0)
        factor = 3 if ffn.name in GATED_FFNS else 2
        # mixer and FFN matrices, and (generously) their biases and norms
        block += 4 * d * d + int(factor * mult * d * d) + int((16 + factor * mult) * d)
        widest = max(widest, mult)
    extra_runs = 0
    if getattr(model, "kind", None) == "encoder_decoder":
        # the encoder's blocks (the decoder's first layer as a measure of one), and a
        # cross-attention per decoder layer (q, kv, out: 4 d^2)
        encoder = getattr(model, "encoder", None)
        n_enc = getattr(encoder, "n_layers", None) or layers
        block += n_enc * (block // max(layers, 1)) + layers * (4 * d * d + 4 * d)
        extra_runs = n_enc + layers  # the encoder's blocks, the cross-attention sublayers
    embed = vocab * d + (
        model.max_len * d if model.position.entry.caps.position_mode == "embed" else 0
    )
    params = embed + (0 if model.tie_embeddings else outputs * d) + block + 4 * d
    batch, length = train.batch_size, model.max_len
    runs = _executions(model.depth.name, model.depth.params, layers)
    per_block = batch * length * (16 * d + 2 * widest * d) + batch * heads * length * length
    logits = 3 * batch * length * max(outputs, 1)
    activations = 4 * int((runs + extra_runs) * per_block + logits)
    return MemoryEstimate(params, 16 * params, activations)


def machine_memory() -> int | None:
    """Total memory of this machine in bytes (``None`` when it cannot be read)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def memory_problem(model: Any, train: Any) -> str | None:
    """The refusal for a spec whose estimated memory exceeds the machine's, or ``None``."""
    if getattr(train, "allow_large", False):
        return None
    limit = machine_memory()
    if limit is None:
        return None
    est = estimate_memory(model, train)
    if est.total <= limit:
        return None
    return (
        f"this spec needs about {_gib(est.total)} to train ({est.params:,} parameters: "
        f"{_gib(est.param_bytes)} with gradients and optimizer state; activations of one "
        f"batch of {train.batch_size} x {model.max_len} tokens: {_gib(est.activation_bytes)}), "
        f"more than this machine's {_gib(limit)}; make model.d_model, model.n_layers, "
        f"model.max_len or train.batch_size smaller, or set train.allow_large=true to try anyway"
    )
