"""`feature_gbm`'s window features, computed once per data version and kept under the data root.

The features are in physical units, so a window (shard rows start, start + d, …) has the same
features in every fold that uses it: train, validation and test of every fold, and the
evaluation after training. They are computed from the shard's own rows, not from a fold's
normalised copy, and stored per shard at `<root>/cache/feature_gbm/<key>.pt`, where the key is a
digest of the shard's content, the feature set, the window length, the decimation and the rate.
A changed shard (new data) or another feature set gets a new key, never a stale entry. A file
holds the windows computed so far (sorted first rows, float32 features: the features are
computed in float32, so nothing is lost); windows not in it are computed and the file is
replaced atomically.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ml_core.data.columns import MODEL_CHANNELS, SAMPLE_RATE_HZ
from ml_core.data.windows import MODALITY_SLICES, WindowData, shard_segments
from ml_core.io import load_torch, save_torch

# Bump when the feature computation changes without changing the feature names.
FEATURES_VERSION = 1
# Windows per feature computation: bounds the [chunk, window, channels] gathers.
_CHUNK = 512
# Content digests of shards seen by this process, by (path, size, mtime, inode).
_DIGESTS: dict[tuple[str, int, int, int], str] = {}


def cache_dir(root: Path) -> Path:
    return root / "cache" / "feature_gbm"


def shard_digest(file: Path) -> str:
    """sha256 of a tensor shard's channels, rows and segments (its content, not its bytes)."""
    stat = file.stat()
    memo = (str(file.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if memo not in _DIGESTS:
        shard = load_torch(file, mmap=True)
        digest = hashlib.sha256(",".join(shard["channels"]).encode())
        for tensor in (shard["data"], shard_segments(shard)):
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def _key(model: Any, file: Path, window: int, decimate: int) -> str:
    spec = "\n".join(
        [
            f"v{FEATURES_VERSION} window {window} decimate {decimate} rate {model.rate_hz!r}",
            shard_digest(file),
            *model.feature_names(),
        ]
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:40]


def _compute(
    model: Any,
    shards: list[Tensor],
    which: np.ndarray,
    rows: np.ndarray,
    window: int,
    decimate: int,
) -> np.ndarray:
    """Features [len(rows), F] (float32) of the windows starting at row `rows[i]` of shard
    `shards[which[i]]` ([R, C] physical rows, NaN where not observed), a chunk at a time."""
    offsets = torch.arange(window) * decimate
    out = []
    for i in range(0, len(rows), _CHUNK):
        chunk = slice(i, i + _CHUNK)
        values = torch.cat(
            [
                shards[s][torch.from_numpy(rows[chunk][which[chunk] == s])[:, None] + offsets]
                for s in np.unique(which[chunk])
            ]
        )  # [B, T, C]
        x, present = {}, {}
        for modality in model.modality_channels:
            part = values[:, :, MODALITY_SLICES[modality]].contiguous()
            observed = torch.isfinite(part).all(dim=2)
            present[modality] = observed
            x[modality] = part.masked_fill_(~observed[..., None], 0.0)
        out.append(model.physical_features(x, present).float())
    if not out:
        return np.zeros((0, len(model.feature_names())), dtype=np.float32)
    return torch.cat(out).numpy()


def window_features(model: Any, data: WindowData) -> np.ndarray:
    """`model.features` of every window of `data` (float64 [N, F]), from the cache where it
    has them; the rest are computed from the shards and added to it."""
    origins = data.origins
    if origins is None:
        raise ValueError("window_features needs windows loaded from shards (WindowData.origins)")
    cfg = data.config
    rate = SAMPLE_RATE_HZ / cfg.decimate
    if model.rate_hz != rate or model.modality_channels != data.modality_channels:
        raise ValueError(
            f"feature cache: model at {model.rate_hz} Hz over {model.modality_channels}, "
            f"windows at {rate} Hz over {data.modality_channels}"
        )
    n_features = len(model.feature_names())
    shard_of, row_of = origins.shard.cpu().numpy(), origins.row.cpu().numpy()
    # Per shard: its cache file, the windows it holds, and those still to compute.
    targets, cached, missing = [], [], []
    for index, relative in enumerate(origins.files):
        file = origins.root / relative
        target = cache_dir(origins.root) / f"{_key(model, file, cfg.window, cfg.decimate)}.pt"
        entry = load_torch(target) if target.exists() else None
        rows = np.zeros(0, np.int64) if entry is None else entry["rows"].numpy()
        values = (
            np.zeros((0, n_features), np.float32) if entry is None else entry["features"].numpy()
        )
        wanted = np.unique(row_of[shard_of == index])
        targets.append(target)
        cached.append((rows, values))
        missing.append(wanted[~np.isin(wanted, rows)])
    todo = [i for i, m in enumerate(missing) if m.size]
    if todo:
        # Windows of every shard computed together, in the batch sizes of a fold's batches.
        shards = [_shard_rows(origins.root / origins.files[i]) for i in todo]
        which = np.concatenate([np.full(missing[i].size, k) for k, i in enumerate(todo)])
        new = _compute(
            model,
            shards,
            which,
            np.concatenate([missing[i] for i in todo]),
            cfg.window,
            cfg.decimate,
        )
        for k, i in enumerate(todo):
            rows = np.concatenate([cached[i][0], missing[i]])
            values = np.concatenate([cached[i][1], new[which == k]])
            order = np.argsort(rows, kind="stable")
            cached[i] = (rows[order], values[order])
            save_torch(
                {
                    "rows": torch.from_numpy(cached[i][0]),
                    "features": torch.from_numpy(cached[i][1]),
                },
                targets[i],
            )
    features = np.empty((len(data), n_features), dtype=np.float64)
    for index, (rows, values) in enumerate(cached):
        mine = np.flatnonzero(shard_of == index)
        features[mine] = values[np.searchsorted(rows, row_of[mine])]
    return features


def _shard_rows(file: Path) -> Tensor:
    data = load_torch(file, mmap=True)["data"]
    if data.shape[1] != len(MODEL_CHANNELS):
        raise ValueError(f"{file}: {data.shape[1]} channels, expected {len(MODEL_CHANNELS)}")
    return data
