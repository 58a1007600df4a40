"""GPT-2 ("Language Models are Unsupervised Multitask Learners", Radford et al., 2019):
``GPT2LMHeadModel`` <-> an anyformer decoder with learned positions, pre-norm LayerNorm
blocks, a ``gelu_tanh`` MLP (GPT-2's ``gelu_new``) and biases everywhere.

GPT-2's ``Conv1D`` layers store their weights ``[in, out]`` (transposed against
``nn.Linear``), and its ``c_attn`` fuses q, k and v in one projection, the layout of
anyformer's ``qkv``. The head is tied to the token embedding unless the config says not.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from anyformer.interop.base import Architecture, common_problems, want
from anyformer.interop.mapping import Rule, config_problems, linear, refuse, same, transposed
from anyformer.spec import ModelSpec

#: HF activation name -> anyformer MLP activation
ACTIVATIONS = {
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
HANDLED = (
    "vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head", "n_inner",
    "activation_function", "layer_norm_epsilon", "tie_word_embeddings", "scale_attn_weights",
    "scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout",
)  # fmt: skip


class GPT2(Architecture):
    name = "GPT-2"
    classes = {
        "GPT2LMHeadModel": None,
        "GPT2Model": "has no head (import GPT2LMHeadModel)",
        "GPT2DoubleHeadsModel": "its multiple-choice head has no anyformer equivalent "
        "(import GPT2LMHeadModel)",
    }
    export_class = "GPT2LMHeadModel"
    ignore = (".attn.bias", ".attn.masked_bias")  # old causal-mask buffers

    def spec(self, hf: nn.Module) -> dict[str, Any]:
        c = hf.config
        problems = config_problems(c, "GPT-2", HANDLED)
        act = c.activation_function
        if act not in ACTIVATIONS:
            problems.append(f"activation_function={act!r} (valid: {', '.join(ACTIVATIONS)})")
        if not c.scale_attn_weights:
            problems.append("scale_attn_weights=False (anyformer divides scores by sqrt(d_head))")
        if c.scale_attn_by_inverse_layer_idx:
            problems.append("scale_attn_by_inverse_layer_idx=True (no per-layer score scale)")
        if c.add_cross_attention:
            problems.append("add_cross_attention=True (a decoder-only GPT-2 has none)")
        refuse("cannot import this GPT2LMHeadModel", problems)
        inner = c.n_inner if c.n_inner is not None else 4 * c.n_embd
        return dict(
            kind="decoder",
            vocab_size=c.vocab_size,
            d_model=c.n_embd,
            n_layers=c.n_layer,
            n_heads=c.n_head,
            max_len=c.n_positions,
            attention="softmax",
            position="learned",
            norm={"name": "layernorm", "eps": c.layer_norm_epsilon},
            norm_placement="pre",
            ffn={"name": "mlp", "activation": ACTIVATIONS[act], "mult": inner / c.n_embd},
            bias=True,
            tie_embeddings=hf.lm_head.weight is hf.transformer.wte.weight,
            head="lm",
        )

    def rules(self, spec: ModelSpec) -> list[Rule]:
        rules = [
            same("embed.weight", "transformer.wte.weight"),
            same("position.table.weight", "transformer.wpe.weight"),
            *linear("norm", "transformer.ln_f", True),
            same("head.weight", "lm_head.weight"),
        ]
        for i in range(spec.n_layers):
            ours, theirs = f"blocks.{i}", f"transformer.h.{i}"
            rules += linear(f"{ours}.norm1", f"{theirs}.ln_1", True)
            rules += linear(f"{ours}.mixer.qkv", f"{theirs}.attn.c_attn", True, transposed)
            rules += linear(f"{ours}.mixer.out", f"{theirs}.attn.c_proj", True, transposed)
            rules += linear(f"{ours}.norm2", f"{theirs}.ln_2", True)
            rules += linear(f"{ours}.ffn.up", f"{theirs}.mlp.c_fc", True, transposed)
            rules += linear(f"{ours}.ffn.down", f"{theirs}.mlp.c_proj", True, transposed)
        return rules

    def export_problems(self, spec: ModelSpec) -> list[str]:
        acts = sorted(set(ACTIVATIONS.values()))
        problems = want(
            spec, "GPT-2", kind="decoder", embedder_ref="tokens", head_ref="lm",
            attention=("softmax", {"kv_heads": lambda k: k in (None, spec.n_heads)}),
            position="learned", norm=("layernorm", {"bias": True}), norm_placement="pre",
            ffn=("mlp", {"activation": lambda a: a in acts}), bias=True, embed_norm=False,
        )  # fmt: skip
        return problems + common_problems(spec, "GPT-2")

    def hf_config(self, spec: ModelSpec) -> Any:
        from transformers import GPT2Config

        from anyformer.components.ffn import hidden_size

        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
        config = GPT2Config(
            vocab_size=spec.vocab_size, n_positions=spec.max_len, n_embd=spec.d_model,
            n_layer=spec.n_layers, n_head=spec.n_heads,
            n_inner=hidden_size(spec.d_model, spec.ffn.params["mult"]),
            activation_function=act[spec.ffn.params["activation"]],
            layer_norm_epsilon=spec.norm.params["eps"], resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, tie_word_embeddings=spec.tie_embeddings,
            bos_token_id=None, eos_token_id=None,
        )  # fmt: skip
        config.tie_word_embeddings = spec.tie_embeddings
        return config
