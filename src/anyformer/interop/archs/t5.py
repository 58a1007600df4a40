"""T5 ("Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer", Raffel et al., 2020): ``T5ForConditionalGeneration`` with the ReLU MLP (T5
v1.0) <-> an anyformer ``encoder_decoder``: pre-norm RMSNorm blocks without biases, the
``t5_bias`` relative position bias per stack (HF keeps it in each stack's first block and
shares it across layers, as anyformer's position scheme is shared), a ReLU MLP, one token
embedding shared by both stacks.

T5 does not scale attention scores by ``1/sqrt(d_head)``: anyformer's query weights (self-
and cross-attention) are T5's times ``sqrt(d_head)``. A tied T5 (``tie_word_embeddings``)
scales the decoder's output by ``d_model^-0.5`` before the tied head
(``scale_decoder_outputs``): imported, the head is untied and holds the embedding times
that factor, which computes the same logits. Exported, the head is T5's ``lm_head``
(tied when the anyformer model ties it) and no output scale.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from anyformer.interop.base import Architecture, common_problems, want
from anyformer.interop.mapping import (
    Rule,
    config_problems,
    refuse,
    same,
    scaled,
    stacked,
    stacked_scaled,
)
from anyformer.spec import ModelSpec

HANDLED = (
    "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
    "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon",
    "feed_forward_proj", "dense_act_fn", "is_gated_act", "tie_word_embeddings",
    "scale_decoder_outputs", "is_encoder_decoder", "n_positions",
)  # fmt: skip
#: anyformer's max_len for an imported T5 (relative positions have no table to bound it)
MAX_LEN = 512


def duplicated(ours: str, theirs: tuple[str, ...]) -> Rule:
    """One anyformer tensor that HF stores under several names (shared embeddings)."""
    return Rule(ours, theirs, lambda ts: ts[0], lambda t: [t] * len(theirs))


class T5(Architecture):
    name = "T5"
    classes = {
        "T5ForConditionalGeneration": None,
        "T5Model": "has no head (import T5ForConditionalGeneration)",
        "T5EncoderModel": "an encoder alone with no head (import T5ForConditionalGeneration)",
    }
    export_class = "T5ForConditionalGeneration"

    def __init__(self) -> None:
        self.head_scale = 1.0

    def spec(self, hf: nn.Module) -> dict[str, Any]:
        c = hf.config
        problems = config_problems(c, "T5", HANDLED)
        if c.feed_forward_proj != "relu":
            problems.append(
                f"feed_forward_proj={c.feed_forward_proj!r} (anyformer's T5 MLP is relu; "
                f"gated-gelu uses tanh-approximated GeGLU)"
            )
        if c.d_kv * c.num_heads != c.d_model:
            problems.append(f"d_kv={c.d_kv} x num_heads={c.num_heads} != d_model={c.d_model}")
        tables = (hf.shared.weight, hf.encoder.embed_tokens.weight, hf.decoder.embed_tokens.weight)
        if not all(t is tables[0] or torch.equal(t, tables[0]) for t in tables):
            problems.append(
                "encoder and decoder token embeddings that differ (anyformer shares one)"
            )
        refuse("cannot import this T5ForConditionalGeneration", problems)
        tied = hf.lm_head.weight is hf.shared.weight
        scale = getattr(c, "scale_decoder_outputs", tied)
        self.head_scale = c.d_model**-0.5 if scale else 1.0
        return dict(
            kind="encoder_decoder",
            vocab_size=c.vocab_size,
            d_model=c.d_model,
            n_layers=c.num_decoder_layers or c.num_layers,
            encoder={"n_layers": c.num_layers},
            n_heads=c.num_heads,
            max_len=MAX_LEN,
            attention="softmax",
            position={
                "name": "t5_bias",
                "n_buckets": c.relative_attention_num_buckets,
                "max_distance": c.relative_attention_max_distance,
            },
            norm={"name": "rmsnorm", "eps": c.layer_norm_epsilon},
            norm_placement="pre",
            ffn={"name": "mlp", "activation": "relu", "mult": c.d_ff / c.d_model},
            bias=False,
            tie_embeddings=tied and not scale,
            share_embeddings=True,
            head="lm",
        )

    def rules(self, spec: ModelSpec) -> list[Rule]:
        d = spec.d_model
        root = math.sqrt(d // spec.n_heads)
        rules = [
            duplicated("embed.weight", ("shared.weight", "decoder.embed_tokens.weight")),
            same("encoder.embed.weight", "encoder.embed_tokens.weight"),
            scaled("head.weight", "lm_head.weight", self.head_scale),
        ]
        encoder_layers = spec.encoder_spec().n_layers
        for side, ours_root, n in (
            ("encoder", "encoder.", encoder_layers),
            ("decoder", "", spec.n_layers),
        ):
            rules.append(same(f"{ours_root}norm.weight", f"{side}.final_layer_norm.weight"))
            rel = f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
            rules.append(same(f"{ours_root}position.bias.weight", rel))
            for i in range(n):
                ours, layer = f"{ours_root}blocks.{i}", f"{side}.block.{i}.layer"
                att = f"{layer}.0.SelfAttention"
                rules.append(
                    stacked_scaled(
                        f"{ours}.mixer.qkv.weight",
                        [f"{att}.q.weight", f"{att}.k.weight", f"{att}.v.weight"],
                        [d, d, d], [root, 1.0, 1.0],
                    )
                )  # fmt: skip
                rules.append(same(f"{ours}.mixer.out.weight", f"{att}.o.weight"))
                rules.append(same(f"{ours}.norm1.weight", f"{layer}.0.layer_norm.weight"))
                ff = 1
                if side == "decoder":
                    cross = f"{layer}.1.EncDecAttention"
                    rules.append(scaled(f"{ours}.cross.q.weight", f"{cross}.q.weight", root))
                    rules.append(
                        stacked(
                            f"{ours}.cross.kv.weight",
                            [f"{cross}.k.weight", f"{cross}.v.weight"],
                            [d, d],
                        )
                    )
                    rules.append(same(f"{ours}.cross.out.weight", f"{cross}.o.weight"))
                    rules.append(same(f"{ours}.norm_cross.weight", f"{layer}.1.layer_norm.weight"))
                    ff = 2
                rules.append(
                    same(f"{ours}.ffn.up.weight", f"{layer}.{ff}.DenseReluDense.wi.weight")
                )
                rules.append(
                    same(f"{ours}.ffn.down.weight", f"{layer}.{ff}.DenseReluDense.wo.weight")
                )
                rules.append(same(f"{ours}.norm2.weight", f"{layer}.{ff}.layer_norm.weight"))
        return rules

    def export_problems(self, spec: ModelSpec) -> list[str]:
        problems = want(
            spec, "T5", kind="encoder_decoder", embedder_ref="tokens", head_ref="lm",
            attention=("softmax", {"kv_heads": lambda k: k in (None, spec.n_heads)}),
            cross_attention_ref="cross", position="t5_bias", norm="rmsnorm",
            norm_placement="pre", ffn=("mlp", {"activation": "relu"}), bias=False,
            embed_norm=False, share_embeddings=True,
        )  # fmt: skip
        enc = spec.encoder
        if enc is not None and (enc.embedder not in (None, "tokens") or enc.attention is not None):
            problems.append("an encoder with its own embedder or attention (T5's stacks are alike)")
        if enc is not None and enc.vocab_size not in (None, spec.vocab_size):
            problems.append("an encoder vocabulary of its own (T5 shares one embedding)")
        return problems + common_problems(spec, "T5")

    def hf_config(self, spec: ModelSpec) -> Any:
        from transformers import T5Config

        from anyformer.components.ffn import hidden_size

        config = T5Config(
            vocab_size=spec.vocab_size, d_model=spec.d_model, d_kv=spec.d_model // spec.n_heads,
            d_ff=hidden_size(spec.d_model, spec.ffn.params["mult"]),
            num_layers=spec.encoder_spec().n_layers, num_decoder_layers=spec.n_layers,
            num_heads=spec.n_heads,
            relative_attention_num_buckets=spec.position.params["n_buckets"],
            relative_attention_max_distance=spec.position.params["max_distance"],
            dropout_rate=0.0, layer_norm_epsilon=spec.norm.params["eps"],
            feed_forward_proj="relu", tie_word_embeddings=spec.tie_embeddings,
            scale_decoder_outputs=False, decoder_start_token_id=0, pad_token_id=0,
            eos_token_id=1,
        )  # fmt: skip
        config.tie_word_embeddings = spec.tie_embeddings  # (the keyword alone does not untie)
        config.scale_decoder_outputs = False
        return config
