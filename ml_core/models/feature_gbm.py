"""The classical baseline: window features in physical units + scikit-learn gradient boosting.

Features are computed in physical units: the model keeps the fold's normalisation (mean, std
per channel) and inverts it, so thresholds are in m/s², rad/s, µT, °C and bpm. Per IMU it adds
orientation-invariant channels: the norms of acceleration and angular rate, and the
acceleration along and across the window's mean gravity direction. Then, per window:
- every channel: mean, std, min, max, 10/25/50/75/90th percentiles, interquartile range;
- motion channels (acceleration and angular rate axes and their derived channels): mean-crossing
  rate (per second), jerk (RMS of the first difference, per second), the share of spectral
  power in the bands 0-0.5, 0.5-1.5, 1.5-3, 3-6, 6-12 and 12+ Hz, spectral entropy and the
  dominant frequency (Hz);
- correlations between the axes of the accelerometer and of the gyroscope.
Absent samples (a modality not observed) are left out of every statistic; a window whose
modality is absent throughout has NaN features, which the trees route as they learned.
A layout other than the real IMU's (tests, toy data) treats every channel as a motion channel.
The boosting settings (31 bins, 7 leaves, 30 % of the features per split) were chosen on the
demo folds: they fit 4-8x faster than 255 bins, 15 leaves and every feature per split.

Serialisation: after fitting, the trees of the `HistGradientBoostingClassifier` are exported
into flat tensors (feature, threshold, missing-goes-left, children, leaf value per node) and
prediction always runs on those arrays with vectorised numpy, adding the trees in the same
order as scikit-learn and applying the same softmax/sigmoid. So `state_dict()` holds only
tensors and plain Python values (it loads with `torch.load(weights_only=True)`, no pickle),
and a loaded model reproduces the predictions of the one that was fitted exactly.
`as_module()` gives the same model as a torch module (features and tree walk in torch), which
is how it is logged to MLflow for serving (torch.export, no pickle).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.extmath import softmax
from threadpoolctl import threadpool_limits
from torch import Tensor, nn

from ml_core.data.columns import AXES, MODALITIES, SAMPLE_RATE_HZ
from ml_core.models import ModelSpec

BASIC: tuple[str, ...] = ("mean", "std", "min", "max", "p10", "p25", "p50", "p75", "p90", "iqr")
_QUANTILES: tuple[float, ...] = (0.10, 0.25, 0.50, 0.75, 0.90)
BANDS_HZ: tuple[float, ...] = (0.5, 1.5, 3.0, 6.0, 12.0)  # band edges; the last band is open
MOTION: tuple[str, ...] = (
    "crossing_rate",
    "jerk",
    *(f"band{i}" for i in range(len(BANDS_HZ) + 1)),
    "spectral_entropy",
    "dominant_hz",
)
# Sensors whose axes are motion channels and whose axes are correlated with each other.
MOTION_SENSORS: tuple[str, ...] = ("acc16", "gyro")
# Fewer training rows than this are fitted on one thread (see boosting_threads).
_THREADED_MIN_SAMPLES = 10_000
# Samples per prediction chunk: bounds the [samples, trees] node-index array.
_PREDICT_CHUNK = 4096


@dataclass(frozen=True)
class FeatureGBMConfig:
    """Boosting settings; the defaults fit a demo-scale fold in a few seconds of one CPU core.

    n_threads: OpenMP threads for the fit; None picks 1 for small data or a busy machine and
    otherwise keeps the process setting (all cores unless limited); see `boosting_threads`.
    early_stopping_rounds: when validation windows are given to the fit (the training does:
    the fold's validation people), stop once their class-balanced log loss has not improved
    for this many iterations (None: always fit max_iter).
    """

    max_iter: int = 50
    early_stopping_rounds: int | None = 5
    learning_rate: float = 0.1
    max_leaf_nodes: int = 7
    min_samples_leaf: int = 20
    l2_regularization: float = 0.0
    max_bins: int = 31
    max_features: float = 0.3
    class_weight: str | None = "balanced"
    random_state: int = 0
    n_threads: int | None = None


@dataclass(frozen=True)
class Layout:
    """How one modality's channels become feature channels.

    channels: names of the real channels then of the derived ones; motion: indices (into
    channels) that get the motion features; pairs: index pairs whose correlation is a feature;
    acc/gyro: indices of the x, y, z axes of the real IMU layout (empty otherwise).
    """

    channels: list[str]
    motion: list[int]
    pairs: list[tuple[int, int]]
    acc: list[int] = field(default_factory=list)
    gyro: list[int] = field(default_factory=list)

    def names(self) -> list[str]:
        return [
            *(f"{c}_{s}" for c in self.channels for s in BASIC),
            *(f"{self.channels[i]}_{s}" for i in self.motion for s in MOTION),
            *(f"{self.channels[a]}__{self.channels[b]}_corr" for a, b in self.pairs),
        ]


def modality_layout(modality: str, n_channels: int) -> Layout:
    """The feature layout of a modality with `n_channels` channels."""
    known = MODALITIES.get(modality, [])
    if len(known) != n_channels:
        channels = [f"{modality}_{i}" for i in range(n_channels)]
        return Layout(channels, list(range(n_channels)), [])
    if modality == "heart_rate":
        return Layout(list(known), [], [])
    imu = known[0].split("_")[0]
    axes = {s: [known.index(f"{imu}_{s}_{a}") for a in AXES] for s in MOTION_SENSORS}
    derived = [f"{imu}_acc16_norm", f"{imu}_acc16_vertical", f"{imu}_acc16_horizontal"]
    derived.append(f"{imu}_gyro_norm")
    channels = [*known, *derived]
    n = len(known)
    motion = [*axes["acc16"], n, n + 1, n + 2, *axes["gyro"], n + 3]
    pairs = [(t[i], t[j]) for t in axes.values() for i, j in ((0, 1), (0, 2), (1, 2))]
    return Layout(channels, motion, pairs, axes["acc16"], axes["gyro"])


def _derive(x: Tensor, present: Tensor, layout: Layout) -> Tensor:
    """[N, T, K] physical channels -> with the layout's derived channels appended."""
    if not layout.acc:
        return x
    acc, gyro = x[..., layout.acc], x[..., layout.gyro]
    mask = present[..., None]
    n = present.sum(1, keepdim=True)[..., None].clamp(min=1)
    gravity = torch.where(mask, acc, 0.0).sum(1, keepdim=True) / n  # [N, 1, 3]
    up = gravity / gravity.norm(dim=-1, keepdim=True).clamp(min=1e-6)
    vertical = (acc * up).sum(-1, keepdim=True)
    horizontal = (acc - vertical * up).norm(dim=-1, keepdim=True)
    return torch.cat(
        [x, acc.norm(dim=-1, keepdim=True), vertical, horizontal, gyro.norm(dim=-1, keepdim=True)],
        dim=-1,
    )


def basic_statistics(x: Tensor, present: Tensor) -> Tensor:
    """[N, T, K], [N, T] -> [N, K, len(BASIC)] over present samples: mean, population std,
    min, max, percentiles (linear interpolation, as numpy's default) and IQR; NaN when absent."""
    mask = present[:, :, None].expand_as(x)
    n = present.sum(dim=1)[:, None].expand(-1, x.shape[2])  # [N, K]
    nf = n.to(x.dtype)
    mean = torch.where(mask, x, 0.0).sum(dim=1) / nf
    std = (torch.where(mask, x - mean[:, None], 0.0).square().sum(dim=1) / nf).sqrt()
    ordered = torch.where(mask, x, torch.inf).sort(dim=1).values  # present samples first
    last = (n - 1).clamp(min=0)
    quantiles = []
    for q in (0.0, 1.0, *_QUANTILES):
        position = last.to(x.dtype) * q
        lo = position.floor().long()
        hi = torch.minimum(lo + 1, last)
        low, high = ordered.gather(1, lo[:, None]), ordered.gather(1, hi[:, None])
        frac = (position - lo.to(x.dtype))[:, None]
        quantiles.append((low + (high - low) * frac).squeeze(1))
    lowest, highest, p10, p25, p50, p75, p90 = quantiles
    stats = torch.stack([mean, std, lowest, highest, p10, p25, p50, p75, p90, p75 - p25], -1)
    return torch.where((n > 0)[..., None], stats, torch.nan)


def motion_statistics(x: Tensor, present: Tensor, rate_hz: float) -> Tensor:
    """[N, T, K], [N, T] -> [N, K, len(MOTION)]: mean-crossing rate and jerk over pairs of
    consecutive present samples (per second), spectral band shares, spectral entropy and the
    dominant frequency of the mean-removed window (absent samples set to the mean)."""
    mask = present[:, :, None].expand_as(x)
    n = present.sum(dim=1, keepdim=True).to(x.dtype)  # [N, 1]
    centred = torch.where(
        mask, x - torch.where(mask, x, 0.0).sum(1, keepdim=True) / n[..., None], 0.0
    )
    pairs = (present[:, 1:] & present[:, :-1])[..., None]
    n_pairs = pairs.sum(1).to(x.dtype)  # [N, 1]
    crossings = (pairs & (centred[:, 1:] * centred[:, :-1] < 0)).sum(1).to(x.dtype)
    crossing_rate = crossings / n_pairs * rate_hz
    step = torch.where(pairs, x[:, 1:] - x[:, :-1], 0.0)
    jerk = (step.square().sum(1) / n_pairs).sqrt() * rate_hz

    t = x.shape[1]
    power = torch.fft.rfft(centred, dim=1).abs().square()[:, 1:]  # drop the DC bin: [N, F, K]
    hz = torch.arange(1, power.shape[1] + 1, dtype=x.dtype, device=x.device) * rate_hz / t
    total = power.sum(1)
    share = power / total[:, None].clamp(min=1e-30)
    band = torch.bucketize(hz, torch.tensor(BANDS_HZ, dtype=x.dtype, device=x.device))
    members = F.one_hot(band, len(BANDS_HZ) + 1).to(x.dtype)  # [F, bands]
    bands = torch.einsum("nfk,fb->nkb", share, members).unbind(-1)
    entropy = -(share * share.clamp(min=1e-30).log()).sum(1) / max(np.log(power.shape[1]), 1e-12)
    dominant = hz[power.argmax(dim=1)]
    stats = torch.stack([crossing_rate, jerk, *bands, entropy, dominant], dim=-1)
    # A constant or absent window has no spectrum and no crossings to speak of.
    valid = (n_pairs > 0)[..., None] & (total > 0)[..., None]
    return torch.where(valid, stats, torch.nan)


def correlations(x: Tensor, present: Tensor, pairs: list[tuple[int, int]]) -> Tensor:
    """[N, len(pairs)] Pearson correlations over present samples; NaN for a constant channel."""
    if not pairs:
        return x.new_zeros(x.shape[0], 0)
    mask = present[:, :, None].expand_as(x)
    n = present.sum(dim=1, keepdim=True).to(x.dtype)
    centred = torch.where(
        mask, x - torch.where(mask, x, 0.0).sum(1, keepdim=True) / n[..., None], 0.0
    )
    a, b = zip(*pairs, strict=True)
    ca, cb = centred[..., list(a)], centred[..., list(b)]
    cov = (ca * cb).sum(1)
    scale = (ca.square().sum(1) * cb.square().sum(1)).sqrt()
    return torch.where(scale > 0, cov / scale.clamp(min=1e-30), torch.nan)


def window_features(
    x: Tensor, present: Tensor, layout: Layout, mean: Tensor, std: Tensor, rate_hz: float
) -> Tensor:
    """One modality's features [N, len(layout.names())] (as float64) from normalised windows
    x [N, T, C] (absent samples may hold anything) and present [N, T]."""
    # float64 to invert the normalisation, float32 (the shards' precision) for the statistics.
    physical = (x.double() * std.double() + mean.double()).float()
    values = _derive(physical, present, layout)
    blocks = [basic_statistics(values, present).flatten(1)]
    if layout.motion:
        blocks.append(motion_statistics(values[..., layout.motion], present, rate_hz).flatten(1))
    blocks.append(correlations(values, present, layout.pairs))
    return torch.cat(blocks, dim=1).double()


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
    """Window features in physical units, then gradient-boosted trees over them."""

    def __init__(
        self, config: FeatureGBMConfig, n_classes: int, modality_channels: dict[str, int]
    ) -> None:
        if n_classes < 2:
            raise ValueError(f"feature_gbm needs at least 2 classes, got {n_classes}")
        self.config = config
        self.n_classes = n_classes
        self.modality_channels = dict(modality_channels)
        self.layouts = {m: modality_layout(m, n) for m, n in self.modality_channels.items()}
        # The fold normalisation to invert (identity until set_units) and the sampling rate.
        self.mean = {m: torch.zeros(n, dtype=torch.float64) for m, n in modality_channels.items()}
        self.std = {m: torch.ones(n, dtype=torch.float64) for m, n in modality_channels.items()}
        self.rate_hz = float(SAMPLE_RATE_HZ)
        self.trees: dict[str, Tensor] | None = None

    def set_units(self, mean: Tensor, std: Tensor, rate_hz: float) -> None:
        """The normalisation the windows arrive with (flat over the modalities' channels, in
        order) and their sampling rate after decimation, so features are in physical units."""
        sizes = list(self.modality_channels.values())
        if mean.shape != (sum(sizes),) or std.shape != (sum(sizes),):
            raise ValueError(f"feature_gbm: need {sum(sizes)} means and stds, got {mean.shape}")
        self.mean = dict(zip(self.modality_channels, mean.double().split(sizes), strict=True))
        self.std = dict(zip(self.modality_channels, std.double().split(sizes), strict=True))
        self.rate_hz = float(rate_hz)

    @property
    def n_iterations(self) -> int:
        """Boosting iterations fitted (each adds one tree per output column)."""
        if self.trees is None:
            return 0
        return len(self.trees["roots"]) // len(self.trees["baseline"])

    # --- features -----------------------------------------------------------------------
    def feature_names(self) -> list[str]:
        return [name for layout in self.layouts.values() for name in layout.names()]

    def features_tensor(
        self, x: dict[str, Tensor], present: dict[str, Tensor], physical: bool = False
    ) -> Tensor:
        """[N, F] float64 features of a batch of windows, as a tensor on x's device; windows
        normalised as `set_units` said, or with `physical` already in physical units."""
        blocks = []
        for modality, n in self.modality_channels.items():
            values = x[modality]
            if values.shape[-1] != n:
                raise ValueError(
                    f"feature_gbm: {modality} has {values.shape[-1]} channels, expected {n}"
                )
            mean = self.mean[modality].to(values.device)
            std = self.std[modality].to(values.device)
            if physical:
                mean, std = torch.zeros_like(mean), torch.ones_like(std)
            blocks.append(
                window_features(
                    values, present[modality], self.layouts[modality], mean, std, self.rate_hz
                )
            )
        return torch.cat(blocks, dim=1)

    def physical_features(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        """[N, F] float64 features of windows given in physical units (the shards' own rows)."""
        return self.features_tensor(x, present, physical=True)

    def features(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> np.ndarray:
        """[N, F] float64 features of a batch of windows (NaN where a modality is absent)."""
        cpu = {m: t.cpu() for m, t in x.items()}
        return self.features_tensor(cpu, {m: p.cpu() for m, p in present.items()}).numpy()

    # --- fitting ------------------------------------------------------------------------
    def fit(self, x: dict[str, Tensor], present: dict[str, Tensor], y: Tensor) -> FeatureGBM:
        return self.fit_features(self.features(x, present), np.asarray(y))

    def fit_features(
        self,
        features: np.ndarray,
        y: np.ndarray,
        val_features: np.ndarray | None = None,
        val_y: np.ndarray | None = None,
    ) -> FeatureGBM:
        """Fit on precomputed `features(...)` rows with class indices `y` in 0..n_classes-1;
        validation rows, if given, stop the boosting early (`early_stopping_rounds`)."""
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
        validation: dict[str, np.ndarray] = {}
        if val_features is not None and val_y is not None and cfg.early_stopping_rounds:
            val_y = np.asarray(val_y, dtype=np.int64)
            seen = np.isin(val_y, y)  # a class the trees never saw has no loss to track
            if seen.any():
                validation = {"X_val": val_features[seen], "y_val": val_y[seen]}
                if cfg.class_weight is not None:
                    weights = compute_sample_weight(cfg.class_weight, val_y[seen])
                    validation["sample_weight_val"] = weights
                gbm.set_params(early_stopping=True, n_iter_no_change=cfg.early_stopping_rounds)
        with threadpool_limits(limits=boosting_threads(cfg.n_threads, len(y)), user_api="openmp"):
            gbm.fit(features, y, **validation)
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
            "mean": dict(self.mean),
            "std": dict(self.std),
            "rate_hz": self.rate_hz,
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
        self.mean, self.std = dict(state["mean"]), dict(state["std"])
        self.rate_hz = float(state["rate_hz"])
        self.trees = dict(state["trees"])

    def as_module(self) -> FeatureGBMModule:
        """The fitted model as a torch module `(x, present) -> log-probabilities`."""
        return FeatureGBMModule(self)


class FeatureGBMModule(nn.Module):
    """A fitted FeatureGBM in torch: the same features, the trees walked with tensor ops.

    forward(x, present) takes the per-modality windows every registered model takes and
    returns log-probabilities (-inf for classes never seen in training), so a softmax gives
    the probabilities of `FeatureGBM.predict_proba`; it exports with torch.export.
    """

    feature: Tensor
    threshold: Tensor
    missing_left: Tensor
    left: Tensor
    right: Tensor
    is_leaf: Tensor
    value: Tensor
    roots: Tensor
    baseline: Tensor
    to_classes: Tensor

    def __init__(self, gbm: FeatureGBM) -> None:
        super().__init__()
        if gbm.trees is None:
            raise RuntimeError("feature_gbm: only a fitted model becomes a module")
        self.layouts = dict(gbm.layouts)
        self.modality_channels = dict(gbm.modality_channels)
        self.rate_hz = gbm.rate_hz
        for m in self.modality_channels:
            self.register_buffer(f"mean_{m}", gbm.mean[m].clone())
            self.register_buffer(f"std_{m}", gbm.std[m].clone())
        for key in ("feature", "threshold", "missing_left", "left", "right", "is_leaf", "value"):
            self.register_buffer(key, gbm.trees[key].clone())
        self.register_buffer("roots", gbm.trees["roots"].clone())
        self.register_buffer("baseline", gbm.trees["baseline"].clone())
        seen = gbm.trees["classes"]
        # Seen-class probabilities -> all classes, by one matrix product.
        self.register_buffer(
            "to_classes", torch.zeros(len(seen), gbm.n_classes, dtype=torch.float64)
        )
        self.to_classes[torch.arange(len(seen)), seen] = 1.0
        self.depth = int(gbm.trees["max_depth"])

    def forward(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        features = torch.cat(
            [
                window_features(
                    x[m],
                    present[m],
                    self.layouts[m],
                    self.get_buffer(f"mean_{m}"),
                    self.get_buffer(f"std_{m}"),
                    self.rate_hz,
                )
                for m in self.modality_channels
            ],
            dim=1,
        )
        node = self.roots.expand(features.shape[0], -1)
        for _ in range(self.depth):
            value = features.gather(1, self.feature[node])
            go_left = torch.where(
                torch.isnan(value), self.missing_left[node], value <= self.threshold[node]
            )
            child = torch.where(go_left, self.left[node], self.right[node])
            node = torch.where(self.is_leaf[node], node, child)
        n_out = int(self.baseline.shape[0])
        leaves = self.value[node].view(features.shape[0], -1, n_out)
        raw = self.baseline + leaves.sum(dim=1)
        if n_out == 1:  # binary: sigmoid link
            p1 = torch.sigmoid(raw[:, 0])
            seen = torch.stack([1.0 - p1, p1], dim=1)
        else:
            seen = torch.softmax(raw, dim=1)
        return (seen @ self.to_classes).log().float()


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
