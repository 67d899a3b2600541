"""`feature_gbm` boosting settings side by side on the nine LOSO folds: fit CPU time, boosting
iterations and pooled LOSO macro F1 with its 95 % CI, all in one run on the same features.

Every fold's train, validation and test windows get their features once (from the shared
per-shard cache, `ml_core.training.feature_cache`); each setting then fits on them with one
OpenMP thread and predicts the test person. Settings:
- `748 features, 50 iterations`: the previous default (no early stopping);
- `748 features, early stopping`: stop once the validation people's class-balanced log loss has
  not improved for 5 iterations (the default now);
- `439 features, early stopping`: the same without the 10th/90th percentiles and IQR of every
  channel and without the motion statistics of single axes (those of the orientation-invariant
  norms and vertical/horizontal acceleration stay): a leaner set, to see what it would cost.
Pooled macro F1 is the leaderboard's (`pooled_loso`: one confusion matrix over every LOSO test
window, 95 % CI from a bootstrap over test subjects).

    uv run python bench/feature_gbm_settings.py DATA_ROOT   # a root the demo has ingested
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.utils.class_weight import compute_sample_weight
from threadpoolctl import threadpool_limits

from ml_core.data import pipeline as data_pipeline
from ml_core.data.stats import load_feature_stats
from ml_core.data.windows import WindowData, normaliser
from ml_core.evaluation.leaderboard import Result, pooled_loso
from ml_core.evaluation.protocol import EvaluationProtocol
from ml_core.models import create_model
from ml_core.models.feature_gbm import FeatureGBMConfig
from ml_core.paths import DataPaths
from ml_core.training import feature_cache
from ml_core.training.config import TrainConfig

LOSO_FOLDS = [f"loso-{s}" for s in range(101, 110)]
SPLITS = ("train", "val", "test")
ROUNDS = 5
_SINGLE_AXES = ("acc16_x", "acc16_y", "acc16_z", "gyro_x", "gyro_y", "gyro_z")
_MOTION = ("crossing_rate", "jerk", "band", "spectral_entropy", "dominant_hz")


def _not_extreme_quantile(name: str) -> bool:
    return not name.endswith(("_p10", "_p90", "_iqr"))


def _not_single_axis_motion(name: str) -> bool:
    return not any(f"_{axis}_{stat}" in name for axis in _SINGLE_AXES for stat in _MOTION)


# name: (which features, early stopping)
SETTINGS: dict[str, tuple[Callable[[str], bool], bool]] = {
    "748 features, 50 iterations": (lambda name: True, False),
    "748 features, early stopping": (lambda name: True, True),
    "439 features, early stopping": (
        lambda name: _not_extreme_quantile(name) and _not_single_axis_motion(name),
        True,
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="data root with activity shards (pamap demo's)")
    args = parser.parse_args()
    paths = DataPaths(args.root.resolve())
    config = TrainConfig()
    defaults = FeatureGBMConfig()
    classes = np.array(config.window.class_ids)
    protocol = EvaluationProtocol.of(config)
    results: dict[str, list[Result]] = {name: [] for name in SETTINGS}
    cpu = dict.fromkeys(SETTINGS, 0.0)
    iterations: dict[str, list[int]] = {name: [] for name in SETTINGS}
    columns: dict[str, np.ndarray] = {}
    for fold in LOSO_FOLDS:
        if not paths.feature_stats(fold).exists():
            data_pipeline.build_fold_manifests(paths, fold)
            data_pipeline.fold_feature_stats(paths, fold)
        stats = load_feature_stats(paths.feature_stats(fold))
        data = {s: WindowData.from_fold(paths, fold, s, stats, config.window) for s in SPLITS}
        model = create_model(
            "feature_gbm", data["train"].n_classes, data["train"].modality_channels
        )
        mean, std = normaliser(stats, fold)
        model.set_units(mean, std, 100.0 / config.window.decimate)
        x = {s: feature_cache.window_features(model, w) for s, w in data.items()}
        y = {s: w.labels.numpy() for s, w in data.items()}
        names = model.feature_names()
        for setting, (keep, early) in SETTINGS.items():
            cols = columns.setdefault(
                setting, np.array([i for i, n in enumerate(names) if keep(n)])
            )
            gbm = HistGradientBoostingClassifier(
                max_iter=defaults.max_iter,
                learning_rate=defaults.learning_rate,
                max_leaf_nodes=defaults.max_leaf_nodes,
                min_samples_leaf=defaults.min_samples_leaf,
                max_bins=defaults.max_bins,
                max_features=defaults.max_features,
                class_weight=defaults.class_weight,
                random_state=defaults.random_state,
                early_stopping=early,
                n_iter_no_change=ROUNDS,
            )
            validation = {}
            if early:
                seen = np.isin(y["val"], y["train"])
                validation = {
                    "X_val": x["val"][seen][:, cols],
                    "y_val": y["val"][seen],
                    "sample_weight_val": compute_sample_weight("balanced", y["val"][seen]),
                }
            started = time.process_time()
            with threadpool_limits(1, user_api="openmp"):
                gbm.fit(x["train"][:, cols], y["train"], **validation)
            cpu[setting] += time.process_time() - started
            iterations[setting].append(int(gbm.n_iter_))
            y_true, y_pred = classes[y["test"]], classes[gbm.predict(x["test"][:, cols])]
            accuracy = float(np.mean(y_true == y_pred))
            # macro_f1 is pooled below; the per-fold field only has to be a valid number.
            results[setting].append(
                Result("feature_gbm", fold, protocol, 0, y_true, y_pred, accuracy, accuracy)
            )
        print(f"{fold}: fit CPU so far " + ", ".join(f"{v:.1f}" for v in cpu.values()), flush=True)

    print(
        "\n| setting | features | fit CPU s, 9 folds | iterations per fold "
        "| pooled LOSO macro F1 [95 % CI] |"
    )
    print("|---|---|---|---|---|")
    for setting in SETTINGS:
        pooled = pooled_loso(results[setting])
        print(
            f"| {setting} | {len(columns[setting])} | {cpu[setting]:.1f} | "
            f"{', '.join(map(str, iterations[setting]))} | {pooled['macro_f1']:.3f} "
            f"[{pooled['ci_low']:.3f}, {pooled['ci_high']:.3f}] |"
        )


if __name__ == "__main__":
    main()
