"""Stopping long-running `pamap` commands the way `kill`, `timeout`, Ctrl-C, a closed terminal or
a container stop does: a real subprocess receives SIGINT, SIGTERM or SIGHUP.

Each stop must end within seconds with exit status 128 + the signal's number and a last line
that says what finished and how to resume; leave no process behind; leave no run STARTED and no
pool slot claimed in the Dagster instance; and the next `pamap demo` resumes from there.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from ml_core.paths import PROJECT_ROOT, DataPaths
from tests.e2e.conftest import free_port, log_tail, venv_program, wait_for_http, wait_for_port

# Long enough for a busy two-core machine to unwind a step; far below the 30 s+ of before.
STOP_WITHIN_S = 20.0
DEMO = ["demo", "--scale", "tiny", "--models", "feature_gbm", "--folds", "loso-101"]
UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, state) of every process, from /proc."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it exited meanwhile
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry.name)] = (int(fields[1]), fields[0])
    return table


def _descendants(pid: int) -> set[int]:
    table = _processes()
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, (parent, _) in table.items() if parent in frontier}
        frontier = children - found
        found |= children
    return found


def _cmdline(pid: int) -> bytes:
    """The command line of `pid`, empty once it has exited."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (a zombie has exited)."""
    table = _processes()
    return {p for p in pids if p in table and table[p][1] != "Z"}


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        return subprocess.Popen(
            [venv_program("pamap"), *args],
            env=env,
            cwd=PROJECT_ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_line(proc: subprocess.Popen, log: Path, text: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(f"exited ({proc.returncode}) before printing {text!r}:\n{log_tail(log)}")
        time.sleep(0.1)
    pytest.fail(f"no {text!r} within {timeout:.0f}s:\n{log_tail(log)}")


def _stop(proc: subprocess.Popen, log: Path, signum: signal.Signals) -> str:
    """Send `signum` to the command alone (as `kill` does) and check how it ends; returns its
    last line. Every process it started must be gone too."""
    started = _descendants(proc.pid)
    sent = time.monotonic()
    proc.send_signal(signum)
    try:
        proc.wait(timeout=STOP_WITHIN_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"still running {STOP_WITHIN_S:.0f}s after {signum.name}:\n{log_tail(log)}")
    took = time.monotonic() - sent
    assert proc.returncode == 128 + signum, (proc.returncode, log_tail(log))
    deadline = time.monotonic() + 5  # children stopped by the command exit on their own
    while _alive(started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(started), f"left running after {signum.name}: {_alive(started)}"
    last = log.read_text(errors="replace").strip().splitlines()[-1]
    print(f"{signum.name}: stopped in {took:.1f}s: {last}")
    return last


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
    _wait_for_line(proc, log, "2/4 prepare")
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


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_pamap_ui_stops_both_servers_and_their_children(
    signum: signal.Signals, tmp_path: Path
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    dagster_port, mlflow_port = free_port(), free_port()
    args = ["--data-root", str(tmp_path / "data"), "ui"]
    ports = ["--dagster-port", str(dagster_port), "--mlflow-port", str(mlflow_port)]
    proc = _start([*args, *ports], env, log := tmp_path / "ui.log")
    try:
        wait_for_port(mlflow_port, proc, log)
        wait_for_http(f"http://127.0.0.1:{dagster_port}/server_info", proc, log, timeout=300)
        children = _descendants(proc.pid)
        assert len(children) >= 4  # dagster dev, its daemon, webserver, mlflow
        # MLflow's job runner (consumer pools for GenAI jobs) is off: nothing here uses it.
        job_runners = [pid for pid in children if b"mlflow.server.jobs" in _cmdline(pid)]
        assert not job_runners, [_cmdline(pid) for pid in job_runners]
        last = _stop(proc, log, signum)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert last.startswith(f"pamap ui stopped by {signum.name}: both servers"), last
    for port in (dagster_port, mlflow_port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
