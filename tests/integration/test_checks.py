"""Per-partition blocking checks, as the Dagster UI shows them (queried through the instance):
a failed check is recorded for its partition only, records no materialization, fails the run
without retries, and leaves the previous good output on disk."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ml_core.data import pipeline as data_pipeline
from ml_core.data.folds import SPLITS
from ml_core.paths import DataPaths
from tests.integration.conftest import execute


def _check_status(instance: dg.DagsterInstance, asset: str, check: str) -> dict[str, str]:
    """Latest check status per partition, as the asset's Checks tab shows it."""
    key = dg.AssetCheckKey(dg.AssetKey(asset), check)
    infos = instance.event_log_storage.get_asset_check_partition_info([key])
    return {str(i.partition_key): i.latest_execution_status.value for i in infos}


def _materializations(instance: dg.DagsterInstance, asset: str, partition: str) -> int:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]),
        limit=100,
    ).records
    return len(records)


def _digest(*folders: Path) -> str:
    h = hashlib.sha256()
    for folder in folders:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                h.update(f.relative_to(folder).as_posix().encode() + f.read_bytes())
    return h.hexdigest()


def _attempts(result: dg.ExecuteInProcessResult, step: str) -> int:
    return sum(
        1
        for e in result.all_events
        if e.step_key == step and e.event_type == dg.DagsterEventType.STEP_START
    ) + sum(
        1
        for e in result.all_events
        if e.step_key == step and e.event_type == dg.DagsterEventType.STEP_RESTARTED
    )


def test_failed_schema_check_is_recorded_for_its_subject_only(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(tiny_dataset, tmp_path / "raw")
    monkeypatch.setenv("PAMAP_DATA_ROOT", str(tmp_path))
    paths = DataPaths(tmp_path)
    instance = dg.DagsterInstance.ephemeral()
    assert execute("ingest_job", instance, "103").success
    table = paths.table("validated_recording", 103)
    good = hashlib.sha256(table.read_bytes()).hexdigest()

    dat = paths.dat_file("protocol", 103)
    lines = dat.read_text().splitlines(keepends=True)
    fields = lines[80].split(" ")
    fields[3] = "999.0"  # hand temperature, physical range 0..50 C
    lines[80] = " ".join(fields)
    dat.write_text("".join(lines))

    failed = execute("ingest_job", instance, "103")
    assert not failed.success
    assert execute("ingest_job", instance, "104").success

    assert _check_status(instance, "validated_recording", "schema") == {
        "103": "FAILED",
        "104": "SUCCEEDED",
    }
    # The failed run parsed the file (raw_recording) but recorded no validated table...
    assert _materializations(instance, "raw_recording", "103") == 2
    assert _materializations(instance, "validated_recording", "103") == 1
    assert _materializations(instance, "validated_recording", "104") == 1
    # ...ran nothing downstream, tried once (bad data is not retried), and kept the old table.
    assert _materializations(instance, "imputed_recording", "103") == 1
    assert _attempts(failed, "validated_recording") == 1
    assert hashlib.sha256(table.read_bytes()).hexdigest() == good


def test_failed_shard_check_keeps_the_previous_shards(
    copy_prepared: Callable[[], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = DataPaths(copy_prepared())
    instance = dg.DagsterInstance.ephemeral()
    assert execute("ingest_job", instance, "104").success
    before = _digest(paths.shard_dir(104), paths.tensor_shard_dir(104))

    real_write = data_pipeline.write_activity_shards

    def lossy_write(frame: Any, *args: Any, **kwargs: Any) -> Any:
        report = real_write(frame.head(frame.height - 1), *args, **kwargs)  # loses a row
        report.rows_in = frame.height
        return report

    with monkeypatch.context() as patch:
        patch.setattr(data_pipeline, "write_activity_shards", lossy_write)
        failed = execute("ingest_job", instance, "104")
    assert not failed.success
    assert execute("ingest_job", instance, "105").success

    assert _check_status(instance, "activity_shards", "rows_conserved") == {
        "104": "FAILED",
        "105": "SUCCEEDED",
    }
    assert _materializations(instance, "activity_shards", "104") == 1
    assert _digest(paths.shard_dir(104), paths.tensor_shard_dir(104)) == before
    assert not any((paths.root / ".staging").iterdir())


def test_failed_split_check_keeps_the_previous_manifests(
    copy_prepared: Callable[[], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = DataPaths(copy_prepared())
    before = {s: paths.manifest("stratified", s).read_text() for s in SPLITS}
    real_build = data_pipeline.fold_lib.build_fold

    def overlapping(*args: Any, **kwargs: Any) -> Any:
        ranges = real_build(*args, **kwargs)
        ranges["val"].append(ranges["train"][0])
        return ranges

    instance = dg.DagsterInstance.ephemeral()
    with monkeypatch.context() as patch:
        patch.setattr(data_pipeline.fold_lib, "build_fold", overlapping)
        failed = execute("prepare_job", instance, "stratified")
    assert not failed.success
    assert execute("prepare_job", instance, "holdout-106").success

    assert _check_status(instance, "fold_manifests", "split_integrity") == {
        "stratified": "FAILED",
        "holdout-106": "SUCCEEDED",
    }
    assert _materializations(instance, "fold_manifests", "stratified") == 0
    assert _materializations(instance, "feature_stats", "stratified") == 0
    assert {s: paths.manifest("stratified", s).read_text() for s in SPLITS} == before


def test_incomplete_bundle_is_blocked_and_a_weak_model_only_warns(
    copy_prepared: Callable[[], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ml_core import pipeline

    copy_prepared()
    real_train = pipeline.train_fold_model

    def weak_train(*args: Any, **kwargs: Any) -> dict[str, Any]:
        summary = real_train(*args, **kwargs)
        return {**summary, "majority_baseline_accuracy": 1.0}  # no model beats this

    monkeypatch.setattr(pipeline, "train_fold_model", weak_train)
    monkeypatch.setattr(pipeline, "check_bundle_complete", lambda _: (False, ["roc_curves.png"]))
    instance = dg.DagsterInstance.ephemeral()
    key = dg.MultiPartitionKey({"fold": "holdout-106", "model": "feature_gbm"})
    failed = execute("training_job", instance, key, {"ops": {"trained_model": {"config": {}}}})

    assert not failed.success
    # The weak model is kept and its check fails at WARN: only a warning on the asset page.
    assert _materializations(instance, "trained_model", str(key)) == 1
    assert _check_status(instance, "trained_model", "beats_majority_baseline") == {
        str(key): "FAILED"
    }
    evaluations = [
        e.event_specific_data
        for e in failed.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ]
    severities = {e.check_name: e.severity for e in evaluations}  # type: ignore[union-attr]
    assert severities == {
        "beats_majority_baseline": dg.AssetCheckSeverity.WARN,
        "bundle_complete": dg.AssetCheckSeverity.ERROR,
    }
    # The incomplete bundle is not materialized, and says which file is missing.
    assert _materializations(instance, "evaluation_bundle", str(key)) == 0
    assert _check_status(instance, "evaluation_bundle", "bundle_complete") == {str(key): "FAILED"}
    assert _attempts(failed, "evaluation_bundle") == 1
    failure = failed.get_step_failure_events()[0].step_failure_data.error
    assert failure is not None and "seed-0/roc_curves.png" in failure.message
