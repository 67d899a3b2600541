"""The champion in a real MLflow Model Registry (`mlflow server` on 127.0.0.1): promotion,
no promotion when worse, and rollback by one alias move."""

from __future__ import annotations

from dataclasses import replace

import mlflow
import mlflow.pyfunc
import pytest
from mlflow.tracking import MlflowClient

from ml_core.lifecycle.champion import (
    CHAMPION,
    PREVIOUS,
    ChampionGates,
    LeaderboardRow,
    promote_champion,
    rollback_champion,
    select_champion,
)
from tests.e2e.conftest import MlflowServer

pytestmark = pytest.mark.slow

NAME = "pamap2-activity-test"
LOSO = tuple(f"loso-{s}" for s in range(101, 110))


class _Constant(mlflow.pyfunc.PythonModel):
    """A stand-in model: the registry stores whatever the training logged."""

    def predict(self, context, model_input):  # noqa: ANN001, ARG002 (MLflow's signature)
        return [0] * len(model_input)


def _logged_model(variant: str) -> str:
    with mlflow.start_run(run_name=variant):
        info = mlflow.pyfunc.log_model(name="model", python_model=_Constant())
    return info.model_id


def _row(variant: str, f1: float, model_id: str | None) -> LeaderboardRow:
    return LeaderboardRow(
        variant=variant,
        protocol_id=f"p-{variant}",
        class_set="protocol12",
        folds=LOSO,
        complete=True,
        pooled_loso_macro_f1=f1,
        ece=0.05,
        model_id=model_id,
    )


def test_promotion_no_promotion_when_worse_and_rollback(
    mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    mlflow_server.wait_until_ready()
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_experiment("champion-test")
    client = MlflowClient(mlflow_server.url)
    gates = ChampionGates(baseline="feature_gbm", max_ece=0.1)
    baseline = _row("feature_gbm", 0.80, None)

    # First: nothing registered yet, the best variant past the gates becomes version 1.
    lstm = _row("lstm", 0.84, _logged_model("lstm"))
    first = promote_champion(client, select_champion([baseline, lstm], gates), NAME)
    assert (first.promoted, first.champion_version, first.previous_version) == (True, "1", None)
    champion = client.get_model_version_by_alias(NAME, CHAMPION)
    assert champion.version == "1" and champion.tags["variant"] == "lstm"
    assert float(champion.tags["pooled_loso_macro_f1"]) == 0.84
    assert champion.tags["baseline_pooled_loso_macro_f1"] == "0.8"

    # A worse winner (it passes the gates, but not the current champion): nothing changes.
    worse = _row("tcn", 0.82, _logged_model("tcn"))
    second = promote_champion(client, select_champion([baseline, worse], gates), NAME)
    assert not second.promoted and "does not beat the current champion, version 1" in (
        second.reason
    )
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == "1"

    # A better one: version 2 is champion, version 1 keeps an alias for rollback.
    better = _row("tcn_focal", 0.88, _logged_model("tcn_focal"))
    third = promote_champion(client, select_champion([baseline, lstm, better], gates), NAME)
    assert (third.promoted, third.champion_version, third.previous_version) == (True, "2", "1")
    assert client.get_model_version_by_alias(NAME, PREVIOUS).version == "1"
    registered = client.get_model_version(NAME, "2")
    assert registered.source == f"models:/{better.model_id}"
    assert registered.run_id == client.get_logged_model(str(better.model_id)).source_run_id
    assert mlflow.pyfunc.load_model(f"models:/{NAME}@{CHAMPION}").predict([1, 2]) == [0, 0]

    # Rollback is one alias move, and undoing it another.
    assert rollback_champion(client, NAME) == ("1", "2")
    assert client.get_model_version_by_alias(NAME, CHAMPION).version == "1"
    assert client.get_model_version_by_alias(NAME, PREVIOUS).version == "2"
    # After a rollback the comparison is against the restored champion (0.84), not 0.88.
    again = promote_champion(client, select_champion([baseline, replace(better)], gates), NAME)
    assert again.promoted and again.previous_version == "1"
