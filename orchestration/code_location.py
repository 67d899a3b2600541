"""Runs executed in this process, filed in the Dagster UI like runs launched from it.

A run started with `JobDefinition.execute_in_process` has no code-location origin, so the UI
lists it on the Runs page only: not under its job, not on the Overview timeline. A run launched
from the UI (or `dg launch`) is created with the origin of its job in the code location that
`workspace.yaml` loads. `filed_under_job` creates runs with that same origin while they still
execute in the calling process, so `pamap demo` keeps its low overhead (no process, no code
server per run).
"""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.origin import JobPythonOrigin
from dagster._core.remote_origin import RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG
from dagster._core.workspace.load import location_origins_from_yaml_paths

from ml_core.paths import PROJECT_ROOT

WORKSPACE = PROJECT_ROOT / "workspace.yaml"
DEFINITIONS_MODULE = "orchestration.definitions"
REPOSITORY = "__repository__"  # the repository Dagster makes of a module's `Definitions`
__all__ = ["REPOSITORY_LABEL_TAG", "filed_under_job", "job_origins", "repository_label"]


def job_origins(job_name: str) -> tuple[RemoteJobOrigin, JobPythonOrigin]:
    """The origins a run of `job_name` launched from the UI carries: the job in the code location
    as `workspace.yaml` defines it, and the Python code that defines it."""
    [location] = location_origins_from_yaml_paths([str(WORKSPACE)])
    remote = RemoteJobOrigin(RemoteRepositoryOrigin(location, REPOSITORY), job_name)
    repository = ReconstructableRepository.for_module(
        DEFINITIONS_MODULE, "defs", working_directory=str(PROJECT_ROOT)
    )
    return remote, repository.get_reconstructable_job(job_name).get_python_origin()


def repository_label() -> str:
    """The tag value by which the UI finds a code location's runs (`REPOSITORY_LABEL_TAG`)."""
    [location] = location_origins_from_yaml_paths([str(WORKSPACE)])
    return RemoteRepositoryOrigin(location, REPOSITORY).get_label()


@contextmanager
def filed_under_job(instance: dg.DagsterInstance, job_name: str) -> Generator[None]:
    """Within the block, runs that `execute_in_process` creates on `instance` carry the origins
    of `job_name` in the code location. Dagster's in-process execution has no argument for
    them, so the instance's run factory is wrapped for the duration of the block."""
    remote, code = job_origins(job_name)
    create = instance.create_run_for_job

    def create_with_origin(*args: Any, **kwargs: Any) -> dg.DagsterRun:
        return create(*args, **kwargs, remote_job_origin=remote, job_code_origin=code)

    instance.create_run_for_job = create_with_origin
    try:
        yield
    finally:
        del instance.create_run_for_job
