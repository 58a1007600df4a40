"""Audio tasks generated offline: ``tones`` (classify synthetic sound events) and ``dtmf``
(transcribe sequences of DTMF digits with CTC).

Every clip is a waveform of ``duration`` seconds at 8 kHz (float32 ``[n_samples]``), drawn
from numpy generators fixed by ``(seed, split, step)``: training clips are fresh every
step, the ``id`` and ``ood`` clips fixed per split. Events have a random onset, duration,
pitch and signal-to-noise ratio (white noise over the whole clip; SNR measured against
the event's own power), so no clip repeats across splits (continuous draws from
independent streams). Both tasks read waveforms through an ``audio`` embedder
(``spectrogram_patches``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from anyformer.nn.spectrogram import log_mel, mel_filterbank
from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import SPLIT_IDS, Batch, Task, rng_for
from anyformer.tasks.supervised import EVAL_BATCH_ROWS, Examples, SupervisedTask

SAMPLE_RATE = 8000
#: The stream of the examples the ``tones`` baselines are fitted on (not a split's).
FIT_STREAM = 7


def _envelope(n: int, ramp: int) -> np.ndarray:
    """1 with raised-cosine ramps of ``ramp`` samples at both ends (no clicks)."""
    env = np.ones(n)
    r = min(ramp, n // 2)
    if r:
        up = 0.5 - 0.5 * np.cos(np.pi * np.arange(r) / r)
        env[:r], env[n - r :] = up, up[::-1]
    return env


def add_noise(clip: np.ndarray, event_power: float, snr_db: float, rng: np.random.Generator):
    """``clip`` plus white noise of power ``event_power / 10^(snr_db / 10)``."""
    sigma = math.sqrt(event_power / 10 ** (snr_db / 10))
    return clip + rng.normal(0.0, sigma, clip.shape)


# --------------------------------------------------------------------------- tones
TONE_CLASSES = ("up_chirp", "down_chirp", "pure_tone", "harmonic_stack", "noise_burst",
                "click_train")  # fmt: skip


class TonesParams(BaseModel):
    """Parameters of ``tones``: clip ``duration`` (s); event durations in
    ``[min_event, max_event]`` s; pitch (the chirps' start or end, the tones' and stacks'
    fundamental, ten times the click rate, the noise band's centre) in ``[min_pitch,
    max_pitch]`` Hz; SNR in ``[min_snr, max_snr]`` dB. ``ood``: ``snr`` draws the SNR
    from ``[ood_min_snr, ood_max_snr]`` (lower), ``pitch`` the pitch from
    ``[ood_min_pitch, ood_max_pitch]`` (unseen, higher)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    duration: float = Field(0.5, gt=0.05, le=10.0)
    min_event: float = Field(0.15, gt=0.0)
    max_event: float = Field(0.4, gt=0.0)
    min_pitch: float = Field(150.0, gt=0.0)
    max_pitch: float = Field(900.0, gt=0.0)
    min_snr: float = Field(0.0, ge=-60.0, le=60.0)
    max_snr: float = Field(20.0, ge=-60.0, le=60.0)
    ood: Literal["snr", "pitch"] = "snr"
    ood_min_snr: float = Field(-12.0, ge=-60.0, le=60.0)
    ood_max_snr: float = Field(-6.0, ge=-60.0, le=60.0)
    ood_min_pitch: float = Field(1000.0, gt=0.0)
    ood_max_pitch: float = Field(1300.0, gt=0.0)

    @model_validator(mode="after")
    def _ranges(self) -> TonesParams:
        for lo, hi in (("min_event", "max_event"), ("min_pitch", "max_pitch"),
                       ("min_snr", "max_snr"), ("ood_min_snr", "ood_max_snr"),
                       ("ood_min_pitch", "ood_max_pitch")):  # fmt: skip
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo}={getattr(self, lo)} must be <= {hi}={getattr(self, hi)}")
        if self.max_event > self.duration:
            raise ValueError(f"max_event={self.max_event} must be <= duration={self.duration}")
        if self.max_pitch * 3 > SAMPLE_RATE / 2 or self.ood_max_pitch * 3 > SAMPLE_RATE / 2:
            raise ValueError(
                f"max_pitch and ood_max_pitch must be <= {SAMPLE_RATE / 6:g} Hz (chirps rise "
                f"to 3x the pitch, below the Nyquist frequency {SAMPLE_RATE / 2:g} Hz)"
            )
        return self


def tone_event(kind: int, n: int, pitch: float, rng: np.random.Generator) -> np.ndarray:
    """One event of class ``TONE_CLASSES[kind]``, ``n`` samples, at ``pitch`` Hz."""
    t = np.arange(n) / SAMPLE_RATE
    dur = n / SAMPLE_RATE
    phase = rng.uniform(0, 2 * np.pi)
    name = TONE_CLASSES[kind]
    if name in ("up_chirp", "down_chirp"):
        ratio = rng.uniform(1.5, 3.0)
        f0, f1 = (pitch, pitch * ratio) if name == "up_chirp" else (pitch * ratio, pitch)
        inst = f0 * t + (f1 - f0) * t**2 / (2 * dur)  # integral of the linear sweep
        x = np.sin(2 * np.pi * inst + phase)
    elif name == "pure_tone":
        x = np.sin(2 * np.pi * pitch * t + phase)
    elif name == "harmonic_stack":
        harmonics = [h for h in range(1, int(rng.integers(3, 7))) if h * pitch < SAMPLE_RATE / 2]
        x = sum(np.sin(2 * np.pi * h * pitch * t + phase * h) / h for h in harmonics)
    elif name == "noise_burst":  # band-pass noise around the pitch (FFT-domain band)
        spec = np.fft.rfft(rng.normal(size=n))
        freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        spec[np.abs(freqs - pitch) > pitch * 0.5] = 0
        x = np.fft.irfft(spec, n)
    else:  # click_train: a click every 10 / pitch seconds
        x = np.zeros(n)
        period = max(2, int(SAMPLE_RATE * 10 / pitch))
        x[int(rng.integers(0, period)) :: period] = 1.0
    return np.asarray(x, dtype=np.float64) * _envelope(n, int(0.01 * SAMPLE_RATE))


@register(
    "task",
    "tones",
    paper=None,
    summary="classify synthetic sound events (chirps up/down, tones, harmonic stacks, noise "
    "bursts, click trains) in noise; ood: lower SNR or unseen pitch; logreg on log-mel stats",
    params=TonesParams,
    caps=Capabilities(),
)
class Tones(SupervisedTask):
    """Classify a clip by the sound event in it (6 classes, :data:`TONE_CLASSES`) at a
    random onset, duration, pitch and SNR. Metrics: ``accuracy`` and
    ``baselines.{logreg,majority}.accuracy``: logistic regression on each log-mel band's
    mean and standard deviation over time (the clip's spectrum, no time order: it cannot
    tell an up-chirp from a down-chirp) and the most common training class."""

    input_kind: ClassVar[str] = "audio"
    n_classes = len(TONE_CLASSES)
    params: TonesParams
    N_FIT: ClassVar[int] = 1500

    def __init__(self, params: TonesParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.n_samples = int(round(params.duration * SAMPLE_RATE))

    def model_io(self) -> dict[str, Any]:
        return {"input_shape": [self.n_samples], "embedder": "spectrogram_patches",
                "head": "classify", "n_outputs": self.n_classes}  # fmt: skip

    def max_seq_len(self) -> int:
        return self.n_samples

    def class_labels(self) -> tuple[str, ...]:
        return TONE_CLASSES

    def draw(self, n: int, rng: np.random.Generator, split: str) -> Examples:
        """``n`` clips ``[n, n_samples]`` and their classes for ``split``'s distribution."""
        p = self.params
        pitch_range = (p.min_pitch, p.max_pitch)
        snr_range = (p.min_snr, p.max_snr)
        if split == "ood" and p.ood == "pitch":
            pitch_range = (p.ood_min_pitch, p.ood_max_pitch)
        elif split == "ood":
            snr_range = (p.ood_min_snr, p.ood_max_snr)
        x = np.zeros((n, self.n_samples), dtype=np.float32)
        y = rng.integers(0, self.n_classes, n)
        for i in range(n):
            length = int(rng.uniform(p.min_event, p.max_event) * SAMPLE_RATE)
            start = int(rng.integers(0, self.n_samples - length + 1))
            pitch = math.exp(rng.uniform(math.log(pitch_range[0]), math.log(pitch_range[1])))
            event = tone_event(int(y[i]), length, pitch, rng)
            power = float(np.mean(event**2)) or 1.0
            clip = np.zeros(self.n_samples)
            clip[start : start + length] = event
            clip = add_noise(clip, power, rng.uniform(*snr_range), rng)
            x[i] = clip / (np.abs(clip).max() + 1e-9) * rng.uniform(0.3, 1.0)
        return x, y.astype(np.int64)

    def train_examples(self, step: int, n: int) -> Examples:
        return self.draw(n, rng_for(self.seed, SPLIT_IDS["train"], step), "train")

    def eval_examples(self, split: str, size: int) -> Examples:
        return self.draw(size, rng_for(self.seed, SPLIT_IDS[split], 0), split)

    def fit_examples(self) -> Examples:
        return self.draw(self.N_FIT, rng_for(self.seed, FIT_STREAM, 0), "train")

    def features(self, inputs: np.ndarray) -> np.ndarray:
        """Each log-mel band's mean and standard deviation over the clip's frames (32
        HTK bands, 256-sample frames, hop 128: the embedder's defaults)."""
        fb = mel_filterbank(256, 32, SAMPLE_RATE)
        spec = log_mel(torch.from_numpy(np.asarray(inputs, dtype=np.float32)), fb, 256, 128)
        return torch.cat([spec.mean(1), spec.std(1)], 1).double().numpy()

    def baseline_estimators(self) -> dict[str, Callable[[], Any]]:
        return {"logreg": _scaled_logreg}


def _scaled_logreg() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=500, C=1.0))


# --------------------------------------------------------------------------- dtmf
#: DTMF row (low) and column (high) frequencies in Hz; digit d is the pair of ``KEYPAD``.
LOW, HIGH = (697.0, 770.0, 852.0, 941.0), (1209.0, 1336.0, 1477.0)
KEYPAD = {1: (0, 0), 2: (0, 1), 3: (0, 2), 4: (1, 0), 5: (1, 1), 6: (1, 2), 7: (2, 0),
          8: (2, 1), 9: (2, 2), 0: (3, 1)}  # fmt: skip
#: CTC class ids: 0 is the blank, digit d is d + 1.
BLANK = 0


class DTMFParams(BaseModel):
    """Parameters of ``dtmf``: clips of ``duration`` seconds holding ``min_len..max_len``
    digits (``ood_min_len..ood_max_len`` in ``ood`` when ``ood`` is ``length``), each a
    DTMF tone pair of ``min_tone..max_tone`` seconds after a gap of ``min_gap..max_gap``
    seconds, in white noise of ``min_snr..max_snr`` dB (``ood_min_snr..ood_max_snr`` when
    ``ood`` is ``snr``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    duration: float = Field(1.2, gt=0.1, le=20.0)
    min_len: int = Field(1, ge=1, le=64)
    max_len: int = Field(4, ge=1, le=64)
    ood: Literal["length", "snr"] = "length"
    ood_min_len: int = Field(5, ge=1, le=64)
    ood_max_len: int = Field(6, ge=1, le=64)
    min_tone: float = Field(0.05, gt=0.0)
    max_tone: float = Field(0.09, gt=0.0)
    min_gap: float = Field(0.04, gt=0.0)
    max_gap: float = Field(0.08, gt=0.0)
    min_snr: float = Field(0.0, ge=-60.0, le=60.0)
    max_snr: float = Field(20.0, ge=-60.0, le=60.0)
    ood_min_snr: float = Field(-10.0, ge=-60.0, le=60.0)
    ood_max_snr: float = Field(-5.0, ge=-60.0, le=60.0)

    @model_validator(mode="after")
    def _ranges(self) -> DTMFParams:
        for lo, hi in (("min_len", "max_len"), ("ood_min_len", "ood_max_len"),
                       ("min_tone", "max_tone"), ("min_gap", "max_gap"),
                       ("min_snr", "max_snr"), ("ood_min_snr", "ood_max_snr")):  # fmt: skip
            if getattr(self, lo) > getattr(self, hi):
                raise ValueError(f"{lo}={getattr(self, lo)} must be <= {hi}={getattr(self, hi)}")
        longest = max(self.max_len, self.ood_max_len) * (self.max_tone + self.max_gap)
        if longest > self.duration:
            raise ValueError(
                f"duration={self.duration} s cannot hold {max(self.max_len, self.ood_max_len)} "
                f"digits of max_tone + max_gap = {self.max_tone + self.max_gap:g} s; raise "
                f"duration to at least {longest:g}"
            )
        return self


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance between two label sequences (unit costs)."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def greedy_ctc(ids: torch.Tensor, blank: int = BLANK) -> list[list[int]]:
    """Best-path CTC decoding of ``ids [B, T]`` (the argmax class per frame): collapse
    repeated ids, then drop blanks (Graves et al., 2006)."""
    out = []
    for row in ids.tolist():
        seq, last = [], None
        for c in row:
            if c != last and c != blank:
                seq.append(c)
            last = c
        out.append(seq)
    return out


def label_error_rate(pred: list[list[int]], ref: list[list[int]]) -> float:
    """Summed edit distances over summed reference lengths."""
    return sum(map(edit_distance, pred, ref)) / max(sum(len(r) for r in ref), 1)


def goertzel_decode(wave: np.ndarray, frame: int = 256, hop: int = 128, share: float = 0.2):
    """A classic DTMF detector: per Hann frame, the share of the frame's energy at each
    of the 7 DTMF frequencies (a single-bin DFT, Goertzel's quantity); a frame holds a
    digit when the strongest low and the strongest high frequency each carry at least
    ``share`` of it and each beats its group's runner-up 4x; runs of frames with the
    same digit give one digit. Returns the digits as CTC class ids (digit + 1)."""
    w = np.hanning(frame)
    n = np.arange(frame)
    freqs = np.array(LOW + HIGH)
    basis = np.exp(-2j * np.pi * freqs[:, None] * n[None] / SAMPLE_RATE) * w  # [7, frame]
    norm = 2 * np.sum(w**2) / np.sum(w) ** 2
    starts = range(0, max(len(wave) - frame, 0) + 1, hop)
    frames = np.stack([wave[s : s + frame] for s in starts])  # [F, frame]
    energy = np.sum((frames * w) ** 2, 1) + 1e-12
    frac = norm * np.abs(frames @ basis.T) ** 2 / energy[:, None]  # [F, 7]
    low, high = frac[:, :4], frac[:, 4:]
    lo_i, hi_i = low.argmax(1), high.argmax(1)
    lo_s, hi_s = np.sort(low, 1), np.sort(high, 1)
    ok = (lo_s[:, -1] >= share) & (hi_s[:, -1] >= share)
    ok &= (lo_s[:, -1] >= 4 * lo_s[:, -2]) & (hi_s[:, -1] >= 4 * hi_s[:, -2])
    pair_to_digit = {v: d for d, v in KEYPAD.items()}
    labels = [pair_to_digit.get((int(a), int(b)), -1) + 1 if good else BLANK
              for a, b, good in zip(lo_i, hi_i, ok)]  # fmt: skip
    return greedy_ctc(torch.tensor([labels]))[0]


@register(
    "task",
    "dtmf",
    paper=Paper(
        "Connectionist Temporal Classification: Labelling Unsegmented Sequence Data with "
        "Recurrent Neural Networks",
        2006,
        "Graves et al.",
    ),
    summary="transcribe DTMF digit sequences (random durations, gaps, noise) with CTC; ood: "
    "longer sequences or lower SNR; baseline: a Goertzel detector",
    params=DTMFParams,
    caps=Capabilities(),
)
class DTMF(Task):
    """Transcribe the DTMF digits of a clip: ``inputs [B, n_samples]``, ``targets [B, L]``
    (class ids digit + 1, padded with 0 after each row's length), ``loss_mask [B, L]`` True
    at real labels. The model writes per-token class scores (``token_classify`` with 11
    outputs: blank + 10 digits) and trains with ``ctc``. Metrics: ``label_error_rate``
    (greedy CTC decoding, summed edit distance over summed reference length) and
    ``exact_match`` (whole sequences right), beside ``baselines.goertzel`` (a frame-wise
    Goertzel detector with thresholds, :func:`goertzel_decode`) and ``baselines.empty``
    (predicting nothing: ``label_error_rate`` 1)."""

    default_objective: ClassVar[str] = "ctc"
    headline: ClassVar[str] = "label_error_rate"
    higher_is_better: ClassVar[bool] = False
    disjoint_splits: ClassVar[bool] = True
    input_kind: ClassVar[str] = "audio"
    params: DTMFParams

    def __init__(self, params: DTMFParams, seed: int = 0) -> None:
        super().__init__(params, seed)
        self.n_samples = int(round(params.duration * SAMPLE_RATE))

    def model_io(self) -> dict[str, Any]:
        return {"input_shape": [self.n_samples],
                "embedder": {"name": "spectrogram_patches", "patch_time": 2, "patch_freq": 32,
                             "cls": False},
                "head": "token_classify", "n_outputs": 1 + len(KEYPAD)}  # fmt: skip

    def max_seq_len(self) -> int:
        return self.n_samples

    def draw(self, n: int, rng: np.random.Generator, split: str) -> Batch:
        p = self.params
        lengths = (p.min_len, p.max_len)
        snr = (p.min_snr, p.max_snr)
        if split == "ood" and p.ood == "length":
            lengths = (p.ood_min_len, p.ood_max_len)
        elif split == "ood":
            snr = (p.ood_min_snr, p.ood_max_snr)
        x = np.zeros((n, self.n_samples), dtype=np.float32)
        width = max(p.max_len, p.ood_max_len)
        y = np.zeros((n, width), dtype=np.int64)
        t_all = np.arange(self.n_samples) / SAMPLE_RATE
        for i in range(n):
            k = int(rng.integers(lengths[0], lengths[1] + 1))
            digits = rng.integers(0, 10, k)
            tones = rng.uniform(p.min_tone, p.max_tone, k)
            gaps = rng.uniform(p.min_gap, p.max_gap, k)
            slack = p.duration - float(np.sum(tones + gaps))
            t = rng.uniform(0, max(slack, 0.0))
            clip = np.zeros(self.n_samples)
            for d, dur, gap in zip(digits, tones, gaps):
                t += gap
                a, b = int(t * SAMPLE_RATE), int((t + dur) * SAMPLE_RATE)
                lo, hi = KEYPAD[int(d)]
                seg = t_all[: b - a]
                clip[a:b] = (np.sin(2 * np.pi * LOW[lo] * seg + rng.uniform(0, 2 * np.pi))
                             + np.sin(2 * np.pi * HIGH[hi] * seg + rng.uniform(0, 2 * np.pi))
                             ) * _envelope(b - a, int(0.005 * SAMPLE_RATE))  # fmt: skip
                t += dur
            clip = add_noise(clip, 1.0, rng.uniform(*snr), rng)  # a tone pair has power 1
            x[i] = clip / (np.abs(clip).max() + 1e-9) * rng.uniform(0.3, 1.0)
            y[i, :k] = digits + 1
        targets = torch.from_numpy(y)
        return Batch(torch.from_numpy(x), targets, targets != BLANK)

    def train_batch(self, step: int, batch_size: int) -> Batch:
        return self.draw(batch_size, rng_for(self.seed, SPLIT_IDS["train"], step), "train")

    def make_eval_set(self, split: str, size: int) -> list[Batch]:
        if split not in self.splits:
            raise ValueError(f"unknown split '{split}' (valid: {', '.join(self.splits)})")
        if size < 1:
            raise ValueError(f"eval size={size} must be >= 1")
        rng = rng_for(self.seed, SPLIT_IDS[split], 0)
        return [self.draw(min(EVAL_BATCH_ROWS, size - i), rng, split)
                for i in range(0, size, EVAL_BATCH_ROWS)]  # fmt: skip

    @staticmethod
    def references(batches: list[Batch]) -> list[list[int]]:
        return [row[m].tolist() for b in batches for row, m in zip(b.targets, b.loss_mask)]

    def score(self, outputs: list[torch.Tensor], batches: list[Batch]) -> dict[str, Any]:
        ref = self.references(batches)
        pred = [s for o in outputs for s in greedy_ctc(o.argmax(-1))]
        goertzel = [goertzel_decode(row.double().numpy()) for b in batches for row in b.inputs]

        def metrics(p: list[list[int]]) -> dict[str, float]:
            exact = sum(a == b for a, b in zip(p, ref)) / max(len(ref), 1)
            return {"label_error_rate": label_error_rate(p, ref), "exact_match": exact}

        return {**metrics(pred), "examples": len(ref),
                "baselines": {"goertzel": metrics(goertzel), "empty": metrics([[] for _ in ref])}}  # fmt: skip
