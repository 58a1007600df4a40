"""Classifying a user's folder of WAV clips (``audio_folder``), read with the standard
library's :mod:`wave`.

``path`` holds one subfolder per class (its name is the class; classes in sorted order),
each with ``.wav`` files (any case) at any depth below it; links out of the folder are
refused naming them, linked folders inside it are not descended (the layout, the hashed
split, the duplicate rule and the ``folder`` ood are :mod:`anyformer.tasks.image_folder`'s).

Every clip must be uncompressed PCM of 8 bits (unsigned, offset 128), 16 or 32 bits
(signed little-endian), scaled to ``[-1, 1)`` by ``2^(bits-1)``; several channels are
averaged to mono. A clip at another rate than ``sample_rate`` is resampled by **linear
interpolation** between neighbouring samples (``resample: true``; no anti-alias filter,
so content above the new Nyquist frequency folds back when downsampling) or refused
(``resample: false``). Each clip is then cut to its first ``duration`` seconds or padded
with zeros after its end: ``inputs [n_samples]``, ``n_samples = round(duration *
sample_rate)``, read by the ``spectrogram_patches`` embedder at that rate.

``ood``: ``noise`` gives the ``id`` clips with white noise at ``ood_snr`` dB against
each clip's own power; ``folder`` every clip of ``ood_path``.

Refused with :class:`~anyformer.errors.SpecError` (exit 2), naming the file and what is
wrong: not a RIFF/WAVE file or not PCM, 24-bit samples, no frames, fewer frames than the
header says (truncated), another rate with ``resample: false``, a file over
:data:`MAX_FILE_BYTES`; and for the folder: missing, fewer than two classes, a class or
split without clips, more than ``max_clips`` clips. Baselines: logistic regression on
each log-mel band's mean and standard deviation over the clip (``tones``' features) and
the majority class.
"""

from __future__ import annotations

import functools
import wave
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from anyformer.errors import SpecError
from anyformer.nn.spectrogram import log_mel, mel_filterbank
from anyformer.registry import Capabilities, register
from anyformer.tasks.audio import _scaled_logreg, add_noise
from anyformer.tasks.base import SPLIT_IDS, rng_for
from anyformer.tasks.image_folder import HASH_BUCKETS, list_images, path_bucket
from anyformer.tasks.supervised import Examples, SupervisedTask, eval_order, take_rows

EXTENSIONS = frozenset({".wav"})
MAX_FILE_BYTES = 100_000_000
FIT_CLIPS = 5000
#: PCM sample widths read (bytes): numpy dtype and the offset of unsigned 8-bit samples.
WIDTHS = {1: ("<u1", 128.0), 2: ("<i2", 0.0), 4: ("<i4", 0.0)}


class AudioFolderParams(BaseModel):
    """Parameters of ``audio_folder`` (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str
    sample_rate: int = Field(8000, ge=1000, le=96_000)
    duration: float = Field(1.0, gt=0.0, le=60.0)
    resample: bool = True
    id_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    ood: Literal["noise", "folder"] = "noise"
    ood_snr: float = Field(0.0, ge=-60.0, le=60.0)
    ood_path: str | None = None
    max_clips: int = Field(100_000, ge=2, le=100_000)

    @model_validator(mode="after")
    def _ood(self) -> AudioFolderParams:
        if (self.ood == "folder") != (self.ood_path is not None):
            raise ValueError("ood_path is needed with ood='folder', and only then")
        if round(self.duration * self.sample_rate) < 256:
            raise ValueError(
                f"duration={self.duration} s at sample_rate={self.sample_rate} gives fewer than "
                "256 samples (one spectrogram frame); use a longer duration"
            )
        return self


def resample_linear(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """``x`` at ``rate`` Hz read at ``target`` Hz by linear interpolation: sample ``j`` of
    the result is ``x`` at time ``j / target`` s (``round(len(x) * target / rate)``
    samples)."""
    if rate == target:
        return x
    n = max(1, round(len(x) * target / rate))
    return np.interp(np.arange(n) * (rate / target), np.arange(len(x)), x)


def read_wav(path: Path, sample_rate: int, resample: bool) -> np.ndarray:
    """One clip as float64 mono ``[n]`` at ``sample_rate`` Hz (see the module docstring)."""
    if path.stat().st_size > MAX_FILE_BYTES:
        raise SpecError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, frames = (w.getnchannels(), w.getsampwidth(),
                                             w.getframerate(), w.getnframes())  # fmt: skip
            data = w.readframes(frames)
    except (wave.Error, EOFError) as exc:
        raise SpecError(f"{path}: not a PCM WAV file ({exc})") from None
    if width not in WIDTHS:
        raise SpecError(f"{path}: {8 * width}-bit samples; 8, 16 or 32-bit PCM is read")
    if frames == 0 or not data:
        raise SpecError(f"{path}: no audio frames")
    got = len(data) // (width * channels)
    if got < frames:
        raise SpecError(f"{path}: truncated: {got} of the {frames} frames the header says")
    if rate != sample_rate and not resample:
        raise SpecError(
            f"{path}: sampled at {rate} Hz, not task.sample_rate={sample_rate}; resample the "
            "clip or set task.resample=true (linear interpolation)"
        )
    dtype, offset = WIDTHS[width]
    samples = np.frombuffer(data[: got * width * channels], dtype=dtype).astype(np.float64)
    mono = ((samples - offset) / 2.0 ** (8 * width - 1)).reshape(got, channels).mean(1)
    return resample_linear(mono, rate, sample_rate)


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` cut to its first ``n`` samples or padded with zeros to ``n``, float32."""
    out = np.zeros(n, dtype=np.float32)
    out[: min(n, len(x))] = x[:n]
    return out


@functools.lru_cache(maxsize=8)
def load_clips(
    folder: str, field: str, sample_rate: int, n_samples: int, resample: bool, max_clips: int
) -> tuple[tuple[str, ...], tuple[str, ...], np.ndarray, np.ndarray]:
    """``(classes, relative paths, clips [N, n_samples], class names per clip)``."""
    classes, found = list_images(folder, field, max_clips, EXTENSIONS, "clips")
    if not found:
        raise SpecError(f"task.{field}={folder!r} holds no .wav clip in class subfolders")
    root = Path(folder).resolve()
    clips = np.stack(
        [fit_length(read_wav(root / rel, sample_rate, resample), n_samples) for rel, _ in found]
    )
    return tuple(classes), tuple(r for r, _ in found), clips, np.array([c for _, c in found])


@register(
    "task",
    "audio_folder",
    paper=None,
    summary="a folder of class subfolders of PCM WAV clips (stdlib wave; mono, resampled "
    "linearly); split by path hash; ood: noise or another folder; logreg on log-mel stats",
    params=AudioFolderParams,
    caps=Capabilities(),
)
class AudioFolder(SupervisedTask):
    """Classify a folder's clips (see the module docstring). Metrics: ``accuracy`` and
    ``baselines.{logreg,majority}.accuracy``."""

    input_kind: ClassVar[str] = "audio"
    params: AudioFolderParams

    def __init__(self, params: AudioFolderParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        p = params
        self.n_samples = round(p.duration * p.sample_rate)
        classes, paths, clips, names = load_clips(p.path, "path", p.sample_rate, self.n_samples,
                                                  p.resample, p.max_clips)  # fmt: skip
        if len(classes) < 2:
            raise SpecError(
                f"task.path={p.path!r} has {len(classes)} class subfolder(s); at least 2 needed"
            )
        empty = [c for c in classes if c not in set(names.tolist())]
        if empty:
            raise SpecError(f"task.path={p.path!r}: class folder(s) {empty} hold no clip")
        index = {c: i for i, c in enumerate(classes)}
        cut = round(p.id_fraction * HASH_BUCKETS)
        first: dict[bytes, bool] = {}
        is_id = np.array([first.setdefault(c.tobytes(), path_bucket(rel) < cut)
                          for rel, c in zip(paths, clips)])  # fmt: skip
        self.classes, self.paths, self.clips = classes, paths, clips
        self.labels = np.array([index[c] for c in names], dtype=np.int64)
        self.id_rows, self.train_rows = np.flatnonzero(is_id), np.flatnonzero(~is_id)
        for split, rows in (("id", self.id_rows), ("training", self.train_rows)):
            if len(rows) == 0:
                raise SpecError(
                    f"task.path={p.path!r}: the {split} split is empty ({len(paths)} clips, "
                    f"id_fraction={p.id_fraction}); add clips or change task.id_fraction"
                )
        self.n_classes = len(classes)
        if p.ood == "noise":
            rng = rng_for(self.seed, SPLIT_IDS["ood"], 1)
            ood = [add_noise(c.astype(np.float64), float(np.mean(c.astype(np.float64) ** 2))
                             or 1e-6, p.ood_snr, rng) for c in clips[self.id_rows]]  # fmt: skip
            self.ood_clips = np.stack(ood).astype(np.float32)
            self.ood_labels = self.labels[self.id_rows]
        else:
            ood_classes, _, ood_clips, ood_names = load_clips(
                p.ood_path or "", "ood_path", p.sample_rate, self.n_samples, p.resample,
                p.max_clips,
            )  # fmt: skip
            unknown = sorted(set(ood_classes) - set(classes))
            if unknown:
                raise SpecError(
                    f"task.ood_path={p.ood_path!r}: classes {unknown} are not classes of "
                    f"task.path (valid: {', '.join(classes)})"
                )
            self.ood_clips = ood_clips
            self.ood_labels = np.array([index[c] for c in ood_names], dtype=np.int64)

    def class_labels(self) -> tuple[str, ...]:
        return tuple(self.classes)

    def model_io(self) -> dict[str, Any]:
        return {"input_shape": [self.n_samples],
                "embedder": {"name": "spectrogram_patches", "sample_rate": self.params.sample_rate},
                "head": "classify", "n_outputs": self.n_classes}  # fmt: skip

    def max_seq_len(self) -> int:
        return self.n_samples

    def train_examples(self, step: int, n: int) -> Examples:
        pick = take_rows(rng_for(self.seed, SPLIT_IDS["train"], step), len(self.train_rows), n)
        rows = self.train_rows[pick]
        return self.clips[rows], self.labels[rows]

    def eval_examples(self, split: str, size: int) -> Examples:
        if split == "id":
            x, y = self.clips[self.id_rows], self.labels[self.id_rows]
        else:
            x, y = self.ood_clips, self.ood_labels
        order = eval_order(self.seed, split, len(y), size)
        return x[order], y[order]

    def fit_examples(self) -> Examples:
        rows = self.train_rows
        if len(rows) > FIT_CLIPS:
            rows = np.sort(rng_for(self.seed, 3).choice(rows, FIT_CLIPS, replace=False))
        return self.clips[rows], self.labels[rows]

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """Each log-mel band's mean and standard deviation over the clip's frames (32 HTK
        bands, 256-sample frames, hop 128: the embedder's defaults)."""
        fb = mel_filterbank(256, 32, self.params.sample_rate)
        spec = log_mel(torch.from_numpy(np.asarray(inputs, dtype=np.float32)), fb, 256, 128)
        return torch.cat([spec.mean(1), spec.std(1)], 1).double().numpy()

    def baseline_estimators(self) -> dict[str, Callable[[], Any]]:
        if len(np.unique(self.labels[self.train_rows])) < 2:
            return {}
        return {"logreg": _scaled_logreg}
