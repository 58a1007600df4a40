"""Fixtures shared by the task tests: a linear self-attention layer set by hand, and a
small source tree for ``stdlib_lm``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from anyformer.lab.findings.icl import LSA_MODEL
from anyformer.lab.run import resolve
from anyformer.model.transformer import Transformer, build_model
from anyformer.spec import ExperimentSpec

LSABuilder = Callable[[dict[str, Any], int, float], Transformer]


def one_gd_step_lsa(task: dict[str, Any], m: int, eta: float) -> Transformer:
    """The findings' one-layer linear self-attention model (``LSA_MODEL``), resolved for
    ``task`` (whose paired tokens are ``[phi_i, phi_{i-1}, y_{i-1}]``, ``phi`` of size
    ``m``), with weights set so that its output at token ``i`` is
    ``eta * sum_{j <= i} (phi_i . phi_{j-1}) y_{j-1}``: one gradient-descent step from
    ``w = 0`` with learning rate ``eta`` on the pairs before ``i``, read at ``phi_i``.

    Read-in: the identity into the first ``2m + 1`` channels (channel ``2m + 1`` stays
    0); ``W_Q`` reads ``phi_i``, ``W_K`` reads ``phi_{j-1}``, ``W_V`` reads
    ``eta * y_{j-1}`` into channel 0 of the value; the output projection writes that
    channel to residual channel ``2m + 1``, which the read-out returns. All biases are 0.
    """
    spec = resolve(ExperimentSpec.from_dict({"name": "lsa", "model": LSA_MODEL, "task": task}))
    model = build_model(spec.model)
    width, c = spec.model.d_model, 2 * m + 1
    assert spec.model.input_dim == c and width > c and spec.model.n_heads == 1
    (block,) = model.blocks
    attn = block.mixer
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.embed.weight[:c, :c] = torch.eye(c)
        wq, wk, wv = attn.qkv.weight.view(3, width, width).unbind(0)
        wq[:m, :m] = torch.eye(m)  # q_i = phi_i
        wk[:m, m : 2 * m] = torch.eye(m)  # k_j = phi_{j-1}
        wv[0, 2 * m] = eta  # v_j = eta * y_{j-1}
        attn.out.weight[c, 0] = 1.0
        model.head.weight[0, c] = 1.0
    return model.eval()


@pytest.fixture
def hand_built_lsa() -> LSABuilder:
    """:func:`one_gd_step_lsa`."""
    return one_gd_step_lsa


@pytest.fixture
def stdlib_tree(tmp_path: Path) -> Path:
    """A small fixed source tree for ``stdlib_lm`` (``root``): 20 library modules and one
    test suite."""
    for i in range(4):
        for j in range(5):
            path = tmp_path / f"pkg{i}" / f"mod{j}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"def f_{i}_{j}(x):\n    return x * {i + j}\n" * 4, encoding="utf-8")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "test_pkg.py").write_text("import unittest\n" * 12, encoding="utf-8")
    return tmp_path


def write_image_tree(root: Path, classes: int = 3, per_class: int = 10, size: int = 12) -> Path:
    """A folder of ``classes`` class subfolders of ``per_class`` distinct PNG images
    each: class ``c`` draws a bright bar in row block ``c`` over a pattern fixed by the
    image's index."""
    from PIL import Image

    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.zeros((size, size, 3), dtype=np.uint8)
            pixels[..., 0] = (np.arange(size) * (i + 1) * 7 % 256)[None, :]
            pixels[..., 1] = (np.arange(size) * (c + 1) * 11 % 256)[:, None]
            pixels[c * 3 : c * 3 + 3, :, 2] = 255
            Image.fromarray(pixels).save(folder / f"img_{i}.png")
    return root


@pytest.fixture
def make_image_tree() -> Callable[..., Path]:
    """:func:`write_image_tree`."""
    return write_image_tree


@pytest.fixture
def image_tree(tmp_path: Path) -> Path:
    """:func:`write_image_tree` in a temporary folder ``images``."""
    return write_image_tree(tmp_path / "images")


def write_wav(path: Path, samples: np.ndarray, rate: int = 8000, width: int = 2,
              channels: int = 1) -> Path:  # fmt: skip
    """``samples`` (float in ``[-1, 1]``, ``[n]`` or ``[n, channels]``) as a PCM WAV file
    of ``width`` bytes per sample, written with the standard library's ``wave``."""
    import wave

    x = np.asarray(samples, dtype=np.float64).reshape(len(samples), -1 if len(samples) else 1)
    x = np.repeat(x, channels, 1) if x.shape[1] == 1 else x
    scale = 2.0 ** (8 * width - 1)
    ints = np.clip(np.round(x * scale), -scale, scale - 1)
    if width == 3:  # 24-bit: the low 3 bytes of each little-endian int32
        data = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3].copy()
    else:
        data = (ints + 128).astype("<u1") if width == 1 else ints.astype(f"<i{width}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


def write_audio_tree(root: Path, classes: int = 2, per_class: int = 10, n: int = 2000) -> Path:
    """A folder of ``classes`` class subfolders of ``per_class`` distinct 8 kHz 16-bit
    clips of ``n`` samples: class ``c`` is a tone of ``(300 + 500 c) (1 + i / 50)`` Hz."""
    t = np.arange(n) / 8000
    for c in range(classes):
        for i in range(per_class):
            freq = (300 + 500 * c) * (1 + i / 50)
            write_wav(root / f"class_{c}" / f"clip_{i}.wav", 0.5 * np.sin(2 * np.pi * freq * t))
    return root


@pytest.fixture
def make_wav() -> Callable[..., Path]:
    """:func:`write_wav`."""
    return write_wav


@pytest.fixture
def make_audio_tree() -> Callable[..., Path]:
    """:func:`write_audio_tree`."""
    return write_audio_tree


@pytest.fixture
def audio_tree(tmp_path: Path) -> Path:
    """:func:`write_audio_tree` in a temporary folder ``audio``."""
    return write_audio_tree(tmp_path / "audio")


def write_graph_file(path: Path, n_graphs: int = 12) -> Path:
    """``torch.save`` of ``n_graphs`` PyG ``Data``: graph ``i`` has ``3 + i`` nodes and
    is a cycle (``y = 1``) when ``i`` is odd, else a path (``y = 0``); ``x`` is each
    node's degree, ``end`` marks the path's end nodes (a node-level class)."""
    from torch_geometric.data import Data

    graphs = []
    for i in range(n_graphs):
        n, cycle = 3 + i, i % 2
        src = torch.arange(n if cycle else n - 1)
        dst = (src + 1) % n
        edges = torch.stack([torch.cat([src, dst]), torch.cat([dst, src])])
        deg = torch.bincount(edges[0], minlength=n)
        graphs.append(Data(x=deg[:, None].float(), edge_index=edges, y=torch.tensor([cycle]),
                           end=(deg == 1).long(), num_nodes=n))  # fmt: skip
    torch.save(graphs, path)
    return path


@pytest.fixture
def graph_file(tmp_path: Path) -> Path:
    """:func:`write_graph_file` in a temporary file ``graphs.pt``."""
    return write_graph_file(tmp_path / "graphs.pt")
