"""Pooled LOSO macro F1 of `feature_gbm` on the synthetic PAMAP2 set.

Builds the data the way the assets do (ingest, validate, impute, shard, fold manifests,
train-only feature statistics, all through `ml_core.pipeline`), trains `feature_gbm` on every
LOSO fold with the default `TrainConfig`, and concatenates the nine folds' test predictions:
pooled macro F1 is scikit-learn's `f1_score(average="macro")` over every class present in the
pooled test labels. The per-fold macro F1 (over each fold's test classes) is printed beside it.

    uv run python bench/feature_gbm_loso.py             # demo scale, seed 0, temporary folder
    uv run python bench/feature_gbm_loso.py --out DIR   # keep DIR; a rerun reuses its .dat files

The protocol is whatever this checkout's `ml_core.data.folds` builds for `loso-<id>` (its validation
split decides nothing here: the baseline fits once, without early stopping).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import f1_score

from ml_core.data import pipeline as data_pipeline
from ml_core.data.columns import SUBJECTS
from ml_core.data.folds import FOLD_NAMES
from ml_core.data.stats import load_feature_stats
from ml_core.data.synthetic import SCALES, write_dataset
from ml_core.data.windows import WindowData
from ml_core.paths import DataPaths
from ml_core.training.config import TrainConfig
from ml_core.training.train import load_trained_model, predict_proba, train_model

LOSO_FOLDS = [f for f in FOLD_NAMES if f.startswith("loso-")]


def prepare(paths: DataPaths, scale: str, seed: int) -> None:
    """Synthetic .dat files (kept if present), then every asset step up to feature stats."""
    if not paths.synthetic_marker.exists():
        try:  # refuses to write over recordings it did not generate (real data)
            write_dataset(paths.raw, scale=scale, seed=seed)
        except FileExistsError as exc:
            raise SystemExit(f"--out {paths.root}: {exc}") from None
    for subject in SUBJECTS:
        data_pipeline.ingest_subject(paths, subject)
        result, _ = data_pipeline.validate_subject(paths, subject)
        if not result.passed:
            raise SystemExit(f"subject {subject}: {result.n_failures} schema failures")
        data_pipeline.impute_subject(paths, subject)
        passed, message, _ = data_pipeline.shard_subject(paths, subject)
        if not passed:
            raise SystemExit(f"subject {subject}: {message}")
    for fold in LOSO_FOLDS:
        data_pipeline.build_fold_manifests(paths, fold)
        data_pipeline.fold_feature_stats(paths, fold)


def evaluate(paths: DataPaths, config: TrainConfig) -> dict:
    """Train on every LOSO fold; per-fold and pooled macro F1 of the test predictions."""
    y_all, pred_all, per_fold = [], [], {}
    for fold in LOSO_FOLDS:
        out_dir = paths.root / "bench_models" / fold / "feature_gbm"
        result = train_model("feature_gbm", paths, fold, config, out_dir, resume=False)
        model, ckpt = load_trained_model(result.best_path)
        stats = load_feature_stats(paths.feature_stats(fold))
        test = WindowData.from_fold(paths, fold, "test", stats, config.window)
        probs, y = predict_proba(model, test)
        pred = probs.argmax(axis=1)
        class_ids = np.asarray(ckpt["class_ids"])
        y_all.append(class_ids[y])
        pred_all.append(class_ids[pred])
        per_fold[fold] = {
            "test_windows": int(len(y)),
            "macro_f1": float(
                f1_score(y, pred, labels=np.unique(y), average="macro", zero_division=0)
            ),
        }
        print(f"{fold}: {per_fold[fold]}", flush=True)
    y_pooled, pred_pooled = np.concatenate(y_all), np.concatenate(pred_all)
    labels = np.unique(y_pooled)
    return {
        "pooled_macro_f1": float(
            f1_score(y_pooled, pred_pooled, labels=labels, average="macro", zero_division=0)
        ),
        "pooled_accuracy": float((y_pooled == pred_pooled).mean()),
        "pooled_windows": int(len(y_pooled)),
        "pooled_classes": labels.tolist(),
        "per_fold": per_fold,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=SCALES, default="demo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="data root, kept (default: a temporary folder)")
    args = parser.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="bench_feature_gbm_"))
    paths = DataPaths(root.resolve())
    config = TrainConfig()
    started = time.perf_counter()
    try:
        prepare(paths, args.scale, args.seed)
        prepared = time.perf_counter()
        report = evaluate(paths, config)
        report |= {
            "scale": args.scale,
            "seed": args.seed,
            "window": config.window.window,
            "stride": config.window.stride,
            "class_set": config.window.class_set,
            "prepare_s": round(prepared - started, 1),
            "train_eval_s": round(time.perf_counter() - prepared, 1),
        }
        print(json.dumps(report, indent=2))
    finally:
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
