"""Shared fixtures for tests that run the Dagster graph."""

from __future__ import annotations

from pathlib import Path

import pytest
from ml_core.synthetic import write_dataset


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic PAMAP2 set, written once per test session; copy it before changing it."""
    raw = tmp_path_factory.mktemp("tiny") / "raw"
    write_dataset(raw, scale="tiny", seed=0)
    return raw
