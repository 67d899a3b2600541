"""Evaluation folds: which shard row ranges train, validate and test each fold."""

from __future__ import annotations

from ml_core.columns import SUBJECTS

FOLD_NAMES: list[str] = ["stratified", "holdout-106", *(f"loso-{s}" for s in SUBJECTS)]
SPLITS: tuple[str, ...] = ("train", "val", "test")
