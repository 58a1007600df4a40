"""``image_folder``: classes from subfolders, images resized, the split by path hash,
duplicates kept together, ood (rotated or another folder), links out of the folder and
unreadable files refused by path, and the baselines."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks.contract import batches_equal
from anyformer.tasks.image_folder import ImageFolder, load_folder, path_bucket


def build(path: Path, seed: int = 0, **params: Any) -> ImageFolder:
    load_folder.cache_clear()
    entry = registry.get("task", "image_folder")
    return entry.build(entry.make_params({"path": str(path), **params}), seed)  # type: ignore[return-value]


def test_a_folder_becomes_classes_of_resized_images(image_tree: Path) -> None:
    task = build(image_tree, size=6)
    assert task.classes == ("class_0", "class_1", "class_2")
    assert task.images.shape == (30, 3, 6, 6) and task.images.dtype == np.float32
    assert task.images.min() >= 0.0 and task.images.max() <= 1.0
    assert [int(task.labels[task.paths.index(f"class_{c}/img_3.png")]) for c in range(3)] == [
        0,
        1,
        2,
    ]
    grey = build(image_tree, size=5, channels=1)
    assert grey.images.shape == (30, 1, 5, 5)
    assert grey.model_io() == {"input_shape": [1, 5, 5], "embedder": "patches",
                               "head": "classify", "n_outputs": 3}  # fmt: skip
    batch = task.train_batch(0, 8)
    assert batch.inputs.shape == (8, 3, 6, 6)
    assert batches_equal(batch, build(image_tree, size=6).train_batch(0, 8))
    assert not batches_equal(batch, build(image_tree, 1, size=6).train_batch(0, 8))


def test_the_split_follows_the_path_hash_whatever_the_seed_or_location(
    image_tree: Path, tmp_path: Path
) -> None:
    task = build(image_tree, id_fraction=0.3)
    cut = round(0.3 * 10_000)
    assert [task.paths[i] for i in task.id_rows] == [p for p in task.paths if path_bucket(p) < cut]
    assert not set(task.id_rows) & set(task.train_rows)
    assert list(build(image_tree, 5, id_fraction=0.3).id_rows) == list(task.id_rows)
    moved = shutil.copytree(image_tree, tmp_path / "elsewhere")
    assert list(build(moved, id_fraction=0.3).id_rows) == list(task.id_rows)
    # rotate: the id images turned by 180 degrees, same labels
    ident, ood = task.eval_set("id", 100), task.eval_set("ood", 100)
    x_id = torch.cat([b.inputs for b in ident])
    x_ood = torch.cat([b.inputs for b in ood])
    assert sorted(map(bytes, (x.flip(-1).flip(-2).numpy().tobytes() for x in x_id))) == sorted(
        map(bytes, (x.numpy().tobytes() for x in x_ood))
    )


def test_identical_images_share_a_split(image_tree: Path) -> None:
    task = build(image_tree, id_fraction=0.3)
    held = task.paths[task.id_rows[0]]
    # copies of a held-out image, later in path order: they follow it whatever their hash
    for k in range(6):
        shutil.copy(image_tree / held, image_tree / held.split("/")[0] / f"z_copy_{k}.png")
    again = build(image_tree, id_fraction=0.3)
    copies = [i for i, p in enumerate(again.paths) if "copy_" in p]
    assert len(copies) == 6 and set(copies) <= set(again.id_rows)
    assert any(path_bucket(again.paths[i]) >= round(0.3 * 10_000) for i in copies)
    trained = {again.images[i].tobytes() for i in again.train_rows}
    assert not any(again.images[i].tobytes() in trained for i in again.id_rows)


def test_an_ood_folder_is_read_with_the_same_classes(
    image_tree: Path, tmp_path: Path, make_image_tree: Callable[..., Path]
) -> None:
    other = make_image_tree(tmp_path / "other", classes=2, per_class=4, size=20)
    task = build(image_tree, ood="folder", ood_path=str(other))
    ood = task.eval_set("ood", 100)
    assert sum(b.inputs.shape[0] for b in ood) == 8
    assert sorted(torch.cat([b.targets for b in ood]).tolist()) == [0] * 4 + [1] * 4
    (other / "class_9").mkdir()
    shutil.copy(other / "class_0" / "img_0.png", other / "class_9" / "a.png")
    with pytest.raises(SpecError, match=r"classes \['class_9'\] are not classes of task.path"):
        build(image_tree, ood="folder", ood_path=str(other))


def test_links_out_of_the_folder_and_unreadable_files_are_refused_by_path(
    image_tree: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "secret.png"
    shutil.copy(image_tree / "class_0" / "img_0.png", outside)
    link = image_tree / "class_1" / "link.png"
    link.symlink_to(outside)
    with pytest.raises(SpecError, match=f"{link} is a link out of the folder"):
        build(image_tree)
    link.unlink()
    (image_tree / "class_1" / "inside.png").symlink_to(image_tree / "class_0" / "img_1.png")
    assert len(build(image_tree).paths) == 31  # a link inside the folder is read
    (image_tree / "class_x").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(SpecError, match="class_x is a link out of the folder"):
        build(image_tree)
    (image_tree / "class_x").unlink()
    bad = image_tree / "class_2" / "broken.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(SpecError, match=f"{bad}: not a readable image"):
        build(image_tree)


@pytest.mark.parametrize(
    ("layout", "params", "message"),
    [
        ("missing", {}, "no such folder"),
        ("one_class", {}, "1 class subfolder"),
        ("empty_class", {}, r"class folder\(s\) \['class_3'\] hold no image"),
        ("ok", {"max_images": 5}, "holds more than task.max_images=5 images"),
        ("ok", {"id_fraction": 0.0001}, "the id split is empty"),
    ],
)
def test_bad_folders_are_refused(
    tmp_path: Path,
    layout: str,
    params: dict[str, Any],
    message: str,
    make_image_tree: Callable[..., Path],
) -> None:
    root = tmp_path / "data"
    if layout != "missing":
        make_image_tree(root, classes=1 if layout == "one_class" else 2, per_class=4)
    if layout == "empty_class":
        (root / "class_3").mkdir()
        (root / "class_3" / "notes.txt").write_text("no images here")
    with pytest.raises(SpecError, match=message):
        build(root, **params)


def test_folder_scores_and_baselines(image_tree: Path) -> None:
    task = build(image_tree, size=8, id_fraction=0.3)
    batches = task.eval_set("id", 100)
    right = [torch.nn.functional.one_hot(b.targets, 3).float() for b in batches]
    scores = task.score(right, batches)
    assert scores["accuracy"] == 1.0
    # the class is a bright row band: linearly separable
    assert scores["baselines"]["logreg"]["accuracy"] == 1.0
    assert scores["baselines"]["majority"]["accuracy"] < 1.0


def test_ood_folder_parameters_go_together(image_tree: Path) -> None:
    entry = registry.get("task", "image_folder")
    with pytest.raises(SpecError, match="ood_path is needed with ood='folder'"):
        entry.make_params({"path": str(image_tree), "ood": "folder"})
    with pytest.raises(SpecError, match="path"):
        entry.make_params({})
