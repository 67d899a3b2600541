"""One macro F1 for validation and test: classes present in the split's labels, as sklearn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

from ml_core.evaluation.evaluate import classification_metrics
from ml_core.evaluation.metrics import macro_f1
from ml_core.training.train import _val_metrics


def one_hot(pred: np.ndarray, k: int) -> np.ndarray:
    """Probabilities whose argmax is `pred` (what validation scores)."""
    probs = np.full((len(pred), k), 0.1 / (k - 1))
    probs[np.arange(len(pred)), pred] = 0.9
    return probs


def test_the_issue_example_scores_the_same_in_validation_and_test() -> None:
    y, pred = np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1])
    assert macro_f1(y, pred) == pytest.approx(5 / 6)  # (2/3 + 1) / 2 = 0.833
    assert _val_metrics(one_hot(pred, 3), y)["val_macro_f1"] == pytest.approx(5 / 6)
    assert classification_metrics(y, pred, 3)["macro_f1"] == pytest.approx(5 / 6)
    # scikit-learn's default labels (true and predicted) would average class 2 in as 0.
    assert f1_score(y, pred, average="macro") == pytest.approx(5 / 9)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_validation_and_test_metric_agree_with_sklearn_over_present_classes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 12
    y = rng.integers(0, k - 3, size=300)  # the last three classes never occur in the labels
    pred = np.where(rng.random(300) < 0.5, y, rng.integers(0, k, size=300))
    expected = f1_score(y, pred, labels=np.unique(y), average="macro", zero_division=0)
    assert macro_f1(y, pred) == pytest.approx(expected)
    assert _val_metrics(one_hot(pred, k), y)["val_macro_f1"] == pytest.approx(expected)
    assert classification_metrics(y, pred, k)["macro_f1"] == pytest.approx(expected)


def test_macro_f1_rejects_mismatched_or_empty_labels() -> None:
    with pytest.raises(ValueError, match="equal-length"):
        macro_f1(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="non-empty"):
        macro_f1(np.array([], dtype=int), np.array([], dtype=int))
