"""Shared test settings: deterministic, single-threaded torch."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _deterministic() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Caches (trained tokenizers, the extracted code corpus) go to a folder of the test
    session, not ~/.cache; parallel workers (``pytest -n``) share one, as cache writes are
    atomic and verified."""
    import os

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the folder above every worker's own
    cache = root / "anyformer-cache"
    cache.mkdir(exist_ok=True)
    os.environ["ANYFORMER_CACHE"] = str(cache)
