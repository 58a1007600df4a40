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
    """Caches (trained tokenizers) go to a folder of the test session, not ~/.cache."""
    import os

    os.environ["ANYFORMER_CACHE"] = str(tmp_path_factory.mktemp("anyformer-cache"))
