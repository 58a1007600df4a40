"""``audio_folder``: WAV clips read with ``wave`` (8/16/32-bit PCM, channels averaged,
linear resampling or refusal), cut or padded to the duration, the hashed split, ood,
refusals naming the file, links out of the folder refused."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.tasks.audio_folder import AudioFolder, load_clips, read_wav, resample_linear


def build(path: Path, seed: int = 0, **params: Any) -> AudioFolder:
    load_clips.cache_clear()
    entry = registry.get("task", "audio_folder")
    return entry.build(entry.make_params({"path": str(path), **params}), seed)  # type: ignore[return-value]


@pytest.mark.parametrize("width", [1, 2, 4])
def test_pcm_widths_read_back_what_was_written(
    tmp_path: Path, width: int, make_wav: Callable[..., Path]
) -> None:
    x = np.array([0.0, 0.5, -0.5, 0.25, -1.0])
    got = read_wav(make_wav(tmp_path / "a.wav", x, width=width), 8000, False)
    np.testing.assert_allclose(got, x, atol=1.0 / 2 ** (8 * width - 1))


def test_channels_are_averaged_and_other_rates_resampled_linearly(
    tmp_path: Path, make_wav: Callable[..., Path]
) -> None:
    stereo = np.array([[0.5, -0.25], [0.25, 0.25], [0.0, 0.5]])
    got = read_wav(make_wav(tmp_path / "s.wav", stereo), 8000, False)
    np.testing.assert_allclose(got, [0.125, 0.25, 0.25], atol=1e-4)
    ramp = np.arange(8) / 8.0
    up = read_wav(make_wav(tmp_path / "r.wav", ramp, rate=4000), 8000, True)
    assert len(up) == 16
    np.testing.assert_allclose(up[:15], np.arange(15) / 16.0, atol=1e-4)  # midpoints
    np.testing.assert_allclose(resample_linear(np.arange(8.0), 8000, 4000), [0, 2, 4, 6])
    with pytest.raises(SpecError, match=r"r.wav: sampled at 4000 Hz.*task.resample=true"):
        read_wav(tmp_path / "r.wav", 8000, False)


def _bad(path: Path, kind: str, write_wav: Callable[..., Path]) -> None:
    if kind == "not_wav":
        path.write_bytes(b"hello, not a wave file at all")
    elif kind == "float":  # IEEE float format (3): not PCM
        write_wav(path, np.zeros(10))
        data = bytearray(path.read_bytes())
        data[20:22] = (3).to_bytes(2, "little")
        path.write_bytes(bytes(data))
    elif kind == "24bit":
        write_wav(path, np.zeros(10), width=3)
    elif kind == "empty":
        write_wav(path, np.zeros(0))
    elif kind == "truncated":
        write_wav(path, np.zeros(100))
        path.write_bytes(path.read_bytes()[:-50])


@pytest.mark.parametrize(
    ("kind", "says"),
    [("not_wav", "not a PCM WAV file"), ("float", "not a PCM WAV file"),
     ("24bit", "24-bit samples"), ("empty", "no audio frames"),
     ("truncated", "truncated: 75 of the 100 frames")],
)  # fmt: skip
def test_bad_files_are_refused_naming_the_file(
    tmp_path: Path,
    kind: str,
    says: str,
    make_wav: Callable[..., Path],
    make_audio_tree: Callable[..., Path],
) -> None:
    root = make_audio_tree(tmp_path / "audio", per_class=2, n=300)
    _bad(root / "class_1" / "bad.WAV", kind, make_wav)
    with pytest.raises(SpecError) as err:
        build(root, duration=0.05)
    assert "bad.WAV" in str(err.value) and says in str(err.value), str(err.value)


def test_links_out_of_the_folder_are_refused(
    tmp_path: Path, make_wav: Callable[..., Path], make_audio_tree: Callable[..., Path]
) -> None:
    root = make_audio_tree(tmp_path / "audio", per_class=2, n=300)
    outside = make_wav(tmp_path / "secret.wav", np.zeros(300))
    os.symlink(outside, root / "class_0" / "link.wav")
    with pytest.raises(SpecError, match="link.wav is a link out of the folder"):
        build(root, duration=0.05)


def test_folder_refusals(tmp_path: Path, make_audio_tree: Callable[..., Path]) -> None:
    with pytest.raises(SpecError, match="no such folder"):
        build(tmp_path / "missing")
    one = make_audio_tree(tmp_path / "one", classes=1, per_class=3, n=300)
    with pytest.raises(SpecError, match="1 class subfolder"):
        build(one, duration=0.05)
    (tmp_path / "none" / "a").mkdir(parents=True)
    with pytest.raises(SpecError, match="holds no .wav clip"):
        build(tmp_path / "none")
    many = make_audio_tree(tmp_path / "many", per_class=3, n=300)
    with pytest.raises(SpecError, match="more than task.max_clips=5 clips"):
        build(many, duration=0.05, max_clips=5)


def test_clips_are_cut_or_padded_split_by_hash_and_noised_for_ood(audio_tree: Path) -> None:
    task = build(audio_tree, duration=0.2)  # 1600 samples; the clips have 2000
    assert task.clips.shape == (20, 1600) and task.model_io()["input_shape"] == [1600]
    long = build(audio_tree, duration=0.3)
    assert (long.clips[:, 2000:] == 0).all() and (np.abs(long.clips[:, :2000]).max(1) > 0.4).all()
    assert not set(task.id_rows) & set(task.train_rows) and len(task.id_rows) > 0
    x, y = task.ood_clips, task.ood_labels
    x_id, y_id = task.clips[task.id_rows], task.labels[task.id_rows]
    assert (y == y_id).all() and len(task.eval_examples("ood", 100)[1]) == len(y)
    snr = 10 * np.log10((x_id**2).mean(1) / ((x - x_id) ** 2).mean(1))
    assert np.abs(snr).max() < 1.5  # ood_snr 0 dB
