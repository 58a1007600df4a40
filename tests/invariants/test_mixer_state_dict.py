"""Checkpoints of earlier runs still load: every mixer's state-dict keys and shapes.

``mixer_state_dict_keys.json`` was recorded by the code before the attention variants
shared one q/k/v projection (``attention/qkv.py``): for every mixer registered then (and
a few parameter choices that add or remove tensors), in a decoder and an encoder where
allowed, the name and shape of every tensor its ``state_dict`` holds. A model's keys are
its mixers' keys under ``blocks.<i>.`` prefixes, so equal mixer keys mean a checkpoint of
an earlier run loads into today's model. A mixer registered later is not in the record
(no earlier checkpoint can hold it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anyformer import registry
from anyformer.registry import Dims

RECORD = json.loads((Path(__file__).parent / "mixer_state_dict_keys.json").read_text())


def _build(key: str) -> torch.nn.Module:
    """The mixer a record key names: ``name[:param=value,...]:causal|bidir``."""
    parts = key.split(":")
    name, where = parts[0], parts[-1]
    params = {}
    for item in parts[1:-1]:
        for pair in item.split(","):
            k, _, v = pair.partition("=")
            params[k] = {"True": True, "False": False}.get(v, int(v) if v.isdigit() else v)
    entry = registry.get("attention", name)
    dims = Dims(d_model=32, n_heads=4, max_len=32, causal=where == "causal")
    return entry.build(entry.make_params(params), dims)


@pytest.mark.parametrize("key", sorted(RECORD))
def test_state_dict_keys_and_shapes_are_those_of_earlier_checkpoints(key: str) -> None:
    mixer = _build(key)
    got = {k: list(v.shape) for k, v in mixer.state_dict().items()}
    assert got == RECORD[key]
    mixer.load_state_dict({k: torch.zeros(shape) for k, shape in RECORD[key].items()})


def test_the_record_covers_every_mixer_it_knew() -> None:
    names = {key.split(":")[0] for key in RECORD}
    assert len(names) == 21 and names <= set(registry.components("attention"))
