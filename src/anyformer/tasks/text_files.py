"""Language modelling on a user's own text: a folder of files or a JSONL file (``text_files``).

``task.path`` names either

- a **folder**: every regular file under it whose suffix is in ``suffixes`` (default:
  common text and source suffixes) is one document; symbolic links and files that
  resolve outside the folder are skipped, never followed; or
- a **JSONL file** (suffix ``.jsonl``): every non-empty line is a JSON object whose
  ``field`` (default ``text``) is one document.

Documents are split **by file** (by record for JSONL). ``ood`` is another corpus when
``ood_path`` names one (read the same way), else the last ``ood_fraction`` of the
documents in name order (relative path; line number for JSONL) — a later period when
names carry dates or sequence numbers. Of the rest, a deterministic hash of the
document's name puts it in ``train``, ``id`` (validation, ``val_fraction``) or ``test``
(``test_fraction``; evaluated only with ``report_test``), with ``stdlib_lm``'s hash
(:func:`file_split`). Windows, batches, tokenizers
(``tokenizer=bytes|bpe|unigram``) and metrics are ``stdlib_lm``'s
(:class:`~anyformer.tasks.text.StdlibLM`): ``bits_per_byte`` (headline), ``accuracy``,
and with subwords ``bits_per_token`` and ``tokens_per_byte``.

Files are read as UTF-8 (undecodable bytes are kept as bytes in the stream, replaced
only for tokenizer training); nothing in them is executed. A bad corpus is refused with
the path, the line and what is wrong (exit 2 from the command line).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
from pydantic import ConfigDict, Field, model_validator

from anyformer.registry import Capabilities, Paper, register
from anyformer.tasks.base import Task
from anyformer.tasks.text import HASH_BUCKETS, SEPARATOR, StdlibLM, path_bucket
from anyformer.tasks.tokenizer import TokenizerFields

#: Suffixes read from a folder unless ``suffixes`` says otherwise.
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".py", ".c", ".h", ".js", ".ts", ".java", ".go",
                 ".rs", ".cpp", ".hpp", ".json", ".yaml", ".yml", ".toml", ".html", ".css",
                 ".tex", ".csv")  # fmt: skip
#: Largest corpus read (bytes), so a mistaken path (``/``) fails fast.
MAX_CORPUS_BYTES = 512 * 2**20


class TextFilesParams(TokenizerFields):
    """Parameters of ``text_files``.

    - ``path``: a folder of text files or a ``.jsonl`` file (required).
    - ``suffixes``: file suffixes read from a folder.
    - ``field``: the JSON field holding a record's text (JSONL).
    - ``seq_len``: tokens per example; ``val_fraction``, ``test_fraction``: shares of the
      files (records) held out as ``id`` and ``test``; ``report_test``: evaluate ``test``.
    - ``ood_path``: a second corpus evaluated as ``ood``; without it, ``ood_fraction``
      of the documents (the last in name order) are ``ood``.
    - ``tokenizer``, ``vocab_size``, ``min_frequency``: as every text task.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    path: str = Field(..., min_length=1, max_length=4096)
    suffixes: tuple[str, ...] = TEXT_SUFFIXES
    field: str = Field("text", min_length=1)
    seq_len: int = Field(256, ge=1)
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    report_test: bool = False
    ood_path: str | None = Field(None, min_length=1, max_length=4096)
    ood_fraction: float = Field(0.1, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _fractions(self) -> TextFilesParams:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction={self.val_fraction} + test_fraction={self.test_fraction} "
                f"must be < 1 (the rest is the training set)"
            )
        return self


def file_split(name: str, val_fraction: float, test_fraction: float) -> str:
    """``id``, ``test`` or ``train`` for a document name, by ``stdlib_lm``'s path hash
    (no test-suite rule: every file of a user's corpus is library text)."""
    bucket = path_bucket(name)
    if bucket < round(val_fraction * HASH_BUCKETS):
        return "id"
    if bucket < round((val_fraction + test_fraction) * HASH_BUCKETS):
        return "test"
    return "train"


def read_corpus(given: str, field: str, params: TextFilesParams) -> list[tuple[str, bytes]]:
    """The documents of a folder or JSONL file ``given`` (``field`` names the parameter)."""
    path = Path(given).expanduser()
    if not path.exists():
        raise ValueError(f"{field}='{given}' does not exist")
    if path.is_dir():
        docs = folder_documents(path, params.suffixes)
        what = f"files with suffixes {list(params.suffixes)}"
    elif path.is_file() and path.suffix.lower() == ".jsonl":
        docs = jsonl_documents(path, params.field)
        what = "records"
    else:
        raise ValueError(f"{field}='{given}' is neither a folder nor a .jsonl file")
    if not docs:
        raise ValueError(f"{field}='{given}' holds no {what}")
    return docs


def folder_documents(root: Path, suffixes: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """``(relative path, bytes)`` of every regular file under ``root`` with one of
    ``suffixes``, sorted; links and anything resolving outside ``root`` are skipped."""
    base = root.resolve()
    wanted = {s.lower() for s in suffixes}
    out, total = [], 0
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.is_file() or path.suffix.lower() not in wanted:
            continue
        real = path.resolve()
        if base not in real.parents:
            continue
        data = real.read_bytes()
        total += len(data)
        if total > MAX_CORPUS_BYTES:
            raise ValueError(f"path='{root}' holds more than {MAX_CORPUS_BYTES} bytes of text")
        out.append((path.relative_to(root).as_posix(), data.replace(bytes([SEPARATOR]), b" ")))
    return out


def jsonl_documents(path: Path, field: str) -> list[tuple[str, bytes]]:
    """``(line:N, UTF-8 text)`` of every record of a JSONL file."""
    if path.stat().st_size > MAX_CORPUS_BYTES:
        raise ValueError(f"path='{path}' is larger than {MAX_CORPUS_BYTES} bytes")
    out = []
    with path.open(encoding="utf-8", errors="strict") as fh:
        try:
            lines = list(fh)
        except UnicodeDecodeError as exc:
            raise ValueError(f"path='{path}' is not UTF-8 ({exc.reason})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {number} is not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or field not in record:
            keys = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{path}: line {number} has no field '{field}' (it has: {keys})")
        text = record[field]
        if not isinstance(text, str):
            raise ValueError(
                f"{path}: line {number} field '{field}' is {type(text).__name__}, not text"
            )
        out.append((f"line:{number}", text.replace("\0", " ").encode("utf-8")))
    return out


@register(
    "task",
    "text_files",
    paper=Paper("Language Models are Unsupervised Multitask Learners", 2019, "Radford et al."),
    summary="LM on your own text: a folder of files or a JSONL file (task.path=...), split "
    "by file; bytes or a trained subword tokenizer",
    params=TextFilesParams,
    caps=Capabilities(),
)
class TextFiles(StdlibLM):
    """Next-token prediction on a user's corpus; see the module docstring."""

    splits: ClassVar[tuple[str, ...]] = ("id", "ood")

    params: TextFilesParams  # type: ignore[assignment]

    def __init__(self, params: TextFilesParams, seed: int = 0) -> None:
        Task.__init__(self, params, seed)
        if params.report_test:
            self.splits = ("id", "test", "ood")  # type: ignore[misc]
        docs = read_corpus(params.path, "path", params)
        if params.ood_path is not None:
            self._ood = read_corpus(params.ood_path, "ood_path", params)
        else:
            n_ood = max(1, round(params.ood_fraction * len(docs)))
            if n_ood >= len(docs):
                raise ValueError(
                    f"path='{params.path}' holds {len(docs)} documents: too few to hold out "
                    f"ood_fraction={params.ood_fraction} as ood and train on the rest"
                )
            docs, self._ood = docs[:-n_ood], docs[-n_ood:]
        self.root = str(Path(params.path).expanduser())
        self._documents = docs
        self._codec = None
        self._tokens = {}
        self._streams: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}

    def stream(self, split: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """The byte stream of ``split`` (``train``, ``id``, ``test``) and its documents."""
        if split not in self._streams:
            p = self.params
            chosen = (
                self._ood
                if split == "ood"
                else [
                    (name, data)
                    for name, data in self._documents
                    if file_split(name, p.val_fraction, p.test_fraction) == split
                ]
            )
            raw = b"".join(data + bytes([SEPARATOR]) for _, data in chosen)
            self._streams[split] = (
                np.frombuffer(raw, dtype=np.uint8),
                tuple(n for n, _ in chosen),
            )
        data, names = self._streams[split]
        if len(data) < self.params.seq_len + 1:
            raise ValueError(
                f"split '{split}' of path='{self.params.path}' holds {len(data)} bytes in "
                f"{len(names)} documents, fewer than seq_len + 1 = {self.params.seq_len + 1}; "
                f"lower seq_len, raise the split's fraction or add text"
            )
        return data, names

    def corpus_info(self) -> dict[str, dict[str, int]]:
        """Documents and bytes per split."""
        out = {}
        for split in ("train", *self.splits):  # id, (test,) ood
            data, names = self.stream(split)
            out[split] = {"documents": len(names), "bytes": len(data)}
        return out
