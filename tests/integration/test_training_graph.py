"""Training, evaluation and the leaderboard through Dagster, read back from MLflow."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from ml_core.evaluate import BUNDLE_FILES
from ml_core.paths import DataPaths
from tests.integration.conftest import execute

FOLD = "holdout-106"
MODELS = ("feature_gbm", "temporal_cnn")
SHORT_TRAINING = {"ops": {"trained_model": {"config": {"epochs": 2, "warmup_steps": 5}}}}


@pytest.fixture(scope="module")
def trained(
    prepared_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DataPaths, str, dg.DagsterInstance]]:
    root = tmp_path_factory.mktemp("training") / "data"
    shutil.copytree(prepared_root, root)
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PAMAP_DATA_ROOT", str(root))
        env.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        instance = dg.DagsterInstance.ephemeral()
        for model in MODELS:
            key = dg.MultiPartitionKey({"fold": FOLD, "model": model})
            assert execute("training_job", instance, key, SHORT_TRAINING).success, model
        assert execute("report_job", instance).success
        yield DataPaths(root), tracking_uri, instance


def _latest_checks(instance: dg.DagsterInstance, asset: str) -> dict[str, bool]:
    records = instance.event_log_storage.get_event_records(
        dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    )
    results: dict[str, bool] = {}
    for record in records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data  # type: ignore[union-attr]
        if evaluation.asset_key == dg.AssetKey(asset):
            results[evaluation.check_name] = evaluation.passed
    return results


def test_models_train_beat_the_baseline_and_write_full_bundles(
    trained: tuple[DataPaths, str, dg.DagsterInstance],
) -> None:
    paths, _, instance = trained
    for model in MODELS:
        assert (paths.model_dir(FOLD, model) / "best.pt").exists()
        bundle = paths.evaluation_dir(FOLD, model)
        assert sorted(p.name for p in bundle.iterdir() if not p.name.startswith(".")) == sorted(
            BUNDLE_FILES
        )
        summary = json.loads((bundle / "summary_metrics.json").read_text())
        assert summary["macro_f1"] > 1 / 12  # above chance on data with signal
    assert _latest_checks(instance, "trained_model") == {"beats_majority_baseline": True}
    assert _latest_checks(instance, "evaluation_bundle") == {"bundle_complete": True}


def test_mlflow_run_holds_params_metrics_checkpoints_and_bundle(
    trained: tuple[DataPaths, str, dg.DagsterInstance],
) -> None:
    _, tracking_uri, _ = trained
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment = client.get_experiment_by_name("pamap2")
    assert experiment is not None
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.fold = '{FOLD}' and tags.model = 'temporal_cnn'",
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["dagster.run_id"]
    assert run.data.params["model"] == "temporal_cnn" and run.data.params["epochs"] == "2"
    # The fold's splits are the run's inputs, so the UI shows what it was trained and tested on.
    inputs = {i.dataset.name for i in run.inputs.dataset_inputs}
    assert inputs == {f"{FOLD}/train", f"{FOLD}/val", f"{FOLD}/test"}
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    history = client.get_metric_history(run.info.run_id, "val_macro_f1")
    assert [m.step for m in history] == [1, 2]
    assert 0.0 <= run.data.metrics["test_macro_f1"] <= 1.0
    checkpoints = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
    assert {"checkpoints/best.pt", "checkpoints/last.pt", "checkpoints/history.json"} <= checkpoints
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation")}
    assert {f"evaluation/{name}" for name in BUNDLE_FILES} <= evaluation
    logged = client.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    assert [m.name for m in logged] == ["model"]


def test_leaderboard_lists_every_trained_model(
    trained: tuple[DataPaths, str, dg.DagsterInstance],
) -> None:
    paths, _, _ = trained
    board = json.loads((paths.reports / "leaderboard.json").read_text())
    assert sorted(row["model"] for row in board["rows"]) == sorted(MODELS)
    markdown = (paths.reports / "leaderboard.md").read_text()
    assert "synthetic" in markdown and "holdout-106" in markdown
