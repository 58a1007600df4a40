"""GPT-NeoX ("GPT-NeoX-20B: An Open-Source Autoregressive Language Model", Black et al.,
2022): ``GPTNeoXForCausalLM`` with ``use_parallel_residual=False`` and full rotary
(``partial_rotary_factor=1``) <-> an anyformer decoder with rotary positions, pre-norm
LayerNorm blocks, an MLP and biases everywhere — the quickstart's architecture, so a
quickstart run exports to Hugging Face as GPT-NeoX.

NeoX fuses q, k, v per head (rows ``[head][q|k|v][d_head]``); anyformer's ``qkv`` holds
all queries, then all keys, then all values (``[q|k|v][head][d_head]``): the rows are
permuted both ways. Its rotary layout is ``rotate_half``, anyformer's.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anyformer.interop.archs.gpt2 import ACTIVATIONS
from anyformer.interop.archs.llama import rope_of
from anyformer.interop.base import Architecture, common_problems, want
from anyformer.interop.mapping import Rule, config_problems, linear, refuse, same
from anyformer.spec import ModelSpec

HANDLED = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "max_position_embeddings", "layer_norm_eps",
    "tie_word_embeddings", "use_parallel_residual", "rope_parameters", "rotary_pct",
    "rotary_emb_base", "rope_scaling", "attention_bias", "is_decoder",
)  # fmt: skip


def per_head_qkv(ours: str, theirs: str, heads: int) -> Rule:
    """NeoX's per-head ``[H, 3, d]`` rows as anyformer's ``[3, H, d]`` (weight or bias)."""

    def load(ts: Any) -> torch.Tensor:
        t = ts[0]
        return t.reshape(heads, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)

    def save(t: torch.Tensor) -> list[torch.Tensor]:
        return [t.reshape(3, heads, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)]

    return Rule(ours, (theirs,), load, save)


class GPTNeoX(Architecture):
    name = "GPT-NeoX"
    classes = {
        "GPTNeoXForCausalLM": None,
        "GPTNeoXModel": "has no head (import GPTNeoXForCausalLM)",
    }
    export_class = "GPTNeoXForCausalLM"
    ignore = ("rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias")

    def spec(self, hf: nn.Module) -> dict[str, Any]:
        c = hf.config
        problems = config_problems(c, "GPT-NeoX", HANDLED)
        rope, rope_problems = rope_of(c)
        problems += rope_problems
        if c.use_parallel_residual:
            problems.append(
                "use_parallel_residual=True (two norms feeding attention and MLP side by side; "
                "anyformer's parallel layout shares one norm)"
            )
        if c.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act={c.hidden_act!r} (valid: {', '.join(ACTIVATIONS)})")
        if not getattr(c, "attention_bias", True):
            problems.append(
                "attention_bias=False (the MLP keeps its biases; anyformer's bias is one switch)"
            )
        if getattr(c, "is_decoder", False):
            problems.append("is_decoder=True (cross-attention)")
        refuse("cannot import this GPTNeoXForCausalLM", problems)
        return dict(
            kind="decoder",
            vocab_size=c.vocab_size,
            d_model=c.hidden_size,
            n_layers=c.num_hidden_layers,
            n_heads=c.num_attention_heads,
            max_len=c.max_position_embeddings,
            attention="softmax",
            position={"name": "rope", "base": float(rope.get("rope_theta", 10000.0))},
            norm={"name": "layernorm", "eps": c.layer_norm_eps},
            norm_placement="pre",
            ffn={
                "name": "mlp",
                "activation": ACTIVATIONS[c.hidden_act],
                "mult": c.intermediate_size / c.hidden_size,
            },
            bias=True,
            tie_embeddings=hf.lm_head.weight is hf.gpt_neox.embed_in.weight,
            head="lm",
        )

    def rules(self, spec: ModelSpec) -> list[Rule]:
        rules = [
            same("embed.weight", "gpt_neox.embed_in.weight"),
            *linear("norm", "gpt_neox.final_layer_norm", True),
            same("head.weight", "lm_head.weight"),
        ]
        for i in range(spec.n_layers):
            ours, theirs = f"blocks.{i}", f"gpt_neox.layers.{i}"
            rules += linear(f"{ours}.norm1", f"{theirs}.input_layernorm", True)
            for p in ("weight", "bias"):
                rules.append(
                    per_head_qkv(
                        f"{ours}.mixer.qkv.{p}",
                        f"{theirs}.attention.query_key_value.{p}",
                        spec.n_heads,
                    )
                )
            rules += linear(f"{ours}.mixer.out", f"{theirs}.attention.dense", True)
            rules += linear(f"{ours}.norm2", f"{theirs}.post_attention_layernorm", True)
            rules += linear(f"{ours}.ffn.up", f"{theirs}.mlp.dense_h_to_4h", True)
            rules += linear(f"{ours}.ffn.down", f"{theirs}.mlp.dense_4h_to_h", True)
        return rules

    def export_problems(self, spec: ModelSpec) -> list[str]:
        acts = sorted(set(ACTIVATIONS.values()))
        problems = want(
            spec, "GPT-NeoX", kind="decoder", embedder_ref="tokens", head_ref="lm",
            attention=("softmax", {"kv_heads": lambda k: k in (None, spec.n_heads)}),
            position="rope", norm=("layernorm", {"bias": True}), norm_placement="pre",
            ffn=("mlp", {"activation": lambda a: a in acts}), bias=True, embed_norm=False,
        )  # fmt: skip
        return problems + common_problems(spec, "GPT-NeoX")

    def hf_config(self, spec: ModelSpec) -> Any:
        from transformers import GPTNeoXConfig

        from anyformer.components.ffn import hidden_size

        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
        config = GPTNeoXConfig(
            vocab_size=spec.vocab_size, hidden_size=spec.d_model, num_hidden_layers=spec.n_layers,
            num_attention_heads=spec.n_heads,
            intermediate_size=hidden_size(spec.d_model, spec.ffn.params["mult"]),
            hidden_act=act[spec.ffn.params["activation"]], max_position_embeddings=spec.max_len,
            layer_norm_eps=spec.norm.params["eps"], use_parallel_residual=False,
            tie_word_embeddings=spec.tie_embeddings, attention_bias=True,
            hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=None, eos_token_id=None,
            rope_parameters={"rope_type": "default", "rope_theta": spec.position.params["base"],
                             "partial_rotary_factor": 1.0},
        )  # fmt: skip
        config.tie_word_embeddings = spec.tie_embeddings
        return config
