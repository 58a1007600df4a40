"""Equality with a peer library: HF ``BartForConditionalGeneration`` ("BART", Lewis et
al., 2020), randomly initialised from a config (no download), converted into anyformer's
encoder-decoder by ``benchmarks/seq2seq_generate_throughput.py``'s
:func:`anyformer_from_bart` (learned positions without HF's offset rows, ``embed_norm``
for ``layernorm_embedding``, post-norm LayerNorm blocks with biases, a tied head),
computes the same encoder states and logits (padded sources included) and the same
cached greedy generations; what anyformer does not compute is refused."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
from torch import nn

pytestmark = pytest.mark.peers

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "seq2seq_generate_throughput.py"


def bench() -> ModuleType:
    pytest.importorskip("transformers")
    name = "seq2seq_generate_throughput"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPT)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def hf_bart(seed: int = 0, **extra: Any) -> nn.Module:
    """A small random BART (encoder deeper than the decoder) with every weight, norm gain,
    bias and position row perturbed, so that a parameter mapped to the wrong place shows."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    config: dict[str, Any] = dict(
        vocab_size=61, max_position_embeddings=24, d_model=32, encoder_layers=2,
        decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=80, decoder_ffn_dim=80, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, init_std=0.6, forced_eos_token_id=None,
    )  # fmt: skip
    config.update(extra)
    hf = BartForConditionalGeneration(BartConfig(**config)).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if name.endswith("bias") or "layer_norm" in name or "layernorm" in name:
                p.add_(0.2 * torch.randn_like(p))
    return bench().plain_generation(hf)


def test_converted_bart_computes_the_same_encoder_states_and_logits() -> None:
    hf = hf_bart()
    model = bench().anyformer_from_bart(hf)
    gen = torch.Generator().manual_seed(1)
    source = torch.randint(3, 61, (3, 9), generator=gen)
    source_mask = torch.ones(3, 9, dtype=torch.bool)
    source_mask[1, 6:] = False  # a padded row: its last 3 tokens are hidden
    target = torch.randint(3, 61, (3, 7), generator=gen)
    with torch.no_grad():
        memory = model.encode(source, source_mask)
        ref_memory = hf.model.encoder(input_ids=source, attention_mask=source_mask.long())
        logits = model(target, source=source, source_mask=source_mask)
        ref = hf(input_ids=source, attention_mask=source_mask.long(), decoder_input_ids=target)
    real = source_mask.unsqueeze(-1)  # padded positions' states are read by nobody
    torch.testing.assert_close(
        memory * real, ref_memory.last_hidden_state * real, atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=1e-4)
    assert model.head.weight is model.embed.weight is model.encoder.embed.weight
    assert model.position.table.num_embeddings == 24  # HF's 26 rows less the offset's 2


def test_converted_bart_generates_the_same_greedy_tokens_with_its_cache() -> None:
    b = bench()
    hf = hf_bart(seed=2)
    model = b.anyformer_from_bart(hf)
    source = torch.randint(3, 61, (4, 8), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours = b.ours_generate(model, source, 15, b.START["bart"])
        theirs = b.hf_generate(hf, source, 15)
    assert ours.shape == (4, 16) and torch.equal(ours[:, 0], torch.full((4,), 2))
    assert torch.equal(ours, theirs)
    assert len({tuple(row) for row in ours.tolist()}) == 4  # the answers depend on the source
    assert len(set(ours[:, 1:].flatten().tolist())) > 5


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"scale_embedding": True}, "scale_embedding"),
        ({"decoder_ffn_dim": 64}, "encoder_ffn_dim != decoder_ffn_dim"),
        ({"activation_function": "gelu_new"}, "activation_function='gelu_new'"),
    ],
)
def test_what_anyformer_does_not_compute_is_refused(extra: dict[str, Any], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        bench().anyformer_from_bart(hf_bart(**extra))


def test_a_non_zero_final_logits_bias_is_refused() -> None:
    hf = hf_bart()
    hf.final_logits_bias[0, 5] = 1.0
    with pytest.raises(ValueError, match="final_logits_bias"):
        bench().anyformer_from_bart(hf)
