"""MLflow tracking: one run per (asset, partition), usable with or without Dagster."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Generator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import mlflow
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source_registry import get_dataset_source_from_json
from mlflow.environment_variables import MLFLOW_ALLOW_PICKLE_DESERIALIZATION
from mlflow.tracking import MlflowClient

from ml_core.data.folds import SPLITS, read_manifest
from ml_core.lifecycle.uris import safe_uri
from ml_core.paths import DataPaths, default_data_root

# The experiment tag the MLflow UI reads to tell classic model training from GenAI work.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# The UI (3.x) picks its view from this URL parameter, else from the browser's last choice,
# and a new browser starts in the GenAI view: links into this experiment carry it.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"
# Every run this platform starts carries this tag; the champion is loaded only from such runs.
PLATFORM_TAG = "pamap2.platform"
PLATFORM = "pamap2-ml"
# How a fold's splits are named as run inputs (the `mlflow.data.context` input tag).
SPLIT_CONTEXT = {"train": "training", "val": "validation", "test": "testing"}


def refuse_pickle_deserialization() -> None:
    """Turn MLflow's pickle deserialization off for this process (and the processes it starts),
    unless the operator set `MLFLOW_ALLOW_PICKLE_DESERIALIZATION` explicitly: a registry entry
    someone else wrote then cannot run code when loaded. The platform's own models never need
    it (see `ml_core.lifecycle.serving`)."""
    os.environ.setdefault(MLFLOW_ALLOW_PICKLE_DESERIALIZATION.name, "false")


refuse_pickle_deserialization()


def default_tracking_uri() -> str:
    """A SQLite store at an absolute path inside the project's data folder."""
    db = default_data_root() / "mlflow" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{db}"


def _flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, prefix=f"{name}."))
        else:
            flat[name] = json.dumps(value) if isinstance(value, list | tuple) else str(value)
    return flat


class ManifestDataset(Dataset):
    """One split of a fold, as an MLflow dataset: its manifest is the source, its bytes the
    digest, and the profile says how many rows, shards and subjects it holds."""

    def __init__(self, manifest: Path, name: str) -> None:
        self._manifest = Path(manifest).resolve()
        ranges = read_manifest(self._manifest)
        self._profile = {
            "rows": sum(r.rows for r in ranges),
            "shards": len(ranges),
            "subjects": sorted({r.subject for r in ranges}),
            "activities": sorted({r.activity for r in ranges}),
        }
        source = get_dataset_source_from_json(
            json.dumps({"uri": self._manifest.as_uri()}), source_type="local"
        )
        super().__init__(source=source, name=name)

    def _compute_digest(self) -> str:
        return hashlib.sha256(self._manifest.read_bytes()).hexdigest()[:10]

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    @property
    def schema(self) -> None:
        return None

    def to_dict(self) -> dict[str, str]:
        return super().to_dict() | {"profile": json.dumps(self._profile)}


def fold_datasets(paths: DataPaths, fold: str) -> dict[str, ManifestDataset]:
    """The fold's train, validation and test splits as MLflow datasets, keyed by split."""
    return {
        split: ManifestDataset(paths.manifest(fold, split), name=f"{fold}/{split}")
        for split in SPLITS
    }


class MlflowTracker:
    """Thin, explicit wrapper over the MLflow client for one tracking URI and experiment."""

    def __init__(self, tracking_uri: str, experiment: str = "pamap2") -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.client = MlflowClient(tracking_uri=tracking_uri)

    @property
    def is_local_file_store(self) -> bool:
        return urlsplit(self.tracking_uri).scheme in ("sqlite", "file", "")

    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment)
        if found is not None:
            # An experiment made before the tag existed (or by hand) is switched over once.
            if found.tags.get(EXPERIMENT_KIND_TAG) != MODEL_TRAINING_KIND:
                self.client.set_experiment_tag(
                    found.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND
                )
            return found.experiment_id
        artifact_location = None
        if self.tracking_uri.startswith("sqlite:///"):
            # Keep artifacts beside the database, not in whatever directory the run started in.
            db_path = Path(self.tracking_uri.removeprefix("sqlite:///"))
            artifact_location = (db_path.parent / "artifacts").resolve().as_uri()
        return self.client.create_experiment(
            self.experiment,
            artifact_location=artifact_location,
            tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND},
        )

    @contextmanager
    def run(
        self, run_name: str, tags: Mapping[str, str], run_id: str | None = None
    ) -> Generator[str]:
        """Start (or, given `run_id`, reopen) a run; yields its id and ends it on exit.

        A failure inside marks the run FAILED so the MLflow UI never shows it as running.
        """
        mlflow.set_tracking_uri(self.tracking_uri)
        if run_id is not None:
            active = mlflow.start_run(run_id=run_id)
        else:
            active = mlflow.start_run(
                experiment_id=self.experiment_id(),
                run_name=run_name,
                tags={**tags, PLATFORM_TAG: PLATFORM},
            )
        try:
            yield active.info.run_id
        except BaseException:
            mlflow.end_run(status="FAILED")
            raise
        mlflow.end_run(status="FINISHED")

    def run_exists(self, run_id: str) -> bool:
        try:
            self.client.get_run(run_id)
        except Exception:  # MLflow raises its own exception types per store
            return False
        return True

    def run_url(self, run_id: str) -> str:
        return self._ui_url(f"/runs/{run_id}")

    def experiment_url(self) -> str:
        """The experiment's runs table in the UI's model-training view (created if missing)."""
        return self._ui_url("")

    def registered_model_url(self, name: str, version: str) -> str:
        """A registered model version's page in the UI (its Models tab)."""
        return f"{self._ui_base()}/#/models/{name}/versions/{version}"

    def _ui_base(self) -> str:
        local = "http://127.0.0.1:5000"
        return (safe_uri(self.tracking_uri) if not self.is_local_file_store else local).rstrip("/")

    def _ui_url(self, route: str) -> str:
        experiment_id = self.experiment_id()
        return f"{self._ui_base()}/#/experiments/{experiment_id}{route}?{MODEL_TRAINING_VIEW}"

    @staticmethod
    def log_datasets(datasets: Mapping[str, Dataset]) -> None:
        """Log datasets keyed by split as the active run's inputs, with the split's context."""
        splits = list(datasets)
        mlflow.log_inputs(
            datasets=[datasets[s] for s in splits],
            contexts=[SPLIT_CONTEXT.get(s, s) for s in splits],
            tags_list=[None] * len(splits),
        )

    @staticmethod
    def log_params(params: Mapping[str, Any]) -> None:
        mlflow.log_params(_flatten(params))

    @staticmethod
    def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
        finite = {k: float(v) for k, v in metrics.items() if v is not None}
        mlflow.log_metrics(finite, step=step)

    @staticmethod
    def log_artifact(path: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path=artifact_path)

    @staticmethod
    def log_artifacts(folder: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifacts(str(folder), artifact_path=artifact_path)
