"""Stopping `pamap demo` the way `kill`, `timeout`, Ctrl-C or a closed terminal does: a real
subprocess receives SIGINT, SIGTERM or SIGHUP.

Each stop must end within seconds with exit status 128 + the signal's number and a last line
that says what finished and how to resume; leave no process behind; leave no run STARTED and no
pool slot claimed in the Dagster instance; and the next `pamap demo` resumes from there.
(A file of its own, beside `test_signals.py`, so that the two xdist workers can run them at once.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from ml_core.paths import PROJECT_ROOT, DataPaths
from tests.e2e.conftest import log_tail, venv_program
from tests.e2e.test_signals import _start, _stop

DEMO = ["demo", "--scale", "tiny", "--models", "feature_gbm", "--folds", "loso-101"]
UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before printing {text!r}:\n{log_tail(log)}")
        time.sleep(0.1)
    pytest.fail(f"no {text!r} within {timeout:.0f}s:\n{log_tail(log)}")


def _unfinished_runs(home: Path) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return list(instance.get_runs(filters=dg.RunsFilter(statuses=UNFINISHED)))


@pytest.mark.slow
@pytest.mark.timeout(3600)  # four demo runs; like the demo test, slow on a loaded machine
def test_a_stopped_demo_cancels_its_run_and_the_next_one_resumes(
    tiny_raw: Path, tmp_path: Path
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    data_root = tmp_path / "data"
    shutil.copytree(tiny_raw, data_root / "raw")
    paths = DataPaths(data_root)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONUNBUFFERED": "1",
    }
    args = ["--data-root", str(data_root), *DEMO]
    again = "`uv run pamap " + " ".join(args) + "`"

    # Ctrl-C while ingesting: the subject in progress is canceled, the finished one kept.
    proc = _start(args, env, log := tmp_path / "1.log")
    _wait_for_line(proc, log, "  subject 101 ")
    last = _stop(proc, log, signal.SIGINT)
    assert last.startswith("pamap demo stopped by SIGINT: 1 run(s) finished in this demo and kept")
    assert again in last
    assert _unfinished_runs(home) == []
    shards_101 = {p: p.stat().st_mtime_ns for p in paths.shard_dir(101).rglob("*") if p.is_file()}
    assert shards_101

    # A closed terminal while preparing the fold: ingest resumed after subject 101.
    proc = _start(args, env, log := tmp_path / "2.log")
    _wait_for_line(proc, log, "2/5 prepare")
    ran = log.read_text()
    assert "subject 101 " not in ran and "subject 102 " in ran and "subject 104 " in ran
    last = _stop(proc, log, signal.SIGHUP)
    assert last.startswith("pamap demo stopped by SIGHUP: 3 run(s) finished"), last
    assert _unfinished_runs(home) == []

    # SIGTERM (`kill`, `timeout`, a container stop) once training is done, while evaluating.
    proc = _start(args, env, log := tmp_path / "3.log")
    _wait_for_line(proc, log, "loso-101/feature_gbm epoch 1:")
    last = _stop(proc, log, signal.SIGTERM)
    assert "loso-101 x feature_gbm was interrupted and its run canceled" in last, last
    assert "retries loso-101 x feature_gbm from its last checkpoint" in last
    assert _unfinished_runs(home) == []
    with dg.DagsterInstance.from_config(str(home)) as instance:
        [training] = instance.get_runs(dg.RunsFilter(job_name="training_job"), limit=1)
        assert training.status == dg.DagsterRunStatus.CANCELED
        assert instance.event_log_storage.get_concurrency_info("training").claimed_slots == []
    [checkpoint] = paths.root.glob("models/loso-101/feature_gbm/*/seed-*/last.pt")
    checkpoint_written = checkpoint.stat().st_mtime_ns

    # The next demo resumes: nothing finished is redone, the training continues its checkpoint.
    done = subprocess.run(
        [venv_program("pamap"), *args],
        env=env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("up to date") == 2  # ingest and prepare
    assert "its last run did not finish; resuming its training" in done.stdout
    assert checkpoint.stat().st_mtime_ns == checkpoint_written  # continued, not retrained
    assert (paths.reports / "leaderboard.md").exists()
    assert shards_101 == {p: p.stat().st_mtime_ns for p in shards_101}
    assert _unfinished_runs(home) == []
