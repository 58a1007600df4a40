"""A verified on-disk cache for things tasks derive from their data (trained tokenizers,
the extracted code corpus).

Entries live under ``$ANYFORMER_CACHE/<kind>/`` (default ``~/.cache/anyformer``) as
``<key>.json`` — plain JSON, never code — beside ``<key>.sha256``, the SHA-256 of the
JSON text. Writes are atomic (temporary file, then rename; the digest last), and a read
returns the text only when its digest matches, so a torn or edited entry is recomputed
rather than trusted. Keys are SHA-256 digests of what the entry was derived from.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from anyformer.spec_io import write_text_atomic


def cache_dir(kind: str) -> Path:
    """The folder of one kind of entry (``$ANYFORMER_CACHE/<kind>``)."""
    base = os.environ.get("ANYFORMER_CACHE") or Path.home() / ".cache" / "anyformer"
    return Path(base) / kind


def key_of(record: object) -> str:
    """SHA-256 of a JSON-serialisable record (sorted keys): an entry's key."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def read_verified(path: Path) -> str | None:
    """``path``'s text when ``path.sha256`` holds its digest, else None."""
    digest = path.with_suffix(".sha256")
    try:
        text = path.read_text(encoding="utf-8")
        expected = digest.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text if hashlib.sha256(text.encode()).hexdigest() == expected else None


def write_verified(path: Path, text: str) -> bool:
    """Write ``text`` and its digest atomically; False when the folder is not writable
    (the caller goes on without a cache)."""
    try:
        write_text_atomic(path, text)
        write_text_atomic(path.with_suffix(".sha256"), hashlib.sha256(text.encode()).hexdigest())
    except OSError:
        return False
    return True
