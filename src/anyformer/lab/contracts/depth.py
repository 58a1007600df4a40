"""Contract checks of the ``depth`` slot (depth schedules): a decoder under the schedule
is causal in training and evaluation mode, training reaches every parameter, and
generation with a cache equals generation without one (a schedule without ``kv_cache``
must refuse a cache, naming itself).

The functions taking ``(n_layers, depth)`` also serve ``tests/model/test_depth.py``,
which runs them on hand-picked parameters of every registered schedule."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from anyformer.decoding import generate
from anyformer.errors import SpecError
from anyformer.lab.contracts import CheckFailure, contract_check
from anyformer.lab.contracts._common import close, no_dead_parameters
from anyformer.model.transformer import Transformer, build_model
from anyformer.registry import Entry

SLOT = "depth"
V, SEP = 32, 2


def depth_data(n_layers: int = 2, depth: Any = "stack", **extra: Any) -> dict[str, Any]:
    """A toy decoder spec (softmax, rope) with ``n_layers`` distinct blocks run by ``depth``."""
    data = dict(
        vocab_size=V,
        d_model=32,
        n_heads=4,
        n_layers=n_layers,
        max_len=64,
        position="rope",
        attention="softmax",
        depth=depth,
    )
    data.update(extra)
    return data


def depth_tokens(b: int = 3, t: int = 12, seed: int = 0) -> torch.Tensor:
    """Tokens in ``[4, V)`` with ``SEP`` at position 4 (a prompt of 4 tokens, then SEP:
    what ``continuous_thought`` needs)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(4, V, (b, t), generator=g)
    x[:, 4] = SEP
    return x


def _model(n_layers: int, depth: Any, **extra: Any) -> Transformer:
    try:
        return build_model(depth_data(n_layers, depth, **extra))
    except SpecError as exc:
        raise CheckFailure(f"a toy decoder with depth={depth!r} was refused: {exc}") from None


def schedule_is_causal(n_layers: int, depth: Any, training: bool) -> None:
    """Changing token t (before and after the SEP) changes no output before t, and
    changes the outputs from t on."""
    model = _model(n_layers, depth)
    model.train(training)
    mode = "training" if training else "evaluation"
    x = depth_tokens(b=2, t=14)
    base = model(x)
    for t in (2, 8):
        changed = x.clone()
        changed[:, t] = (x[:, t] - 4 + 5) % (V - 4) + 4  # another non-SEP token
        out = model(changed)
        close(
            out[:, :t],
            base[:, :t],
            f"causality: changing token {t} changed earlier outputs ({mode} mode)",
            atol=1e-6,
        )
        if torch.allclose(out[:, t:], base[:, t:]):
            raise CheckFailure(f"changing token {t} changed no later output ({mode} mode)")


def schedule_trains_every_parameter(n_layers: int, depth: Any) -> None:
    """The weighted training outputs' next-token loss sends gradient to every parameter."""
    model = _model(n_layers, depth, tie_embeddings=False).train()
    x = depth_tokens(b=2, t=14)
    pairs = model.training_outputs(x, None, 0)
    loss = sum(w * F.cross_entropy(o.reshape(-1, V), x.roll(-1, 1).reshape(-1)) for w, o in pairs)
    loss.backward()  # type: ignore[union-attr]
    no_dead_parameters(model, f"depth={depth!r}")


def schedule_generates_alike(n_layers: int, depth: Any, kv_cache: bool, name: str) -> None:
    """Greedy generation picks the same tokens with and without a cache; a schedule
    without ``kv_cache`` refuses ``use_cache=True`` with an error naming it."""
    model = _model(n_layers, depth).eval()
    x = depth_tokens(b=2, t=6)
    plain = generate(model, x, 4, use_cache=False)
    if not torch.equal(generate(model, x, 4), plain):
        raise CheckFailure("generation with the default cache choice differs from recomputation")
    if kv_cache:
        return
    try:
        generate(model, x, 4, use_cache=True)
    except SpecError as exc:
        if f"depth={name}" not in str(exc):
            raise CheckFailure(f"the cache refusal does not name depth={name}: {exc}") from None
    else:
        raise CheckFailure("it has no kv_cache capability but decoding with a cache was accepted")


def default_layers(entry: Entry) -> int:
    """The fewest distinct blocks (2, 3, 4, 1, then up to 8) the schedule's defaults accept."""
    for n in (2, 3, 4, 1, 5, 6, 7, 8):
        try:
            build_model(depth_data(n, entry.name))
            return n
        except SpecError:
            continue
    raise CheckFailure("its default parameters fit no model of 1 to 8 blocks")


@contract_check(SLOT, "causal")
def causal(entry: Entry) -> None:
    """a decoder under the schedule never reads the future, in training and evaluation"""
    n = default_layers(entry)
    for training in (True, False):
        schedule_is_causal(n, entry.name, training)


@contract_check(SLOT, "gradients")
def gradients(entry: Entry) -> None:
    """training outputs send gradient to every parameter"""
    schedule_trains_every_parameter(default_layers(entry), entry.name)


@contract_check(SLOT, "generation")
def generation(entry: Entry) -> None:
    """cached generation equals uncached (or a cache is refused without kv_cache)"""
    schedule_generates_alike(default_layers(entry), entry.name, entry.caps.kv_cache, entry.name)
