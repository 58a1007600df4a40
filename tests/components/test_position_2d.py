"""The 2-D position schemes: sincos_2d is its formula, rope_2d is relative in both grid
axes and leaves prefix tokens alone, learned_2d learns what it says, and every one of
them refuses a model whose tokens form no grid."""

from __future__ import annotations

import math

import pytest
import torch

from anyformer.components.position_2d import (
    Learned2DParams,
    Learned2DPosition,
    Rope2DParams,
    Rope2DPosition,
    SinCos2DParams,
    SinCos2DPosition,
)
from anyformer.errors import SpecError
from anyformer.registry import Dims, get
from anyformer.spec import ModelSpec, parse

H, W, P = 3, 4, 2  # grid rows, columns, prefix tokens


def dims(d_model: int = 16, n_heads: int = 2, grid=(H, W), n_prefix: int = P) -> Dims:
    return Dims(
        d_model=d_model, n_heads=n_heads, max_len=64, causal=False, grid=grid, n_prefix=n_prefix
    )


def flat(r: int, c: int) -> int:
    return P + r * W + c


def test_sincos_2d_is_the_row_and_column_sinusoids() -> None:
    d = 16
    pos = SinCos2DPosition(dims(d), SinCos2DParams(base=10000.0))
    positions = torch.arange(P + H * W + 1)  # prefix, grid, one token after the grid
    table = pos.table(positions)
    q = d // 4
    for i in range(P + H * W + 1):
        if not P <= i < P + H * W:
            assert torch.equal(table[i], torch.zeros(d))  # off the grid: no position
            continue
        r, c = divmod(i - P, W)
        expected = []
        for value in (r, c):
            angles = [value * 10000.0 ** (-j / q) for j in range(q)]
            expected += [math.sin(a) for a in angles] + [math.cos(a) for a in angles]
        torch.testing.assert_close(table[i], torch.tensor(expected), atol=1e-6, rtol=0)
    x = torch.randn(2, P + H * W, d)
    torch.testing.assert_close(pos.embed(x, positions[:-1]), x + table[:-1])
    # batched (packed) positions give the same table row by row
    torch.testing.assert_close(pos.table(positions.expand(2, -1)), table.expand(2, -1, -1))


def _score(pos: Rope2DPosition, q: torch.Tensor, k: torch.Tensor, i: int, j: int) -> torch.Tensor:
    qr, kr = pos.rotate(q, k, torch.tensor([i]), torch.tensor([j]))
    return (qr * kr).sum()


def test_rope_2d_scores_depend_only_on_the_row_and_column_offsets() -> None:
    d_head = 16
    pos = Rope2DPosition(dims(32, 2), Rope2DParams(base=10.0))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 1, d_head, generator=g), torch.randn(1, 1, 1, d_head, generator=g)
    pairs = [((0, 0), (1, 2)), ((1, 1), (2, 3)), ((1, 0), (2, 2))]  # same offset (-1, -2)
    scores = [_score(pos, q, k, flat(*a), flat(*b)) for a, b in pairs]
    for s in scores[1:]:
        torch.testing.assert_close(s, scores[0], atol=1e-5, rtol=0)
    # the offset along each axis matters on its own
    row_only = _score(pos, q, k, flat(0, 0), flat(1, 0))
    col_only = _score(pos, q, k, flat(0, 0), flat(0, 1))
    same = _score(pos, q, k, flat(2, 3), flat(2, 3))
    for other in (row_only, col_only):
        assert not torch.allclose(other, same, atol=1e-4)
    assert not torch.allclose(row_only, col_only, atol=1e-4)
    # (dr, dc) and (dc, dr) are told apart: rows and columns use different channel pairs
    assert not torch.allclose(
        _score(pos, q, k, flat(0, 0), flat(1, 2)),
        _score(pos, q, k, flat(0, 0), flat(2, 1)),
        atol=1e-4,
    )
    # at zero offset the score is the plain dot product
    torch.testing.assert_close(same, (q * k).sum(), atol=1e-5, rtol=0)


def test_rope_2d_rotates_rows_in_the_first_half_of_the_pairs_and_columns_in_the_second() -> None:
    pos = Rope2DPosition(dims(32, 2), Rope2DParams(base=100.0))
    cos, sin = pos.angles(torch.tensor([flat(2, 3)]))
    theta = 100.0 ** (-torch.arange(4) / 4)
    angles = torch.cat([2 * theta, 3 * theta])
    torch.testing.assert_close(cos[0], angles.cos())
    torch.testing.assert_close(sin[0], angles.sin())


def test_rope_2d_leaves_prefix_tokens_and_tokens_after_the_grid_unrotated() -> None:
    pos = Rope2DPosition(dims(32, 2), Rope2DParams())
    t = P + H * W + 1
    q, k = torch.randn(2, 2, t, 16), torch.randn(2, 2, t, 16)
    positions = torch.arange(t)
    qr, kr = pos.rotate(q, k, positions, positions)
    off = [0, 1, t - 1]
    torch.testing.assert_close(qr[:, :, off], q[:, :, off], atol=0, rtol=0)
    torch.testing.assert_close(kr[:, :, off], k[:, :, off], atol=0, rtol=0)
    assert not torch.allclose(qr[:, :, P + 5], q[:, :, P + 5])
    # rotations keep norms
    torch.testing.assert_close(qr.norm(dim=-1), q.norm(dim=-1))


def test_learned_2d_axial_adds_a_row_and_a_column_vector_and_learns_them() -> None:
    pos = Learned2DPosition(dims(), Learned2DParams(table="axial"))
    assert pos.rows.shape == (H, 16) and pos.cols.shape == (W, 16) and pos.prefix.shape == (P, 16)
    positions = torch.arange(P + H * W + 1)
    x = torch.zeros(1, len(positions), 16)
    out = pos.embed(x, positions)
    torch.testing.assert_close(out[0, flat(2, 1)], pos.rows[2] + pos.cols[1])
    torch.testing.assert_close(out[0, :P], pos.prefix)
    assert torch.equal(out[0, -1], torch.zeros(16))  # after the grid: nothing
    out.pow(2).sum().backward()
    for name, p in pos.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_learned_2d_full_has_one_vector_per_cell_and_prefix_is_optional() -> None:
    pos = Learned2DPosition(dims(), Learned2DParams(table="full", prefix=False))
    assert pos.cells.shape == (H * W, 16) and pos.prefix is None
    positions = torch.arange(P + H * W)
    out = pos.embed(torch.zeros(1, len(positions), 16), positions)
    torch.testing.assert_close(out[0, P:], pos.cells)
    assert torch.equal(out[0, :P], torch.zeros(P, 16))
    out.sum().backward()
    assert pos.cells.grad is not None and bool((pos.cells.grad != 0).all())


@pytest.mark.parametrize("name", ["sincos_2d", "learned_2d", "rope_2d"])
def test_a_model_without_a_grid_is_refused_with_the_reason(name: str) -> None:
    entry = get("position", name)
    why = entry.check(entry.make_params(), dims(grid=None, n_prefix=0))
    assert why and "needs a 2-D token grid" in why and name in why
    assert entry.caps.grid and entry.check(entry.make_params(), dims()) is None
    with pytest.raises(ValueError, match="needs a 2-D token grid"):
        entry.build(None, dims(grid=None, n_prefix=0))
    with pytest.raises(SpecError, match=f"position='{name}'.*needs a 2-D token grid"):
        parse(ModelSpec, {"vocab_size": 10, "d_model": 32, "n_heads": 2, "position": name})


def test_widths_the_schemes_cannot_split_are_refused() -> None:
    why = get("position", "rope_2d").check(Rope2DParams(), dims(d_model=24, n_heads=4))
    assert why and "divisible by 4" in why and "=6" in why
    why = get("position", "sincos_2d").check(SinCos2DParams(), dims(d_model=18, n_heads=2))
    assert why and "d_model=18" in why


def test_illama_as_a_spec_needs_the_post_sequence_cls() -> None:
    # iLLaMA: a causal LLaMA-style ViT (RMSNorm, GLU, 2-D RoPE). A prefix CLS token sees
    # only itself under the causal mask, so its class logits ignore the image; the
    # post-sequence CLS (after the grid) sees every patch.
    from anyformer.model.transformer import build_model

    outputs = {}
    for where in ("first", "last"):
        data = dict(kind="decoder", d_model=16, n_heads=2, n_layers=2, max_len=32, n_outputs=4,
                    embedder={"name": "patches", "cls_position": where}, input_shape=[1, 8, 8],
                    position="rope_2d", norm="rmsnorm", ffn="glu", head="classify", pool=where)  # fmt: skip
        spec = parse(ModelSpec, data)
        assert spec.dims().grid == (2, 2) and spec.dims().n_prefix == (where == "first")
        torch.manual_seed(0)
        model = build_model(spec).eval()
        g = torch.Generator().manual_seed(1)
        a, b = torch.rand(2, 1, 8, 8, generator=g), torch.rand(2, 1, 8, 8, generator=g)
        with torch.no_grad():
            outputs[where] = (model(a) - model(b)).abs().max()
    assert outputs["first"] == 0
    assert outputs["last"] > 1e-4


def test_a_grid_scheme_waits_for_the_task_to_set_the_image_shape() -> None:
    """An experiment names rope_2d with a patch embedder and leaves input_shape to the
    task; it used to be refused as "1-D" before the task could say the image size."""
    from anyformer.lab.run import resolve
    from anyformer.spec import ExperimentSpec

    data = {
        "name": "grid_wait",
        "model": {"kind": "encoder", "embedder": {"name": "patches", "patch_size": 2, "cls": True},
                  "position": "rope_2d", "d_model": 32, "n_heads": 2, "n_layers": 1,
                  "max_len": 17, "head": "classify", "pool": "first"},
        "task": "digits",
    }  # fmt: skip
    resolved = resolve(ExperimentSpec.from_dict(data))
    assert resolved.model.input_shape == (1, 8, 8)
    assert resolved.model.dims().grid == (4, 4)
    tokens = dict(data["model"], embedder="tokens", vocab_size=8)
    with pytest.raises(SpecError, match="grid"):
        ExperimentSpec.from_dict({**data, "model": tokens, "task": "copy"})
