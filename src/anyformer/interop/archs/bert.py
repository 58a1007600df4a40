"""BERT ("BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding", Devlin et al., 2019): ``BertForTokenClassification`` <-> an anyformer
encoder with learned positions, the embedding LayerNorm (``embed_norm``), post-norm
LayerNorm blocks with biases, an MLP and a ``token_classify`` head.

Token types: BERT adds ``token_type_embeddings[token_type_ids]`` to every token. anyformer
has no segment input, so the type-0 row (what HF adds when ``token_type_ids`` is not given)
is folded into the position table: the imported model computes HF's outputs for inputs
of one segment. Exported, the type rows are zero (any ``token_type_ids`` give the same).

Refused by name: the MLM head (``BertForMaskedLM``: a dense + activation + LayerNorm
transform and an output bias before the tied decoder; anyformer's ``lm`` head is one
linear map), the pooler (``BertModel``, ``BertForSequenceClassification``: dense + tanh
on the first token before the classifier; anyformer's ``classify`` pools without a
layer), relative position embeddings and cross-attention.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from anyformer.interop.archs.gpt2 import ACTIVATIONS
from anyformer.interop.base import Architecture, common_problems, want
from anyformer.interop.mapping import Rule, config_problems, fused, linear, refuse, same
from anyformer.spec import ModelSpec

HANDLED = (
    "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
    "layer_norm_eps", "position_embedding_type", "add_cross_attention", "is_decoder",
    "tie_word_embeddings",  # no decoder to tie in token classification
)  # fmt: skip
POOLER = (
    "its pooler (dense + tanh on the first token, before the classifier) has no anyformer "
    "equivalent (classify pools without a layer); import BertForTokenClassification"
)
#: the type rows an exported BERT has (HF's default), all zero
TYPE_ROWS = 2


def folded_positions(ours: str, positions: str, types: str) -> Rule:
    """anyformer's position table = BERT's positions + its token-type-0 row; exported,
    the positions as they are and zero type rows."""

    def save(t: torch.Tensor) -> list[torch.Tensor]:
        return [t, torch.zeros(TYPE_ROWS, t.shape[1], dtype=t.dtype)]

    return Rule(ours, (positions, types), lambda ts: ts[0] + ts[1][0], save)


class Bert(Architecture):
    name = "BERT"
    classes = {
        "BertForTokenClassification": None,
        "BertForMaskedLM": "its MLM head transforms the states (dense, activation, "
        "LayerNorm) and adds an output bias before the tied decoder; anyformer's lm head is "
        "one linear map (import BertForTokenClassification)",
        "BertForPreTraining": "its MLM head (dense, activation, LayerNorm, bias) and "
        "pooler-based next-sentence head have no anyformer equivalent",
        "BertForSequenceClassification": POOLER,
        "BertModel": "has no head; " + POOLER,
    }
    export_class = "BertForTokenClassification"

    def spec(self, hf: nn.Module) -> dict[str, Any]:
        c = hf.config
        problems = config_problems(c, "BERT", HANDLED)
        if c.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act={c.hidden_act!r} (valid: {', '.join(ACTIVATIONS)})")
        kind = getattr(c, "position_embedding_type", "absolute")
        if kind != "absolute":
            problems.append(f"position_embedding_type={kind!r} (anyformer's learned: absolute)")
        if c.is_decoder or c.add_cross_attention:
            problems.append("is_decoder/add_cross_attention (a causal BERT with cross-attention)")
        refuse("cannot import this BertForTokenClassification", problems)
        return dict(
            kind="encoder",
            vocab_size=c.vocab_size,
            d_model=c.hidden_size,
            n_layers=c.num_hidden_layers,
            n_heads=c.num_attention_heads,
            max_len=c.max_position_embeddings,
            attention="softmax",
            position="learned",
            norm={"name": "layernorm", "eps": c.layer_norm_eps},
            norm_placement="post",
            ffn={
                "name": "mlp",
                "activation": ACTIVATIONS[c.hidden_act],
                "mult": c.intermediate_size / c.hidden_size,
            },
            bias=True,
            embed_norm=True,
            head="token_classify",
            n_outputs=c.num_labels,
            tie_embeddings=False,
        )

    def rules(self, spec: ModelSpec) -> list[Rule]:
        emb = "bert.embeddings"
        rules = [
            same("embed.weight", f"{emb}.word_embeddings.weight"),
            folded_positions(
                "position.table.weight",
                f"{emb}.position_embeddings.weight",
                f"{emb}.token_type_embeddings.weight",
            ),
            *linear("embed_norm", f"{emb}.LayerNorm", True),
            *linear("head", "classifier", True),
        ]
        d = spec.d_model
        for i in range(spec.n_layers):
            ours, theirs = f"blocks.{i}", f"bert.encoder.layer.{i}"
            att = f"{theirs}.attention"
            rules += fused(
                f"{ours}.mixer.qkv",
                [f"{att}.self.query", f"{att}.self.key", f"{att}.self.value"],
                [d, d, d],
                True,
            )
            rules += linear(f"{ours}.mixer.out", f"{att}.output.dense", True)
            rules += linear(f"{ours}.norm1", f"{att}.output.LayerNorm", True)
            rules += linear(f"{ours}.ffn.up", f"{theirs}.intermediate.dense", True)
            rules += linear(f"{ours}.ffn.down", f"{theirs}.output.dense", True)
            rules += linear(f"{ours}.norm2", f"{theirs}.output.LayerNorm", True)
        return rules

    def export_problems(self, spec: ModelSpec) -> list[str]:
        acts = sorted(set(ACTIVATIONS.values()))
        problems = want(
            spec, "BERT", kind="encoder", embedder_ref="tokens", head_ref="token_classify",
            attention=("softmax", {"kv_heads": lambda k: k in (None, spec.n_heads)}),
            position="learned", norm=("layernorm", {"bias": True}), norm_placement="post",
            ffn=("mlp", {"activation": lambda a: a in acts}), bias=True, embed_norm=True,
        )  # fmt: skip
        return problems + common_problems(spec, "BERT")

    def hf_config(self, spec: ModelSpec) -> Any:
        from transformers import BertConfig

        from anyformer.components.ffn import hidden_size

        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
        return BertConfig(
            vocab_size=spec.vocab_size, hidden_size=spec.d_model, num_hidden_layers=spec.n_layers,
            num_attention_heads=spec.n_heads,
            intermediate_size=hidden_size(spec.d_model, spec.ffn.params["mult"]),
            hidden_act=act[spec.ffn.params["activation"]], max_position_embeddings=spec.max_len,
            type_vocab_size=TYPE_ROWS, layer_norm_eps=spec.norm.params["eps"],
            num_labels=spec.n_outputs, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )  # fmt: skip
