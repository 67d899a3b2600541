"""The champion in a real MLflow Model Registry (`mlflow server` on 127.0.0.1): promotion,
no promotion when worse, and rollback by one alias move."""

from __future__ import annotations

import hashlib
import io
from dataclasses import replace
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from ml_core.evaluation.protocol import EvaluationProtocol
from ml_core.lifecycle.champion import (
    CHAMPION,
    PREVIOUS,
    SERVING_DIR,
    ChampionGates,
    LeaderboardRow,
    promote_champion,
    rollback_champion,
    select_champion,
)
from ml_core.lifecycle.serving import SERVING_FILE
from ml_core.lifecycle.timeline import load_registered_model
from ml_core.lifecycle.tracking import MlflowTracker
from ml_core.training.config import TrainConfig
from tests.e2e.conftest import MlflowServer

pytestmark = pytest.mark.slow

NAME = "pamap2-activity-test"
LOSO = tuple(f"loso-{s}" for s in range(101, 110))


def _training_run(tracker: MlflowTracker, variant: str) -> str:
    """A training run as the platform logs it (tags, protocol params), without a model."""
    tags = {"variant": variant, "model": variant, "protocol_id": f"p-{variant}"}
    with tracker.run(variant, tags) as run_id:
        tracker.log_params(EvaluationProtocol.of(TrainConfig()).to_params())
    return run_id


def _publisher(tracker: MlflowTracker, folder: Path, published: list[str]):  # noqa: ANN202
    """Stands in for the checkpoint export: a tiny torch.export program into the run's
    `serving/` artifacts through the server; records which rows were published."""

    def publish(row: LeaderboardRow) -> str:
        module = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Softmax(dim=-1))
        program = torch.export.export(
            module, (torch.zeros(2, 3),), dynamic_shapes=({0: torch.export.Dim.AUTO},)
        )
        buffer = io.BytesIO()
        torch.export.save(program, buffer)
        target = folder / row.variant / SERVING_FILE
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(buffer.getvalue())
        assert row.run_id is not None
        tracker.client.log_artifact(row.run_id, str(target), artifact_path=SERVING_DIR)
        published.append(row.variant)
        return hashlib.sha256(buffer.getvalue()).hexdigest()

    return publish


def _row(variant: str, f1: float, run_id: str | None) -> LeaderboardRow:
    return LeaderboardRow(
        variant=variant,
        protocol_id=f"p-{variant}",
        class_set="protocol12",
        folds=LOSO,
        complete=True,
        pooled_loso_macro_f1=f1,
        ece=0.05,
        run_id=run_id,
        source_dir=f"models/holdout-106/{variant}",
    )


def test_promotion_no_promotion_when_worse_and_rollback(
    mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    mlflow_server.wait_until_ready()
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_experiment("champion-test")
    client = MlflowClient(mlflow_server.url)
    tracker = MlflowTracker(mlflow_server.url, "champion-test")
    published: list[str] = []
    publish = _publisher(tracker, tmp_path, published)
    gates = ChampionGates(baseline="feature_gbm", max_ece=0.1)
    baseline = _row("feature_gbm", 0.80, None)

    # First: nothing registered yet, the best variant past the gates becomes version 1.
    lstm = _row("lstm", 0.84, _training_run(tracker, "lstm"))
    first = promote_champion(client, select_champion([baseline, lstm], gates), publish, NAME)
    assert (first.promoted, first.champion_version, first.previous_version) == (True, "1", None)
    champion = client.get_model_version_by_alias(NAME, CHAMPION)
    assert champion.version == "1" and champion.tags["variant"] == "lstm"
    assert float(champion.tags["pooled_loso_macro_f1"]) == 0.84
    assert champion.tags["baseline_pooled_loso_macro_f1"] == "0.8"

    # A worse winner (it passes the gates, but not the current champion): nothing changes.
    worse = _row("tcn", 0.82, _training_run(tracker, "tcn"))
    second = promote_champion(client, select_champion([baseline, worse], gates), publish, NAME)
    assert not second.promoted and "does not beat the current champion, version 1" in (
        second.reason
    )
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == "1"

    # A better one: version 2 is champion, version 1 keeps an alias for rollback.
    better = _row("tcn_focal", 0.88, _training_run(tracker, "tcn_focal"))
    third = promote_champion(
        client, select_champion([baseline, lstm, better], gates), publish, NAME
    )
    assert (third.promoted, third.champion_version, third.previous_version) == (True, "2", "1")
    assert client.get_model_version_by_alias(NAME, PREVIOUS).version == "1"
    registered = client.get_model_version(NAME, "2")
    assert registered.source == f"runs:/{better.run_id}/{SERVING_DIR}"
    assert registered.run_id == better.run_id
    # Exported only for the models promoted, loaded back through the server without pickle.
    assert published == ["lstm", "tcn_focal"]
    served = load_registered_model(mlflow_server.url, NAME)
    assert served.version == "2" and served.predict(np.ones((4, 3), np.float32)).shape == (4, 2)

    # Rollback is one alias move, and undoing it another.
    assert rollback_champion(client, NAME) == ("1", "2")
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == "1"
    assert client.get_model_version_by_alias(NAME, PREVIOUS).version == "2"
    # After a rollback the comparison is against the restored champion (0.84), not 0.88.
    again = promote_champion(
        client, select_champion([baseline, replace(better)], gates), publish, NAME
    )
    assert again.promoted and again.previous_version == "1"
