"""Informer's ProbSparse attention (``prob_sparse``) on the ``forecast`` task with every
series embedder: a few training steps lower the loss on a fixed batch and the model is
scored on every test window, beside the task's baselines."""

from __future__ import annotations

import pytest
import torch

from anyformer import registry
from anyformer.model.transformer import build_model
from anyformer.spec import ModelSpec, parse
from anyformer.tasks.forecast import Forecast, ForecastParams

SERIES_EMBEDDERS = [
    {"name": "points", "revin": True},
    {"name": "patches_1d", "patch_len": 8, "stride": 4},
    {"name": "patches_1d", "patch_len": 8, "stride": 4, "channel_independent": False},
    {"name": "variates"},
    {"name": "gateformer", "patch_len": 8, "stride": 4, "revin": True},
]


def test_every_series_embedder_is_covered() -> None:
    names = {e.name for e in registry.entries("embedder") if e.caps.input_kind == "series"}
    assert names == {e["name"] for e in SERIES_EMBEDDERS}


@pytest.mark.parametrize("embedder", SERIES_EMBEDDERS, ids=lambda e: str(list(e.values())))
def test_prob_sparse_trains_and_scores_on_forecast(embedder: dict) -> None:
    torch.manual_seed(0)
    task = Forecast(ForecastParams(data="var", length=400, lookback=24, horizon=4), seed=0)
    io = task.model_io()
    # factor 1: u = ceil(ln n) active queries, fewer than the tokens, so the sparsity is real
    spec = parse(ModelSpec, dict(kind="encoder", d_model=16, n_heads=2, n_layers=2, max_len=96,
                                 position="learned", attention={"name": "prob_sparse", "factor": 1},
                                 embedder=embedder, head="forecast", n_outputs=io["n_outputs"],
                                 input_shape=io["input_shape"]))  # fmt: skip
    model = build_model(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    batch = task.train_batch(0, 32)
    losses = []
    for _ in range(8):
        loss = (model(batch.inputs) - batch.targets).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses
    model.eval()
    batches = task.make_eval_set("id", 0)
    with torch.no_grad():
        outputs = [model(b.inputs) for b in batches]
    metrics = task.score(outputs, batches)
    assert metrics["windows"] == len(task.test_starts)
    assert torch.isfinite(torch.tensor(metrics["mse"])) and "last_value" in metrics["baselines"]
