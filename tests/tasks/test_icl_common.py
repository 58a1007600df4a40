"""The shared machinery of the in-context-learning tasks: parameters, layouts, eval sets."""

from __future__ import annotations

import pytest
import torch

from anyformer.tasks.base import Batch
from anyformer.tasks.icl_common import (
    EVAL_BATCH_PROMPTS,
    PerK,
    check_eval_request,
    check_ood_points,
    eval_batches,
    examples_curve,
    interleave_pairs,
    linear_prompts,
    ood_prompt_length,
    scalar_output,
    split_pairs,
    stored_baselines,
)


def test_check_ood_points() -> None:
    assert check_ood_points(None, "task", 5) is None
    assert check_ood_points(9, "length", 5) == 9
    assert check_ood_points(9, None, None) == 9
    with pytest.raises(ValueError, match=r"applies only with ood='length' \(ood='bias'\)"):
        check_ood_points(9, "bias", 5)
    with pytest.raises(ValueError, match=r"must be > n_points=5 \(OOD series are longer\)"):
        check_ood_points(5, "length", 5, "series")


def test_ood_prompt_length() -> None:
    assert ood_prompt_length("length", None, 7) == 14
    assert ood_prompt_length("length", 10, 7) == 10
    assert ood_prompt_length("task", None, 7) == 7


def test_linear_prompts_and_pair_layout_round_trip() -> None:
    gen = torch.Generator().manual_seed(0)
    xs, ys = linear_prompts(gen, 4, 6, 3, 0.0, w_scale=2.0)
    assert xs.shape == (4, 6, 3) and ys.shape == (4, 6)
    w = torch.linalg.lstsq(xs, ys.unsqueeze(-1)).solution  # noiseless: exactly linear
    assert torch.allclose((xs @ w)[..., 0], ys, atol=1e-4)
    back_xs, back_ys = split_pairs(interleave_pairs(xs, ys), 3)
    assert torch.equal(back_xs, xs) and torch.equal(back_ys, ys)


def test_scalar_output() -> None:
    out = torch.randn(2, 5, 1)
    assert torch.equal(scalar_output(out), out[..., 0])
    assert torch.equal(scalar_output(out[..., 0]), out[..., 0])


def test_eval_batches_cut_prompts_and_store_baselines() -> None:
    size = EVAL_BATCH_PROMPTS + 3
    data = {"xs": torch.randn(size, 4, 2), "ys": torch.randn(size, 4)}

    def to_batch(part: dict[str, torch.Tensor]) -> Batch:
        return interleave_pairs(part["xs"], part["ys"])

    def baselines(part: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"zero": torch.zeros_like(part["ys"], dtype=torch.float64)}

    batches = eval_batches(data, to_batch, baselines)
    assert [b.inputs.shape[0] for b in batches] == [EVAL_BATCH_PROMPTS, 3]
    assert torch.equal(torch.cat([split_pairs(b, 2)[1] for b in batches]), data["ys"])
    stored = stored_baselines(batches[1])
    assert list(stored) == ["zero"] and stored["zero"].dtype == torch.float64
    assert batches[1].extras["baseline_zero"].dtype == torch.float32
    assert stored_baselines(to_batch(data)) == {}


def test_check_eval_request() -> None:
    check_eval_request(("id", "ood"), "ood", 1)
    with pytest.raises(ValueError, match="eval size=0 must be >= 1"):
        check_eval_request(("id", "ood"), "id", 0)
    with pytest.raises(ValueError, match="unknown split 'x' \\(valid: id, ood\\)"):
        check_eval_request(("id", "ood"), "x", 4)


def test_summary_and_examples_curve() -> None:
    acc = PerK()
    acc.add("model", torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert acc.summary("model", "mse") == {"mse": 2.5, "by_k": {"1": 2.0, "2": 3.0}}
    curve = examples_curve("mse", {"model": acc.by_k("model")})
    assert curve == {
        "x": "in-context examples",
        "y": "mse",
        "series": {"model": {"0": 2.0, "1": 3.0}},
    }
