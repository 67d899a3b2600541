"""The classical baseline: per-window channel statistics + scikit-learn gradient boosting.

Features: per channel the mean, std, min, max and dominant frequency of each window, over
every model channel plus, per IMU, the norm of the accelerometer and of the gyroscope axes
(of the normalised axes the model receives, so not the physical magnitude; they still added
0.01-0.06 cross-subject macro F1 on the demo folds). Percentiles and energy were dropped:
they cost a sort per channel and did not change validation F1.
The boosting settings (31 bins, 7 leaves, 30 % of the features per split) were chosen on the
demo folds: they fit 4-8x faster than 255 bins, 15 leaves and every feature per split, and
validate as well within a subject and better across subjects.

Serialisation: after fitting, the trees of the `HistGradientBoostingClassifier` are exported
into flat tensors (feature, threshold, missing-goes-left, children, leaf value per node) and
prediction always runs on those arrays with vectorised numpy, adding the trees in the same
order as scikit-learn and applying the same softmax/sigmoid. So `state_dict()` holds only
tensors and plain Python values (it loads with `torch.load(weights_only=True)`, no pickle),
and a loaded model reproduces the predictions of the one that was fitted exactly.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.utils.extmath import softmax
from threadpoolctl import threadpool_limits
from torch import Tensor

from ml_core.columns import AXES, MODALITIES
from ml_core.models import ModelSpec

STATISTICS: tuple[str, ...] = ("mean", "std", "min", "max", "freq")
# 3-axis sensors whose per-sample norm is added as one more channel of their modality.
NORM_SENSORS: tuple[str, ...] = ("acc16", "gyro")
# Fewer training rows than this are fitted on one thread (see boosting_threads).
_THREADED_MIN_SAMPLES = 10_000
# Samples per prediction chunk: bounds the [samples, trees] node-index array.
_PREDICT_CHUNK = 4096


@dataclass(frozen=True)
class FeatureGBMConfig:
    """Boosting settings; the defaults fit a demo-scale fold in about 2 s of one CPU core.

    n_threads: OpenMP threads for the fit; None picks 1 for small data or a busy machine and
    otherwise keeps the process setting (all cores unless limited); see `boosting_threads`.
    """

    max_iter: int = 50
    learning_rate: float = 0.1
    max_leaf_nodes: int = 7
    min_samples_leaf: int = 20
    l2_regularization: float = 0.0
    max_bins: int = 31
    max_features: float = 0.3
    class_weight: str | None = "balanced"
    random_state: int = 0
    n_threads: int | None = None


def window_statistics(x: Tensor, present: Tensor) -> Tensor:
    """Per-channel statistics of each window over its present samples only.

    x: [N, T, C] (absent samples may hold anything), present: [N, T] bool.
    Returns [N, C, len(STATISTICS)] float32: mean, population std, min, max and dominant
    frequency in cycles per sample (the largest non-DC rfft magnitude of the mean-removed
    window, absent samples set to the mean). Every statistic is NaN for a window whose
    modality is absent throughout.
    """
    x = x.float()
    mask = present[:, :, None].expand_as(x)
    n = present.sum(dim=1, keepdim=True).float()  # 0 for an absent window: the ratios give NaN
    mean = torch.where(mask, x, 0.0).sum(dim=1) / n
    centred = torch.where(mask, x - mean[:, None], 0.0)
    std = (centred.square().sum(dim=1) / n).sqrt()
    lowest = torch.where(mask, x, torch.inf).amin(dim=1)
    highest = torch.where(mask, x, -torch.inf).amax(dim=1)
    spectrum = torch.fft.rfft(centred, dim=1).abs()[:, 1:]  # drop the DC bin
    freq = (spectrum.argmax(dim=1) + 1).float() / x.shape[1]
    lowest, highest, freq = torch.where(n > 0, torch.stack([lowest, highest, freq]), torch.nan)
    return torch.stack([mean, std, lowest, highest, freq], dim=-1)


def norm_groups(channels: list[str]) -> list[tuple[str, list[int]]]:
    """(name, indices of x, y, z) of every NORM_SENSORS triple among `channels`, in order."""
    groups = []
    for channel in channels:
        stem, _, axis = channel.rpartition("_")
        if axis == AXES[0] and stem.rpartition("_")[2] in NORM_SENSORS:
            axes = [f"{stem}_{a}" for a in AXES]
            if all(a in channels for a in axes):
                groups.append((f"{stem}_norm", [channels.index(a) for a in axes]))
    return groups


def boosting_threads(requested: int | None, n_samples: int) -> int | None:
    """OpenMP thread limit for a fit of `n_samples` rows (None: leave the process setting).

    Without a request: 1 thread for fewer than _THREADED_MIN_SAMPLES rows (OpenMP overhead
    makes small fits slower with more threads even on an idle machine, scikit-learn issue
    #30662) or when the 1-minute load average already fills half the cores (on the 2-core
    demo machine at load 1.6-2.7, 2 threads were 4-16x slower than 1, for 2,500-25,000 rows).
    """
    if requested is not None:
        return requested
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = hasattr(os, "getloadavg") and os.getloadavg()[0] >= (cores or 1) / 2
    return 1 if busy or n_samples < _THREADED_MIN_SAMPLES else None


class FeatureGBM:
    """Window statistics per channel, then gradient-boosted trees over them."""

    def __init__(
        self, config: FeatureGBMConfig, n_classes: int, modality_channels: dict[str, int]
    ) -> None:
        if n_classes < 2:
            raise ValueError(f"feature_gbm needs at least 2 classes, got {n_classes}")
        self.config = config
        self.n_classes = n_classes
        self.modality_channels = dict(modality_channels)
        self.trees: dict[str, Tensor] | None = None

    @property
    def n_iterations(self) -> int:
        """Boosting iterations fitted (each adds one tree per output column)."""
        if self.trees is None:
            return 0
        return len(self.trees["roots"]) // len(self.trees["baseline"])

    # --- features -----------------------------------------------------------------------
    def _norm_groups(self, modality: str) -> list[tuple[str, list[int]]]:
        """Norm channels of a modality given with its real channels (none for other layouts)."""
        known = MODALITIES.get(modality, [])
        return norm_groups(known) if len(known) == self.modality_channels[modality] else []

    def channel_names(self, modality: str) -> list[str]:
        """The modality's channels (real column names when the count matches), then its norms."""
        known = MODALITIES.get(modality, [])
        n = self.modality_channels[modality]
        channels = known if len(known) == n else [f"{modality}_{i}" for i in range(n)]
        return [*channels, *(name for name, _ in self._norm_groups(modality))]

    def feature_names(self) -> list[str]:
        return [
            f"{c}_{s}"
            for modality in self.modality_channels
            for c in self.channel_names(modality)
            for s in STATISTICS
        ]

    def features(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> np.ndarray:
        """[N, F] float64 features of a batch of windows (NaN where a modality is absent)."""
        blocks = []
        for modality, n in self.modality_channels.items():
            values = x[modality].cpu().float()
            if values.shape[-1] != n:
                raise ValueError(
                    f"feature_gbm: {modality} has {values.shape[-1]} channels, expected {n}"
                )
            norms = [
                values[:, :, idx].norm(dim=-1, keepdim=True)
                for _, idx in self._norm_groups(modality)
            ]
            values = torch.cat([values, *norms], dim=-1)
            blocks.append(window_statistics(values, present[modality].cpu()).flatten(1))
        return torch.cat(blocks, dim=1).double().numpy()

    # --- fitting ------------------------------------------------------------------------
    def fit(self, x: dict[str, Tensor], present: dict[str, Tensor], y: Tensor) -> FeatureGBM:
        return self.fit_features(self.features(x, present), np.asarray(y))

    def fit_features(self, features: np.ndarray, y: np.ndarray) -> FeatureGBM:
        """Fit on precomputed `features(...)` rows with class indices `y` in 0..n_classes-1."""
        y = np.asarray(y, dtype=np.int64)
        if y.size and (y.min() < 0 or y.max() >= self.n_classes):
            raise ValueError(f"feature_gbm: labels must lie in 0..{self.n_classes - 1}")
        if np.unique(y).size < 2:
            raise ValueError("feature_gbm: training data must hold at least 2 classes")
        cfg = self.config
        gbm = HistGradientBoostingClassifier(
            max_iter=cfg.max_iter,
            learning_rate=cfg.learning_rate,
            max_leaf_nodes=cfg.max_leaf_nodes,
            min_samples_leaf=cfg.min_samples_leaf,
            l2_regularization=cfg.l2_regularization,
            max_bins=cfg.max_bins,
            max_features=cfg.max_features,
            class_weight=cfg.class_weight,
            random_state=cfg.random_state,
            early_stopping=False,
            categorical_features=None,
        )
        with threadpool_limits(limits=boosting_threads(cfg.n_threads, len(y)), user_api="openmp"):
            gbm.fit(features, y)
        self.trees = _export_trees(gbm)
        return self

    # --- prediction ---------------------------------------------------------------------
    def predict_proba(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> np.ndarray:
        return self.predict_proba_features(self.features(x, present))

    def predict_proba_features(self, features: np.ndarray) -> np.ndarray:
        """[N, n_classes] probabilities; classes never seen in training get probability 0."""
        if self.trees is None:
            raise RuntimeError("feature_gbm: call fit() or load_state_dict() before predicting")
        t = {k: v.numpy() for k, v in self.trees.items()}
        features = np.asarray(features, dtype=np.float64)
        if features.shape[1:] != (int(t["n_features"]),):
            raise ValueError(
                f"feature_gbm: expected {int(t['n_features'])} features, got {features.shape[1:]}"
            )
        chunks = [
            _raw_predict(t, features[i : i + _PREDICT_CHUNK])
            for i in range(0, len(features), _PREDICT_CHUNK)
        ]
        raw = np.concatenate(chunks) if chunks else np.zeros((0, t["baseline"].size))
        if raw.shape[1] == 1:  # binary: one tree per iteration, sigmoid link
            p1 = expit(raw[:, 0])
            seen_proba = np.stack([1.0 - p1, p1], axis=1)
        else:
            seen_proba = softmax(raw, copy=True)
        proba = np.zeros((len(features), self.n_classes))
        proba[:, t["classes"]] = seen_proba
        return proba

    # --- serialisation ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.trees is None:
            raise RuntimeError("feature_gbm: nothing to save before fit()")
        return {
            "config": asdict(self.config),
            "n_classes": self.n_classes,
            "modality_channels": dict(self.modality_channels),
            "trees": dict(self.trees),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["n_classes"] != self.n_classes or state["modality_channels"] != dict(
            self.modality_channels
        ):
            raise ValueError(
                "feature_gbm: state was saved for "
                f"{state['n_classes']} classes and {state['modality_channels']}, "
                f"not {self.n_classes} classes and {self.modality_channels}"
            )
        n_features = int(state["trees"]["n_features"])
        if n_features != len(self.feature_names()):
            raise ValueError(
                f"feature_gbm: state was fitted on {n_features} features, but this version "
                f"computes {len(self.feature_names())} (the feature set changed): refit it"
            )
        self.config = FeatureGBMConfig(**state["config"])
        self.trees = dict(state["trees"])


def _export_trees(gbm: HistGradientBoostingClassifier) -> dict[str, Tensor]:
    """Flatten the fitted trees into node arrays; child indices become global node indices."""
    predictors = [p for iteration in gbm._predictors for p in iteration]
    nodes = [p.nodes for p in predictors]
    if any(n["is_categorical"].any() for n in nodes):
        raise ValueError("feature_gbm: categorical splits are not exported (features are numeric)")
    sizes = np.array([len(n) for n in nodes], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    flat = np.concatenate(nodes)
    base = np.repeat(offsets[:-1], sizes)
    depth = int(flat["depth"].max())

    def tensor(a: np.ndarray) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    return {
        "feature": tensor(flat["feature_idx"].astype(np.int64)),
        "threshold": tensor(flat["num_threshold"].astype(np.float64)),
        "missing_left": tensor(flat["missing_go_to_left"].astype(bool)),
        "left": tensor(flat["left"].astype(np.int64) + base),
        "right": tensor(flat["right"].astype(np.int64) + base),
        "is_leaf": tensor(flat["is_leaf"].astype(bool)),
        "value": tensor(flat["value"].astype(np.float64)),
        "roots": tensor(offsets[:-1]),
        "baseline": tensor(gbm._baseline_prediction.reshape(-1).astype(np.float64)),
        "classes": tensor(gbm.classes_.astype(np.int64)),
        "n_features": torch.tensor(gbm.n_features_in_),
        "max_depth": torch.tensor(depth),
    }


def _raw_predict(t: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """Sum of leaf values per output column, all trees walked at once, level by level."""
    node = np.broadcast_to(t["roots"], (len(features), len(t["roots"]))).copy()
    rows = np.arange(len(features))[:, None]
    for _ in range(int(t["max_depth"])):
        leaf = t["is_leaf"][node]
        value = features[rows, t["feature"][node]]
        # Same rule as scikit-learn's predictor: NaN follows the learned side, else <= goes left.
        go_left = np.where(np.isnan(value), t["missing_left"][node], value <= t["threshold"][node])
        node = np.where(leaf, node, np.where(go_left, t["left"][node], t["right"][node]))
    leaf_values = t["value"][node]
    n_out = t["baseline"].size
    raw = np.zeros((len(features), n_out)) + t["baseline"]
    # Add iteration by iteration in scikit-learn's order so the float sums agree exactly.
    for it in range(leaf_values.shape[1] // n_out):
        raw += leaf_values[:, it * n_out : (it + 1) * n_out]
    return raw


SPEC = ModelSpec(name="feature_gbm", kind="sklearn", config_cls=FeatureGBMConfig, build=FeatureGBM)
