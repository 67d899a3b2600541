"""Ingest stage: raw `.dat` files to validated, imputed per-subject tables."""

from collections.abc import Iterator

import dagster as dg

from ml_core.data import pipeline as data_pipeline
from ml_core.data.raw_files import raw_file_fingerprints, subject_fingerprint, subject_of
from ml_core.data.schema import RECORDING_SCHEMA
from ml_core.paths import DataPaths
from orchestration.code_versions import code_version
from orchestration.defs.automation import DATA_FLOW
from orchestration.defs.partitions import subject_partitions
from orchestration.defs.resources import DataRoot
from orchestration.metadata import column_schema, files_version, raise_blocked, table

# Every per-subject table (raw, validated, imputed, and the activity shards) has the 56 fields of
# the pandera schema; the asset page lists them with their types and checks.
RECORDING_COLUMNS = column_schema(RECORDING_SCHEMA)


def _subject(context: dg.AssetExecutionContext) -> int:
    return int(context.partition_key)


# Where Dagster reads an event's data version (what `DataVersion` sets on the events it records
# itself): the sensor below records the raw files' events without a run.
DATA_VERSION_TAG = "dagster/data_version"

raw_files = dg.AssetSpec(
    "raw_files",
    partitions_def=subject_partitions,
    group_name="ingest",
    kinds={"file"},
    description="A subject's `.dat` files under `data/raw/PAMAP2_Dataset/{Protocol,Optional}/`, "
    "with one data version per subject (file sizes and modification times): a new or changed "
    "file makes that subject's `raw_recording` stale. Recorded by `raw_files_sensor` (and "
    "`pamap demo`) only for a subject whose files changed.",
)


def _recorded_version(instance: dg.DagsterInstance, subject: str) -> str | None:
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=raw_files.key, asset_partitions=[subject]), limit=1
    ).records
    observation = records[0].asset_observation if records else None
    return observation.tags.get(DATA_VERSION_TAG) if observation else None


def raw_file_events(
    instance: dg.DagsterInstance, paths: DataPaths
) -> list[dg.AssetMaterialization | dg.AssetObservation]:
    """For each subject whose files differ from what the instance last recorded (a new subject,
    a new or changed file), its new data version: as a materialization, which declarative
    automation reads for an external asset, and as an observation, which staleness reads.
    Nothing for the other subjects.

    The observation comes first: a run records the input's latest materialization as the point
    after which a newer observation makes it stale."""
    current = raw_file_fingerprints(paths)
    events: list[dg.AssetMaterialization | dg.AssetObservation] = []
    for subject in sorted({subject_of(name) for name in current}):
        version = subject_fingerprint(current, subject)
        if _recorded_version(instance, str(subject)) == version:
            continue
        files = sorted(name for name in current if subject_of(name) == subject)
        for event in (dg.AssetObservation, dg.AssetMaterialization):
            events.append(
                event(
                    raw_files.key,
                    partition=str(subject),
                    tags={DATA_VERSION_TAG: version},
                    metadata={"files": dg.MetadataValue.json(files)},
                )
            )
    return events


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
)
def raw_files_sensor(
    context: dg.SensorEvaluationContext, data_root: DataRoot
) -> dg.SensorResult | dg.SkipReason:
    """Every minute, compares each subject's raw files (sizes and modification times) with the
    data version last recorded and records the new one for each subject that changed: no run,
    and nothing for unchanged subjects. A new data version is what
    `data_automation` turns into runs."""
    events = raw_file_events(context.instance, data_root.paths())
    if not events:
        return dg.SkipReason("no subject's raw files changed")
    changed = ", ".join(sorted({str(e.partition) for e in events}))
    context.log.info(f"raw files changed for subject(s) {changed}")
    return dg.SensorResult(asset_events=events)


@dg.asset(
    partitions_def=subject_partitions,
    group_name="ingest",
    kinds={"polars", "parquet"},
    deps=[raw_files],
    code_version=code_version(__file__, "raw_recording"),
    metadata={"dagster/column_schema": RECORDING_COLUMNS},
    automation_condition=DATA_FLOW,
)
def raw_recording(context: dg.AssetExecutionContext, data_root: DataRoot) -> dg.MaterializeResult:
    """A subject's Protocol (and, when present, Optional) `.dat` files parsed into the 56-field
    table: 54 file columns plus `subject_id` and `session`. Malformed rows fail this partition
    with the file, line and field named."""
    report = data_pipeline.ingest_subject(data_root.paths(), _subject(context))
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": report["rows"],
            "rows_by_session": dg.MetadataValue.json(report["rows_by_session"]),
            "path": dg.MetadataValue.path(report["path"]),
            "size_mb": report["size_mb"],
            "parse_seconds": report["seconds"],
        },
        data_version=files_version([report["path"]], data_root.paths().root),
    )


@dg.asset(
    partitions_def=subject_partitions,
    group_name="ingest",
    kinds={"pandera", "parquet"},
    deps=[raw_recording],
    code_version=code_version(__file__, "validated_recording"),
    metadata={"dagster/column_schema": RECORDING_COLUMNS},
    automation_condition=DATA_FLOW,
    check_specs=[
        dg.AssetCheckSpec(
            "schema",
            asset="validated_recording",
            blocking=True,
            partitions_def=subject_partitions,
            description="All 56 fields have the right types, physical ranges and known ids.",
        )
    ],
)
def validated_recording(
    context: dg.AssetExecutionContext, data_root: DataRoot
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """The raw table checked against a pandera schema of all 56 fields (types, physical ranges,
    known activity ids), with activity 0 (transient) dropped. A failed check blocks everything
    downstream, records no materialization and leaves the previous good table in place."""
    result, report = data_pipeline.validate_subject(data_root.paths(), _subject(context))
    check = dg.AssetCheckResult(
        check_name="schema",
        passed=result.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "failures": result.n_failures,
            "failure_cases": table(
                result.failure_cases.head(20).to_dicts(),
                columns=result.failure_cases.columns,
            ),
        },
    )
    if not result.passed:
        yield check
        raise_blocked(check, f"subject {_subject(context)}: {result.n_failures} schema failures")
    nan_rows = [{"sensor": k, "nan_rate": v} for k, v in report["nan_rates"].items()]
    yield dg.MaterializeResult(
        metadata={
            "dagster/row_count": report["rows_kept"],
            "rows_dropped_activity_0": report["rows_dropped_activity_0"],
            "activities": dg.MetadataValue.json(report["activities"]),
            "nan_rates": table(nan_rows),
            "path": dg.MetadataValue.path(report["path"]),
            "seconds": report["seconds"],
        },
        check_results=[check],
        data_version=files_version([report["path"]], data_root.paths().root),
    )


@dg.asset(
    partitions_def=subject_partitions,
    group_name="ingest",
    kinds={"polars", "parquet"},
    deps=[validated_recording],
    code_version=code_version(__file__, "imputed_recording"),
    metadata={"dagster/column_schema": RECORDING_COLUMNS},
    automation_condition=DATA_FLOW,
)
def imputed_recording(
    context: dg.AssetExecutionContext, data_root: DataRoot
) -> dg.MaterializeResult:
    """Heart rate forward/back-filled per subject and session then smoothed with a 25-sample
    rolling median; short IMU packet gaps interpolated inside contiguous segments, long gaps
    left missing and counted."""
    report = data_pipeline.impute_subject(data_root.paths(), _subject(context))
    path = report.pop("path")
    rows = report.pop("rows")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": rows,
            "path": dg.MetadataValue.path(path),
            "imputation": dg.MetadataValue.json(report),
        },
        data_version=files_version([path], data_root.paths().root),
    )
