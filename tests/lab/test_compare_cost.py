"""Comparisons: folders keyed by their grid, cost per variant, speed measured interleaved."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from anyformer import registry
from anyformer.cli import main
from anyformer.errors import SpecError
from anyformer.lab import compare as cmp
from anyformer.lab.cost import flops_per_token
from anyformer.lab.findings.base import Verdict
from anyformer.lab.findings.reproduce import Reproduction, write_finding_report
from anyformer.lab.run import build_task
from anyformer.model.transformer import build_model
from anyformer.spec import ExperimentSpec
from anyformer.training.cost import PeakMemory, interleaved_speed

TINY = {
    "name": "tiny",
    "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 16},
    "task": {"name": "copy", "min_len": 2, "max_len": 3, "ood_min_len": 4, "ood_max_len": 5},
    "train": {
        "steps": 2,
        "batch_size": 4,
        "eval_every": 2,
        "eval_size": 8,
        "checkpoint_every": 2,
        "warmup_steps": 0,
        "threads": 1,
    },
}


def tiny(**train: object) -> ExperimentSpec:
    data = json.loads(json.dumps(TINY))
    data["train"].update(train)
    return ExperimentSpec.from_dict(data)


# ------------------------------------------------------------------ item 14: the folder
def test_a_second_comparison_with_other_values_keeps_the_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    first = cmp.compare(tiny(), [("model.position", ["rope", "none"])], None, timing=None)
    other_values = cmp.compare(tiny(), [("model.position", ["rope", "alibi"])], None, timing=None)
    other_base = cmp.default_folder(tiny(lr=3e-3), [("model.position", ["rope", "none"])])
    other_lrs = cmp.default_folder(tiny(), [("model.position", ["rope", "none"])], lrs=[1e-3])
    folders = {first.dir, other_values.dir, other_base, other_lrs}
    assert len(folders) == 4 and all(f.parent == Path("comparisons") for f in folders)
    assert first.dir.name.startswith("tiny-position-")
    saved = json.loads((first.dir / "results.json").read_text())
    assert saved["axes"] == [{"key": "model.position", "values": ["rope", "none"]}]
    assert set(saved["summary"]) == {"position=rope", "position=none"}
    assert "alibi" not in (first.dir / "report.md").read_text()
    # the same grid again, with more seeds, is the same folder (its runs are reused)
    assert cmp.default_folder(tiny(), [("model.position", ["rope", "none"])]) == first.dir


def test_an_explicit_folder_holding_another_grid_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    cmp.compare(tiny(), [("model.position", ["rope", "none"])], out, timing=None)
    before = (out / "results.json").read_text()
    with pytest.raises(SpecError, match="already holds another comparison") as err:
        cmp.compare(tiny(), [("model.position", ["rope", "alibi"])], out, timing=None)
    assert "position=rope,alibi" in str(err.value) and "--out" in str(err.value)
    assert (out / "results.json").read_text() == before
    # the CLI says so with exit 2
    code = main(["compare", "quickstart", "--vary", "model.position=alibi,none", "--seeds", "1",
                 "--out", str(out)])  # fmt: skip
    assert code == 2
    # replace=True (what reproduce does for a redefined finding) takes the folder over
    again = cmp.compare(tiny(), [("model.position", ["rope", "alibi"])], out, timing=None,
                        replace=True)  # fmt: skip
    assert set(again.summary) == {"position=rope", "position=alibi"}


def test_a_folder_from_before_grids_were_recorded_is_kept_for_its_own_grid(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    axes = [("model.position", ["rope", "none"])]
    cmp.compare(tiny(), axes, out, timing=None)
    (out / cmp.GRID_FILE).unlink()  # as written by an earlier version
    cmp.compare(tiny(), axes, out, timing=None)  # the same grid: accepted
    (out / cmp.GRID_FILE).unlink()
    with pytest.raises(SpecError, match="another comparison"):
        cmp.compare(tiny(), [("model.position", ["none"])], out, timing=None)


# ------------------------------------------------------------------ item 20: cost
def test_interleaving_spreads_drift_over_variants() -> None:
    """Identical variants on a machine that slows down steadily: timed one after another
    the later one looks much slower; interleaved they measure the same."""
    now, done = [0.0], [0]

    def clock() -> float:
        return now[0]

    def stepper(cost: float):  # noqa: ANN202
        def step(i: int) -> tuple[int, float]:
            now[0] += cost * (1.0 + 0.05 * done[0])  # each step slower than the last
            done[0] += 1
            return 100, 1000.0

        return step

    speeds = interleaved_speed({"a": stepper(1.0), "b": stepper(1.0)}, rounds=3, steps=2,
                               clock=clock)  # fmt: skip
    assert len(speeds["a"]["rounds_tokens_per_s"]) == 4  # rounded up to a full rotation
    assert speeds["a"]["tokens_per_s"] == pytest.approx(speeds["b"]["tokens_per_s"], rel=1e-9)
    assert speeds["a"]["flops_per_token"] == 10.0
    sequential = {}
    for label in ("a", "b"):
        t0, tokens = now[0], 0
        for i in range(8):
            tokens += stepper(1.0)(i)[0]
        sequential[label] = tokens / (now[0] - t0)
    assert sequential["a"] / sequential["b"] > 1.1  # what interleaving avoids
    # a variant that really costs twice as much is measured about half as fast
    now[0], done[0] = 0.0, 0
    speeds = interleaved_speed({"a": stepper(1.0), "b": stepper(2.0)}, rounds=4, steps=2,
                               clock=clock)  # fmt: skip
    assert 1.8 < speeds["a"]["tokens_per_s"] / speeds["b"]["tokens_per_s"] < 2.2


def test_interleaving_rotates_the_order_and_warms_up_untimed() -> None:
    calls: list[tuple[str, int]] = []
    reads: list[int] = []

    def stepper(label: str):  # noqa: ANN202
        return lambda i: (calls.append((label, i)), (1, 0.0))[1]

    def clock() -> float:
        reads.append(len(calls))
        return float(len(calls))

    interleaved_speed({k: stepper(k) for k in "abc"}, rounds=2, steps=2, clock=clock)
    assert calls[:6] == [("a", 0), ("a", 1), ("b", 0), ("b", 1), ("c", 0), ("c", 1)]
    assert reads[0] == 6  # no clock read during the warm-up
    order = [calls[i][0] for i in range(6, len(calls), 2)]
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert {i for _, i in calls} == {0, 1}
    with pytest.raises(ValueError, match="rounds=0"):
        interleaved_speed({"a": stepper("a")}, rounds=0)


def test_peak_memory_is_per_block_not_the_process_peak() -> None:
    with PeakMemory("cpu") as big:
        x = torch.ones(16 * 2**20)  # 64 MiB
        x += 1
    del x
    with PeakMemory("cpu") as small:
        y = torch.ones(2**20)  # 4 MiB
        y += 1
    del y
    if big.bytes is None:
        pytest.skip(big.kind)
    assert big.kind == "cpu peak RSS increase"
    assert big.bytes >= 60 * 2**20
    assert small.bytes is not None and small.bytes < 30 * 2**20  # ru_maxrss would say >= 64 MiB


def test_compare_reports_cost_per_variant(tmp_path: Path) -> None:
    base = tiny()
    axes = [("model.d_model", ["16", "64"])]
    result = cmp.compare(base, axes, tmp_path / "c", timing=(2, 2))
    small, large = result.cost["d_model=16"], result.cost["d_model=64"]
    for variant in result.variants:
        c = result.cost[variant.label]
        assert c["params"] == variant.params
        assert c["tokens_per_s"] > 0 and len(c["rounds_tokens_per_s"]) == 2
        assert c["wall_s"] > 0 and len(c["wall_s_runs"]) == 1
        # FLOPs per token: the model's count over the timed training batches
        task = build_task(variant.spec)
        with torch.device("meta"):
            model = build_model(variant.spec.model)
        batches = [task.train_batch(i, 4) for i in range(2)]
        want = sum(model.flops_per_token(b.inputs.shape[1]) * b.n_real_tokens for b in batches)
        assert c["flops_per_token"] == pytest.approx(want / sum(b.n_real_tokens for b in batches))
        assert c["flops_per_token"] == pytest.approx(flops_per_token(variant, 2))
    assert large["flops_per_token"] > 4 * small["flops_per_token"]
    if small["peak_memory_bytes"] is not None:
        # weights, gradients and two Adam moments of the extra parameters at least
        extra = 4 * 4 * (large["params"] - small["params"])
        assert large["peak_memory_bytes"] - small["peak_memory_bytes"] > extra * 0.8
    saved = json.loads((tmp_path / "c" / "results.json").read_text())
    assert saved["cost"]["d_model=64"]["flops_per_token"] == large["flops_per_token"]
    report = (tmp_path / "c" / "report.md").read_text()
    assert "## Cost" in report and "| d_model=64 | " in report and "interleaved, 2 rounds" in report
    head, _ = cmp.table_rows(result)
    assert head[-1] == "tokens/s"
    assert (tmp_path / "c" / "plots" / "cost.png").is_file()
    assert (tmp_path / "c" / "plots" / "loss.png").is_file()
    assert set(result.losses) == {"d_model=16", "d_model=64"}
    assert all(2 in steps for steps in result.losses.values())  # the last step is logged


def test_match_params_reports_the_width_it_chose(tmp_path: Path) -> None:
    base = ExperimentSpec.from_dict({**TINY, "model": {**TINY["model"], "d_model": 32}})
    result = cmp.compare(base, [("model.ffn", ["mlp", "glu"])], tmp_path, match_params=True,
                         timing=None)  # fmt: skip
    glu = result.variants[1]
    assert glu.spec.model.d_model != 32 or "mult" in glu.spec.model.ffn.params
    head, rows = cmp.table_rows(result)
    assert "d_model" in head
    assert rows[1][head.index("d_model")] == str(glu.spec.model.d_model)
    assert rows[0][head.index("d_model")] == "32"
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["match_params"] is True
    assert saved["variants"][1]["d_model"] == glu.spec.model.d_model
    assert "--match-params" in (tmp_path / "report.md").read_text()


# ------------------------------------------------------------------ item 16: markdown
def _images_are_paragraphs(text: str) -> None:
    lines = text.split("\n")
    images = [i for i, line in enumerate(lines) if line.startswith("![")]
    assert images
    for i in images:
        assert lines[i - 1] == "" and lines[i + 1] == "", lines[i - 1 : i + 2]


def test_reports_never_put_images_inside_tables(tmp_path: Path) -> None:
    result = cmp.compare(tiny(), [("model.position", ["rope", "none"])], tmp_path / "c",
                         timing=None)  # fmt: skip
    _images_are_paragraphs((tmp_path / "c" / "report.md").read_text())
    name = registry.components("finding")[0]
    rep = Reproduction(name, registry.get("finding", name).cls(), Verdict(True, {"x": 1.0}),
                       {"k": result}, tmp_path, True)  # fmt: skip
    _images_are_paragraphs(write_finding_report(rep).read_text())
