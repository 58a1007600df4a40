"""code_search: docstring -> function pairs split by module with the docstring removed
from the key, retrieval metrics equal to hand computations, lexical baselines, the
InfoNCE objective, split-encode-aggregate rows, and a short run that learns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from code_library import write_code_library as library

from anyformer import registry
from anyformer.cli import main
from anyformer.objectives.contrastive import InfoNCE, InfoNCEParams, paired_embeddings
from anyformer.tasks.base import Batch
from anyformer.tasks.code_search import CodeSearch
from anyformer.tasks.retrieval import bm25_scores, ranks, retrieval_metrics, tfidf_scores, words
from anyformer.tasks.text import module_split


def make(root: Path, **params: object) -> CodeSearch:
    entry = registry.get("task", "code_search")
    base = {"root": str(root), "val_fraction": 0.25, "tokenizer": "bytes", "code_len": 64,
            "query_len": 24, "min_query_chars": 8}  # fmt: skip
    task = entry.build(entry.make_params({**base, **params}), 0)
    assert isinstance(task, CodeSearch)
    return task


def test_pairs_strip_the_docstring_and_split_by_module(tmp_path: Path) -> None:
    task = make(library(tmp_path))
    pairs = {s: task._pairs[s] for s in ("train", "id", "ood")}
    assert all(len(v) >= 2 for v in pairs.values())
    for query, key in pairs["train"] + pairs["id"]:
        assert query.endswith("with factor " + query.split()[-1]) and "Longer" not in query
        assert key.startswith("def ") and '"""' not in key and query not in key
    assert all(q.startswith("Check case") for q, _ in pairs["ood"])
    # a module's functions are all in its split
    for f in task.functions:
        if f.docstring and not f.path.startswith("test/"):
            split = module_split(f.path, 0.25, 0.0)
            assert any(k.startswith(f.signature) for _, k in pairs[split])


def test_ranks_and_metrics_equal_hand_computations() -> None:
    scores = np.array([[0.9, 0.1, 0.2], [0.8, 0.5, 0.1], [0.3, 0.3, 0.3]])
    assert ranks(scores).tolist() == [1, 2, 3]  # ties count against the query
    m = retrieval_metrics(np.array([1, 2, 3, 11]))
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 0) / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3 + 1 / 11) / 4)
    assert m["recall@1"] == 0.25 and m["recall@5"] == 0.75 and m["recall@10"] == 0.75


def test_lexical_baselines_match_hand_formulas() -> None:
    keys = ["def parse_json(text): return loads(text)", "def add(a, b): return a + b"]
    queries = ["parse the json text", "add numbers"]
    assert words("parseJSON_text2") == ["parse", "json", "text", "2"]
    bm = bm25_scores(queries, keys)
    # "add" occurs once in key 1 (6 words; average length 6): idf = log(1 + 1.5/1.5)
    n_words = [len(words(k)) for k in keys]
    avg = sum(n_words) / 2
    norm = 1.2 * (1 - 0.75 + 0.75 * n_words[1] / avg)
    assert bm[1, 1] == pytest.approx(np.log(2.0) * 1 * 2.2 / (1 + norm))
    assert bm[1, 0] == 0.0
    tf = tfidf_scores(queries, keys)
    assert tf[0, 0] > tf[0, 1] and tf[1, 1] > tf[1, 0]


def test_info_nce_equals_the_hand_cross_entropy_and_aggregates_blocks() -> None:
    torch.manual_seed(0)
    out = torch.randn(2 + 3, 4)  # 2 queries, key 0 in two blocks, key 1 in one
    batch = Batch(torch.zeros(5, 1), torch.zeros(5), torch.ones(5, dtype=torch.bool),
                  extras={"owner": torch.tensor([0, 0, 1])})  # fmt: skip
    q, k = paired_embeddings(out, batch)
    key0 = torch.nn.functional.normalize((out[2] + out[3]) / 2, dim=0)
    assert torch.allclose(k[0], key0) and torch.allclose(q[1], out[1] / out[1].norm())
    loss = InfoNCE(InfoNCEParams(temperature=0.5, symmetric=False)).loss(out, batch)
    logits = q @ k.T / 0.5
    hand = -(torch.log_softmax(logits, 1)[0, 0] + torch.log_softmax(logits, 1)[1, 1]) / 2
    assert loss.item() == pytest.approx(hand.item(), rel=1e-6)


def test_split_encode_aggregate_cuts_at_lines(tmp_path: Path) -> None:
    task = make(library(tmp_path), long_code="split", code_len=40, max_blocks=8)
    code = task._pairs["train"][0][1]
    blocks, n = task.blocks(code)
    assert n == len(code.encode()) and len(blocks) > 1
    assert all(0 < len(b) <= 40 for b in blocks)
    joined = bytes(sum(blocks, [])).decode()
    assert joined == code[: len(joined)]
    # a block ends at a line end, unless it is a full row cut from a longer line
    assert all(bytes(b).decode().endswith("\n") or len(b) == 40 for b in blocks[:-1])
    truncate = make(tmp_path, code_len=40)
    assert truncate.blocks(code)[0] == [list(code.encode()[:40])]
    batch = task.make_eval_set("id", 4)[0]
    n_q = batch.inputs.shape[0] - batch.extras["owner"].shape[0]
    assert n_q == 4 and batch.extras["owner"].max() == 3


def test_long_only_keeps_functions_longer_than_a_row(tmp_path: Path) -> None:
    root = library(tmp_path)
    full = make(root, code_len=400)
    lengths = [len(k.encode()) for _, k in full._pairs["train"]]
    cut = sorted(lengths)[len(lengths) // 2]
    short = make(root, code_len=cut, long_only=True)
    kept = short.encoded("train")
    assert len(kept) == sum(n > cut for n in lengths) < len(lengths)
    assert all(len(full._pairs["train"][i][1].encode()) > cut for i, _, _ in kept)


def test_a_short_run_learns_to_retrieve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = library(tmp_path / "lib")
    out = tmp_path / "runs"
    code = main([
        "run", "code_quickstart", f"task.root={root}", "task.tokenizer=bytes",
        "task.val_fraction=0.25", "task.code_len=64", "task.query_len=24",
        "task.min_query_chars=8", "model.max_len=64", "model.d_model=32", "model.n_layers=1",
        "train.steps=40", "train.batch_size=16", "train.lr=0.002", "objective.temperature=0.05", "train.eval_every=40", "train.eval_size=64",
        "train.progress=false", "train.threads=1", "--out", str(out),
    ])  # fmt: skip
    assert code == 0
    (folder,) = list(out.iterdir())
    import json

    records = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    metrics = [x for x in records if x.get("split") == "id"][-1]
    pool = metrics["pool"]
    chance = sum(1 / r for r in range(1, min(pool, 10) + 1)) / pool
    assert metrics["mrr@10"] > 3 * chance
