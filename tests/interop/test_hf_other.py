"""BERT, ViT, T5 and GPT-NeoX in and out of Hugging Face ``transformers``: random HF
models from small configs (biases and norm gains perturbed) convert to anyformer with
equal outputs (1e-4) — BERT with padded rows, ViT's hidden states against ``ViTModel``'s,
T5's cached greedy generation against HF's — and back; what anyformer cannot express is
refused by name."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from anyformer.decoding import generate
from anyformer.errors import SpecError
from anyformer.interop import from_hf, to_hf
from anyformer.lab.experiments import load_experiment
from anyformer.model.transformer import Transformer, build_model

pytestmark = pytest.mark.peers
T = pytest.importorskip("transformers")


def perturbed(hf: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in hf.named_parameters():
            if p.dim() == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return hf.eval()


def bert(**extra: Any) -> nn.Module:
    config: dict[str, Any] = dict(
        vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=48, max_position_embeddings=16, num_labels=5, initializer_range=0.3,
    )  # fmt: skip
    config.update(extra)
    torch.manual_seed(0)
    return perturbed(T.BertForTokenClassification(T.BertConfig(**config)))


def vit(**extra: Any) -> nn.Module:
    config: dict[str, Any] = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=8, patch_size=2, num_channels=3, num_labels=4, initializer_range=0.3,
    )  # fmt: skip
    config.update(extra)
    torch.manual_seed(0)
    return perturbed(T.ViTForImageClassification(T.ViTConfig(**config)))


def t5(**extra: Any) -> nn.Module:
    config: dict[str, Any] = dict(
        vocab_size=61, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=1,
        num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=20,
        tie_word_embeddings=False, initializer_factor=1.0,
    )  # fmt: skip
    config.update(extra)
    torch.manual_seed(0)
    t5_config = T.T5Config(**config)
    t5_config.tie_word_embeddings = config["tie_word_embeddings"]  # (the keyword alone does not)
    hf = T.T5ForConditionalGeneration(t5_config)
    assert (hf.lm_head.weight is hf.shared.weight) is config["tie_word_embeddings"]
    with torch.no_grad():  # untied, HF keeps three tables: anyformer shares one
        hf.encoder.embed_tokens.weight.copy_(hf.shared.weight)
        hf.decoder.embed_tokens.weight.copy_(hf.shared.weight)
    return perturbed(hf)


def t5_separate_tables() -> nn.Module:
    hf = t5()
    with torch.no_grad():
        hf.decoder.embed_tokens.weight.add_(0.1)
    return hf


def neox(**extra: Any) -> nn.Module:
    config: dict[str, Any] = dict(
        vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=64, use_parallel_residual=False, initializer_range=0.3,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": 1.0},
    )  # fmt: skip
    config.update(extra)
    torch.manual_seed(0)
    return perturbed(T.GPTNeoXForCausalLM(T.GPTNeoXConfig(**config)))


def tokens(batch: int, length: int, seed: int = 1, low: int = 0) -> torch.Tensor:
    return torch.randint(low, 61, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_bert_token_classification_equals_hf_with_padded_rows() -> None:
    hf = bert()
    spec, model = from_hf(hf)
    assert spec.norm_placement.name == "post" and spec.embed_norm
    x = tokens(3, 10)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 6:] = False
    with torch.no_grad():
        ours = model(x, mask)
        theirs = hf(x, attention_mask=mask.long()).logits
    real = mask[..., None]
    torch.testing.assert_close(ours * real, theirs * real, atol=1e-4, rtol=1e-4)
    assert (theirs[0] - theirs[2]).abs().max() > 1e-2
    back = to_hf(model)
    with torch.no_grad():  # any token_type_ids give the same: the type rows are zero
        again = back(x, token_type_ids=torch.ones_like(x)).logits
    torch.testing.assert_close(again, model(x), atol=1e-4, rtol=1e-4)


def test_bert_token_type_zero_is_folded_into_the_positions() -> None:
    hf = bert()
    _, model = from_hf(hf)
    emb = hf.bert.embeddings
    expected = emb.position_embeddings.weight + emb.token_type_embeddings.weight[0]
    torch.testing.assert_close(model.position.table.weight, expected)


def test_vit_classification_and_hidden_states_equal_hf() -> None:
    hf = vit()
    spec, model = from_hf(hf)
    assert spec.max_len == 17 and spec.pool == "first"
    images = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(model(images), hf(images).logits, atol=1e-4, rtol=1e-4)
        headless = Transformer(model.spec, head=False).eval()
        headless.load_state_dict(
            {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
        )
        states = hf.vit(images).last_hidden_state  # ViTModel's output, final norm included
        torch.testing.assert_close(headless(images), states, atol=1e-4, rtol=1e-4)
    back = to_hf(model)
    with torch.no_grad():
        torch.testing.assert_close(back(images).logits, model(images), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tied", [False, True])
def test_t5_logits_and_cached_greedy_generation_equal_hf(tied: bool) -> None:
    hf = t5(tie_word_embeddings=tied)
    spec, model = from_hf(hf)
    assert spec.encoder is not None and spec.encoder.n_layers == 2 and spec.n_layers == 1
    assert not spec.tie_embeddings  # a tied T5 scales its output: an untied scaled head
    source, target = tokens(3, 9, low=2), tokens(3, 7, seed=2, low=2)
    with torch.no_grad():
        ours = model(target, source=source)
        theirs = hf(input_ids=source, decoder_input_ids=target).logits
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
        start = torch.zeros(3, 1, dtype=torch.long)  # T5's decoder_start_token_id
        mine = generate(model, start, 10, source=source, use_cache=True)
        hf.generation_config.eos_token_id = None
        greedy = hf.generate(
            input_ids=source, attention_mask=torch.ones_like(source), max_new_tokens=10,
            min_new_tokens=10, do_sample=False, eos_token_id=None, decoder_start_token_id=0,
        )  # fmt: skip
    assert torch.equal(mine, greedy)
    back = to_hf(model)
    with torch.no_grad():
        again = back(input_ids=source, decoder_input_ids=target).logits
    torch.testing.assert_close(again, ours, atol=1e-4, rtol=1e-4)


def test_neox_equals_hf_and_the_quickstart_exports_as_neox() -> None:
    hf = neox(tie_word_embeddings=False)
    _, model = from_hf(hf)
    x = tokens(3, 10)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(x).logits, atol=1e-4, rtol=1e-4)
    quick = load_experiment("quickstart").model.model_dump(mode="json")
    ours = build_model({**quick, "vocab_size": 30, "init_std": 0.3}).eval()
    back = to_hf(ours)
    assert type(back).__name__ == "GPTNeoXForCausalLM" and not back.config.use_parallel_residual
    y = x % 30
    with torch.no_grad():
        torch.testing.assert_close(back(y).logits, ours(y), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("make", "named"),
    [
        (lambda: bert(position_embedding_type="relative_key"), "position_embedding_type"),
        (lambda: T.BertForSequenceClassification(T.BertConfig(num_hidden_layers=1, hidden_size=8,
         num_attention_heads=2, intermediate_size=8)), "pooler"),
        (lambda: vit(qkv_bias=False), "qkv_bias=False"),
        (lambda: T.ViTModel(T.ViTConfig(num_hidden_layers=1, hidden_size=8, num_attention_heads=2,
         intermediate_size=8, image_size=4, patch_size=2)), "ViTModel: its pooler"),
        (lambda: t5(feed_forward_proj="gated-gelu"), "feed_forward_proj='gated-gelu'"),
        (lambda: neox(use_parallel_residual=True), "use_parallel_residual=True"),
        (lambda: t5_separate_tables(), "token embeddings that differ"),
        (lambda: neox(rope_parameters={"rope_type": "default", "rope_theta": 1e4,
                                       "partial_rotary_factor": 0.25}), "partial_rotary_factor"),
    ],
)  # fmt: skip
def test_what_anyformer_cannot_express_is_refused_by_name(make: Any, named: str) -> None:
    with pytest.raises(SpecError, match=named):
        from_hf(make())


def test_an_encoder_decoder_with_learned_positions_has_no_hf_export() -> None:
    model = build_model(
        dict(kind="encoder_decoder", vocab_size=20, d_model=16, n_layers=1, n_heads=2,
             position="learned", norm="rmsnorm", bias=False, ffn={"name": "mlp", "activation": "relu"})
    )  # fmt: skip
    with pytest.raises(SpecError, match="position='learned' \\(T5 has t5_bias\\)"):
        to_hf(model)
