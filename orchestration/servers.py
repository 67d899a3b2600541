"""The local servers `pamap ui` runs (Dagster's webserver with its daemon, MLflow's UI) and the
commands that reach them. No Dagster import: `pamap ui` starts in a second and the demo's
summary reuses `where_to_look`.

Each server runs in its own session (process group): `dagster dev` starts the daemon, the
webserver and a code server as its own children, so stopping the group stops them all.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

from ml_core.lifecycle.uris import safe_uri
from ml_core.paths import PROJECT_ROOT, DataPaths
from orchestration.interrupts import ignoring_stop_signals

DAGSTER_PORT = 3000
MLFLOW_PORT = 5000
STOP_TIMEOUT_S = 5.0  # how long a server group gets to exit on SIGTERM before SIGKILL


def tracking_uri(paths: DataPaths) -> str:
    """Where the platform logs: env `MLFLOW_TRACKING_URI`, else the SQLite store in the data root
    (what the `mlflow` resource resolves to)."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.root / 'mlflow' / 'mlflow.db'}"
    )


def ui_commands(
    paths: DataPaths, dagster_port: int = DAGSTER_PORT, mlflow_port: int = MLFLOW_PORT
) -> dict[str, list[str]]:
    """The UI servers `pamap ui` starts, bound to 127.0.0.1: Dagster's webserver with its daemon
    (`dagster dev`), and MLflow's UI unless the tracking URI is already a server."""
    bin_dir = Path(sys.executable).parent
    commands = {
        "dagster": [
            str(bin_dir / "dagster"),
            "dev",
            "-w",
            str(PROJECT_ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(dagster_port),
        ]
    }
    uri = tracking_uri(paths)
    if not uri.startswith(("http://", "https://")):
        commands["mlflow"] = [
            str(bin_dir / "mlflow"),
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(mlflow_port),
        ]
    return commands


def experiment_url(paths: DataPaths, mlflow_port: int = MLFLOW_PORT) -> str:
    """The `pamap2` experiment in MLflow's model-training view (its UI otherwise opens new
    browsers in the GenAI view, on an empty Traces page)."""
    from ml_core.lifecycle.tracking import MlflowTracker

    (paths.root / "mlflow").mkdir(parents=True, exist_ok=True)  # the SQLite store's folder
    url = MlflowTracker(tracking_uri(paths)).experiment_url()
    default = f"http://127.0.0.1:{MLFLOW_PORT}/"
    return url.replace(default, f"http://127.0.0.1:{mlflow_port}/", 1)


def where_to_look(paths: DataPaths, dagster_home: str) -> str:
    """Commands that work as printed, from the project folder."""
    uri = tracking_uri(paths)
    data_root = shlex.quote(str(paths.root))
    lines = [
        "where to look (run from the project folder):",
        f"  both UIs   : uv run pamap --data-root {data_root} ui"
        f"  (Dagster http://127.0.0.1:{DAGSTER_PORT}, MLflow http://127.0.0.1:{MLFLOW_PORT})",
        f"  Dagster UI : DAGSTER_HOME={shlex.quote(dagster_home)} PAMAP_DATA_ROOT={data_root} "
        "uv run dagster dev -h 127.0.0.1",
    ]
    if uri.startswith(("http://", "https://")):
        lines.append(f"  MLflow UI  : {safe_uri(uri)}")
    else:
        lines.append(
            f"  MLflow UI  : uv run mlflow ui --backend-store-uri {shlex.quote(uri)} "
            "--host 127.0.0.1"
        )
    lines.append(f"  MLflow runs: {experiment_url(paths)}")
    lines.append(
        f"  files      : {paths.root} (reports/leaderboard.md, "
        "evaluation/<fold>/<variant>/<protocol id>/seed-<n>/)"
    )
    return "\n".join(lines)


# Extra environment per server: MLflow's job runner (a pool of consumer processes for its GenAI
# jobs, which this platform has none of) would otherwise take memory and CPU beside the UI.
SERVER_ENV: dict[str, dict[str, str]] = {"mlflow": {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}}


def start_group(
    command: list[str], cwd: Path = PROJECT_ROOT, env: Mapping[str, str] | None = None
) -> subprocess.Popen:
    """Start `command` as the leader of a new session, so that its children share its group;
    `env` is added to this process's environment."""
    return subprocess.Popen(
        command, cwd=cwd, start_new_session=True, env={**os.environ, **(env or {})}
    )


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_groups(servers: Mapping[str, subprocess.Popen], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM every server's whole process group at once, then SIGKILL what is left after
    `timeout`: the leaders and the children they started (daemon, webserver, code server)."""
    for server in servers.values():
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for server in servers.values():
        with suppress(subprocess.TimeoutExpired):
            server.wait(timeout=max(deadline - time.monotonic(), 0.1))
    # A child of a leader that exited is no longer ours to wait for: poll its group.
    while time.monotonic() < deadline and any(_group_alive(s.pid) for s in servers.values()):
        time.sleep(0.1)
    for server in servers.values():
        with suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def run_servers(
    paths: DataPaths, dagster_port: int = DAGSTER_PORT, mlflow_port: int = MLFLOW_PORT
) -> int:
    """`pamap ui`: start the servers and wait until one exits or the command is stopped
    (`Interrupted`, raised by the caller's signal handlers); either way every server group is
    stopped before this returns or raises."""
    commands = ui_commands(paths, dagster_port, mlflow_port)
    # Before the MLflow server starts: this creates the store, and two creators race.
    url = experiment_url(paths, mlflow_port) if "mlflow" in commands else None
    servers: dict[str, subprocess.Popen] = {}
    try:
        for name, command in commands.items():
            servers[name] = start_group(command, env=SERVER_ENV.get(name))
        home = os.environ["DAGSTER_HOME"]
        print(f"Dagster UI and daemon: http://127.0.0.1:{dagster_port}  (DAGSTER_HOME={home})")
        if url is not None:
            print(f"MLflow UI: {url}  ({tracking_uri(paths)})")
        print("Ctrl-C (or SIGTERM, SIGHUP) stops both.", flush=True)
        while all(p.poll() is None for p in servers.values()):
            time.sleep(0.5)
        exited = {name: p.returncode for name, p in servers.items() if p.poll() is not None}
    finally:
        with ignoring_stop_signals():  # stopping takes at most STOP_TIMEOUT_S
            stop_groups(servers)
    what = ", ".join(f"{name} (exit status {code})" for name, code in exited.items())
    print(f"{what} exited, so both servers were stopped", file=sys.stderr)
    return 0 if all(code == 0 for code in exited.values()) else 1
