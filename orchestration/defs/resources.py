"""Instance-level settings as resources: where data lives and where MLflow logs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from ml_core.paths import DataPaths, default_data_root

if TYPE_CHECKING:
    from ml_core.lifecycle.tracking import MlflowTracker


DEFAULT_DAGSTER_URL = "http://127.0.0.1:3000"


class DataRoot(dg.ConfigurableResource):
    """The data folder every asset reads and writes (env `PAMAP_DATA_ROOT`, default `./data`)."""

    path: str | None = None

    def paths(self) -> DataPaths:
        return DataPaths(Path(self.path).resolve() if self.path else default_data_root())


class MlflowTracking(dg.ConfigurableResource):
    """MLflow tracking (env `MLFLOW_TRACKING_URI`; default a SQLite file inside the project).
    Each MLflow run is tagged `dagster.run_url`, a link to the Dagster run on the Dagster UI at
    `dagster_url` (env `PAMAP_DAGSTER_URL`; default `http://127.0.0.1:3000`, `pamap ui`'s)."""

    tracking_uri: str | None = None
    experiment: str = "pamap2"
    dagster_url: str | None = None

    def dagster_run_url(self, run_id: str) -> str:
        base = self.dagster_url or os.environ.get("PAMAP_DAGSTER_URL") or DEFAULT_DAGSTER_URL
        return f"{base.rstrip('/')}/runs/{run_id}"

    def tracker(self) -> MlflowTracker:
        # MLflow is imported by the steps that log, not by the code location or the data steps.
        from ml_core.lifecycle.tracking import MlflowTracker, default_tracking_uri

        uri = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
        return MlflowTracker(tracking_uri=uri, experiment=self.experiment)


@dg.definitions
def resources() -> dg.Definitions:
    return dg.Definitions(resources={"data_root": DataRoot(), "mlflow": MlflowTracking()})
