"""Audio embedders: a waveform -> log-mel spectrogram -> 2-D patches -> linear map (AST),
with SpecAugment masking and PaSST's patchout in training."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt
from torch import nn

from anyformer.components.embedders._vision import PrefixTokens
from anyformer.components.embedders.base import Embedder, TokenLayout
from anyformer.nn.spectrogram import log_mel, mel_filterbank, n_frames, spec_augment_mask
from anyformer.registry import Capabilities, Paper, register


class SpectrogramPatchesParams(BaseModel):
    """The front end (``sample_rate`` Hz, ``n_fft``-sample Hann frames every ``hop``
    samples, ``n_mels`` HTK mel bands from ``f_min`` to ``f_max`` Hz, per-example
    standardisation), the patches (``patch_time`` frames x ``patch_freq`` mel bands,
    non-overlapping), a CLS token, the embedder's own positions (``positions:
    time_freq``: PaSST's learned time and frequency encodings, added before patchout),
    SpecAugment masks (training only) and patchout (training only: ``structured`` drops
    ``patchout_time`` whole time rows and ``patchout_freq`` whole frequency columns of
    the patch grid, ``unstructured`` drops ``patchout_tokens`` patches)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sample_rate: PositiveInt = 8000
    n_fft: int = Field(256, ge=8, le=8192)
    hop: int = Field(128, ge=1, le=8192)
    n_mels: int = Field(32, ge=1, le=512)
    f_min: float = Field(0.0, ge=0.0)
    f_max: float | None = Field(None, gt=0.0)
    standardize: bool = True
    patch_time: PositiveInt = 4
    patch_freq: PositiveInt = 4
    cls: bool = True
    positions: Literal["model", "time_freq"] = "model"
    time_masks: NonNegativeInt = 0
    time_mask_width: NonNegativeInt = 0
    freq_masks: NonNegativeInt = 0
    freq_mask_width: NonNegativeInt = 0
    patchout: Literal["none", "structured", "unstructured"] = "none"
    patchout_time: NonNegativeInt = 0
    patchout_freq: NonNegativeInt = 0
    patchout_tokens: NonNegativeInt = 0


def _grid(params: SpectrogramPatchesParams, spec: Any) -> tuple[int, int] | None:
    shape = getattr(spec, "input_shape", None)
    if shape is None or len(shape) != 1:
        return None
    frames = n_frames(int(shape[0]), params.hop)
    return frames // params.patch_time, params.n_mels // params.patch_freq


@register(
    "embedder",
    "spectrogram_patches",
    paper=Paper("AST: Audio Spectrogram Transformer", 2021, "Gong, Chung & Glass"),
    summary="AST: waveform -> log-mel spectrogram -> time x frequency patches -> linear; "
    "SpecAugment masks and PaSST patchout in training",
    params=SpectrogramPatchesParams,
    caps=Capabilities(input_kind="audio", grid=True),
)
class SpectrogramPatches(Embedder):
    """Waveforms ``[B, n_samples]`` -> the log-mel spectrogram ``[B, frames, n_mels]``
    (:func:`anyformer.nn.spectrogram.log_mel`, HTK mel scale), standardised per example,
    read as a one-channel image of ``frames`` rows and ``n_mels`` columns and cut into
    non-overlapping ``patch_time x patch_freq`` patches (trailing frames that fill no
    patch are dropped), each flattened in ``F.unfold``'s order and mapped by one linear
    layer: a row-major ``(frames // patch_time, n_mels // patch_freq)`` grid of tokens
    (time-major, so a grid one patch wide is a time sequence), with an optional CLS token
    first. AST (Gong et al., 2021) uses overlapping 16x16 patches; these do not overlap.

    Training only: SpecAugment time/frequency masks (Park et al., 2019) set masked
    spectrogram cells to 0 (the per-example mean), and patchout (Koutini et al., 2022,
    "Efficient Training of Audio Transformers with Patchout", PaSST) drops patch tokens
    after the embedder's own time and frequency positions were added, so the kept
    tokens keep their positions (patchout therefore needs ``positions: time_freq`` and
    ``model.position: none``). Both draw from torch's global generator, like dropout:
    fixed by the run's seed, restored on resume. Evaluation drops and masks nothing."""

    def __init__(self, spec: Any, params: SpectrogramPatchesParams) -> None:
        super().__init__()
        problem = self.check(params, spec)
        if problem:
            raise ValueError(problem)
        self.params = params
        self.grid = _grid(params, spec)
        assert self.grid is not None
        fb = mel_filterbank(params.n_fft, params.n_mels, params.sample_rate, params.f_min,
                            params.f_max)  # fmt: skip
        self.register_buffer("filterbank", fb, persistent=False)
        self.proj = nn.Linear(params.patch_time * params.patch_freq, spec.d_model)
        self.prefix = PrefixTokens(spec.d_model, params.cls, 0, "first")
        if params.positions == "time_freq":
            self.time_pos = nn.Parameter(torch.randn(self.grid[0], spec.d_model) * 0.02)
            self.freq_pos = nn.Parameter(torch.randn(self.grid[1], spec.d_model) * 0.02)

    @classmethod
    def layout(cls, params: SpectrogramPatchesParams, spec: Any) -> TokenLayout:
        grid = _grid(params, spec)
        if grid is None:
            return TokenLayout(length=None)
        return TokenLayout(int(params.cls) + grid[0] * grid[1], grid, int(params.cls))

    @classmethod
    def check(cls, params: SpectrogramPatchesParams, spec: Any) -> str | None:
        shape = getattr(spec, "input_shape", None)
        name = "embedder 'spectrogram_patches'"
        if shape is None or len(shape) != 1:
            return (
                f"{name} reads waveforms, but model.input_shape="
                f"{None if shape is None else list(shape)}; it needs [n_samples] (an audio "
                f"task sets it)"
            )
        if params.n_mels % params.patch_freq:
            return (
                f"{name}: n_mels={params.n_mels} is not divisible by patch_freq="
                f"{params.patch_freq}; use a divisor of n_mels"
            )
        if params.f_max is not None and not params.f_min < params.f_max <= params.sample_rate / 2:
            return (
                f"{name}: f_max={params.f_max} must lie in (f_min={params.f_min}, "
                f"sample_rate/2={params.sample_rate / 2}]"
            )
        if params.f_min >= params.sample_rate / 2:
            return f"{name}: f_min={params.f_min} must be below sample_rate/2"
        t, f = _grid(params, spec)  # type: ignore[misc]
        if t < 1:
            return (
                f"{name}: model.input_shape={list(shape)} gives "
                f"{n_frames(int(shape[0]), params.hop)} frames, fewer than patch_time="
                f"{params.patch_time}"
            )
        if params.patchout != "none":
            if params.positions != "time_freq":
                return (
                    f"{name}: patchout='{params.patchout}' needs positions='time_freq' (the "
                    f"embedder's own positions, added before tokens are dropped)"
                )
            position = getattr(getattr(spec, "position", None), "name", "none")
            if position != "none":
                return (
                    f"{name}: patchout drops tokens, so model.position='{position}' would "
                    f"number the kept tokens wrongly; set model.position=none"
                )
        if params.patchout == "structured" and (
            params.patchout_time >= t or params.patchout_freq >= f
        ):
            return (
                f"{name}: patchout_time={params.patchout_time} and patchout_freq="
                f"{params.patchout_freq} must be below the grid's {t} time rows and {f} "
                f"frequency columns"
            )
        if params.patchout == "unstructured" and params.patchout_tokens >= t * f:
            return (
                f"{name}: patchout_tokens={params.patchout_tokens} must be below the grid's "
                f"{t * f} patches"
            )
        return None

    # ------------------------------------------------------------------ pieces
    def spectrogram(self, wave: torch.Tensor) -> torch.Tensor:
        """The standardised log-mel spectrogram ``[B, frames, n_mels]`` (no masks)."""
        p = self.params
        spec = log_mel(wave.float(), self.filterbank, p.n_fft, p.hop)
        if p.standardize:
            mean = spec.mean((1, 2), keepdim=True)
            std = spec.std((1, 2), keepdim=True).clamp_min(1e-5)
            spec = (spec - mean) / std
        return spec

    def patches(self, spec: torch.Tensor) -> torch.Tensor:
        """``[B, T' F', patch_time patch_freq]``: the grid's patches, row-major."""
        p = self.params
        t, _ = self.grid  # type: ignore[misc]
        image = spec[:, None, : t * p.patch_time]
        size = (p.patch_time, p.patch_freq)
        return F.unfold(image, size, stride=size).transpose(1, 2)

    def kept(self, batch: int, device: torch.device) -> torch.Tensor:
        """``[B, K]`` the flat grid indices patchout keeps, increasing (drawn from torch's
        global generator)."""
        p = self.params
        t, f = self.grid  # type: ignore[misc]
        if p.patchout == "unstructured":
            order = torch.rand(batch, t * f).argsort(1)[:, : t * f - p.patchout_tokens]
            return order.sort(1).values.to(device)
        rows = torch.rand(batch, t).argsort(1)[:, : t - p.patchout_time].sort(1).values
        cols = torch.rand(batch, f).argsort(1)[:, : f - p.patchout_freq].sort(1).values
        return (rows[:, :, None] * f + cols[:, None, :]).reshape(batch, -1).to(device)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        p = self.params
        spec = self.spectrogram(inputs)
        if self.training and (p.time_masks or p.freq_masks):
            mask = spec_augment_mask(
                tuple(spec.shape), p.time_masks, p.time_mask_width, p.freq_masks,
                p.freq_mask_width, device=spec.device,
            )  # fmt: skip
            spec = spec.masked_fill(mask, 0.0)
        tokens = self.proj(self.patches(spec))  # [B, T'F', D]
        if p.positions == "time_freq":
            pos = self.time_pos[:, None, :] + self.freq_pos[None, :, :]
            tokens = tokens + pos.reshape(-1, tokens.shape[-1])
        if self.training and p.patchout != "none":
            keep = self.kept(tokens.shape[0], tokens.device)
            tokens = tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        return self.prefix(tokens)
