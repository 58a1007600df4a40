"""Adapters: LoRA with B = 0 is the base model exactly, merged LoRA equals unmerged
(1e-5), BitFit trains exactly the biases, prompt tuning of a frozen backbone learns a
tiny task above chance, prefix tuning keeps the base's shapes and is refused for other
mixers by name, bad adapter fields are refused naming the field, and peft interoperates
both ways (a peft LoraConfig on anyformer's layer names trains; anyformer's LoRA state
loads into peft with equal outputs)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from anyformer.adapters import (
    adapter_state,
    apply_adapter,
    matching_linears,
    merge,
    peft_config,
    trainable_names,
)
from anyformer.adapters.lora import lora_layers
from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.spec import AdapterSpec, ExperimentSpec


def model(**kw: Any) -> Any:
    torch.manual_seed(0)
    spec = dict(vocab_size=20, d_model=32, n_layers=2, n_heads=4, max_len=32, **kw)
    return build_model(spec).eval()


X = torch.randint(0, 20, (3, 7), generator=torch.Generator().manual_seed(1))
MASK = torch.ones(3, 7, dtype=torch.bool)
MASK[1, 5:] = False


def lora(target: str = "blocks.*", **kw: Any) -> AdapterSpec:
    return AdapterSpec(kind="lora", rank=4, alpha=8, target=target, **kw)


def randomise(m: Any) -> None:
    g = torch.Generator().manual_seed(2)
    for _, layer in lora_layers(m):
        layer.lora_B.weight.data = torch.randn(layer.lora_B.weight.shape, generator=g) * 0.1


def test_lora_with_zero_b_is_the_base_model_exactly() -> None:
    base = model()(X, MASK)
    m = model()
    apply_adapter(m, lora())
    assert len(lora_layers(m)) == 8  # qkv, out, up, down of two blocks
    assert torch.equal(m(X, MASK), base)


@pytest.mark.parametrize("kw", [{}, {"kind": "encoder", "head": "classify", "n_outputs": 3}])
def test_merged_lora_equals_unmerged(kw: dict[str, Any]) -> None:
    m = model(**kw)
    spec = lora()
    apply_adapter(m, spec)
    randomise(m)
    before = m(X, MASK)
    assert not torch.allclose(before, model(**kw)(X, MASK), atol=1e-3)
    merged = merge(m, spec)
    assert len(merged) == 8 and not any("lora" in k for k in m.state_dict())
    assert torch.allclose(m(X, MASK), before, atol=1e-5, rtol=0)


def test_target_glob_and_regex_select_layers() -> None:
    m = model()
    names = [n for n, _ in matching_linears(m, "blocks.*.mixer.*")]
    assert names == ["blocks.0.mixer.qkv", "blocks.0.mixer.out", "blocks.1.mixer.qkv",
                     "blocks.1.mixer.out"]  # fmt: skip
    assert [n for n, _ in matching_linears(m, r"re:blocks\.1\.ffn\.(up|down)")] == [
        "blocks.1.ffn.up", "blocks.1.ffn.down"]  # fmt: skip
    with pytest.raises(SpecError, match=r"adapter.target='nothing\.\*'.*blocks.0.mixer.qkv"):
        matching_linears(m, "nothing.*")


def test_only_adapter_and_head_train() -> None:
    m = model(tie_embeddings=False)
    names = apply_adapter(m, lora("blocks.*.mixer.*"))
    assert names == trainable_names(m)
    assert all(".lora_" in n or n.startswith("head.") for n in names)
    assert "head.weight" in names


def test_bitfit_trains_only_biases() -> None:
    m = model()
    names = apply_adapter(m, AdapterSpec(kind="bitfit", train_head=False))
    biases = [n for n, _ in m.named_parameters() if n.endswith(".bias")]
    assert names == biases and len(names) == 13  # 4 linears + 2 norms per block, final norm
    counted = sum(p.numel() for p in m.parameters() if p.requires_grad)
    assert counted == sum(p.numel() for n, p in m.named_parameters() if n.endswith(".bias"))
    with pytest.raises(SpecError, match="adapter.kind=bitfit.*model.bias"):
        apply_adapter(model(bias=False, norm="rmsnorm"), AdapterSpec(kind="bitfit"))


def test_prompt_tuning_keeps_shapes_and_masks() -> None:
    m = model(kind="encoder", head="classify", n_outputs=3)
    apply_adapter(m, AdapterSpec(kind="prompt", n_tokens=4))
    assert sorted(trainable_names(m)) == ["head.bias", "head.weight", "prompt.tokens"]
    out = m(X, MASK)
    assert out.shape == (3, 3)
    # padded positions stay invisible: changing them changes nothing
    y = X.clone()
    y[1, 5:] = 0
    assert torch.allclose(m(y, MASK), out, atol=1e-6)


def test_prefix_tuning_refuses_other_mixers_by_name() -> None:
    m = model()
    names = apply_adapter(m, AdapterSpec(kind="prefix", n_tokens=3))
    assert names == [f"blocks.{i}.mixer.prefix.{p}" for i in (0, 1) for p in ("keys", "values")]
    out = m(X, MASK)
    assert out.shape == (3, 7, 20) and torch.isfinite(out).all()
    # causal: a later token does not change earlier outputs
    y = X.clone()
    y[:, -1] = (y[:, -1] + 1) % 20
    assert torch.allclose(m(y, MASK)[:, :-1], out[:, :-1], atol=1e-6)
    with pytest.raises(SpecError, match="adapter.kind=prefix: layer 0's attention='linear'"):
        apply_adapter(model(attention="linear", position="none"), AdapterSpec(kind="prefix"))
    with pytest.raises(SpecError, match="adapter.kind=prefix.*cannot be merged"):
        merge(m, AdapterSpec(kind="prefix"))


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"kind": "lorax"}, ["adapter.kind", "lorax"]),
        ({"kind": "lora", "rank": 0}, ["adapter.rank"]),
        ({"kind": "lora", "target": "re:("}, ["adapter.target", "regular expression"]),
    ],
)
def test_bad_adapter_fields_are_named(value: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        ExperimentSpec.from_dict({"adapter": value})
    for w in words:
        assert w in str(err.value)


def test_adapter_by_name_and_override() -> None:
    spec = ExperimentSpec.from_dict({}).with_overrides(["adapter.kind=lora", "adapter.rank=2"])
    assert spec.adapter == AdapterSpec(kind="lora", rank=2)
    assert ExperimentSpec.from_dict({"adapter": "bitfit"}).adapter.kind == "bitfit"
    assert "adapter" not in ExperimentSpec.from_dict({}).to_dict()


@pytest.mark.slow  # importing peft takes seconds
def test_peft_loads_anyformer_lora_with_equal_outputs() -> None:
    peft = pytest.importorskip("peft")
    m = model()
    spec = lora("blocks.*.mixer.*", dropout=0.1)
    apply_adapter(m, spec)
    randomise(m)
    want = m(X, MASK)
    config = {k: v for k, v in peft_config(m, spec).items() if k != "peft_type"}
    pm = peft.get_peft_model(model(), peft.LoraConfig(**config)).eval()
    result = peft.set_peft_model_state_dict(pm, adapter_state(m, spec, head=False))
    assert not [k for k in result.unexpected_keys if "lora" in k]
    assert torch.allclose(pm(X, MASK), want, atol=1e-6)


@pytest.mark.slow
def test_a_peft_lora_config_trains_an_anyformer_model() -> None:
    peft = pytest.importorskip("peft")
    m = model()
    pm = peft.get_peft_model(m, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["qkv", "out"]))
    trainable = [n for n, p in pm.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=1e-2)
    y = torch.roll(X, 1, dims=1)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(pm(X).flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.1


def test_prompt_tuning_of_a_frozen_backbone_learns_a_tiny_task() -> None:
    """A frozen random decoder (head tied, frozen too) is steered by 4 learned prompt
    vectors alone to answer token 3 at every position: accuracy from chance (1/20) to
    above 0.9 (the prompt reaches every position only through attention). The backbone
    is initialised at std 0.2: at the default 0.02 its frozen tied head's logits are
    nearly flat whatever the residual stream holds."""
    m = model(init_std=0.2)
    names = apply_adapter(m, AdapterSpec(kind="prompt", n_tokens=4))
    assert names == ["prompt.tokens"]
    frozen = {n: p.clone() for n, p in m.named_parameters() if n != "prompt.tokens"}
    m.train()
    opt = torch.optim.Adam([m.prompt.tokens], lr=0.1)
    g = torch.Generator().manual_seed(3)
    target = torch.full((16, 8), 3)
    for _ in range(40):
        x = torch.randint(0, 20, (16, 8), generator=g)
        loss = torch.nn.functional.cross_entropy(m(x).flatten(0, 1), target.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    x = torch.randint(0, 20, (64, 8), generator=g)
    accuracy = float((m(x).argmax(-1) == 3).float().mean())
    before = float((model(init_std=0.2)(x).argmax(-1) == 3).float().mean())
    assert before < 0.3 and accuracy > 0.9, (before, accuracy)
    assert all(torch.equal(p, frozen[n]) for n, p in m.named_parameters() if n in frozen)
