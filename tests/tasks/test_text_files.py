"""text_files: a user's folder or JSONL corpus, split by file, links never followed,
bad files refused with the path, the line and what is wrong (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from anyformer import registry
from anyformer.cli import main
from anyformer.tasks.text_files import TextFiles, file_split

RUN = ["task.seq_len=16", "model.d_model=16", "model.n_layers=1", "model.max_len=32", "train.steps=2",
       "train.batch_size=2", "train.eval_every=2", "train.eval_size=4",
       "train.progress=false"]  # fmt: skip


def make(**params: object) -> TextFiles:
    entry = registry.get("task", "text_files")
    task = entry.build(entry.make_params({"seq_len": 16, **params}), 0)
    assert isinstance(task, TextFiles)
    return task


def corpus(root: Path, n: int = 30) -> Path:
    for i in range(n):
        (root / f"d{i // 10}").mkdir(parents=True, exist_ok=True)
        (root / f"d{i // 10}" / f"note{i:02d}.txt").write_text(f"note {i}: " + "words " * 20)
    (root / "image.png").write_bytes(b"\x89PNG not text")
    return root


def test_a_folder_is_split_by_file_and_every_file_lands_once(tmp_path: Path) -> None:
    task = make(path=str(corpus(tmp_path)), val_fraction=0.3)
    names = {s: task.stream(s)[1] for s in ("train", "id", "ood")}
    every = [n for group in names.values() for n in group]
    assert sorted(every) == sorted(f"d{i // 10}/note{i:02d}.txt" for i in range(30))
    assert len(every) == len(set(every))
    assert names["ood"] == ("d2/note27.txt", "d2/note28.txt", "d2/note29.txt")  # last 10%
    assert all(file_split(n, 0.3, 0.0) == "id" for n in names["id"])
    assert task.corpus_info()["train"]["documents"] == len(names["train"])


def test_links_out_of_the_folder_are_not_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET " * 50)
    root = corpus(tmp_path / "corpus")
    (root / "link.txt").symlink_to(secret)
    task = make(path=str(root))
    streams = b"".join(task.stream(s)[0].tobytes() for s in ("train", "id", "ood"))
    assert b"SECRET" not in streams


def test_jsonl_records_are_documents(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"body": f"record {i} " + "text " * 10, "id": i}) for i in range(20)]
    path.write_text("\n".join(lines) + "\n\n")
    task = make(path=str(path), field="body", val_fraction=0.2)
    every = [n for s in ("train", "id", "ood") for n in task.stream(s)[1]]
    assert sorted(every, key=lambda n: int(n.split(":")[1])) == [f"line:{i}" for i in range(1, 21)]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "ok"}\nnot json\n', "line 2 is not JSON"),
        ('{"text": "ok"}\n{"body": "x"}\n', "line 2 has no field 'text' (it has: ['body'])"),
        ('{"text": 3}\n', "line 1 field 'text' is int, not text"),
        ("", "holds no records"),
    ],
)
def test_bad_jsonl_exits_2_naming_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    code = main(["run", "quickstart", "task=text_files", f"task.path={path}", *RUN,
                 "--out", str(tmp_path / "runs")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err


def test_missing_or_odd_paths_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "f.csv").write_text("a,b\n")
    for given, message in [(tmp_path / "nope", "does not exist"),
                           (tmp_path / "f.csv", "neither a folder nor a .jsonl file")]:  # fmt: skip
        code = main(["run", "quickstart", "task=text_files", f"task.path={given}", *RUN])
        assert code == 2 and message in capsys.readouterr().err


def test_trains_on_a_folder_with_a_subword_tokenizer(tmp_path: Path) -> None:
    root = corpus(tmp_path / "corpus")
    out = tmp_path / "runs"
    code = main(["run", "quickstart", "task=text_files", f"task.path={root}",
                 "task.tokenizer=unigram", "task.vocab_size=280", *RUN, "--out", str(out)])  # fmt: skip
    assert code == 0
    (folder,) = list(out.iterdir())
    assert (folder / "tokenizer.json").is_file()
