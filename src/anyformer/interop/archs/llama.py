"""Llama ("LLaMA: Open and Efficient Foundation Language Models", Touvron et al., 2023):
``LlamaForCausalLM`` <-> an anyformer decoder with rotary positions, pre-norm RMSNorm
blocks, a SwiGLU FFN, grouped key/value heads (``kv_heads``) and no biases.

Rotary layout: HF's Llama rotates channel ``i`` with channel ``i + d_head/2`` of each
head (``rotate_half``; its conversion script permuted Meta's interleaved-pair q/k
weights into that layout). anyformer's ``rope`` (:func:`anyformer.nn.position_ops.
apply_rotary`) rotates the same halves with the same frequencies ``base^(-2i/d_head)``,
so q and k weights copy without a permutation (the tests hold the logits equal, and a
permuted copy would not be). GQA: both repeat each key/value head for
``n_heads / kv_heads`` consecutive query heads.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from anyformer.interop.base import Architecture, common_problems, want
from anyformer.interop.mapping import Rule, config_problems, fused, linear, refuse, same
from anyformer.spec import ModelSpec

HANDLED = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "hidden_act", "max_position_embeddings",
    "rms_norm_eps", "pretraining_tp", "tie_word_embeddings", "rope_parameters", "rope_theta",
    "rope_scaling", "attention_bias", "mlp_bias", "head_dim",
)  # fmt: skip


def rope_of(config: Any) -> tuple[dict[str, Any], list[str]]:
    """The rotary parameters of a Llama-like config (``rope_parameters`` in recent
    transformers, ``rope_theta``/``rope_scaling`` before) and what anyformer cannot
    express of them (a scaling type, a partial rotary factor)."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if not params:
        params = {"rope_type": "default", "rope_theta": getattr(config, "rope_theta", 10000.0)}
        if getattr(config, "rope_scaling", None):
            params.update(config.rope_scaling)
    problems = []
    kind = params.get("rope_type", params.get("type", "default"))
    if kind != "default":
        problems.append(f"rope_type={kind!r} (anyformer's rope is unscaled: default)")
    partial = params.get("partial_rotary_factor", 1.0)
    if partial != 1.0:
        problems.append(f"partial_rotary_factor={partial} (anyformer rotates every channel)")
    return params, problems


class Llama(Architecture):
    name = "Llama"
    classes = {"LlamaForCausalLM": None, "LlamaModel": "has no head (import LlamaForCausalLM)"}
    export_class = "LlamaForCausalLM"
    ignore = ("rotary_emb.inv_freq",)

    def spec(self, hf: nn.Module) -> dict[str, Any]:
        c = hf.config
        problems = config_problems(c, "Llama", HANDLED)
        rope, rope_problems = rope_of(c)
        problems += rope_problems
        if c.hidden_act != "silu":
            problems.append(f"hidden_act={c.hidden_act!r} (anyformer's SwiGLU gates with silu)")
        if getattr(c, "pretraining_tp", 1) != 1:
            problems.append(f"pretraining_tp={c.pretraining_tp} (valid: 1)")
        head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
        if head_dim * c.num_attention_heads != c.hidden_size:
            problems.append(
                f"head_dim={head_dim} with {c.num_attention_heads} heads != hidden_size="
                f"{c.hidden_size} (anyformer's heads split d_model)"
            )
        if bool(c.attention_bias) != bool(c.mlp_bias):
            problems.append(
                f"attention_bias={c.attention_bias} with mlp_bias={c.mlp_bias} (anyformer's "
                f"model.bias applies to both)"
            )
        refuse("cannot import this LlamaForCausalLM", problems)
        kv = c.num_key_value_heads or c.num_attention_heads
        return dict(
            kind="decoder",
            vocab_size=c.vocab_size,
            d_model=c.hidden_size,
            n_layers=c.num_hidden_layers,
            n_heads=c.num_attention_heads,
            max_len=c.max_position_embeddings,
            attention={"name": "softmax", "kv_heads": kv},
            position={"name": "rope", "base": float(rope.get("rope_theta", 10000.0))},
            norm={"name": "rmsnorm", "eps": c.rms_norm_eps},
            norm_placement="pre",
            ffn={"name": "glu", "variant": "swiglu", "mult": c.intermediate_size / c.hidden_size},
            bias=bool(c.attention_bias),
            tie_embeddings=hf.lm_head.weight is hf.model.embed_tokens.weight,
            head="lm",
        )

    def rules(self, spec: ModelSpec) -> list[Rule]:
        from anyformer.components.ffn import hidden_size

        d_head = spec.d_model // spec.n_heads
        kv = (spec.attention.params.get("kv_heads") or spec.n_heads) * d_head
        hidden = hidden_size(spec.d_model, spec.ffn.params["mult"])
        bias = spec.bias
        rules = [
            same("embed.weight", "model.embed_tokens.weight"),
            same("norm.weight", "model.norm.weight"),
            same("head.weight", "lm_head.weight"),
        ]
        for i in range(spec.n_layers):
            ours, theirs = f"blocks.{i}", f"model.layers.{i}"
            att = f"{theirs}.self_attn"
            rules.append(same(f"{ours}.norm1.weight", f"{theirs}.input_layernorm.weight"))
            rules += fused(
                f"{ours}.mixer.qkv", [f"{att}.q_proj", f"{att}.k_proj", f"{att}.v_proj"],
                [spec.d_model, kv, kv], bias,
            )  # fmt: skip
            rules += linear(f"{ours}.mixer.out", f"{att}.o_proj", bias)
            rules.append(same(f"{ours}.norm2.weight", f"{theirs}.post_attention_layernorm.weight"))
            mlp = f"{theirs}.mlp"
            rules += fused(
                f"{ours}.ffn.gate_up",
                [f"{mlp}.gate_proj", f"{mlp}.up_proj"],
                [hidden, hidden],
                bias,
            )
            rules += linear(f"{ours}.ffn.down", f"{mlp}.down_proj", bias)
        return rules

    def export_problems(self, spec: ModelSpec) -> list[str]:
        problems = want(
            spec, "Llama", kind="decoder", embedder_ref="tokens", head_ref="lm",
            attention="softmax", position="rope", norm="rmsnorm", norm_placement="pre",
            ffn=("glu", {"variant": "swiglu"}), embed_norm=False,
        )  # fmt: skip
        return problems + common_problems(spec, "Llama")

    def hf_config(self, spec: ModelSpec) -> Any:
        from transformers import LlamaConfig

        from anyformer.components.ffn import hidden_size

        config = LlamaConfig(
            vocab_size=spec.vocab_size, hidden_size=spec.d_model,
            intermediate_size=hidden_size(spec.d_model, spec.ffn.params["mult"]),
            num_hidden_layers=spec.n_layers, num_attention_heads=spec.n_heads,
            num_key_value_heads=spec.attention.params.get("kv_heads") or spec.n_heads,
            max_position_embeddings=spec.max_len, rms_norm_eps=spec.norm.params["eps"],
            tie_word_embeddings=spec.tie_embeddings, attention_bias=spec.bias,
            mlp_bias=spec.bias, bos_token_id=None, eos_token_id=None,
            rope_parameters={"rope_type": "default", "rope_theta": spec.position.params["base"]},
        )  # fmt: skip
        config.tie_word_embeddings = spec.tie_embeddings
        return config
