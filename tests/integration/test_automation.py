"""Declarative automation evaluated the way the daemon evaluates it: a raw file with a new data
version flows through its subject's chain to every fold's statistics; an unchanged one requests
nothing; a failed blocking check stops the flow; the weekly cron requests every fold x model as
one asset backfill. Also retry-and-resume of training."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import torch
from dagster._core.definitions.automation_tick_evaluation_context import (
    AutomationTickEvaluationContext,
)
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from ml_core import pipeline
from ml_core.data.columns import SUBJECTS
from ml_core.data.folds import FOLD_NAMES
from ml_core.evaluation.protocol import latest_dirs
from ml_core.io import load_torch
from ml_core.models import model_names
from ml_core.paths import DataPaths
from ml_core.training.config import TrainConfig
from orchestration.definitions import defs as load_defs
from orchestration.defs.partitions import register_variants
from orchestration.defs.resources import DataRoot
from orchestration.staleness import observe_raw_files
from tests.integration.conftest import execute
from tests.raw_edits import edit_labelled_row

CHAIN = ("raw_recording", "validated_recording", "imputed_recording", "activity_shards")
FOLD_ASSETS = ("fold_manifests", "feature_stats")
TRAINING = ("trained_model", "evaluation_bundle")
BLOCKING_CHECKS = {
    "validated_recording": "schema",
    "activity_shards": "rows_conserved",
    "fold_manifests": "split_integrity",
}


def _report_materialized(
    instance: dg.DagsterInstance, asset: str, partitions: list[str], version: str = "v0"
) -> None:
    """Record `asset` as materialized with its blocking check passed, as an earlier run would
    have: the automation conditions read only these events."""
    for partition in partitions:
        instance.report_runless_asset_event(
            dg.AssetMaterialization(asset, partition=partition, tags={DATA_VERSION_TAG: version})
        )
        if asset in BLOCKING_CHECKS:
            instance.report_runless_asset_event(
                dg.AssetCheckEvaluation(
                    asset_key=dg.AssetKey(asset),
                    check_name=BLOCKING_CHECKS[asset],
                    passed=True,
                    partition=partition,
                )
            )


def _requested(result: dg.EvaluateAutomationConditionsResult) -> dict[str, set[str]]:
    return {
        r.key.to_user_string(): {str(k) for k in r.true_subset.expensively_compute_partition_keys()}
        for r in result.results
        if r.true_subset.size
    }


def _data_tick(instance: dg.DagsterInstance, cursor: Any = None) -> tuple[dict[str, set[str]], Any]:
    result = dg.evaluate_automation_conditions(
        defs=load_defs(),
        instance=instance,
        asset_selection=dg.AssetSelection.groups("ingest", "prepare"),
        cursor=cursor,
    )
    return _requested(result), result.cursor


@pytest.fixture
def automated_root(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> DataPaths:
    root = tmp_path / "data"
    shutil.copytree(tiny_dataset, root / "raw")
    monkeypatch.setenv("PAMAP_DATA_ROOT", str(root))
    return DataPaths(root)


def _everything_current(instance: dg.DagsterInstance, skip: tuple[str, str] | None = None) -> Any:
    """Raw files observed, every subject and fold materialized (but `skip`: an asset and
    subject); the first tick requests nothing."""
    observe_raw_files(instance)
    for asset in CHAIN:
        subjects = [str(s) for s in SUBJECTS if (asset, str(s)) != skip]
        _report_materialized(instance, asset, subjects)
    for asset in FOLD_ASSETS:
        _report_materialized(instance, asset, list(FOLD_NAMES))
    requested, cursor = _data_tick(instance)
    assert requested == {}
    return cursor


def test_a_changed_raw_file_flows_through_its_subject_to_every_fold(
    automated_root: DataPaths,
) -> None:
    instance = dg.DagsterInstance.ephemeral()
    cursor = _everything_current(instance)

    # Re-observing unchanged files (a new observation, the same data version) is no news.
    observe_raw_files(instance)
    requested, cursor = _data_tick(instance, cursor)
    assert requested == {}

    # Subject 103's file changes: exactly its chain is requested, in one tick.
    edit_labelled_row(automated_root.dat_file("protocol", 103), field=4, change=0.5)
    observe_raw_files(instance)
    requested, cursor = _data_tick(instance, cursor)
    assert requested == {asset: {"103"} for asset in CHAIN}

    # Its run writes shards with new content: every fold's manifests and statistics follow.
    assert execute("ingest_job", instance, "103").success
    requested, cursor = _data_tick(instance, cursor)
    assert requested == {asset: set(FOLD_NAMES) for asset in FOLD_ASSETS}

    # The same subject re-run on the same file writes the same content: no news downstream.
    assert execute("ingest_job", instance, "103").success
    requested, cursor = _data_tick(instance, cursor)
    assert requested == {}


def test_raw_files_sensor_observes_only_changed_subjects_without_runs(
    automated_root: DataPaths,
) -> None:
    defs = load_defs()
    sensor = defs.get_sensor_def("raw_files_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    assert not sensor.targets  # it records observations; it never launches a run
    instance = dg.DagsterInstance.ephemeral()

    def tick() -> list[str]:
        context = dg.build_sensor_context(instance=instance, resources={"data_root": DataRoot()})
        result = sensor(context)
        if isinstance(result, dg.SkipReason):
            return []
        assert isinstance(result, dg.SensorResult) and not result.run_requests
        for event in result.asset_events:  # what the daemon does with them
            instance.report_runless_asset_event(event)
        return sorted({str(e.partition) for e in result.asset_events})

    present = [str(s) for s in SUBJECTS if automated_root.dat_file("protocol", s).exists()]
    assert tick() == present
    assert tick() == []
    edit_labelled_row(automated_root.dat_file("protocol", 103), field=4, change=0.5)
    assert tick() == ["103"]
    assert tick() == []
    assert instance.get_runs() == []
    observations = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_files"), asset_partitions=["103"]),
        limit=10,
    ).records
    versions = [r.asset_observation.tags[DATA_VERSION_TAG] for r in observations]  # type: ignore[union-attr]
    assert len(versions) == 2 and versions[0] != versions[1]


def test_a_failed_blocking_check_stops_the_flow(automated_root: DataPaths) -> None:
    instance = dg.DagsterInstance.ephemeral()
    cursor = _everything_current(instance, skip=("validated_recording", "104"))

    # A hand temperature of about 1000 C: the file changed, and its schema check will fail.
    edit_labelled_row(automated_root.dat_file("protocol", 103), field=3, change=1000.0)
    observe_raw_files(instance)
    requested, cursor = _data_tick(instance, cursor)
    assert requested == {asset: {"103"} for asset in CHAIN}

    # The run stops at the check; nothing after it is requested, now or on the next tick.
    assert not execute("ingest_job", instance, "103").success
    requested, cursor = _data_tick(instance, cursor)
    assert requested == {}

    # Even a materialization recorded beside a failed blocking check does not flow on.
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "validated_recording", partition="104", tags={DATA_VERSION_TAG: "v1"}
        )
    )
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=dg.AssetKey("validated_recording"),
            check_name="schema",
            passed=False,
            partition="104",
        )
    )
    requested, _ = _data_tick(instance, cursor)
    assert requested == {}


def test_weekly_training_is_one_backfill_of_every_fold_and_variant() -> None:
    instance = dg.DagsterInstance.ephemeral()
    variants = [*model_names(), "lstm_sweep-lr=0.002"]  # the built-in ones and a file's
    register_variants(instance, variants)
    _report_materialized(instance, "variant_settings", variants)  # as variants_sensor records
    defs = load_defs()
    for asset in CHAIN[-1:]:
        _report_materialized(instance, asset, [str(s) for s in SUBJECTS])
    for asset in FOLD_ASSETS:
        _report_materialized(instance, asset, list(FOLD_NAMES))
    selection = dg.AssetSelection.assets(*TRAINING)
    saturday = datetime(2026, 11, 21, 12, tzinfo=UTC)
    sunday = datetime(2026, 11, 22, 2, 5, tzinfo=UTC)  # after the 02:00 tick

    first = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, asset_selection=selection, evaluation_time=saturday
    )
    assert first.total_requested == 0
    at_tick = dg.evaluate_automation_conditions(
        defs=defs,
        instance=instance,
        asset_selection=selection,
        evaluation_time=sunday,
        cursor=first.cursor,
    )
    every = {f"{fold}|{variant}" for fold in FOLD_NAMES for variant in variants}
    assert _requested(at_tick) == {asset: every for asset in TRAINING}
    later = dg.evaluate_automation_conditions(
        defs=defs,
        instance=instance,
        asset_selection=selection,
        evaluation_time=datetime(2026, 11, 22, 3, tzinfo=UTC),
        cursor=at_tick.cursor,
    )
    assert later.total_requested == 0

    # The sensor's own tick (as the daemon runs it) emits those requests as one backfill.
    sensor = defs.get_sensor_def("training_automation")
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.STOPPED
    run_requests, _, _ = AutomationTickEvaluationContext(
        evaluation_id=first.cursor.evaluation_id,
        instance=instance,
        asset_graph=defs.resolve_asset_graph(),
        cursor=first.cursor,
        materialize_run_tags=sensor.run_tags,
        observe_run_tags={},
        auto_observe_asset_keys=set(),
        asset_selection=sensor.asset_selection,
        asset_job_keys=sensor.asset_job_keys,
        emit_backfills=sensor.emit_backfills,
        default_condition=None,
        logger=logging.getLogger(__name__),
        evaluation_time=sunday,
    ).evaluate()
    (backfill,) = run_requests
    assert backfill.requires_backfill_daemon()
    subset = backfill.asset_graph_subset
    assert subset is not None
    assert {k.to_user_string() for k in subset.asset_keys} == set(TRAINING)
    for asset in TRAINING:
        partitions = subset.get_partitions_subset(dg.AssetKey(asset)).get_partition_keys()
        assert {str(k) for k in partitions} == every


def test_failed_training_retries_and_resumes_from_last_checkpoint(
    copy_prepared: Callable[[], Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    paths = DataPaths(copy_prepared())
    fold, model, variant = "holdout-106", "early_fusion", "short"
    settings = {"epochs": 2, "warmup_steps": 5, "seed": 3}
    variants = tmp_path / "experiments.yaml"
    lines = "".join(f"    {k}: {v}\n" for k, v in settings.items())
    variants.write_text(f"variants:\n  {variant}:\n    model: {model}\n{lines}")
    monkeypatch.setenv("PAMAP_VARIANTS_FILE", str(variants))

    # A straight run, for reference, on the thread count the asset gives a training (one
    # slot on an ephemeral instance): float sums, and so the weights, depend on it.
    straight_dir = paths.root / "straight"
    threads_before = torch.get_num_threads()
    torch.set_num_threads(pipeline.threads_per_slot(1))
    try:
        pipeline.train_model(
            model, paths, fold, TrainConfig(**settings), straight_dir, resume=False
        )
    finally:
        torch.set_num_threads(threads_before)
    expected = load_torch(straight_dir / "last.pt")["model_state"]

    # The first attempt dies after 7 steps (a transient failure), leaving last.pt behind.
    real_train = pipeline.train_model
    calls: list[bool] = []

    def flaky_train(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("resume", args[6] if len(args) > 6 else None))
        if len(calls) == 1:
            config = args[3]
            config.max_steps = 7
            real_train(*args, **kwargs)
            config.max_steps = None
            raise ConnectionError("transient failure")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_model", flaky_train)
    key = dg.MultiPartitionKey({"fold": fold, "model": variant})
    result = execute("training_job", dg.DagsterInstance.ephemeral(), key)
    assert result.success
    assert calls == [False, True]  # first attempt fresh, the retry resumed
    resumed = load_torch(latest_dirs(paths, fold, variant)[0] / "last.pt")
    assert resumed["step"] > 7
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed["model_state"][name]), name
