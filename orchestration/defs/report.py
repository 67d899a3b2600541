"""Report stage: every variant x fold side by side, and the sweep summary."""

from pathlib import Path

import dagster as dg

from orchestration.code_versions import code_version
from orchestration.defs.automation import REPORT_FLOW
from orchestration.defs.partitions import fold_partitions
from orchestration.defs.resources import DataRoot, MlflowTracking
from orchestration.defs.train import evaluation_bundle
from orchestration.metadata import files_version, table


# Dagster stops tracing staleness through a dependency on 100 or more partitions, and every
# fold x variant is far more: the leaderboard reads per-fold results (11 partitions), each of
# which reads its fold's variants.
@dg.asset(
    partitions_def=fold_partitions,
    group_name="report",
    kinds={"json"},
    deps=[
        dg.AssetDep(
            evaluation_bundle,
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
                partition_dimension_name="fold"
            ),
        )
    ],
    code_version=code_version(__file__, "fold_results"),
    automation_condition=REPORT_FLOW,
)
def fold_results(context: dg.AssetExecutionContext, data_root: DataRoot) -> dg.MaterializeResult:
    """One fold's test metrics of every evaluated variant, protocol and seed side by side
    (`data/reports/folds/<fold>.json`). Its data version is a hash of the bundles' summaries, so
    a new bundle on this fold makes the leaderboard stale, whatever the number of variants."""
    from ml_core import pipeline

    paths = data_root.paths()
    result = pipeline.collect_fold_results(paths, context.partition_key)
    return dg.MaterializeResult(
        metadata={
            "variants": len({r["variant"] for r in result["rows"]}),
            "results": table(result["rows"]),
            "path": dg.MetadataValue.path(result["path"]),
        },
        data_version=files_version(result["files"], paths.root),
    )


@dg.asset(
    group_name="report",
    kinds={"markdown", "mlflow"},
    deps=[dg.AssetDep(fold_results, partition_mapping=dg.AllPartitionMapping())],
    code_version=code_version(__file__, "leaderboard"),
    automation_condition=REPORT_FLOW,
    check_specs=[
        dg.AssetCheckSpec(
            "every_fold_present",
            asset="leaderboard",
            description="Every ranked variant was evaluated on every fold of its protocol (all "
            "11, or 10 for a class set without rope jumping). A warning names the missing folds: "
            "the leaderboard ranks variants on the folds they share, so a partial run (a demo "
            "on some folds) still ranks them.",
        )
    ],
)
def leaderboard(data_root: DataRoot, mlflow: MlflowTracking) -> dg.MaterializeResult:
    """Every evaluated variant side by side, one section per protocol: pooled LOSO macro F1
    with its CI, LOSO mean +- std, `stratified` and `holdout-106`, paired comparisons. The sweep
    summary names each model's best complete variant with its settings. Written as markdown,
    JSON and a plot, and logged to MLflow."""
    from ml_core import pipeline  # torch and MLflow: only when this step runs
    from ml_core.evaluation.leaderboard import leaderboard_rows, missing_folds, sweep_summary_lines

    result = pipeline.build_report(data_root.paths(), tracker=mlflow.tracker())
    sweep = result["board"]["sweep_summary"]
    gaps = missing_folds(result["board"])
    ranked_gaps = [g for g in gaps if g["rank"] is not None]
    check = dg.AssetCheckResult(
        check_name="every_fold_present",
        passed=not ranked_gaps,
        severity=dg.AssetCheckSeverity.WARN,
        description="; ".join(
            f"{g['variant']} ({g['protocol']}) has no {', '.join(g['missing_folds'])}"
            for g in ranked_gaps
        )
        or "every ranked variant has every fold",
        metadata={
            "missing": table(
                [g | {"missing_folds": ", ".join(g["missing_folds"])} for g in gaps],
                columns=["protocol", "variant", "rank", "missing_folds"],
            )
        },
    )
    return dg.MaterializeResult(
        metadata={
            # A table is shown inline on the asset page; markdown over 1,000 characters only
            # behind a "[Show Markdown]" button.
            "leaderboard": table(leaderboard_rows(result["board"])),
            "leaderboard_markdown": dg.MetadataValue.md(result["markdown"]),
            "sweep_summary": dg.MetadataValue.md(
                "\n".join(sweep_summary_lines(sweep)) if sweep else "_no complete LOSO entry yet_"
            ),
            "best_variants": dg.MetadataValue.json(
                {s["model"] + "/" + s["class_set"]: s["best_variant"] for s in sweep}
            ),
            "evaluated_fold_models": result["n_records"],
            "plot (image)": dg.MetadataValue.md(f"![leaderboard]({result['plot_data_uri']})"),
            "folder": dg.MetadataValue.path(result["folder"]),
            "mlflow_run": dg.MetadataValue.url(result["mlflow_url"]),
        },
        data_version=files_version([Path(result["folder"]) / "leaderboard.json"], result["folder"]),
        check_results=[check],
    )
