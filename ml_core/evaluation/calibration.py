"""Probability calibration: temperature scaling, expected calibration error, reliability bins."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Search range for the temperature. Below 0.5 scaling sharpens a model more than a held-out
# person ever justified here (the old 0.05 floor was hit when validation was seen people);
# above 10 every prediction is close to uniform.
T_MIN, T_MAX = 0.5, 10.0
# A fitted temperature is used only when it lowers validation NLL by more than this.
MIN_NLL_GAIN = 1e-6
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


def _check_scores(scores: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty (n, classes) array, got shape {scores.shape}")
    if y.shape != (scores.shape[0],):
        raise ValueError(
            f"labels must have shape ({scores.shape[0]},) to match {what}, got {y.shape}"
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= scores.shape[1]:
        raise ValueError(
            f"labels must lie in 0..{scores.shape[1] - 1}, got {int(y.min())}..{int(y.max())}"
        )
    if not np.isfinite(scores).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    return scores, y.astype(np.int64)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of `logits / temperature`, computed stably in float64."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll_from_logits(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of labels `y` under softmax(logits / temperature)."""
    logits, y = _check_scores(logits, y, "logits")
    z = logits / temperature
    zmax = z.max(axis=1)
    lse = zmax + np.log(np.exp(z - zmax[:, None]).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(y)), y]))


def nll_from_probs(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of labels `y` under `probs` (clipped away from 0)."""
    probs, y = _check_scores(probs, y, "probabilities")
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], 1e-12, 1.0))))


@dataclass(frozen=True)
class TemperatureFit:
    """A fitted temperature and the validation NLL it was chosen on."""

    temperature: float  # 1.0 when scaling did not lower validation NLL
    applied: bool
    val_nll_before: float  # at T = 1
    val_nll_after: float  # at `temperature`
    note: str


def fit_temperature(logits: np.ndarray, y: np.ndarray, iterations: int = 80) -> TemperatureFit:
    """Temperature T in [T_MIN, T_MAX] minimising validation NLL of softmax(logits / T).

    When the best T does not lower validation NLL below T = 1's, T stays 1 and the note
    says so: scaling can then never make validation NLL worse.
    """
    logits, y = _check_scores(logits, y, "logits")
    before = nll_from_logits(logits, y, 1.0)
    best = _search_temperature(logits, y, iterations)
    after = nll_from_logits(logits, y, best)
    bound = " (at a search bound)" if min(abs(best - T_MIN), abs(best - T_MAX)) < 1e-3 else ""
    if after < before - MIN_NLL_GAIN:
        note = (
            f"T = {best:.3f}{bound} fitted on {len(y)} validation windows lowers validation "
            f"NLL {before:.4f} -> {after:.4f}"
        )
        return TemperatureFit(best, True, before, after, note)
    note = (
        f"kept T = 1: the best T in [{T_MIN:g}, {T_MAX:g}] ({best:.3f}) does not lower "
        f"validation NLL ({before:.4f})"
    )
    return TemperatureFit(1.0, False, before, before, note)


def _search_temperature(logits: np.ndarray, y: np.ndarray, iterations: int) -> float:
    """NLL is convex in 1/T, hence unimodal in log T, so a golden-section search over
    log T in [T_MIN, T_MAX] finds the optimum deterministically without scipy."""
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    a, b = hi - _GOLDEN * (hi - lo), lo + _GOLDEN * (hi - lo)
    fa, fb = nll_from_logits(logits, y, math.exp(a)), nll_from_logits(logits, y, math.exp(b))
    for _ in range(iterations):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - _GOLDEN * (hi - lo)
            fa = nll_from_logits(logits, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + _GOLDEN * (hi - lo)
            fb = nll_from_logits(logits, y, math.exp(b))
    return float(math.exp((lo + hi) / 2.0))


def reliability_table(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict:
    """Top-label confidence vs accuracy in `n_bins` equal-width bins over [0, 1].

    Empty bins report None for confidence and accuracy. `ece` is the count-weighted
    mean |accuracy - confidence| over bins.
    """
    probs, y = _check_scores(probs, y, "probabilities")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    # Bin i holds confidences in [i/n, (i+1)/n); confidence 1.0 goes to the last bin.
    idx = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=confidence, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    ece = float(np.abs(acc_sum - conf_sum).sum() / len(y))
    nonempty = counts > 0
    safe = np.maximum(counts, 1)
    return {
        "n_bins": n_bins,
        "bin_edges": np.linspace(0.0, 1.0, n_bins + 1).tolist(),
        "confidence": [
            float(c) if k else None for c, k in zip(conf_sum / safe, nonempty, strict=True)
        ],
        "accuracy": [
            float(a) if k else None for a, k in zip(acc_sum / safe, nonempty, strict=True)
        ],
        "counts": counts.tolist(),
        "ece": ece,
    }


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error of the top-label confidence (equal-width bins)."""
    return reliability_table(probs, y, n_bins)["ece"]
