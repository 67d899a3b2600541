"""The train, evaluate and report stages, one function each: read inputs, call the step,
write outputs, return a report. The data stages (ingest, prepare) are in `ml_core.data.pipeline`,
which imports none of torch, scikit-learn and MLflow that these need.

The Dagster assets are thin wrappers over these; a notebook or script can call them directly.
Every report is a plain dict of small values (rows, paths, timings) fit for asset metadata.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Generator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from ml_core.data import folds as fold_lib
from ml_core.data.columns import ACTIVITY_NAMES
from ml_core.data.stats import load_feature_stats
from ml_core.data.windows import WindowData
from ml_core.evaluation.calibration import calibration_groups
from ml_core.evaluation.evaluate import (
    check_bundle_complete,
    read_predictions,
    write_evaluation_bundle,
)
from ml_core.evaluation.leaderboard import (
    Result,
    build_leaderboard,
    leaderboard_tracking,
    write_leaderboard,
)
from ml_core.evaluation.protocol import (
    EvaluationProtocol,
    LegacyProtocolError,
    read_latest_training,
    write_latest_training,
)
from ml_core.io import partition_lock, replace_dir, staging_root, write_json
from ml_core.lifecycle.tracking import (
    PLATFORM,
    PLATFORM_TAG,
    MlflowTracker,
    fold_datasets,
)
from ml_core.lifecycle.uris import safe_uri
from ml_core.paths import DataPaths
from ml_core.training.config import TrainConfig
from ml_core.training.train import TrainResult, load_trained_model, predict_proba, train_model


def threads_per_slot(slots: int, cores: int | None = None) -> int:
    """torch threads for one training when `slots` trainings may run at once on this machine:
    its cores (those this process may use) divided among them, at least one, so N concurrent
    trainings do not each spin a thread per core."""
    cores = cores if cores is not None else len(os.sched_getaffinity(0))
    return max(1, cores // max(1, slots))


@contextmanager
def _restore_threads(count: int) -> Generator[None]:
    try:
        yield
    finally:
        torch.set_num_threads(count)


def _run_record(model_dir: Path) -> Path:
    return model_dir / "mlflow_run.json"


def fold_split_gap(paths: DataPaths, fold: str) -> int | None:
    """The fewest rows a fold's manifests leave between two parts of one recording that go to
    different splits (the stratified cut's gap); None when no shard is shared by two splits."""
    by_shard: dict[str, list[tuple[int, int, str]]] = {}
    for split, ranges in fold_lib.read_fold(paths, fold).items():
        for r in ranges:
            by_shard.setdefault(r.path, []).append((r.start, r.end, split))
    gaps = [
        b[0] - a[1]
        for parts in by_shard.values()
        for a, b in zip(sorted(parts), sorted(parts)[1:], strict=False)
        if a[2] != b[2]
    ]
    return min(gaps) if gaps else None


def check_fold_window(paths: DataPaths, fold: str, config: TrainConfig) -> None:
    """Refuse a window longer than the gap the fold's manifests leave between train, val and
    test (fold_manifests' `window`): its windows would start right beside the next split."""
    w = config.window
    rows = w.window * w.decimate
    gap = fold_split_gap(paths, fold)
    if gap is not None and gap < rows:
        raise ValueError(
            f"fold {fold}: its manifests leave {gap} rows between the train, val and test parts "
            f"of a recording, less than one window of this run ({w.window} samples x decimate "
            f"{w.decimate} = {rows} rows); rebuild fold_manifests[{fold}] with config "
            f"window: {rows} (or more)"
        )


def train_fold_model(
    paths: DataPaths,
    fold: str,
    model_name: str,
    config: TrainConfig,
    tracker: MlflowTracker | None = None,
    tags: dict[str, str] | None = None,
    resume: bool = False,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    seeds: int = 1,
    variant: str | None = None,
    variant_settings: dict[str, Any] | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Train `model_name` on one fold with `seeds` seeds (config.seed, config.seed + 1, …).

    `variant` (default: the model's name, its built-in variant) names the results: each seed
    trains into `models/<fold>/<variant>/<protocol id>/seed-<seed>/` and logs to its own MLflow
    run tagged with the variant, so another variant or a run under another protocol is stored
    beside earlier ones, never over them. `variant_settings` (the variant's overrides) are
    recorded with it. `latest.json` beside the protocol folders tells the evaluation what was
    trained. A resumed training reopens the MLflow run it started, so a retried step keeps one
    run. `threads` caps torch's CPU threads while it trains (see `threads_per_slot`).
    """
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    variant = variant or model_name
    record = {"name": variant, "model": model_name, "settings": dict(variant_settings or {})}
    check_fold_window(paths, fold, config)
    started = time.perf_counter()
    protocol = EvaluationProtocol.of(config)
    seed_list = [config.seed + i for i in range(seeds)]
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    with partition_lock(paths.root, f"models/{fold}/{variant}"), _restore_threads(before):
        per_seed = [
            _train_one_seed(
                paths,
                fold,
                record,
                replace(config, seed=seed),
                protocol,
                tracker,
                tags,
                resume,
                on_epoch,
            )
            for seed in seed_list
        ]
        write_latest_training(paths.model_root(fold, variant), protocol, seed_list, record)
    first = per_seed[0]
    return {
        **first,
        "best_val_macro_f1": float(np.mean([s["best_val_macro_f1"] for s in per_seed])),
        "protocol": protocol.to_dict(),
        "seeds": seed_list,
        "per_seed": per_seed,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _train_one_seed(
    paths: DataPaths,
    fold: str,
    variant: dict[str, Any],
    config: TrainConfig,
    protocol: EvaluationProtocol,
    tracker: MlflowTracker | None,
    tags: dict[str, str] | None,
    resume: bool,
    on_epoch: Callable[[dict[str, Any]], None] | None,
) -> dict[str, Any]:
    started = time.perf_counter()
    model_name, name = variant["model"], variant["name"]
    model_dir = paths.model_dir(fold, name, protocol.id, config.seed)
    if tracker is None:
        result = train_model(model_name, paths, fold, config, model_dir, on_epoch, resume)
        return {**_train_summary(result, started, run_id=None, url=None), "seed": config.seed}

    previous = _run_record(model_dir)
    run_id = None
    if resume and previous.exists():
        candidate = json.loads(previous.read_text())["run_id"]
        run_id = candidate if tracker.run_exists(candidate) else None
    run_tags = {
        **(tags or {}),
        "variant": name,
        "model": model_name,
        "protocol_id": protocol.id,
        "seed": str(config.seed),
    }
    with tracker.run(_run_name(fold, name, protocol, config.seed), run_tags, run_id) as rid:
        write_json({"run_id": rid, "tracking_uri": safe_uri(tracker.tracking_uri)}, previous)
        if run_id is None:
            tracker.log_params(
                {
                    "variant": name,
                    "variant_settings": json.dumps(variant["settings"], sort_keys=True),
                    "model": model_name,
                    "fold": fold,
                    **config.to_dict(),
                    **protocol.to_params(),
                }
            )
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
        return {**_train_summary(result, started, rid, tracker.run_url(rid)), "seed": config.seed}


def _run_name(fold: str, variant: str, protocol: EvaluationProtocol, seed: int) -> str:
    return f"{fold}/{variant}/{protocol.id}/seed-{seed}"


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
    variant: str,
    tracker: MlflowTracker | None = None,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Evaluate the latest training of `variant` (a built-in one is a model's name) on `fold`
    (every seed) on the test set.

    The temperature is chosen on the validation windows alone and applied only when it carries
    from one validation group to another (`fit_temperature`): the two held-out people of a
    LOSO fold, or the time halves of one person's windows elsewhere. Each seed's bundle goes to
    the MLflow run that trained it when that run is in this tracking store, otherwise to a new
    run. The first seed's numbers are the headline; `per_seed` has all of them.
    """
    latest = read_latest_training(paths.model_root(fold, variant))
    # Trained before variants were recorded: a built-in variant, named after its model.
    record = latest.variant or {"name": variant, "model": variant, "settings": {}}
    with partition_lock(paths.root, f"evaluation/{fold}/{variant}"):
        per_seed = [
            _evaluate_one_seed(paths, fold, record, latest.protocol_id, seed, tracker, tags)
            for seed in latest.seeds
        ]
    return {**per_seed[0], "per_seed": per_seed, "seeds": latest.seeds}


def _evaluate_one_seed(
    paths: DataPaths,
    fold: str,
    variant: dict[str, Any],
    protocol_id: str,
    seed: int,
    tracker: MlflowTracker | None,
    tags: dict[str, str] | None,
) -> dict[str, Any]:
    name = variant["name"]
    model_dir = paths.model_dir(fold, name, protocol_id, seed)
    model, ckpt = load_trained_model(model_dir / "best.pt")
    model_name = ckpt["model_name"]
    config = TrainConfig(**ckpt["train_config"])
    protocol = EvaluationProtocol.of(config)
    if protocol.id != protocol_id:
        raise ValueError(f"{model_dir / 'best.pt'}: trained under {protocol.id}, not {protocol_id}")
    check_fold_window(paths, fold, config)
    stats = load_feature_stats(paths.feature_stats(fold))
    test = WindowData.from_fold(paths, fold, "test", stats, config.window)
    val = WindowData.from_fold(paths, fold, "val", stats, config.window)
    if len(test) == 0:
        raise ValueError(
            f"fold {fold}: the test split has no windows of class set {config.window.class_set}"
        )
    probs, y = predict_proba(model, test)
    val_probs, val_y = predict_proba(model, val)
    class_ids = list(ckpt["class_ids"])
    notes = []
    present = sorted({class_ids[i] for i in np.unique(y)})
    if len(present) < len(class_ids):
        names = ", ".join(ACTIVITY_NAMES[a] for a in present)
        notes.append(
            f"test set holds {len(present)} of {len(class_ids)} classes ({names}); "
            "macro F1 is over the classes present in the test labels"
        )
    val_subjects = list(fold_lib.validation_subjects(fold))
    people = " and ".join(str(s) for s in val_subjects)
    notes.append(
        "validation (early stopping, best.pt, temperature) is within-subject"
        if not val_subjects
        else f"validation (early stopping, best.pt, temperature) is subject(s) {people}, "
        "held out from train and test"
    )
    groups, group_names = calibration_groups(val.subjects.cpu().numpy(), val_y)
    out_dir = paths.evaluation_dir(fold, name, protocol_id, seed)
    # Written whole into a staging folder, then swapped in: a crash never leaves a bundle
    # whose summary and predictions come from two different evaluations.
    with staging_root(paths.root, f"evaluation-{fold}-{seed}") as staged:
        summary = write_evaluation_bundle(
            staged,
            y,
            probs,
            class_ids,
            title=f"{fold} / {name} / {protocol_id} / seed {seed}",
            val_logits=np.log(np.clip(val_probs, 1e-12, 1.0)),
            val_y=val_y,
            val_groups=groups,
            val_group_names=group_names,
            context={
                "fold": fold,
                "variant": name,
                "model": model_name,
                "variant_settings": variant["settings"],
                "seed": seed,
                "protocol": protocol.to_dict(),
                "training": config.training_settings(),
                "validation_subjects": val_subjects,
                "notes": notes,
            },
        )
        replace_dir(staged, out_dir)
    _, missing = check_bundle_complete(out_dir)
    calibration = summary["calibration"]
    notes.append(calibration["temperature_note"])
    result: dict[str, Any] = {
        "summary": summary,
        "protocol": protocol.to_dict(),
        "seed": seed,
        "notes": notes,
        "ece_before": calibration["ece_before"],
        "ece_after": calibration.get("ece_after"),
        "nll_before": calibration["nll_before"],
        "nll_after": calibration.get("nll_after"),
        "temperature": calibration.get("temperature"),
        "confusion_rows": pl.read_csv(out_dir / "confusion_matrix.csv").to_dicts(),
        "folder": str(out_dir),
        "missing_files": missing,
        "mlflow_url": "",
    }
    if tracker is not None:
        record = _run_record(model_dir)
        run_id = json.loads(record.read_text())["run_id"] if record.exists() else None
        if run_id is not None and not tracker.run_exists(run_id):
            run_id = None
        run_tags = {
            **(tags or {}),
            "variant": name,
            "model": model_name,
            "protocol_id": protocol_id,
            "seed": str(seed),
        }
        with tracker.run(
            _run_name(fold, name, protocol, seed), run_tags, run_id=run_id
        ) as active_id:
            tracker.log_metrics(
                {
                    f"test_{k}": summary[k]
                    for k in ("accuracy", "macro_f1", "weighted_f1", "balanced_accuracy")
                }
                | {
                    f"test_{k}": calibration[k]
                    for k in ("ece_before", "ece_after", "nll_before", "nll_after", "temperature")
                    if calibration.get(k) is not None
                }
            )
            tracker.log_artifacts(out_dir, artifact_path="evaluation")
            result["mlflow_url"] = tracker.run_url(active_id)
    return result


def _png_data_uri(path: Path) -> str:
    """A PNG inlined as a data URI, so the Dagster UI can show it as a markdown image."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def collect_results(paths: DataPaths) -> tuple[list[Result], list[str]]:
    """Every evaluation bundle under `paths` as a leaderboard `Result`, and why each bundle
    recorded under a legacy protocol (with training settings in its id) is refused."""
    results, refused = [], []
    pattern = "evaluation/*/*/*/seed-*/summary_metrics.json"
    for summary_path in sorted(paths.root.glob(pattern)):
        summary = json.loads(summary_path.read_text())
        if "protocol" not in summary:
            continue  # written before protocols were recorded: not comparable to anything
        try:
            protocol = EvaluationProtocol.from_dict(summary["protocol"], str(summary_path))
        except LegacyProtocolError as exc:
            refused.append(str(exc))
            continue
        fold, model, seed = summary["fold"], summary["model"], int(summary["seed"])
        variant = summary.get("variant", model)  # bundles from before variants: built-in
        y_true, y_pred = read_predictions(summary_path.parent / "predictions.parquet")
        history = paths.model_dir(fold, variant, protocol.id, seed) / "history.json"
        val = json.loads(history.read_text())["best_metric"] if history.exists() else None
        results.append(
            Result(
                model=model,
                variant=variant,
                settings=summary.get("variant_settings", {}),
                training=summary["training"],
                fold=fold,
                protocol=protocol,
                seed=seed,
                y_true=y_true,
                y_pred=y_pred,
                macro_f1=summary["macro_f1"],
                accuracy=summary["accuracy"],
                val_macro_f1=val,
                calibration=summary["calibration"],
            )
        )
    return results, refused


def collect_fold_results(paths: DataPaths, fold: str) -> dict[str, Any]:
    """Every evaluation bundle of one fold (each variant, protocol and seed) as one row of its
    test metrics, written to `reports/folds/<fold>.json`; with the summary files read, whose
    content is what the leaderboard takes from this fold."""
    files = []
    rows = []
    for summary_path in sorted(
        paths.root.glob(f"evaluation/{fold}/*/*/seed-*/summary_metrics.json")
    ):
        summary = json.loads(summary_path.read_text())
        if "protocol" not in summary:
            continue  # written before protocols were recorded: the leaderboard skips it too
        files.append(summary_path)
        rows.append(
            {
                "variant": summary.get("variant", summary["model"]),
                "model": summary["model"],
                "protocol": summary["protocol"]["id"],
                "seed": int(summary["seed"]),
                "macro_f1": summary["macro_f1"],
                "accuracy": summary["accuracy"],
                "test_windows": summary.get("n_test"),
            }
        )
    path = write_json(rows, paths.reports / "folds" / f"{fold}.json")
    return {"rows": rows, "files": files, "path": str(path)}


def build_report(paths: DataPaths, tracker: MlflowTracker | None = None) -> dict[str, Any]:
    """Collect every evaluation bundle into the leaderboard files, one section per protocol."""
    results, refused = collect_results(paths)
    board = build_leaderboard(results, refused)
    synthetic = paths.synthetic_marker.exists()
    title = "PAMAP2 leaderboard" + (" (synthetic data)" if synthetic else "")
    files = write_leaderboard(board, paths.reports, title)
    markdown = files["markdown"].read_text()
    plot_uri = _png_data_uri(files["plot"])
    url = ""
    if tracker is not None:
        metrics, params = leaderboard_tracking(board)
        with tracker.run("leaderboard", {"asset": "leaderboard"}) as run_id:
            tracker.log_params(params)
            tracker.log_metrics(metrics)
            tracker.log_artifacts(paths.reports, artifact_path="leaderboard")
            url = tracker.run_url(run_id)
    return {
        "board": board,
        "markdown": markdown,
        "n_records": len(results),
        "plot_data_uri": plot_uri,
        "folder": str(paths.reports),
        "mlflow_url": url,
    }


def retrain_on_all_subjects(
    paths: DataPaths,
    source_dir: Path,
    tracker: MlflowTracker,
    tags: dict[str, str] | None = None,
    variant: str | None = None,
) -> dict[str, Any]:
    """Retrain the model trained in `source_dir` (a `best.pt`'s folder), with the settings it
    was trained with, on the deployment fold: every subject trains except validation subject
    105, who picks the epoch (early stopping and `best.pt`) as in every fold. Logged to MLflow
    like any training, as `variant` (default: the model's built-in variant) with the settings
    recorded for it; the summary adds `run_id`, the training run to register. Its estimate
    of performance stays the LOSO one: the deployment fold has no test person."""
    from ml_core.data.pipeline import build_fold_manifests, fold_feature_stats
    from ml_core.io import load_torch

    best = Path(source_dir) / "best.pt"
    if not best.exists():
        raise FileNotFoundError(f"{best}: no trained model to retrain")
    ckpt = load_torch(best)
    config = TrainConfig(**ckpt["train_config"])
    fold = fold_lib.DEPLOY_FOLD
    built = build_fold_manifests(paths, fold, window=config.window.window)
    if not built["passed"]:
        failed = {name: message for name, (ok, message) in built["checks"].items() if not ok}
        raise ValueError(f"fold {fold}: manifest checks failed: {failed}")
    fold_feature_stats(paths, fold)
    # <variant>/<protocol id>/seed-<n>: the variant's record is beside its protocol folders.
    recorded = read_latest_training(Path(source_dir).parent.parent).variant
    summary = train_fold_model(
        paths,
        fold,
        ckpt["model_name"],
        config,
        tracker,
        {**(tags or {}), "fold": fold},
        variant=variant,
        variant_settings=recorded.get("settings") if recorded.get("name") == variant else None,
    )
    run_record = _run_record(Path(summary["best_path"]).parent)
    return {**summary, "fold": fold, "run_id": _recorded_run_id(tracker, run_record)}


def champion_candidates(
    paths: DataPaths, tracker: MlflowTracker, source_fold: str = "holdout-106"
) -> list[Any]:
    """The leaderboard's variants as champion candidates, one row per variant.

    Variants of every protocol section whose class set is the first (main) section's take
    part, so a variant that changes the window or the loss competes too; a variant found in
    several sections counts with its entry of the earliest one. A candidate's `ece` is its mean
    test ECE over the LOSO folds after temperature scaling (before, where no temperature was
    fitted); the model offered for registration is the variant's model trained on
    `source_fold` (first seed) under the entry's protocol, with the MLflow run that trained it.
    """
    from ml_core.lifecycle.champion import LeaderboardRow

    board_path = paths.reports / "leaderboard.json"
    if not board_path.exists():
        raise FileNotFoundError(f"{board_path}: materialize the leaderboard first")
    sections = json.loads(board_path.read_text())["protocols"]
    if not sections:
        return []
    class_set = sections[0]["protocol"]["class_set"]
    rows: dict[str, Any] = {}
    for section in sections:
        protocol = section["protocol"]
        if protocol["class_set"] != class_set:
            continue
        for entry in section["rows"]:
            pooled = entry["pooled_loso"]
            variant = entry.get("variant", entry["model"])
            if pooled is None or variant in rows:
                continue
            calibration = entry["calibration"]
            ece = calibration["ece_after_mean"]
            ece = calibration["ece_before_mean"] if ece is None else ece
            source_dir = paths.model_dir(source_fold, variant, protocol["id"], entry["seeds"][0])
            run_record = _run_record(source_dir)
            rows[variant] = LeaderboardRow(
                variant=variant,
                model=entry["model"],
                protocol_id=protocol["id"],
                class_set=protocol["class_set"],
                folds=tuple(entry["folds"]),
                complete=entry["complete"],
                pooled_loso_macro_f1=pooled["macro_f1"],
                ece=float("inf") if ece is None else ece,
                run_id=_recorded_run_id(tracker, run_record),
                trained_on=source_fold,
                source_dir=str(source_dir),
            )
    return list(rows.values())


def choose_champion(
    paths: DataPaths,
    tracker: MlflowTracker,
    gates: Any,
    source_fold: str = "holdout-106",
    retrain_on_all: bool = False,
    tags: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Select the champion among the leaderboard's candidates and promote it if it beats the
    current one. With `retrain_on_all`, a candidate that would be promoted is first retrained
    on the deployment fold (`retrain_on_all_subjects`) and that model is registered instead of
    the one trained on `source_fold`; nothing is retrained when nothing would be promoted."""
    import mlflow

    from ml_core.lifecycle.champion import (
        beats_current,
        current_champion,
        promote_champion,
        select_champion,
    )

    rows = champion_candidates(paths, tracker, source_fold)
    selection = select_champion(rows, gates)
    retrained = None
    candidate = selection.champion
    if (
        retrain_on_all
        and candidate is not None
        and candidate.source_dir is not None
        and beats_current(candidate, current_champion(tracker.client)[1])
    ):
        retrained = retrain_on_all_subjects(
            paths,
            Path(candidate.source_dir),
            tracker,
            tags,
            variant=candidate.variant,
        )
        if retrained["run_id"] is None:
            raise RuntimeError(f"{candidate.variant}: the retrained model was not logged to MLflow")
        candidate = replace(
            candidate,
            run_id=retrained["run_id"],
            trained_on=retrained["fold"],
            source_dir=str(Path(retrained["best_path"]).parent),
        )
        selection = replace(selection, champion=candidate)
    # Registering `runs:/<id>/...` resolves the run through MLflow's global tracking URI, not
    # the client's: point it at this store (a fresh process would use ./mlruns).
    mlflow.set_tracking_uri(tracker.tracking_uri)
    promotion = promote_champion(
        tracker.client, selection, lambda row: publish_serving_model(paths, tracker, row)
    )
    return {"rows": rows, "selection": selection, "promotion": promotion, "retrained": retrained}


def publish_serving_model(paths: DataPaths, tracker: MlflowTracker, row: Any) -> str:
    """Export the checkpoint of champion candidate `row` (a `LeaderboardRow`) as the serving
    program and log it into its training run under `serving/`; returns the file's sha256.
    Done only for a model being promoted, so training never pays for the export."""
    import tempfile

    from ml_core.lifecycle.champion import SERVING_DIR
    from ml_core.lifecycle.serving import SERVING_FILE, export_serving_program

    if row.run_id is None or row.source_dir is None:
        raise ValueError(f"{row.variant}: no training run with a checkpoint to publish")
    stats = load_feature_stats(paths.feature_stats(row.trained_on))
    with tempfile.TemporaryDirectory() as folder:
        target = Path(folder) / SERVING_FILE
        digest = export_serving_program(Path(row.source_dir) / "best.pt", stats, target)
        tracker.client.log_artifact(row.run_id, str(target), artifact_path=SERVING_DIR)
    # The run is the one this data folder's mlflow_run.json records (a training from before
    # runs were tagged at start gets the tag here).
    tracker.client.set_tag(row.run_id, PLATFORM_TAG, PLATFORM)
    return digest


def _recorded_run_id(tracker: MlflowTracker, run_record: Path) -> str | None:
    """The MLflow training run recorded in `run_record`, if it is in this tracking store."""
    if not run_record.exists():
        return None
    run_id = json.loads(run_record.read_text())["run_id"]
    return run_id if tracker.run_exists(run_id) else None
