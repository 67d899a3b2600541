"""A killed `pamap demo` leaves its run started and its `training` slot claimed; the next demo
releases them instead of waiting for the slot forever."""

from __future__ import annotations

import subprocess
from pathlib import Path

import dagster as dg

from orchestration.demo import PID_TAG, release_abandoned_runs


def _run(instance: dg.DagsterInstance, run_id: str, pid: int) -> None:
    instance.add_run(
        dg.DagsterRun(
            job_name="training_job",
            run_id=run_id,
            status=dg.DagsterRunStatus.STARTED,
            tags={PID_TAG: str(pid)},
        )
    )
    assert instance.event_log_storage.claim_concurrency_slot("training", run_id, "trained_model")


def test_runs_of_a_killed_demo_are_failed_and_their_slots_freed(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    with dg.DagsterInstance.local_temp(str(tmp_path)) as instance:
        instance.event_log_storage.set_concurrency_slots("training", 2)
        _run(instance, "a" * 32, gone.pid)  # its demo was killed
        _run(instance, "b" * 32, 1)  # a live process: left alone

        assert release_abandoned_runs(instance) == ["a" * 32]

        assert instance.get_run_by_id("a" * 32).status == dg.DagsterRunStatus.FAILURE
        assert instance.get_run_by_id("b" * 32).status == dg.DagsterRunStatus.STARTED
        claimed = instance.event_log_storage.get_concurrency_info("training").claimed_slots
        assert [slot.run_id for slot in claimed] == ["b" * 32]
        assert release_abandoned_runs(instance) == []
