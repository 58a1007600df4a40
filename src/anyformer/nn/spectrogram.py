"""A log-mel spectrogram front end on ``torch.stft`` (no torchaudio) and SpecAugment masks.

- :func:`mel_filterbank`: triangular filters on the **HTK mel scale**
  ``mel(f) = 2595 log10(1 + f / 700)``: ``n_mels + 2`` points equally spaced in mel between
  ``f_min`` and ``f_max`` are the lower edge, centre and upper edge of each filter; a
  filter rises linearly from 0 at its lower edge to 1 at its centre and falls to 0 at its
  upper edge, read at the STFT bin frequencies ``k sr / n_fft`` (peak 1, no area
  normalisation: HTK's, not Slaney's).
- :func:`log_mel`: a periodic Hann window of ``n_fft`` samples, hop ``hop`` (the signal
  zero-padded by ``n_fft / 2`` on both sides, ``center=True``), the power spectrum
  ``|X|^2``, the filterbank, then ``log(max(mel, floor))``: ``[B, frames, n_mels]`` with
  ``frames = n_samples // hop + 1``.
- :func:`spec_augment_mask`: SpecAugment's time and frequency masks (Park et al., 2019,
  "SpecAugment: A Simple Data Augmentation Method for Automatic Speech Recognition"):
  ``n`` bands of width uniform in ``[0, max_width]`` at uniform offsets per example, drawn
  from a given generator (or torch's global one, which runs seed and checkpoints hold).
"""

from __future__ import annotations

import math

import torch


def hz_to_mel(f: torch.Tensor | float) -> torch.Tensor:
    """The HTK mel value of ``f`` Hz: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(f, dtype=torch.float64) / 700.0)


def mel_to_hz(m: torch.Tensor | float) -> torch.Tensor:
    """The inverse of :func:`hz_to_mel`: ``700 (10^(m / 2595) - 1)``."""
    return 700.0 * (10.0 ** (torch.as_tensor(m, dtype=torch.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_fft: int, n_mels: int, sample_rate: float, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """``[n_fft // 2 + 1, n_mels]`` float32: column ``m`` is the triangular HTK filter
    ``m`` read at the STFT bin frequencies (see the module docstring)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    if not 0 <= f_min < f_max <= sample_rate / 2:
        raise ValueError(f"need 0 <= f_min={f_min} < f_max={f_max} <= sample_rate/2")
    freqs = torch.arange(n_fft // 2 + 1, dtype=torch.float64) * sample_rate / n_fft
    # the two edges as Python floats (math, not tensors: a model built on the meta device
    # to count its parameters cannot read a tensor's value)
    mel_lo, mel_hi = (2595.0 * math.log10(1.0 + f / 700.0) for f in (f_min, f_max))
    mels = torch.linspace(mel_lo, mel_hi, n_mels + 2, dtype=torch.float64)
    edges = mel_to_hz(mels)
    lo, centre, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (freqs[:, None] - lo) / (centre - lo)
    down = (hi - freqs[:, None]) / (hi - centre)
    return torch.clamp(torch.minimum(up, down), min=0.0).float()


def n_frames(n_samples: int, hop: int) -> int:
    """Frames of :func:`log_mel` for ``n_samples`` samples (``center=True``)."""
    return n_samples // hop + 1


def log_mel(
    wave: torch.Tensor,
    filterbank: torch.Tensor,
    n_fft: int,
    hop: int,
    floor: float = 1e-6,
) -> torch.Tensor:
    """The log-mel spectrogram ``[B, frames, n_mels]`` of waveforms ``[B, n_samples]``:
    Hann-windowed STFT (periodic window, ``center=True`` with zero padding), power
    ``|X|^2``, ``filterbank`` (:func:`mel_filterbank`), ``log(max(., floor))``."""
    window = torch.hann_window(n_fft, periodic=True, device=wave.device, dtype=wave.dtype)
    spec = torch.stft(
        wave, n_fft, hop_length=hop, window=window, center=True, pad_mode="constant",
        return_complex=True,
    )  # fmt: skip
    power = spec.real.square() + spec.imag.square()  # [B, freqs, frames]
    mel = power.transpose(1, 2) @ filterbank.to(power)
    return torch.log(mel.clamp_min(floor))


def band_mask(
    batch: int,
    length: int,
    n_bands: int,
    max_width: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[batch, length]`` bool, True inside ``n_bands`` bands per row, each of width
    uniform in ``[0, max_width]`` starting uniformly in ``[0, length - width]``."""
    out = torch.zeros(batch, length, dtype=torch.bool)
    if n_bands and max_width:
        width = torch.randint(0, max_width + 1, (batch, n_bands), generator=generator)
        width = width.clamp(max=length)
        start = (torch.rand(batch, n_bands, generator=generator) * (length - width + 1)).long()
        idx = torch.arange(length)
        inside = (idx >= start[..., None]) & (idx < (start + width)[..., None])
        out = inside.any(1)
    return out.to(device)


def spec_augment_mask(
    shape: tuple[int, int, int],
    time_masks: int,
    max_time: int,
    freq_masks: int,
    max_freq: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """``[B, frames, n_mels]`` bool: True where SpecAugment masks a spectrogram of
    ``shape`` (``time_masks`` time bands of at most ``max_time`` frames, ``freq_masks``
    frequency bands of at most ``max_freq`` mel bins; time drawn before frequency)."""
    b, t, f = shape
    time = band_mask(b, t, time_masks, max_time, generator, device)
    freq = band_mask(b, f, freq_masks, max_freq, generator, device)
    return time[:, :, None] | freq[:, None, :]
