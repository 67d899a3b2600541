"""Shared fixtures for tests that run the Dagster graph.

Writing and preparing the tiny data set is the slow part, so it happens once per test session,
shared by the pytest-xdist workers (`built_once`); tests that change data work on their own copy
(`copy_prepared`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
from filelock import FileLock

from ml_core.data.columns import SUBJECTS
from ml_core.data.folds import FOLD_NAMES
from ml_core.data.synthetic import write_dataset
from orchestration.definitions import defs as load_defs
from orchestration.defs.variants import find_variant, record_variants


def execute(
    job_name: str,
    instance: dg.DagsterInstance,
    partition: str | dg.MultiPartitionKey | None = None,
    run_config: dict | None = None,
) -> dg.ExecuteInProcessResult:
    """Run one of the code location's jobs in process, the way `pamap demo` does (a fold x
    variant partition is registered first, with its settings, as `pamap demo` does)."""
    if isinstance(partition, dg.MultiPartitionKey):
        record_variants(instance, [find_variant(partition.keys_by_dimension["model"])])
    job = load_defs().resolve_job_def(job_name)
    return job.execute_in_process(
        instance=instance, partition_key=partition, run_config=run_config, raise_on_error=False
    )


def built_once(
    tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]
) -> Path:
    """A folder made by `build` once per test session and shared, read-only, by every
    pytest-xdist worker: the first worker to take the lock builds it, the others wait for it.
    A failed build leaves nothing behind, so the next worker tries again (and fails the same)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    session = tmp_path_factory.getbasetemp().parent  # this session's, common to its workers
    folder, done = session / name, session / f"{name}.done"
    with FileLock(session / f"{name}.lock"):
        if not done.exists():
            # Built in place (paths inside may name the folder), marked complete only at the end.
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic PAMAP2 set (a `raw/` folder), written once per test session."""

    def build(folder: Path) -> None:
        write_dataset(folder / "raw", scale="tiny", seed=0)

    return built_once(tmp_path_factory, "tiny", build) / "raw"


@pytest.fixture(scope="session")
def prepared_root(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root with every subject ingested and every fold prepared through Dagster, built
    once per test session; tests read it or copy it (`copy_prepared`), never change it."""

    def build(root: Path) -> None:
        shutil.copytree(tiny_dataset, root / "raw")
        with pytest.MonkeyPatch.context() as env:
            env.setenv("PAMAP_DATA_ROOT", str(root))
            instance = dg.DagsterInstance.ephemeral()
            for subject in SUBJECTS:
                assert execute("ingest_job", instance, str(subject)).success, subject
            for fold in FOLD_NAMES:
                assert execute("prepare_job", instance, fold).success, fold

    return built_once(tmp_path_factory, "prepared", build)


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
