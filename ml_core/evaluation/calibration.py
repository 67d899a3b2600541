"""Probability calibration: temperature scaling, expected calibration error, reliability bins."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# Search range for the temperature. Below 0.5 scaling sharpens a model more than a held-out
# person ever justified here (the old 0.05 floor was hit when validation was seen people);
# above 10 every prediction is close to uniform.
T_MIN, T_MAX = 0.5, 10.0
# A temperature passes the cross-check only when it lowers another group's NLL by more than this.
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
    """The temperature applied to test logits, and the validation evidence behind it."""

    temperature: float  # 1.0 when the cross-check did not support scaling
    applied: bool
    val_nll_before: float  # all validation windows, at T = 1
    val_nll_after: float  # all validation windows, at `temperature`
    group_temperatures: dict[str, float]  # T fitted on each validation group alone
    note: str


def calibration_groups(subjects: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Split validation windows into the groups `fit_temperature` cross-checks on.

    With two or more validation people the groups are the people: a temperature must carry
    from one person to another, as it must carry from validation to the test person. With one
    (holdout-106, stratified), each class's windows in time order are cut into a first and a
    second half: a weaker check, on one person, that each report names.
    Windows are assumed in time order within a class, as `WindowData` yields them.
    """
    subjects = np.asarray(subjects)
    labels = np.asarray(labels)
    if subjects.shape != labels.shape:
        raise ValueError(f"subjects {subjects.shape} and labels {labels.shape} differ in shape")
    people = np.unique(subjects)
    if len(people) > 1:
        index = np.searchsorted(people, subjects)
        return index, [f"subject {int(p)}" for p in people]
    groups = np.zeros(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        groups[rows[len(rows) // 2 :]] = 1
    who = f"subject {int(people[0])}" if len(people) else "validation"
    return groups, [f"{who}, first half", f"{who}, second half"]


def fit_temperature(
    logits: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray | None = None,
    group_names: list[str] | None = None,
    iterations: int = 80,
) -> TemperatureFit:
    """The temperature to apply to test logits, chosen on validation alone.

    The rule (docs/evaluation.md, "Calibration"):
    1. Fit T_g in [T_MIN, T_MAX] by minimising NLL on each validation group g alone.
    2. Cross-check: every T_g must lower the NLL of every other group below its T = 1 value,
       and all T_g must lie on the same side of 1 (all soften or all sharpen).
    3. If it passes, apply the T_g nearest 1 (in log T): the smallest change every group
       supports. Otherwise keep T = 1, and the note says which check failed.
    A single group (or none given) cannot be cross-checked: T stays 1. So a temperature is
    used only when it carried from one held-out group to another.
    """
    logits, y = _check_scores(logits, y, "logits")
    groups = np.zeros(len(y), dtype=np.int64) if groups is None else np.asarray(groups)
    if groups.shape != y.shape:
        raise ValueError(f"groups must have shape {y.shape}, got {groups.shape}")
    ids = list(np.unique(groups))
    names = group_names or [f"group {g}" for g in ids]
    if len(names) != len(ids):
        raise ValueError(f"{len(group_names or [])} group names for {len(ids)} groups")
    before = nll_from_logits(logits, y, 1.0)

    def kept(reason: str, fitted: dict[str, float]) -> TemperatureFit:
        return TemperatureFit(1.0, False, before, before, fitted, f"kept T = 1: {reason}")

    if len(ids) < 2:
        return kept("one validation group, nothing to cross-check a temperature on", {})
    members = [groups == g for g in ids]
    fitted: dict[str, float] = {}
    temperatures = []
    for name, rows in zip(names, members, strict=True):
        t = _search_temperature(logits[rows], y[rows], iterations)
        fitted[name] = t
        temperatures.append(t)
    for i, t in enumerate(temperatures):
        for j, rows in enumerate(members):
            if i == j:
                continue
            at_one = nll_from_logits(logits[rows], y[rows], 1.0)
            at_t = nll_from_logits(logits[rows], y[rows], t)
            if not at_t < at_one - MIN_NLL_GAIN:
                return kept(
                    f"T = {t:.3f} fitted on {names[i]} does not lower the NLL of {names[j]} "
                    f"({at_one:.4f} -> {at_t:.4f})",
                    fitted,
                )
    if len({t > 1.0 for t in temperatures}) > 1:
        return kept(f"the groups disagree on the direction ({_describe(fitted)})", fitted)
    chosen = min(temperatures, key=lambda t: abs(math.log(t)))
    after = nll_from_logits(logits, y, chosen)
    bound = " (at a search bound)" if min(abs(chosen - T_MIN), abs(chosen - T_MAX)) < 1e-3 else ""
    note = (
        f"T = {chosen:.3f}{bound}: the fit nearest 1 of {_describe(fitted)}, each of which "
        f"lowers the other groups' NLL; validation NLL {before:.4f} -> {after:.4f}"
    )
    return TemperatureFit(chosen, True, before, after, fitted, note)


def training_prior(counts: np.ndarray) -> np.ndarray:
    """Add-one smoothed class frequencies (n_c + 1) / (N + K) of a fold's training windows."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
        raise ValueError(f"class counts must be a non-empty 1-d array of counts, got {counts}")
    return (counts + 1.0) / (counts.sum() + counts.size)


def prior_corrected(logits: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Logits of a model trained for balanced classes, moved to the training prior.

    A loss weighted by 1 / n_c (or balanced sampling) fits p(y | x) under a uniform prior;
    Bayes' rule gives the training prior back by adding log π_c to every row.
    """
    logits = np.asarray(logits, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    if prior.shape != (logits.shape[1],):
        raise ValueError(f"prior of shape {prior.shape} for {logits.shape[1]} classes")
    return logits + np.log(prior)


def fit_pooled_temperature(logits: np.ndarray, y: np.ndarray, iterations: int = 80) -> float:
    """The T in [T_MIN, T_MAX] minimising NLL on all of `logits` at once."""
    logits, y = _check_scores(logits, y, "logits")
    return _search_temperature(logits, y, iterations)


def classwise_ece(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """Classwise ECE: for every class, |observed frequency - mean probability| over equal-width
    bins of that class's probability, count-weighted; averaged over all classes."""
    probs, y = _check_scores(probs, y, "probabilities")
    idx = np.minimum((probs * n_bins).astype(np.int64), n_bins - 1)  # [N, K]
    onehot = np.zeros_like(probs)
    onehot[np.arange(len(y)), y] = 1.0
    k = probs.shape[1]
    flat = (idx + n_bins * np.arange(k)).ravel()  # one bin index per (window, class)
    p_sum = np.bincount(flat, weights=probs.ravel(), minlength=k * n_bins)
    hit_sum = np.bincount(flat, weights=onehot.ravel(), minlength=k * n_bins)
    return float(np.abs(hit_sum - p_sum).sum() / (len(y) * k))


def _describe(fitted: dict[str, float]) -> str:
    return ", ".join(f"T = {t:.3f} on {name}" for name, t in fitted.items())


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
