"""Generalisation to new people: every model's pooled LOSO macro F1, trained via `ml_core` directly.

For each model and each LOSO fold (test on one subject, train and validate on the others, as the
fold's manifests say) it trains with `ml_core.training.train.train_model` at the project's default
`TrainConfig` (the same settings `pamap demo` uses), predicts the fold's test windows with the
best checkpoint, and keeps the predictions. Pooled LOSO macro F1 = the project's macro F1
(`ml_core.evaluation.metrics`: over the classes present) of all the folds' test predictions
concatenated; the per-fold mean (109 apart, as the leaderboard
does) is printed beside it.

Each (model, fold) result is written to `OUT/<model>/<fold>.json` as it finishes, so a killed
run picks up where it stopped, and two runs (two versions of the code) can share one data root.

    uv run python bench/generalisation.py --root /tmp/pamap_gen --out /tmp/gen_after
    uv run python bench/generalisation.py --root /tmp/pamap_gen --out /tmp/gen_after \
        --models temporal_cnn deep_conv_lstm --folds loso-101 loso-105
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from ml_core.data import pipeline
from ml_core.data.columns import SUBJECTS
from ml_core.data.folds import SPLITS
from ml_core.data.shards import INDEX_NAME
from ml_core.data.stats import load_feature_stats
from ml_core.data.synthetic import SCALES, write_dataset
from ml_core.data.windows import WindowData
from ml_core.evaluation.metrics import macro_f1
from ml_core.io import write_json
from ml_core.models import get_spec, model_names
from ml_core.paths import DataPaths
from ml_core.training.train import TrainConfig, load_trained_model, predict_proba, train_model

LOSO_FOLDS = [f"loso-{s}" for s in SUBJECTS]
SEED = 0


def prepare(paths: DataPaths, scale: str, folds: list[str]) -> None:
    """Write the synthetic set if there is no raw data, then shard it and build the folds
    (each step skipped when its output is there)."""
    if not paths.dataset.is_dir():
        print(f"writing the {scale} synthetic data set to {paths.raw} ...", flush=True)
        write_dataset(paths.raw, scale=scale, seed=SEED)
    for subject in SUBJECTS:
        if (paths.tensor_shard_dir(subject) / INDEX_NAME).is_file():
            continue
        print(f"  subject {subject}: ingest, validate, impute, shard", flush=True)
        pipeline.ingest_subject(paths, subject)
        result, _ = pipeline.validate_subject(paths, subject)
        if not result.passed:
            raise SystemExit(f"subject {subject}: {result.n_failures} schema failures")
        pipeline.impute_subject(paths, subject)
        passed, message, _ = pipeline.shard_subject(paths, subject)
        if not passed:
            raise SystemExit(f"subject {subject}: {message}")
    for fold in folds:
        done = [paths.manifest(fold, s) for s in SPLITS] + [paths.feature_stats(fold)]
        if not all(f.is_file() for f in done):
            print(f"  fold {fold}: manifests and feature stats", flush=True)
            pipeline.build_fold_manifests(paths, fold)
            pipeline.fold_feature_stats(paths, fold)


def run_one(paths: DataPaths, model: str, fold: str, cfg: TrainConfig, out: Path) -> dict:
    """Train `model` on `fold`, predict its test windows with best.pt; cached in `out`."""
    target = out / model / f"{fold}.json"
    if target.is_file():
        return json.loads(target.read_text())
    started = time.perf_counter()
    result = train_model(model, paths, fold, cfg, out / model / fold / "run")
    trained, _ = load_trained_model(result.best_path)
    stats = load_feature_stats(paths.feature_stats(fold))
    test = WindowData.from_fold(paths, fold, "test", stats, cfg.window)
    probs, y = predict_proba(trained, test, cfg.eval_batch_size)
    record = {
        "model": model,
        "fold": fold,
        "y_true": [int(v) for v in y],
        "y_pred": [int(v) for v in probs.argmax(axis=1)],
        "macro_f1": macro_f1(y, probs.argmax(axis=1)),
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(record, target)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="data root (prepared if needed)")
    parser.add_argument("--out", type=Path, required=True, help="results and checkpoints")
    parser.add_argument("--scale", choices=SCALES, default="demo", help="synthetic set size")
    parser.add_argument("--models", nargs="+", default=None, help="default: every model")
    parser.add_argument("--folds", nargs="+", choices=LOSO_FOLDS, default=LOSO_FOLDS)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    models = args.models or model_names()
    unknown = set(models) - set(model_names())
    if unknown:
        raise SystemExit(f"unknown models {sorted(unknown)}; registered: {model_names()}")
    torch.set_num_threads(args.threads)
    paths = DataPaths(args.root.resolve())
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"torch {torch.__version__}, {args.threads} thread(s); load average {load}", flush=True)
    prepare(paths, args.scale, args.folds)
    base = TrainConfig(device="cpu", seed=SEED)
    print(f"TrainConfig: {json.dumps(base.to_dict())}", flush=True)

    rows = []
    for model in models:
        # The model's own training defaults, as its built-in variant trains it.
        cfg = TrainConfig(device="cpu", seed=SEED, **get_spec(model).train_defaults)
        if get_spec(model).train_defaults:
            print(f"{model}: {json.dumps(get_spec(model).train_defaults)}", flush=True)
        records = []
        for fold in args.folds:
            r = run_one(paths, model, fold, cfg, args.out)
            print(
                f"  {model:<26}{fold:<10} macro F1 {r['macro_f1']:.3f}  "
                f"(best epoch {r['best_epoch']}/{r['epochs_run']}, {r['seconds']:.0f} s)",
                flush=True,
            )
            records.append(r)
        y_true = np.concatenate([r["y_true"] for r in records])
        y_pred = np.concatenate([r["y_pred"] for r in records])
        pooled = macro_f1(y_true, y_pred)
        per_fold = [r["macro_f1"] for r in records if r["fold"] != "loso-109"]
        seconds = sum(r["seconds"] for r in records)
        rows.append((model, pooled, np.mean(per_fold), np.std(per_fold), len(y_true), seconds))

    print(
        f"\nfolds: {' '.join(args.folds)}; windows {base.window.window}/{base.window.stride}, "
        f"{base.epochs} epochs (unless a model says otherwise, above), patience {base.patience}, "
        f"seed {base.seed}, loss {base.loss}"
    )
    print("\n| model | pooled LOSO macro F1 | mean ± std per fold (109 apart) | test windows | s |")
    print("|---|---|---|---|---|")
    for model, pooled, mean, std, n, seconds in rows:
        print(f"| {model} | {pooled:.3f} | {mean:.3f} ± {std:.3f} | {n:,} | {seconds:.0f} |")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"\nload average after the run: {load}")


if __name__ == "__main__":
    main()
