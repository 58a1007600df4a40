"""code_lm and CodeT5's identifier objectives: identifier marks equal tokenize's NAME
tokens mapped by byte offsets (bytes and BPE), splits disjoint by module, bits per byte
equal to a hand computation, identifier_tagging's loss and masked_identifier's rows."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from code_library import write_library

from anyformer import registry
from anyformer.errors import SpecError
from anyformer.objectives.identifiers import mask_identifiers
from anyformer.spec import ModelSpec
from anyformer.tasks.base import Batch
from anyformer.tasks.code_lm import CodeLM, identifier_spans, token_identifiers
from anyformer.tasks.text import module_split
from anyformer.tasks.tokenizer import Codec, TokenizerFields, train_codec

CODE = "def f(x, y=1):\n    # é\n    return x + len(y)  # x\n"


def build(root: Path, **params: object) -> CodeLM:
    entry = registry.get("task", "code_lm")
    base = {"root": str(root), "val_fraction": 0.3, "seq_len": 64}
    task = entry.build(entry.make_params({**base, **params}), 0)
    assert isinstance(task, CodeLM)
    return task


def test_identifier_spans_are_the_non_keyword_names_in_bytes() -> None:
    spans = identifier_spans(CODE)
    data = CODE.encode()
    assert [data[a:b].decode() for a, b, _ in spans] == ["f", "x", "y", "x", "len", "y"]
    assert [n for _, _, n in spans] == ["f", "x", "y", "x", "len", "y"]  # not the comment


@pytest.mark.parametrize("kind", ["bytes", "bpe"])
def test_token_marks_follow_byte_offsets(kind: str) -> None:
    settings = TokenizerFields(tokenizer=kind, vocab_size=300, min_frequency=1)
    codec = Codec() if kind == "bytes" else train_codec(settings, [CODE] * 20)
    ids, tag, occ, name = token_identifiers(codec, CODE)
    assert codec.decode(ids) == CODE
    widths = codec.token_bytes()[ids]
    start = 0
    spans = identifier_spans(CODE)
    for i, w in enumerate(widths):
        overlapping = [j for j, (a, b, _) in enumerate(spans) if a < start + w and start < b]
        assert tag[i] == bool(overlapping)
        assert occ[i] == (overlapping[0] + 1 if overlapping else 0)
        if overlapping:  # names numbered by first use: f 1, x 2, y 3, len 4
            assert name[i] == {"f": 1, "x": 2, "y": 3, "len": 4}[spans[overlapping[0]][2]]
        start += int(w)
    if kind == "bytes":
        assert "".join(CODE.encode()[i : i + 1].decode() for i, t in enumerate(tag) if t) == (
            "fxyxleny"
        )


def test_splits_by_module_and_bits_per_byte(tmp_path: Path) -> None:
    task = build(write_library(tmp_path))
    docs = task.documents
    assert all(docs.values()) and not set(docs["train"]) & (set(docs["id"]) | set(docs["ood"]))
    from anyformer.tasks.code_corpus import library_functions

    by_source = {f.source: f.path for f in library_functions(str(tmp_path))}
    for split in ("train", "id", "ood"):
        assert all(module_split(by_source[d], 0.3, 0.0) == split for d in docs[split])
    (batch,) = task.make_eval_set("id", 4)
    assert torch.equal(batch.inputs[:, 1:][batch.loss_mask[:, 1:]],
                       batch.targets[:, :-1][batch.loss_mask[:, 1:]])  # fmt: skip
    uniform = [torch.zeros(*batch.targets.shape, 256)]
    out = task.score(uniform, [batch])
    assert out["bits_per_byte"] == pytest.approx(8.0)  # bytes: 8 bits per uniform byte
    logits = torch.randn(*batch.targets.shape, 256, generator=torch.Generator().manual_seed(0))
    m = batch.loss_mask
    nats = F.cross_entropy(logits[m], batch.targets[m], reduction="sum")
    assert task.score([logits], [batch])["bits_per_byte"] == pytest.approx(
        float(nats) / math.log(2) / int(m.sum()), rel=1e-5
    )
    assert out["baselines"]["unigram"]["bits_per_byte"] < 8.0


def test_every_tokenizer_scores_the_same_bytes_with_max_chars(tmp_path: Path) -> None:
    """A row starts with the separator, so every token of the function is a target: with
    ``max_chars`` and a ``seq_len`` that holds it, bits per byte of any tokenizer divide
    by the same bytes (the cut functions' UTF-8 bytes plus one separator each)."""
    root = write_library(tmp_path)
    scored = {}
    for kind in ("bytes", "bpe", "unigram"):
        task = build(root, tokenizer=kind, vocab_size=300, max_chars=40, seq_len=64)
        docs = task.documents["id"]
        assert all(len(d) <= 40 for d in docs) and any(len(d) == 40 for d in docs)
        (batch,) = task.make_eval_set("id", len(docs))
        sep = task.codec.separator
        assert bool((batch.inputs[:, 0] == sep).all())
        vocab = task.model_io()["vocab_size"]
        out = task.score([torch.zeros(*batch.targets.shape, vocab)], [batch])
        scored[kind] = round(out["tokens"] * out["bytes_per_token"])
        assert scored[kind] == sum(len(d.encode()) + 1 for d in docs)
        if kind != "bytes":
            assert out["bytes_per_token"] > 1.0
    assert len(set(scored.values())) == 1


def test_identifier_tagging_loss_and_tag_scores(tmp_path: Path) -> None:
    task = build(write_library(tmp_path))
    batch = task.train_batch(0, 4)
    entry = registry.get("objective", "identifier_tagging")
    obj = entry.build(entry.make_params({}))
    tags = batch.extras["identifier"]
    perfect = F.one_hot(tags.long(), 2).float() * 20
    assert float(obj(perfect, batch)) < 1e-6
    logits = torch.zeros(*tags.shape, 2)
    assert float(obj(logits, batch)) == pytest.approx(math.log(2))
    scores = task.score([perfect], [batch])
    assert scores["tag_accuracy"] == 1.0 and scores["tag_f1"] == 1.0
    share = float(tags[batch.loss_mask].float().mean())
    assert scores["baselines"]["all_identifier"]["tag_accuracy"] == pytest.approx(share)
    with pytest.raises(SpecError, match="identifier"):
        obj(perfect, Batch(batch.inputs, batch.targets, batch.loss_mask))


def test_masked_identifier_replaces_every_occurrence_by_its_sentinel() -> None:
    ids, _, occ, name = token_identifiers(Codec(), CODE)
    s = [255, 254, 253, 252, 251]
    source, target = mask_identifiers(torch.tensor(ids), torch.tensor(occ), torch.tensor(name), s)
    pieces = ["def ", 255, "(", 254, ", ", 253, "=1):\n    # é\n    return ", 254, " + ", 252,
              "(", 253, ")  # x\n"]  # fmt: skip
    want = [t for p in pieces for t in (p.encode() if isinstance(p, str) else [p])]
    assert source.tolist() == want
    assert target.tolist() == [255, *b"f", 254, *b"x", 253, *b"y", 252, *b"len", 251]
    # with fewer sentinels the later names stay in the source
    source, target = mask_identifiers(
        torch.tensor(ids), torch.tensor(occ), torch.tensor(name), s[:3]
    )
    assert target.tolist() == [255, *b"f", 254, *b"x", 253]
    assert b"len(y)" in bytes(t for t in source.tolist() if t < 256 and t not in s[:3])


def test_masked_identifier_batches(tmp_path: Path) -> None:
    task = build(write_library(tmp_path))
    batch = task.train_batch(0, 4)
    entry = registry.get("objective", "masked_identifier")
    obj = entry.build(entry.make_params({})).for_model(
        ModelSpec(vocab_size=256, max_len=128, d_model=16, n_heads=2, n_layers=1)
    )
    out = obj.corrupt(batch, torch.Generator().manual_seed(0))
    assert "identifier" not in out.extras and out.extras["source"].shape[0] == 4
    for i in range(4):
        target = out.targets[i][out.loss_mask[i]].tolist()
        source = out.extras["source"][i][out.extras["source_mask"][i]].tolist()
        assert target[-1] >= 245 and out.inputs[i, 0] == 255
        assert set(t for t in target if t >= 245) <= set(source) | {target[-1]}
    with pytest.raises(SpecError, match="identifier"):
        obj.corrupt(Batch(batch.inputs, batch.targets, batch.loss_mask, batch.padding_mask),
                    torch.Generator())  # fmt: skip
