"""ViT ("An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
Dosovitskiy et al., 2021): ``ViTForImageClassification`` <-> an anyformer encoder with
the ``patches`` embedder (a strided convolution, a CLS token first), learned positions
over CLS + patches, pre-norm LayerNorm blocks with biases, an MLP, a final LayerNorm and a
``classify`` head on the first token (``pool: first``). ``ViTModel`` adds a pooler
(dense + tanh), which anyformer does not have: it is refused (its hidden states are
those of ``ViTForImageClassification.vit``, which the tests compare too).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from anyformer.interop.archs.gpt2 import ACTIVATIONS
from anyformer.interop.base import Architecture, common_problems, want
from anyformer.interop.mapping import Rule, config_problems, fused, linear, refuse, same
from anyformer.spec import ModelSpec

HANDLED = (
    "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_act", "layer_norm_eps", "image_size", "patch_size", "num_channels", "qkv_bias",
    "encoder_stride", "pooler_output_size", "pooler_act", "tie_word_embeddings",
)  # fmt: skip


def pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def unsqueezed(ours: str, theirs: str) -> Rule:
    """HF's ``[1, N, D]`` tables as anyformer's ``[N, D]``."""
    return Rule(ours, (theirs,), lambda ts: ts[0][0], lambda t: [t[None]])


class ViT(Architecture):
    name = "ViT"
    classes = {
        "ViTForImageClassification": None,
        "ViTModel": "its pooler (dense + tanh on the CLS token) has no anyformer equivalent; "
        "import ViTForImageClassification",
        "ViTForMaskedImageModeling": "its convolutional pixel decoder has no anyformer equivalent",
    }
    export_class = "ViTForImageClassification"

    def spec(self, hf: nn.Module) -> dict[str, Any]:
        c = hf.config
        problems = config_problems(c, "ViT", HANDLED)
        if c.hidden_act not in ACTIVATIONS:
            problems.append(f"hidden_act={c.hidden_act!r} (valid: {', '.join(ACTIVATIONS)})")
        if not c.qkv_bias:
            problems.append(
                "qkv_bias=False (the other layers keep biases; anyformer's bias is one switch)"
            )
        refuse("cannot import this ViTForImageClassification", problems)
        height, width = pair(c.image_size)
        patch = pair(c.patch_size)
        if patch[0] != patch[1]:
            refuse("cannot import this ViTForImageClassification", [f"patch_size={c.patch_size} (square patches only)"])  # fmt: skip
        n_tokens = 1 + (height // patch[0]) * (width // patch[1])
        return dict(
            kind="encoder",
            embedder={"name": "patches", "patch_size": patch[0], "cls": True},
            input_shape=[c.num_channels, height, width],
            d_model=c.hidden_size,
            n_layers=c.num_hidden_layers,
            n_heads=c.num_attention_heads,
            max_len=n_tokens,
            attention="softmax",
            position="learned",
            norm={"name": "layernorm", "eps": c.layer_norm_eps},
            norm_placement="pre",
            ffn={
                "name": "mlp",
                "activation": ACTIVATIONS[c.hidden_act],
                "mult": c.intermediate_size / c.hidden_size,
            },
            bias=True,
            head="classify",
            pool="first",
            n_outputs=c.num_labels,
        )

    def rules(self, spec: ModelSpec) -> list[Rule]:
        emb = "vit.embeddings"
        rules = [
            same("embed.prefix.cls", f"{emb}.cls_token"),
            *linear("embed.proj", f"{emb}.patch_embeddings.projection", True),
            unsqueezed("position.table.weight", f"{emb}.position_embeddings"),
            *linear("norm", "vit.layernorm", True),
            *linear("head", "classifier", True),
        ]
        d = spec.d_model
        for i in range(spec.n_layers):
            ours, theirs = f"blocks.{i}", f"vit.layers.{i}"
            att = f"{theirs}.attention"
            rules += linear(f"{ours}.norm1", f"{theirs}.layernorm_before", True)
            rules += fused(
                f"{ours}.mixer.qkv", [f"{att}.q_proj", f"{att}.k_proj", f"{att}.v_proj"],
                [d, d, d], True,
            )  # fmt: skip
            rules += linear(f"{ours}.mixer.out", f"{att}.o_proj", True)
            rules += linear(f"{ours}.norm2", f"{theirs}.layernorm_after", True)
            rules += linear(f"{ours}.ffn.up", f"{theirs}.mlp.fc1", True)
            rules += linear(f"{ours}.ffn.down", f"{theirs}.mlp.fc2", True)
        return rules

    def export_problems(self, spec: ModelSpec) -> list[str]:
        acts = sorted(set(ACTIVATIONS.values()))
        problems = want(
            spec, "ViT", kind="encoder", head_ref="classify", pool="first",
            embedder_ref=("patches", {"cls": True, "registers": 0, "cls_position": "first"}),
            attention=("softmax", {"kv_heads": lambda k: k in (None, spec.n_heads)}),
            position="learned", norm=("layernorm", {"bias": True}), norm_placement="pre",
            ffn=("mlp", {"activation": lambda a: a in acts}), bias=True, embed_norm=False,
        )  # fmt: skip
        if not problems and spec.token_layout.length != spec.max_len:
            problems.append(
                f"max_len={spec.max_len} with {spec.token_layout.length} tokens (HF ViT's "
                f"position table has one row per token)"
            )
        return problems + common_problems(spec, "ViT")

    def hf_config(self, spec: ModelSpec) -> Any:
        from transformers import ViTConfig

        from anyformer.components.ffn import hidden_size

        act = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
        channels, height, width = spec.input_shape  # type: ignore[misc]
        return ViTConfig(
            hidden_size=spec.d_model, num_hidden_layers=spec.n_layers,
            num_attention_heads=spec.n_heads,
            intermediate_size=hidden_size(spec.d_model, spec.ffn.params["mult"]),
            hidden_act=act[spec.ffn.params["activation"]], layer_norm_eps=spec.norm.params["eps"],
            image_size=height if height == width else [height, width],
            patch_size=spec.embedder_ref.params["patch_size"], num_channels=channels,
            qkv_bias=True, num_labels=spec.n_outputs, hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )  # fmt: skip
