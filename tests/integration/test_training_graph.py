"""Training, evaluation and the leaderboard through Dagster, read back from MLflow."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from ml_core.data.folds import FOLD_NAMES
from ml_core.evaluation.evaluate import BUNDLE_FILES
from ml_core.evaluation.protocol import latest_dirs
from ml_core.io import load_torch
from ml_core.paths import DataPaths
from ml_core.training.config import TrainConfig
from tests.integration.conftest import execute

FOLD = "holdout-106"
# Variant -> model: the built-in feature_gbm, and a short temporal CNN training.
MODELS = {"feature_gbm": "feature_gbm", "tcn": "temporal_cnn"}
# feature_gbm's run links to a Dagster UI somewhere else than the default 127.0.0.1:3000.
DAGSTER_URLS = {"feature_gbm": "http://dagster.internal:8080/", "tcn": None}
# File variants beside the built-in ones: a short training, and a sweep over a model argument
# with its own seed.
VARIANTS_FILE = """variants:
  tcn:
    model: temporal_cnn
    epochs: 2
    warmup_steps: 5
  gbm:
    model: feature_gbm
    epochs: 2
    seed: 4
    model_args:
      max_iter: [3, 5]
      max_leaf_nodes: 4
"""
VARIANT = "gbm-m.max_iter=3"


@pytest.fixture(scope="module")
def trained(
    prepared_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[DataPaths, str, dg.DagsterInstance]]:
    root = tmp_path_factory.mktemp("training") / "data"
    shutil.copytree(prepared_root, root)
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    variants = root.parent / "experiments.yaml"
    variants.write_text(VARIANTS_FILE)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PAMAP_DATA_ROOT", str(root))
        env.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        env.setenv("PAMAP_VARIANTS_FILE", str(variants))
        instance = dg.DagsterInstance.ephemeral()
        for model in MODELS:
            key = dg.MultiPartitionKey({"fold": FOLD, "model": model})
            config = {"resources": {"mlflow": {"config": {"dagster_url": DAGSTER_URLS[model]}}}}
            assert execute("training_job", instance, key, config).success, model
        key = dg.MultiPartitionKey({"fold": FOLD, "model": VARIANT})
        assert execute("training_job", instance, key).success
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
        assert (latest_dirs(paths, FOLD, model)[0] / "best.pt").exists()
        bundle = latest_dirs(paths, FOLD, model)[1]
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
    # No serving model per training: it is exported only when a model is promoted.
    logged = client.search_logged_models(
        experiment_ids=[experiment.experiment_id],
        filter_string=f"source_run_id = '{run.info.run_id}'",
    )
    assert logged == []


def test_dagster_and_mlflow_runs_link_to_each_other(
    trained: tuple[DataPaths, str, dg.DagsterInstance],
) -> None:
    _, tracking_uri, instance = trained
    client = MlflowClient(tracking_uri=tracking_uri)
    expected_base = {"feature_gbm": "http://dagster.internal:8080", "tcn": None}
    for model in MODELS:
        key = dg.MultiPartitionKey({"fold": FOLD, "model": model})
        for asset in ("trained_model", "evaluation_bundle"):
            (record,) = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[str(key)]),
                limit=1,
            ).records
            materialization = record.asset_materialization
            assert materialization is not None
            # Dagster -> MLflow: the asset's metadata links to the run that holds the model.
            url = materialization.metadata["mlflow_run"].value
            assert isinstance(url, str)
            match = re.search(r"/runs/([0-9a-f]+)", url)
            assert match is not None, url
            mlflow_run = client.get_run(match.group(1))
            assert mlflow_run.data.tags["variant"] == model
            # MLflow -> Dagster: the run's tag is the Dagster run's page on the UI.
            dagster_run_id = record.run_id
            base = expected_base[model] or "http://127.0.0.1:3000"
            assert mlflow_run.data.tags["dagster.run_url"] == f"{base}/runs/{dagster_run_id}"
            assert instance.get_run_by_id(dagster_run_id) is not None


def test_leaderboard_lists_every_trained_model(
    trained: tuple[DataPaths, str, dg.DagsterInstance],
) -> None:
    paths, tracking_uri, instance = trained
    board = json.loads((paths.reports / "leaderboard.json").read_text())
    (section,) = board["protocols"]
    models = {row["variant"]: row["model"] for row in section["rows"]}
    assert models == {**MODELS, VARIANT: "feature_gbm"}
    markdown = (paths.reports / "leaderboard.md").read_text()
    assert "synthetic" in markdown and "holdout-106" in markdown
    assert section["protocol"]["description"] in markdown
    # The leaderboard's MLflow run records the protocol it ranks under (no LOSO fold was
    # trained here, so there is no pooled LOSO metric to log).
    client = MlflowClient(tracking_uri=tracking_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("pamap2").experiment_id],  # type: ignore[union-attr]
        filter_string="tags.asset = 'leaderboard'",
    )
    assert run.data.params["protocol_id"] == section["protocol"]["id"]
    assert json.loads(run.data.params["protocols"]) == [section["protocol"]["id"]]
    assert not any(key.endswith("pooled_loso_macro_f1") for key in run.data.metrics)
    # The asset page shows the table inline (a table, not markdown behind a button), and says
    # which entries open an image.
    event = instance.get_latest_materialization_event(dg.AssetKey("leaderboard"))
    assert event is not None and event.asset_materialization is not None
    metadata = event.asset_materialization.metadata
    assert list(metadata)[0] == "leaderboard"
    shown = metadata["leaderboard"]
    assert isinstance(shown, dg.TableMetadataValue)
    assert {r.data["variant"] for r in shown.records} == set(models)
    assert "plot (image)" in metadata and "plot" not in metadata
    # Only holdout-106 was trained: every variant is ranked (they share that fold), and the
    # check warns that each lacks the other ten folds, naming them.
    [evaluation] = [
        record.event_log_entry.dagster_event.event_specific_data  # type: ignore[union-attr]
        for record in instance.event_log_storage.get_event_records(
            dg.EventRecordsFilter(event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        )
        if record.event_log_entry.dagster_event.event_specific_data.asset_key  # type: ignore[union-attr]
        == dg.AssetKey("leaderboard")
    ]
    assert evaluation.check_name == "every_fold_present" and not evaluation.passed
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    others = ", ".join(f for f in FOLD_NAMES if f != FOLD)
    for variant in models:
        assert f"{variant} ({section['protocol']['id']}) has no {others}" in str(
            evaluation.description
        )


def test_every_result_records_its_protocol(
    trained: tuple[DataPaths, str, dg.DagsterInstance],
) -> None:
    paths, tracking_uri, instance = trained
    model_dir, bundle = latest_dirs(paths, FOLD, "tcn")
    summary = json.loads((bundle / "summary_metrics.json").read_text())
    history = json.loads((model_dir / "history.json").read_text())
    protocol = summary["protocol"]
    assert history["protocol"] == protocol and protocol["id"] == model_dir.parent.name
    assert (protocol["window"], protocol["stride"], protocol["sampling_rate_hz"]) == (256, 128, 100)
    assert (protocol["window_s"], summary["seed"]) == (2.56, 0)
    # Training settings are recorded beside the protocol, not in it.
    assert "epochs" not in protocol and summary["training"]["epochs"] == 2
    assert history["training"] == summary["training"]
    assert summary["validation_subjects"] == [105]
    client = MlflowClient(tracking_uri=tracking_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("pamap2").experiment_id],  # type: ignore[union-attr]
        filter_string=f"tags.protocol_id = '{protocol['id']}' and tags.model = 'temporal_cnn'",
    )
    assert run.data.params["protocol_class_set"] == "protocol12"
    event = instance.get_latest_materialization_event(dg.AssetKey("evaluation_bundle"))
    assert event is not None and event.asset_materialization is not None
    assert event.asset_materialization.metadata["protocol_id"].value == protocol["id"]


def test_another_protocol_is_stored_beside_the_old_one(
    trained: tuple[DataPaths, str, dg.DagsterInstance], tmp_path: Path
) -> None:
    paths, _, _ = trained
    root = tmp_path / "data"
    shutil.copytree(paths.root, root)
    other = DataPaths(root)
    old_dir, old_bundle = latest_dirs(other, FOLD, VARIANT)
    old_summary = (old_bundle / "summary_metrics.json").read_bytes()
    # The variant edited to shorter windows: the same partition, another protocol.
    variants = tmp_path / "experiments.yaml"
    variants.write_text(VARIANTS_FILE.replace("    seed: 4\n", "    seed: 4\n    window: 128\n"))
    key = dg.MultiPartitionKey({"fold": FOLD, "model": VARIANT})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PAMAP_DATA_ROOT", str(root))
        env.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        env.setenv("PAMAP_VARIANTS_FILE", str(variants))
        instance = dg.DagsterInstance.ephemeral()
        assert execute("training_job", instance, key).success
        assert execute("report_job", instance).success
    new_dir, new_bundle = latest_dirs(other, FOLD, VARIANT)
    assert new_dir.parent.name != old_dir.parent.name  # a new protocol id
    assert (old_bundle / "summary_metrics.json").read_bytes() == old_summary
    assert (old_dir / "best.pt").exists() and (new_dir / "best.pt").exists()
    board = json.loads((other.reports / "leaderboard.json").read_text())
    ids = {s["protocol"]["id"]: [r["variant"] for r in s["rows"]] for s in board["protocols"]}
    assert ids == {
        old_dir.parent.name: sorted([*MODELS, VARIANT]),
        new_dir.parent.name: [VARIANT],
    }


def _metadata(instance: dg.DagsterInstance, asset: str, key: dg.MultiPartitionKey) -> dict:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[str(key)]), limit=1
    ).records
    materialization = records[0].asset_materialization
    assert materialization is not None
    return {k: v.value for k, v in materialization.metadata.items()}


def test_a_file_variant_trains_with_its_settings_into_its_own_folders(
    trained: tuple[DataPaths, str, dg.DagsterInstance],
) -> None:
    paths, tracking_uri, instance = trained
    key = dg.MultiPartitionKey({"fold": FOLD, "model": VARIANT})
    # What the variant names, over the defaults; the run config changes none of it.
    trained_metadata = _metadata(instance, "trained_model", key)
    overrides = {"max_iter": 3, "max_leaf_nodes": 4}
    config = trained_metadata["config"]
    assert trained_metadata["variant"] == VARIANT and trained_metadata["model"] == "feature_gbm"
    assert config["model_overrides"] == overrides
    assert (config["epochs"], config["seed"]) == (2, 4)
    assert config["lr"] == TrainConfig.lr
    model_dir, bundle = latest_dirs(paths, FOLD, VARIANT)
    assert model_dir.is_relative_to(paths.model_root(FOLD, VARIANT)) and model_dir.name == "seed-4"
    assert load_torch(model_dir / "best.pt")["model_overrides"] == overrides
    # The built-in feature_gbm's results are its own.
    builtin = json.loads(
        (latest_dirs(paths, FOLD, "feature_gbm")[1] / "summary_metrics.json").read_text()
    )
    assert builtin["variant"] == "feature_gbm" and builtin["seed"] == 0

    assert Path(_metadata(instance, "evaluation_bundle", key)["folder"]) == bundle
    summary = json.loads((bundle / "summary_metrics.json").read_text())
    assert summary["variant"] == VARIANT and summary["model"] == "feature_gbm"
    assert summary["variant_settings"] == {
        "epochs": 2,
        "seed": 4,
        "m.max_iter": 3,
        "m.max_leaf_nodes": 4,
    }

    client = MlflowClient(tracking_uri=tracking_uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("pamap2").experiment_id],  # type: ignore[union-attr]
        filter_string=f"tags.variant = '{VARIANT}'",
    )  # training and evaluation log to one run
    assert run.data.params["variant"] == VARIANT and run.data.params["model"] == "feature_gbm"
    assert json.loads(run.data.params["variant_settings"])["m.max_iter"] == 3
    assert "test_macro_f1" in run.data.metrics


def test_headline_metadata_is_rounded_and_says_what_it_is_over(
    trained: tuple[DataPaths, str, dg.DagsterInstance],
) -> None:
    paths, _, instance = trained
    key = dg.MultiPartitionKey({"fold": FOLD, "model": "tcn"})
    records = {}
    for asset in ("trained_model", "evaluation_bundle"):
        (record,) = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[str(key)]),
            limit=1,
        ).records
        assert record.asset_materialization is not None
        records[asset] = {k: v.value for k, v in record.asset_materialization.metadata.items()}
    bundle = latest_dirs(paths, FOLD, "tcn")[1]
    summary = json.loads((bundle / "summary_metrics.json").read_text())
    shown = records["evaluation_bundle"]
    # Four significant digits, not sixteen.
    assert shown["test_macro_f1"] == float(f"{summary['macro_f1']:.4g}")
    history = json.loads((latest_dirs(paths, FOLD, "tcn")[0] / "history.json").read_text())
    assert records["trained_model"]["val_macro_f1"] == float(f"{history['best_metric']:.4g}")
    # Macro F1 beside the classes and windows it is over.
    classes = f"{summary['n_classes_present']} of {summary['n_classes']}"
    assert shown["test_classes"] == classes and shown["test_windows"] == summary["n_test"]
    assert f"over {classes} classes, {summary['n_test']:,} test windows" in str(shown["headline"])
    calibration = summary["calibration"]
    if calibration["temperature_applied"]:
        assert str(shown["calibration"]).startswith("temperature ")
        assert shown["ece_after"] == float(f"{calibration['ece_after']:.4g}")
    else:  # "after" would repeat "before" up to float noise
        assert str(shown["calibration"]).startswith("not applied")
        assert "ece_after" not in shown and "temperature" not in shown
    assert {f"{p}_plot (image)" for p in ("confusion", "roc", "pr", "reliability")} <= set(shown)
