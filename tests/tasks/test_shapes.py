"""``shapes``: scenes hold apart objects whose count, largest class and box tokens the
targets state; splits held out by image hash and by object count; scores and baselines;
the box-token output for an encoder–decoder: its token round trip, scores on hand-made
cases, baselines, plot data and what a run requires of the model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from scipy import ndimage

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks.base import Batch
from anyformer.tasks.contract import batches_equal
from anyformer.tasks.plot_data import BoxesOnImages
from anyformer.tasks.shapes import (
    BOS,
    COORD0,
    EOS,
    N_CLASSES,
    PAD,
    Shapes,
    box_iou,
    component_boxes,
    image_bucket,
    matched_ious,
)

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
        # box tokens decode to the objects' boxes (x0 y0 x1 y1), in raster order of
        # their top-left corners
        for image, objs, seq in zip(images, objects, boxes.targets_of(objects)):
            want = sorted(((b[1], b[0], b[3], b[2]) for _, _, b in objs),
                          key=lambda b: (b[1], b[0]))  # fmt: skip
            assert boxes.decode_boxes(seq).tolist() == [list(b) for b in want]
            assert component_boxes(image).tolist() == [list(b) for b in want]
            assert seq[0] == BOS and seq[1 + 4 * len(objs)] == EOS
            assert (seq[2 + 4 * len(objs) :] == PAD).all()
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


def test_box_batches_put_the_image_in_the_source_and_the_tokens_in_the_decoder() -> None:
    task = build(output="boxes")
    assert task.model_io() == {
        "kind": "encoder_decoder", "embedder": "tokens", "vocab_size": COORD0 + 13,
        "head": "lm", "encoder": {"embedder": "patches", "input_shape": [3, 12, 12]},
    }  # fmt: skip
    batch = task.train_batch(0, 8)
    source, tokens = batch.extras["source"], batch.inputs
    assert source.shape == (8, 3, 12, 12) and source.dtype == torch.float32
    assert tokens.shape == batch.targets.shape == (8, task.box_len - 1) == (8, 17)
    assert task.max_seq_len() == 17
    assert torch.equal(tokens[:, 1:], batch.targets[:, :-1])
    assert (tokens[:, 0] == BOS).all()
    # the targets are the boxes of each image's regions, and the loss counts every
    # target up to and including EOS
    for image, row, mask in zip(source.numpy(), batch.targets, batch.loss_mask):
        assert np.array_equal(task.decode_boxes(row), component_boxes(image))
        end = int((row == EOS).nonzero()[0])
        assert end == 4 * len(component_boxes(image))
        assert mask[: end + 1].all() and not mask[end + 1 :].any()


def test_boxes_are_deterministic_by_seed_and_held_out_by_hash_and_count() -> None:
    task = build(output="boxes")
    assert batches_equal(task.train_batch(3, 16), build(output="boxes").train_batch(3, 16))
    assert not batches_equal(task.train_batch(3, 16), build(1, output="boxes").train_batch(3, 16))
    assert not batches_equal(task.train_batch(3, 16), task.train_batch(4, 16))
    cut = round(0.1 * 10_000)
    trained = [img for s in range(4) for img in task.train_batch(s, 32).extras["source"].numpy()]
    assert all(image_bucket(img) >= cut for img in trained)
    ident = [img for b in task.make_eval_set("id", 64) for img in b.extras["source"].numpy()]
    assert len(ident) == 64 and all(image_bucket(img) < cut for img in ident)
    keys = {img.tobytes() for img in trained}
    assert not keys & {img.tobytes() for img in ident}
    counts = {
        len(task.decode_boxes(row)) for b in task.make_eval_set("ood", 64) for row in b.targets
    }
    assert counts == {3, 4}  # more objects than the 1-2 of training


@pytest.mark.parametrize("bins", [None, 2, 5, 7, 13, 40])
def test_box_tokens_round_trip_within_the_quantization(bins: int | None) -> None:
    task = build(output="boxes", coord_bins=bins)
    levels = bins or 13
    assert task.vocab_size == COORD0 + levels
    step = 12 / (levels - 1)
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(0, 5))
        boxes = np.sort(rng.integers(0, 13, size=(n, 2, 2)), axis=1).reshape(n, 4)
        boxes = boxes[:, [0, 2, 1, 3]]  # x0 y0 x1 y1 with x0 <= x1, y0 <= y1
        seq = task.box_tokens(boxes)
        assert seq.shape == (task.box_len,) and seq[0] == BOS and seq[1 + 4 * n] == EOS
        assert ((seq[1 : 1 + 4 * n] >= COORD0) & (seq[1 : 1 + 4 * n] < task.vocab_size)).all()
        back = task.decode_boxes(seq)
        assert back.shape == (n, 4)
        assert np.abs(back - boxes).max(initial=0.0) <= step / 2 + 1e-9
        if bins is None:  # size + 1 levels: exact
            assert np.array_equal(back, boxes)
        # a second round trip changes nothing
        assert np.array_equal(task.decode_boxes(task.box_tokens(back)), back)


def _hand_batch(task: Shapes, rows: list[np.ndarray]) -> Batch:
    seqs = np.stack([task.box_tokens(r) for r in rows])
    images = np.zeros((len(rows), 3, 12, 12), dtype=np.float32)
    for img, boxes in zip(images, rows):
        for x0, y0, x1, y1 in boxes.astype(int):
            img[0, y0:y1, x0:x1] = 1.0
    return task.to_batch(images, seqs)


def _as_outputs(task: Shapes, rows: list[np.ndarray]) -> torch.Tensor:
    ids = torch.from_numpy(np.stack([task.box_tokens(r) for r in rows])[:, 1:])
    return torch.nn.functional.one_hot(ids, task.vocab_size).float()


def test_box_scores_on_hand_made_cases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("anyformer.tasks.shapes.FIT_SCENES", 200)
    task = build(output="boxes")
    a, b = np.array([[0, 0, 4, 4]]), np.array([[6, 6, 9, 10]])
    true = [np.concatenate([a, b]), a, b]
    batch = _hand_batch(task, true)
    shifted = np.array([[2, 0, 6, 4]])  # half of a: IoU 8 / 24 = 1/3
    pred = [np.concatenate([a, b]), np.concatenate([shifted, b]), np.zeros((0, 4))]
    scores = task.score([_as_outputs(task, pred)], [batch])
    assert scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["count_accuracy"] == pytest.approx(1 / 3)  # rows 2 (2 for 1) and 3 (0 for 1)
    # matched pairs: a-a, b-b (row 1), shifted-a (row 2; b unmatched), none (row 3)
    assert scores["mean_iou"] == pytest.approx((1 + 1 + 1 / 3) / 3)
    # scored tokens: row 1: 8 + EOS all right; row 2: y0 and y1 right, x0 and x1 wrong,
    # b's x0 where EOS is due; row 3: EOS where b's x0 is due
    assert scores["token_accuracy"] == pytest.approx((9 + 2 + 0) / (9 + 5 + 5))
    # the connected regions of the images are the true boxes
    assert scores["baselines"]["components"] == {
        "exact_match": 1.0, "token_accuracy": 1.0, "count_accuracy": 1.0, "mean_iou": 1.0
    }  # fmt: skip
    assert box_iou(a, shifted)[0, 0] == pytest.approx(1 / 3)
    assert box_iou(a, np.array([[4, 0, 8, 4]]))[0, 0] == 0.0  # touching edges only
    assert box_iou(a, np.array([[3, 3, 3, 5]]))[0, 0] == 0.0  # no area
    # the assignment of highest total IoU, not the greedy one
    ious = matched_ious(
        np.array([[0, 0, 4, 4], [0, 0, 2, 4]]), np.array([[0, 0, 3, 4], [0, 0, 1, 4]])
    )
    assert sorted(ious.tolist()) == pytest.approx([0.5, 0.75])


def test_box_baselines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("anyformer.tasks.shapes.FIT_SCENES", 400)
    task = build(output="boxes")
    batches = task.eval_set("id", 100)
    right = [torch.nn.functional.one_hot(b.targets, task.vocab_size).float() for b in batches]
    scores = task.score(right, batches)
    assert {k: scores[k] for k in ("exact_match", "token_accuracy", "count_accuracy",
                                   "mean_iou")} == {"exact_match": 1.0, "token_accuracy": 1.0,
                                                    "count_accuracy": 1.0, "mean_iou": 1.0}  # fmt: skip
    majority = scores["baselines"]["majority"]
    # the most common count of 1-2 objects (drawn uniformly), its boxes the mean boxes
    mean = task.decode_boxes(task.mean_boxes())
    assert len(mean) in (1, 2) and majority["exact_match"] < 0.05
    assert 0.3 < majority["count_accuracy"] < 0.7 and majority["mean_iou"] < 0.3
    replayed = task.score(task.baseline_outputs("majority", batches), batches)
    assert {k: replayed[k] for k in majority} == majority
    assert scores["baselines"]["components"]["exact_match"] == 1.0
    # quantized to 5 levels the components baseline stays exact (the same rounding)
    coarse = build(output="boxes", coord_bins=5)
    cb = coarse.eval_set("ood", 50)
    assert coarse.score(coarse.baseline_outputs("components", cb), cb)["exact_match"] == 1.0


def test_box_plot_data_are_the_boxes() -> None:
    task = build(output="boxes")
    batches = task.eval_set("id", 20)
    right = [torch.nn.functional.one_hot(b.targets, task.vocab_size).float() for b in batches]
    data = task.plot_data("id", right, batches)
    assert isinstance(data, BoxesOnImages) and data.kind == "boxes" and data.split == "id"
    source = batches[0].extras["source"].numpy()[:8]
    assert np.array_equal(data.images, source.transpose(0, 2, 3, 1))
    for r, image in enumerate(source):
        assert np.array_equal(data.true[r], component_boxes(image))
        assert np.array_equal(data.pred[r], data.true[r])
    # predicted boxes are read from the outputs: a model that always says "no boxes"
    none = [torch.nn.functional.one_hot(torch.full_like(b.targets, EOS), task.vocab_size).float()
            for b in batches]  # fmt: skip
    empty = task.plot_data("id", none, batches)
    assert all(p.shape == (0, 4) for p in empty.pred)
    assert all(map(np.array_equal, empty.true, data.true))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_objects": 3, "ood_min_objects": 3}, "ood_min_objects=3 must be > max_objects=3"),
        ({"count_as": "regress"}, "count_as='regress' applies only with output='count'"),
        ({"size": 8, "ood_max_objects": 5}, "holds at most 4 apart objects reliably; raise "
         "size to 16"),
        ({"size": 32, "ood_max_objects": 11}, "holds at most 10 apart objects reliably"),
        ({"output": "masks"}, "output"),
        ({"coord_bins": 8}, "coord_bins=8 applies only with output='boxes'"),
        ({"output": "boxes", "coord_bins": 1}, "coord_bins"),
    ],
)  # fmt: skip
def test_bad_shapes_parameters_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(SpecError, match=message):
        registry.get("task", "shapes").make_params({**SMALL, **params})


def _resolve(model: dict[str, Any]) -> Any:
    from anyformer.lab.run import resolve
    from anyformer.spec import ExperimentSpec

    task = {"name": "shapes", "output": "boxes", **SMALL}
    return resolve(ExperimentSpec.from_dict({"name": "boxes", "model": model, "task": task}))


def test_a_boxes_run_fills_the_encoder_and_refuses_other_kinds() -> None:
    spec = _resolve({"kind": "encoder_decoder", "d_model": 32, "n_heads": 4, "max_len": 40})
    m = spec.model
    assert m.kind == "encoder_decoder" and m.head_ref.name == "lm" and m.vocab_size == 16
    assert m.input_kind == "tokens" and m.input_shape is None
    assert m.encoder is not None and m.encoder.input_shape == (3, 12, 12)
    assert m.encoder_spec().embedder_ref.name == "patches"
    # the user's own image embedder and encoder depth are kept
    own = _resolve({"kind": "encoder_decoder", "max_len": 40,
                    "encoder": {"n_layers": 1, "embedder": {"name": "conv_stem"}}})  # fmt: skip
    assert own.model.encoder.n_layers == 1
    assert own.model.encoder_spec().embedder_ref.name == "conv_stem"
    for kind in ("decoder", "encoder", "prefix_lm"):
        with pytest.raises(SpecError, match=f"model.kind='{kind}' does not fit task 'shapes', "
                           "which needs model.kind='encoder_decoder'"):  # fmt: skip
            _resolve({"kind": kind, "max_len": 40})
    with pytest.raises(SpecError, match="model.encoder.embedder='tokens' reads tokens, but "
                       "task 'shapes' gives image"):  # fmt: skip
        _resolve({"kind": "encoder_decoder", "encoder": {"embedder": "tokens"}})
    with pytest.raises(SpecError, match=r"model.encoder.input_shape=\[3, 8, 8\] does not fit"):
        _resolve({"kind": "encoder_decoder", "encoder": {"input_shape": [3, 8, 8]}})
    with pytest.raises(SpecError, match="model.embedder='patches' reads image, but task "
                       "'shapes' gives tokens"):  # fmt: skip
        _resolve({"kind": "encoder_decoder", "embedder": "patches"})
    with pytest.raises(SpecError, match="model.max_len=8 is shorter than the longest sequence"):
        _resolve({"kind": "encoder_decoder", "max_len": 8})
