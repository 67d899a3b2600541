"""The data half of the graph, materialized through Dagster on tiny synthetic data."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from ml_core.data.columns import SUBJECTS
from ml_core.data.folds import FOLD_NAMES, read_manifest
from ml_core.paths import DataPaths
from tests.integration.conftest import execute


def _run(job_name: str, partition: str, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    return execute(job_name, instance, partition)


@pytest.fixture(scope="module")
def prepared(prepared_root: Path) -> DataPaths:
    return DataPaths(prepared_root)


def test_every_subject_is_sharded_without_losing_rows(prepared: DataPaths) -> None:
    for subject in SUBJECTS:
        imputed = pl.read_parquet(prepared.table("imputed_recording", subject))
        shards = sorted(prepared.shard_dir(subject).glob("activity_*.parquet"))
        assert shards, subject
        assert sum(pl.scan_parquet(s).select(pl.len()).collect().item() for s in shards) == (
            imputed.height
        )
        assert (imputed["activity_id"] != 0).all()


def test_every_fold_has_manifests_and_train_only_stats(prepared: DataPaths) -> None:
    for fold in FOLD_NAMES:
        ranges = {s: read_manifest(prepared.manifest(fold, s)) for s in ("train", "val", "test")}
        assert all(ranges.values()), fold
        assert prepared.feature_stats(fold).exists()
        if fold.startswith("loso-"):
            held_out = int(fold.removeprefix("loso-"))
            assert {r.subject for r in ranges["test"]} == {held_out}
            assert held_out not in {r.subject for r in ranges["train"] + ranges["val"]}


def test_loso_109_runs_on_rope_jumping_only(prepared: DataPaths) -> None:
    test = read_manifest(prepared.manifest("loso-109", "test"))
    protocol_activities = {r.activity for r in test if r.activity in (1, 2, 3, 4, 5, 24)}
    assert protocol_activities == {24}


def test_corrupted_file_fails_only_its_partition_and_keeps_old_output(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(tiny_dataset, tmp_path / "raw")
    monkeypatch.setenv("PAMAP_DATA_ROOT", str(tmp_path))
    paths = DataPaths(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert _run("ingest_job", "103", instance).success
    good = paths.table("raw_recording", 103)
    good_digest = hashlib.sha256(good.read_bytes()).hexdigest()

    dat = paths.dat_file("protocol", 103)
    lines = dat.read_text().splitlines(keepends=True)
    fields = lines[56].split(" ")
    fields[4] = "12.3.4"  # column 5: hand_acc16_x
    lines[56] = " ".join(fields)
    dat.write_text("".join(lines))

    failed = _run("ingest_job", "103", instance)
    assert not failed.success
    message = "\n".join(
        e.event_specific_data.error.to_string()  # type: ignore[union-attr]
        for e in failed.all_events
        if e.event_type == dg.DagsterEventType.STEP_FAILURE
    )
    assert "subject103.dat" in message and "line 57" in message and "hand_acc16_x" in message
    assert hashlib.sha256(good.read_bytes()).hexdigest() == good_digest
    assert _run("ingest_job", "104", instance).success


def test_cli_materializes_one_partition(tiny_dataset: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_dataset, tmp_path / "data" / "raw")
    home = tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "PAMAP_DATA_ROOT": str(tmp_path / "data")}
    dagster = Path(sys.executable).parent / "dagster"
    completed = subprocess.run(
        [
            str(dagster),
            "asset",
            "materialize",
            "-m",
            "orchestration.definitions",
            "--select",
            "raw_recording",
            "--partition",
            "105",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    table = pl.read_parquet(DataPaths(tmp_path / "data").table("raw_recording", 105))
    assert set(table["session"].unique()) == {"protocol", "optional"}
