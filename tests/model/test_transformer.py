"""The core Transformer: heads, tied embeddings, parameter count, FLOPs, GQA and init."""

from __future__ import annotations

import math

import pytest
import torch

from anyformer.model.transformer import build_model

BASE = dict(vocab_size=50, d_model=32, n_heads=4, n_layers=2, max_len=64, position="none")


def test_decoder_returns_next_token_logits_and_ties_embeddings() -> None:
    model = build_model(BASE)
    x = torch.randint(0, 50, (3, 10))
    logits = model(x)
    assert logits.shape == (3, 10, 50)
    assert model.head.weight is model.embed.weight
    untied = build_model({**BASE, "tie_embeddings": False})
    assert untied.head.weight is not untied.embed.weight
    assert untied.num_params() - model.num_params() == 50 * 32


@pytest.mark.parametrize("depth", ["stack", {"name": "looped", "loops": 2}])
def test_last_only_equals_the_last_position_of_the_full_output(depth: object) -> None:
    model = build_model({**BASE, "position": "rope", "depth": depth}).eval()
    x = torch.randint(0, 50, (3, 10))
    with torch.no_grad():
        full, last = model(x), model(x, last_only=True)
        again = model(x)  # the flag does not outlive its call
    assert last.shape == (3, 1, 50)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-6, rtol=0)
    assert torch.equal(again, full)
    pooled = build_model({**BASE, "kind": "encoder", "head": "classify", "n_outputs": 3})
    with pytest.raises(ValueError, match="per-position head"):
        pooled(x, last_only=True)


def test_param_count_matches_the_formula() -> None:
    d, v, layers = 32, 50, 2
    model = build_model({**BASE, "bias": True})
    per_block = (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d) + 4 * d
    expected = v * d + layers * per_block + 2 * d  # embeddings (tied head) + blocks + final norm
    assert model.num_params() == expected
    assert model.num_params(exclude_embeddings=True) == expected - v * d


def test_flops_per_token_is_six_n_plus_attention() -> None:
    model = build_model({**BASE, "bias": False, "tie_embeddings": False})
    seq = 16
    n_matmul = sum(
        p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embed" not in n
    )
    attention = 2 * 4 * seq * 32  # scores + weighted sum per layer, forward
    assert model.flops_per_token(seq) == 3 * (2 * n_matmul + attention)


def test_grouped_query_heads_share_keys_and_values() -> None:
    mqa = build_model({**BASE, "attention": {"name": "softmax", "kv_heads": 1}})
    mha = build_model(BASE)
    d, dh = 32, 8
    saved = 2 * 2 * (d * d - d * dh + (d - dh))  # per layer: k and v projections shrink to one head
    assert mha.num_params() - mqa.num_params() == saved
    # multi-query attention with every head's key/value equal is multi-head attention
    torch.manual_seed(0)
    q = build_model({**BASE, "attention": {"name": "softmax", "kv_heads": 1}})
    h = build_model(BASE)
    state = h.state_dict()
    for name, value in q.state_dict().items():
        if name.endswith("qkv.weight") or name.endswith("qkv.bias"):
            qw, kw, vw = value.split((d, dh, dh), dim=0)
            state[name] = torch.cat(
                [qw, kw.repeat(4, *[1] * (kw.dim() - 1)), vw.repeat(4, *[1] * (vw.dim() - 1))]
            )
        else:
            state[name] = value
    h.load_state_dict(state)
    x = torch.randint(0, 50, (2, 9))
    torch.testing.assert_close(q(x), h(x), atol=1e-5, rtol=1e-5)


def test_residual_projections_use_scaled_init() -> None:
    model = build_model({**BASE, "n_layers": 8, "d_model": 256, "n_heads": 4})
    out_std = model.blocks[0].mixer.out.weight.std().item()
    qkv_std = model.blocks[0].mixer.qkv.weight.std().item()
    assert qkv_std == pytest.approx(0.02, rel=0.05)
    assert out_std == pytest.approx(0.02 / math.sqrt(16), rel=0.05)


@pytest.mark.parametrize("placement", ["pre", "post"])
@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_encoder_heads_and_pooling(placement: str, norm: str) -> None:
    spec = {**BASE, "kind": "encoder", "norm": norm, "norm_placement": placement, "n_outputs": 3}
    clf = build_model(spec)
    x = torch.randint(0, 50, (4, 7))
    assert clf(x).shape == (4, 3)
    # mean pooling over real tokens: padding the batch changes nothing
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[:, 7:] = False
    padded = torch.cat([x, torch.zeros(4, 3, dtype=torch.long)], 1)
    clf.eval()
    torch.testing.assert_close(clf(x), clf(padded, mask), atol=1e-5, rtol=1e-5)
    reg = build_model({**spec, "head": "regress", "n_outputs": 1})
    assert reg(x).shape == (4, 1)
    tok = build_model({**spec, "head": "token_classify", "n_outputs": 5})
    assert tok(x).shape == (4, 7, 5)


def test_vector_inputs() -> None:
    model = build_model(
        {
            **BASE,
            "embed": "vectors",
            "vocab_size": None,
            "input_dim": 6,
            "head": "token_regress",
            "n_outputs": 1,
        }
    )
    assert model(torch.randn(2, 5, 6)).shape == (2, 5, 1)


def test_learned_positions_beyond_max_len_name_the_field() -> None:
    from anyformer.errors import AnyformerError

    model = build_model({**BASE, "position": "learned", "max_len": 8})
    with pytest.raises(AnyformerError, match="max_len"):
        model(torch.randint(0, 50, (1, 9)))


@pytest.mark.parametrize("norm", ["layernorm", "rmsnorm"])
def test_embed_norm_normalises_token_plus_position_embeddings(norm: str) -> None:
    """``embed_norm`` (BERT's / BART's embedding LayerNorm): the first block reads
    norm(embed(x) + P[t]) with a norm of the model's kind and its own gain and bias."""
    torch.manual_seed(0)
    model = build_model({**BASE, "position": "learned", "norm": norm, "embed_norm": True})
    with torch.no_grad():  # a gain and bias that are not the identity's
        for p in model.embed_norm.parameters():
            p.uniform_(0.5, 1.5)
    seen: list[torch.Tensor] = []
    model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    x = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        model(x)
        summed = model.embed.weight[x] + model.position.table.weight[:7]
        if norm == "layernorm":
            mean = summed.mean(-1, keepdim=True)
            var = summed.var(-1, unbiased=False, keepdim=True)
            expect = (summed - mean) / torch.sqrt(var + model.embed_norm.eps)
            expect = expect * model.embed_norm.weight + model.embed_norm.bias
        else:
            rms = torch.sqrt(summed.pow(2).mean(-1, keepdim=True) + model.embed_norm.eps)
            expect = summed / rms * model.embed_norm.weight
    torch.testing.assert_close(seen[0], expect, atol=1e-5, rtol=1e-5)
    plain = build_model({**BASE, "position": "learned", "norm": norm})
    assert plain.embed_norm is None
    assert "embed_norm.weight" in model.state_dict()
    assert not any(k.startswith("embed_norm") for k in plain.state_dict())


def test_embed_norm_off_leaves_written_specs_and_hashes_unchanged() -> None:
    from anyformer.spec import ModelSpec, parse, spec_hash

    off, on = parse(ModelSpec, BASE), parse(ModelSpec, {**BASE, "embed_norm": True})
    assert "embed_norm" not in off.model_dump()
    assert on.model_dump()["embed_norm"] is True
    assert spec_hash(off) == spec_hash(parse(ModelSpec, {**BASE, "embed_norm": False}))
    assert spec_hash(on) != spec_hash(off)
