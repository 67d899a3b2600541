"""MLflow tracking: fold splits as run inputs, and an experiment the UI opens as model training."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from ml_core.lifecycle.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    MlflowTracker,
    fold_datasets,
)
from ml_core.paths import DataPaths

FOLD = "loso-103"
MANIFESTS = {
    "train": "processed_tensors/subject_101/activity_1.pt,0,900\n"
    "processed_tensors/subject_102/activity_4.pt,100,700\n",
    "val": "processed_tensors/subject_101/activity_1.pt,1156,1300\n",
    "test": "processed_tensors/subject_103/activity_1.pt,0,500\n"
    "processed_tensors/subject_103/activity_5.pt,0,250\n",
}


@pytest.fixture
def paths(tmp_path: Path) -> DataPaths:
    paths = DataPaths(tmp_path / "data")
    for split, text in MANIFESTS.items():
        paths.manifest(FOLD, split).parent.mkdir(parents=True, exist_ok=True)
        paths.manifest(FOLD, split).write_text(text)
    return paths


def test_a_run_lists_the_folds_splits_as_dataset_inputs(paths: DataPaths, tmp_path: Path):
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracker.run(f"{FOLD}/lstm", {"fold": FOLD}) as run_id:
        tracker.log_datasets(fold_datasets(paths, FOLD))
    inputs = MlflowClient(tracker.tracking_uri).get_run(run_id).inputs.dataset_inputs
    logged = {i.dataset.name: i for i in inputs}
    assert sorted(logged) == [f"{FOLD}/test", f"{FOLD}/train", f"{FOLD}/val"]
    contexts = {
        name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for name, i in logged.items()
    }
    assert contexts == {
        f"{FOLD}/train": "training",
        f"{FOLD}/val": "validation",
        f"{FOLD}/test": "testing",
    }
    for split, text in MANIFESTS.items():
        dataset = logged[f"{FOLD}/{split}"].dataset
        manifest = paths.manifest(FOLD, split).resolve()
        assert json.loads(dataset.source) == {"uri": manifest.as_uri()}
        assert dataset.digest == hashlib.sha256(text.encode()).hexdigest()[:10]
    train_profile = json.loads(logged[f"{FOLD}/train"].dataset.profile)
    assert train_profile == {
        "rows": 1500,
        "shards": 2,
        "subjects": [101, 102],
        "activities": [1, 4],
    }


def test_a_changed_manifest_gets_a_new_digest(paths: DataPaths):
    before = fold_datasets(paths, FOLD)["test"].digest
    manifest = paths.manifest(FOLD, "test")
    manifest.write_text(manifest.read_text().replace(",250", ",251"))
    assert fold_datasets(paths, FOLD)["test"].digest != before


def test_the_experiment_is_a_model_training_experiment(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    # One made before the tag existed is switched over; a new one is created with it.
    old_id = client.create_experiment("made-earlier")
    for name in ("made-earlier", "pamap2"):
        tracker = MlflowTracker(uri, experiment=name)
        experiment_id = tracker.experiment_id()
        assert client.get_experiment(experiment_id).tags[EXPERIMENT_KIND_TAG] == (
            MODEL_TRAINING_KIND
        )
    assert MlflowTracker(uri, experiment="made-earlier").experiment_id() == old_id
    assert tracker.run_url("abc").endswith("/runs/abc?workflowType=machine_learning")
    assert tracker.experiment_url() == (
        f"http://127.0.0.1:5000/#/experiments/{experiment_id}?workflowType=machine_learning"
    )


def test_credentials_in_the_tracking_uri_are_never_shown_or_stored(tmp_path: Path) -> None:
    from ml_core.lifecycle.uris import safe_uri
    from orchestration.cli import where_to_look

    uri = "https://alice:s3cret@mlflow.internal:5000/prefix"
    assert safe_uri(uri) == "https://mlflow.internal:5000/prefix"
    assert safe_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert safe_uri("sqlite:////data/mlflow.db") == "sqlite:////data/mlflow.db"
    with pytest.MonkeyPatch.context() as env:
        env.setattr(MlflowTracker, "experiment_id", lambda self: "7")  # no server here
        url = MlflowTracker(uri).run_url("abc")
        env.setenv("MLFLOW_TRACKING_URI", uri)
        shown = where_to_look(DataPaths(tmp_path), str(tmp_path))
    assert url.startswith("https://mlflow.internal:5000/prefix/#/experiments/7/runs/abc")
    assert "s3cret" not in url and "alice" not in url
    assert "mlflow.internal" in shown and "s3cret" not in shown
