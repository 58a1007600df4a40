"""The CUDA code paths, which CI (CPU only) never runs: fp32 forwards equal the CPU's,
bf16 autocast stays close to fp32, cached generation equals recomputation and the CPU's
tokens, training with the CUDA defaults (bf16, torch.compile) learns and logs tokens/s,
FLOP/s and MFU, fp16 and eager runs learn too, compiled training equals eager training,
packed batches give the per-token losses of padded ones, and a checkpoint written on
CUDA loads and resumes on a CPU-only process.

Every test carries the ``cuda`` marker and is skipped where ``torch.cuda.is_available()``
is false. On a GPU machine: ``python -m pytest -q -m cuda tests/cuda`` (what
``scripts/device_check.sh`` runs). The models are tiny: the file takes about two
minutes on an H100, most of it torch.compile.

Tolerances. fp32 comparisons run with TF32 off (``torch.set_float32_matmul_precision
("highest")``, cuDNN TF32 off; the fixture below), so CUDA and CPU both compute in IEEE
fp32 and differ only in summation order (cuBLAS/SDPA kernels vs MKL), about 1e-6
relative for these widths (d_model 64). Logits are of order 1 (``init_std=0.2`` makes
them far from uniform), so an absolute 1e-4 leaves two orders of margin for rounding
while a real bug (a wrong mask, position or cache slot) moves logits by 1e-2 or more.
Training comparisons over a few AdamW steps use 1e-4 on the loss, since Adam's
normalised update can amplify a rounding difference in a small gradient.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import anyformer
from anyformer.decoding import generate
from anyformer.lab.run import SPEC_FILE, build_objective, build_task, prepare_model, resolve
from anyformer.model.transformer import Transformer, build_model
from anyformer.spec import ExperimentSpec
from anyformer.tasks.base import Batch
from anyformer.tasks.packing import model_inputs, pack_batch, random_padded_batch
from anyformer.training.checkpoint import latest_checkpoint, load_checkpoint
from anyformer.training.precision import DTYPES, autocast
from anyformer.training.throughput import peak_flops
from anyformer.training.trainer import Trainer, make_optimizer

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda")
pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not CUDA, reason="needs a CUDA device (run on a GPU machine)"),
]

V = 37  # vocabulary of the hand-built models
TOL = dict(atol=1e-4, rtol=0)  # fp32 CUDA vs CPU / cached vs full (see the module docstring)
SRC = Path(anyformer.__file__).resolve().parents[1]  # the folder holding the package


@pytest.fixture(autouse=True)
def _exact_fp32() -> Iterator[None]:
    """fp32 matrix products in full fp32 (no TF32) for the duration of a test."""
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


# --------------------------------------------------------------------------- helpers
def decoder(attention: dict[str, Any], position: str) -> Transformer:
    """A small token decoder (CPU, eval mode) whose logits are far from uniform."""
    spec = dict(kind="decoder", vocab_size=V, d_model=64, n_heads=4, n_layers=2, max_len=64)
    spec.update(attention=attention, position=position, init_std=0.2)
    return build_model(spec).eval()


def tiny(steps: int = 60, **train: Any) -> ExperimentSpec:
    """A 2-layer decoder copying 2-6 symbols on CUDA; ``train`` overrides train fields."""
    data = {
        "name": "cudatiny",
        "model": {"d_model": 64, "n_heads": 4, "n_layers": 2, "max_len": 32, "dropout": 0.0},
        "task": {"name": "copy", "min_len": 2, "max_len": 6, "ood_min_len": 7, "ood_max_len": 8},
        "train": {
            "steps": steps,
            "batch_size": 32,
            "lr": 3e-3,
            "warmup_steps": 5,
            "eval_every": 1000,
            "eval_size": 64,
            "checkpoint_every": 1000,
            "log_every": 1,
            "progress": False,
            "device": DEV.type,
            **train,
        },
    }
    return resolve(ExperimentSpec.from_dict(data))


def fixed_length(spec: ExperimentSpec) -> ExperimentSpec:
    """``spec`` with training sequences of one length (copy 5 symbols), so torch.compile
    makes one training graph and does not recompile for other shapes."""
    lengths = ["task.min_len=5", "task.max_len=5", "task.ood_min_len=6", "task.ood_max_len=7"]
    return spec.with_overrides(lengths)


def trainer(spec: ExperimentSpec, folder: Path | None = None) -> Trainer:
    """The Trainer ``anyformer run`` builds for ``spec`` (model seeded by the spec)."""
    task = build_task(spec)
    return Trainer(prepare_model(spec), task, build_objective(spec, task), spec.train, folder)


def read_metrics(folder: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training lines, evaluation lines) of a run folder's metrics.jsonl."""
    lines = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "split" not in r], [r for r in lines if "split" in r]


def known_peak(precision: str) -> float:
    """The GPU's peak FLOP/s at ``precision``; fails (naming the GPU) if the table lacks it."""
    peak = peak_flops(DEV, precision)
    name = torch.cuda.get_device_name()
    assert peak, f"{name!r} has no {precision} peak in anyformer.training.throughput.PEAKS"
    return peak


def assert_throughput_logged(
    lines: list[dict[str, Any]], t: Trainer, batch_size: int, precision: str
) -> None:
    """Every training line carries tokens/s, FLOP/s = flops_per_token(T) x tokens/s, and
    MFU = FLOP/s / the GPU's peak at ``precision``."""
    peak = known_peak(precision)
    assert lines
    for r in lines:
        seq = t.task.train_batch(r["step"] - 1, batch_size).inputs.shape[1]
        assert r["tokens_per_s"] > 0
        assert r["flops_per_s"] / r["tokens_per_s"] == pytest.approx(
            t.model.flops_per_token(seq), rel=1e-9
        )
        assert r["mfu"] == pytest.approx(r["flops_per_s"] / peak, rel=1e-9)
        assert 0 < r["mfu"] < 1


# --------------------------------------------------------------------------- forward
FORWARD_CASES = [
    pytest.param({"name": "softmax"}, "rope", id="softmax-rope"),
    pytest.param({"name": "softmax", "kv_heads": 2}, "alibi", id="softmax-gqa-alibi"),
    pytest.param({"name": "softmax", "impl": "reference"}, "learned", id="reference-learned"),
    pytest.param({"name": "linear"}, "learned", id="linear-learned"),
]


@pytest.mark.parametrize(("attention", "position"), FORWARD_CASES)
def test_fp32_forward_on_cuda_equals_the_cpu_forward(attention: dict, position: str) -> None:
    """The same weights give the same fp32 logits on CUDA and CPU (to 1e-4), with and
    without a padding mask (SDPA's fused causal path and its masked path)."""
    model = decoder(attention, position)
    on_gpu = copy.deepcopy(model).to(DEV)
    tokens = torch.randint(0, V, (3, 24))
    padding = torch.ones(3, 24, dtype=torch.bool)
    padding[1, 17:] = False
    padding[2, 9:] = False
    with torch.no_grad():
        for mask in (None, padding):
            cpu = model(tokens, padding_mask=mask)
            gpu = on_gpu(tokens.to(DEV), padding_mask=None if mask is None else mask.to(DEV))
            assert gpu.device == DEV and gpu.dtype == torch.float32
            torch.testing.assert_close(gpu.cpu(), cpu, **TOL)
            assert cpu.std() > 0.5  # far from uniform: a difference would show


@pytest.mark.parametrize(("attention", "position"), FORWARD_CASES[:2])
def test_bf16_autocast_forward_on_cuda_stays_close_to_fp32(attention: dict, position: str) -> None:
    """Under the Trainer's bf16 autocast the logits come out in bf16, within 3% relative
    error of the fp32 logits (bf16 keeps 8 mantissa bits: ~1% measured on CPU), and the
    argmax agrees at 90% of positions or more."""
    model = decoder(attention, position).to(DEV)
    tokens = torch.randint(0, V, (3, 24), device=DEV)
    with torch.no_grad():
        ref = model(tokens)
        with autocast(DEV, "bf16"):
            low = model(tokens)
    assert low.dtype == torch.bfloat16
    assert ((low.float() - ref).norm() / ref.norm()).item() < 0.03
    assert (low.float().argmax(-1) == ref.argmax(-1)).float().mean().item() >= 0.9


# --------------------------------------------------------------------------- generation
PROMPT, NEW = 6, 20
GENERATE_CASES = [
    pytest.param({"name": "softmax"}, "rope", id="softmax-rope"),
    pytest.param({"name": "softmax"}, "learned", id="softmax-learned"),
    pytest.param({"name": "softmax", "kv_heads": 2}, "alibi", id="softmax-gqa-alibi"),
    pytest.param({"name": "sliding_window", "window": 4}, "rope", id="sliding_window-rope"),
    pytest.param({"name": "linear"}, "learned", id="linear-learned"),
    pytest.param({"name": "delta"}, "none", id="delta-none"),
]


@pytest.mark.parametrize(("attention", "position"), GENERATE_CASES)
def test_cached_greedy_generation_on_cuda_equals_recomputation_and_cpu(
    attention: dict, position: str
) -> None:
    """Greedy decoding on CUDA with a cache (KV buffers, a rolling window, or a recurrent
    state) gives the tokens of full recomputation on CUDA and of cached decoding on CPU,
    token for token, with logits equal to 1e-4."""
    model = decoder(attention, position)
    on_gpu = copy.deepcopy(model).to(DEV)
    prompt = torch.randint(0, V, (2, PROMPT))
    cached, cached_logits = generate(
        on_gpu, prompt.to(DEV), NEW, use_cache=True, return_logits=True
    )
    full, full_logits = generate(on_gpu, prompt.to(DEV), NEW, use_cache=False, return_logits=True)
    cpu, cpu_logits = generate(model, prompt, NEW, use_cache=True, return_logits=True)
    assert cached.device == DEV and cached.shape == (2, PROMPT + NEW)
    assert torch.equal(cached, full)
    assert torch.equal(cached.cpu(), cpu)
    torch.testing.assert_close(cached_logits, full_logits, **TOL)
    torch.testing.assert_close(cached_logits.cpu(), cpu_logits, **TOL)
    assert cached_logits.std(dim=-1).min() > 0.1  # logits far from uniform: a real test


def test_sampling_on_cuda_is_reproducible_and_respects_top_k() -> None:
    """Sampling on CUDA with a CUDA ``torch.Generator``: the same seed gives the same
    tokens, another seed other tokens, and every token is among the top-k of its logits."""
    model = decoder({"name": "softmax"}, "rope").to(DEV)
    prompt = torch.randint(0, V, (4, PROMPT), device=DEV)

    def sample(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator(device=DEV).manual_seed(seed)
        out = generate(model, prompt, NEW, temperature=1.0, top_k=5, generator=gen,
                       return_logits=True)  # fmt: skip
        return out  # type: ignore[return-value]

    first, logits = sample(3)
    again, _ = sample(3)
    other, _ = sample(4)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    chosen = first[:, PROMPT:]
    allowed = logits.topk(5, dim=-1).indices
    assert bool((allowed == chosen[..., None]).any(-1).all())
    # a CPU generator drives a CUDA model too (draws happen on the generator's device)
    cpu_draws = [
        generate(model, prompt, NEW, temperature=1.0, generator=torch.Generator().manual_seed(5))
        for _ in range(2)
    ]
    assert cpu_draws[0].device == DEV and torch.equal(*cpu_draws)


# --------------------------------------------------------------------------- training
CLI_STEPS = 100
CLI_OVERRIDES = [
    f"train.device={DEV.type}",
    f"train.steps={CLI_STEPS}",
    "train.warmup_steps=10",
    "train.log_every=1",
    f"train.eval_every={CLI_STEPS}",
    "train.eval_size=64",
    f"train.checkpoint_every={CLI_STEPS}",
    "train.progress=false",
]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """``anyformer run quickstart train.device=cuda ...`` in this process, with the CUDA
    defaults (precision and compile left unset); the graph breaks torch.compile met."""
    from anyformer.cli import main
    from anyformer.training.distributed import graph_breaks

    out = tmp_path_factory.mktemp("cli")
    before = graph_breaks()
    code = main(["run", "quickstart", *CLI_OVERRIDES, "--out", str(out)])
    after = graph_breaks()
    breaks = {k: n - before.get(k, 0) for k, n in after.items() if n > before.get(k, 0)}
    return {"code": code, "folders": sorted(out.glob("quickstart-*")), "breaks": breaks}


def test_cli_run_with_cuda_defaults_learns_and_logs_throughput(cli_run: dict[str, Any]) -> None:
    """``anyformer run`` on CUDA resolves to bf16 autocast and torch.compile, lowers the
    loss of the quickstart copy task in 100 steps (the last ten steps' mean loss at least
    0.5 below the first ten's; the id evaluation loss under 0.85 ln V, measured about
    0.74 ln V on CPU), logs tokens/s, FLOP/s and MFU on every training line, and writes
    the report and the final checkpoint."""
    assert cli_run["code"] == 0
    assert len(cli_run["folders"]) == 1
    folder = cli_run["folders"][0]
    spec = ExperimentSpec.from_yaml(folder / SPEC_FILE)
    assert spec.train.device == DEV.type
    assert spec.train.precision == "auto" and spec.train.compile is None  # the defaults
    t = trainer(spec)  # how the run resolved them (compile is lazy: nothing compiles here)
    assert t.device.type == DEV.type and t.compile
    # documented: bf16 on GPUs with native bf16 (compute capability 8.0+), else fp16
    assert t.precision == ("bf16" if torch.cuda.get_device_capability()[0] >= 8 else "fp16")
    train, evals = read_metrics(folder)
    assert [r["step"] for r in train] == list(range(1, CLI_STEPS + 1))
    losses = [r["loss"] for r in train]
    assert all(math.isfinite(x) for x in losses)
    assert statistics.mean(losses[-10:]) < statistics.mean(losses[:10]) - 0.5
    final = {r["split"]: r for r in evals if r["step"] == CLI_STEPS}
    assert set(final) == {"id", "ood"}
    assert final["id"]["loss"] < 0.85 * math.log(spec.model.vocab_size)
    assert_throughput_logged(train, t, spec.train.batch_size, t.precision)
    assert (folder / "report.md").is_file()
    assert (folder / "checkpoint" / "latest").read_text() == f"step-{CLI_STEPS}"


def test_compiled_quickstart_blocks_have_no_graph_breaks(cli_run: dict[str, Any]) -> None:
    """torch.compile met no graph break in the quickstart model's blocks (pre-norm,
    softmax attention with rotary positions, MLP) during the CLI run, in training or
    evaluation: a break would split every block into several graphs."""
    assert cli_run["code"] == 0
    assert cli_run["breaks"] == {}, f"graph breaks: {cli_run['breaks']}"


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_explicit_precision_in_eager_mode_learns_on_cuda(precision: str, tmp_path: Path) -> None:
    """``train.precision=fp16|bf16`` with ``train.compile=false``: outputs are computed in
    that dtype, parameters stay fp32, fp16 uses a gradient scaler, losses stay finite, the
    id evaluation loss falls below 0.8 of its initial value in 60 steps (about 0.6 on CPU),
    and every logged line carries tokens/s, FLOP/s and MFU."""
    spec = tiny(precision=precision, compile=False)
    t = trainer(spec, tmp_path)
    assert t.precision == precision and not t.compile
    assert (t.scaler is not None) == (precision == "fp16")
    batch = t.task.train_batch(0, 4)
    assert t.predict(batch).dtype == DTYPES[precision]
    initial = t.evaluate()["id"]["loss"]
    result = t.fit()
    assert result.step == spec.train.steps and not result.interrupted
    assert all(math.isfinite(loss) for _, loss in result.losses)
    assert result.final["id"]["loss"] < 0.8 * initial
    assert all(p.dtype == torch.float32 and p.device.type == DEV.type for p in t.model.parameters())
    train, _ = read_metrics(tmp_path)
    assert_throughput_logged(train, t, spec.train.batch_size, precision)


def test_compiled_training_on_cuda_equals_eager_training() -> None:
    """Four fp32 steps with every block compiled give the eager run's losses (to 1e-4) on
    sequences of one length (so that one graph serves every step)."""
    spec = fixed_length(tiny(steps=4, precision="fp32", warmup_steps=0))
    eager = trainer(spec.with_overrides(["train.compile=false"]))
    compiled = trainer(spec.with_overrides(["train.compile=true"]))
    assert compiled.compile and not eager.compile
    a = [eager.train_step(s) for s in range(4)]
    b = [compiled.train_step(s) for s in range(4)]
    assert all(
        getattr(blk, "_compiled_call_impl", None) is not None for blk in compiled.model.blocks
    )
    assert a == pytest.approx(b, abs=1e-4, rel=0)
    assert a[-1] < a[0]  # it trained


# --------------------------------------------------------------------------- packing
LENGTHS = [5, 11, 2, 8, 3]


def padded_batch(lengths: list[int]) -> Batch:
    """Rows of random tokens and targets of the given lengths, padding trailing."""
    return random_padded_batch(lengths, V, torch.Generator().manual_seed(0))


def token_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every position, ``[B, T]``."""
    return F.cross_entropy(logits.transpose(1, 2).float(), targets, reduction="none")


@pytest.mark.parametrize("position", ["rope", "learned", "alibi"])
def test_packed_rows_give_the_per_token_losses_of_padded_rows_on_cuda(position: str) -> None:
    """fp32 on CUDA: the losses of every real token of a packed batch (several documents
    per row, kept apart by segments, positions restarting per document) equal those of
    the padded batch to 1e-4; packing CUDA tensors gives the layout packing on CPU does."""
    model = decoder({"name": "softmax"}, position).to(DEV)
    padded = padded_batch(LENGTHS)
    packed, layout = pack_batch(padded, row_len=16)
    packed_on_gpu, layout_on_gpu = pack_batch(padded.to(DEV), row_len=16)
    assert packed.inputs.shape[0] < padded.inputs.shape[0]  # really packed: fewer rows
    assert layout_on_gpu.places == layout.places
    for key in ("segments", "positions"):
        assert torch.equal(packed_on_gpu.extras[key].cpu(), packed.extras[key])
    padded, packed = padded.to(DEV), packed.to(DEV)
    with torch.no_grad():
        pad_losses = token_losses(model(padded.inputs, **model_inputs(padded)), padded.targets)
        pack_losses = token_losses(model(packed.inputs, **model_inputs(packed)), packed.targets)
    for row, n, seq in zip(pad_losses, LENGTHS, layout.unpack(pack_losses), strict=True):
        torch.testing.assert_close(seq, row[:n], **TOL)


def test_packed_training_on_cuda_matches_padded_training() -> None:
    """``train.packing=true`` on CUDA (fp32, eager) on listops (rows of different lengths):
    the losses of four steps and the evaluation losses equal the padded run's to 1e-4,
    and exact-match accuracy differs by at most one example in 64."""
    results = []
    for packing in (False, True):
        data = {
            "name": "cudapacking",
            "model": {"d_model": 32, "n_heads": 4, "n_layers": 2, "max_len": 128},
            "task": {"name": "listops", "max_depth": 3, "max_args": 4},
            "train": {"steps": 4, "batch_size": 16, "lr": 3e-3, "warmup_steps": 0,
                      "eval_every": 100, "eval_size": 64, "checkpoint_every": 100,
                      "progress": False, "device": DEV.type, "precision": "fp32",
                      "compile": False, "packing": packing},
        }  # fmt: skip
        t = trainer(resolve(ExperimentSpec.from_dict(data)))
        results.append(t.fit())
    padded, packed = results
    assert [s for s, _ in packed.losses] == [1, 2, 3, 4]
    for (_, a), (_, b) in zip(padded.losses, packed.losses, strict=True):
        assert b == pytest.approx(a, abs=1e-4)
    for split in padded.final:
        assert packed.final[split]["loss"] == pytest.approx(padded.final[split]["loss"], abs=1e-4)
        gap = abs(packed.final[split]["exact_match"] - padded.final[split]["exact_match"])
        assert gap <= 1 / 64 + 1e-9


# --------------------------------------------------------------------------- checkpoints
CKPT_STEPS = 6


def anyformer_cpu_only(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m anyformer ARGS`` in a process that sees no GPU (``CUDA_VISIBLE_DEVICES``
    empty, as on a laptop), one thread, with this checkout's package on the path."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "anyformer", *args],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cuda_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A run folder (spec.yaml, metrics, checkpoint) trained on CUDA with compiled blocks
    (fp32, the fixed-length task of the compile test, so its graphs serve here too) for
    CKPT_STEPS steps, its weights at the end, and the loss of the next batch on CUDA."""
    folder = tmp_path_factory.mktemp("ckpt") / "run"
    folder.mkdir()
    spec = fixed_length(tiny(steps=CKPT_STEPS, precision="fp32", compile=True, eval_size=16))
    spec.save(folder / SPEC_FILE)
    t = trainer(spec, folder)
    assert t.compile
    t.fit()
    weights = {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
    batch = t.task.train_batch(CKPT_STEPS, spec.train.batch_size)
    with torch.no_grad():
        next_loss = float(t.objective(t.predict(batch), batch.to(t.device)))
    return {"folder": folder, "spec": spec, "weights": weights, "next_loss": next_loss}


def test_checkpoint_saved_on_cuda_loads_on_cpu_with_identical_weights(
    cuda_checkpoint: dict[str, Any],
) -> None:
    """The safetensors checkpoint of a run trained on CUDA with compiled blocks loads into
    a plain CPU model (parameter names unchanged by compile) with bit-identical weights,
    and its optimizer state loads into a CPU optimizer that can take a step."""
    spec, weights = cuda_checkpoint["spec"], cuda_checkpoint["weights"]
    path = latest_checkpoint(cuda_checkpoint["folder"] / "checkpoint")
    assert path is not None and path.name == f"step-{CKPT_STEPS}"
    model = prepare_model(spec)  # CPU, fresh initialisation
    optimizer = make_optimizer(model, spec.train)
    state = load_checkpoint(path, model, optimizer)
    assert state["step"] == CKPT_STEPS
    loaded = model.state_dict()
    assert loaded.keys() == weights.keys()
    for name, value in weights.items():
        assert loaded[name].device.type == "cpu"
        assert torch.equal(loaded[name], value), name
    batch = build_task(spec).train_batch(CKPT_STEPS, 8)
    loss = build_objective(spec, build_task(spec))(model(batch.inputs), batch)
    loss.backward()
    optimizer.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p.detach(), weights[n]) for n, p in model.named_parameters())


def test_run_trained_on_cuda_generates_in_a_cpu_only_process(
    cuda_checkpoint: dict[str, Any],
) -> None:
    """``anyformer generate RUN --prompt '1 2 3'`` in a process that sees no GPU loads the
    CUDA run's checkpoint and prints the greedy continuation that the run's final weights
    give on CPU in this process (what a laptop does with a run trained on a GPU)."""
    spec, weights = cuda_checkpoint["spec"], cuda_checkpoint["weights"]
    model = prepare_model(spec)
    model.load_state_dict(weights)
    expected = generate(model.eval(), torch.tensor([[1, 2, 3]]), 6)[0, 3:].tolist()
    proc = anyformer_cpu_only(
        "generate", str(cuda_checkpoint["folder"]), "--prompt", "1 2 3", "--max-new-tokens", "6"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.split() == [str(i) for i in expected]


def test_run_checkpointed_on_cuda_resumes_in_a_cpu_only_process(
    cuda_checkpoint: dict[str, Any], tmp_path: Path
) -> None:
    """``anyformer resume RUN train.device=cpu train.compile=false train.steps=N+3`` in a
    process that sees no GPU continues the CUDA run: exit 0, training lines for steps
    1..N+3 without gaps or duplicates, a checkpoint at N+3, and the first resumed step's
    loss equal (1e-4, fp32 both) to the loss the CUDA model had on that batch."""
    folder = tmp_path / "run"
    shutil.copytree(cuda_checkpoint["folder"], folder)
    steps = CKPT_STEPS + 3
    proc = anyformer_cpu_only(
        "resume", str(folder), "train.device=cpu", "train.compile=false", f"train.steps={steps}"
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    train, _ = read_metrics(folder)
    assert [r["step"] for r in train] == list(range(1, steps + 1))
    assert train[CKPT_STEPS]["loss"] == pytest.approx(cuda_checkpoint["next_loss"], abs=1e-4)
    assert (folder / "checkpoint" / "latest").read_text() == f"step-{steps}"
