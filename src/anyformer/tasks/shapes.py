"""Generated scenes of coloured rectangles and discs, with three outputs (``shapes``).

A scene is an RGB image ``[3, size, size]`` in ``[0, 1]`` (black background) holding
``n`` objects, ``n`` drawn uniformly from the split's range (training and ``id``:
``min_objects .. max_objects``; ``ood``: ``ood_min_objects .. ood_max_objects``, more
objects than ever trained). An object is a filled axis-aligned rectangle (sides
``2 .. size // 3``) or a disc (radius ``1 .. size // 6``), in red, green or blue: six
classes, ``class = 3 * shape + colour`` (shape 0 = rectangle, 1 = disc). Objects never
touch: their pixel bounding boxes are at least one pixel apart, so every object is
entirely visible and the count is unambiguous.

``output`` chooses the target:

- ``largest_class``: the class of the object with the most pixels (scenes with a tie
  are redrawn); ``classify`` head with 6 outputs.
- ``count``: the number of objects; with ``count_as='classify'`` a class ``0 ..
  ood_max_objects`` (so the ``ood`` counts have outputs), with ``count_as='regress'`` a
  real number.
- ``boxes``: the objects written as tokens (GiT's "everything is tokens" interface,
  Wang et al., 2024, at toy scale): ``BOS``, then per object in raster order of its top
  left corner ``class, y0, x0, y1, x1`` (pixel bounds, ``y1``/``x1`` exclusive, each an
  exact coordinate token ``0 .. size``), then ``EOS``, padded with ``PAD``; the batch's
  ``extras['tokens']`` hold the decoder's input (the sequence without its last token)
  and ``targets`` the next tokens. Reading it needs an image prefix before a token
  decoder, which the model does not have yet, so :meth:`Shapes.model_io` refuses this
  output with a :class:`~anyformer.errors.SpecError` (the data, the layout and the
  scoring are ready).

Held out by construction: an image whose SHA-256 bucket (of its bytes, out of 10,000)
is below ``id_fraction * 10000`` belongs to ``id`` and is never a training image;
``ood`` images have more objects than any training image. Baselines (fitted on 2,000
training scenes): logistic regression (or least squares for a regressed count) on the
pixels, the majority class (or the mean), and for ``boxes`` the most common token at
each position.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from anyformer.errors import SpecError
from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, range_validators, rng_for
from anyformer.tasks.images import image_io, image_seq_len, logreg
from anyformer.tasks.supervised import Examples, SupervisedTask

GIT = Paper(
    "GiT: Towards Generalist Vision Transformer through Universal Language Interface",
    2024,
    "Wang et al.",
)
COLOURS = np.eye(3, dtype=np.float32)
N_CLASSES = 6
PAD, BOS, EOS = 0, 1, 2
CLASS0 = 3
#: Training-distribution scenes the baselines are fitted on.
FIT_SCENES = 2000
HASH_BUCKETS = 10_000
OBJECT_FIELDS = ("min_objects", "max_objects", "ood_min_objects", "ood_max_objects")


class ShapesParams(BaseModel):
    """Parameters of ``shapes`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    size: int = Field(16, ge=8, le=64)
    output: Literal["largest_class", "count", "boxes"] = "largest_class"
    count_as: Literal["classify", "regress"] = "classify"
    min_objects: int = Field(1, ge=1)
    max_objects: int = Field(3, ge=1)
    ood_min_objects: int = Field(4, ge=1)
    ood_max_objects: int = Field(5, ge=1)
    id_fraction: float = Field(0.1, gt=0.0, lt=1.0)

    _max, _ood, _ood_max = range_validators(OBJECT_FIELDS, why="ood scenes hold more objects")

    @model_validator(mode="after")
    def _fits(self) -> ShapesParams:
        if self.count_as != "classify" and self.output != "count":
            raise ValueError(f"count_as={self.count_as!r} applies only with output='count'")
        most = max_objects(self.size)
        if self.ood_max_objects > most:
            raise ValueError(
                f"ood_max_objects={self.ood_max_objects}: a {self.size}x{self.size} image "
                f"holds at most {most} apart objects reliably"
                + ("; raise size to 16" if self.size < 16 else "")
            )
        return self


def max_objects(size: int) -> int:
    """The most objects a scene of side ``size`` may hold: objects scale with the image
    (sides up to a third of it), so about ten fit apart at any size (measured: a scene of
    10 in 16x16 takes ~15 ms to draw, 5 in 8x8 ~0.2 s), 4 below 16 pixels."""
    return 4 if size < 16 else 10


def draw_object(rng: np.random.Generator, size: int) -> tuple[int, np.ndarray, tuple[int, ...]]:
    """A random object: its class, its pixel mask ``[size, size]`` and its box
    ``(y0, x0, y1, x1)`` (exclusive ends)."""
    shape, colour = int(rng.integers(2)), int(rng.integers(3))
    mask = np.zeros((size, size), dtype=bool)
    if shape == 0:
        h, w = (int(v) for v in rng.integers(2, size // 3 + 1, size=2))
        y0, x0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
        mask[y0 : y0 + h, x0 : x0 + w] = True
    else:
        r = int(rng.integers(1, size // 6 + 1))
        cy, cx = (float(v) for v in rng.uniform(r, size - r, size=2))
        yy, xx = np.mgrid[0:size, 0:size]
        mask = (yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2 <= r * r
    ys, xs = np.nonzero(mask)
    box = (int(ys.min()), int(xs.min()), int(ys.max()) + 1, int(xs.max()) + 1)
    return 3 * shape + colour, mask, box


def _apart(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    return a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def draw_scene(
    rng: np.random.Generator, size: int, n: int, unique_largest: bool
) -> tuple[np.ndarray, list[tuple[int, int, tuple[int, ...]]]]:
    """An image ``[3, size, size]`` of ``n`` objects at least one pixel apart, and the
    objects ``(class, pixels, box)``; with ``unique_largest`` no two objects share the
    largest pixel count. Raises :class:`ValueError` when 1,000 tries place no such scene."""
    for _ in range(1000):
        objects: list[tuple[int, int, tuple[int, ...]]] = []
        image = np.zeros((3, size, size), dtype=np.float32)
        for _ in range(200):
            cls, mask, box = draw_object(rng, size)
            if all(_apart(box, o[2]) for o in objects):
                objects.append((cls, int(mask.sum()), box))
                image[:, mask] = COLOURS[cls % 3][:, None]
                if len(objects) == n:
                    break
        if len(objects) < n:
            continue
        areas = sorted((o[1] for o in objects), reverse=True)
        if unique_largest and n > 1 and areas[0] == areas[1]:
            continue
        return image, objects
    raise ValueError(f"could not place {n} apart objects in a {size}x{size} image")


def image_bucket(image: np.ndarray) -> int:
    """A deterministic bucket ``0 .. 9999`` of an image's bytes."""
    digest = hashlib.sha256(np.ascontiguousarray(image).tobytes()).digest()
    return int.from_bytes(digest[:8], "little") % HASH_BUCKETS


@register(
    "task",
    "shapes",
    paper=GIT,
    summary="generated rectangles and discs: class of the largest, count (ood: more objects) "
    "or boxes as tokens",
    params=ShapesParams,
    caps=Capabilities(),
)
class Shapes(SupervisedTask):
    """Scenes of coloured rectangles and discs (see the module docstring).

    Metrics: ``accuracy`` (classification), ``mse``/``mae``/``rmse`` (regressed count),
    or ``token_accuracy``/``exact_match`` (boxes), each with ``baselines``.
    """

    params: ShapesParams

    def __init__(self, params: ShapesParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        regress = params.output == "count" and params.count_as == "regress"
        self.kind = "regress" if regress else "classify"
        self.n_classes = 0 if regress else (
            N_CLASSES if params.output == "largest_class" else params.ood_max_objects + 1
        )  # fmt: skip
        self.headline = "rmse" if regress else "accuracy"
        self.higher_is_better = not regress
        self.default_objective = "mse" if regress else "causal_lm"
        if params.output == "boxes":
            self.headline, self.default_objective = "exact_match", "causal_lm"
        self.shape = (3, params.size, params.size)

    # ------------------------------------------------------------ io
    @property
    def vocab_size(self) -> int:
        """``PAD, BOS, EOS``, six classes and the coordinates ``0 .. size``."""
        return CLASS0 + N_CLASSES + self.params.size + 1

    @property
    def box_len(self) -> int:
        """Tokens of a box sequence: ``BOS``, 5 per object, ``EOS``."""
        return 2 + 5 * self.params.ood_max_objects

    def class_labels(self) -> tuple[str, ...]:
        """``largest_class``: colour and shape (``class = 3 * shape + colour``); ``count``:
        the number of objects."""
        if self.params.output == "largest_class":
            return tuple(f"{c} {s}" for s in ("rect", "disc") for c in ("red", "green", "blue"))
        return tuple(str(i) for i in range(self.n_classes))

    def model_io(self) -> dict[str, Any]:
        p = self.params
        if p.output == "boxes":
            raise SpecError(
                "task 'shapes' with output='boxes' needs an image prefix followed by a token "
                "decoder (an lm head over the box tokens), which anyformer models do not "
                "support yet; use output='largest_class' or output='count'"
            )
        if self.kind == "regress":
            return image_io(self.shape, 1, head="regress")
        return image_io(self.shape, self.n_classes)

    def max_seq_len(self) -> int:
        return image_seq_len(self.shape)

    # ------------------------------------------------------------ data
    def scenes(self, rng: np.random.Generator, n: int, split: str) -> tuple[np.ndarray, list[Any]]:
        """``n`` scenes of ``split``: images ``[n, 3, size, size]`` and their objects."""
        p = self.params
        low, high = (
            (p.ood_min_objects, p.ood_max_objects)
            if split == "ood"
            else (p.min_objects, p.max_objects)
        )
        cut = round(p.id_fraction * HASH_BUCKETS)
        images, objects = [], []
        while len(images) < n:
            count = int(rng.integers(low, high + 1))
            image, objs = draw_scene(rng, p.size, count, p.output == "largest_class")
            if split != "ood" and (image_bucket(image) < cut) != (split == "id"):
                continue
            images.append(image)
            objects.append(objs)
        return np.stack(images), objects

    def targets_of(self, objects: list[Any]) -> np.ndarray:
        """The targets of scenes' objects for ``output`` (box tokens ``[n, box_len]``)."""
        out = self.params.output
        if out == "largest_class":
            return np.array([max(o, key=lambda t: t[1])[0] for o in objects], dtype=np.int64)
        if out == "count":
            return np.array([len(o) for o in objects], dtype=np.int64)
        return np.stack([self.box_tokens(o) for o in objects])

    def box_tokens(self, objects: list[Any]) -> np.ndarray:
        """``BOS``, ``class y0 x0 y1 x1`` per object in raster order, ``EOS``, padding."""
        coord0 = CLASS0 + N_CLASSES
        seq = [BOS]
        for cls, _, box in sorted(objects, key=lambda o: (o[2][0], o[2][1])):
            seq += [CLASS0 + cls, *(coord0 + v for v in box)]
        seq.append(EOS)
        return np.array(seq + [PAD] * (self.box_len - len(seq)), dtype=np.int64)

    def decode_boxes(self, tokens: torch.Tensor | np.ndarray) -> list[tuple[int, tuple[int, ...]]]:
        """The ``(class, box)`` objects of a box token sequence (reads up to ``EOS``;
        stops at a malformed group)."""
        coord0 = CLASS0 + N_CLASSES
        toks = [int(t) for t in tokens]
        out, i = [], 1 if toks and toks[0] == BOS else 0
        while i + 5 <= len(toks) and CLASS0 <= toks[i] < coord0:
            coords = toks[i + 1 : i + 5]
            if not all(coord0 <= c < self.vocab_size for c in coords):
                break
            out.append((toks[i] - CLASS0, tuple(c - coord0 for c in coords)))
            i += 5
        return out

    def to_batch(self, x: np.ndarray, y: np.ndarray) -> Batch:
        if self.params.output != "boxes":
            return super().to_batch(x, y)
        seq = torch.from_numpy(y)
        targets = seq[:, 1:]
        mask = (targets != PAD) & (torch.cumsum((seq[:, :-1] == EOS).long(), 1) == 0)
        return Batch(
            inputs=torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)),
            targets=targets.contiguous(),
            loss_mask=mask,
            extras={"tokens": seq[:, :-1].contiguous()},
        )

    def train_examples(self, step: int, n: int) -> Examples:
        images, objects = self.scenes(rng_for(self.seed, SPLIT_IDS["train"], step), n, "train")
        return images, self.targets_of(objects)

    def eval_examples(self, split: str, size: int) -> Examples:
        images, objects = self.scenes(rng_for(self.seed, SPLIT_IDS[split], 0), size, split)
        return images, self.targets_of(objects)

    def fit_examples(self) -> Examples:
        images, objects = self.scenes(rng_for(self.seed, 3, 0), FIT_SCENES, "train")
        return images, self.targets_of(objects)

    def baseline_estimators(self) -> dict[str, Callable[[], Any]]:
        from sklearn.dummy import DummyRegressor
        from sklearn.linear_model import Ridge

        if self.params.output == "boxes":
            return {}
        if self.kind == "regress":
            return {"linear": lambda: Ridge(alpha=1.0), "mean": DummyRegressor}
        return {"logreg": logreg}

    # ------------------------------------------------------------ boxes
    def position_majority(self) -> torch.Tensor:
        """``[box_len - 1]``: the most common target token at each position over the fit
        scenes (the boxes baseline)."""
        if not hasattr(self, "_pos_majority"):
            _, y = self.fit_examples()
            targets = y[:, 1:]
            self._pos_majority = torch.tensor(
                [int(np.bincount(col).argmax()) for col in targets.T], dtype=torch.long
            )
        return self._pos_majority

    def baseline_outputs(self, name: str, batches: list[Batch]) -> list[torch.Tensor]:
        if self.params.output != "boxes":
            return super().baseline_outputs(name, batches)
        maj = self.position_majority()
        return [
            torch.nn.functional.one_hot(maj.expand(b.targets.shape[0], -1), self.vocab_size).float()
            for b in batches
        ]

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        if self.params.output != "boxes":
            return super().score(outputs, batches)
        maj = self.position_majority()

        def rates(preds: list[torch.Tensor]) -> dict[str, float]:
            right = total = rows = rows_right = 0
            for pred, b in zip(preds, batches):
                ok = (pred == b.targets) | ~b.loss_mask
                right += int(((pred == b.targets) & b.loss_mask).sum())
                total += int(b.loss_mask.sum())
                rows += b.targets.shape[0]
                rows_right += int(ok.all(1).sum())
            return {"token_accuracy": right / max(total, 1), "exact_match": rows_right / rows}

        model = rates([o.argmax(-1) for o in outputs])
        base = rates([maj.expand(b.targets.shape[0], -1) for b in batches])
        return {**model, "baselines": {"majority": base}}
