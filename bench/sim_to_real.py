"""Sim to real: models trained on synthetic recordings, scored on real PAMAP2 recordings.

The real excerpt (`../shared/data/pamap2_real_excerpt/excerpt_13x500.csv`: one 5 s run of 500
consecutive 100 Hz rows for each of the 12 protocol activities, plus one transient run) is cut
into overlapping windows of the protocol's length (every `--stride` rows, default 16) and each
window is classified by a model trained on one fold of a synthetic data root, through the
serving path (`SensorWindowClassifier`: raw rows in, cleaning, decimation and the fold's
normalisation inside). Transient windows are left out, as in training.

Per variant trained on `--fold` in `--root` (a data root after `pamap demo`), it scores the
stored training, which used the default augmentation, and with `--no-augment` also a training
of the same model on the same fold with augmentation off (written under `--out`), so the
augmentation's effect on real data is measured, not only on synthetic people.

The excerpt has no IMU temperature: every window gets the fold's mean temperature per IMU
(normalised to 0), so temperature tells a model nothing here. Accuracy and macro F1 (the
platform's, over the classes present) are over all windows; chance is 1/12.

    uv run python bench/sim_to_real.py --root data
    uv run python bench/sim_to_real.py --root data --no-augment --variants feature_gbm temporal_cnn
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import nn

from ml_core.data.columns import (
    ACTIVITY,
    ACTIVITY_NAMES,
    AXES,
    HEART_RATE,
    IMUS,
    SESSION,
    TIMESTAMP,
)
from ml_core.data.stats import load_feature_stats
from ml_core.evaluation.metrics import macro_f1
from ml_core.evaluation.protocol import latest_dirs
from ml_core.lifecycle.serving import SensorWindowClassifier
from ml_core.lifecycle.timeline import cut_windows
from ml_core.paths import PROJECT_ROOT, DataPaths
from ml_core.training.config import AugmentConfig, TrainConfig
from ml_core.training.train import load_trained_model, train_model

EXCERPT = PROJECT_ROOT.parent / "shared/data/pamap2_real_excerpt/excerpt_13x500.csv"
# The excerpt's name of an IMU field, e.g. hand_acc16_x is handAccX.
EXCERPT_FIELDS = {"acc16": "Acc", "gyro": "Gyr", "mag": "Mag"}


def excerpt_frame(path: Path, stats: dict[str, Any]) -> pl.DataFrame:
    """The excerpt as the recording table a timeline reads: one session per run, the model's
    channels, and each IMU's temperature at the fold's training mean (the excerpt has none)."""
    excerpt = pl.read_csv(path)
    per_feature = stats["per_feature"]
    columns: dict[str, pl.Expr] = {
        TIMESTAMP: pl.col("timestamp").cast(pl.Float64),
        ACTIVITY: pl.col("activityID").cast(pl.Int64),
        SESSION: pl.col("session_id").cast(pl.String),
        HEART_RATE: pl.col("heartrate").cast(pl.Float64),
    }
    for imu in IMUS:
        for field, name in EXCERPT_FIELDS.items():
            for axis in AXES:
                columns[f"{imu}_{field}_{axis}"] = pl.col(f"{imu}{name}{axis.upper()}").cast(
                    pl.Float64
                )
        temperature = f"{imu}_temperature_c"
        columns[temperature] = pl.lit(per_feature[temperature]["mean"], dtype=pl.Float64)
    return excerpt.select(expr.alias(name) for name, expr in columns.items())


def score(best: Path, paths: DataPaths, fold: str, excerpt: Path, stride: int) -> dict[str, Any]:
    """Accuracy and macro F1 of checkpoint `best` on the excerpt's windows of its class set."""
    model, ckpt = load_trained_model(best)
    config = TrainConfig(**ckpt["train_config"])
    stats = load_feature_stats(paths.feature_stats(fold))
    net = model if isinstance(model, nn.Module) else model.as_module()
    serving = SensorWindowClassifier(net, stats, decimate=config.window.decimate).eval()
    windows = cut_windows(
        excerpt_frame(excerpt, stats), config.window.window * config.window.decimate, stride
    )
    class_ids = list(ckpt["class_ids"])
    keep = np.isin(windows.label, class_ids)
    x = torch.from_numpy(windows.values(0, len(windows))[keep])  # NaN = missing
    with torch.no_grad():
        probs = torch.cat([serving(batch) for batch in x.split(256)]).numpy()
    y = np.searchsorted(np.array(class_ids), windows.label[keep])
    pred = probs.argmax(axis=1)
    per_activity = {
        ACTIVITY_NAMES[class_ids[c]]: float((pred[y == c] == c).mean()) for c in np.unique(y)
    }
    return {
        "windows": int(len(y)),
        "accuracy": float((pred == y).mean()),
        "macro_f1": float(macro_f1(y, pred)),
        "per_activity_accuracy": per_activity,
    }


def train_without_augmentation(paths: DataPaths, fold: str, best: Path, out: Path) -> Path:
    """The stored training's model and settings on the same fold, augmentation off."""
    ckpt = load_trained_model(best)[1]
    if ckpt["model_overrides"]:
        raise SystemExit(f"{best}: a variant with model overrides; name built-in variants only")
    config = TrainConfig(**ckpt["train_config"])
    config.augment = AugmentConfig(enabled=False)
    train_model(ckpt["model_name"], paths, fold, config, out, resume=True)
    return out / "best.pt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="a data root after pamap demo")
    parser.add_argument("--fold", default="stratified", help="the fold the models trained on")
    parser.add_argument("--variants", nargs="+", help="default: every variant trained on --fold")
    parser.add_argument("--no-augment", action="store_true", help="also train without it")
    parser.add_argument("--out", type=Path, help="no-augment trainings (default <root>/bench)")
    parser.add_argument("--stride", type=int, default=16, help="rows (100 Hz) between windows")
    parser.add_argument("--excerpt", type=Path, default=EXCERPT)
    parser.add_argument("--json", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    paths = DataPaths(args.root)
    variants = args.variants or sorted(
        d.name for d in (args.root / "models" / args.fold).glob("*") if (d / "latest.json").exists()
    )
    if not variants:
        raise SystemExit(f"{args.root}: nothing trained on {args.fold}; run pamap demo first")
    out = args.out or args.root / "bench" / "sim_to_real"

    rows: dict[str, dict[str, Any]] = {}
    print(
        f"real excerpt {args.excerpt.name}: windows every {args.stride} rows, models of {args.fold}"
    )
    print(f"{'variant':<26}{'augment':<9}{'windows':>8}{'accuracy':>10}{'macro F1':>10}  worst")
    print("-" * 90)
    for variant in variants:
        best = latest_dirs(paths, args.fold, variant)[0] / "best.pt"
        model, ckpt = load_trained_model(best)
        # The feature baseline is fitted on window features: augmentation never reaches it.
        augmented = (
            isinstance(model, nn.Module) and TrainConfig(**ckpt["train_config"]).augment.enabled
        )
        arms = {("on" if augmented else "-"): best}
        if args.no_augment and augmented:
            arms["off"] = train_without_augmentation(paths, args.fold, best, out / variant)
        for arm, checkpoint in arms.items():
            result = score(checkpoint, paths, args.fold, args.excerpt, args.stride)
            rows[f"{variant}/{arm}"] = result
            worst = min(result["per_activity_accuracy"].items(), key=lambda kv: kv[1])
            print(
                f"{variant:<26}{arm:<9}{result['windows']:>8}{result['accuracy']:>10.3f}"
                f"{result['macro_f1']:>10.3f}  {worst[0]} {worst[1]:.2f}"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
