"""Jobs per stage, the scheduled fold backfill, and the sensor that watches raw `.dat` files."""

import json

import dagster as dg

from ml_core.raw_files import changed_subjects, raw_file_fingerprints, subject_fingerprint
from orchestration.defs.partitions import fold_model_partitions
from orchestration.defs.resources import DataRoot

observe_job = dg.define_asset_job(
    "observe_raw_files",
    selection=dg.AssetSelection.assets("raw_files"),
    description="Record each subject's raw-file fingerprint: a changed file makes its subject "
    "stale.",
)
ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingest") | dg.AssetSelection.assets("activity_shards"),
    description="Parse, validate, impute and shard one subject.",
)
prepare_job = dg.define_asset_job(
    "prepare_job",
    selection=dg.AssetSelection.assets("fold_manifests", "feature_stats"),
    description="Build one fold's manifests and feature statistics.",
)
training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets("trained_model", "evaluation_bundle"),
    description="Train and evaluate one fold x model.",
)
report_job = dg.define_asset_job(
    "report_job",
    selection=dg.AssetSelection.assets("leaderboard"),
    description="Rebuild the leaderboard from every evaluation bundle.",
)


@dg.schedule(
    job=training_job,
    cron_schedule="0 2 * * 0",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Weekly backfill of every fold x variant partition (every registered variant) "
    "of the training job.",
)
def fold_backfill_schedule(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
    tick = (
        context.scheduled_execution_time.isoformat()
        if context.scheduled_execution_time
        else "manual"
    )
    return [
        dg.RunRequest(run_key=f"{key}@{tick}", partition_key=key)
        for key in fold_model_partitions.get_partition_keys(
            dynamic_partitions_store=context.instance
        )
    ]


@dg.sensor(
    job=ingest_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Requests the subject partitions whose raw `.dat` files are new or changed.",
)
def raw_files_sensor(context: dg.SensorEvaluationContext, data_root: DataRoot) -> dg.SensorResult:
    previous = json.loads(context.cursor) if context.cursor else {}
    current = raw_file_fingerprints(data_root.paths())
    subjects = changed_subjects(previous, current)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                run_key=f"{subject}:{subject_fingerprint(current, subject)}",
                partition_key=str(subject),
            )
            for subject in subjects
        ],
        cursor=json.dumps(current, sort_keys=True),
    )
