"""`pamap` as a new user meets it: bad names fail at once and list the valid ones, the data root
goes before or after the subcommand, and the printed commands exist and bind to 127.0.0.1."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ml_core.data.folds import FOLD_NAMES
from ml_core.models import model_names
from ml_core.paths import PROJECT_ROOT, DataPaths
from orchestration.cli import build_parser
from orchestration.interrupts import Interrupted, run_stoppable
from orchestration.servers import ui_commands, where_to_look


@pytest.mark.parametrize(
    "argv",
    [["--data-root", "/x/data", "demo"], ["demo", "--data-root", "/x/data"]],
)
def test_data_root_before_or_after_the_subcommand(argv: list[str]) -> None:
    assert build_parser().parse_args(argv).data_root == "/x/data"


def test_data_root_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAMAP_DATA_ROOT", "/y/data")
    assert build_parser().parse_args(["demo"]).data_root == "/y/data"


@pytest.mark.parametrize(
    ("option", "bad", "valid"),
    [("--models", "foo_net", model_names()), ("--folds", "loso-110", FOLD_NAMES)],
)
def test_unknown_names_fail_before_any_work_and_list_valid_ones(
    option: str, bad: str, valid: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["demo", option, bad])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert f"invalid choice: '{bad}'" in error
    assert all(name in error for name in valid)


def test_help_lists_models_and_folds(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in [*model_names(), *FOLD_NAMES])


def test_ui_servers_bind_to_localhost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    commands = ui_commands(DataPaths(tmp_path))
    assert set(commands) == {"dagster", "mlflow"}
    for command in commands.values():
        assert Path(command[0]).exists(), command[0]
        host = command[command.index("-h" if "-h" in command else "--host") + 1]
        assert host == "127.0.0.1"
    assert f"sqlite:///{tmp_path}/mlflow/mlflow.db" in commands["mlflow"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert set(ui_commands(DataPaths(tmp_path))) == {"dagster"}  # the server is the UI


def test_where_to_look_names_programs_that_uv_run_finds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    text = where_to_look(DataPaths(tmp_path), str(tmp_path / "home"))
    commands = [line.split(": ", 1)[1] for line in text.splitlines()[1:4]]
    bin_dir = Path(sys.executable).parent
    for command in commands:
        words = shlex.split(command.split("  (")[0])
        words = [w for w in words if "=" not in w or w.startswith("-")]  # drop VAR=value
        assert words[:2] == ["uv", "run"], command
        assert (bin_dir / words[2]).exists(), command
        assert "127.0.0.1" in command or words[2] == "pamap"
    # The experiment's link opens MLflow's model-training view, not the GenAI one.
    experiment = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db").get_experiment_by_name(
        "pamap2"
    )
    assert experiment is not None
    assert (
        f"  MLflow runs: http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}"
        "?workflowType=machine_learning"
    ) in text.splitlines()


def test_a_stop_signal_interrupts_work_running_in_the_worker_thread() -> None:
    """The main thread keeps the signals while the work runs elsewhere (Dagster replaces the
    handlers of the thread that executes a run): the signal stops the work promptly, and the
    command ends with 128 + the signal's number."""
    stopped: list[int] = []
    before = signal.getsignal(signal.SIGTERM)

    def work() -> None:
        threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # pure Python: interruptible between instructions
            sum(range(1000))
        raise AssertionError("the work was not interrupted")

    started = time.monotonic()
    with pytest.raises(Interrupted) as stop:
        run_stoppable(work, on_stop=stopped.append, on_abandon=lambda signum: None)
    assert time.monotonic() - started < 10
    assert stopped == [signal.SIGTERM]
    assert stop.value.signal_name == "SIGTERM" and stop.value.exit_status == 143
    assert signal.getsignal(signal.SIGTERM) == before


def test_work_that_does_not_unwind_in_time_is_abandoned_with_the_signals_status() -> None:
    """A worker stuck in one long native call cannot be interrupted: after the grace period the
    command settles what it can (`on_abandon`) and exits anyway, with 128 + the signal's number."""
    script = (
        "import time\n"
        "from orchestration.interrupts import run_stoppable\n"
        "print('working', flush=True)\n"
        "run_stoppable(lambda: time.sleep(120), on_stop=lambda s: None,\n"
        "              on_abandon=lambda s: print('abandoned', s, flush=True), grace_s=1.0)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT
    )
    assert proc.stdout is not None and proc.stdout.readline() == "working\n"
    time.sleep(0.5)  # inside the sleep
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert time.monotonic() - sent < 30
    assert proc.returncode == 128 + signal.SIGTERM
    assert out == f"abandoned {int(signal.SIGTERM)}\n"
