"""Report stage: every model x fold side by side."""

from pathlib import Path

import dagster as dg

from orchestration.code_versions import CODE_VERSIONS
from orchestration.defs.resources import DataRoot, MlflowTracking
from orchestration.defs.train import evaluation_bundle
from orchestration.metadata import files_version


@dg.asset(
    group_name="report",
    kinds={"markdown", "mlflow"},
    deps=[dg.AssetDep(evaluation_bundle, partition_mapping=dg.AllPartitionMapping())],
    code_version=CODE_VERSIONS["leaderboard"],
)
def leaderboard(data_root: DataRoot, mlflow: MlflowTracking) -> dg.MaterializeResult:
    """Test macro F1 and accuracy of every evaluated model on `stratified`, `holdout-106` and
    mean +- std over the LOSO folds, with the gap between the within-subject split and LOSO.
    Written as markdown, JSON and a plot, and logged to MLflow."""
    from ml_core import pipeline  # torch and MLflow: only when this step runs

    result = pipeline.build_report(data_root.paths(), tracker=mlflow.tracker())
    return dg.MaterializeResult(
        metadata={
            "leaderboard": dg.MetadataValue.md(result["markdown"]),
            "evaluated_fold_models": result["n_records"],
            "plot": dg.MetadataValue.md(f"![leaderboard]({result['plot_data_uri']})"),
            "folder": dg.MetadataValue.path(result["folder"]),
            "mlflow_run": dg.MetadataValue.url(result["mlflow_url"]),
        },
        data_version=files_version([Path(result["folder"]) / "leaderboard.json"], result["folder"]),
    )
