"""Per-channel normalisation statistics from a fold's training rows only.

`compute_feature_stats` takes nothing but train ranges, so validation and test rows cannot
reach it. It streams one tensor shard at a time and merges the moments of blocks of rows
(Chan et al.), which stays accurate in float64 where a plain sum of squares would cancel.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml_core.data.columns import MODEL_CHANNELS
from ml_core.data.folds import ShardRange
from ml_core.io import load_torch, write_json
from ml_core.paths import DataPaths

STD_FLOOR = 1e-6
# Rows per pass: the float64 copy of a block stays in the CPU cache, and blocks merge like ranges.
BLOCK_ROWS = 8192


def _moments(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count, mean and sum of squared deviations per column, in float64, ignoring NaN."""
    x = x.astype(np.float64)
    mean = x.sum(axis=0) / x.shape[0]
    if not np.isnan(mean).any():  # no NaN in the block (the common case): no masks needed
        x -= mean
        return np.full(x.shape[1], x.shape[0], dtype=np.int64), mean, np.einsum("ij,ij->j", x, x)
    valid = ~np.isnan(x)
    count = valid.sum(axis=0)
    total = np.where(valid, x, 0.0).sum(axis=0)
    mean = np.divide(total, count, out=np.zeros_like(total), where=count > 0)
    m2 = (np.where(valid, x - mean, 0.0) ** 2).sum(axis=0)
    return count, mean, m2


def compute_feature_stats(paths: DataPaths, train_ranges: Sequence[ShardRange]) -> dict[str, Any]:
    """Mean, std, count and NaN fraction of every model channel over the given train rows."""
    if not train_ranges:
        raise ValueError("no train ranges: feature statistics need training rows")
    n = len(MODEL_CHANNELS)
    count = np.zeros(n, dtype=np.int64)
    mean = np.zeros(n, dtype=np.float64)
    m2 = np.zeros(n, dtype=np.float64)
    nan_count = np.zeros(n, dtype=np.int64)
    rows = 0

    by_path: dict[str, list[ShardRange]] = defaultdict(list)
    for r in train_ranges:
        by_path[r.path].append(r)
    for path in sorted(by_path):  # one shard in memory at a time
        file = paths.root / path
        shard = load_torch(file)
        if list(shard["channels"]) != MODEL_CHANNELS:
            raise ValueError(f"{file}: field channels {shard['channels']} != MODEL_CHANNELS")
        data = shard["data"]
        for r in by_path[path]:
            if not 0 <= r.start < r.end <= data.shape[0]:
                raise ValueError(
                    f"{file}: range [{r.start}, {r.end}) outside its {data.shape[0]} rows"
                )
            for lo in range(r.start, r.end, BLOCK_ROWS):
                block = data[lo : min(lo + BLOCK_ROWS, r.end)].numpy()
                c, m, q = _moments(block)
                merged = count + c
                delta = m - mean
                weight = np.divide(c, merged, out=np.zeros(n), where=merged > 0)
                mean = mean + delta * weight
                m2 = m2 + q + delta**2 * count * weight
                count = merged
                nan_count += block.shape[0] - c
            rows += r.rows

    per_feature = {}
    for i, channel in enumerate(MODEL_CHANNELS):
        observed = int(count[i])
        # A channel never observed normalises as a no-op instead of producing NaN.
        std = max(math.sqrt(m2[i] / observed), STD_FLOOR) if observed else 1.0
        per_feature[channel] = {
            "transform": "identity",
            "mean": float(mean[i]) if observed else 0.0,
            "std": std,
            "count": observed,
            "nan_fraction": float(nan_count[i] / rows),
        }
    return {
        "feature_order": list(MODEL_CHANNELS),
        "per_feature": per_feature,
        "train_rows": rows,
        "n_ranges": len(train_ranges),
    }


def write_feature_stats(stats: dict[str, Any], path: str | Path) -> Path:
    """Write the statistics as JSON, atomically."""
    return write_json(stats, path)


def load_feature_stats(path: str | Path) -> dict[str, Any]:
    """Read statistics JSON; a missing or non-numeric field is an error naming file and field."""
    path = Path(path)
    try:
        stats = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    order = stats.get("feature_order") if isinstance(stats, dict) else None
    per_feature = stats.get("per_feature") if isinstance(stats, dict) else None
    if not isinstance(order, list) or not isinstance(per_feature, dict):
        raise ValueError(f"{path}: needs fields feature_order (list) and per_feature (object)")
    for channel in order:
        entry = per_feature.get(channel)
        for key in ("mean", "std"):
            value = entry.get(key) if isinstance(entry, dict) else None
            if not isinstance(value, int | float) or not math.isfinite(value):
                raise ValueError(f"{path}: field per_feature.{channel}.{key} is {value!r}")
        if entry["std"] <= 0:
            raise ValueError(f"{path}: field per_feature.{channel}.std must be > 0")
    return stats
