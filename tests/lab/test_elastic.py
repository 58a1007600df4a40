"""Evaluating elastic models: quality against loops, exit threshold and width."""

from __future__ import annotations

from typing import Any

from anyformer import registry
from anyformer.lab.elastic import evaluate_variants, loop_counts, variants
from anyformer.model.transformer import build_model


def _icl() -> tuple[Any, Any]:
    entry = registry.get("task", "icl_linear_regression")
    task = entry.cls(entry.make_params({"dims": 2, "n_points": 4}), 0)
    objective = registry.get("objective", "mse")
    return task, objective.cls(objective.make_params())


def _model(depth: Any, **extra: Any) -> Any:
    spec = dict(embed="vectors", input_dim=3, head="token_regress", n_outputs=1, d_model=16)
    spec.update(n_heads=2, n_layers=2, max_len=16, position="learned", depth=depth, **extra)
    return build_model(spec)


def test_loops_variants_report_blocks_and_flops_per_loop_count() -> None:
    task, objective = _icl()
    model = _model({"name": "looped", "loops": 2})
    assert [v.name for v in variants(model)] == [f"loops={t}" for t in loop_counts(2)]
    rows = evaluate_variants(model, task, objective, eval_size=8)
    by_loops = {r["variant"]: r for r in rows if r["split"] == "id"}
    assert by_loops["loops=1"]["blocks"] == 2 and by_loops["loops=6"]["blocks"] == 12
    assert by_loops["loops=6"]["flops_per_token"] > 5 * by_loops["loops=1"]["flops_per_token"]
    assert len({r["params"] for r in rows}) == 1  # one set of weights for every depth
    assert by_loops["loops=1"]["mse"] != by_loops["loops=6"]["mse"]
    assert model.depth.eval_loops == 2  # restored


def test_exit_threshold_and_width_variants() -> None:
    task = registry.get("task", "copy")
    copy = task.cls(task.make_params({"max_len": 5, "ood_min_len": 6, "ood_max_len": 7}), 0)
    objective = registry.get("objective", "causal_lm")
    spec = dict(vocab_size=copy.model_io()["vocab_size"], d_model=16, n_heads=2, n_layers=3)
    spec.update(max_len=32, position="rope", depth={"name": "early_exit"}, ffn="matformer")
    model = build_model(spec)
    rows = evaluate_variants(model, copy, objective.cls(objective.make_params()), eval_size=16)
    ids = {r["variant"]: r for r in rows if r["split"] == "id"}
    assert ids["threshold=0"]["blocks"] == 1 and ids["threshold=1"]["blocks"] == 3
    assert ids["width=0.125"]["params"] < ids["width=1"]["params"] == model.num_params()
