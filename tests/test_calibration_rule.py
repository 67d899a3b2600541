"""The pre-registered calibration rule's parts (docs/evaluation.md): the training prior, the
prior correction of a model trained for balanced classes, one pooled temperature, and
classwise ECE."""

from __future__ import annotations

import numpy as np
import pytest

from ml_core.evaluation.calibration import (
    classwise_ece,
    fit_pooled_temperature,
    prior_corrected,
    softmax,
    training_prior,
)


def test_training_prior_is_add_one_smoothed_frequencies() -> None:
    np.testing.assert_allclose(training_prior(np.array([3, 0, 1])), [4 / 7, 1 / 7, 2 / 7])
    with pytest.raises(ValueError, match="counts"):
        training_prior(np.array([1, -1]))


def test_prior_correction_recovers_the_posterior_of_a_balanced_model() -> None:
    rng = np.random.default_rng(0)
    prior = np.array([0.6, 0.3, 0.1])
    true_logits = rng.normal(size=(50, 3)) + np.log(prior)  # log p(y | x) up to a constant
    balanced = true_logits - np.log(prior) + rng.normal(size=(50, 1))  # uniform-prior model
    np.testing.assert_allclose(
        softmax(prior_corrected(balanced, prior)), softmax(true_logits), atol=1e-12
    )
    with pytest.raises(ValueError, match="prior"):
        prior_corrected(balanced, prior[:2])


def test_pooled_temperature_undoes_overconfidence() -> None:
    rng = np.random.default_rng(1)
    calibrated = rng.normal(scale=2.0, size=(20_000, 4))
    p = softmax(calibrated)
    y = (rng.random((len(p), 1)) > p.cumsum(axis=1)).sum(axis=1)  # labels drawn from p
    assert fit_pooled_temperature(3.0 * calibrated, y) == pytest.approx(3.0, rel=0.05)
    assert fit_pooled_temperature(calibrated, y) == pytest.approx(1.0, rel=0.05)


def test_classwise_ece_matches_its_definition() -> None:
    rng = np.random.default_rng(2)
    probs = softmax(rng.normal(size=(300, 3)))
    y = rng.integers(0, 3, size=300)
    bins = 5
    expected = 0.0
    for k in range(3):
        which = np.minimum((probs[:, k] * bins).astype(int), bins - 1)
        for b in range(bins):
            rows = which == b
            expected += abs((y[rows] == k).sum() - probs[rows, k].sum())
    assert classwise_ece(probs, y, bins) == pytest.approx(expected / (300 * 3))
    # A forecaster that says the truth with certainty is perfectly calibrated.
    assert classwise_ece(np.eye(3)[y], y, bins) == 0.0
