"""Reading checkpoint files that someone else may have written, without trusting them.

A run folder can come from anywhere (a colleague, a download), so nothing in it may run
code or reach outside it:

- **No plain unpickling.** ``state.pt`` and ``rng-<rank>.pt`` are read with
  ``torch.load(weights_only=True)``. A :mod:`torch.distributed.checkpoint` (DCP) folder
  holds two pickles torch would read with plain :mod:`pickle`: ``.metadata`` (read by
  :class:`SafeReader` through :class:`MetadataUnpickler`, which admits only the DCP
  metadata dataclasses, ``torch.Size``, dtypes, layouts and ``pathlib`` paths) and the
  non-tensor entries of the shards (optimizer hyper-parameters; read by
  :class:`SafePlanner` with ``weights_only=True``).
- **Paths stay inside.** The ``checkpoint/latest`` pointer must name a ``step-N`` folder
  (:func:`pointer_target`), every file a checkpoint lists must be a plain relative name
  that resolves inside its folder (:func:`inside`), and every shard a DCP ``.metadata``
  names must be a file of its own folder.
- **Integrity.** :func:`digests` records the SHA-256 of every file of a checkpoint (in
  its ``state.json``) and :func:`verify_digests` checks them on load, naming the first
  file that differs.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from anyformer.errors import RunFolderError

POINTER = re.compile(r"step-(\d{1,12})(\.1)?")
MAX_METADATA_BYTES = 256 * 2**20


# --------------------------------------------------------------------------- paths
def pointer_target(root: Path, text: str) -> Path:
    """The folder a ``latest`` pointer's ``text`` names, refused unless it is
    ``step-N`` (or ``step-N.1``, the second copy of a step saved twice) inside ``root``."""
    name = text.strip()
    if not POINTER.fullmatch(name):
        shown = name if len(name) <= 80 else name[:80] + "..."
        raise RunFolderError(
            f"checkpoint pointer {root / 'latest'} holds {shown!r}, which is not a checkpoint "
            f"of this folder (valid: 'step-N', a folder next to the pointer); refusing to "
            f"follow it"
        )
    return inside(root, name, what=f"checkpoint pointer {root / 'latest'}")


def inside(folder: Path, relative: str, what: str) -> Path:
    """``folder / relative``, refused (naming ``what``) if ``relative`` is absolute, climbs
    out with ``..``, or resolves (through links) outside ``folder``."""
    rel = Path(relative)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise RunFolderError(
            f"{what} names {relative!r}, a path outside {folder}; refusing to read it"
        )
    path = folder / rel
    base = folder.resolve()
    try:
        path.resolve().relative_to(base)
    except ValueError:
        raise RunFolderError(
            f"{what} names {relative!r}, which leads outside {folder} (a link to "
            f"{path.resolve()}); refusing to read it"
        ) from None
    return path


# --------------------------------------------------------------------------- digests
def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def digests(folder: Path, skip: tuple[str, ...] = ("state.json",)) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (but ``skip``)."""
    found = sorted(p for p in folder.rglob("*") if p.is_file())
    return {
        p.relative_to(folder).as_posix(): file_digest(p)
        for p in found
        if p.relative_to(folder).as_posix() not in skip
    }


def verify_digests(folder: Path, recorded: Any) -> None:
    """Check every file ``recorded`` (``{name: sha256}``) against its bytes in ``folder``."""
    if not isinstance(recorded, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v)
        for k, v in recorded.items()
    ):
        raise RunFolderError(
            f"checkpoint {folder} is damaged: state.json 'files' is not a mapping of file "
            f"names to SHA-256 digests"
        )
    for name, digest in recorded.items():
        path = inside(folder, name, what=f"{folder / 'state.json'}")
        if not path.is_file():
            raise RunFolderError(f"checkpoint {folder} is damaged: '{name}' is missing")
        if file_digest(path) != digest:
            raise RunFolderError(
                f"checkpoint {folder} is damaged: {path} does not match the SHA-256 digest "
                f"recorded in state.json (the file changed after it was written)"
            )


# --------------------------------------------------------------------------- unpickling
def _allowed() -> dict[tuple[str, str], Any]:
    import pathlib

    from torch.distributed.checkpoint import filesystem, metadata

    allowed: dict[tuple[str, str], Any] = {
        ("torch", "Size"): torch.Size,
        ("torch.serialization", "_get_layout"): _layout,
        ("pathlib", "PosixPath"): pathlib.PurePosixPath,  # a name only: never touched
        ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
        ("pathlib", "WindowsPath"): pathlib.PureWindowsPath,
        ("pathlib", "PureWindowsPath"): pathlib.PureWindowsPath,
        ("collections", "OrderedDict"): dict,
        ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): filesystem._StorageInfo,
    }
    for name in metadata.__all__ + ["_MEM_FORMAT_ENCODING"]:
        allowed[("torch.distributed.checkpoint.metadata", name)] = getattr(metadata, name)
    return allowed


def _layout(name: str) -> torch.layout:
    value = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(value, torch.layout):
        raise pickle.UnpicklingError(f"unknown tensor layout {name!r}")
    return value


class MetadataUnpickler(pickle.Unpickler):
    """A :class:`pickle.Unpickler` that builds only what DCP metadata holds: the
    dataclasses of :mod:`torch.distributed.checkpoint.metadata`, ``_StorageInfo``,
    ``torch.Size``, dtypes, layouts and paths (as pure paths). Any other global (a
    function to call, a class to build) is refused before anything runs."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        found = _allowed().get((module, name))
        if found is None:
            raise pickle.UnpicklingError(f"'{module}.{name}' is not allowed in DCP metadata")
        return found


def read_dcp_metadata(folder: Path, filename: str = ".metadata") -> Any:
    """The DCP metadata of ``folder`` read through :class:`MetadataUnpickler`, checked:
    a ``Metadata`` whose shards are plain files of ``folder``."""
    from torch.distributed.checkpoint.filesystem import _StorageInfo
    from torch.distributed.checkpoint.metadata import Metadata, MetadataIndex

    path = inside(folder, filename, what=f"checkpoint {folder}")
    if not path.is_file():
        raise RunFolderError(f"checkpoint {folder.parent} is damaged: '{path.name}' is missing")
    if path.stat().st_size > MAX_METADATA_BYTES:
        raise RunFolderError(
            f"{path} is larger than {MAX_METADATA_BYTES // 2**20} MiB; not a DCP metadata file"
        )
    try:
        meta = MetadataUnpickler(io.BytesIO(path.read_bytes())).load()
    except Exception as exc:  # UnpicklingError, EOFError, TypeError from a bad BUILD, ...
        raise RunFolderError(
            f"{path} is not a checkpoint's metadata ({type(exc).__name__}: {exc}); it was "
            f"not loaded (only DCP metadata types are accepted from a run folder)"
        ) from None
    storage = getattr(meta, "storage_data", None)
    if not isinstance(meta, Metadata) or not isinstance(storage, dict):
        raise RunFolderError(f"{path} is not a checkpoint's metadata (wrong structure)")
    for key, info in storage.items():
        ok = isinstance(key, MetadataIndex) and isinstance(info, _StorageInfo)
        if not ok or info.transform_descriptors:
            raise RunFolderError(
                f"{path} is not a checkpoint's metadata (unexpected storage entry)"
            )
        name = info.relative_path
        if not isinstance(name, str) or "/" in name or "\\" in name or name in ("", ".", ".."):
            raise RunFolderError(
                f"{path} names shard {name!r}, which is not a file of {folder}; refusing to read it"
            )
        inside(folder, name, what=str(path))
    return meta


def _reader_class() -> type:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeReader(FileSystemReader):
        """DCP's file-system reader with :func:`read_dcp_metadata` in place of
        ``pickle.load``."""

        def read_metadata(self, *args: Any, **kwargs: Any) -> Any:
            rank = kwargs.get("rank")
            name = ".metadata" if rank is None else f"__{rank}.metadata"
            meta = read_dcp_metadata(Path(self.path), name)
            if getattr(meta, "storage_meta", None) is None:
                meta.storage_meta = StorageMeta()
            meta.storage_meta.load_id = self.load_id
            return meta

    return SafeReader


def _planner_class() -> type:
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._traverse import set_element

    class SafePlanner(DefaultLoadPlanner):
        """DCP's default load planner reading non-tensor entries with
        ``torch.load(weights_only=True)`` (the default uses ``weights_only=False``)."""

        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            try:
                obj = torch.load(value, weights_only=True)
            except Exception as exc:
                raise RunFolderError(
                    f"entry '{read_item.dest_index.fqn}' of the DCP checkpoint is not plain "
                    f"data ({type(exc).__name__}); it was not loaded"
                ) from None
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return SafePlanner


def safe_reader(folder: Path) -> Any:
    """A DCP storage reader of ``folder`` that unpickles nothing but metadata types."""
    return _reader_class()(str(folder))


def safe_planner() -> Any:
    """A DCP load planner that reads non-tensor entries as plain data only."""
    return _planner_class()()


def load_tensors_file(path: Path, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU; a damaged or unsafe file is a
    :class:`RunFolderError` naming it (nothing in it runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RunFolderError(
            f"{what} is damaged or unsafe: {path} cannot be loaded as plain tensors "
            f"({type(exc).__name__}: {first[:200]}); it was not loaded"
        ) from None
