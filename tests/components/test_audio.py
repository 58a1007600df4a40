"""The log-mel front end (filterbank against a reference written from the formulas with
numpy, a pure tone's peak, SpecAugment masks) and the ``spectrogram_patches`` embedder
(patches equal an unfold of the spectrogram, patchout drops exactly the configured count in
training and nothing in evaluation, keeps positions, is deterministic under a seed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anyformer.errors import SpecError
from anyformer.model.transformer import build_model
from anyformer.nn.spectrogram import (
    hz_to_mel,
    log_mel,
    mel_filterbank,
    mel_to_hz,
    n_frames,
    spec_augment_mask,
)
from anyformer.spec import ModelSpec, parse


def reference_filterbank(n_fft: int, n_mels: int, sr: float, f_min: float, f_max: float):
    """HTK triangles written out with numpy loops, independently of the library."""

    def mel(f: float) -> float:
        return 2595.0 * math.log10(1.0 + f / 700.0)

    def hz(m: float) -> float:
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    lo_m, hi_m = mel(f_min), mel(f_max)
    pts = [hz(lo_m + (hi_m - lo_m) * i / (n_mels + 1)) for i in range(n_mels + 2)]
    out = np.zeros((n_fft // 2 + 1, n_mels))
    for k in range(n_fft // 2 + 1):
        f = k * sr / n_fft
        for m in range(n_mels):
            a, c, b = pts[m], pts[m + 1], pts[m + 2]
            if a <= f <= c:
                out[k, m] = (f - a) / (c - a)
            elif c < f <= b:
                out[k, m] = (b - f) / (b - c)
    return out


@pytest.mark.parametrize("n_fft,n_mels,sr,f_min,f_max", [
    (256, 32, 8000, 0.0, 4000.0), (512, 40, 16000, 50.0, 7600.0), (400, 64, 22050, 20.0, 11025.0),
])  # fmt: skip
def test_mel_filterbank_equals_the_formula(n_fft, n_mels, sr, f_min, f_max) -> None:
    fb = mel_filterbank(n_fft, n_mels, sr, f_min, f_max)
    ref = reference_filterbank(n_fft, n_mels, sr, f_min, f_max)
    np.testing.assert_allclose(fb.numpy(), ref, atol=1e-6)
    assert float(mel_to_hz(hz_to_mel(1234.5))) == pytest.approx(1234.5)
    assert float(hz_to_mel(1000.0)) == pytest.approx(999.9855, abs=1e-3)  # ~1000 mel at 1 kHz


@pytest.mark.parametrize("freq", [300.0, 1000.0, 2500.0])
def test_a_pure_tone_peaks_at_its_mel_bin(freq: float) -> None:
    sr, n_fft, hop, n_mels = 8000, 256, 128, 32
    fb = mel_filterbank(n_fft, n_mels, sr)
    t = torch.arange(4000, dtype=torch.float64) / sr
    wave = torch.sin(2 * math.pi * freq * t)[None].float()
    spec = log_mel(wave, fb, n_fft, hop)
    assert spec.shape == (1, n_frames(4000, hop), n_mels)
    # the filter whose response at the tone's frequency is largest
    expect = int(torch.from_numpy(reference_filterbank(n_fft, n_mels, sr, 0, 4000)[
        round(freq * n_fft / sr)]).argmax())  # fmt: skip
    middle = spec[0, 5:-5]  # frames away from the zero-padded ends
    assert (middle.argmax(-1) == expect).all()
    # power: doubling the amplitude adds log 4 at the peak
    louder = log_mel(2 * wave, fb, n_fft, hop)
    assert torch.allclose(louder[0, 5:-5, expect] - middle[:, expect], torch.tensor(math.log(4)),
                          atol=1e-4)  # fmt: skip


def test_silence_is_the_floor() -> None:
    fb = mel_filterbank(256, 32, 8000)
    spec = log_mel(torch.zeros(2, 1000), fb, 256, 128, floor=1e-6)
    assert torch.allclose(spec, torch.tensor(math.log(1e-6)))


def test_spec_augment_masks_bands_deterministically() -> None:
    g = torch.Generator().manual_seed(3)
    mask = spec_augment_mask((4, 30, 20), 2, 5, 1, 4, generator=g)
    again = spec_augment_mask((4, 30, 20), 2, 5, 1, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(mask, again)
    for row in mask:
        time = row.all(1)  # frames masked across every band
        freq = row.all(0)
        assert int(time.sum()) <= 10 and int(freq.sum()) <= 4
        assert torch.equal(row, time[:, None] | freq[None, :])  # nothing else is masked
    assert not spec_augment_mask((2, 30, 20), 0, 5, 0, 4).any()


# ---------------------------------------------------------------------------- embedder
def audio_model(**embedder) -> torch.nn.Module:
    emb = {"name": "spectrogram_patches", **embedder}
    spec = parse(ModelSpec, dict(
        kind="encoder", d_model=16, n_heads=2, n_layers=1, max_len=80, head="classify",
        n_outputs=3, embedder=emb, input_shape=[4000],
        position="none" if embedder.get("patchout", "none") != "none" else "sincos_2d",
    ))  # fmt: skip
    torch.manual_seed(0)
    return build_model(spec)


def test_tokens_are_a_linear_map_of_the_unfolded_spectrogram() -> None:
    model = audio_model(patch_time=4, patch_freq=8, cls=True).eval()
    embed = model.embed
    wave = torch.randn(2, 4000)
    spec = embed.spectrogram(wave)
    assert spec.shape == (2, 32, 32)
    assert embed.grid == (8, 4) and model.spec.token_layout.grid == (8, 4)
    # patch (i, j) = spectrogram frames 4i..4i+3, mel bands 8j..8j+7, flattened row-major
    manual = torch.stack([
        spec[:, 4 * i: 4 * i + 4, 8 * j: 8 * j + 8].reshape(2, -1)
        for i in range(8) for j in range(4)
    ], 1)  # fmt: skip
    assert torch.equal(embed.patches(spec), manual)
    unfold = F.unfold(spec[:, None], (4, 8), stride=(4, 8)).transpose(1, 2)
    tokens = embed(wave)
    assert tokens.shape == (2, 33, 16)
    expect = unfold @ embed.proj.weight.T + embed.proj.bias
    assert torch.allclose(tokens[:, 1:], expect, atol=1e-5)
    assert torch.allclose(tokens[:, 0], embed.prefix.cls[0].expand(2, -1))
    # standardised per example, and the whole model runs with a 2-D position scheme
    assert torch.allclose(spec.mean((1, 2)), torch.zeros(2), atol=1e-5)
    assert model(wave).shape == (2, 3)


@pytest.mark.parametrize("kind,counts,dropped", [
    ("unstructured", {"patchout_tokens": 10}, 10),
    ("structured", {"patchout_time": 3, "patchout_freq": 1}, 32 - 5 * 3),
])  # fmt: skip
def test_patchout_drops_the_configured_count_in_training_only(kind, counts, dropped) -> None:
    model = audio_model(patch_time=4, patch_freq=8, cls=False, positions="time_freq",
                        patchout=kind, **counts)  # fmt: skip
    embed = model.embed
    wave = torch.randn(3, 4000)
    model.eval()
    full = embed(wave)
    assert full.shape == (3, 32, 16)
    model.train()
    torch.manual_seed(7)
    kept = embed(wave)
    assert kept.shape == (3, 32 - dropped, 16)
    torch.manual_seed(7)
    assert torch.equal(embed(wave), kept)  # deterministic under the seed
    torch.manual_seed(7)
    index = embed.kept(3, torch.device("cpu"))
    # every kept token is the full (evaluation) token at its own grid index: positions kept
    for b in range(3):
        assert torch.allclose(kept[b], full[b, index[b]], atol=1e-6)
        assert bool((index[b][1:] > index[b][:-1]).all())
    if kind == "structured":  # whole time rows and frequency columns are gone
        rows, cols = set((index[0] // 4).tolist()), set((index[0] % 4).tolist())
        assert len(rows) == 5 and len(cols) == 3
    torch.manual_seed(8)
    assert not torch.equal(embed.kept(3, torch.device("cpu")), index)
    assert model(wave).shape == (3, 3)  # the model trains on the kept tokens


def test_spec_augment_in_training_only() -> None:
    model = audio_model(time_masks=2, time_mask_width=6, freq_masks=2, freq_mask_width=6)
    wave = torch.randn(2, 4000)
    model.eval()
    a, b = model.embed(wave), model.embed(wave)
    assert torch.equal(a, b)
    model.train()
    torch.manual_seed(1)
    c = model.embed(wave)
    assert not torch.allclose(a, c)


def test_bad_audio_specs_are_refused_naming_the_field() -> None:
    with pytest.raises(SpecError, match="patchout.*positions='time_freq'"):
        audio_model(patchout="unstructured", patchout_tokens=3)
    with pytest.raises(SpecError, match="model.position"):
        parse(ModelSpec, dict(kind="encoder", d_model=16, n_heads=2, n_layers=1, max_len=80,
                              input_shape=[4000], position="sincos_2d", embedder=dict(
                                  name="spectrogram_patches", positions="time_freq",
                                  patchout="unstructured", patchout_tokens=2)))  # fmt: skip
    with pytest.raises(SpecError, match="patchout_tokens=64"):
        audio_model(positions="time_freq", patchout="unstructured", patchout_tokens=64)
    with pytest.raises(SpecError, match="patch_freq=5"):
        audio_model(patch_freq=5)
    with pytest.raises(SpecError, match="input_shape"):
        parse(
            ModelSpec,
            dict(
                kind="encoder",
                d_model=16,
                n_heads=2,
                n_layers=1,
                input_shape=[3, 8, 8],
                embedder="spectrogram_patches",
            ),
        )


def test_the_filterbank_builds_on_the_meta_device() -> None:
    """Counting a model's parameters builds it on the meta device (``compare``): the
    filterbank must not read a tensor's value there."""
    with torch.device("meta"):
        fb = mel_filterbank(256, 32, 8000)
    assert fb.is_meta and fb.shape == (129, 32)
