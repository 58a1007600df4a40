"""Depth schedules: exact equivalences with stacks of repeated weights, evaluation depth,
early exits, continuous thought, causality, gradients, validation, and params/FLOPs."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.lab.contracts import depth as contract
from anyformer.model.transformer import Transformer, build_model

V, SEP = contract.V, contract.SEP
#: The toy decoder spec and tokens the depth contract checks use (one definition).
_spec = contract.depth_data
_tokens = contract.depth_tokens


def _copy_blocks(src: Transformer, dst: Transformer, mapping: list[int]) -> None:
    """dst.blocks[j] <- src.blocks[mapping[j]]; embeddings, final norm and head copied."""
    state = dst.state_dict()
    for name, value in src.state_dict().items():
        if not name.startswith("blocks.") and name in state:
            state[name] = value.clone()
    for j, i in enumerate(mapping):
        for name, value in src.blocks[i].state_dict().items():
            state[f"blocks.{j}.{name}"] = value.clone()
    dst.load_state_dict(state)


# --------------------------------------------------------------------------- stack
def test_stack_is_the_default_and_changes_nothing() -> None:
    default = build_model(_spec())
    assert default.spec.depth.name == "stack"
    assert not any(k.startswith("depth") for k in default.state_dict())
    torch.manual_seed(0)
    a = build_model(_spec())
    torch.manual_seed(0)
    b = build_model(_spec(depth="stack"))
    x = _tokens()
    assert torch.equal(a(x), b(x))
    assert list(a.state_dict()) == list(b.state_dict())


# --------------------------------------------------------------------------- equivalences
@pytest.mark.parametrize("inject", [True, False])
def test_looped_with_one_loop_equals_a_one_block_stack(inject: bool) -> None:
    looped = build_model(_spec(1, {"name": "looped", "loops": 1, "inject_input": inject}))
    stack = build_model(_spec(1))
    _copy_blocks(looped, stack, [0])
    x = _tokens()
    torch.testing.assert_close(looped(x), stack(x), rtol=0, atol=0)


def test_looped_without_injection_equals_a_stack_of_repeated_weights() -> None:
    looped = build_model(_spec(2, {"name": "looped", "loops": 3, "inject_input": False}))
    stack = build_model(_spec(6))
    _copy_blocks(looped, stack, [0, 1] * 3)
    x = _tokens()
    torch.testing.assert_close(looped(x), stack(x), rtol=1e-5, atol=1e-6)


def test_looped_injection_is_the_manual_loop() -> None:
    model = build_model(_spec(2, {"name": "looped", "loops": 3}))
    x = _tokens()
    e = model.embed(x)  # rope acts inside attention, so the embedded input is the embedding
    ctx = _ctx(model, x.shape[1])
    h = torch.zeros_like(e)
    for _ in range(3):
        h = h + e
        for block in model.blocks:
            h = block(h, ctx)
    torch.testing.assert_close(model(x), model.head(model.norm(h)), rtol=0, atol=0)


def test_looped_loss_window_reads_out_the_last_iterates() -> None:
    spec = _spec(2, {"name": "looped", "loops": 4, "loss_window": 3})
    model = build_model(spec)
    x = _tokens()
    e = model.embed(x)
    ctx = _ctx(model, x.shape[1])
    h, iterates = torch.zeros_like(e), []
    for _ in range(4):
        h = h + e
        for block in model.blocks:
            h = block(h, ctx)
        iterates.append(model.head(model.norm(h)))
    assert model.trains_several_outputs
    pairs = model.training_outputs(x)
    assert [w for w, _ in pairs] == pytest.approx([1 / 3] * 3)
    for (_, out), expected in zip(pairs, iterates[1:], strict=True):
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert "exit_outputs" not in vars(model.depth)  # nothing of a call is kept on it
    model.eval()  # evaluation returns only the final iterate
    torch.testing.assert_close(model(x), iterates[-1], rtol=0, atol=0)
    # a window of 1 is the plain single-output training path
    assert not build_model(_spec(2, {"name": "looped", "loops": 4})).trains_several_outputs
    with pytest.raises(SpecError, match="loss_window=5 must be <= loops=4"):
        build_model(_spec(2, {"name": "looped", "loops": 4, "loss_window": 5}))


def test_algoformer_loss_window_runs_each_kept_iterate_through_the_post_blocks() -> None:
    depth = {"name": "algoformer", "n_pre": 1, "n_loop": 1, "n_post": 1, "loops": 3,
             "inject_input": True, "loss_window": 2}  # fmt: skip
    model = build_model(_spec(3, depth))
    x = _tokens()
    ctx = _ctx(model, x.shape[1])
    e = model.blocks[0](model.embed(x), ctx)  # the pre-transformer's output
    h, outs = torch.zeros_like(e), []
    for _ in range(3):
        h = model.blocks[1](h + e, ctx)
        outs.append(model.head(model.norm(model.blocks[2](h, ctx))))
    pairs = model.training_outputs(x)
    assert [w for w, _ in pairs] == pytest.approx([0.5, 0.5])
    for (_, out), expected in zip(pairs, outs[1:], strict=True):
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
    model.eval()
    torch.testing.assert_close(model(x), outs[-1], rtol=0, atol=0)
    with pytest.raises(SpecError, match="loss_window=4 must be <= loops=3"):
        build_model(_spec(3, {**depth, "loss_window": 4}))


def test_recursive_k1_equals_stack_and_k2_repeats_each_block() -> None:
    rec1 = build_model(_spec(2, {"name": "recursive", "k": 1}))
    stack = build_model(_spec(2))
    _copy_blocks(rec1, stack, [0, 1])
    x = _tokens()
    torch.testing.assert_close(rec1(x), stack(x), rtol=0, atol=0)
    rec2 = build_model(_spec(2, {"name": "recursive", "k": 2}))
    stack4 = build_model(_spec(4))
    _copy_blocks(rec2, stack4, [0, 0, 1, 1])
    torch.testing.assert_close(rec2(x), stack4(x), rtol=1e-5, atol=1e-6)


def test_algoformer_is_pre_then_loop_then_post() -> None:
    depth = {"name": "algoformer", "n_pre": 1, "n_loop": 2, "n_post": 1, "loops": 2}
    algo = build_model(_spec(4, depth))
    stack = build_model(_spec(6))
    _copy_blocks(algo, stack, [0, 1, 2, 1, 2, 3])
    x = _tokens()
    torch.testing.assert_close(algo(x), stack(x), rtol=1e-5, atol=1e-6)


def test_loops_eval_changes_the_evaluation_depth() -> None:
    for name, extra in (("looped", {}), ("algoformer", {"n_pre": 1, "n_loop": 1, "n_post": 0})):
        model = build_model(_spec(2, {"name": name, "loops": 2, "loops_eval": 5, **extra}))
        calls: list[int] = []
        for block in model.blocks:
            block.register_forward_hook(lambda *a, seen=calls: seen.append(1))
        x = _tokens()
        train_out = model.train()(x)
        n_train = len(calls)
        calls.clear()
        eval_out = model.eval()(x)
        assert (n_train, len(calls)) == ((4, 10) if name == "looped" else (3, 6))
        assert not torch.allclose(train_out, eval_out)


# --------------------------------------------------------------------------- sharing
def test_params_and_flops_count_weight_sharing() -> None:
    seq = 16
    one = build_model(_spec(1))
    looped = build_model(_spec(1, {"name": "looped", "loops": 4}))
    four = build_model(_spec(4))
    assert looped.num_params() == one.num_params()  # the parameters of one block
    assert looped.flops_per_token(seq) == four.flops_per_token(seq)  # the FLOPs of four
    rec = build_model(_spec(2, {"name": "recursive", "k": 3}))
    assert rec.num_params() == build_model(_spec(2)).num_params()
    assert rec.flops_per_token(seq) == build_model(_spec(6)).flops_per_token(seq)
    algo = build_model(_spec(3, {"name": "algoformer", "loops": 5}))
    assert algo.flops_per_token(seq) == build_model(_spec(7)).flops_per_token(seq)
    exits = build_model(_spec(2, {"name": "early_exit"}))
    head = 2 * 32 * V
    assert exits.flops_per_token(seq) == build_model(_spec(2)).flops_per_token(seq) + 3 * head
    assert exits.num_params() == build_model(_spec(2)).num_params() + 32 * V + 2 * 32


def test_per_layer_overrides_index_distinct_blocks() -> None:
    model = build_model(
        _spec(
            2,
            {"name": "looped", "loops": 3},
            layers={1: {"attention": {"name": "sliding_window", "window": 8}}},
        )
    )
    names = [type(b.mixer).__name__ for b in model.blocks]
    assert names[0] == "SoftmaxAttention" and names[1] != names[0]


# --------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("spec", "words"),
    [
        (
            _spec(2, {"name": "algoformer", "n_pre": 1, "n_loop": 1, "n_post": 1}),
            ["n_pre=1 + n_loop=1 + n_post=1 = 3", "model.n_layers=2", "set model.n_layers=3"],
        ),
        (_spec(2, {"name": "early_exit", "every": 3}), ["every=3", "model.n_layers=2"]),
        (_spec(2, {"name": "looped", "loops": 0}), ["loops"]),
        (_spec(2, {"name": "looped", "unrolls": 2}), ["unrolls", "loops"]),
        (
            _spec(2, {"name": "continuous_thought"}, kind="encoder", position="learned"),
            ["kind='decoder'"],
        ),
        (_spec(2, {"name": "continuous_thought", "sep_token": 40}), ["sep_token=40", "32"]),
        (
            dict(_spec(2, {"name": "early_exit", "threshold": 0.5}), vocab_size=None)
            | {"embed": "vectors", "input_dim": 3, "head": "token_regress", "n_outputs": 1},
            ["threshold=0.5", "token_regress"],
        ),
        (_spec(2, "stakc"), ["stack"]),
    ],
)
def test_bad_schedules_are_refused_with_the_field(spec: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        build_model(spec)
    for word in words:
        assert word in str(err.value)


# --------------------------------------------------------------------------- early exit
def test_early_exit_threshold_zero_uses_the_first_exit_and_one_the_last() -> None:
    model = build_model(_spec(3, {"name": "early_exit", "threshold": 0.0}))
    x = _tokens()
    model.train()
    trained = model(x, return_outputs=True)
    full, exits = trained.logits, trained.trained_outputs
    assert len(exits) == 3 and torch.equal(exits[-1], full) and torch.equal(model(x), full)
    assert trained.blocks_executed is None
    model.eval()
    first = model(x, return_outputs=True)
    torch.testing.assert_close(first.logits, exits[0], rtol=0, atol=0)
    assert float(first.mean_blocks_executed) == 1.0 and first.extra_logits == []
    model.depth.threshold = 1.0
    last = model(x, return_outputs=True)
    torch.testing.assert_close(last.logits, full, rtol=0, atol=0)
    assert float(last.mean_blocks_executed) == 3.0
    assert torch.equal(last.blocks_executed, torch.full(x.shape, 3))


def test_early_exit_per_token_mixes_depths_and_exact_first_exits() -> None:
    model = build_model(_spec(3, {"name": "early_exit"}))
    x = _tokens()
    model.train()
    first = model(x, return_outputs=True).extra_logits[0]
    conf = model.depth.confidence(first)
    model.depth.threshold = float(conf.detach().median())
    result = model.eval()(x, return_outputs=True)
    out, depth = result.logits, result.blocks_executed
    assert depth.shape == x.shape and set(depth.unique().tolist()) - {1} and (depth == 1).any()
    torch.testing.assert_close(out[depth == 1], first[depth == 1], rtol=0, atol=0)
    assert 1 < float(result.mean_blocks_executed) < 3
    assert float(result.mean_blocks_executed) == pytest.approx(depth.float().mean().item())


def test_early_exit_per_example_in_a_classifier() -> None:
    spec = _spec(3, {"name": "early_exit"}, kind="encoder", position="learned", n_outputs=5)
    model = build_model(spec)
    x = _tokens(b=8)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[:3, 9:] = False
    model.train()
    exits = [o.detach() for o in model(x, mask, return_outputs=True).trained_outputs]
    conf = model.depth.confidence(exits[0])
    model.depth.threshold = float(conf.detach().median())
    result = model.eval()(x, mask, return_outputs=True)
    out, depth = result.logits, result.blocks_executed
    assert depth.shape == (8,) and len(depth.unique()) > 1
    for row in range(8):  # each example equals its own exit, computed on the full batch
        torch.testing.assert_close(out[row], exits[int(depth[row]) - 1][row], rtol=1e-5, atol=1e-6)


def test_early_exit_trains_every_head_on_the_mean_loss() -> None:
    from anyformer import registry
    from anyformer.spec import TrainSpec
    from anyformer.training.trainer import Trainer

    entry = registry.get("task", "copy")
    task = entry.cls(entry.make_params({"max_len": 6, "ood_min_len": 7, "ood_max_len": 8}), 0)
    vocab = task.model_io()["vocab_size"]
    model = build_model(_spec(2, {"name": "early_exit"}, vocab_size=vocab, tie_embeddings=False))
    objective = registry.get("objective", "causal_lm").cls(
        registry.get("objective", "causal_lm").make_params()
    )
    trainer = Trainer(
        model, task, objective, TrainSpec(steps=1, batch_size=8, progress=False, device="cpu")
    )
    batch = task.train_batch(0, 8)
    pairs = model.training_outputs(batch.inputs, batch.padding_mask, 0)
    assert [w for w, _ in pairs] == [0.5, 0.5]
    expected = sum(objective(o, batch) for _, o in pairs) / 2
    expected.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    model.zero_grad()
    assert trainer.train_step(0) == pytest.approx(float(expected.detach()), rel=1e-6)


# --------------------------------------------------------------------------- continuous thought
def test_continuous_thought_equals_the_manual_loop() -> None:
    m = 3
    model = build_model(_spec(2, {"name": "continuous_thought", "thoughts": m}))
    x = _tokens(b=2)
    x[1, 4] = 9
    x[1, 6] = SEP  # rows with SEP at different positions
    out = model(x)
    for row in range(2):
        seq = x[row : row + 1]
        s = int((seq[0] == SEP).nonzero()[0])
        emb = model.embed(seq[:, : s + 1])
        for _ in range(m):  # each thought: the final-normed last hidden state
            h = emb
            ctx = _ctx(model, h.shape[1])
            for block in model.blocks:
                h = block(h, ctx)
            emb = torch.cat([emb, model.norm(h)[:, -1:]], dim=1)
        emb = torch.cat([emb, model.embed(seq[:, s + 1 :])], dim=1)
        h = emb
        ctx = _ctx(model, h.shape[1])
        for block in model.blocks:
            h = block(h, ctx)
        logits = model.head(model.norm(h))[0]
        keep = list(range(s)) + [s + m] + list(range(s + m + 1, seq.shape[1] + m))
        torch.testing.assert_close(out[row], logits[keep], rtol=1e-5, atol=1e-5)


def _ctx(model: Transformer, t: int) -> Any:
    from anyformer.components.base import Context

    return Context(torch.arange(t), True, model.position, None)


def test_continuous_thought_with_zero_thoughts_is_the_stack_and_needs_sep() -> None:
    model = build_model(_spec(2, {"name": "continuous_thought", "thoughts": 0}))
    stack = build_model(_spec(2))
    _copy_blocks(model, stack, [0, 1])
    x = _tokens()
    torch.testing.assert_close(model(x), stack(x), rtol=0, atol=0)
    thoughtful = build_model(_spec(2, {"name": "continuous_thought", "thoughts": 2}))
    with pytest.raises(ValueError, match="row 0 has no sep_token=2"):
        thoughtful(torch.full((1, 6), 7))


# --------------------------------------------------------------------------- all schedules
#: Hand-picked parameters per schedule (the contract tests use the defaults); the checks
#: are the depth slot's contract (:mod:`anyformer.lab.contracts.depth`).
SCHEDULES: list[tuple[int, Any]] = [
    (2, "stack"),
    (2, {"name": "looped", "loops": 3}),
    (2, {"name": "looped", "loops": 2, "inject_input": False, "loops_eval": 3}),
    (3, {"name": "algoformer", "loops": 2, "inject_input": True}),
    (2, {"name": "recursive", "k": 2}),
    (3, {"name": "early_exit", "threshold": 0.05}),
    (2, {"name": "continuous_thought", "thoughts": 2}),
]


def _name(depth: Any) -> str:
    return depth if isinstance(depth, str) else depth["name"]


def test_the_hand_picked_schedules_cover_the_registry() -> None:
    assert {_name(d) for _, d in SCHEDULES} == set(registry.components("depth"))


@pytest.mark.parametrize(("n_layers", "depth"), SCHEDULES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_every_schedule_is_causal(n_layers: int, depth: Any, mode: str) -> None:
    contract.schedule_is_causal(n_layers, depth, training=mode == "train")


@pytest.mark.parametrize(("n_layers", "depth"), SCHEDULES)
def test_every_schedule_sends_gradient_to_every_parameter(n_layers: int, depth: Any) -> None:
    contract.schedule_trains_every_parameter(n_layers, depth)


def test_looped_model_learns_a_batch() -> None:
    model = build_model(_spec(1, {"name": "looped", "loops": 3})).train()
    x = _tokens(b=4, t=16)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = F.cross_entropy(model(x)[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(("n_layers", "depth"), SCHEDULES)
def test_generation_with_every_schedule(n_layers: int, depth: Any) -> None:
    """Fixed schedules decode with a KV cache (one slot per block execution) exactly as
    without; early exit and continuous thought refuse a cache and recompute."""
    name = _name(depth)
    kv_cache = registry.get("depth", name).caps.kv_cache
    assert kv_cache == (name not in ("early_exit", "continuous_thought"))
    contract.schedule_generates_alike(n_layers, depth, kv_cache, name)
