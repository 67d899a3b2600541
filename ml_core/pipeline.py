"""One function per pipeline stage: read inputs, call the step, write outputs, return a report.

The Dagster assets are thin wrappers over these; a notebook or script can call them directly.
Every report is a plain dict of small values (rows, paths, timings) fit for asset metadata.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from ml_core import folds as fold_lib
from ml_core.columns import ACTIVITY, ACTIVITY_NAMES, HEART_RATE, MODEL_CHANNELS, SESSION
from ml_core.evaluate import check_bundle_complete, write_evaluation_bundle
from ml_core.impute import impute_recording
from ml_core.ingest import read_subject
from ml_core.io import write_json, write_parquet
from ml_core.leaderboard import build_leaderboard, write_leaderboard
from ml_core.models import get_spec
from ml_core.paths import DataPaths
from ml_core.schema import ValidationResult, drop_transient, nan_rates, validate_recording
from ml_core.serving import SensorWindowClassifier
from ml_core.shards import check_shard_rows, write_activity_shards
from ml_core.stats import compute_feature_stats, load_feature_stats, write_feature_stats
from ml_core.tracking import MlflowTracker, fold_datasets
from ml_core.train import TrainConfig, TrainResult, load_trained_model, predict_proba, train_model
from ml_core.windows import WindowConfig, WindowData


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
    """Write per-activity parquet and tensor shards; check that no row was lost or duplicated."""
    started = time.perf_counter()
    frame = pl.read_parquet(paths.table("imputed_recording", subject))
    report = write_activity_shards(frame, paths, subject)
    passed, message = check_shard_rows(frame, report)
    summary = {
        "rows": frame.height,
        "shards": report.shards,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return passed, message, summary


def build_fold_manifests(paths: DataPaths, fold: str, window: int = 256) -> dict[str, Any]:
    """Write a fold's train/val/test manifests from the shard indexes, then check them."""
    started = time.perf_counter()
    shards = fold_lib.load_shard_index(paths)
    if not shards:
        raise FileNotFoundError(
            f"no activity shards under {paths.root}: materialize activity_shards first"
        )
    ranges = fold_lib.build_fold(fold, shards, window=window)
    report = fold_lib.write_manifests(paths, fold, ranges, window=window, shards=shards)
    checks = {"no_overlap": fold_lib.check_no_overlap(ranges)}
    if fold == "stratified":
        checks["coverage_70_15_15"] = fold_lib.check_stratified_coverage(ranges, window=window)
    else:
        checks["subject_disjoint"] = fold_lib.check_subject_disjoint(ranges)
    return {
        "report": report,
        "checks": checks,
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


# --- train, evaluate, report -------------------------------------------------------------------


def make_train_config(values: dict[str, Any]) -> TrainConfig:
    """A TrainConfig from flat settings (window fields beside the training ones)."""
    values = dict(values)
    window = {
        k: values.pop(k) for k in ("window", "stride", "decimate", "class_set") if k in values
    }
    values.pop("resume", None)
    return TrainConfig(**values, window=WindowConfig(**window))


def _run_record(model_dir: Path) -> Path:
    return model_dir / "mlflow_run.json"


def train_fold_model(
    paths: DataPaths,
    fold: str,
    model_name: str,
    config: TrainConfig,
    tracker: MlflowTracker | None = None,
    tags: dict[str, str] | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train one model on one fold, logging params, per-epoch metrics and artifacts to MLflow.

    A resumed training reopens the MLflow run it started, so a retried step keeps one run.
    """
    started = time.perf_counter()
    model_dir = paths.model_dir(fold, model_name)
    if tracker is None:
        result = train_model(model_name, paths, fold, config, model_dir, on_epoch, resume)
        return _train_summary(result, started, run_id=None, url=None)

    previous = _run_record(model_dir)
    run_id = None
    if resume and previous.exists():
        candidate = json.loads(previous.read_text())["run_id"]
        run_id = candidate if tracker.run_exists(candidate) else None
    with tracker.run(f"{fold}/{model_name}", tags or {}, run_id=run_id) as active_id:
        write_json({"run_id": active_id, "tracking_uri": tracker.tracking_uri}, previous)
        if run_id is None:
            tracker.log_params({"model": model_name, "fold": fold, **config.to_dict()})
            tracker.log_datasets(fold_datasets(paths, fold))

        def log_epoch(record: dict[str, Any]) -> None:
            tracker.log_metrics(
                {k: v for k, v in record.items() if k != "epoch" and isinstance(v, int | float)},
                step=int(record["epoch"]),
            )
            if on_epoch is not None:
                on_epoch(record)

        result = train_model(model_name, paths, fold, config, model_dir, log_epoch, resume)
        tracker.log_metrics(
            {
                "best_val_macro_f1": result.best_metric,
                "majority_baseline_accuracy": result.majority_baseline_accuracy,
            }
        )
        for path in (result.best_path, result.last_path, result.history_path):
            tracker.log_artifact(path, artifact_path="checkpoints")
        if get_spec(model_name).kind == "torch":
            _log_torch_model(
                result.best_path, load_feature_stats(paths.feature_stats(fold)), config
            )
        return _train_summary(result, started, active_id, tracker.run_url(active_id))


def _log_torch_model(best_path: Path, stats: dict[str, Any], config: TrainConfig) -> None:
    """Log the best model as an MLflow PyTorch model that takes raw sensor windows."""
    import mlflow.pytorch

    model, _ = load_trained_model(best_path)
    serving = SensorWindowClassifier(model, stats)
    # Two windows: MLflow's torch.export would pin a batch dimension of size 1.
    example = np.zeros((2, config.window.window, len(MODEL_CHANNELS)), dtype=np.float32)
    mlflow.pytorch.log_model(
        serving,
        name="model",
        input_example=example,
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
    )


def _train_summary(
    result: TrainResult, started: float, run_id: str | None, url: str | None
) -> dict[str, Any]:
    best = max(result.history, key=lambda r: r["val_macro_f1"]) if result.history else {}
    return {
        "best_val_macro_f1": result.best_metric,
        "val_accuracy": best.get("val_accuracy", float("nan")),
        "majority_baseline_accuracy": result.majority_baseline_accuracy,
        "epochs": result.epochs_run,
        "stopped_early": result.stopped_early,
        "train_windows": sum(result.class_counts["train"].values()),
        "history": result.history,
        "best_path": str(result.best_path),
        "seconds": round(time.perf_counter() - started, 2),
        "mlflow_run_id": run_id or "",
        "mlflow_url": url or "",
    }


def evaluate_fold_model(
    paths: DataPaths,
    fold: str,
    model_name: str,
    tracker: MlflowTracker | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate the best checkpoint on the fold's test windows and write the bundle.

    Temperature scaling is fitted on the validation windows. The bundle goes to the MLflow
    run that trained the model when it is in this tracking store, otherwise to a new run.
    """
    model_dir = paths.model_dir(fold, model_name)
    model, ckpt = load_trained_model(model_dir / "best.pt")
    stats = load_feature_stats(paths.feature_stats(fold))
    window = WindowConfig(**ckpt["train_config"]["window"])
    test = WindowData.from_fold(paths, fold, "test", stats, window)
    val = WindowData.from_fold(paths, fold, "val", stats, window)
    if len(test) == 0:
        raise ValueError(f"fold {fold}: the test split has no windows of {window.class_set}")
    probs, y = predict_proba(model, test)
    val_probs, val_y = predict_proba(model, val)
    class_ids = list(ckpt["class_ids"])
    notes = []
    present = sorted({class_ids[i] for i in np.unique(y)})
    if len(present) < len(class_ids):
        names = ", ".join(ACTIVITY_NAMES[a] for a in present)
        notes.append(
            f"test set holds {len(present)} of {len(class_ids)} classes ({names}); "
            "macro F1 is over the classes present in labels or predictions"
        )
    out_dir = paths.evaluation_dir(fold, model_name)
    summary = write_evaluation_bundle(
        out_dir,
        y,
        probs,
        class_ids,
        title=f"{fold} / {model_name}",
        val_logits=np.log(np.clip(val_probs, 1e-12, 1.0)),
        val_y=val_y,
    )
    _, missing = check_bundle_complete(out_dir)
    calibration = summary["calibration"]
    result: dict[str, Any] = {
        "summary": summary,
        "notes": notes,
        "ece_before": calibration["ece_before"],
        "ece_after": calibration.get("ece_after"),
        "confusion_rows": pl.read_csv(out_dir / "confusion_matrix.csv").to_dicts(),
        "confusion_png": _png_data_uri(out_dir / "confusion_matrix.png"),
        "folder": str(out_dir),
        "missing_files": missing,
        "mlflow_url": "",
    }
    if tracker is not None:
        record = _run_record(model_dir)
        run_id = json.loads(record.read_text())["run_id"] if record.exists() else None
        if run_id is not None and not tracker.run_exists(run_id):
            run_id = None
        with tracker.run(f"{fold}/{model_name}", tags or {}, run_id=run_id) as active_id:
            tracker.log_metrics(
                {
                    f"test_{k}": summary[k]
                    for k in ("accuracy", "macro_f1", "weighted_f1", "balanced_accuracy")
                }
            )
            tracker.log_artifacts(out_dir, artifact_path="evaluation")
            result["mlflow_url"] = tracker.run_url(active_id)
    return result


def _png_data_uri(path: Path) -> str:
    """A PNG inlined as a data URI, so the Dagster UI can show it as a markdown image."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def build_report(paths: DataPaths, tracker: MlflowTracker | None = None) -> dict[str, Any]:
    """Collect every evaluation bundle's test metrics into the leaderboard files."""
    records = []
    for summary_path in sorted(paths.root.glob("evaluation/*/*/summary_metrics.json")):
        summary = json.loads(summary_path.read_text())
        records.append(
            {
                "fold": summary_path.parent.parent.name,
                "model": summary_path.parent.name,
                "macro_f1": summary["macro_f1"],
                "accuracy": summary["accuracy"],
            }
        )
    board = build_leaderboard(records)
    synthetic = paths.synthetic_marker.exists()
    title = "PAMAP2 leaderboard" + (" (synthetic data)" if synthetic else "")
    files = write_leaderboard(board, paths.reports, title)
    markdown = files["markdown"].read_text()
    plot_uri = _png_data_uri(files["plot"])
    url = ""
    if tracker is not None:
        with tracker.run("leaderboard", {"asset": "leaderboard"}) as run_id:
            tracker.log_artifacts(paths.reports, artifact_path="leaderboard")
            url = tracker.run_url(run_id)
    return {
        "board": board,
        "markdown": markdown,
        "n_records": len(records),
        "plot_data_uri": plot_uri,
        "folder": str(paths.reports),
        "mlflow_url": url,
    }
