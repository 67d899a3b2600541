"""The classical baseline: per-window channel statistics + scikit-learn gradient boosting.

Serialisation: after fitting, the trees of the `HistGradientBoostingClassifier` are exported
into flat tensors (feature, threshold, missing-goes-left, children, leaf value per node) and
prediction always runs on those arrays with vectorised numpy, adding the trees in the same
order as scikit-learn and applying the same softmax/sigmoid. So `state_dict()` holds only
tensors and plain Python values (it loads with `torch.load(weights_only=True)`, no pickle),
and a loaded model reproduces the predictions of the one that was fitted exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.utils.extmath import softmax
from torch import Tensor

from ml_core.columns import MODALITIES
from ml_core.models import ModelSpec

STATISTICS: tuple[str, ...] = ("mean", "std", "min", "max", "p10", "p50", "p90", "energy", "freq")
_QUANTILES = (0.1, 0.5, 0.9)
# Samples per prediction chunk: bounds the [samples, trees] node-index array.
_PREDICT_CHUNK = 4096


@dataclass(frozen=True)
class FeatureGBMConfig:
    """Small defaults so a fold fits in seconds on a laptop CPU."""

    max_iter: int = 50
    learning_rate: float = 0.1
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 20
    l2_regularization: float = 0.0
    class_weight: str | None = "balanced"
    random_state: int = 0


def _sorted_quantiles(ordered: Tensor, count: Tensor, qs: tuple[float, ...]) -> Tensor:
    """Quantiles (linear interpolation, as numpy) of the first `count` values along dim 1.

    ordered: [N, T, C] sorted along dim 1 with absent samples last; count: [N, 1] present
    samples. Returns [len(qs), N, C]. (torch.nanquantile refuses inputs over 16M elements.)
    """
    last = (count - 1).clamp(min=0).double()
    out = []
    for q in qs:
        pos = q * last  # [N, 1]: the same position for every channel of a window
        lo, hi = pos.floor().long(), pos.ceil().long()
        v_lo = ordered.gather(1, lo[:, :, None].expand(-1, 1, ordered.shape[2])).squeeze(1)
        v_hi = ordered.gather(1, hi[:, :, None].expand(-1, 1, ordered.shape[2])).squeeze(1)
        out.append(v_lo + (v_hi - v_lo) * (pos - lo).to(ordered.dtype))
    return torch.stack(out)


def window_statistics(x: Tensor, present: Tensor) -> Tensor:
    """Per-channel statistics of each window over its present samples only.

    x: [N, T, C] (absent samples may hold anything), present: [N, T] bool.
    Returns [N, C, len(STATISTICS)] float32: mean, population std, min, max, 10/50/90th
    percentiles, energy (mean square) and dominant frequency in cycles per sample (the
    largest non-DC rfft magnitude of the mean-removed window, absent samples set to the
    mean). Every statistic is NaN for a window whose modality is absent throughout.
    """
    x = x.float()
    mask = present[:, :, None].expand_as(x)
    count = present.sum(dim=1, keepdim=True)  # [N, 1]
    n = count.float()  # 0 for an absent window, so the ratios below become NaN there
    zeroed = torch.where(mask, x, 0.0)
    mean = zeroed.sum(dim=1) / n
    centred = torch.where(mask, x - mean[:, None], 0.0)
    std = (centred.square().sum(dim=1) / n).sqrt()
    energy = zeroed.square().sum(dim=1) / n
    ordered = torch.where(mask, x, torch.inf).sort(dim=1).values  # absent samples sort last
    last = (count - 1).clamp(min=0)[:, :, None].expand(-1, 1, x.shape[2])
    lowest, highest = ordered[:, 0], ordered.gather(1, last).squeeze(1)
    q10, q50, q90 = _sorted_quantiles(ordered, count, _QUANTILES)
    spectrum = torch.fft.rfft(centred, dim=1).abs()[:, 1:]  # drop the DC bin
    freq = (spectrum.argmax(dim=1) + 1).float() / x.shape[1]
    by_order = torch.stack([lowest, highest, q10, q50, q90, freq])
    lowest, highest, q10, q50, q90, freq = torch.where(count > 0, by_order, torch.nan)
    return torch.stack([mean, std, lowest, highest, q10, q50, q90, energy, freq], dim=-1)


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
    def feature_names(self) -> list[str]:
        names = []
        for modality, n in self.modality_channels.items():
            known = MODALITIES.get(modality, [])
            channels = known if len(known) == n else [f"{modality}_{i}" for i in range(n)]
            names += [f"{c}_{s}" for c in channels for s in STATISTICS]
        return names

    def features(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> np.ndarray:
        """[N, F] float64 features of a batch of windows (NaN where a modality is absent)."""
        blocks = []
        for modality, n in self.modality_channels.items():
            if x[modality].shape[-1] != n:
                raise ValueError(
                    f"feature_gbm: {modality} has {x[modality].shape[-1]} channels, expected {n}"
                )
            stats = window_statistics(x[modality].cpu(), present[modality].cpu())
            blocks.append(stats.flatten(1))
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
            class_weight=cfg.class_weight,
            random_state=cfg.random_state,
            early_stopping=False,
            categorical_features=None,
        )
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
