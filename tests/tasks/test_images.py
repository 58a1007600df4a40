"""``digits`` and ``mnist1d``: determinism, held-out splits, the shift of ``ood``, scores
and the scikit-learn baselines on the evaluation images."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks.base import Task
from anyformer.tasks.contract import batches_equal
from anyformer.tasks.images import digit_images, mnist1d_signals, rotate_images, shift_images


def build(name: str, seed: int = 0, **params: object) -> Task:
    entry = registry.get("task", name)
    return entry.build(entry.make_params(params), seed)


def one_hot_right(task: Task, split: str, size: int = 2000) -> dict:
    batches = task.eval_set(split, size)
    outputs = [torch.nn.functional.one_hot(b.targets, 10).float() for b in batches]
    return task.score(outputs, batches)


def test_digits_is_deterministic_by_seed_and_holds_its_evaluation_images_out() -> None:
    a, b, c = build("digits"), build("digits"), build("digits", seed=1)
    assert batches_equal(a.train_batch(3, 32), b.train_batch(3, 32))
    assert not batches_equal(a.train_batch(3, 32), c.train_batch(3, 32))
    assert all(map(batches_equal, a.make_eval_set("ood", 100), b.make_eval_set("ood", 100)))
    # the id images are a fifth of the 1,797, none of them a training image
    assert len(a.id_rows) == 359 and len(a.train_rows) == 1797 - 359
    assert not set(a.id_rows) & set(a.train_rows)
    assert set(a.id_rows) != set(c.id_rows)
    images, labels = digit_images()
    train = {img.tobytes() for img in images[a.train_rows]}
    for batch in a.make_eval_set("id", 2000) + a.make_eval_set("ood", 2000):
        assert not {img.numpy().tobytes() for img in batch.inputs} & train
    # a batch: images [B, 1, 8, 8] in [0, 1], labels, one mask entry per image
    batch = a.train_batch(0, 16)
    assert batch.inputs.shape == (16, 1, 8, 8) and batch.inputs.dtype == torch.float32
    assert float(batch.inputs.min()) >= 0.0 and float(batch.inputs.max()) <= 1.0
    assert batch.targets.dtype == torch.long and batch.loss_mask.shape == (16,)
    assert a.model_io() == {"input_shape": [1, 8, 8], "embedder": "patches",
                            "head": "classify", "n_outputs": 10}  # fmt: skip


def test_digits_ood_holds_the_id_images_rotated_or_shifted() -> None:
    task = build("digits")
    ident = task.eval_set("id", 2000)[0]
    rot = task.eval_set("ood", 2000)[0]
    assert torch.equal(ident.targets, rot.targets)
    assert not torch.equal(ident.inputs, rot.inputs)
    # each ood image is its id image turned by 15..30 degrees one way or the other: the
    # best of a 0.25-degree grid of such turns matches it, no smaller turn does
    grid = np.concatenate([np.arange(15.0, 30.01, 0.25), -np.arange(15.0, 30.01, 0.25)])
    small = np.array([-5.0, 0.0, 5.0])
    for a, b in zip(ident.inputs[:30].numpy(), rot.inputs[:30].numpy()):
        turned = rotate_images(np.repeat(a[None], len(grid), 0), grid)
        assert np.abs(turned - b).mean(axis=(1, 2, 3)).min() < 0.005
        near = rotate_images(np.repeat(a[None], 3, 0), small)
        assert np.abs(near - b).mean(axis=(1, 2, 3)).min() > 0.02
    # shifted: each is its id image moved by one pixel along one axis, zeros filling in
    moved = build("digits", ood="shift", ood_shift=1).eval_set("ood", 2000)[0].inputs

    def shift(a: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        out = torch.zeros_like(a)
        out[:, max(dy, 0) : 8 + min(dy, 0), max(dx, 0) : 8 + min(dx, 0)] = a[
            :, max(-dy, 0) : 8 - max(dy, 0), max(-dx, 0) : 8 - max(dx, 0)
        ]
        return out

    steps = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    for a, b in zip(ident.inputs, moved):
        assert any(torch.equal(b, shift(a, dy, dx)) for dy, dx in steps)


def test_rotating_and_shifting_images_compute_what_they_say() -> None:
    img = np.zeros((1, 1, 9, 9), dtype=np.float32)
    img[0, 0, 1, 4] = 1.0  # above the centre
    assert np.allclose(rotate_images(img, np.array([0.0])), img)
    turned = rotate_images(img, np.array([90.0]))[0, 0]
    assert np.unravel_index(turned.argmax(), turned.shape) in {(4, 1), (4, 7)}
    assert np.allclose(turned, np.rot90(img[0, 0], 1)) or np.allclose(
        turned, np.rot90(img[0, 0], -1)
    )
    moved = shift_images(img, np.random.default_rng(0), 2)[0, 0]
    assert moved.sum() == 1.0 and moved[1, 4] == 0.0
    (y,), (x,) = np.nonzero(moved)
    assert abs(y - 1) + abs(x - 4) == 2


def test_digits_scores_and_baselines_on_the_evaluation_images() -> None:
    task = build("digits")
    perfect = one_hot_right(task, "id")
    assert perfect["accuracy"] == 1.0 and perfect["examples"] == 359
    base = perfect["baselines"]
    assert 0.94 <= base["logreg"]["accuracy"] <= 0.99
    assert 0.97 <= base["svc"]["accuracy"] <= 1.0
    labels = torch.cat([b.targets for b in task.eval_set("id", 2000)])
    counts = np.bincount(digit_images()[1][task.train_rows], minlength=10)
    assert base["majority"]["accuracy"] == pytest.approx(
        float((labels == int(counts.argmax())).double().mean())
    )
    ood = one_hot_right(task, "ood")["baselines"]
    assert ood["logreg"]["accuracy"] < base["logreg"]["accuracy"] - 0.2
    # half right, half wrong
    batches = task.eval_set("id", 100)
    outs = []
    for b in batches:
        wrong = (b.targets + 1) % 10
        wrong[: len(wrong) // 2] = b.targets[: len(wrong) // 2]
        outs.append(torch.nn.functional.one_hot(wrong, 10).float())
    assert task.score(outs, batches)["accuracy"] == 0.5
    # the baselines are fitted once per instance
    fitted = task.fitted_baselines()
    assert task.fitted_baselines() is fitted


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"ood_min_angle": 30.0, "ood_max_angle": 20.0}, "ood_max_angle=20.0 must be >= "
         "ood_min_angle=30.0"),
        ({"id_fraction": 1.0}, "id_fraction"),
        ({"ood": "blur"}, "ood"),
        ({"ood": "shift", "ood_shift": 9}, "ood_shift"),
        ({"ood_shift": 2}, "ood_shift applies only with ood='shift'"),
        ({"ood_min_angle": 10.0, "ood": "shift"}, "ood_min_angle applies only with ood='rotate'"),
        ({"ood": "shift", "ood_max_angle": 40.0}, "ood_max_angle applies only with ood='rotate'"),
    ],
)  # fmt: skip
def test_digits_refuses_bad_parameters(params: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        registry.get("task", "digits").make_params(params)


def test_mnist1d_uses_the_packages_generator_with_its_defaults_and_leaves_global_state() -> None:
    from mnist1d.data import get_dataset_args, make_dataset

    np.random.seed(7)
    random.seed(7)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()
    small, _ = mnist1d_signals(5, 2.0, 100)  # not cached: generated now
    assert small.shape == (100, 40)
    assert np.array_equal(np.random.get_state()[1], before_np)
    assert random.getstate() == before_py
    # the package's generator with its default arguments (here 500 signals, not 5,000,
    # to keep the test fast; the split point moves with the count)
    x, y = mnist1d_signals(42, 1.0, 500)
    args = get_dataset_args()
    args.num_samples = 500
    reference = make_dataset(args)
    assert np.allclose(x[:400], reference["x"]) and np.array_equal(y[:400], reference["y"])
    assert np.allclose(x[400:], reference["x_test"])


def test_mnist1d_batches_splits_and_baselines() -> None:
    task, again, other = build("mnist1d"), build("mnist1d"), build("mnist1d", seed=1)
    batch = task.train_batch(2, 8)
    assert batch.inputs.shape == (8, 40, 1) and batch.targets.shape == (8,)
    assert batches_equal(batch, again.train_batch(2, 8))
    assert not batches_equal(batch, other.train_batch(2, 8))
    assert task.model_io() == {"embed": "vectors", "input_dim": 1, "head": "classify",
                               "n_outputs": 10}  # fmt: skip
    assert task.max_seq_len() == 40
    x, _ = mnist1d_signals()
    ident = task.eval_set("id", 5000)
    assert sum(b.inputs.shape[0] for b in ident) == 1000
    trained = {row.tobytes() for row in x[:4000]}
    assert not {row.numpy().tobytes() for b in ident for row in b.inputs[..., 0]} & trained
    scores = one_hot_right(task, "id")
    assert scores["accuracy"] == 1.0
    assert 0.25 <= scores["baselines"]["logreg"]["accuracy"] <= 0.40  # the paper: ~32%
    assert scores["baselines"]["majority"]["accuracy"] <= 0.15
    ood = one_hot_right(task, "ood")["baselines"]["logreg"]["accuracy"]
    assert ood < scores["baselines"]["logreg"]["accuracy"]
    with pytest.raises(SpecError, match="ood_noise"):
        registry.get("task", "mnist1d").make_params({"ood_noise": 0})
