"""Tokenizers of text tasks: exact round trips, bytes per token, a keyed and verified
cache, run folders that keep their tokenizer, and bits per byte that stay comparable
across tokenizers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from anyformer import registry
from anyformer.cli import main
from anyformer.tasks import tokenizer as tk
from anyformer.tasks.text_corpus import TextCorpus

TEXTS = [
    "def add(a, b):\n    return a + b\n",
    "Ünïcödé — naïve café ✓ 東京\t tabs  and   spaces\n",
    "class Box:\n    '''A box.'''\n    def area(self):\n        return self.w * self.h\n",
] * 20
TRICKY = "héllo wörld\r\n\tdef  f(x):  return x  # ✓ \x00 end  \n\n  trailing "


def settings(kind: str, vocab: int = 300) -> tk.TokenizerFields:
    return tk.TokenizerFields(tokenizer=kind, vocab_size=vocab)


@pytest.mark.parametrize("kind", ["bytes", "bpe", "unigram"])
def test_round_trip_is_exact_and_bytes_per_token_add_up(kind: str) -> None:
    codec = tk.train_codec(settings(kind), TEXTS)
    for text in [TRICKY, *TEXTS[:3], ""]:
        ids = codec.encode(text)
        assert codec.decode(ids) == text
        assert int(codec.token_bytes()[ids].sum()) == len(text.encode("utf-8"))
        assert all(0 <= i < codec.vocab_size for i in ids)
    if kind != "bytes":  # merges compress the training text
        assert len(codec.encode(TEXTS[0])) < len(TEXTS[0].encode())
        assert codec.separator == 0 and codec.token_bytes()[0] == 1


def test_documents_stream_ends_each_document_with_the_separator() -> None:
    codec = tk.train_codec(settings("bpe"), TEXTS)
    stream = codec.encode_documents(["a b", "c"])
    assert stream.tolist() == [*codec.encode("a b"), 0, *codec.encode("c"), 0]


def test_cache_is_keyed_verified_and_reused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("ANYFORMER_CACHE", str(tmp_path))
    first = tk.load_or_train(settings("bpe"), "corpus-a", lambda: TEXTS)
    files = sorted(p.name for p in (tmp_path / "tokenizers").iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".sha256")

    def never() -> list[str]:
        raise AssertionError("retrained although a verified copy is cached")

    again = tk.load_or_train(settings("bpe"), "corpus-a", never)
    assert again.to_json() == first.to_json()
    # another corpus or other settings: another key
    keys = {tk.cache_key("corpus-a", settings("bpe")), tk.cache_key("corpus-b", settings("bpe")),
            tk.cache_key("corpus-a", settings("bpe", 310)), tk.cache_key("corpus-a", settings("unigram"))}  # fmt: skip
    assert len(keys) == 4
    # a damaged cache file fails its digest and is retrained, then rewritten
    cached = tmp_path / "tokenizers" / files[0]
    cached.write_text(cached.read_text().replace("<sep>", "<sEp>"))
    calls = []
    tk.load_or_train(settings("bpe"), "corpus-a", lambda: calls.append(1) or TEXTS)
    assert calls == [1] and tk.read_verified(cached) is not None


def test_a_file_that_is_not_a_matching_tokenizer_is_refused() -> None:
    with pytest.raises(ValueError, match="not a tokenizer"):
        tk.codec_from_json('{"a": 1}', settings("bpe"))
    big = tk.train_codec(settings("bpe", 400), TEXTS * 5).to_json()
    with pytest.raises(ValueError, match="does not match"):
        tk.codec_from_json(big, settings("bpe", 260))


def make(**params: object) -> TextCorpus:
    entry = registry.get("task", "text_corpus")
    task = entry.build(entry.make_params({"seq_len": 32, **params}), 0)
    assert isinstance(task, TextCorpus)
    return task


def test_subword_text_corpus_scores_bits_per_byte_against_its_baselines() -> None:
    """Uniform logits over V ids cost log2(V) bits per token, i.e. log2(V) x tokens per
    byte bits per byte; logits equal to the bigram's log probabilities score exactly the
    bigram baseline; subwords cover more than one byte per token."""
    task = make(tokenizer="bpe", vocab_size=320)
    assert task.model_io()["vocab_size"] == 320
    evaluation = task.make_eval_set("id", 24)
    assert "target_bytes" in evaluation[0].extras
    uniform = task.score([torch.zeros(*b.inputs.shape, 320) for b in evaluation], evaluation)
    assert uniform["tokens_per_byte"] < 0.75  # 63 merges already save a third
    assert uniform["bits_per_token"] == pytest.approx(math.log2(320))
    assert uniform["bits_per_byte"] == pytest.approx(math.log2(320) * uniform["tokens_per_byte"])
    models = task.token_models()
    grid = np.arange(320)
    dense = models.bigram(np.repeat(grid, 320), np.tile(grid, 320)).reshape(320, 320)
    assert np.allclose(dense.sum(axis=1), 1)
    as_bigram = [torch.from_numpy(np.log(dense))[b.inputs] for b in evaluation]
    metrics = task.score(as_bigram, evaluation)
    base = metrics["baselines"]["bigram"]
    assert metrics["bits_per_byte"] == pytest.approx(base["bits_per_byte"])
    assert metrics["accuracy"] == pytest.approx(base["accuracy"])


def test_a_run_keeps_its_tokenizer_and_generate_uses_that_copy(
    tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "runs"
    args = ["run", "quickstart"]
    overrides = [
        "task=text_corpus", "task.seq_len=32", "task.tokenizer=bpe", "task.vocab_size=300",
        "model.d_model=32", "model.n_layers=1", "model.max_len=64", "train.steps=3",
        "train.batch_size=4", "train.eval_every=3", "train.eval_size=8", "train.progress=false",
    ]  # fmt: skip
    assert main([*args, *overrides, "--out", str(out)]) == 0
    (folder,) = list(out.iterdir())
    kept = folder / tk.RUN_FILE
    assert kept.is_file()
    # the cache is gone and training a tokenizer is forbidden: generate reads the folder's
    monkeypatch.setenv("ANYFORMER_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(tk, "train_codec", lambda *a: (_ for _ in ()).throw(AssertionError))
    capsys.readouterr()
    code = main(["generate", str(folder), "--prompt", "The ", "--max-new-tokens", "5"])
    assert code == 0
    assert capsys.readouterr().out.startswith("The ")
    assert main(["resume", str(folder), "train.steps=4"]) == 0  # resume reads it too
    # a damaged copy is refused by name, not retrained
    kept.write_text("{}")
    assert main(["generate", str(folder), "--prompt", "The "]) == 2
    assert "tokenizer" in capsys.readouterr().err
