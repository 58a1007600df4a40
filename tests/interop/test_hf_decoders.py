"""GPT-2 and Llama in and out of Hugging Face ``transformers``: an HF model built from a
small config with random weights (every bias and norm gain perturbed, so a weight mapped
to the wrong place shows) converts with :func:`anyformer.interop.from_hf` into a model
with equal logits (1e-4) and the same cached greedy tokens as HF's ``generate``;
:func:`anyformer.interop.to_hf` maps back; what anyformer cannot express is refused by
name."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from anyformer.decoding import generate
from anyformer.errors import SpecError
from anyformer.interop import from_hf, to_hf
from anyformer.model.transformer import build_model

pytestmark = pytest.mark.peers
T = pytest.importorskip("transformers")

VOCAB = 61


def perturbed(hf: nn.Module, seed: int = 0) -> nn.Module:
    """``hf`` in eval mode with biases and norm gains moved off their initial values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf.parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return hf.eval()


def gpt2(**extra: Any) -> nn.Module:
    config: dict[str, Any] = dict(
        vocab_size=VOCAB, n_positions=32, n_embd=32, n_layer=2, n_head=4,
        initializer_range=0.3, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    config.update(extra)
    torch.manual_seed(0)
    return perturbed(T.GPT2LMHeadModel(T.GPT2Config(**config)))


def llama(**extra: Any) -> nn.Module:
    config: dict[str, Any] = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        initializer_range=0.3, bos_token_id=0, eos_token_id=0, rms_norm_eps=1e-5,
    )  # fmt: skip
    config.update(extra)
    torch.manual_seed(0)
    return perturbed(T.LlamaForCausalLM(T.LlamaConfig(**config)))


def ids(batch: int = 3, length: int = 10, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def assert_same_logits(model: nn.Module, hf: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        ours, theirs = model(x), hf(x).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert (theirs[0, -1] - theirs[1, -1]).abs().max() > 1e-2  # depends on the input


def hf_greedy(hf: nn.Module, prompt: torch.Tensor, new: int) -> torch.Tensor:
    return hf.generate(
        prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
        min_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=True,
    )  # fmt: skip


MODELS = {
    "gpt2": lambda: gpt2(),
    "gpt2_untied_relu_inner": lambda: gpt2(
        tie_word_embeddings=False, activation_function="relu", n_inner=40
    ),
    "llama_gqa": lambda: llama(),
    "llama_tied_mqa_theta": lambda: llama(
        tie_word_embeddings=True,
        num_key_value_heads=1,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_imported_model_computes_hf_logits(name: str) -> None:
    hf = MODELS[name]()
    spec, model = from_hf(hf)
    assert_same_logits(model, hf, ids())
    assert model.num_params() == sum(p.numel() for p in hf.parameters())
    tied = hf.lm_head.weight is hf.get_input_embeddings().weight
    assert spec.tie_embeddings is tied and (model.head.weight is model.embed.weight) is tied


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_cached_greedy_generation_equals_hf_generate(name: str) -> None:
    hf = MODELS[name]()
    _, model = from_hf(hf)
    prompt = ids(3, 4, seed=2)
    with torch.no_grad():
        ours = generate(model, prompt, 14, use_cache=True)
        theirs = hf_greedy(hf, prompt, 14)
    assert torch.equal(ours, theirs)
    assert len(set(ours[:, 4:].flatten().tolist())) > 4  # not one repeated token


def test_llama_config_values_reach_the_spec() -> None:
    spec, _ = from_hf(MODELS["llama_tied_mqa_theta"]())
    assert spec.attention.params["kv_heads"] == 1
    assert spec.position.name == "rope" and spec.position.params["base"] == 500.0
    assert spec.norm.name == "rmsnorm" and spec.norm.params["eps"] == 1e-5
    assert spec.ffn.params["variant"] == "swiglu" and not spec.bias


def test_llama_rotary_halves_need_no_permutation() -> None:
    """HF's ``rotate_half`` pairs channel i with i + d_head/2, as anyformer's rope does:
    weights copy as they are. Permuting q/k rows into interleaved pairs (Meta's original
    layout) changes the logits, so the equality above is not an accident of symmetry."""
    hf = llama()
    _, model = from_hf(hf)
    x = ids()
    with torch.no_grad():
        reference = hf(x).logits
        d_head, heads = 8, 4
        order = torch.arange(d_head).view(2, -1).t().reshape(-1)  # 0, 4, 1, 5, ...
        rows = torch.cat([h * d_head + order for h in range(heads)])
        qkv = model.blocks[0].mixer.qkv.weight
        qkv[: heads * d_head] = qkv[: heads * d_head][rows]
        assert (model(x) - reference).abs().max() > 1e-3


@pytest.mark.parametrize("name", ["gpt2_untied_relu_inner", "llama_gqa", "llama_tied_mqa_theta"])
def test_to_hf_inverts_from_hf(name: str) -> None:
    hf = MODELS[name]()
    _, model = from_hf(hf)
    back = to_hf(model)
    assert type(back) is type(hf)
    assert_same_logits(model, back, ids())
    theirs, again = hf.state_dict(), back.state_dict()
    for key, value in theirs.items():
        if key in again:
            torch.testing.assert_close(again[key], value, atol=0, rtol=0, msg=key)


def test_a_native_anyformer_decoder_exports_to_llama() -> None:
    model = build_model(
        dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, position="rope",
             norm="rmsnorm", ffn={"name": "glu", "variant": "swiglu"}, bias=False,
             attention={"name": "softmax", "kv_heads": 2}, init_std=0.3)
    ).eval()  # fmt: skip
    hf = to_hf(model)
    assert type(hf).__name__ == "LlamaForCausalLM" and hf.config.num_key_value_heads == 2
    assert_same_logits(model, hf, ids())


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: gpt2(scale_attn_by_inverse_layer_idx=True), "scale_attn_by_inverse_layer_idx"),
        (lambda: gpt2(activation_function="tanh"), "activation_function='tanh'"),
        (lambda: gpt2(my_new_option=3), "config field my_new_option=3"),
        (lambda: llama(hidden_act="gelu"), "hidden_act='gelu'"),
        (lambda: llama(attention_bias=True), "attention_bias=True with mlp_bias=False"),
        (
            lambda: llama(
                rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
            ),
            "rope_type='linear'",
        ),
        (
            lambda: T.GPT2Model(T.GPT2Config(n_layer=1, n_embd=8, n_head=2)),
            "GPT2Model: has no head",
        ),
        (lambda: nn.Linear(2, 2), "Linear is not a supported architecture"),
    ],
)
def test_what_anyformer_cannot_express_is_refused_by_name(make: Any, named: str) -> None:
    with pytest.raises(SpecError, match=named.replace("(", r"\(").replace(")", r"\)")):
        from_hf(make())


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        (dict(position="alibi"), "position='alibi'"),
        (dict(position="learned", norm_placement="sandwich_norm"), "norm_placement='sandwich_norm'"),
        (dict(position="rope", norm="rmsnorm", ffn="glu", depth={"name": "looped", "loops": 2}),
         "depth='looped'"),
    ],
)  # fmt: skip
def test_components_without_an_hf_equivalent_are_refused_by_name(
    spec: dict[str, Any], named: str
) -> None:
    model = build_model(dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, **spec))
    with pytest.raises(SpecError, match=named) as info:
        to_hf(model)
    assert "no Hugging Face equivalent" in str(info.value)
