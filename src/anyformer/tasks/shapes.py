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
- ``boxes``: the objects' boxes written as tokens (GiT's "everything is tokens"
  interface, Wang et al., 2024, at toy scale) for an encoder–decoder: the image is the
  encoder's source (``extras['source']``, read by an image embedder, ``patches`` unless
  the model names another), the decoder writes ``BOS``, then per object, in raster order
  of its top-left corner, ``x0 y0 x1 y1`` (pixel bounds, ``x1``/``y1`` exclusive), each a
  quantized coordinate token, then ``EOS``, padded with ``PAD``; an ``lm`` head reads
  them out. Coordinates ``0 .. size`` are quantized to ``coord_bins`` levels
  (``q = round(v * (bins - 1) / size)``, read back as ``q * size / (bins - 1)``, so a
  round trip is off by at most ``size / (2 * (bins - 1))`` pixels); the default,
  ``size + 1`` bins, is exact. :meth:`Shapes.model_io` asks for ``model.kind:
  encoder_decoder`` (the run refuses other kinds, naming them). Metrics, from the
  argmax of the outputs the run scores (teacher-forced: each position sees the true
  tokens before it; :func:`greedy_outputs` gives the outputs of greedy decoding from
  ``BOS`` instead, for the same scoring): ``exact_match`` (the whole sequence up to and
  including ``EOS``; the same under both decodings, since a sequence right under teacher
  forcing is what greedy decoding writes), ``token_accuracy``, ``count_accuracy`` (the
  number of boxes read before the first non-coordinate token) and ``mean_iou`` (boxes
  matched one to one to the true ones by the assignment of highest total IoU; the mean
  IoU of the matched pairs). Baselines: ``majority`` (the most common training count,
  each of its boxes the mean box of its place in training scenes of that count) and
  ``components`` (not learned: the bounding boxes of the image's 8-connected non-black
  regions, ``scipy.ndimage.label``; since objects never touch this is exact up to
  quantization, an upper reference rather than a bar to clear).

Held out by construction: an image whose SHA-256 bucket (of its bytes, out of 10,000)
is below ``id_fraction * 10000`` belongs to ``id`` and is never a training image;
``ood`` images have more objects than any training image. Baselines (fitted on 2,000
training scenes): logistic regression (or least squares for a regressed count) on the
pixels, the majority class (or the mean); ``boxes`` has its own (above).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, range_validators, rng_for
from anyformer.tasks.images import image_io, image_seq_len, logreg
from anyformer.tasks.plot_data import BoxesOnImages, PlotData, to_hwc
from anyformer.tasks.supervised import Examples, SupervisedTask

GIT = Paper(
    "GiT: Towards Generalist Vision Transformer through Universal Language Interface",
    2024,
    "Wang et al.",
)
COLOURS = np.eye(3, dtype=np.float32)
N_CLASSES = 6
PAD, BOS, EOS = 0, 1, 2
#: The token of coordinate level 0 (``boxes``): levels ``0 .. coord_bins - 1`` follow.
COORD0 = 3
#: Training-distribution scenes the baselines are fitted on.
FIT_SCENES = 2000
HASH_BUCKETS = 10_000
#: Examples the boxes plot shows per split.
PLOT_ROWS = 8
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
    coord_bins: int | None = Field(None, ge=2, le=65)

    _max, _ood, _ood_max = range_validators(OBJECT_FIELDS, why="ood scenes hold more objects")

    @model_validator(mode="after")
    def _fits(self) -> ShapesParams:
        if self.count_as != "classify" and self.output != "count":
            raise ValueError(f"count_as={self.count_as!r} applies only with output='count'")
        if self.coord_bins is not None and self.output != "boxes":
            raise ValueError(f"coord_bins={self.coord_bins} applies only with output='boxes'")
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


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU ``[n, m]`` of boxes ``a [n, 4]`` and ``b [m, 4]`` written ``x0 y0 x1 y1``
    (ends exclusive); a box with no area overlaps nothing (IoU 0)."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(
        np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None
    )
    h = np.clip(
        np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None
    )
    inter = w * h
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def matched_ious(pred: np.ndarray, true: np.ndarray) -> np.ndarray:
    """The IoUs of the one-to-one matching of ``pred`` to ``true`` boxes (``[n, 4]``,
    ``[m, 4]``) with the highest total IoU (``min(n, m)`` pairs)."""
    from scipy.optimize import linear_sum_assignment

    iou = box_iou(pred, true)
    if iou.size == 0:
        return np.zeros(0)
    rows, cols = linear_sum_assignment(iou, maximize=True)
    return iou[rows, cols]


def component_boxes(image: np.ndarray) -> np.ndarray:
    """The bounding boxes ``[k, 4]`` (``x0 y0 x1 y1``, ends exclusive) of the 8-connected
    non-black regions of an image ``[C, H, W]``, in raster order of their top-left
    corners (the non-learned ``components`` baseline)."""
    from scipy import ndimage

    labels, _ = ndimage.label(np.asarray(image).max(0) > 0, structure=np.ones((3, 3)))
    boxes = [(s[1].start, s[0].start, s[1].stop, s[0].stop) for s in ndimage.find_objects(labels)]
    boxes.sort(key=lambda b: (b[1], b[0]))
    return np.array(boxes, dtype=np.float64).reshape(-1, 4)


def greedy_outputs(model: Any, batches: list[Batch]) -> list[torch.Tensor]:
    """Greedy decoding (cached, from ``BOS``, stopping at ``EOS``) of an encoder–decoder
    on ``shapes`` box batches, written as one-hot outputs aligned with each batch's
    targets (``PAD`` after the decoded sequence), so :meth:`Shapes.score` scores free
    decoding as it scores the teacher-forced outputs of a run."""
    from anyformer.decoding import generate

    outs = []
    for b in batches:
        rows, t = b.targets.shape
        vocab = int(model.spec.vocab_size)
        start = torch.full((rows, 1), BOS, dtype=torch.long)
        source = b.extras["source"]
        with torch.no_grad():
            seq = generate(model, start, t, eos=EOS, source=source)
        seq = torch.as_tensor(seq)[:, 1 : 1 + t]
        ids = torch.full((rows, t), PAD, dtype=torch.long)
        ids[:, : seq.shape[1]] = seq
        outs.append(torch.nn.functional.one_hot(ids, vocab).float())
    return outs


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
    or ``exact_match``/``token_accuracy``/``count_accuracy``/``mean_iou`` (boxes), each
    with ``baselines``.
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
        self.shape = (3, params.size, params.size)
        if params.output == "boxes":
            self.headline, self.default_objective = "exact_match", "causal_lm"
            self.kind = "boxes"
            self.input_kind = "tokens"  # the decoder's; the encoder reads the images

    # ------------------------------------------------------------ io
    @property
    def coord_bins(self) -> int:
        """Coordinate levels of ``boxes``: ``coord_bins``, or ``size + 1`` (exact)."""
        return self.params.coord_bins or self.params.size + 1

    @property
    def vocab_size(self) -> int:
        """``PAD, BOS, EOS`` and the coordinate levels."""
        return COORD0 + self.coord_bins

    @property
    def box_len(self) -> int:
        """Tokens of a box sequence: ``BOS``, 4 per object, ``EOS``."""
        return 2 + 4 * self.params.ood_max_objects

    def class_labels(self) -> tuple[str, ...]:
        """``largest_class``: colour and shape (``class = 3 * shape + colour``); ``count``:
        the number of objects."""
        if self.params.output == "largest_class":
            return tuple(f"{c} {s}" for s in ("rect", "disc") for c in ("red", "green", "blue"))
        return tuple(str(i) for i in range(self.n_classes))

    def model_io(self) -> dict[str, Any]:
        """Classification and count: an image model (:func:`image_io`). Boxes: an
        encoder–decoder (``kind``, which the run requires rather than fills) whose encoder
        reads the images (``patches`` unless the model names another image embedder) and
        whose decoder reads and writes the box tokens with an ``lm`` head."""
        if self.params.output == "boxes":
            return {
                "kind": "encoder_decoder",
                "embedder": "tokens",
                "vocab_size": self.vocab_size,
                "head": "lm",
                "encoder": {"embedder": "patches", "input_shape": list(self.shape)},
            }
        if self.kind == "regress":
            return image_io(self.shape, 1, head="regress")
        return image_io(self.shape, self.n_classes)

    def max_seq_len(self) -> int:
        if self.params.output == "boxes":
            return self.box_len - 1
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
        return np.stack([self.box_tokens(self.boxes_of(o)) for o in objects])

    @staticmethod
    def boxes_of(objects: list[Any]) -> np.ndarray:
        """The pixel boxes ``[n, 4]`` (``x0 y0 x1 y1``, ends exclusive) of a scene's
        objects in raster order of their top-left corners (the canonical order)."""
        boxes = sorted((o[2] for o in objects), key=lambda b: (b[0], b[1]))  # (y0, x0, ...)
        return np.array([(b[1], b[0], b[3], b[2]) for b in boxes], dtype=np.float64).reshape(-1, 4)

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Coordinate levels ``0 .. coord_bins - 1`` of pixel coordinates ``0 .. size``."""
        scale = (self.coord_bins - 1) / self.params.size
        return np.clip(np.rint(np.asarray(values, np.float64) * scale), 0, self.coord_bins - 1)

    def dequantize(self, levels: np.ndarray) -> np.ndarray:
        """Pixel coordinates of coordinate levels (the inverse of :meth:`quantize` up to
        ``size / (2 * (coord_bins - 1))``)."""
        return np.asarray(levels, np.float64) * self.params.size / (self.coord_bins - 1)

    def box_tokens(self, boxes: np.ndarray) -> np.ndarray:
        """``BOS``, ``x0 y0 x1 y1`` per box (in the given order) as coordinate tokens,
        ``EOS``, ``PAD`` up to :attr:`box_len`; boxes beyond the room are left out."""
        room = (self.box_len - 2) // 4
        levels = self.quantize(np.asarray(boxes).reshape(-1, 4)[:room]).astype(np.int64)
        seq = [BOS, *(COORD0 + levels.reshape(-1)).tolist(), EOS]
        return np.array(seq + [PAD] * (self.box_len - len(seq)), dtype=np.int64)

    def decode_boxes(self, tokens: torch.Tensor | np.ndarray) -> np.ndarray:
        """The pixel boxes ``[k, 4]`` of a token sequence: whole groups of four
        coordinate tokens read from the start (a leading ``BOS`` skipped) up to the first
        other token."""
        toks = [int(t) for t in tokens]
        i = 1 if toks and toks[0] == BOS else 0
        end = i
        while end < len(toks) and COORD0 <= toks[end] < self.vocab_size:
            end += 1
        levels = np.array(toks[i : i + (end - i) // 4 * 4], dtype=np.int64) - COORD0
        return self.dequantize(levels).reshape(-1, 4)

    def to_batch(self, x: np.ndarray, y: np.ndarray) -> Batch:
        """Boxes: the images as ``extras['source']``, the decoder's ``inputs`` the box
        sequence without its last token and ``targets`` the next tokens, counted up to
        and including ``EOS``."""
        if self.params.output != "boxes":
            return super().to_batch(x, y)
        seq = torch.from_numpy(y)
        targets = seq[:, 1:]
        mask = (targets != PAD) & (torch.cumsum((seq[:, :-1] == EOS).long(), 1) == 0)
        return Batch(
            inputs=seq[:, :-1].contiguous(),
            targets=targets.contiguous(),
            loss_mask=mask,
            extras={"source": torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))},
        )

    def train_examples(self, step: int, n: int) -> Examples:
        images, objects = self.scenes(rng_for(self.seed, SPLIT_IDS["train"], step), n, "train")
        return images, self.targets_of(objects)

    def eval_examples(self, split: str, size: int) -> Examples:
        images, objects = self.scenes(rng_for(self.seed, SPLIT_IDS[split], 0), size, split)
        return images, self.targets_of(objects)

    def fit_examples(self) -> Examples:
        """:data:`FIT_SCENES` training-distribution scenes (a quarter of them for
        ``boxes``, whose baseline only averages boxes)."""
        n = FIT_SCENES // 4 if self.params.output == "boxes" else FIT_SCENES
        images, objects = self.scenes(rng_for(self.seed, 3, 0), n, "train")
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
    def mean_boxes(self) -> np.ndarray:
        """The ``majority`` baseline's box tokens ``[box_len]``: the most common count of
        the fit scenes, each of its boxes the mean (in levels, rounded) of the boxes at
        that place in fit scenes of that count."""
        if not hasattr(self, "_mean_boxes"):
            _, y = self.fit_examples()
            boxes = [self.decode_boxes(row) for row in y]
            counts = np.bincount([len(b) for b in boxes])
            k = int(counts.argmax())
            same = np.stack([b for b in boxes if len(b) == k]).reshape(-1, k, 4)
            self._mean_boxes = self.box_tokens(self.dequantize(self.quantize(same.mean(0))))
        return self._mean_boxes

    def baseline_boxes(self, name: str, batch: Batch) -> list[np.ndarray]:
        """Each example's boxes by baseline ``name`` (``majority`` or ``components``)."""
        if name == "majority":
            return [self.decode_boxes(self.mean_boxes())] * batch.targets.shape[0]
        if name == "components":
            return [component_boxes(img) for img in batch.extras["source"].numpy()]
        raise ValueError(f"unknown baseline '{name}' (valid: majority, components)")

    def baseline_outputs(self, name: str, batches: list[Batch]) -> list[torch.Tensor]:
        if self.params.output != "boxes":
            return super().baseline_outputs(name, batches)
        outs = []
        for b in batches:
            seqs = np.stack([self.box_tokens(x) for x in self.baseline_boxes(name, b)])
            ids = torch.from_numpy(seqs[:, 1:])
            outs.append(torch.nn.functional.one_hot(ids, self.vocab_size).float())
        return outs

    def box_scores(self, preds: list[torch.Tensor], batches: list[Batch]) -> dict[str, float]:
        """``exact_match``, ``token_accuracy``, ``count_accuracy`` and ``mean_iou`` of
        predicted target tokens ``preds`` (``[B, T]`` each, aligned with the targets)."""
        right = total = rows = exact = counted = 0
        ious: list[np.ndarray] = []
        for pred, b in zip(preds, batches):
            hit = (pred == b.targets) & b.loss_mask
            right += int(hit.sum())
            total += int(b.loss_mask.sum())
            rows += b.targets.shape[0]
            exact += int(((pred == b.targets) | ~b.loss_mask).all(1).sum())
            for p_row, t_row in zip(pred, b.targets):
                got, want = self.decode_boxes(p_row), self.decode_boxes(t_row)
                counted += int(len(got) == len(want))
                ious.append(matched_ious(got, want))
        matched = np.concatenate(ious) if ious else np.zeros(0)
        return {
            "exact_match": exact / max(rows, 1),
            "token_accuracy": right / max(total, 1),
            "count_accuracy": counted / max(rows, 1),
            "mean_iou": float(matched.mean()) if matched.size else 0.0,
        }

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        """Boxes: :meth:`box_scores` of the argmax of ``outputs`` and of each baseline on
        the same examples."""
        if self.params.output != "boxes":
            return super().score(outputs, batches)
        model = self.box_scores([o.argmax(-1) for o in outputs], batches)
        base = {
            name: self.box_scores([o.argmax(-1) for o in self.baseline_outputs(name, batches)],
                                  batches)
            for name in ("majority", "components")
        }  # fmt: skip
        return {**model, "examples": sum(b.targets.shape[0] for b in batches), "baselines": base}

    def plot_data(
        self, split: str, outputs: list[torch.Tensor], batches: list[Batch]
    ) -> PlotData | None:
        """Boxes: the first :data:`PLOT_ROWS` images with their true boxes and the boxes
        read from the argmax of ``outputs`` (a run's are teacher-forced); otherwise as
        :class:`SupervisedTask`."""
        if self.params.output != "boxes":
            return super().plot_data(split, outputs, batches)
        images, true, pred = [], [], []
        for out, b in zip(outputs, batches):
            for img, o, t in zip(b.extras["source"], out.argmax(-1), b.targets):
                if len(images) == PLOT_ROWS:
                    break
                images.append(img.numpy())
                true.append(self.decode_boxes(t))
                pred.append(self.decode_boxes(o))
        return BoxesOnImages(split, to_hwc(np.stack(images)), tuple(true), tuple(pred))
