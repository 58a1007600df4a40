"""Tokenizers of text and code tasks: UTF-8 bytes, or subwords trained on the task's data.

A task with a ``tokenizer`` field (:class:`TokenizerFields`) turns its text into token ids
with one of

- ``bytes``: the UTF-8 bytes 0–255 (no training; the task's document separator is the
  ``0`` byte);
- ``bpe``: byte-level BPE (Sennrich et al., 2016; GPT-2's byte-level variant) trained
  with Hugging Face ``tokenizers`` on the task's training split;
- ``unigram``: a Unigram language-model tokenizer (Kudo, 2018) over the same byte-level
  alphabet, trained the same way.

Both subword kinds work on the byte-level alphabet (every byte is a symbol before
merging), so every text encodes without unknown tokens and decodes back exactly; id 0 is
the special ``<sep>`` token that ends each document. ``vocab_size`` counts every id
(special token and the 256 byte symbols included); a small corpus may yield fewer ids,
and the model's vocabulary is ``vocab_size`` regardless.

Training is cached (:func:`load_or_train`): the key is a SHA-256 over the corpus's own
key (what the task read: files, splits, their sizes and digests), the settings and the
``tokenizers`` version; the cache holds ``<key>.json`` (the tokenizer, plain JSON — never
code) and ``<key>.sha256``; a file whose digest does not match is discarded and the
tokenizer retrained. Writes are atomic (temporary file, then rename). The cache folder is
``$ANYFORMER_CACHE/tokenizers`` (default ``~/.cache/anyformer/tokenizers``). A run keeps
its tokenizer as ``tokenizer.json`` in its folder, and a loaded run uses that copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from anyformer.tasks.cache import cache_dir, key_of, read_verified, write_verified

TokenizerKind = Literal["bytes", "bpe", "unigram"]
#: The special token that ends every document in a subword stream (id 0).
SEP_TOKEN = "<sep>"
#: Name of the tokenizer file in a run folder.
RUN_FILE = "tokenizer.json"


class TokenizerFields(BaseModel):
    """The tokenizer fields a text or code task's parameters add.

    - ``tokenizer``: ``bytes`` (UTF-8 bytes), ``bpe`` or ``unigram`` (trained on the
      task's training split with Hugging Face ``tokenizers``).
    - ``vocab_size``: ids of a subword tokenizer, 257–65,536 (ignored for ``bytes``: 256).
    - ``min_frequency``: a BPE merge needs a pair seen at least this often.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    tokenizer: TokenizerKind = "bytes"
    vocab_size: int = Field(1024, ge=257, le=65536)
    min_frequency: int = Field(2, ge=1)

    def tokenizer_settings(self) -> dict[str, object]:
        return {
            "kind": self.tokenizer,
            "vocab_size": self.vocab_size,
            "min_frequency": self.min_frequency,
        }


class Codec:
    """Text <-> ids for one tokenizer, with each id's length in bytes."""

    kind: str = "bytes"

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def separator(self) -> int:
        return 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        """``[vocab_size]`` bytes each id stands for (the separator counts one byte)."""
        return np.ones(self.vocab_size, dtype=np.int64)

    def to_json(self) -> str | None:
        """The tokenizer as JSON, or None for bytes (nothing to keep)."""
        return None

    def encode_documents(self, documents: Iterable[str | bytes]) -> np.ndarray:
        """One stream of every document's ids, each followed by the separator."""
        parts: list[np.ndarray] = []
        for doc in documents:
            text = doc.decode("utf-8", errors="replace") if isinstance(doc, bytes) else doc
            parts.append(np.asarray(self.encode(text), dtype=np.int64))
            parts.append(np.asarray([self.separator], dtype=np.int64))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


class SubwordCodec(Codec):
    """A trained Hugging Face ``tokenizers`` tokenizer over the byte-level alphabet."""

    def __init__(self, tokenizer: object, kind: str, vocab_size: int) -> None:
        self.tok = tokenizer
        self.kind = kind
        self._vocab_size = vocab_size
        self._bytes: np.ndarray | None = None

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def separator(self) -> int:
        return int(self.tok.token_to_id(SEP_TOKEN))  # type: ignore[attr-defined]

    def encode(self, text: str) -> list[int]:
        return list(self.tok.encode(text).ids)  # type: ignore[attr-defined]

    def decode(self, ids: Iterable[int]) -> str:
        known = [i for i in ids if 0 <= i < self.tok.get_vocab_size()]  # type: ignore[attr-defined]
        return self.tok.decode(known, skip_special_tokens=False)  # type: ignore[attr-defined]

    def token_bytes(self) -> np.ndarray:
        # byte-level symbols: one character of a token string is one byte of text
        if self._bytes is None:
            lengths = np.ones(self.vocab_size, dtype=np.int64)
            for token, i in self.tok.get_vocab().items():  # type: ignore[attr-defined]
                lengths[i] = 1 if token == SEP_TOKEN else len(token)
            self._bytes = lengths
        return self._bytes

    def to_json(self) -> str:
        return self.tok.to_str()  # type: ignore[attr-defined]


def _hf() -> object:
    try:
        import tokenizers
    except ImportError:  # pragma: no cover - a dependency of transformers
        raise ValueError(
            "tokenizer='bpe'/'unigram' needs the 'tokenizers' package (pip install tokenizers)"
        ) from None
    return tokenizers


def train_codec(settings: TokenizerFields, texts: Iterable[str]) -> Codec:
    """Train the subword tokenizer ``settings`` asks for on ``texts`` (bytes: no training)."""
    if settings.tokenizer == "bytes":
        return Codec()
    hf = _hf()
    alphabet = hf.pre_tokenizers.ByteLevel.alphabet()  # type: ignore[attr-defined]
    if settings.tokenizer == "bpe":
        model = hf.models.BPE()  # type: ignore[attr-defined]
        trainer = hf.trainers.BpeTrainer(  # type: ignore[attr-defined]
            vocab_size=settings.vocab_size,
            min_frequency=settings.min_frequency,
            special_tokens=[SEP_TOKEN],
            initial_alphabet=alphabet,
            show_progress=False,
        )
    else:
        model = hf.models.Unigram()  # type: ignore[attr-defined]
        trainer = hf.trainers.UnigramTrainer(  # type: ignore[attr-defined]
            vocab_size=settings.vocab_size,
            special_tokens=[SEP_TOKEN],
            initial_alphabet=alphabet,
            show_progress=False,
        )
    tok = hf.Tokenizer(model)  # type: ignore[attr-defined]
    tok.pre_tokenizer = hf.pre_tokenizers.ByteLevel(add_prefix_space=False)  # type: ignore[attr-defined]
    tok.decoder = hf.decoders.ByteLevel()  # type: ignore[attr-defined]
    tok.train_from_iterator(texts, trainer=trainer)
    return SubwordCodec(tok, settings.tokenizer, settings.vocab_size)


def codec_from_json(text: str, settings: TokenizerFields) -> Codec:
    """A subword codec read back from its JSON (a run folder's or the cache's copy)."""
    if settings.tokenizer == "bytes":
        return Codec()
    hf = _hf()
    try:
        tok = hf.Tokenizer.from_str(text)  # type: ignore[attr-defined]
    except Exception as exc:  # the library raises its own exception type
        raise ValueError(f"not a tokenizer file ({exc})") from None
    if tok.token_to_id(SEP_TOKEN) is None or tok.get_vocab_size() > settings.vocab_size:
        raise ValueError(
            f"the tokenizer file does not match tokenizer={settings.tokenizer} "
            f"vocab_size={settings.vocab_size} (no {SEP_TOKEN} token, or more ids)"
        )
    return SubwordCodec(tok, settings.tokenizer, settings.vocab_size)


def codec_artifacts(codec: Codec) -> dict[str, str]:
    """The files a run folder keeps for a task's tokenizer: ``tokenizer.json``, or nothing
    for bytes."""
    text = codec.to_json()
    return {RUN_FILE: text} if text is not None else {}


def read_run_codec(folder: Path, settings: TokenizerFields) -> Codec | None:
    """The subword tokenizer a run folder kept (``tokenizer.json``), or None when the
    settings ask for bytes or the folder holds none; a file that is not a matching
    tokenizer raises ValueError naming it."""
    path = Path(folder) / RUN_FILE
    if settings.tokenizer == "bytes" or not path.is_file():
        return None
    try:
        return codec_from_json(path.read_text(encoding="utf-8"), settings)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def cache_key(corpus_key: str, settings: TokenizerFields) -> str:
    """SHA-256 over the corpus key, the settings and the ``tokenizers`` version."""
    version = getattr(_hf(), "__version__", "?")
    return key_of({"corpus": corpus_key, "settings": settings.tokenizer_settings(), "lib": version})


def load_or_train(
    settings: TokenizerFields, corpus_key: str, texts: Callable[[], Iterable[str]]
) -> Codec:
    """The codec for ``settings`` on the corpus ``corpus_key``: from the cache when a
    verified copy is there, else trained on ``texts()`` and cached."""
    if settings.tokenizer == "bytes":
        return Codec()
    key = cache_key(corpus_key, settings)
    path = cache_dir("tokenizers") / f"{key}.json"
    text = read_verified(path)
    if text is not None:
        try:
            return codec_from_json(text, settings)
        except ValueError:
            pass  # damaged or foreign: retrain
    codec = train_codec(settings, texts())
    write_verified(path, codec.to_json() or "")  # read-only home: the run keeps its copy
    return codec


def corpus_digest(parts: Iterable[tuple[str, bytes]]) -> str:
    """A key for a corpus: SHA-256 over each part's name and content."""
    h = hashlib.sha256()
    for name, data in parts:
        h.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return h.hexdigest()


def texts_digest(texts: Iterable[str]) -> str:
    """A key for a list of texts: their count and a SHA-256 over each text (NUL-ended)."""
    h = hashlib.sha256()
    n = 0
    for t in texts:
        h.update(t.encode() + b"\0")
        n += 1
    return f"{n}:{h.hexdigest()}"


class TrainedTokenizer:
    """What a task with a ``tokenizer`` field shares: the codec trained on (or cached for)
    its training texts, the run-folder file that keeps it, and reloading that file.

    A task mixes this in, sets ``self._codec = None`` in ``__init__`` and names its
    training texts in :meth:`tokenizer_corpus`; :meth:`forget_encodings` drops whatever it
    encoded with an earlier codec.
    """

    params: TokenizerFields
    _codec: Codec | None

    def tokenizer_corpus(self) -> tuple[str, Callable[[], Iterable[str]]]:
        """The corpus key (what the cache is keyed by) and the training texts."""
        raise NotImplementedError

    def forget_encodings(self) -> None:
        """Drop token ids encoded with a previous codec (none by default)."""

    @property
    def codec(self) -> Codec:
        """The run's tokenizer: bytes, or subwords trained on the training split (cached
        across runs by corpus and settings; a loaded run uses its folder's copy)."""
        if self._codec is None and self.params.tokenizer == "bytes":
            self._codec = Codec()  # nothing to train: the corpus is not even read
        if self._codec is None:
            key, texts = self.tokenizer_corpus()
            self._codec = load_or_train(self.params, f"{type(self).__name__}:{key}", texts)
        return self._codec

    def artifacts(self) -> dict[str, str]:
        """Files a run folder keeps for this task: the trained tokenizer, if any."""
        return codec_artifacts(self.codec)

    def restore_artifacts(self, folder: Path) -> bool:
        """Use the tokenizer a run folder kept (instead of the cache or training); True
        when the folder held one."""
        codec = read_run_codec(folder, self.params)
        if codec is None:
            return False
        self._codec = codec
        self.forget_encodings()
        return True
