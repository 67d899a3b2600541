"""champion_model through Dagster: leaderboard rows as candidates, gates, the MLflow registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from ml_core.data.columns import CLASS_SETS, MODALITIES, MODEL_CHANNELS, SUBJECTS
from ml_core.evaluation.protocol import EvaluationProtocol
from ml_core.io import save_torch, write_json
from ml_core.lifecycle.champion import CHAMPION, REGISTERED_MODEL
from ml_core.lifecycle.timeline import load_registered_model
from ml_core.lifecycle.tracking import MlflowTracker
from ml_core.models import create_model
from ml_core.paths import DataPaths
from ml_core.training.config import TrainConfig
from orchestration.defs.champion import champion_model
from orchestration.defs.resources import DataRoot, MlflowTracking
from tests.test_windows import IDENTITY_STATS

PROTOCOL = {"id": "p0000abcd", "class_set": "protocol12", "description": "a test protocol"}
FOLDS = ["holdout-106", *(f"loso-{s}" for s in range(101, 110))]


def _entry(model: str, pooled: float, ece: float, folds: list[str], variant: str = "") -> dict:
    return {
        "variant": variant or model,
        "model": model,
        "seeds": [0],
        "folds": folds,
        "complete": folds == FOLDS,
        "pooled_loso": {"macro_f1": pooled},
        "calibration": {"ece_after_mean": ece, "ece_before_mean": ece + 0.1},
    }


def _log_model(
    paths: DataPaths, tracker: MlflowTracker, variant: str, protocol_id: str = PROTOCOL["id"]
) -> str:
    """A training run of `variant` on holdout-106 with an (untrained) temporal_cnn checkpoint
    and the fold's feature statistics, as training leaves them; returns the run id."""
    config = TrainConfig(window={"window": 32, "stride": 16})
    tags = {"variant": variant, "model": "temporal_cnn", "protocol_id": protocol_id}
    with tracker.run(f"holdout-106/{variant}", tags) as run_id:
        tracker.log_params(EvaluationProtocol.of(config).to_params())
    model_dir = paths.model_dir("holdout-106", variant, protocol_id, 0)
    channels = {m: len(columns) for m, columns in MODALITIES.items()}
    save_torch(
        {
            "model_name": "temporal_cnn",
            "class_ids": list(CLASS_SETS["protocol12"]),
            "modality_channels": channels,
            "model_overrides": {},
            "model_state": create_model("temporal_cnn", 12, channels).state_dict(),
            "train_config": config.to_dict(),
        },
        model_dir / "best.pt",
    )
    write_json(IDENTITY_STATS, paths.feature_stats("holdout-106"))
    write_json(
        {"run_id": run_id, "tracking_uri": tracker.tracking_uri}, model_dir / "mlflow_run.json"
    )
    return run_id


def _materialize(root: Path, uri: str) -> dict:
    result = dg.materialize(
        [champion_model],
        resources={
            "data_root": DataRoot(path=str(root)),
            "mlflow": MlflowTracking(tracking_uri=uri),
        },
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    return {k: v.value for k, v in event.materialization.metadata.items()}


def test_champion_asset_promotes_the_best_gated_model_once(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri)
    for model in ("feature_gbm", "temporal_cnn", "lstm", "early_fusion"):
        _log_model(paths, tracker, model)
    board = {
        "protocols": [
            {
                "protocol": PROTOCOL,
                "rows": [
                    _entry("lstm", 0.95, 0.30, FOLDS),  # best F1, but badly calibrated
                    _entry("early_fusion", 0.99, 0.05, FOLDS[:4]),  # incomplete
                    _entry("temporal_cnn", 0.90, 0.05, FOLDS),
                    _entry("feature_gbm", 0.85, 0.04, FOLDS),
                ],
            }
        ]
    }
    write_json(board, paths.reports / "leaderboard.json")
    # As in a fresh process, MLflow's global tracking URI is not the project's store.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")

    first = _materialize(paths.root, uri)
    assert first["promoted"] and first["selected"] == "temporal_cnn"
    verdicts = {r.data["model"]: r.data["verdict"] for r in first["comparison"].records}
    assert verdicts["temporal_cnn"] == "selected"
    assert "ECE 0.3000 above the bound" in verdicts["lstm"]
    assert "incomplete" in verdicts["early_fusion"]
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    assert version.tags["variant"] == "temporal_cnn"
    # Named in the registry by variant and fold; the asset links to the version's page.
    assert version.description == f"temporal_cnn trained on holdout-106, protocol {PROTOCOL['id']}"
    assert first["registry"] == (
        f"http://127.0.0.1:5000/#/models/{REGISTERED_MODEL}/versions/{version.version}"
    )
    # Only the promoted run got a serving program (training exports none).
    for model in ("feature_gbm", "temporal_cnn", "lstm", "early_fusion"):
        run_id = json.loads(
            (
                paths.model_dir("holdout-106", model, PROTOCOL["id"], 0) / "mlflow_run.json"
            ).read_text()
        )["run_id"]
        published = [a.path for a in client.list_artifacts(run_id, "serving")]
        assert published == (["serving/model.pt2"] if model == "temporal_cnn" else [])
    served = load_registered_model(uri)
    probs = served.predict(np.random.default_rng(0).normal(size=(3, 32, len(MODEL_CHANNELS))))
    assert probs.shape == (3, 12) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)

    second = _materialize(paths.root, uri)  # nothing better: the champion stays
    assert not second["promoted"] and "does not beat the current champion" in second["decision"]
    assert client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION).version == version.version


def test_candidates_need_a_leaderboard(tmp_path: Path) -> None:
    from ml_core.pipeline import champion_candidates

    with pytest.raises(FileNotFoundError, match="materialize the leaderboard first"):
        champion_candidates(DataPaths(tmp_path), MlflowTracker(f"sqlite:///{tmp_path / 'm.db'}"))
    write_json({"protocols": []}, DataPaths(tmp_path).reports / "leaderboard.json")
    assert (
        champion_candidates(DataPaths(tmp_path), MlflowTracker(f"sqlite:///{tmp_path / 'm.db'}"))
        == []
    )


def test_the_champion_is_a_variant_with_its_own_model(tmp_path: Path) -> None:
    """Variants of every protocol section of the main class set compete; the registered model
    is the winning variant's own (its folder under its protocol), not its model's built-in."""
    paths = DataPaths(tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri)
    longer = {"id": "p0000beef", "class_set": "protocol12", "description": "longer windows"}
    eleven = {"id": "p0000cafe", "class_set": "protocol11", "description": "another task"}
    for variant in ("feature_gbm", "temporal_cnn", "tcn_sweep-lr=0.001"):
        _log_model(paths, tracker, variant)
    winner = _log_model(paths, tracker, "tcn_long", longer["id"])
    _log_model(paths, tracker, "tcn_eleven", eleven["id"])
    board = {
        "protocols": [
            {
                "protocol": PROTOCOL,
                "rows": [
                    _entry("temporal_cnn", 0.90, 0.05, FOLDS, "tcn_sweep-lr=0.001"),
                    _entry("temporal_cnn", 0.88, 0.05, FOLDS),
                    _entry("feature_gbm", 0.85, 0.04, FOLDS),
                ],
            },
            {"protocol": longer, "rows": [_entry("temporal_cnn", 0.93, 0.05, FOLDS, "tcn_long")]},
            # Best of all, but on another class set: not comparable with the baseline.
            {"protocol": eleven, "rows": [_entry("temporal_cnn", 0.99, 0.01, FOLDS, "tcn_eleven")]},
        ]
    }
    write_json(board, paths.reports / "leaderboard.json")

    metadata = _materialize(paths.root, uri)
    assert metadata["promoted"] and metadata["selected"] == "tcn_long"
    rows = {r.data["variant"]: r.data for r in metadata["comparison"].records}
    assert rows["tcn_sweep-lr=0.001"]["model"] == "temporal_cnn"
    assert rows["tcn_sweep-lr=0.001"]["protocol"] == "p0000abcd"
    assert "tcn_eleven" not in rows
    version = MlflowClient(uri).get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    assert version.tags["variant"] == "tcn_long" and version.tags["model"] == "temporal_cnn"
    assert version.tags["protocol_id"] == longer["id"] and version.run_id == winner
    assert version.description == (
        f"tcn_long (temporal_cnn) trained on holdout-106, protocol {longer['id']}"
    )


def test_retrain_on_all_registers_a_model_trained_on_every_subject_but_validation(
    copy_prepared: Callable[[], Path],
) -> None:
    from ml_core import pipeline
    from ml_core.data.folds import DEPLOY_FOLD, HOLDOUT_VAL_SUBJECT, read_fold
    from ml_core.training.config import TrainConfig

    paths = DataPaths(copy_prepared())
    uri = f"sqlite:///{paths.root / 'mlflow.db'}"
    tracker = MlflowTracker(uri)
    trained = pipeline.train_fold_model(
        paths, "holdout-106", "feature_gbm", TrainConfig(epochs=1, seed=3), tracker
    )
    protocol = {**PROTOCOL, "id": trained["protocol"]["id"]}
    entries = [_entry("lstm", 0.50, 0.05, FOLDS), _entry("feature_gbm", 0.80, 0.05, FOLDS)]
    entries[1]["seeds"] = [3]
    write_json(
        {"protocols": [{"protocol": protocol, "rows": entries}]},
        paths.reports / "leaderboard.json",
    )

    result = dg.materialize(
        [champion_model],
        resources={
            "data_root": DataRoot(path=str(paths.root)),
            "mlflow": MlflowTracking(tracking_uri=uri),
        },
        run_config={
            "ops": {"champion_model": {"config": {"baseline": "lstm", "retrain_on_all": True}}}
        },
    )
    assert result.success
    (event,) = result.get_asset_materialization_events()
    metadata = {k: v.value for k, v in event.materialization.metadata.items()}
    assert metadata["promoted"] and metadata["registered_model_trained_on"] == DEPLOY_FOLD

    # Every ingested subject trains but the validation person; nobody is tested.
    ranges = read_fold(paths, DEPLOY_FOLD)
    assert {r.subject for r in ranges["val"]} == {HOLDOUT_VAL_SUBJECT}
    assert {r.subject for r in ranges["train"]} == set(SUBJECTS) - {HOLDOUT_VAL_SUBJECT}
    assert ranges["test"] == []
    # The registered version is the retrained model, with the source's settings and seed.
    client = MlflowClient(uri)
    version = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    assert version.tags["trained_on"] == DEPLOY_FOLD
    assert f"trained on {DEPLOY_FOLD}, protocol " in version.description
    params = client.get_run(version.run_id).data.params
    assert params["fold"] == DEPLOY_FOLD and params["seed"] == "3"
    assert params["model"] == "feature_gbm"
    assert (
        version.run_id
        != json.loads((Path(trained["best_path"]).parent / "mlflow_run.json").read_text())["run_id"]
    )
