"""``shapes``: scenes hold apart objects whose count, largest class and box tokens the
targets state; splits held out by image hash and by object count; scores and baselines;
the box-token output refused by ``model_io`` until models read an image prefix."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks.contract import batches_equal
from anyformer.tasks.shapes import BOS, CLASS0, EOS, N_CLASSES, PAD, Shapes, image_bucket

SMALL = {"size": 12, "max_objects": 2, "ood_min_objects": 3, "ood_max_objects": 4}


def build(seed: int = 0, **params: Any) -> Shapes:
    entry = registry.get("task", "shapes")
    return entry.build(entry.make_params({**SMALL, **params}), seed)  # type: ignore[return-value]


def components(image: np.ndarray) -> list[tuple[int, int, tuple[int, ...]]]:
    """``(colour, pixels, box)`` of each 8-connected coloured region of an image."""
    labels, n = ndimage.label(image.max(0) > 0, structure=np.ones((3, 3)))
    out = []
    for k in range(1, n + 1):
        ys, xs = np.nonzero(labels == k)
        colour = int(image[:, ys[0], xs[0]].argmax())
        out.append((colour, len(ys), (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)))
    return out


def test_scenes_hold_apart_objects_that_the_targets_describe() -> None:
    count, largest, boxes = build(output="count"), build(), build(output="boxes")
    for split in ("train", "id", "ood"):
        rng = np.random.default_rng(1)
        images, objects = count.scenes(rng, 40, split)
        low, high = (3, 4) if split == "ood" else (1, 2)
        for image, objs in zip(images, objects):
            found = components(image)
            # apart objects are separate regions: the count is the number of regions
            assert len(found) == len(objs) and low <= len(objs) <= high
            assert sorted(f[2] for f in found) == sorted(tuple(o[2]) for o in objs)
            assert sorted(f[1] for f in found) == sorted(o[1] for o in objs)
            assert {f[0] for f in found} == {o[0] % 3 for o in objs}
        assert list(count.targets_of(objects)) == [len(o) for o in objects]
        # box tokens decode to the objects, in raster order of their corners
        for objs, seq in zip(objects, boxes.targets_of(objects)):
            decoded = boxes.decode_boxes(seq)
            assert decoded == sorted(((c, tuple(b)) for c, _, b in objs),
                                     key=lambda o: (o[1][0], o[1][1]))  # fmt: skip
            assert seq[0] == BOS and seq[1 + 5 * len(objs)] == EOS
            assert (seq[2 + 5 * len(objs) :] == PAD).all()
    # the largest object's class, its pixel count unique
    images, objects = largest.scenes(np.random.default_rng(2), 40, "train")
    for objs, label in zip(objects, largest.targets_of(objects)):
        areas = sorted((o[1] for o in objs), reverse=True)
        assert len(areas) == 1 or areas[0] > areas[1]
        assert label == max(objs, key=lambda o: o[1])[0] and 0 <= label < N_CLASSES


def test_shapes_is_deterministic_and_holds_id_images_out_by_hash() -> None:
    task = build()
    assert batches_equal(task.train_batch(4, 16), build().train_batch(4, 16))
    assert not batches_equal(task.train_batch(4, 16), build(seed=1).train_batch(4, 16))
    cut = round(0.1 * 10_000)
    train = [task.train_batch(s, 32).inputs.numpy() for s in range(4)]
    assert all(image_bucket(img) >= cut for batch in train for img in batch)
    ident = task.make_eval_set("id", 64)
    assert all(image_bucket(img) < cut for b in ident for img in b.inputs.numpy())
    assert sum(b.inputs.shape[0] for b in ident) == 64
    assert task.model_io() == {"input_shape": [3, 12, 12], "embedder": "patches",
                               "head": "classify", "n_outputs": 6}  # fmt: skip
    assert task.max_seq_len() == 145
    counted = build(output="count")
    assert counted.model_io()["n_outputs"] == 5  # counts 0 .. ood_max_objects
    ood = torch.cat([b.targets for b in counted.make_eval_set("ood", 64)])
    assert set(ood.tolist()) == {3, 4}


def test_shapes_scores_and_baselines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("anyformer.tasks.shapes.FIT_SCENES", 600)  # fewer scenes: faster fits
    task = build()
    batches = task.eval_set("id", 300)
    right = [torch.nn.functional.one_hot(b.targets, 6).float() for b in batches]
    scores = task.score(right, batches)
    assert scores["accuracy"] == 1.0
    assert scores["baselines"]["majority"]["accuracy"] < scores["baselines"]["logreg"]["accuracy"]
    regress = build(output="count", count_as="regress")
    assert regress.model_io()["head"] == "regress" and regress.default_objective == "mse"
    batches = regress.eval_set("ood", 100)
    exact = regress.score([b.targets.clone() for b in batches], batches)
    assert exact["rmse"] == 0.0
    off = regress.score([b.targets + 1 for b in batches], batches)
    assert off["mse"] == pytest.approx(1.0) and off["mae"] == pytest.approx(1.0)
    base = exact["baselines"]
    # trained on 1-2 objects, the mean predicts about 1.5 for scenes of 3-4
    assert base["mean"]["mae"] > 1.4 and base["linear"]["mae"] < base["mean"]["mae"]


def test_box_tokens_are_laid_out_for_an_lm_head_and_refused_by_model_io() -> None:
    task = build(output="boxes")
    with pytest.raises(SpecError, match="output='boxes' needs an image prefix"):
        task.model_io()
    batch = task.train_batch(0, 8)
    tokens = batch.extras["tokens"]
    assert batch.inputs.shape == (8, 3, 12, 12) and tokens.shape == batch.targets.shape
    assert torch.equal(tokens[:, 1:], batch.targets[:, :-1])
    assert (tokens[:, 0] == BOS).all()
    # the loss counts every target up to and including EOS
    for row, mask in zip(batch.targets, batch.loss_mask):
        end = int((row == EOS).nonzero()[0])
        assert mask[: end + 1].all() and not mask[end + 1 :].any()
    assert task.vocab_size == CLASS0 + N_CLASSES + 13
    batches = task.eval_set("id", 50)
    right = [torch.nn.functional.one_hot(b.targets, task.vocab_size).float() for b in batches]
    scores = task.score(right, batches)
    assert scores["exact_match"] == 1.0 and scores["token_accuracy"] == 1.0
    majority = task.score(task.baseline_outputs("majority", batches), batches)
    assert majority["exact_match"] == scores["baselines"]["majority"]["exact_match"]
    assert scores["baselines"]["majority"]["token_accuracy"] < 0.5


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_objects": 3, "ood_min_objects": 3}, "ood_min_objects=3 must be > max_objects=3"),
        ({"count_as": "regress"}, "count_as='regress' applies only with output='count'"),
        ({"size": 8, "ood_max_objects": 5}, "holds at most 4 apart objects reliably; raise "
         "size to 16"),
        ({"size": 32, "ood_max_objects": 11}, "holds at most 10 apart objects reliably"),
        ({"output": "masks"}, "output"),
    ],
)  # fmt: skip
def test_bad_shapes_parameters_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        registry.get("task", "shapes").make_params({**SMALL, **params})
