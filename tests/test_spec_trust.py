"""A spec is input from someone else: it runs no code you did not allow, cannot write
outside --out, cannot exhaust memory, and every bad value exits 2 naming its field."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from anyformer import registry, safe_yaml
from anyformer.cli import main
from anyformer.errors import SpecError, UserError
from anyformer.lab.run import SPEC_FILE, prepare_model, resolve
from anyformer.spec import ExperimentSpec, load_yaml
from anyformer.spec_limits import estimate_memory
from anyformer.training.checkpoint import save_checkpoint

ATTENTION_PLUGIN = """
import pathlib
pathlib.Path({marker!r}).write_text("imported")
from anyformer.components.attention.softmax import SoftmaxAttention

class MyAttention(SoftmaxAttention):
    '''softmax attention under another name'''
"""


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _plugin(tmp_path: Path, name: str = "myplug") -> Path:
    """A module ``name`` in ``tmp_path/lib`` that writes ``tmp_path/marker`` when imported."""
    lib = tmp_path / "lib"
    lib.mkdir(exist_ok=True)
    marker = tmp_path / "marker"
    (lib / f"{name}.py").write_text(ATTENTION_PLUGIN.format(marker=str(marker)))
    return lib


# --------------------------------------------------------------------------- 2. imports
def test_show_refuses_a_function_path_and_says_how_to_allow(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nmodel:\n  attention: os:system\n")
    code, _, err = run_cli(capsys, "show", str(spec))
    assert code == 2 and "Traceback" not in err
    assert "model.attention" in err and "--allow-import os" in err and "anyformer.plugins" in err
    # allowed, it is still refused: it is not a class of the slot
    code, _, err = run_cli(capsys, "show", str(spec), "--allow-import", "os")
    assert code == 2 and "model.attention" in err and "not a class" in err


def test_a_spec_imports_nothing_unless_allowed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = _plugin(tmp_path)
    monkeypatch.syspath_prepend(str(lib))
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nmodel:\n  attention: myplug:MyAttention\n")
    code, _, err = run_cli(capsys, "show", str(spec))
    assert code == 2 and "--allow-import myplug" in err
    assert not (tmp_path / "marker").exists(), "the module was imported before being allowed"
    code, out, err = run_cli(capsys, "show", str(spec), "--allow-import", "myplug")
    assert code == 0, err
    assert (tmp_path / "marker").exists()
    shown = ExperimentSpec.from_dict(safe_yaml.load(out, "out"))
    assert shown.plugins == ("myplug",), "the allowed module is recorded in the spec"
    assert shown.model.attention.name == "myplug:MyAttention"


def test_plugins_field_needs_the_flag_on_the_command_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(_plugin(tmp_path, "otherplug")))
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nplugins: [otherplug]\n")
    code, _, err = run_cli(capsys, "show", str(spec))
    assert code == 2 and "plugins" in err and "--allow-import otherplug" in err
    assert not (tmp_path / "marker").exists()


def test_a_run_folder_naming_a_plugin_needs_the_flag_to_resume(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(_plugin(tmp_path, "runplug")))
    folder = tmp_path / "x-run"
    folder.mkdir()
    (folder / SPEC_FILE).write_text("name: x\nplugins: [runplug]\n")
    for command in (["resume", str(folder)], ["generate", str(folder), "--prompt", "1"]):
        code, _, err = run_cli(capsys, *command)
        assert code == 2 and "--allow-import runplug" in err, (command, err)
    assert not (tmp_path / "marker").exists()


def test_entry_point_plugins_are_allowed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = _plugin(tmp_path, "epplug")
    info = lib / "epplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: epplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[anyformer.plugins]\nepplug = epplug\n")
    monkeypatch.syspath_prepend(str(lib))
    assert "epplug" in registry.plugin_modules()
    spec = tmp_path / "s.yaml"
    spec.write_text("name: x\nmodel:\n  attention: epplug:MyAttention\n")
    code, _, err = run_cli(capsys, "show", str(spec))
    assert code == 0, err


def test_python_api_allows_paths_the_caller_names(tmp_path: Path) -> None:
    """Your own program already runs code of your choice: no policy there."""
    spec = ExperimentSpec.from_dict(
        {"model": {"attention": "anyformer.components.attention.softmax:SoftmaxAttention"}}
    )
    assert spec.model.attention.entry.name == "softmax"
    with registry.import_policy([]), pytest.raises(SpecError, match="--allow-import json"):
        ExperimentSpec.from_dict({"model": {"attention": "json.decoder:JSONDecoder"}})


def test_python_m_never_imports_from_the_working_directory(tmp_path: Path) -> None:
    """``python -m`` puts the working directory on sys.path; a file there is not imported,
    even when allowed (without --allow-import nothing is imported at all: tests above)."""
    (tmp_path / "evil.py").write_text(ATTENTION_PLUGIN.format(marker=str(tmp_path / "marker")))
    (tmp_path / "s.yaml").write_text("name: x\nmodel:\n  attention: evil:MyAttention\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    done = subprocess.run(
        [sys.executable, "-m", "anyformer", "show", "s.yaml", "--allow-import", "evil"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "model.attention" in done.stderr
    assert not (tmp_path / "marker").exists(), "imported from the working directory"
    assert "could not be imported" in done.stderr


# --------------------------------------------------------------------------- 3a. names
@pytest.mark.parametrize(
    "name", ["../../x", "/abs/path", "a/b", ".hidden", "-x", "a\x00b", "x" * 101, "", "a b"]
)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(SpecError, match="name"):
        ExperimentSpec.from_dict({"name": name})


def test_a_run_named_outside_out_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "a" / "runs"
    code, _, err = run_cli(capsys, "run", "quickstart", "name=../../escape", "--out", str(out))
    assert code == 2 and "name" in err and "../../escape" in err
    assert not any(tmp_path.rglob("*escape*")) and not out.exists()
    assert ExperimentSpec.from_dict({"name": "my-run_2.v1"}).name == "my-run_2.v1"


# --------------------------------------------------------------------------- 4. bombs
BOMB = (
    "a: &a [x, x, x, x, x, x, x, x, x]\n"
    + "".join(
        f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
        for p, c in zip("abcdefgh", "bcdefghi")
    )
    + "description: *i\n"
)


def test_alias_bomb_is_refused_quickly(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert len(BOMB) < 700
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "show", str(path))
    assert code == 2 and "aliases" in err
    assert time.perf_counter() - start < 5
    # few aliases, but expanding to too many values
    few = "a: &a [" + ", ".join(["x"] * 2000) + "]\nb: &b [" + ", ".join(["*a"] * 60) + "]\n"
    with pytest.raises(UserError, match="expands to more than"):
        safe_yaml.load(few * 1, "few")
    with pytest.raises(UserError, match="expands to more than"):
        safe_yaml.load("a: &a [*a]\n", "recursive")


def test_long_and_empty_files_are_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("description: '" + "x" * (safe_yaml.MAX_BYTES + 10) + "'\n")
    with pytest.raises(UserError, match="at most"):
        load_yaml(big)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    with pytest.raises(UserError, match="empty"):
        load_yaml(empty)


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("model.vocab_size=1000000000", "model.vocab_size"),
        ("train.batch_size=100000000", "train.batch_size"),
        ("model.n_layers=100000", "model.n_layers"),
        ("model.max_len=100000000", "model.max_len"),
        ("train.steps=10000000000", "train.steps"),
        ("train.eval_size=1000000000", "train.eval_size"),
        ("task.ood_max_len=1.0e+30", "ood_max_len"),
        ("task.ood_max_len=.inf", "ood_max_len"),
        ("model.ffn.mult=.nan", "mult"),
        ("task.ood_max_len=9000000", "ood_max_len=9000000"),
        ("task.ood_max_len=90000", "task.ood_max_len=90000 is longer than model.max_len"),
        ("task={name: kg_reasoning, n_entities: 9000000}", "n_entities"),
        ("model.attention={name: softmax, kv_heads: 99999999}", "kv_heads"),
    ],
)
def test_size_fields_are_bounded(override: str, field: str) -> None:
    with pytest.raises(SpecError) as info:
        ExperimentSpec().with_overrides([override])
    assert field in str(info.value)


def test_memory_estimate_refuses_what_cannot_fit() -> None:
    with pytest.raises(SpecError) as info:
        ExperimentSpec().with_overrides(["model.d_model=65536"])
    msg = str(info.value)
    assert "GiB" in msg and "this machine's" in msg and "train.allow_large=true" in msg
    spec = ExperimentSpec().with_overrides(["model.d_model=65536", "train.allow_large=true"])
    assert spec.model.d_model == 65536  # the override lets it through (nothing is built here)
    small = ExperimentSpec().with_overrides(["model.d_model=256"])
    assert small.with_overrides(["train.allow_large=true"]).hash == small.hash


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model.d_model=96", "model.n_heads=3", "model.n_layers=3", "model.tie_embeddings=false"],
        ["model.ffn=glu", "model.depth={name: looped, loops: 3}"],
        ["task=icl_linear_regression"],
    ],
)
def test_memory_estimate_bounds_the_real_parameter_count(overrides: list[str]) -> None:
    spec = resolve(ExperimentSpec().with_overrides(["train.batch_size=2", *overrides]))
    real = prepare_model(spec).num_params()
    est = estimate_memory(spec.model, spec.train)
    assert real <= est.params <= 1.5 * real + 10_000, (real, est.params)
    assert est.param_bytes == 16 * est.params and est.activation_bytes > 0


# --------------------------------------------------------------------------- 11. optimiser
@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("train.lr=.inf", "train.lr"),
        ("train.lr=1e38", "train.lr"),
        ("train.lr=1.0e+38", "train.lr"),
        ("train.lr=0", "train.lr"),
        ("train.lr=-0.1", "train.lr"),
        ("train.betas=[1.0, 0.9]", "train.betas"),
        ("train.betas=[0.9, -0.1]", "train.betas"),
        ("train.betas=[0.9, .nan]", "train.betas"),
        ("train.weight_decay=-1", "train.weight_decay"),
        ("train.weight_decay=.nan", "train.weight_decay"),
        ("train.grad_clip=.inf", "train.grad_clip"),
        ("model.init_std=.inf", "model.init_std"),
        ("model.dropout=.nan", "model.dropout"),
    ],
)
def test_optimiser_values_are_range_checked(override: str, field: str) -> None:
    with pytest.raises(SpecError) as info:
        ExperimentSpec().with_overrides([override])
    assert field in str(info.value)


# --------------------------------------------------------------------------- 12. CLI
@pytest.fixture(scope="module")
def matformer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run folder (spec + checkpoint, untrained) of a 2-layer MatFormer on copy."""
    spec = resolve(
        ExperimentSpec.from_dict(
            {"name": "mat", "model": {"d_model": 32, "n_layers": 2,
             "ffn": {"name": "matformer", "widths": [0.25, 0.5, 1.0]}}, "task": "copy"}
        )
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("runs") / "mat-run"
    folder.mkdir()
    spec.save(folder / SPEC_FILE)
    model = prepare_model(spec)
    save_checkpoint(folder / "checkpoint", 1, model, torch.optim.SGD(model.parameters(), 0.1), {})
    return folder


RUN = "<run>"


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["extract", RUN, "--widths", "0"], ["--widths", "(0, 1]"]),
        (["extract", RUN, "--widths", "2"], ["--widths", "(0, 1]"]),
        (["extract", RUN, "--widths", "0.3"], ["--widths 0.3", "0.25, 0.5, 1"]),
        (["extract", RUN, "--widths", "0.5", "0.5", "0.5"], ["one per distinct block (2)"]),
        (["compare", "quickstart", "--lrs", "abc", "--vary", "model.n_layers=1,2"], ["--lrs"]),
        (["compare", "quickstart", "--lrs", "1e-3,inf", "--vary", "model.n_layers=1,2"],
         ["--lrs", "(0, 10]"]),
        (["compare", "quickstart", "--vary", "model.n_layers=1,2,1"], ["--vary", "twice"]),
        (["compare", "quickstart", "--vary", "model.attention=softmax,{name: softmax}"],
         ["--vary", "twice"]),
        (["compare", "quickstart", "--vary", "model.n_layers=1,2", "--vary", "model.n_layers=3,4"],
         ["--vary", "model.n_layers", "already varied"]),
        (["compare", "quickstart", "--vary", "model.attention=softmax,{name: sliding"],
         ["--vary model.attention", "not valid YAML"]),
        (["show", "quickstart", "model.attention={name: sliding"],
         ["model.attention", "not valid YAML"]),
        (["show", "quickstart", "name=" + "x" * 300], ["name", "too long"]),
        (["show", "quickstart", "name=a\x00b"], ["name"]),
        (["show", "quickstart", "objective=gaussian_nll"], ["objective='gaussian_nll'", "head"]),
        (["show", "quickstart", "task=icl_linear_regression", "objective=causal_lm"],
         ["objective='causal_lm'", "token_regress"]),
        (["show", "quickstart", "task=icl_linear_regression", "objective=gaussian_nll"],
         ["objective='gaussian_nll'", "n_outputs"]),
        (["show", "quickstart", "train.lr=1e38"], ["train.lr"]),
        (["show", "quickstart", "train.warmup_steps=300", "train.steps=200"],
         ["warmup_steps=300", "steps=200"]),
        (["show", "quickstart", "train.warmup_steps=10", "train.steps=5"],
         ["warmup_steps=10", "steps=5"]),
        (["show", "quickstart", "model.attention={name: sliding_window, window: 100}",
          "model.max_len=64"], ["window=100", "max_len=64"]),
        (["reproduce", "--all", "copy_length"], ["--all", "copy_length"]),
        (["generate", RUN, "--prompt", "1 2", "--eos", "30"], ["--eos 30", "outside the model's vocabulary"]),
        (["generate", RUN, "--prompt", "1 2", "--eos", "-1"], ["--eos"]),
        (["generate", RUN, "--prompt", "1 2", "--top-p", "0"], ["--top-p"]),
        (["generate", RUN, "--prompt", "1 2", "--top-k", "0"], ["--top-k"]),
        (["generate", RUN, "--prompt", "1 2", "--temperature", "nan"], ["--temperature"]),
        (["generate", RUN, "--prompt", "1 2", "--max-new-tokens", "-3"], ["--max-new-tokens"]),
        (["generate", RUN, "--prompt", "1 2", "--temperature", "1e-228"], ["--temperature"]),
        (["compare", "quickstart", "--vary", "train.lr=1e-3,abc"], ["--vary", "train.lr", "abc"]),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_naming_the_option(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    matformer_run: Path,
    argv: list[str],
    fragments: list[str],
) -> None:
    import anyformer.lab.compare

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a refused comparison ran")

    monkeypatch.setattr(anyformer.lab.compare, "compare", never)
    argv = [str(matformer_run) if a == RUN else a for a in argv]
    code, _, err = run_cli(capsys, *argv)
    err = " ".join(err.split())
    assert code == 2 and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["compare", "quickstart", "--jobs", "0", "--vary", "model.n_layers=1,2"], "--jobs"),
        (["compare", "quickstart", "--seeds", "0", "--vary", "model.n_layers=1,2"], "--seeds"),
        (["compare", "quickstart", "--seeds", "x", "--vary", "model.n_layers=1,2"], "--seeds"),
    ],
)
def test_counts_must_be_positive(
    capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert fragment in capsys.readouterr().err


def test_warmup_longer_than_the_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Refused when set so, allowed when only train.steps is shortened (a smoke run)."""
    spec = tmp_path / "w.yaml"
    spec.write_text("name: w\ntrain: {steps: 200, warmup_steps: 300}\n")
    code, _, err = run_cli(capsys, "show", str(spec))
    assert code == 2 and "train.warmup_steps=300" in err and "at most 200" in err
    code, out, _ = run_cli(capsys, "show", "quickstart", "train.steps=5")
    assert code == 0 and "warmup_steps: 100" in out


def test_empty_yaml_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "e.yaml").write_text("")
    code, _, err = run_cli(capsys, "run", str(tmp_path / "e.yaml"), "--out", str(tmp_path / "r"))
    assert code == 2 and "empty" in err and not (tmp_path / "r").exists()


def test_extract_accepts_a_trained_width(
    capsys: pytest.CaptureFixture[str], matformer_run: Path, tmp_path: Path
) -> None:
    code, out, err = run_cli(
        capsys, "extract", str(matformer_run), "--widths", "0.5", "--out", str(tmp_path)
    )
    assert code == 0, err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import anyformer

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"anyformer {anyformer.__version__}"


def test_help_text_of_allow_import_is_on_every_spec_command() -> None:
    from anyformer.cli import build_parser

    parser = build_parser()
    for command in ("run", "resume", "show", "compare", "generate", "extract"):
        args = parser.parse_args(
            [command, "x", "--allow-import", "a", "--allow-import", "b"]
            + (["--widths", "1"] if command == "extract" else [])
            + (["--prompt", "1"] if command == "generate" else [])
        )
        assert args.allow_import == ["a", "b"]
