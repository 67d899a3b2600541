"""Inbox recording names become partition keys and folder names: only safe ones are accepted,
by the sensor (which skips and logs the rest) and by the asset (a key added by hand)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pytest

from ml_core.lifecycle.timeline import check_inbox_name, inbox_recordings
from ml_core.paths import DataPaths
from orchestration.defs.resources import DataRoot
from orchestration.defs.timeline import inbox_partitions, inbox_sensor
from tests.integration.conftest import execute

UNSAFE = ["../../x", "a/b", ".hidden", "-rf", "bad name", "", "x" * 101, "caf\udce9"]


@pytest.mark.parametrize("name", UNSAFE)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="is not allowed"):
        check_inbox_name(name)


def test_safe_names_pass() -> None:
    for name in ("walk1", "subject_101.v2", "Run-3"):
        assert check_inbox_name(name) == name


def test_the_sensor_skips_unsafe_and_undecodable_names_and_keeps_working(tmp_path: Path) -> None:
    inbox = DataPaths(tmp_path).inbox
    inbox.mkdir(parents=True)
    for name in ("walk1.dat", "run-2.dat", ".hidden.dat", "bad name.dat", "notes.txt"):
        (inbox / name).write_text("1.0 0 NaN\n")
    # A file name that is not valid UTF-8 (bytes from another system).
    fd = os.open(os.path.join(os.fsencode(inbox), b"caf\xe9.dat"), os.O_WRONLY | os.O_CREAT)
    os.close(fd)

    found, skipped = inbox_recordings(inbox)
    assert sorted(found) == ["run-2", "walk1"]
    assert skipped == ["'.hidden.dat'", "'bad name.dat'", "'caf\\udce9.dat'"]

    instance = dg.DagsterInstance.ephemeral()
    resources = {"data_root": DataRoot(path=str(tmp_path))}
    result = inbox_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert sorted(r.partition_key for r in result.run_requests) == ["run-2", "walk1"]
    (request,) = result.dynamic_partitions_requests
    assert sorted(request.partition_keys) == ["run-2", "walk1"]

    # The next tick still works and sees a new good file.
    (inbox / "walk3.dat").write_text("1.0 0 NaN\n")
    again = inbox_sensor(
        dg.build_sensor_context(instance=instance, cursor=result.cursor, resources=resources)
    )
    assert [r.partition_key for r in again.run_requests] == ["walk3"]


def test_a_key_added_by_hand_never_reaches_the_file_system(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    monkeypatch.setenv("PAMAP_DATA_ROOT", str(root))
    (tmp_path / "x.dat").write_text("1.0 0 NaN\n")  # what ../../x would read from the inbox
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(inbox_partitions.name or "", ["../../x"])
    result = execute("inbox_job", instance, "../../x")
    assert not result.success
    message = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert "inbox recording name '../../x' is not allowed" in message
    assert not (root / "timelines").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "data") == ["x.dat"]
