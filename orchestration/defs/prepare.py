"""Prepare stage: per-activity shards, evaluation folds and per-fold feature statistics."""

from collections.abc import Iterator

import dagster as dg

from ml_core.data import pipeline as data_pipeline
from ml_core.data.folds import SPLITS
from ml_core.data.shards import INDEX_NAME
from orchestration.code_versions import code_version
from orchestration.defs.automation import DATA_FLOW
from orchestration.defs.ingest import RECORDING_COLUMNS, imputed_recording
from orchestration.defs.partitions import fold_partitions, subject_partitions
from orchestration.defs.resources import DataRoot
from orchestration.metadata import files_version, raise_blocked, table


class FoldConfig(dg.Config):
    """Window length in samples: the gap left between a fold's train, val and test parts."""

    window: int = 256


@dg.asset(
    partitions_def=subject_partitions,
    group_name="prepare",
    kinds={"parquet", "pytorch"},
    deps=[imputed_recording],
    code_version=code_version(__file__, "activity_shards"),
    metadata={"dagster/column_schema": RECORDING_COLUMNS},
    automation_condition=DATA_FLOW,
    check_specs=[
        dg.AssetCheckSpec(
            "rows_conserved",
            asset="activity_shards",
            blocking=True,
            partitions_def=subject_partitions,
            description="Every imputed row is in exactly one shard: none lost, none duplicated.",
        )
    ],
)
def activity_shards(
    context: dg.AssetExecutionContext, data_root: DataRoot
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Per-subject, per-activity shards: `data/processed/subject_<id>/activity_<id>.parquet`
    (each under 20 MB, split into parts when larger) and float32 tensor shards of the model
    channels in `data/processed_tensors/subject_<id>/activity_<id>.pt`. They are written to a
    staging folder and swapped in only when `rows_conserved` passes."""
    subject = int(context.partition_key)
    paths = data_root.paths()
    passed, message, report = data_pipeline.shard_subject(paths, subject)
    check = dg.AssetCheckResult(
        check_name="rows_conserved", passed=passed, metadata={"detail": message}
    )
    if not passed:
        yield check
        raise_blocked(check, f"subject {subject}: {message}")
    rows = [
        {"activity": s["activity"], "rows": s["rows"], "tensor": s["tensor"]}
        for s in report["shards"]
    ]
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": report["rows"],
            "shards": table(rows),
            "n_shards": len(rows),
            "seconds": report["seconds"],
        },
        check_results=[check],
        # The parquet shards hold the tensors' rows; a tensor file's bytes vary between saves.
        data_version=files_version(
            [
                *paths.shard_dir(subject).glob("activity_*.parquet"),
                paths.tensor_shard_dir(subject) / INDEX_NAME,
            ],
            paths.root,
        ),
    )


@dg.asset(
    partitions_def=fold_partitions,
    group_name="prepare",
    kinds={"text"},
    deps=[dg.AssetDep(activity_shards, partition_mapping=dg.AllPartitionMapping())],
    code_version=code_version(__file__, "fold_manifests"),
    automation_condition=DATA_FLOW,
    check_specs=[
        dg.AssetCheckSpec(
            "split_integrity",
            asset="fold_manifests",
            blocking=True,
            partitions_def=fold_partitions,
            description="No overlapping ranges; exact 70/15/15 coverage for `stratified`; "
            "subject-disjoint splits for holdout and LOSO folds.",
        )
    ],
)
def fold_manifests(
    context: dg.AssetExecutionContext, config: FoldConfig, data_root: DataRoot
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """A fold's `train.txt`, `val.txt` and `test.txt`: one `path,start,end` line per shard range.
    `stratified` splits every shard 70/15/15 in time; `holdout-106` validates on 105 and tests
    on 106; `loso-1NN` tests on subject 1NN and validates on two other held-out subjects.
    Written to a staging folder and moved into place only when `split_integrity` passes."""
    fold = context.partition_key
    paths = data_root.paths()
    result = data_pipeline.build_fold_manifests(paths, fold, window=config.window)
    report = result["report"]
    checks = result["checks"]
    check = dg.AssetCheckResult(
        check_name="split_integrity",
        passed=result["passed"],
        metadata={name: msg for name, (_, msg) in checks.items()},
    )
    if not result["passed"]:
        yield check
        failed = "; ".join(msg for ok, msg in checks.values() if not ok)
        raise_blocked(check, f"fold {fold}: {failed}")
    for note in report.notes:
        context.log.warning(note if note.startswith(f"{fold}:") else f"{fold}: {note}")
    split_rows = [
        {
            "split": split,
            "rows": report.rows[split],
            "windows": report.windows[split],
            "subjects": ", ".join(str(s) for s in report.subjects[split]),
            "activities": len(report.activities[split]),
        }
        for split in report.rows
    ]
    yield dg.MaterializeResult(
        metadata={
            "splits": table(split_rows),
            "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in report.notes) or "_none_"),
            "folder": dg.MetadataValue.path(str(paths.fold_dir(fold))),
            "seconds": result["seconds"],
        },
        check_results=[check],
        data_version=files_version([paths.manifest(fold, s) for s in SPLITS], paths.root),
    )


@dg.asset(
    partitions_def=fold_partitions,
    group_name="prepare",
    kinds={"json"},
    deps=[
        fold_manifests,
        # It reads the tensor shards of the fold's train ranges.
        dg.AssetDep(activity_shards, partition_mapping=dg.AllPartitionMapping()),
    ],
    code_version=code_version(__file__, "feature_stats"),
    automation_condition=DATA_FLOW,
)
def feature_stats(context: dg.AssetExecutionContext, data_root: DataRoot) -> dg.MaterializeResult:
    """Per-channel transform, mean and standard deviation computed by streaming over the fold's
    train rows only: validation and test rows are never read."""
    result = data_pipeline.fold_feature_stats(data_root.paths(), context.partition_key)
    stats = result["stats"]
    rows = [
        {"channel": name, "mean": f["mean"], "std": f["std"], "nan_fraction": f["nan_fraction"]}
        for name, f in stats["per_feature"].items()
    ]
    return dg.MaterializeResult(
        metadata={
            "train_rows": stats["train_rows"],
            "per_feature": table(rows),
            "path": dg.MetadataValue.path(result["path"]),
            "seconds": result["seconds"],
        },
        data_version=files_version([result["path"]], data_root.paths().root),
    )
