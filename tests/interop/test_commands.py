"""``anyformer import hf:PATH`` and ``anyformer export RUN``: a ``save_pretrained``
folder becomes a run folder that ``anyformer generate`` continues prompts with (the
tokens HF's ``generate`` gives), exported back it loads with ``from_pretrained`` to equal
logits; hub ids, pickle-only folders and unsupported classes are refused with exit 2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from anyformer.cli import main
from anyformer.interop.runs import import_hf
from anyformer.lab.generate import load_run_model

pytestmark = pytest.mark.peers
T = pytest.importorskip("transformers")


def saved_gpt2(folder: Path, **extra: Any) -> tuple[Any, Path]:
    torch.manual_seed(0)
    config = dict(vocab_size=61, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                  initializer_range=0.3, bos_token_id=0, eos_token_id=0)  # fmt: skip
    config.update(extra)
    hf = T.GPT2LMHeadModel(T.GPT2Config(**config)).eval()
    hf.save_pretrained(folder / "gpt2")
    return hf, folder / "gpt2"


def test_import_writes_a_run_that_generate_continues_like_hf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hf, path = saved_gpt2(tmp_path)
    assert main(["import", f"hf:{path}", "--out", str(tmp_path / "runs")]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    assert run.name.startswith("hf-gpt2-") and (run / "spec.yaml").is_file()
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "5 9 2", "--max-new-tokens", "6"]) == 0
    printed = [int(t) for t in capsys.readouterr().out.split()]
    prompt = torch.tensor([[5, 9, 2]])
    with torch.no_grad():
        theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6,
                             min_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)  # fmt: skip
    assert printed == theirs[0, 3:].tolist()
    sessions = json.loads((run / "provenance.json").read_text())["sessions"]
    assert sessions[0]["hf_class"] == "GPT2LMHeadModel"


def test_export_hf_loads_with_from_pretrained_to_equal_logits(tmp_path: Path) -> None:
    _, path = saved_gpt2(tmp_path, tie_word_embeddings=False)
    run, _ = import_hf(f"hf:{path}", tmp_path / "runs")
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", use_safetensors=True).eval()
    _, model = load_run_model(run)
    x = torch.randint(0, 61, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, model(x), atol=1e-4, rtol=1e-4)
    assert not back.config.tie_word_embeddings


def test_export_safetensors_stores_tied_weights_once(tmp_path: Path) -> None:
    _, path = saved_gpt2(tmp_path)
    run, _ = import_hf(f"hf:{path}", tmp_path / "runs")
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "st")]) == 0
    tensors = load_file(tmp_path / "st" / "model.safetensors")
    assert ("embed.weight" in tensors) != ("head.weight" in tensors)  # one copy of the tie
    _, model = load_run_model(run)
    (tied,) = [k for k in ("embed.weight", "head.weight") if k in tensors]
    torch.testing.assert_close(tensors[tied], model.embed.weight.detach())
    assert (tmp_path / "st" / "anyformer_spec.yaml").is_file()


def test_export_of_a_model_hf_cannot_express_is_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from anyformer.interop.runs import write_run
    from anyformer.model.transformer import build_model

    model = build_model(dict(vocab_size=20, d_model=16, n_layers=1, n_heads=2, position="alibi"))
    run = write_run(model, tmp_path / "runs", "alibi", "", {})
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 2
    assert "position='alibi'" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize(
    ("setup", "named"),
    [
        ("hub", "not a local directory"),
        ("pickle", "pickle files are never loaded"),
        ("bert_mlm", "BertForMaskedLM"),
        ("not_hf", "give hf:PATH"),
    ],
)
def test_import_refusals_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: str, named: str
) -> None:
    source = "hf:openai-community/gpt2"
    if setup == "pickle":
        _, path = saved_gpt2(tmp_path)
        (path / "model.safetensors").rename(path / "pytorch_model.bin")
        source = f"hf:{path}"
    elif setup == "bert_mlm":
        config = T.BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1,
                              num_attention_heads=2, intermediate_size=32)  # fmt: skip
        T.BertForMaskedLM(config).save_pretrained(tmp_path / "bert")
        source = f"hf:{tmp_path / 'bert'}"
    elif setup == "not_hf":
        source = str(tmp_path)
    assert main(["import", source, "--out", str(tmp_path / "runs")]) == 2
    assert named in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_the_quickstart_run_exports_as_gpt_neox_and_safetensors(tmp_path: Path) -> None:
    """The README's quickstart (rope, pre-norm LayerNorm, MLP: GPT-NeoX's block), trained a
    few steps at a small width, exports to a folder ``from_pretrained`` loads with equal
    logits."""
    import anyformer

    spec = anyformer.load_experiment("quickstart").with_overrides(
        ["train.steps=2", "train.eval_every=2", "train.eval_size=4", "train.batch_size=4",
         "train.checkpoint_every=2", "train.progress=false", "model.d_model=16",
         "model.n_layers=1", "model.n_heads=2"]
    )  # fmt: skip
    run = anyformer.train(spec, out=str(tmp_path / "runs")).dir
    assert main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert main(["export", str(run), "--format", "safetensors", "--out", str(tmp_path / "st")]) == 0
    back = T.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", use_safetensors=True).eval()
    assert type(back).__name__ == "GPTNeoXForCausalLM"
    _, model = load_run_model(run)
    x = torch.randint(0, model.spec.vocab_size, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, model(x), atol=1e-4, rtol=1e-4)
    assert (tmp_path / "st" / "model.safetensors").is_file()


def test_an_imported_t5_generates_from_a_source_like_hf(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = T.T5Config(vocab_size=61, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                        num_decoder_layers=1, num_heads=4)  # fmt: skip
    torch.manual_seed(0)
    hf = T.T5ForConditionalGeneration(config).eval()
    with torch.no_grad():  # weights large enough that greedy tokens vary
        for p in hf.parameters():
            p.normal_(0.0, 0.5)
    hf.save_pretrained(tmp_path / "t5")
    assert main(["import", f"hf:{tmp_path / 't5'}", "--out", str(tmp_path / "runs")]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    capsys.readouterr()
    argv = ["generate", str(run), "--prompt", "0", "--source", "5 9 2 40", "--max-new-tokens", "6"]
    assert main(argv) == 0
    printed = [int(t) for t in capsys.readouterr().out.split()]
    source = torch.tensor([[5, 9, 2, 40]])
    with torch.no_grad():
        theirs = hf.generate(input_ids=source, attention_mask=torch.ones_like(source),
                             max_new_tokens=6, min_new_tokens=6, do_sample=False,
                             eos_token_id=None, decoder_start_token_id=0)  # fmt: skip
    assert printed == theirs[0, 1:].tolist()
    assert len(set(printed)) > 1  # not one repeated token
