"""Shared fixtures for tests that run the Dagster graph.

Writing and preparing the tiny data set is the slow part, so it happens once per session;
tests that change data work on their own copy (`copy_prepared`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from ml_core.data.columns import SUBJECTS
from ml_core.data.folds import FOLD_NAMES
from ml_core.data.synthetic import write_dataset
from orchestration.definitions import defs as load_defs
from orchestration.defs.partitions import register_variants


def execute(
    job_name: str,
    instance: dg.DagsterInstance,
    partition: str | dg.MultiPartitionKey | None = None,
    run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """Run one of the code location's jobs in process, the way `pamap demo` does (a fold x
    variant partition is registered first, as `pamap demo` does)."""
    if isinstance(partition, dg.MultiPartitionKey):
        register_variants(instance, [partition.keys_by_dimension["model"]])
    job = load_defs().resolve_job_def(job_name)
    return job.execute_in_process(
        instance=instance, partition_key=partition, run_config=run_config, raise_on_error=False
    )


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic PAMAP2 set (a `raw/` folder), written once per test session."""
    raw = tmp_path_factory.mktemp("tiny") / "raw"
    write_dataset(raw, scale="tiny", seed=0)
    return raw


@pytest.fixture(scope="session")
def prepared_root(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with every subject ingested and every fold prepared through Dagster."""
    root = tmp_path_factory.mktemp("prepared")
    shutil.copytree(tiny_dataset, root / "raw")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PAMAP_DATA_ROOT", str(root))
        instance = dg.DagsterInstance.ephemeral()
        for subject in SUBJECTS:
            assert execute("ingest_job", instance, str(subject)).success, subject
        for fold in FOLD_NAMES:
            assert execute("prepare_job", instance, fold).success, fold
    return root


@pytest.fixture
def copy_prepared(
    prepared_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Callable[[], Path]:
    """Copy the prepared root into tmp_path and point the resources (and MLflow) at it."""

    def copy() -> Path:
        root = tmp_path / "data"
        shutil.copytree(prepared_root, root)
        monkeypatch.setenv("PAMAP_DATA_ROOT", str(root))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        return root

    return copy
