"""Training through Dagster logs to a real `mlflow server`, and everything can be read back.

The documented setup for parallel runs and the MLflow UI: a tracking server on 127.0.0.1 with
a database backend and the artifact store behind the server (clients upload over HTTP). Here
the backend is SQLite and the artifact store a folder, started by the `mlflow_server` fixture.
"""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import mlflow
import pytest
from mlflow.tracking import MlflowClient

from ml_core.evaluation.evaluate import check_bundle_complete
from ml_core.evaluation.protocol import latest_dirs
from ml_core.paths import DataPaths
from tests.e2e.conftest import MlflowServer, materialize

pytestmark = pytest.mark.slow

FOLD = "stratified"
MODEL = "temporal_cnn"
VARIANT = "short_cnn"
EPOCHS = 2
# Two full epochs on two tiny subjects: a few optimizer steps each, so per-epoch metrics exist.
VARIANTS_FILE = f"""variants:
  {VARIANT}:
    model: {MODEL}
    epochs: {EPOCHS}
    batch_size: 64
"""


def _metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    (materialization,) = result.asset_materializations_for_node(asset)
    return {key: value.value for key, value in materialization.metadata.items()}


def test_training_job_logs_params_metrics_artifacts_and_model_to_the_server(
    data_root: Path,
    mlflow_server: MlflowServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    (tmp_path / "experiments.yaml").write_text(VARIANTS_FILE)
    monkeypatch.setenv("PAMAP_VARIANTS_FILE", str(tmp_path / "experiments.yaml"))
    instance = dg.DagsterInstance.ephemeral()
    for subject in ("101", "102"):
        materialize("ingest_job", instance, subject)
    materialize("prepare_job", instance, FOLD)
    mlflow_server.wait_until_ready()
    result = materialize(
        "training_job",
        instance,
        dg.MultiPartitionKey({"fold": FOLD, "model": VARIANT}),
    )
    trained = _metadata(result, "trained_model")
    evaluated = _metadata(result, "evaluation_bundle")
    run_id = str(trained["mlflow_run_id"])
    assert str(trained["mlflow_run"]).startswith(f"{mlflow_server.url}/#/experiments/")
    assert str(evaluated["mlflow_run"]).split("?")[0].endswith(f"/runs/{run_id}")

    client = MlflowClient(tracking_uri=mlflow_server.url)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    protocol_id = latest_dirs(DataPaths(data_root), FOLD, VARIANT)[0].parent.name
    assert run.info.run_name == f"{FOLD}/{VARIANT}/{protocol_id}/seed-0"
    assert run.data.tags["protocol_id"] == protocol_id
    assert run.data.tags["fold"] == FOLD
    assert run.data.tags["model"] == MODEL
    assert run.data.tags["dagster.run_id"] == result.run_id

    # Params: the model, the fold and the variant's training settings.
    assert run.data.params["model"] == MODEL
    assert run.data.params["fold"] == FOLD
    assert run.data.params["epochs"] == str(EPOCHS)

    # Metrics: one validation point per epoch, then the test metrics of the evaluation bundle.
    history = client.get_metric_history(run_id, "val_macro_f1")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, EPOCHS + 1))
    assert all(0.0 <= m.value <= 1.0 for m in history)
    assert run.data.metrics["best_val_macro_f1"] == pytest.approx(max(m.value for m in history))
    paths = DataPaths(data_root)
    summary = json.loads(
        (latest_dirs(paths, FOLD, VARIANT)[1] / "summary_metrics.json").read_text()
    )
    for key in ("accuracy", "macro_f1", "weighted_f1", "balanced_accuracy"):
        assert run.data.metrics[f"test_{key}"] == pytest.approx(summary[key])
    # The asset shows it to four significant digits; MLflow keeps every digit (above).
    assert evaluated["test_macro_f1"] == float(f"{summary['macro_f1']:.4g}")

    # Artifacts went through the server into its artifact store and read back unchanged.
    checkpoints = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert {"checkpoints/best.pt", "checkpoints/last.pt", "checkpoints/history.json"} <= checkpoints
    evaluation = {Path(a.path).name for a in client.list_artifacts(run_id, "evaluation")}
    complete, missing = check_bundle_complete(latest_dirs(paths, FOLD, VARIANT)[1])
    assert complete, missing
    local_bundle = {p.name for p in latest_dirs(paths, FOLD, VARIANT)[1].iterdir()}
    assert local_bundle <= evaluation
    downloaded = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path="evaluation/summary_metrics.json",
        dst_path=str(tmp_path / "download"),
        tracking_uri=mlflow_server.url,
    )
    assert json.loads(Path(downloaded).read_text()) == summary
    best = mlflow.artifacts.download_artifacts(
        run_id=run_id,
        artifact_path="checkpoints/best.pt",
        dst_path=str(tmp_path / "download"),
        tracking_uri=mlflow_server.url,
    )
    local_best = latest_dirs(paths, FOLD, VARIANT)[0] / "best.pt"
    assert Path(best).read_bytes() == local_best.read_bytes()
    stored = {p.name for p in mlflow_server.artifacts.rglob("*") if p.is_file()}
    assert {"best.pt", "summary_metrics.json"} <= stored

    # Training logs no serving model: it is exported only when a model is promoted.
    assert client.search_logged_models(experiment_ids=[run.info.experiment_id]) == []
