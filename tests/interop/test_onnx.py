"""ONNX export (``torch.onnx.export(dynamo=True)``, dynamic batch and sequence) checked
with ONNX Runtime against eager PyTorch (1e-4) at several shapes, through
``anyformer export RUN --format onnx``; encoder–decoders are refused with the reason.
Exporting takes seconds per model: one run stays in the default suite, the other model
kinds are marked slow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from anyformer.cli import main
from anyformer.errors import SpecError
from anyformer.interop.onnx import check_onnx, export_onnx
from anyformer.interop.runs import write_run
from anyformer.model.transformer import build_model

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def test_export_onnx_of_a_run_equals_eager_at_several_shapes(tmp_path: Path) -> None:
    model = build_model(
        dict(vocab_size=40, d_model=32, n_layers=1, n_heads=4, position="learned", max_len=40,
             init_std=0.3)
    )  # fmt: skip
    run = write_run(model.eval(), tmp_path / "runs", "tiny", "", {})
    assert main(["export", str(run), "--format", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    path = tmp_path / "onnx" / "model.onnx"
    # export already checked (1, 1), (2, 7), (3, 16), (1, 33); again at other shapes here
    worst = check_onnx(model, path, shapes=((5, 3), (2, 40)))
    assert worst < 1e-4
    import onnx

    graph = onnx.load(str(path)).graph
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert all(isinstance(d, str) for d in dims)  # batch and sequence are symbolic
    torch.manual_seed(1)  # the check is not vacuous: another model's logits differ
    other = build_model(model.spec).eval()
    with pytest.raises(AssertionError, match="ONNX Runtime differs from eager"):
        check_onnx(other, path, shapes=((2, 5),))


SLOW_MODELS: dict[str, dict[str, Any]] = {
    "llama_like_gqa_rope": dict(
        vocab_size=40, d_model=32, n_layers=2, n_heads=4, position="rope", norm="rmsnorm",
        ffn={"name": "glu", "variant": "swiglu"}, attention={"name": "softmax", "kv_heads": 2},
        bias=False, max_len=64,
    ),
    "bert_like_encoder": dict(
        kind="encoder", vocab_size=40, d_model=32, n_layers=2, n_heads=4, position="learned",
        norm_placement="post", embed_norm=True, head="token_classify", n_outputs=5, max_len=64,
    ),
    "vit": dict(
        kind="encoder", embedder={"name": "patches", "patch_size": 2, "cls": True},
        input_shape=[3, 8, 8], d_model=32, n_layers=2, n_heads=4, position="learned",
        max_len=17, head="classify", pool="first", n_outputs=4,
    ),
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_MODELS))
def test_onnx_equals_eager_for_other_model_kinds(tmp_path: Path, name: str) -> None:
    model = build_model({**SLOW_MODELS[name], "init_std": 0.3}).eval()
    export_onnx(model, tmp_path / "model.onnx", check=True)
    assert check_onnx(model, tmp_path / "model.onnx", shapes=((4, 5),)) < 1e-4


def test_an_encoder_decoder_is_refused_with_the_reason(tmp_path: Path) -> None:
    model = build_model(
        dict(kind="encoder_decoder", vocab_size=20, d_model=16, n_layers=1, n_heads=2)
    )
    with pytest.raises(SpecError, match="encoder_decoder has no ONNX export"):
        export_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()
