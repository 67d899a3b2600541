"""Serve stage: the registered champion over whole recordings and over new inbox files."""

import json
from typing import Literal

import dagster as dg

from orchestration.code_versions import code_version
from orchestration.defs.champion import champion_model
from orchestration.defs.ingest import raw_recording
from orchestration.defs.partitions import subject_partitions
from orchestration.defs.resources import DataRoot, MlflowTracking
from orchestration.metadata import png_markdown

inbox_partitions = dg.DynamicPartitionsDefinition(name="inbox_recordings")


class TimelineConfig(dg.Config):
    """Which registered model version to run (by alias) and how to smooth its predictions."""

    alias: str = "champion"
    smoothing: Literal["hmm", "median", "none"] = "hmm"


def _metadata(report: dict) -> dict[str, dg.MetadataValue | float | int | str | None]:
    return {
        "windows": report["windows"],
        "labelled_windows": report["labelled_windows"],
        "macro_f1_raw": report["macro_f1_raw"],
        "macro_f1_smoothed": report["macro_f1_smoothed"],
        "smoothing_change_macro_f1": report["smoothing_change"],
        "smoothing": report["smoothing"],
        "model": report["model"],
        "protocol": report["protocol"],
        "predictions": dg.MetadataValue.path(report["parquet"]),
        "timeline (image)": png_markdown(report["plot"], "timeline"),
    }


@dg.asset(
    partitions_def=subject_partitions,
    group_name="serve",
    kinds={"mlflow", "matplotlib"},
    deps=[raw_recording, champion_model],
    code_version=code_version(__file__, "activity_timeline"),
)
def activity_timeline(
    context: dg.AssetExecutionContext,
    config: TimelineConfig,
    data_root: DataRoot,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """The registered champion (loaded from the MLflow Model Registry by alias) over a
    subject's whole recordings (Protocol and Optional, transients included): sliding-window
    predictions with probabilities, temporally smoothed, as `timeline.parquet` and a timeline
    plot against the labels, with macro F1 before and after smoothing."""
    import polars as pl

    from ml_core.lifecycle.timeline import load_registered_model, run_timeline

    paths = data_root.paths()
    subject = int(context.partition_key)
    recording = pl.read_parquet(paths.table("raw_recording", subject))
    model = load_registered_model(mlflow.tracker().tracking_uri, alias=config.alias)
    report = run_timeline(
        recording,
        model,
        paths.timeline_dir(f"subject_{subject}"),
        f"subject {subject}",
        config.smoothing,
    )
    return dg.MaterializeResult(metadata=_metadata(report))


@dg.asset(
    partitions_def=inbox_partitions,
    group_name="serve",
    kinds={"mlflow", "matplotlib"},
    deps=[champion_model],
    code_version=code_version(__file__, "inbox_timeline"),
)
def inbox_timeline(
    context: dg.AssetExecutionContext,
    config: TimelineConfig,
    data_root: DataRoot,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """The registered champion over one new `.dat` recording dropped into `data/inbox/`
    (partition = file name without `.dat`). A malformed file fails only its own partition,
    naming the file and line; an earlier good timeline is never overwritten by a failure."""
    import polars as pl

    from ml_core.data.columns import SESSION
    from ml_core.data.ingest import read_dat
    from ml_core.lifecycle.timeline import check_inbox_name, load_registered_model, run_timeline

    paths = data_root.paths()
    name = check_inbox_name(context.partition_key)  # a key added by hand never leaves the inbox
    frame = read_dat(paths.inbox / f"{name}.dat", subject=0, session="protocol")
    recording = frame.with_columns(pl.lit("inbox").alias(SESSION))
    model = load_registered_model(mlflow.tracker().tracking_uri, alias=config.alias)
    report = run_timeline(
        recording, model, paths.timeline_dir(f"inbox_{name}"), f"inbox {name}", config.smoothing
    )
    return dg.MaterializeResult(metadata=_metadata(report))


serve_job = dg.define_asset_job(
    "serve_job",
    selection=dg.AssetSelection.assets(activity_timeline),
    description="The champion's activity timeline for a subject's recordings.",
)
inbox_job = dg.define_asset_job(
    "inbox_job",
    selection=dg.AssetSelection.assets(inbox_timeline),
    description="The champion's activity timeline for one inbox recording.",
)


@dg.sensor(
    job=inbox_job,
    default_status=dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds=30,
)
def inbox_sensor(context: dg.SensorEvaluationContext, data_root: DataRoot) -> dg.SensorResult:
    """Registers each new or changed `.dat` file in `data/inbox/` as an `inbox_timeline`
    partition and requests its run (cursor: file sizes and modification times). Stopped until
    a user turns it on. Files whose name is not a safe partition key are skipped and logged."""
    from ml_core.lifecycle.timeline import inbox_recordings

    found, skipped = inbox_recordings(data_root.paths().inbox)
    if skipped:
        context.log.warning(
            f"skipped {len(skipped)} inbox file(s) whose name is not allowed (use ASCII "
            f"letters, digits, '.', '_', '-'): {', '.join(skipped)}"
        )
    seen: dict[str, list[float]] = json.loads(context.cursor) if context.cursor else {}
    current = {name: list(stamp) for name, stamp in found.items()}
    changed = [name for name, stamp in current.items() if seen.get(name) != stamp]
    known = set(context.instance.get_dynamic_partitions(inbox_partitions.name or ""))
    new = [name for name in changed if name not in known]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=name, run_key=f"{name}:{current[name]}") for name in changed
        ],
        dynamic_partitions_requests=[inbox_partitions.build_add_request(new)] if new else [],
        cursor=json.dumps(current),
    )
