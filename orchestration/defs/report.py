"""Report stage: every variant x fold side by side, and the sweep summary."""

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
    """Every evaluated variant side by side, one section per protocol: pooled LOSO macro F1
    with its CI, LOSO mean +- std, `stratified` and `holdout-106`, paired comparisons. The sweep
    summary names each model's best complete variant with its settings. Written as markdown,
    JSON and a plot, and logged to MLflow."""
    from ml_core import pipeline  # torch and MLflow: only when this step runs
    from ml_core.evaluation.leaderboard import sweep_summary_lines

    result = pipeline.build_report(data_root.paths(), tracker=mlflow.tracker())
    sweep = result["board"]["sweep_summary"]
    return dg.MaterializeResult(
        metadata={
            "leaderboard": dg.MetadataValue.md(result["markdown"]),
            "sweep_summary": dg.MetadataValue.md(
                "\n".join(sweep_summary_lines(sweep)) if sweep else "_no complete LOSO entry yet_"
            ),
            "best_variants": dg.MetadataValue.json(
                {s["model"] + "/" + s["class_set"]: s["best_variant"] for s in sweep}
            ),
            "evaluated_fold_models": result["n_records"],
            "plot": dg.MetadataValue.md(f"![leaderboard]({result['plot_data_uri']})"),
            "folder": dg.MetadataValue.path(result["folder"]),
            "mlflow_run": dg.MetadataValue.url(result["mlflow_url"]),
        },
        data_version=files_version([Path(result["folder"]) / "leaderboard.json"], result["folder"]),
    )
