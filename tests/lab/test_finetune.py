"""Pretrain -> fine-tune: ``init_from`` loads exactly the parent's backbone (never the head
or an objective's modules) and refuses another backbone naming the fields; ``freeze`` and
``linear_probe`` keep frozen weights bit-identical while the rest trains; a resumed
fine-tune run is bit-identical and needs the parent no more; ``anyformer finetune`` runs
end to end, links the parent from its report, and refuses bad run folders with exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from anyformer.cli import main
from anyformer.errors import RunFolderError, SpecError
from anyformer.lab.init_from import (
    apply_freeze,
    backbone_state,
    check_init_from,
    finetune_spec,
)
from anyformer.lab.run import (
    prepare_model,
    resolve,
    resume_run,
    run_experiment,
    start_from_parent,
)
from anyformer.spec import ExperimentSpec
from anyformer.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from anyformer.training.trainer import make_optimizer

TASK = {"min_len": 2, "max_len": 4, "ood_min_len": 5, "ood_max_len": 6}
CHILD = [f"task.{k}={v}" for k, v in TASK.items()]


def parent_spec(**model: Any) -> ExperimentSpec:
    return ExperimentSpec.from_dict(
        {
            "name": "parent",
            "model": {
                "d_model": 16,
                "n_heads": 2,
                "n_layers": 2,
                "max_len": 32,
                "tie_embeddings": False,
                **model,
            },  # fmt: skip
            "task": {"name": "copy", **TASK},
            "train": {
                "steps": 4,
                "batch_size": 4,
                "eval_every": 4,
                "eval_size": 4,
                "checkpoint_every": 4,
                "log_every": 1,
                "progress": False,
                "warmup_steps": 1,
                "lr": 0.01,
            },  # fmt: skip
        }
    )


def trained(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a run folder's latest checkpoint."""
    from anyformer.lab.init_from import read_parent

    parent = read_parent(folder)
    model = prepare_model(resolve(parent.spec))
    load_checkpoint(parent.checkpoint, model)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained parent run (copy, 4 steps)."""
    out = tmp_path_factory.mktemp("runs")
    return run_experiment(parent_spec(), out=out).dir


def child(parent: Path, *overrides: str) -> ExperimentSpec:
    return resolve(finetune_spec(parent, "reverse", [*CHILD, "train.steps=4", *overrides]))


# ------------------------------------------------------------------ loading the backbone
def test_init_from_loads_exactly_the_backbone(parent: Path, tmp_path: Path) -> None:
    spec = child(parent)
    fresh = prepare_model(spec).state_dict()
    model = prepare_model(spec)
    start_from_parent(spec, model, tmp_path / "child")
    loaded, before = model.state_dict(), trained(parent)
    backbone = set(backbone_state(model))
    tops = {name.split(".", 1)[0] for name in backbone}
    assert tops == {"embed", "blocks", "norm"}, tops  # rope keeps no state
    assert set(loaded) - backbone == {"head.weight"}  # the lm head has no bias
    for name in backbone:  # the parent's trained weights, not a fresh initialisation
        assert torch.equal(loaded[name], before[name]), name
        assert not torch.equal(loaded[name], fresh[name]) or "norm" in name, name
    # the head is the run's own, initialised with its seed (same shape as the parent's)
    assert loaded["head.weight"].shape == before["head.weight"].shape
    assert torch.equal(loaded["head.weight"], fresh["head.weight"])
    assert not torch.equal(loaded["head.weight"], before["head.weight"])


def test_a_prompt_starts_from_the_parents_embeddings(parent: Path, tmp_path: Path) -> None:
    # prompt tuning's "sampled vocabulary" initialisation draws rows of the embedding
    # table; after init_from they must be the pretrained rows, not a fresh table's
    spec = child(parent, "adapter.kind=prompt", "adapter.n_tokens=4")
    model = prepare_model(spec)
    start_from_parent(spec, model, tmp_path / "child")
    table = trained(parent)["embed.weight"]
    for row in model.prompt.tokens.detach():
        assert any(torch.equal(row, t) for t in table), "prompt row is not a parent embedding"


def test_objective_modules_are_never_loaded(tmp_path: Path) -> None:
    spec = resolve(parent_spec())
    model = prepare_model(spec)
    model.objective_module = nn.Linear(4, 4)  # an objective's own module (e.g. MAE's decoder)
    with torch.no_grad():
        model.objective_module.weight.fill_(7.0)
        model.blocks[0].mixer.out.weight.fill_(0.5)
    folder = tmp_path / "parent"
    folder.mkdir()
    spec.save(folder / "spec.yaml")
    save_checkpoint(folder / "checkpoint", 1, model, make_optimizer(model, spec.train), {})
    new = child(folder)
    again = prepare_model(new)
    again.objective_module = nn.Linear(4, 4)
    own = again.objective_module.weight.clone()
    start_from_parent(new, again, tmp_path / "child")
    assert torch.equal(again.objective_module.weight, own)
    assert bool((again.blocks[0].mixer.out.weight == 0.5).all())


def test_another_backbone_is_refused_naming_every_field(parent: Path) -> None:
    spec = child(parent, "model.d_model=32", "model.n_heads=4", "model.norm=rmsnorm")
    with pytest.raises(SpecError) as err:
        check_init_from(spec)
    text = str(err.value)
    for fragment in ("init_from=", "model.d_model: 16 in the parent run, 32 now",
                     "model.n_heads: 2", "model.norm.name: 'layernorm'"):  # fmt: skip
        assert fragment in text, text
    # head fields and dropout may change
    assert check_init_from(child(parent, "model.dropout=0.1", "model.head=token_classify"))


def test_freeze_patterns_and_init_from_are_validated_and_hashed() -> None:
    base = parent_spec()
    for bad, fragment in [
        ("freeze=[blocks.2]", "'blocks.2' names blocks outside"),
        ("freeze=[blocks.1-0]", "'blocks.1-0'"),
        ("freeze=[embed]", "unknown part 'embed'"),
    ]:
        with pytest.raises(SpecError, match="freeze") as err:
            base.with_overrides([bad])
        assert fragment in str(err.value) and "blocks.N-M" in str(err.value)
    assert base.with_overrides(["freeze=embedder"]).freeze == ("embedder",)
    # new fields at their defaults leave old hashes alone; a parent is part of the hash
    assert ExperimentSpec.from_dict({**base.to_dict(), "freeze": []}).hash == base.hash
    a, b = (base.with_overrides([f"init_from=runs/{x}/"]) for x in ("a", "b"))
    assert a.init_from == "runs/a" and len({a.hash, b.hash, base.hash}) == 3


# ------------------------------------------------------------------ freezing
def test_freeze_keeps_frozen_weights_bit_identical(parent: Path, tmp_path: Path) -> None:
    spec = child(parent, "freeze=[embedder,blocks.0]")
    model = prepare_model(spec)
    frozen = set(apply_freeze(model, spec))
    assert frozen == {
        n for n, _ in model.named_parameters() if n.startswith(("embed.", "blocks.0."))
    }
    optimizer = make_optimizer(model, spec.train)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters() if p.requires_grad}
    run = run_experiment(spec, run_dir=tmp_path / "child")
    after, before = trained(run.dir), trained(parent)
    for name in after:
        same = torch.equal(after[name], before[name])
        if name.startswith(("embed.", "blocks.0.")):
            assert same, f"{name} is frozen but changed"
        elif name.startswith(("blocks.1.", "norm.")) and name.endswith("weight"):
            assert not same, f"{name} should have trained"


def test_linear_probe_trains_only_the_head(parent: Path, tmp_path: Path) -> None:
    spec = child(parent, "linear_probe=true")
    run = run_experiment(spec, run_dir=tmp_path / "child")
    after, before = trained(run.dir), trained(parent)
    fresh = prepare_model(spec).state_dict()
    for name, tensor in after.items():
        if name.startswith("head."):
            assert not torch.equal(tensor, fresh[name]), f"{name} did not train"
        else:
            assert torch.equal(tensor, before[name]), f"{name} changed under linear_probe"
    report = (run.dir / "report.md").read_text()
    assert "frozen: everything but the head (linear probe)" in report


def test_freezing_parts_without_parameters_warns(
    parent: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = child(parent, "freeze=[position,blocks.1]")  # rope has no parameters
    model = prepare_model(spec)
    with caplog.at_level("WARNING"):
        names = apply_freeze(model, spec)
    assert names and all(n.startswith("blocks.1.") for n in names)
    assert "'position' names no parameters" in caplog.text


def test_linear_probe_with_a_tied_head_is_refused(parent: Path) -> None:
    spec = child(parent, "linear_probe=true", "model.tie_embeddings=true")
    with pytest.raises(SpecError, match="tie_embeddings=false"):
        apply_freeze(prepare_model(spec), spec)


# ------------------------------------------------------------------ resuming
def test_a_resumed_fine_tune_is_bit_identical_and_needs_no_parent(
    parent: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "parent"
    shutil.copytree(parent, copy)
    spec = child(copy, "freeze=[blocks.0]")
    straight = run_experiment(spec, run_dir=tmp_path / "straight")
    half = ExperimentSpec.from_dict(
        {**spec.to_dict(), "train": {**spec.to_dict()["train"], "steps": 2}}
    )
    run_experiment(half, run_dir=tmp_path / "halves")
    shutil.rmtree(copy)  # the resumed run restores from its own checkpoint
    resume_run(tmp_path / "halves", ["train.steps=4"])
    a, b = trained(straight.dir), trained(tmp_path / "halves")
    assert all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------ the command line
def test_finetune_cli_end_to_end_links_the_parent(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    mine = out / parent.name  # the parent beside its fine-tuned runs, as under runs/
    shutil.copytree(parent, mine)
    code = main(["finetune", str(mine), "reverse", *CHILD, "train.steps=2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    (folder,) = (p for p in out.iterdir() if p != mine)
    assert folder.name.startswith("reverse-from-parent-")
    report = (folder / "report.md").read_text()
    link = f"../{parent.name}/report.md"
    assert f"]({link})" in report and "backbone from its checkpoint at step 4" in report
    assert (folder / link).resolve() == (mine / "report.md").resolve()
    (session,) = json.loads((folder / "provenance.json").read_text())["sessions"]
    assert session["init_from"] == str(mine) and session["parent_step"] == 4
    assert ExperimentSpec.from_yaml(folder / "spec.yaml").init_from == str(mine)


def _tampered(parent: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "tampered"
    shutil.copytree(parent, folder)
    weights = latest_checkpoint(folder / "checkpoint") / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x10
    weights.write_bytes(bytes(data))
    return folder


def _no_checkpoint(parent: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "fresh"
    folder.mkdir()
    shutil.copy(parent / "spec.yaml", folder / "spec.yaml")
    return folder


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda p, t: t / "missing", "is not a folder"),
        (lambda p, t: t, "has no spec.yaml"),
        (_no_checkpoint, "has no checkpoint"),
        (_tampered, "model.safetensors does not match the SHA-256"),
    ],
)
def test_bad_run_dirs_exit_2_naming_the_path(
    parent: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], make: Any, fragment: str
) -> None:
    bad = make(parent, tmp_path)
    out = tmp_path / "out"
    code = main(["finetune", str(bad), "reverse", *CHILD, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert fragment in err and bad.name in err and "Traceback" not in err, err
    assert not out.exists(), "a run folder was made for a refused parent"


def test_a_resolved_spec_naming_a_bad_parent_is_refused(tmp_path: Path) -> None:
    spec = resolve(parent_spec().with_overrides([f"init_from={tmp_path / 'none'}"]))
    with pytest.raises(RunFolderError, match="init_from="):
        run_experiment(spec, out=tmp_path / "runs")


@pytest.mark.slow  # two shapes tasks fit their baselines on 2,000 scenes each
def test_pretrain_quickstart_then_finetune_from_the_readme(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    small = ["train.steps=2", "train.eval_every=2", "train.checkpoint_every=2",
             "train.eval_size=16", "train.threads=1"]  # fmt: skip
    assert main(["run", "pretrain_quickstart", *small, "--out", str(tmp_path)]) == 0
    (parent,) = tmp_path.iterdir()
    assert parent.name.startswith("pretrain_quickstart-")
    argv = ["finetune", str(parent), "shapes", "task.output=count", *small]
    assert main([*argv, "--out", str(tmp_path)]) == 0, capsys.readouterr().err
    (folder,) = (p for p in tmp_path.iterdir() if p != parent)
    spec = ExperimentSpec.from_yaml(folder / "spec.yaml")
    assert spec.task.name == "shapes" and spec.task.params["output"] == "count"
    assert spec.model.head_ref.name == "classify" and spec.model.n_outputs == 6
    assert f"](../{parent.name}/report.md)" in (folder / "report.md").read_text()
