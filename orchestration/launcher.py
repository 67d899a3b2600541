"""The local run launcher, with the health check that Dagster's run monitoring needs.

Dagster's `DefaultRunLauncher` starts each run as a process on this machine but cannot tell the
monitoring daemon whether that process still lives, so a run killed (for memory, by a user)
stays STARTED and keeps its slot in the `training` pool. This launcher reads the run worker's
process id from the run's first engine event that names one ("Started process for run",
"Executing steps in process") and reports the run FAILED once that process is gone; run
monitoring (`dagster.yaml`) then marks the run failed and frees its slots.
"""

from __future__ import annotations

import os

import dagster as dg
from dagster._core.launcher.base import CheckRunHealthResult, WorkerStatus


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def run_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The process id of the run's worker: the first engine event that carries a `pid`."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        data = event.engine_event_data if event is not None else None
        pid = data.metadata.get("pid") if data is not None else None
        if pid is not None and str(pid.value).isdigit():
            return int(str(pid.value))
    return None


class LocalRunLauncher(dg.DefaultRunLauncher):
    """`DefaultRunLauncher` whose runs' worker processes are checked by run monitoring."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        pid = run_worker_pid(self._instance, run.run_id)
        if pid is None or _alive(pid):
            # Not started far enough to name its process yet: leave it to the start timeout.
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(
            WorkerStatus.FAILED, f"the run worker process {pid} is gone (killed or crashed)"
        )
