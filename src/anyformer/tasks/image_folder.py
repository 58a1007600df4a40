"""Classifying a user's folder of images (``image_folder``), read with Pillow.

``path`` holds one subfolder per class (its name is the class; classes in sorted order),
each with PNG or JPEG files (``.png``, ``.jpg``, ``.jpeg``, any case; other files are
not images and are left alone) at any depth below it. Every image is converted to RGB
(``channels=3``) or grey (``channels=1``), resized to ``size`` x ``size`` (bilinear)
and scaled to ``[0, 1]``: ``inputs`` ``[channels, size, size]``.

Links: a symbolic link (file or folder) whose target lies outside ``path`` is refused,
naming it — nothing outside the folder is read; linked folders inside it are not
descended (their images are already read where they lie).

Splits: an image belongs to ``id`` when the SHA-256 bucket (out of 10,000) of its path
relative to ``path`` is below ``id_fraction * 10000``, else to training — the same
images every run, whatever the seed; images with identical pixels (after resizing) all
go to the split of the first of them in path order, so no ``id`` input is a training
input. ``ood``: with ``ood='rotate'`` the ``id`` images turned by 180 degrees; with
``ood='folder'`` every image of ``ood_path`` (laid out like ``path``, with class names
among ``path``'s).

Refused with :class:`~anyformer.errors.SpecError`, naming the path: a missing folder,
fewer than two classes, a class or split without images, more than ``max_images``
images, a file over :data:`MAX_FILE_BYTES` and a file Pillow cannot read. Baselines:
logistic regression on the pixels (fitted on at most :data:`FIT_IMAGES` training
images) and the majority class.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from anyformer.errors import SpecError
from anyformer.registry import Capabilities, register
from anyformer.tasks.base import SPLIT_IDS, rng_for
from anyformer.tasks.images import image_io, image_seq_len, logreg
from anyformer.tasks.supervised import Examples, SupervisedTask, eval_order, take_rows

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg"})
MAX_FILE_BYTES = 50_000_000
FIT_IMAGES = 5000
HASH_BUCKETS = 10_000


class ImageFolderParams(BaseModel):
    """Parameters of ``image_folder`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    size: int = Field(32, ge=4, le=512)
    channels: Literal[1, 3] = 3
    id_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    ood: Literal["rotate", "folder"] = "rotate"
    ood_path: str | None = None
    max_images: int = Field(100_000, ge=2, le=100_000)

    @model_validator(mode="after")
    def _ood(self) -> ImageFolderParams:
        if (self.ood == "folder") != (self.ood_path is not None):
            raise ValueError("ood_path is needed with ood='folder', and only then")
        return self


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
        return True
    except ValueError:
        return False


def list_images(
    folder: str,
    field: str,
    max_images: int,
    extensions: frozenset[str] = EXTENSIONS,
    noun: str = "images",
) -> tuple[list[str], list[tuple[str, str]]]:
    """The class names (sorted subfolders) and ``(relative path, class)`` of every file
    with one of ``extensions`` (lower case, any case in the name) below them, in sorted
    path order; links out of the folder refused, more than ``max_images`` files refused
    (``noun`` names the files in that message)."""
    root = Path(folder)
    if not root.is_dir():
        raise SpecError(f"task.{field}={folder!r}: no such folder")
    root = root.resolve()
    classes = []
    for entry in sorted(root.iterdir()):
        if entry.is_symlink() and not _inside(entry, root):
            raise SpecError(
                f"task.{field}: {entry} is a link out of the folder (to {entry.resolve()}); "
                "links out of the folder are not followed"
            )
        if entry.is_dir() and not entry.is_symlink():
            classes.append(entry.name)
    found: list[tuple[str, str]] = []
    for cls in classes:
        for here, dirs, files in os.walk(root / cls, followlinks=False):
            for name in sorted(dirs + files):
                full = Path(here) / name
                if full.is_symlink() and not _inside(full, root):
                    raise SpecError(
                        f"task.{field}: {full} is a link out of the folder (to "
                        f"{full.resolve()}); links out of the folder are not followed"
                    )
            for name in files:
                full = Path(here) / name
                if full.suffix.lower() in extensions:
                    found.append((full.relative_to(root).as_posix(), cls))
                    if len(found) > max_images:
                        raise SpecError(
                            f"task.{field}={folder!r} holds more than task.max_{noun}="
                            f"{max_images} {noun}"
                        )
    return classes, sorted(found)


def load_image(path: Path, size: int, channels: int) -> np.ndarray:
    """One image as float32 ``[channels, size, size]`` in ``[0, 1]``."""
    from PIL import Image

    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SpecError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            img = img.resize((size, size), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except SpecError:
        raise
    except Exception as exc:  # Pillow raises many types for damaged files
        raise SpecError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


@functools.lru_cache(maxsize=8)
def load_folder(
    folder: str, field: str, size: int, channels: int, max_images: int
) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray, np.ndarray]:
    """``(classes, relative paths, images [N, C, size, size], class names per image)``."""
    classes, found = list_images(folder, field, max_images)
    root = Path(folder).resolve()
    if not found:
        raise SpecError(f"task.{field}={folder!r} holds no PNG or JPEG image in class subfolders")
    images = np.stack([load_image(root / rel, size, channels) for rel, _ in found])
    return (tuple(classes), tuple(r for r, _ in found), images,
            np.array([c for _, c in found]))  # fmt: skip


def path_bucket(path: str) -> int:
    """A deterministic bucket ``0 .. 9999`` of a relative path."""
    return int.from_bytes(hashlib.sha256(path.encode()).digest()[:8], "little") % HASH_BUCKETS


@register(
    "task",
    "image_folder",
    paper=None,
    summary="a folder of class subfolders of PNG/JPEG images; split by path hash; "
    "ood: rotated or another folder",
    params=ImageFolderParams,
    caps=Capabilities(),
)
class ImageFolder(SupervisedTask):
    """Classify a folder's images (see the module docstring). Metrics: ``accuracy`` and
    ``baselines.{logreg,majority}.accuracy``."""

    headline: ClassVar[str] = "accuracy"
    higher_is_better: ClassVar[bool] = True
    params: ImageFolderParams

    def __init__(self, params: ImageFolderParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        p = params
        classes, paths, images, names = load_folder(p.path, "path", p.size, p.channels,
                                                    p.max_images)  # fmt: skip
        if len(classes) < 2:
            raise SpecError(
                f"task.path={p.path!r} has {len(classes)} class subfolder(s); at least 2 needed"
            )
        index = {c: i for i, c in enumerate(classes)}
        empty = [c for c in classes if c not in set(names.tolist())]
        if empty:
            raise SpecError(f"task.path={p.path!r}: class folder(s) {empty} hold no image")
        cut = round(p.id_fraction * HASH_BUCKETS)
        first: dict[bytes, bool] = {}
        is_id = np.array(
            [first.setdefault(img.tobytes(), path_bucket(rel) < cut)
             for rel, img in zip(paths, images)]
        )  # fmt: skip
        self.classes, self.paths = classes, paths
        self.images, self.labels = images, np.array([index[c] for c in names], dtype=np.int64)
        self.id_rows, self.train_rows = np.flatnonzero(is_id), np.flatnonzero(~is_id)
        for split, rows in (("id", self.id_rows), ("training", self.train_rows)):
            if len(rows) == 0:
                raise SpecError(
                    f"task.path={p.path!r}: the {split} split is empty ({len(paths)} images, "
                    f"id_fraction={p.id_fraction}); add images or change task.id_fraction"
                )
        self.n_classes = len(classes)
        if p.ood == "rotate":
            self.ood_images = self.images[self.id_rows][..., ::-1, ::-1].copy()
            self.ood_labels = self.labels[self.id_rows]
        else:
            ood_classes, _, ood_images, ood_names = load_folder(
                p.ood_path or "", "ood_path", p.size, p.channels, p.max_images
            )
            unknown = sorted(set(ood_classes) - set(classes))
            if unknown:
                raise SpecError(
                    f"task.ood_path={p.ood_path!r}: classes {unknown} are not classes of "
                    f"task.path (valid: {', '.join(classes)})"
                )
            self.ood_images = ood_images
            self.ood_labels = np.array([index[c] for c in ood_names], dtype=np.int64)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.params.channels, self.params.size, self.params.size)

    def class_labels(self) -> tuple[str, ...]:
        return tuple(self.classes)

    def model_io(self) -> dict[str, Any]:
        return image_io(self.shape, self.n_classes)

    def max_seq_len(self) -> int:
        return image_seq_len(self.shape)

    def train_examples(self, step: int, n: int) -> Examples:
        pick = take_rows(rng_for(self.seed, SPLIT_IDS["train"], step), len(self.train_rows), n)
        rows = self.train_rows[pick]
        return self.images[rows], self.labels[rows]

    def eval_examples(self, split: str, size: int) -> Examples:
        if split == "id":
            x, y = self.images[self.id_rows], self.labels[self.id_rows]
        else:
            x, y = self.ood_images, self.ood_labels
        order = eval_order(self.seed, split, len(y), size)
        return x[order], y[order]

    def fit_examples(self) -> Examples:
        rows = self.train_rows
        if len(rows) > FIT_IMAGES:
            rows = np.sort(rng_for(self.seed, 3).choice(rows, FIT_IMAGES, replace=False))
        return self.images[rows], self.labels[rows]

    def baseline_estimators(self) -> dict[str, Callable[[], Any]]:
        if len(np.unique(self.labels[self.train_rows])) < 2:
            return {}
        return {"logreg": logreg}
