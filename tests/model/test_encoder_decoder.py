"""The encoder-decoder (``kind: encoder_decoder``, Vaswani et al. 2017): what it computes
(an encoder blind to the decoder, a causal decoder, padded source tokens ignored,
cached decoding equal to recomputation for every cache-capable decoder mixer), that
it learns (reversal of digit strings), its state dict, and validation messages."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from anyformer import registry
from anyformer.decoding import generate
from anyformer.errors import SpecError, UserError
from anyformer.model.encoder_decoder import EncoderDecoder
from anyformer.model.transformer import Transformer, build_model
from anyformer.spec import ModelSpec, TrainSpec, parse
from anyformer.tasks.base import Batch, Task
from anyformer.tasks.packing import model_inputs

V = 13  # 0 pad, 1 BOS, 2 EOS, 3..12 digits
PAD, BOS, EOS = 0, 1, 2
#: parameters the toy models need (a window narrower than the sequences)
PARAMS: dict[str, dict[str, Any]] = {"sliding_window": {"window": 4}}


def _spec(**extra: Any) -> ModelSpec:
    data: dict[str, Any] = dict(
        kind="encoder_decoder", vocab_size=V, d_model=32, n_heads=4, n_layers=2, max_len=40
    )
    data.update(extra)
    return parse(ModelSpec, data)


def _model(**extra: Any) -> EncoderDecoder:
    torch.manual_seed(0)
    model = build_model(_spec(**extra))
    assert isinstance(model, EncoderDecoder)
    return model


def _ids(b: int, t: int, seed: int) -> torch.Tensor:
    return torch.randint(3, V, (b, t), generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- structure
def test_build_model_returns_the_class_of_each_kind() -> None:
    for kind, cls in [("decoder", Transformer), ("prefix_lm", Transformer)]:
        model = build_model(dict(kind=kind, vocab_size=V, d_model=32, n_heads=4))
        assert type(model) is cls
    assert type(_model()) is EncoderDecoder


def test_state_dict_has_encoder_and_decoder_keys_and_shares_the_embedding() -> None:
    model = _model()
    keys = set(model.state_dict())
    assert {"embed.weight", "encoder.embed.weight", "head.weight"} <= keys
    for i in range(2):
        assert f"encoder.blocks.{i}.mixer.qkv.weight" in keys
        assert f"blocks.{i}.mixer.qkv.weight" in keys
        assert {f"blocks.{i}.cross.q.weight", f"blocks.{i}.cross.kv.weight"} <= keys
        assert f"blocks.{i}.norm_cross.weight" in keys
        assert not any(k.startswith(f"encoder.blocks.{i}.cross") for k in keys)
    assert "encoder.head.weight" not in keys  # the encoder builds no head
    assert model.encoder.embed.weight is model.embed.weight is model.head.weight
    apart = _model(share_embeddings=False)
    assert apart.encoder.embed.weight is not apart.embed.weight
    assert apart.num_params() == model.num_params() + V * 32
    # a fresh model loading the state dict computes the same function
    other = _model(share_embeddings=True)
    torch.nn.init.normal_(other.embed.weight)
    other.load_state_dict(model.state_dict())
    x, src = _ids(2, 5, 0), _ids(2, 7, 1)
    torch.testing.assert_close(other(x, source=src), model(x, source=src))


def test_a_checkpoint_round_trips_through_safetensors(tmp_path: Any) -> None:
    """The shared embedding is saved once and loaded into both stacks (as checkpoints
    are written and read, ``training/checkpoint.py``)."""
    from safetensors.torch import load_model, save_model

    model, other = _model(), _model()
    torch.nn.init.normal_(other.embed.weight)
    torch.nn.init.normal_(other.encoder.blocks[0].mixer.qkv.weight)
    save_model(model, str(tmp_path / "model.safetensors"))
    missing, unexpected = load_model(other, str(tmp_path / "model.safetensors"), strict=False)
    assert not missing and not unexpected
    assert other.encoder.embed.weight is other.embed.weight
    x, src = _ids(2, 5, 0), _ids(2, 7, 1)
    assert torch.equal(other(x, source=src), model(x, source=src))


def test_encoder_follows_encoder_fields() -> None:
    model = _model(
        encoder={"n_layers": 3, "attention": "linear"}, attention="softmax", position="none"
    )
    assert len(model.encoder.blocks) == 3 and len(model.blocks) == 2
    assert type(model.encoder.blocks[0].mixer).__name__ != type(model.blocks[0].mixer).__name__
    assert model.encoder.causal is False and model.causal is True


# --------------------------------------------------------------------------- what it computes
def test_encoder_output_does_not_depend_on_the_decoder_input() -> None:
    model = _model().eval()
    src = _ids(2, 7, 1)
    seen: list[torch.Tensor] = []
    model.encoder.register_forward_hook(lambda m, args, out: seen.append(out))
    with torch.no_grad():
        model(_ids(2, 5, 2), source=src)
        model(_ids(2, 9, 3), source=src)
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=0)
    torch.testing.assert_close(seen[0], model.encode(src), rtol=0, atol=0)
    # and the decoder's outputs given that memory equal those given the source
    with torch.no_grad():
        x = _ids(2, 5, 2)
        assert torch.equal(model(x, source=src), model(x, memory=model.encode(src)))


@pytest.mark.parametrize("layout", ["pre", "post"])
def test_decoder_is_causal_and_reads_the_source(layout: str) -> None:
    model = _model(norm_placement=layout, init_std=0.2).eval()
    x, src = _ids(2, 10, 0), _ids(2, 7, 1)
    t = 6
    y = x.clone()
    y[:, t] = (x[:, t] - 3 + 4) % 10 + 3
    with torch.no_grad():
        a, b = model(x, source=src), model(y, source=src)
        torch.testing.assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
        assert ((a[:, t:] - b[:, t:]).abs().amax(-1) > 1e-4).all()
        other = src.clone()
        other[:, 3] = (src[:, 3] - 3 + 5) % 10 + 3
        c = model(x, source=other)  # every target position reads the whole source
        assert ((a - c).abs().amax(-1) > 1e-4).all()


def test_padded_source_rows_give_the_outputs_of_unpadded_ones() -> None:
    """A ragged source batch (padding trailing, ``source_mask``) and ragged targets
    (``padding_mask``): every row's real outputs are those of the row alone."""
    model = _model(init_std=0.1).eval()
    src_len, tgt_len = [4, 7, 5], [6, 3, 5]
    srcs = [_ids(1, n, 10 + i) for i, n in enumerate(src_len)]
    tgts = [_ids(1, n, 20 + i) for i, n in enumerate(tgt_len)]
    source = torch.full((3, 7), 5)  # padding holds real-looking tokens: only the mask hides it
    target = torch.full((3, 6), 7)
    smask = torch.zeros(3, 7, dtype=torch.bool)
    tmask = torch.zeros(3, 6, dtype=torch.bool)
    for i in range(3):
        source[i, : src_len[i]], smask[i, : src_len[i]] = srcs[i], True
        target[i, : tgt_len[i]], tmask[i, : tgt_len[i]] = tgts[i], True
    with torch.no_grad():
        batch = model(target, tmask, source=source, source_mask=smask)
        memory = model.encode(source, smask)
        for i in range(3):
            alone = model(tgts[i], source=srcs[i])
            torch.testing.assert_close(batch[i : i + 1, : tgt_len[i]], alone, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(
                memory[i : i + 1, : src_len[i]], model.encode(srcs[i]), rtol=1e-5, atol=1e-5
            )


def test_gradient_reaches_the_encoder() -> None:
    model = _model(share_embeddings=False)
    x, src = _ids(2, 5, 0), _ids(2, 7, 1)
    model(x, source=src).pow(2).mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert any(n.startswith("encoder.blocks.1") for n, _ in model.named_parameters())


def test_forward_needs_a_source_and_refuses_a_mismatched_mask() -> None:
    model = _model()
    with pytest.raises(ValueError, match="needs source="):
        model(_ids(2, 5, 0))
    with pytest.raises(ValueError, match="source_mask must be"):
        model(_ids(2, 5, 0), source=_ids(2, 7, 1), source_mask=torch.ones(2, 6, dtype=torch.bool))


# --------------------------------------------------------------------------- decoding
def _decoder_mixers() -> list[Any]:
    """Every cache-capable mixer that can serve in a decoder, with a position scheme it
    honours (rope when it can) and a bidirectional encoder mixer (its own when it can)."""
    cases = []
    for entry in registry.entries("attention"):
        caps = entry.caps
        if not caps.kv_cache or caps.memory or not caps.causal_safe:
            continue
        position = "rope" if "rotary" in caps.position_modes else "none"
        extra: dict[str, Any] = {}
        if not caps.bidirectional:
            extra["encoder"] = {"attention": "softmax"}
        cases.append(pytest.param(entry.name, position, extra, id=entry.name))
    return cases


@pytest.mark.parametrize(("attention", "position", "extra"), _decoder_mixers())
def test_cached_decoding_equals_recomputation(attention: str, position: str, extra: dict) -> None:
    """Greedy decoding with a cache (the source encoded once, each layer's cross-attention
    keys/values computed once) gives the tokens and logits of recomputing the whole
    target at every step, for a ragged source batch; and ragged decoder prompts give
    each row what it gives alone."""
    model = _model(
        attention={"name": attention, **PARAMS.get(attention, {})},
        position=position,
        init_std=0.2,
        **extra,
    ).eval()
    source = _ids(3, 8, 5)
    smask = torch.ones(3, 8, dtype=torch.bool)
    smask[0, 5:] = False
    smask[2, 3:] = False
    prompts = torch.cat([torch.full((3, 1), BOS), _ids(3, 2, 6)], dim=1)
    kw = dict(source=source, source_mask=smask, return_logits=True)
    cached, cached_logits = generate(model, prompts, 8, use_cache=True, **kw)
    full, full_logits = generate(model, prompts, 8, use_cache=False, **kw)
    assert torch.equal(cached, full)
    torch.testing.assert_close(cached_logits, full_logits, rtol=0, atol=1e-4)
    assert float(full_logits.std(-1).min()) > 0.1  # far from uniform: a wrong cache shows
    # rows of different prompt lengths in one call equal each row alone
    pmask = torch.ones(3, 3, dtype=torch.bool)
    pmask[1, 1:] = False
    ragged = generate(model, prompts, 5, padding_mask=pmask, source=source, source_mask=smask)
    for row in range(3):
        n = int(pmask[row].sum())
        alone = generate(
            model,
            prompts[row : row + 1, :n],
            5,
            source=source[row : row + 1, : int(smask[row].sum())],
        )
        assert torch.equal(ragged[row, : n + 5], alone[0]), row


def test_cross_attention_computes_the_memory_keys_once_per_layer() -> None:
    model = _model().eval()
    calls: list[int] = []
    for block in model.blocks:
        original = block.cross.memory_kv
        block.cross.memory_kv = lambda m, f=original: calls.append(1) or f(m)  # type: ignore[method-assign]
    generate(model, torch.full((2, 1), BOS), 6, source=_ids(2, 7, 1), use_cache=True)
    assert len(calls) == len(model.blocks)


def test_generate_refuses_a_missing_or_misplaced_source() -> None:
    model = _model()
    with pytest.raises(UserError, match="source="):
        generate(model, torch.full((2, 1), BOS), 3)
    decoder = build_model(dict(kind="decoder", vocab_size=V, d_model=32, n_heads=4))
    with pytest.raises(UserError, match="encoder_decoder"):
        generate(decoder, torch.full((2, 1), BOS), 3, source=_ids(2, 4, 0))


# --------------------------------------------------------------------------- learning
def reversal_batch(n: int, lo: int, hi: int, g: torch.Generator) -> Batch:
    """Source = random digits (lengths lo..hi, padded), decoder inputs = BOS + reversed,
    targets = reversed + EOS (the encoder-decoder form of the design)."""
    lengths = torch.randint(lo, hi + 1, (n,), generator=g).tolist()
    s = max(lengths)
    source = torch.zeros(n, s, dtype=torch.long)
    smask = torch.zeros(n, s, dtype=torch.bool)
    inputs = torch.zeros(n, s + 1, dtype=torch.long)
    targets = torch.zeros(n, s + 1, dtype=torch.long)
    real = torch.zeros(n, s + 1, dtype=torch.bool)
    for i, length in enumerate(lengths):
        digits = torch.randint(3, V, (length,), generator=g)
        source[i, :length], smask[i, :length] = digits, True
        inputs[i, 0], inputs[i, 1 : length + 1] = BOS, digits.flip(0)
        targets[i, :length], targets[i, length] = digits.flip(0), EOS
        real[i, : length + 1] = True
    extras = {"source": source, "source_mask": smask}
    return Batch(inputs, targets, real.clone(), padding_mask=real, extras=extras)


def _train(model: EncoderDecoder, steps: int, lo: int, hi: int, lr: float = 3e-3) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        b = reversal_batch(32, lo, hi, g)
        logits = model(b.inputs, **model_inputs(b))
        loss = F.cross_entropy(logits[b.loss_mask], b.targets[b.loss_mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def _token_accuracy(model: EncoderDecoder, lo: int, hi: int) -> float:
    b = reversal_batch(256, lo, hi, torch.Generator().manual_seed(99))
    with torch.no_grad():
        pred = model.eval()(b.inputs, **model_inputs(b)).argmax(-1)
    return float((pred == b.targets)[b.loss_mask].float().mean())


def test_learns_to_use_the_source_fast() -> None:
    """60 steps on strings of 2-4 digits: the loss falls below the trivial baseline (a
    uniform guess over the 10 digits and EOS, ln 11 = 2.40) and is far lower with each
    row's own source than with another row's (the decoder reads the encoder)."""
    torch.manual_seed(0)
    model = _model(d_model=32, n_layers=1, position="learned")
    _train(model, 60, 2, 4, lr=1e-2)
    b = reversal_batch(256, 2, 4, torch.Generator().manual_seed(99))
    shuffled = dict(model_inputs(b))
    order = torch.roll(torch.arange(256), 1)
    shuffled.update(source=b.extras["source"][order], source_mask=b.extras["source_mask"][order])
    with torch.no_grad():
        own = model.eval()(b.inputs, **model_inputs(b))
        other = model(b.inputs, **shuffled)
    mask = b.loss_mask
    loss_own = float(F.cross_entropy(own[mask], b.targets[mask]))
    loss_other = float(F.cross_entropy(other[mask], b.targets[mask]))
    assert loss_own < 0.75 * math.log(11) and loss_own < loss_other - 0.5, (loss_own, loss_other)


@pytest.mark.slow
def test_learns_to_reverse_sequences() -> None:
    """400 steps on ragged strings of 3-8 digits (padded source and target rows): token
    accuracy above 95% on fresh strings (measured: 0.98 in about 13 s on one CPU
    thread), and greedy generation from BOS writes most strings reversed, EOS included."""
    start = time.time()
    torch.manual_seed(0)
    model = _model(d_model=32, n_layers=2, position="learned")
    losses = _train(model, 400, 3, 8)
    accuracy = _token_accuracy(model, 3, 8)
    assert accuracy > 0.95, (accuracy, losses[-5:], time.time() - start)
    # greedy generation from BOS reverses the source, EOS included
    b = reversal_batch(16, 3, 8, torch.Generator().manual_seed(7))
    out = generate(model, torch.full((16, 1), BOS), 9, eos=EOS, **{k: b.extras[k] for k in ("source", "source_mask")})  # fmt: skip
    lengths = b.extras["source_mask"].sum(1)
    exact = [
        torch.equal(out[i, 1 : n + 2], b.targets[i, : n + 1])
        for i, n in enumerate(lengths.tolist())
    ]
    assert sum(exact) >= 12, exact


class _Reversal(Task):
    """A minimal seq2seq task for the Trainer's path (batches as the design describes)."""

    splits = ("id",)

    def model_io(self) -> dict[str, Any]:
        return {"vocab_size": V}

    def train_batch(self, step: int, batch_size: int) -> Batch:
        return reversal_batch(batch_size, 2, 4, torch.Generator().manual_seed(step))

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        return [reversal_batch(size, 2, 4, torch.Generator().manual_seed(10_000))]

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        right = sum(
            int(((o.argmax(-1) == b.targets) & b.loss_mask).sum()) for o, b in zip(outputs, batches)
        )
        return {"token_accuracy": right / sum(int(b.loss_mask.sum()) for b in batches)}

    def max_seq_len(self) -> int:
        return 5


def test_trainer_trains_and_evaluates_an_encoder_decoder() -> None:
    """The Trainer passes ``source``/``source_mask`` from the batch extras in training
    and in evaluation (``predict``)."""
    from anyformer.training.trainer import Trainer

    torch.manual_seed(0)
    model = _model(d_model=32, n_layers=1, position="learned")
    objective = registry.get("objective", "causal_lm")
    train = TrainSpec(
        steps=30, batch_size=32, lr=1e-2, warmup_steps=0, progress=False, device="cpu"
    )
    trainer = Trainer(model, _Reversal(None), objective.cls(objective.make_params()), train)
    before = trainer.evaluate()["id"]
    losses = [trainer.train_step(step) for step in range(30)]
    after = trainer.evaluate()["id"]
    assert after["loss"] < 0.8 * before["loss"] and after["loss"] < math.log(11)
    assert after["token_accuracy"] > before["token_accuracy"]
    assert losses[-1] < losses[0]


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"norm_placement": "parallel"},
            "norm_placement='parallel' has no place for the decoder's cross-attention",
        ),
        ({"layers": {1: {"norm_placement": "sandwich"}}}, "layers.1.norm_placement='sandwich'"),
        (
            {"cross_attention": "softmax"},
            "cross_attention='softmax' cannot attend over the encoder's output",
        ),
        (
            {"cross_attention": {"name": "cross", "kv_heads": 3}},
            "cross_attention='cross': kv_heads=3 must divide",
        ),
        ({"attention": "cross"}, "attention='cross' attends over an encoder's output"),
        ({"attention": "delta", "position": "none"}, "encoder: attention='delta' is causal-only"),
        (
            {"attention": "linformer", "position": "none"},
            "attention='linformer' is not causal-safe, so it cannot be used in a decoder",
        ),
        ({"encoder": {"n_layers": 0}}, "encoder.n_layers"),
        ({"encoder": {"attention": "nope"}}, "'nope' is not a registered attention"),
        ({"train": 1}, "train"),
    ],
)
def test_validation_names_the_problem(extra: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _spec(**extra)


def test_encoder_fields_are_refused_in_other_kinds() -> None:
    with pytest.raises(SpecError, match="model.encoder is read by kind=encoder_decoder only"):
        parse(ModelSpec, dict(kind="decoder", vocab_size=V, encoder={"n_layers": 1}))
    with pytest.raises(SpecError, match="kind=encoder_decoder takes padded rows"):
        from anyformer.spec import ExperimentSpec

        ExperimentSpec.from_dict(
            {"model": {"kind": "encoder_decoder", "head": "lm"}, "train": {"packing": True}}
        )


def test_an_image_encoder_feeds_a_token_decoder() -> None:
    """``encoder.embedder: patches`` (an image source, e.g. captioning): the memory has one
    token per patch (plus CLS), no embedding is shared, and gradient reaches the patch
    embedder through the cross-attention."""
    model = _model(
        encoder={"embedder": {"name": "patches", "patch_size": 4}, "input_shape": [3, 8, 8]}
    )
    assert not model.shares_embeddings
    images = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    memory = model.encode(images)
    assert memory.shape[:2] == (2, model.encoder.spec.token_layout.length)
    x = _ids(2, 5, 0)
    model(x, source=images).pow(2).mean().backward()
    for name, p in model.encoder.embed.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    out = generate(model, torch.full((2, 1), BOS), 4, source=images)
    assert out.shape == (2, 5)


def test_embed_norm_applies_in_both_stacks() -> None:
    """With ``embed_norm`` the encoder's first block reads norm(embed(source) + P[s]) with
    the encoder's own norm, and the decoder's its own (BART's two ``layernorm_embedding``)."""
    model = _model(position="learned", embed_norm=True)
    assert model.embed_norm is not None and model.encoder.embed_norm is not None
    assert model.embed_norm is not model.encoder.embed_norm
    with torch.no_grad():
        for norm in (model.embed_norm, model.encoder.embed_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.uniform_(-0.5, 0.5)
    seen: dict[str, torch.Tensor] = {}

    def keep(key: str) -> Any:
        def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
            seen.setdefault(key, args[0])

        return hook

    model.encoder.blocks[0].register_forward_pre_hook(keep("enc"))
    model.blocks[0].register_forward_pre_hook(keep("dec"))
    source, target = _ids(2, 6, 0), _ids(2, 5, 1)
    with torch.no_grad():
        model(target, source=source)
        for key, stack, ids in (("enc", model.encoder, source), ("dec", model, target)):
            summed = stack.embed.weight[ids] + stack.position.table.weight[: ids.shape[1]]
            norm = stack.embed_norm
            expect = F.layer_norm(summed, (32,), norm.weight, norm.bias, norm.eps)
            torch.testing.assert_close(seen[key], expect, atol=1e-5, rtol=1e-5)
