"""Property: every spec and every command line either validates (and a sample of the valid
ones trains a step) or exits 2 with a message naming a field or option; never another
exception, never a hang.

The fast profile runs in ``make test`` (derandomized, so a failure reproduces); the
``slow`` one (``make test-all``) draws many more inputs. Each test prints its counts.
"""

from __future__ import annotations

import contextlib
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyformer import registry
from anyformer.cli import main
from anyformer.lab.run import SPEC_FILE, prepare_model, resolve
from anyformer.spec import ExperimentSpec
from anyformer.spec_limits import estimate_memory
from anyformer.training.checkpoint import save_checkpoint

FAST = 150
SLOW = 1500
#: Seconds one input may take (validation, or validation and one training step).
TIMEOUT = 60
#: Train one step for every n-th valid spec small enough to train in a test.
TRAIN_EVERY = 4

TASKS = ["copy", "reverse", "parity", "sort", "addition", "mqar", "icl_linear_regression",
         "icl_uncertainty", "listops", "two_hop"]  # fmt: skip
JUNK_NAMES = ["", "nope", "os:system", "json:loads", "a b", "../x", "softmax:", ":x", "x" * 200]

weird = st.one_of(
    st.integers(-3, 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.booleans(),
    st.none(),
    st.lists(st.integers(-2, 10), max_size=3),
)
small = st.one_of(st.sampled_from([1, 2, 4, 8, 16, 32]), weird)


def ref(slot: str) -> st.SearchStrategy[Any]:
    """A component reference of ``slot``: a name, a junk name, or a mapping with a
    parameter of the variant (or a made-up one) set to a drawn value."""
    registry.components(slot)
    names = registry.components(slot)
    name = st.one_of(st.sampled_from(names), st.sampled_from(JUNK_NAMES))

    def with_param(n: str) -> st.SearchStrategy[Any]:
        fields = list(registry.get(slot, n).params.model_fields) if n in names else []
        key = st.sampled_from([*fields, "bogus"])
        return st.dictionaries(key, st.one_of(small, weird), max_size=2).map(
            lambda d: {"name": n, **d}
        )

    return st.one_of(name, st.sampled_from(names).flatmap(with_param))


def task_ref() -> st.SearchStrategy[Any]:
    def with_param(n: str) -> st.SearchStrategy[Any]:
        fields = list(registry.get("task", n).params.model_fields)
        return st.dictionaries(st.sampled_from(fields), small, max_size=2).map(
            lambda d: {"name": n, **d}
        )

    return st.one_of(
        st.sampled_from(TASKS + JUNK_NAMES[:3]), st.sampled_from(TASKS).flatmap(with_param)
    )


MODEL = {
    "d_model": small, "n_layers": st.one_of(st.sampled_from([1, 2]), weird),
    "n_heads": small, "max_len": st.one_of(st.sampled_from([8, 64, 128, 512]), weird),
    "kind": st.sampled_from(["decoder", "encoder", "x"]), "dropout": weird,
    "init_std": weird, "attention": ref("attention"), "position": ref("position"),
    "norm": ref("norm"), "ffn": ref("ffn"), "norm_placement": ref("layout"),
    "depth": ref("depth"), "head": st.sampled_from(["lm", "regress", "classify", "x"]),
    "n_outputs": small, "vocab_size": small, "tie_embeddings": weird, "bogus": weird,
}  # fmt: skip
TRAIN = {
    "lr": st.one_of(st.sampled_from([1e-3, 3e-3]), weird), "betas": weird,
    "weight_decay": weird, "warmup_steps": small, "steps": small, "batch_size": small,
    "grad_clip": weird, "eval_size": small, "seed": weird, "packing": st.booleans(),
    "precision": st.sampled_from(["auto", "fp32", "fp64"]), "min_lr_ratio": weird,
}  # fmt: skip


def some(fields: dict[str, st.SearchStrategy[Any]], most: int) -> st.SearchStrategy[dict]:
    """A mapping with up to ``most`` of ``fields``, each with a drawn value."""
    return st.lists(st.sampled_from(sorted(fields)), max_size=most, unique=True).flatmap(
        lambda keys: st.fixed_dictionaries({k: fields[k] for k in keys})
    )


specs = st.fixed_dictionaries(
    {},
    optional={
        "name": st.one_of(st.sampled_from(["fuzz", "a.b-c_1", "../x", "/abs", ".h", "x" * 150]),
                          st.text(max_size=8)),
        "model": some(MODEL, 3),
        "task": task_ref(),
        "objective": st.sampled_from(["causal_lm", "mse", "gaussian_nll", "nope"]),
        "train": some(TRAIN, 3),
        "plugins": st.sampled_from([[], ["os"], "x", [1]]),
        "bogus": weird,
    },
)  # fmt: skip


def keys_of(data: Any) -> set[str]:
    """Every key and string value in ``data`` (a message must name one of them)."""
    out: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            out.add(str(key))
            out |= keys_of(value)
    elif isinstance(data, list):
        for item in data:
            out |= keys_of(item)
    elif isinstance(data, str) and data:
        out.add(data)
    return out


@contextlib.contextmanager
def time_limit(seconds: int) -> Iterator[None]:
    def stop(signum: int, frame: Any) -> None:
        raise TimeoutError(f"an input took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """Exit status and stderr of ``anyformer argv`` (argparse's exits included)."""
    try:
        with time_limit(TIMEOUT):
            code = main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, " ".join(capsys.readouterr().err.split())


TRAIN_ONE_STEP = [
    "train.steps=1", "train.warmup_steps=0", "train.eval_every=1", "train.eval_size=4",
    "train.batch_size=2", "train.checkpoint_every=1", "train.progress=false",
    "train.threads=1", "train.device=cpu", "train.compile=false", "train.precision=fp32",
]  # fmt: skip


def trainable(path: Path) -> bool:
    """Whether a valid spec is small enough to train one step inside a test."""
    spec = resolve(ExperimentSpec.from_yaml(path).with_overrides(TRAIN_ONE_STEP))
    return spec.model.d_model <= 128 and estimate_memory(spec.model, spec.train).total < 2**28


def spec_property(
    examples: int, counts: Counter[str], capsys: pytest.CaptureFixture[str], tmp: Path
) -> None:
    torch.set_num_threads(1)

    @settings(
        max_examples=examples, derandomize=True, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(data=specs)
    def check(data: dict[str, Any]) -> None:
        counts["inputs"] += 1
        path = tmp / "spec.yaml"
        path.write_text(yaml.safe_dump(data, allow_unicode=True))
        code, err = cli(capsys, ["show", str(path)])
        if code == 2:
            counts["refused"] += 1
            named = keys_of(data) | {"name", "model", "train", "task", "objective", "plugins"}
            assert any(k in err for k in named if len(k) > 1), (data, err)
            return
        assert code == 0, (data, err)
        counts["validated"] += 1
        if counts["validated"] % TRAIN_EVERY or not trainable(path):
            return
        out = tmp / f"runs{counts['inputs']}"
        code, err = cli(capsys, ["run", str(path), *TRAIN_ONE_STEP, "--out", str(out)])
        assert code in (0, 2), (data, err)
        counts["trained one step" if code == 0 else "refused when run"] += 1
        if code == 2:  # a refusal at run time must name a field too
            assert any(k in err for k in keys_of(data) if len(k) > 1), (data, err)

    check()


def _report(counts: Counter[str]) -> None:
    other = counts["inputs"] - counts["validated"] - counts["refused"]
    print(f"\nfuzz counts: {dict(counts)}, other outcomes: {other}")
    assert other == 0
    assert counts["validated"] and counts["refused"]


def test_fuzz_specs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    counts: Counter[str] = Counter()
    spec_property(FAST, counts, capsys, tmp_path)
    with capsys.disabled():
        _report(counts)
    assert counts["trained one step"] >= 3


@pytest.mark.slow
def test_fuzz_specs_long(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    counts: Counter[str] = Counter()
    spec_property(SLOW, counts, capsys, tmp_path)
    with capsys.disabled():
        _report(counts)


# --------------------------------------------------------------------------- arguments
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained MatFormer run folder on copy, for extract and generate."""
    spec = resolve(
        ExperimentSpec.from_dict(
            {"name": "fz", "model": {"d_model": 16, "n_layers": 2, "n_heads": 2,
             "ffn": {"name": "matformer", "widths": [0.5, 1.0]}}, "task": "copy"}
        )
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("fuzz") / "fz-run"
    folder.mkdir()
    spec.save(folder / SPEC_FILE)
    model = prepare_model(spec)
    save_checkpoint(folder / "checkpoint", 1, model, torch.optim.SGD(model.parameters(), 0.1), {})
    return folder


number = st.one_of(
    st.integers(-5, 10**9).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "abc", "1e-3", "0.5", "1", "0", "-0", "1,2", "{", "[1"]),
)
axis = st.one_of(
    st.sampled_from(["model.n_layers=1,2", "model.position=rope,alibi", "model.n_layers=1,1",
                     "model.attention=softmax,{name: softmax}", "model.attention={", "x",
                     "model.n_layers,model.n_heads=1:2,2:4", "model.n_layers,model.n_heads=1",
                     "train.lr=1e-3,abc", "model.bogus=1,2", "model.n_layers="]),
    st.text(max_size=15),
)  # fmt: skip


@st.composite
def command_lines(draw: st.DrawFn, run: str) -> list[str]:
    kind = draw(st.sampled_from(["compare", "extract", "generate"]))
    if kind == "compare":
        argv = ["compare", "quickstart"]
        for _ in range(draw(st.integers(0, 2))):
            argv += ["--vary", draw(axis)]
        for option in ("--lrs", "--seeds", "--jobs"):
            if draw(st.booleans()):
                argv += [option, draw(number)]
        return argv
    if kind == "extract":
        n = draw(st.integers(1, 3))
        widths = draw(st.lists(st.one_of(st.sampled_from(["0.5", "1.0", "1"]), number),
                               min_size=n, max_size=n))  # fmt: skip
        return ["extract", run, "--widths", *widths, "--out", run + "-out"]
    argv = ["generate", run, "--prompt", draw(st.sampled_from(["1 2", "3", "", "x", "99"]))]
    for option in ("--eos", "--top-k", "--top-p", "--temperature", "--max-new-tokens", "--seed"):
        if draw(st.booleans()):
            argv += [option, draw(number)]
    return argv


class Ran(Exception):
    """Raised instead of running a comparison or an extraction whose arguments passed."""


def args_property(
    examples: int, counts: Counter[str], capsys: pytest.CaptureFixture[str], run: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    import anyformer.lab.compare
    import anyformer.lab.elastic

    def ran(*args: Any, **kwargs: Any) -> None:
        raise Ran

    monkeypatch.setattr(anyformer.lab.compare, "compare", ran)
    monkeypatch.setattr(anyformer.lab.elastic, "extract_run", ran)

    @settings(
        max_examples=examples, derandomize=True, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @given(argv=command_lines(str(run)))
    def check(argv: list[str]) -> None:
        counts["inputs"] += 1
        try:
            code, err = cli(capsys, argv)
        except Ran:
            capsys.readouterr()
            counts["validated"] += 1
            return
        if code == 0:
            counts["validated"] += 1
            return
        assert code == 2, (argv, err)
        counts["refused"] += 1
        # the option, or (argparse's "unrecognized arguments: -1e+16") the bad value
        words = {a for a in argv[2:] if len(a) > 1} | {"--prompt", "--vary"}
        assert any(w in err for w in words), (argv, err)

    check()


def test_fuzz_arguments(
    capsys: pytest.CaptureFixture[str], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts: Counter[str] = Counter()
    args_property(FAST, counts, capsys, run_dir, monkeypatch)
    with capsys.disabled():
        _report(counts)


@pytest.mark.slow
def test_fuzz_arguments_long(
    capsys: pytest.CaptureFixture[str], run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counts: Counter[str] = Counter()
    args_property(SLOW, counts, capsys, run_dir, monkeypatch)
    with capsys.disabled():
        _report(counts)
