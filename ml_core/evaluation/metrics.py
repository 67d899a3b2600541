"""The project's one classification metric: macro F1 over the classes present in the labels.

Validation (early stopping, the choice of `best.pt`), test bundles, the leaderboard's pooled
LOSO score and the timelines all call these functions, so "validation predicts test" compares
one metric with itself. A class that is only predicted, never in the labels (a person who did
not do that activity), lowers the precision of the classes it was confused with but is not
averaged in as a zero of its own; scikit-learn's `f1_score(y, pred, labels=np.unique(y),
average="macro")` computes the same number.
"""

from __future__ import annotations

import numpy as np


def macro_f1_from_confusion(cm: np.ndarray) -> np.ndarray:
    """Macro F1 over the classes with support, for one (K, K) or a stack (..., K, K)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1).astype(np.float64)
    support, predicted = cm.sum(axis=-1), cm.sum(axis=-2)
    f1 = 2.0 * tp / np.maximum(support + predicted, 1)
    present = support > 0
    return (f1 * present).sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)


def confusion_counts(y_true: np.ndarray, y_pred: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """(K, K) counts over the sorted label values `classes` (rows true, columns predicted)."""
    k = len(classes)
    t, p = np.searchsorted(classes, y_true), np.searchsorted(classes, y_pred)
    return np.bincount(t * k + p, minlength=k * k).reshape(k, k)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Macro F1 of predicted against true labels, over the classes present in `y_true`.

    e.g. y_true [0, 0, 1, 1], y_pred [0, 2, 1, 1]: F1 of class 0 is 2/3, of class 1 is 1, so
    0.833 (class 2, predicted but absent, is not averaged in as 0, which would give 0.556).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape or len(y_true) == 0:
        raise ValueError(
            f"y_true and y_pred must be equal-length non-empty 1-D arrays, "
            f"got {y_true.shape} and {y_pred.shape}"
        )
    classes = np.unique(np.concatenate([y_true, y_pred]))
    return float(macro_f1_from_confusion(confusion_counts(y_true, y_pred, classes)))
