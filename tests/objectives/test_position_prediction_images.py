"""MP3 (``position_prediction``) on an image task: targets are the model's token
positions (patches and CLS), the objective decides the per-token head, and the task
scores the position accuracy at the scored tokens."""

from __future__ import annotations

import pytest
import torch

from anyformer.errors import SpecError
from anyformer.lab.run import build_objective, build_task, resolve
from anyformer.objectives.losses import CORRUPT_TRAIN
from anyformer.spec import ExperimentSpec
from anyformer.tasks.base import torch_generator

MODEL = {"kind": "encoder", "embedder": {"name": "patches", "patch_size": 2, "cls": True},
         "position": "none", "d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 17,
         "n_outputs": 17}  # fmt: skip


def setup() -> tuple:  # noqa: ANN201
    spec = resolve(
        ExperimentSpec.from_dict(
            {"name": "t", "model": MODEL, "task": "digits",
             "objective": {"name": "position_prediction", "mask_ratio": 0.5}}
        )
    )  # fmt: skip
    task = build_task(spec)
    return spec, task, build_objective(spec, task)


def test_targets_are_the_token_positions_and_the_score_their_accuracy() -> None:
    spec, task, objective = setup()
    assert spec.model.head.name == "token_classify"  # the objective's, not digits' classify
    batch = objective.corrupt(task.train_batch(0, 8), torch_generator(0, CORRUPT_TRAIN, 0))
    assert torch.equal(batch.targets, torch.arange(17).expand(8, 17))
    assert batch.loss_mask.all() and batch.padding_mask.shape == (8, 17)
    assert 0 < batch.padding_mask.float().mean() < 1  # about half hidden as keys
    # logits right at the first 5 tokens of every row, wrong elsewhere
    logits = torch.zeros(8, 17, 17)
    logits[:, :5] = torch.nn.functional.one_hot(torch.arange(5), 17).float()
    logits[:, 5:, 0] = 1.0
    scores = task.score([logits], [batch])
    assert scores["accuracy"] == pytest.approx(5 / 17) and scores["examples"] == 8 * 17


def test_without_the_model_the_objective_refuses_images() -> None:
    from anyformer.objectives.positions import PositionParams, PositionPrediction

    _, task, _ = setup()
    with pytest.raises(SpecError, match="token count"):
        PositionPrediction(PositionParams()).corrupt(task.train_batch(0, 2), torch.Generator())
