"""``anyformer quantize`` on the quickstart's run: a new run folder with int8 weights in
safetensors that reloads (``generate`` works on it), a report comparing it with its
parent, ~4x smaller linear weights; runs it cannot handle are refused with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import anyformer
from anyformer.cli import main
from anyformer.compress.qlinear import fbgemm_available
from anyformer.compress.quantize import (
    calibration_batches,
    forward,
    load_float_run,
    quantize_model,
    quantize_run,
)
from anyformer.lab.loaded import load_run
from anyformer.lab.run import SPEC_FILE, prepare_model, resolve
from anyformer.training.checkpoint import latest_checkpoint, save_checkpoint

SMALL = ["train.eval_size=24", "train.batch_size=8"]


def _run_folder(root: Path, overrides: list[str]) -> Path:
    """A run folder of the quickstart spec (with ``overrides``) holding a checkpoint."""
    spec = resolve(anyformer.load_experiment("quickstart").with_overrides(SMALL + overrides))
    folder = root / f"{spec.name}-{spec.hash}"
    folder.mkdir(parents=True)
    spec.save(folder / SPEC_FILE)
    torch.manual_seed(0)
    model = prepare_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(folder / "checkpoint", 5, model, opt, {"spec_hash": spec.hash})
    return folder


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return _run_folder(tmp_path, [])


def test_quantize_writes_a_reloadable_int8_run(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "quantize",
            str(run_dir),
            "--scheme",
            "int8-dynamic",
            "--calibration-batches",
            "2",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    (folder,) = out.iterdir()
    assert "relative drop" in capsys.readouterr().out
    results = json.loads((folder / "quantization.json").read_text())
    assert set(results["comparison"]) == {"id", "ood"}
    assert "relative drop" in (folder / "report.md").read_text()
    # int8 weights and float32 scales in safetensors, nothing pickled
    ckpt = latest_checkpoint(folder / "checkpoint")
    with safe_open(str(ckpt / "model.safetensors"), "pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    assert dtypes["blocks.0.mixer.qkv.weight_int8"] == "I8"
    assert dtypes["blocks.0.mixer.qkv.weight_scale"] == "F32"
    # the reloaded model equals the parent quantized again (deterministic), exactly
    loaded = load_run(folder)
    spec, model, task, _, _ = load_float_run(run_dir)
    batches = calibration_batches(task, spec, 2)
    kernel = results["kernel"]  # auto: measured on the calibration batches
    assert kernel["requested"] == "auto" and kernel["kernel"] in ("int_mm", "fbgemm")
    if kernel["seconds"]:  # both kernels timed: the faster one kept
        assert kernel["kernel"] == min(kernel["seconds"], key=kernel["seconds"].get)
    assert "int8 kernel" in (folder / "report.md").read_text()
    quantize_model(model, batches, "int8-dynamic", kernel=kernel["kernel"])
    with torch.no_grad():
        assert torch.equal(forward(loaded.model, batches[0]), forward(model, batches[0]))
    # ~4x smaller linear weights (int8 + a float32 scale per output channel)
    size = results["size_on_disk"]
    assert 3.5 <= size["linear_weights_parent"] / size["linear_weights_quantized"] <= 4.0
    assert size["ratio"] > 3.0
    # generation reads the quantized folder
    assert main(["generate", str(folder), "--prompt", "1 2 3", "--max-new-tokens", "3"]) == 0


@pytest.mark.parametrize("scheme", ["int8-static", "int4-weight"])
def test_other_schemes_with_smoothing_stay_close_to_the_parent(
    run_dir: Path, tmp_path: Path, scheme: str
) -> None:
    folder, r = quantize_run(run_dir, scheme, smooth=0.5, calibration=2, out=tmp_path / "o")
    assert r["smoothing"]["max_relative_output_difference"] <= 1e-5
    assert set(r["stats_before"]) >= {"blocks.0.mixer.qkv", "blocks.1.ffn.down"}
    for c in r["comparison"].values():  # an untrained model: losses barely move
        assert abs(c["quantized_loss"] - c["parent_loss"]) <= 0.05 * c["parent_loss"]
    loaded = load_run(folder)
    assert type(loaded.model.blocks[0].mixer.qkv).__name__ in ("Int8Linear", "Int4WeightLinear")


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model.attention=symmetric", "model.position=none"], "symmetric"),
        (["model.ffn=matformer"], "matformer"),
    ],
)
def test_a_component_without_an_int8_path_is_refused(
    tmp_path: Path, overrides: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _run_folder(tmp_path, overrides)
    assert main(["quantize", str(folder), "--scheme", "int8-dynamic"]) == 2
    err = capsys.readouterr().err
    assert named in err and "int8 path" in err
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # nothing written


@pytest.mark.parametrize("kernel", ["int_mm", "fbgemm"])
def test_a_forced_kernel_is_recorded_and_reloaded(
    run_dir: Path, tmp_path: Path, kernel: str
) -> None:
    if kernel == "fbgemm" and not fbgemm_available():
        pytest.skip("no fbgemm kernel in this PyTorch build")
    folder, r = quantize_run(run_dir, "int8-dynamic", calibration=1, out=tmp_path, kernel=kernel)
    assert r["kernel"] == {"kernel": kernel, "requested": kernel, "seconds": None}
    layers = load_run(folder).model.blocks[0].mixer.qkv
    assert layers.kernel == kernel


def test_fbgemm_is_refused_for_a_static_scheme(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["quantize", str(run_dir), "--scheme", "int8-static", "--kernel", "fbgemm"])
    assert code == 2
    assert "--kernel fbgemm" in capsys.readouterr().err


def test_a_quantized_run_is_not_quantized_again(run_dir: Path, tmp_path: Path) -> None:
    folder, _ = quantize_run(run_dir, "int8-dynamic", calibration=1, out=tmp_path / "o")
    assert main(["quantize", str(folder), "--scheme", "int8-dynamic"]) == 2


@pytest.mark.slow
def test_quantize_the_readme_quickstart_trained_briefly(tmp_path: Path) -> None:
    run = anyformer.train(
        anyformer.load_experiment("quickstart").with_overrides(
            ["train.steps=20", "train.eval_every=20", "train.checkpoint_every=20", *SMALL]
        ),
        out=str(tmp_path),
    )
    assert (
        main(["quantize", str(run.dir), "--scheme", "int8-dynamic", "--out", str(tmp_path / "q")])
        == 0
    )
