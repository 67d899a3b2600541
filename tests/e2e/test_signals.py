"""Stopping `pamap ui` the way `kill`, a closed terminal or a container stop does: a real
subprocess receives SIGTERM or SIGHUP. The command must end within seconds with exit status
128 + the signal's number and a last line that says what stopped, and leave no process behind
(the servers and every process they started). Stopping `pamap demo`: `test_signals_demo.py`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from ml_core.paths import PROJECT_ROOT
from tests.e2e.conftest import free_port, log_tail, venv_program, wait_for_http, wait_for_port

# Long enough for a busy two-core machine to unwind a step; far below the 30 s+ of before.
STOP_WITHIN_S = 20.0


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
    except BaseException:
        # The servers run in process groups of their own: a failure before `pamap ui` stopped
        # them must end them too, or they hold their ports and CPU for the rest of the session.
        for pid in _alive(_descendants(proc.pid) | {proc.pid}):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        raise
    assert last.startswith(f"pamap ui stopped by {signum.name}: both servers"), last
    for port in (dagster_port, mlflow_port):
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
