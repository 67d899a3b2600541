"""A run whose process was killed is failed by run monitoring instead of holding its slots."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml
from dagster._core.events import EngineEventData
from dagster._core.launcher.base import WorkerStatus
from dagster._daemon.monitoring.run_monitoring import monitor_started_run

from ml_core.paths import PROJECT_ROOT
from orchestration.launcher import LocalRunLauncher


@dg.op
def _step() -> None:
    pass


@dg.job
def _job() -> None:
    _step()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_project_instance_monitors_runs_with_this_launcher() -> None:
    settings = yaml.safe_load(Path(PROJECT_ROOT / "dagster.yaml").read_text())
    assert settings["run_launcher"] == {
        "module": "orchestration.launcher",
        "class": "LocalRunLauncher",
    }
    assert settings["run_monitoring"]["enabled"] is True
    assert settings["run_monitoring"]["free_slots_after_run_end_seconds"] > 0


def test_a_started_run_whose_worker_is_gone_is_failed() -> None:
    launcher = {"module": "orchestration.launcher", "class": "LocalRunLauncher"}
    overrides = {"run_launcher": launcher, "run_monitoring": {"enabled": True}}
    with dg.instance_for_test(overrides=overrides) as instance:
        assert isinstance(instance.run_launcher, LocalRunLauncher)
        alive = instance.create_run_for_job(_job, status=dg.DagsterRunStatus.STARTED)
        killed = instance.create_run_for_job(_job, status=dg.DagsterRunStatus.STARTED)
        starting = instance.create_run_for_job(_job, status=dg.DagsterRunStatus.STARTED)
        dead = _dead_pid()
        instance.report_engine_event(
            "Started process", alive, EngineEventData.in_process(os.getpid())
        )
        instance.report_engine_event("Started process", killed, EngineEventData.in_process(dead))
        # A step subprocess's pid comes later and does not count: the worker's is the first.
        instance.report_engine_event("Step process", alive, EngineEventData.multiprocess(dead))

        health = {
            r.run_id: instance.run_launcher.check_run_worker_health(r)
            for r in (alive, killed, starting)
        }
        assert health[alive.run_id].status == WorkerStatus.RUNNING
        assert health[starting.run_id].status == WorkerStatus.RUNNING  # no process named yet
        assert health[killed.run_id].status == WorkerStatus.FAILED
        assert f"process {dead} is gone" in str(health[killed.run_id].msg)

        logger = logging.getLogger("test")
        for run in (alive, killed, starting):
            record = instance.get_run_record_by_id(run.run_id)
            assert record is not None
            monitor_started_run(instance, None, record, logger)
        after = {r.run_id: instance.get_run_by_id(r.run_id) for r in (alive, killed)}
        assert {k: r.status for k, r in after.items() if r is not None} == {
            alive.run_id: dg.DagsterRunStatus.STARTED,
            killed.run_id: dg.DagsterRunStatus.FAILURE,
        }
