"""The calibration rules on stored trainings: pooled LOSO test NLL, ECE and classwise ECE per
variant, with no calibration, with the default rule, and with the pre-registered prior-corrected
rule (docs/evaluation.md, "Calibration"), and whether the pre-registered rule passes its test.

For every variant with a training on every LOSO fold of one protocol in a data root, it loads
each fold's `best.pt`, predicts the fold's validation and test windows, and applies:
- `none`: the model's probabilities (what the leaderboard scores);
- `default`: `fit_temperature`, the cross-checked temperature evaluation bundles apply;
- `prior+T`: the training prior added to the log-probabilities when the training corrected
  class imbalance, then one temperature fitted on all validation windows of the fold.
Validation windows choose every temperature; test labels are only scored.

All LOSO test windows of a variant form one pool. The change of each metric (rule - none) gets
a 95 % CI from a bootstrap that resamples test subjects (folds), as the leaderboard's does.

    uv run python bench/calibration.py --root data
    uv run python bench/calibration.py --root data --variants feature_gbm temporal_cnn --json c.json
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ml_core.data.folds import FOLD_NAMES
from ml_core.data.stats import load_feature_stats
from ml_core.data.windows import WindowData
from ml_core.evaluation.calibration import (
    calibration_groups,
    fit_pooled_temperature,
    fit_temperature,
    prior_corrected,
    softmax,
    training_prior,
)
from ml_core.evaluation.protocol import latest_dirs
from ml_core.models.feature_gbm import FeatureGBMConfig
from ml_core.paths import DataPaths
from ml_core.training.config import TrainConfig
from ml_core.training.train import load_trained_model, predict_proba

RULES = ("none", "default", "prior+T")
N_BINS = 15
RESAMPLES = 2000
SEED = 0
LOSO = [f for f in FOLD_NAMES if f.startswith("loso-")]


@dataclass
class FoldScores:
    """One fold's test labels and, per rule, its test probabilities."""

    y: np.ndarray
    probs: dict[str, np.ndarray]
    temperatures: dict[str, float]


def _balanced_training(model: object, config: TrainConfig) -> bool:
    """Whether the training corrected class imbalance, so the model assumes balanced classes."""
    gbm = getattr(model, "config", None)
    if isinstance(gbm, FeatureGBMConfig):
        return gbm.class_weight is not None
    return config.weighted_loss or config.balanced_sampling


def score_fold(paths: DataPaths, fold: str, variant: str) -> FoldScores:
    model_dir, _ = latest_dirs(paths, fold, variant)
    model, ckpt = load_trained_model(model_dir / "best.pt")
    config = TrainConfig(**ckpt["train_config"])
    stats = load_feature_stats(paths.feature_stats(fold))
    splits = {
        s: WindowData.from_fold(paths, fold, s, stats, config.window) for s in ("val", "test")
    }
    counts = torch.bincount(
        WindowData.from_fold(paths, fold, "train", stats, config.window).labels,
        minlength=len(config.window.class_ids),
    ).numpy()
    val_probs, val_y = predict_proba(model, splits["val"])
    test_probs, test_y = predict_proba(model, splits["test"])
    val_z = np.log(np.clip(val_probs, 1e-12, 1.0))
    test_z = np.log(np.clip(test_probs, 1e-12, 1.0))

    groups, names = calibration_groups(splits["val"].subjects.numpy(), val_y)
    default_t = fit_temperature(val_z, val_y, groups, names).temperature
    if _balanced_training(model, config):
        prior = training_prior(counts)
        val_z, test_z = prior_corrected(val_z, prior), prior_corrected(test_z, prior)
    pooled_t = fit_pooled_temperature(val_z, val_y)
    return FoldScores(
        test_y,
        {
            "none": test_probs,
            "default": softmax(np.log(np.clip(test_probs, 1e-12, 1.0)), default_t),
            "prior+T": softmax(test_z, pooled_t),
        },
        {"default": default_t, "prior+T": pooled_t},
    )


def fold_sums(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-fold sums from which NLL, ECE and classwise ECE of any union of folds follow:
    [window count, NLL sum, top-label bins (confidence, accuracy), classwise bins (p, hit)]."""
    n, k = probs.shape
    nll = -np.log(np.clip(probs[np.arange(n), y], 1e-12, 1.0)).sum()
    conf = probs.max(axis=1)
    top = np.minimum((conf * N_BINS).astype(np.int64), N_BINS - 1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    conf_sum = np.bincount(top, weights=conf, minlength=N_BINS)
    acc_sum = np.bincount(top, weights=correct, minlength=N_BINS)
    cls = (
        np.minimum((probs * N_BINS).astype(np.int64), N_BINS - 1) + N_BINS * np.arange(k)
    ).ravel()
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), y] = 1.0
    p_sum = np.bincount(cls, weights=probs.ravel(), minlength=k * N_BINS)
    hit_sum = np.bincount(cls, weights=onehot.ravel(), minlength=k * N_BINS)
    return np.concatenate([[n, nll], conf_sum, acc_sum, p_sum, hit_sum])


def metrics(sums: np.ndarray, k: int) -> np.ndarray:
    """[..., 3] NLL, ECE, classwise ECE from summed `fold_sums` rows [..., width]."""
    n, nll = sums[..., 0], sums[..., 1]
    conf, acc = sums[..., 2 : 2 + N_BINS], sums[..., 2 + N_BINS : 2 + 2 * N_BINS]
    p = sums[..., 2 + 2 * N_BINS : 2 + 2 * N_BINS + k * N_BINS]
    hit = sums[..., 2 + 2 * N_BINS + k * N_BINS :]
    ece = np.abs(acc - conf).sum(axis=-1) / n
    cw = np.abs(hit - p).sum(axis=-1) / (n * k)
    return np.stack([nll / n, ece, cw], axis=-1)


def variant_table(folds: dict[str, FoldScores]) -> dict[str, dict[str, list[float]]]:
    """Per rule: pooled [NLL, ECE, classwise ECE], and for each rule but none the change with
    its bootstrap CI (low, high) per metric."""
    k = next(iter(folds.values())).probs["none"].shape[1]
    sums = {
        rule: np.stack([fold_sums(f.probs[rule], f.y) for f in folds.values()]) for rule in RULES
    }
    rng = np.random.default_rng(SEED)
    draws = rng.integers(0, len(folds), size=(RESAMPLES, len(folds)))
    weights = np.stack([np.bincount(d, minlength=len(folds)) for d in draws]).astype(np.float64)
    boot = {rule: metrics(weights @ s, k) for rule, s in sums.items()}  # [B, 3]
    out: dict[str, dict[str, list[float]]] = {}
    for rule in RULES:
        row = {"pooled": metrics(sums[rule].sum(axis=0), k).tolist()}
        if rule != "none":
            change = boot[rule] - boot["none"]
            row["change_low"] = np.quantile(change, 0.025, axis=0).tolist()
            row["change_high"] = np.quantile(change, 0.975, axis=0).tolist()
        out[rule] = row
    return out


def trained_variants(paths: DataPaths) -> list[str]:
    """Variants with a training on every LOSO fold."""
    per_fold = [
        {d.name for d in paths.root.glob(f"models/{fold}/*") if (d / "latest.json").exists()}
        for fold in LOSO
    ]
    return sorted(set.intersection(*per_fold)) if per_fold else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True, help="a data root after training")
    parser.add_argument("--variants", nargs="+", help="default: every variant on every LOSO fold")
    parser.add_argument("--json", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    paths = DataPaths(args.root)
    variants = args.variants or trained_variants(paths)
    if not variants:
        raise SystemExit(f"{args.root}: no variant has a training on every LOSO fold")

    table: dict[str, dict] = {}
    print(
        f"pooled LOSO test windows ({len(LOSO)} folds), {N_BINS} bins, change = rule - none "
        f"with a 95 % CI from {RESAMPLES} bootstrap resamples of test subjects"
    )
    header = f"{'variant':<26}{'rule':<9}{'NLL':>8}{'ECE':>8}{'cwECE':>8}  change [95 % CI]"
    print(header)
    print("-" * 110)
    for variant in variants:
        folds = {fold: score_fold(paths, fold, variant) for fold in LOSO}
        rows = variant_table(folds)
        table[variant] = {**rows, "temperatures": {f: s.temperatures for f, s in folds.items()}}
        for rule in RULES:
            nll, ece, cw = rows[rule]["pooled"]
            line = f"{variant if rule == 'none' else '':<26}{rule:<9}{nll:8.4f}{ece:8.4f}{cw:8.4f}"
            if rule != "none":
                lo, hi = rows[rule]["change_low"], rows[rule]["change_high"]
                line += "  " + "  ".join(
                    f"{name} {rows[rule]['pooled'][i] - rows['none']['pooled'][i]:+.4f} "
                    f"[{lo[i]:+.4f}, {hi[i]:+.4f}]"
                    for i, name in enumerate(("NLL", "ECE", "cwECE"))
                )
            print(line)

    # The pre-registered acceptance test (docs/evaluation.md).
    # Worse: the CI of the change in NLL or in ECE lies wholly above 0.
    worse = [v for v in variants if max(table[v]["prior+T"]["change_low"][:2]) > 0]
    better = [
        v
        for v in variants
        if all(table[v]["prior+T"]["pooled"][i] < table[v]["none"]["pooled"][i] for i in range(2))
    ]
    passed = not worse and len(better) > len(variants) / 2
    print(
        f"\nprior+T: NLL and ECE both lower for {len(better)} of {len(variants)} variants; "
        f"significantly worse for {len(worse)} ({', '.join(worse) or 'none'}): "
        f"{'PASSES' if passed else 'FAILS'} the pre-registered test"
    )
    if args.json:
        args.json.write_text(json.dumps({"variants": table, "passed": passed}, indent=2))


if __name__ == "__main__":
    main()
