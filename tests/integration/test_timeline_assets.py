"""Activity timelines through Dagster: the registered champion over a subject and inbox files."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import mlflow
import polars as pl
import pytest

from ml_core.lifecycle.champion import LeaderboardRow, Selection, promote_champion
from ml_core.lifecycle.tracking import MlflowTracker
from ml_core.paths import DataPaths
from ml_core.pipeline import publish_serving_model, train_fold_model
from ml_core.training.config import TrainConfig
from orchestration.definitions import defs as load_defs
from orchestration.defs.ingest import DATA_VERSION_TAG
from orchestration.defs.resources import DataRoot
from orchestration.defs.timeline import inbox_partitions, inbox_sensor
from orchestration.staleness import Staleness
from tests.integration.conftest import execute


@pytest.fixture(scope="module")
def served(
    prepared_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DataPaths, str]]:
    """A data root whose MLflow registry holds a briefly trained model as the champion."""
    root = tmp_path_factory.mktemp("served") / "data"
    shutil.copytree(prepared_root, root)
    paths = DataPaths(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    config = TrainConfig(epochs=1, warmup_steps=2)
    summary = train_fold_model(
        paths, "holdout-106", "temporal_cnn", config, tracker=MlflowTracker(uri)
    )
    mlflow.set_tracking_uri(uri)
    tracker = MlflowTracker(uri)
    row = LeaderboardRow(
        variant="temporal_cnn",
        protocol_id=summary["protocol"]["id"],
        class_set=summary["protocol"]["class_set"],
        folds=("holdout-106",),
        complete=True,
        pooled_loso_macro_f1=0.5,
        ece=0.0,
        run_id=summary["mlflow_run_id"],
        trained_on="holdout-106",
        source_dir=str(Path(summary["best_path"]).parent),
        model="temporal_cnn",
    )
    promotion = promote_champion(
        tracker.client, Selection(row, None), lambda r: publish_serving_model(paths, tracker, r)
    )
    assert promotion.promoted
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PAMAP_DATA_ROOT", str(root))
        env.setenv("MLFLOW_TRACKING_URI", uri)
        yield paths, uri


def _champion(instance: dg.DagsterInstance, version: str) -> None:
    """Record a `champion_model` materialization, as the asset records one (its data version)."""
    instance.report_runless_asset_event(
        dg.AssetMaterialization("champion_model", tags={DATA_VERSION_TAG: f"champion-{version}"})
    )


def test_subject_timeline_from_the_registered_champion(served: tuple[DataPaths, str]) -> None:
    paths, _ = served
    instance = dg.DagsterInstance.ephemeral()
    _champion(instance, "1")
    result = execute("serve_job", instance, "101")
    assert result.success
    # Lineage: the timelines read the champion, and a new champion makes them stale.
    graph = load_defs().resolve_asset_graph()
    for asset in ("activity_timeline", "inbox_timeline"):
        assert dg.AssetKey("champion_model") in graph.get(dg.AssetKey(asset)).parent_keys
    assert Staleness(instance, load_defs()).status("activity_timeline", "101").value == "FRESH"
    _champion(instance, "1")  # re-recorded, the same champion: nothing changes
    assert Staleness(instance, load_defs()).status("activity_timeline", "101").value == "FRESH"
    _champion(instance, "2")
    staleness = Staleness(instance, load_defs())
    assert staleness.status("activity_timeline", "101").value == "STALE"
    assert staleness.causes("activity_timeline", "101") == [
        "champion_model[None] has a new data version"
    ]
    folder = paths.timeline_dir("subject_101")
    frame = pl.read_parquet(folder / "timeline.parquet")
    raw = pl.read_parquet(paths.table("raw_recording", 101))
    assert set(frame["session"].unique()) == set(raw["session"].unique())
    assert {"p_1", "smoothed_activity_id", "true_activity_id"} <= set(frame.columns)
    probabilities = frame.select(pl.col("^p_.*$")).to_numpy()
    assert probabilities.sum(axis=1) == pytest.approx(1.0, abs=1e-4)
    assert (folder / "timeline.png").stat().st_size > 10_000
    event = instance.get_latest_materialization_event(dg.AssetKey("activity_timeline"))
    assert event is not None and event.asset_materialization is not None
    metadata = event.asset_materialization.metadata
    assert metadata["labelled_windows"].value > 0
    assert 0.0 <= metadata["macro_f1_smoothed"].value <= 1.0  # type: ignore[operator]
    assert "v1" in str(metadata["model"].value)


def test_inbox_files_fail_alone_and_never_overwrite_a_good_timeline(
    served: tuple[DataPaths, str],
) -> None:
    paths, _ = served
    paths.inbox.mkdir(parents=True)
    good, bad = paths.inbox / "walk1.dat", paths.inbox / "broken.dat"
    shutil.copy(paths.dat_file("protocol", 102), good)
    lines = paths.dat_file("protocol", 103).read_text().splitlines()
    lines[7] = "1.0 2 oops"
    bad.write_text("\n".join(lines[:400]) + "\n")

    instance = dg.DagsterInstance.ephemeral()
    resources = {"data_root": DataRoot()}
    sensor_result = inbox_sensor(dg.build_sensor_context(instance=instance, resources=resources))
    assert sorted(r.partition_key for r in sensor_result.run_requests) == ["broken", "walk1"]
    instance.add_dynamic_partitions(inbox_partitions.name, ["broken", "walk1"])
    again = inbox_sensor(
        dg.build_sensor_context(instance=instance, cursor=sensor_result.cursor, resources=resources)
    )
    assert again.run_requests == []  # nothing changed since the cursor

    assert execute("inbox_job", instance, "walk1").success
    failed = execute("inbox_job", instance, "broken")
    assert not failed.success
    message = str(failed.get_step_failure_events()[0].step_failure_data.error)
    assert "broken.dat" in message and "line 8:" in message
    assert not paths.timeline_dir("inbox_broken").exists()

    timeline = paths.timeline_dir("inbox_walk1") / "timeline.parquet"
    before = timeline.read_bytes()
    good.write_text(good.read_text() + "not a row\n")
    assert not execute("inbox_job", instance, "walk1").success
    assert timeline.read_bytes() == before
