"""The data stages, one function each: read inputs, call the step, write outputs, report.

Ingest (parse, validate, impute) and prepare (shards, fold manifests, feature statistics). This
module imports no torch, scikit-learn or MLflow, so the Dagster steps that run it start fast;
only the tensor shard write and read load torch, inside `ml_core.io`. Every report is a plain
dict of small values (rows, paths, timings) fit for asset metadata.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl

from ml_core.data import folds as fold_lib
from ml_core.data.columns import ACTIVITY, ACTIVITY_NAMES, HEART_RATE, SESSION
from ml_core.data.impute import impute_recording
from ml_core.data.ingest import read_subject
from ml_core.io import replace_dir, staging_root, write_parquet
from ml_core.paths import DataPaths
from ml_core.data.schema import ValidationResult, drop_transient, nan_rates, validate_recording
from ml_core.data.shards import check_shard_rows, write_activity_shards
from ml_core.data.stats import compute_feature_stats, write_feature_stats


def _file_mb(path: Path) -> float:
    return round(path.stat().st_size / 1e6, 3)


def ingest_subject(paths: DataPaths, subject: int) -> dict[str, Any]:
    """Parse a subject's Protocol (+ Optional) files into the 56-field table."""
    started = time.perf_counter()
    frame = read_subject(paths, subject)
    target = write_parquet(frame, paths.table("raw_recording", subject))
    sessions = frame.group_by(SESSION).len().sort(SESSION)
    return {
        "rows": frame.height,
        "rows_by_session": dict(zip(sessions[SESSION], sessions["len"], strict=True)),
        "path": str(target),
        "size_mb": _file_mb(target),
        "seconds": round(time.perf_counter() - started, 3),
    }


def validate_subject(paths: DataPaths, subject: int) -> tuple[ValidationResult, dict[str, Any]]:
    """Validate the raw table; only a valid table (minus activity 0) replaces the old output."""
    started = time.perf_counter()
    frame = pl.read_parquet(paths.table("raw_recording", subject))
    result = validate_recording(frame)
    report: dict[str, Any] = {"rows_in": frame.height, "schema_failures": result.n_failures}
    if not result.passed:
        report["written"] = False
        return result, report
    kept = drop_transient(frame)
    target = write_parquet(kept, paths.table("validated_recording", subject))
    present = kept.group_by(ACTIVITY).len().sort(ACTIVITY)
    report |= {
        "written": True,
        "rows_kept": kept.height,
        "rows_dropped_activity_0": frame.height - kept.height,
        "activities": {
            ACTIVITY_NAMES[int(a)]: int(n)
            for a, n in zip(present[ACTIVITY], present["len"], strict=True)
        },
        "nan_rates": nan_rates(frame),
        "path": str(target),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return result, report


def impute_subject(paths: DataPaths, subject: int) -> dict[str, Any]:
    """Fill heart rate and short IMU packet gaps."""
    started = time.perf_counter()
    frame = pl.read_parquet(paths.table("validated_recording", subject))
    imputed, imputation = impute_recording(frame)
    target = write_parquet(imputed, paths.table("imputed_recording", subject))
    return {
        "rows": imputed.height,
        **asdict(imputation),
        "heart_rate_nan_after": imputed[HEART_RATE].is_nan().sum() / max(imputed.height, 1),
        "path": str(target),
        "seconds": round(time.perf_counter() - started, 3),
    }


def shard_subject(paths: DataPaths, subject: int) -> tuple[bool, str, dict[str, Any]]:
    """Write per-activity parquet and tensor shards into a staging folder, check that no row was
    lost or duplicated, and only then swap them in: a failed check keeps the previous shards."""
    started = time.perf_counter()
    frame = pl.read_parquet(paths.table("imputed_recording", subject))
    with staging_root(paths.root, f"shards-{subject}") as stage:
        staged = DataPaths(stage)
        report = write_activity_shards(frame, staged, subject)
        passed, message = check_shard_rows(frame, report)
        if passed:
            staged.shard_dir(subject).mkdir(parents=True, exist_ok=True)  # none when no rows
            replace_dir(staged.shard_dir(subject), paths.shard_dir(subject))
            replace_dir(staged.tensor_shard_dir(subject), paths.tensor_shard_dir(subject))
    summary = {
        "rows": frame.height,
        "shards": report.shards,
        "written": passed,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return passed, message, summary


def build_fold_manifests(paths: DataPaths, fold: str, window: int = 256) -> dict[str, Any]:
    """Write a fold's train/val/test manifests into a staging folder, check the manifests as
    written, and only then move them into place: a failed check keeps the previous manifests."""
    started = time.perf_counter()
    shards = fold_lib.load_shard_index(paths)
    if not shards:
        raise FileNotFoundError(
            f"no activity shards under {paths.root}: materialize activity_shards first"
        )
    ranges = fold_lib.build_fold(fold, shards, window=window)
    with staging_root(paths.root, f"fold-{fold}") as stage:
        staged = DataPaths(stage)
        report = fold_lib.write_manifests(staged, fold, ranges, window=window, shards=shards)
        written = fold_lib.read_fold(staged, fold)
        checks = {"no_overlap": fold_lib.check_no_overlap(written)}
        if fold == "stratified":
            checks["coverage_70_15_15"] = fold_lib.check_stratified_coverage(written, window=window)
        else:
            checks["subject_disjoint"] = fold_lib.check_subject_disjoint(written)
        passed = all(ok for ok, _ in checks.values())
        if passed:
            for split in fold_lib.SPLITS:
                target = paths.manifest(fold, split)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staged.manifest(fold, split), target)
                report.manifests[split] = str(target)
    return {
        "report": report,
        "checks": checks,
        "passed": passed,
        "seconds": round(time.perf_counter() - started, 3),
    }


def fold_feature_stats(paths: DataPaths, fold: str) -> dict[str, Any]:
    """Per-channel statistics from the fold's train rows only."""
    started = time.perf_counter()
    train_ranges = fold_lib.read_manifest(paths.manifest(fold, "train"))
    stats = compute_feature_stats(paths, train_ranges)
    target = paths.feature_stats(fold)
    write_feature_stats(stats, target)
    return {"stats": stats, "path": str(target), "seconds": round(time.perf_counter() - started, 3)}
