"""``anyformer generate``: loads a run's spec and latest checkpoint and continues a prompt
(token ids for ordinary tasks, UTF-8 text for byte-level ones); bad prompts exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anyformer.cli import main
from anyformer.decoding import generate
from anyformer.lab.generate import decode_tokens, encode_prompt, load_run_model
from anyformer.lab.run import SPEC_FILE, prepare_model, resolve
from anyformer.spec import ExperimentSpec
from anyformer.training.checkpoint import save_checkpoint


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run folder with a spec and a checkpoint of an (untrained, scaled-up) model."""
    spec = resolve(
        ExperimentSpec.from_dict(
            dict(name="gen", model=dict(d_model=32, n_layers=1, init_std=0.3), task="copy")
        )
    )
    folder = tmp_path / "gen-run"
    folder.mkdir()
    spec.save(folder / SPEC_FILE)
    model = prepare_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(folder / "checkpoint", 3, model, opt, {"spec_hash": spec.hash})
    return folder


def test_generate_continues_token_ids_like_the_model(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["generate", str(run_dir), "--prompt", "1 5 7 2", "--max-new-tokens", "6"])
    out = capsys.readouterr().out.split()
    assert code == 0 and len(out) == 6
    _, model = load_run_model(run_dir)
    expected = generate(model, torch.tensor([[1, 5, 7, 2]]), 6)[0, 4:].tolist()
    assert [int(t) for t in out] == expected


def test_several_prompts_print_what_each_prints_alone(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompts, alone = ["1 5 7 2", "3", "9 9 4"], []
    for prompt in prompts:
        assert main(["generate", str(run_dir), "--prompt", prompt, "--max-new-tokens", "5"]) == 0
        alone.append(capsys.readouterr().out)
    argv = [arg for prompt in prompts for arg in ("--prompt", prompt)]
    assert main(["generate", str(run_dir), *argv, "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == "".join(alone)


def test_sampling_from_the_cli_is_seeded(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", str(run_dir), "--prompt", "4 4", "--temperature", "1.5", "--seed", "7"]
    outs = []
    for _ in range(2):
        assert main(args) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and len(outs[0].split()) == 32


@pytest.mark.parametrize(
    ("prompt", "fragment"), [("hello", "space-separated token ids"), ("1 999", "vocabulary")]
)
def test_bad_prompts_exit_2(
    run_dir: Path, capsys: pytest.CaptureFixture[str], prompt: str, fragment: str
) -> None:
    assert main(["generate", str(run_dir), "--prompt", prompt]) == 2
    assert fragment in capsys.readouterr().err


def test_byte_level_prompts_are_utf8_text() -> None:
    ids = encode_prompt("héllo", 256, byte_level=True)
    assert ids.tolist() == [list("héllo".encode())]
    assert decode_tokens(ids[0].tolist(), byte_level=True) == "héllo"
    assert decode_tokens([104, 0xC3], byte_level=True) == "h\ufffd"  # a cut character
    assert decode_tokens([3, 14], byte_level=False) == "3 14"


def test_stdlib_lm_runs_take_and_give_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``stdlib_lm`` is byte-level: ``--prompt "def "`` is text (not token ids, which would
    exit 2), and the output is the prompt followed by the model's continuation as text."""
    model_data = dict(d_model=32, n_layers=1, init_std=0.3, max_len=64)
    data = dict(name="bytes", model=model_data, task=dict(name="stdlib_lm", seq_len=32))
    spec = resolve(ExperimentSpec.from_dict(data))
    folder = tmp_path / "bytes-run"
    folder.mkdir()
    spec.save(folder / SPEC_FILE)
    model = prepare_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(folder / "checkpoint", 1, model, opt, {"spec_hash": spec.hash})

    assert main(["generate", str(folder), "--prompt", "def ", "--max-new-tokens", "8"]) == 0
    out = capsys.readouterr().out
    prompt = torch.tensor([list(b"def ")])
    new = generate(model.eval(), prompt, 8)[0, 4:].tolist()
    assert out == "def " + decode_tokens(new, byte_level=True) + "\n"
    # the same prompt read as token ids (--ids) is refused: "def" is not an id
    assert main(["generate", str(folder), "--prompt", "def ", "--ids"]) == 2


@pytest.fixture
def seq2seq_run(tmp_path: Path) -> Path:
    """A run folder of an (untrained, scaled-up) encoder-decoder."""
    spec = resolve(
        ExperimentSpec.from_dict(
            dict(
                name="gen2",
                model=dict(kind="encoder_decoder", d_model=32, n_layers=1, init_std=0.3),
                task="copy",
            )
        )
    )
    folder = tmp_path / "gen2-run"
    folder.mkdir()
    spec.save(folder / SPEC_FILE)
    model = prepare_model(spec)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(folder / "checkpoint", 3, model, opt, {"spec_hash": spec.hash})
    return folder


def test_an_encoder_decoder_run_generates_from_its_sources(
    seq2seq_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One --source per --prompt; the rows (ragged sources) print what the model's
    generate gives each alone."""
    argv = ["generate", str(seq2seq_run), "--max-new-tokens", "5"]
    pairs = [("1", "5 6 7 3"), ("1", "9 3")]
    args = [a for p, s in pairs for a in ("--prompt", p, "--source", s)]
    assert main([*argv, *args]) == 0
    lines = capsys.readouterr().out.splitlines()
    _, model = load_run_model(seq2seq_run)
    for line, (prompt, source) in zip(lines, pairs, strict=True):
        src = torch.tensor([[int(t) for t in source.split()]])
        expected = generate(model, torch.tensor([[int(prompt)]]), 5, source=src)[0, 1:]
        assert [int(t) for t in line.split()] == expected.tolist()
    assert main([*argv, "--prompt", "1"]) == 2  # no source
    assert "one --source per --prompt" in capsys.readouterr().err


def test_source_is_refused_for_a_decoder_run(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", str(run_dir), "--prompt", "1", "--source", "4 5"]) == 2
    assert "--source is for encoder_decoder runs" in capsys.readouterr().err
