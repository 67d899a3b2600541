"""The classical baseline: window statistics, learning, exact tree export, training entry point."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from ml_core.columns import AXES, MODALITIES
from ml_core.io import load_torch, save_torch
from ml_core.models import create_model
from ml_core.models.feature_gbm import (
    STATISTICS,
    FeatureGBM,
    FeatureGBMConfig,
    boosting_threads,
)
from ml_core.train import TrainConfig, load_trained_model, train_model
from tests.test_windows import make_signal_fold

CHANNELS = {"imu_hand": 3, "heart_rate": 1}
HAND = MODALITIES["imu_hand"]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # OpenMP boosting on a busy shared machine is far slower with many threads than with one;
    # the scikit-learn reference fits below run under this limit too.
    with threadpool_limits(1):
        yield


def windows(n: int, t: int, seed: int, hand: int = 3) -> tuple[dict, dict, torch.Tensor]:
    """Windows whose level and oscillation frequency depend on the class; hand sometimes absent."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    time = torch.arange(t).float()
    wave = torch.sin(2 * torch.pi * (y[:, None] + 1) * 3 * time / t)
    hand = torch.randn(n, t, hand, generator=g) + wave[:, :, None] + y[:, None, None] * 0.5
    hr = torch.randn(n, t, 1, generator=g) + y[:, None, None].float()
    present = {
        "imu_hand": torch.rand(n, t, generator=g) > 0.05,
        "heart_rate": torch.ones(n, t, dtype=torch.bool),
    }
    hand[~present["imu_hand"]] = 0.0  # as WindowData delivers absent samples
    return {"imu_hand": hand, "heart_rate": hr}, present, y


def naive_features(x: np.ndarray, present: np.ndarray, norms: list[list[int]]) -> np.ndarray:
    """One window, one channel at a time, with plain numpy; then the norms of `norms` triples."""
    x = x.astype(np.float64)
    channels = [x[:, c] for c in range(x.shape[1])] + [
        np.linalg.norm(x[:, i], axis=1) for i in norms
    ]
    out = []
    for channel in channels:
        v = channel[present]
        centred = np.where(present, channel - v.mean(), 0.0)
        spectrum = np.abs(np.fft.rfft(centred))[1:]
        freq = (np.argmax(spectrum) + 1) / len(x)
        out += [v.mean(), v.std(), v.min(), v.max(), freq]
    return np.array(out)


def test_features_match_a_naive_numpy_computation() -> None:
    x, present, _ = windows(4, 64, seed=0)
    present["imu_hand"][1, 10:30] = False  # a long gap
    present["imu_hand"][2] = False  # hand absent for the whole window
    model = FeatureGBM(FeatureGBMConfig(), 3, CHANNELS)
    features = model.features(x, present)
    assert features.shape == (4, 4 * len(STATISTICS)) == (4, len(model.feature_names()))
    assert model.feature_names()[:2] == ["imu_hand_0_mean", "imu_hand_0_std"]
    for w in (0, 1, 3):
        expected = np.concatenate(
            [naive_features(x[m][w].numpy(), present[m][w].numpy(), []) for m in CHANNELS]
        )
        np.testing.assert_allclose(features[w], expected, rtol=1e-4, atol=1e-4)
    hand_block = features[2, : 3 * len(STATISTICS)]
    assert np.isnan(hand_block).all() and np.isfinite(features[2, 3 * len(STATISTICS) :]).all()


def test_real_imu_layout_adds_accelerometer_and_gyroscope_norms() -> None:
    x, present, _ = windows(3, 64, seed=5, hand=len(HAND))
    present["imu_hand"][1, 5:20] = False
    model = FeatureGBM(FeatureGBMConfig(), 3, {"imu_hand": len(HAND), "heart_rate": 1})
    names = model.feature_names()
    first_norm = len(HAND) * len(STATISTICS)
    assert names[len(STATISTICS)] == "hand_acc16_y_mean"
    assert names[first_norm] == "hand_acc16_norm_mean"
    assert names[first_norm + len(STATISTICS)] == "hand_gyro_norm_mean"
    triples = [[HAND.index(f"hand_{sensor}_{a}") for a in AXES] for sensor in ("acc16", "gyro")]
    features = model.features(x, present)
    assert features.shape == (3, (len(HAND) + 2 + 1) * len(STATISTICS)) == (3, len(names))
    for w in range(3):
        hand = naive_features(x["imu_hand"][w].numpy(), present["imu_hand"][w].numpy(), triples)
        hr = naive_features(x["heart_rate"][w].numpy(), present["heart_rate"][w].numpy(), [])
        np.testing.assert_allclose(features[w], np.concatenate([hand, hr]), rtol=1e-4, atol=1e-4)


def test_learns_and_exported_trees_reproduce_sklearn_exactly() -> None:
    x, present, y = windows(600, 64, seed=1)
    config = FeatureGBMConfig(max_iter=30)
    model = FeatureGBM(config, 5, CHANNELS).fit(x, present, y)
    xt, pt, yt = windows(200, 64, seed=2)
    probs = model.predict_proba(xt, pt)
    assert probs.shape == (200, 5) and (probs[:, 3:] == 0).all()  # classes 3, 4 never seen
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert (probs.argmax(1) == yt.numpy()).mean() > 0.9
    assert model.n_iterations == 30

    reference = HistGradientBoostingClassifier(
        max_iter=30,
        learning_rate=config.learning_rate,
        max_leaf_nodes=config.max_leaf_nodes,
        min_samples_leaf=config.min_samples_leaf,
        max_bins=config.max_bins,
        max_features=config.max_features,
        class_weight=config.class_weight,
        random_state=config.random_state,
        early_stopping=False,
    ).fit(model.features(x, present), y.numpy())
    expected = reference.predict_proba(model.features(xt, pt))
    assert np.array_equal(probs[:, :3], expected)


def test_state_dict_round_trip_gives_identical_probabilities(tmp_path: Path) -> None:
    x, present, y = windows(300, 32, seed=3)
    model = create_model("feature_gbm", 3, CHANNELS, max_iter=10)
    model.fit(x, present, y)
    save_torch(model.state_dict(), tmp_path / "gbm.pt")
    restored = create_model("feature_gbm", 3, CHANNELS)
    restored.load_state_dict(load_torch(tmp_path / "gbm.pt"))  # weights_only=True
    assert restored.config.max_iter == 10
    assert np.array_equal(restored.predict_proba(x, present), model.predict_proba(x, present))
    with pytest.raises(ValueError, match="classes"):
        create_model("feature_gbm", 4, CHANNELS).load_state_dict(model.state_dict())
    older = model.state_dict()  # as if saved by a version with another feature set
    older["trees"] = {**older["trees"], "n_features": torch.tensor(279)}
    with pytest.raises(ValueError, match="feature set changed"):
        create_model("feature_gbm", 3, CHANNELS).load_state_dict(older)


def test_boosting_threads_stay_at_one_for_small_data_or_a_busy_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert boosting_threads(None, 2_000) == 1
    assert boosting_threads(None, 50_000) is None  # idle machine, big data: OpenMP's default
    assert boosting_threads(3, 2_000) == 3  # an explicit request wins
    monkeypatch.setattr(os, "getloadavg", lambda: (float(cores), 0.0, 0.0))
    assert boosting_threads(None, 50_000) == 1


def test_binary_problems_and_single_class_data() -> None:
    x, present, y = windows(300, 32, seed=4)
    binary = (y > 0).long() * 2  # classes 0 and 2 of 3
    model = FeatureGBM(FeatureGBMConfig(max_iter=10), 3, CHANNELS).fit(x, present, binary)
    probs = model.predict_proba(x, present)
    assert (probs[:, 1] == 0).all() and (probs.argmax(1) == binary.numpy()).mean() > 0.9
    with pytest.raises(ValueError, match="at least 2 classes"):
        FeatureGBM(FeatureGBMConfig(), 3, CHANNELS).fit(x, present, torch.zeros(300).long())


def test_train_model_fits_the_baseline_and_saves_a_loadable_checkpoint(tmp_path: Path) -> None:
    paths = make_signal_fold(tmp_path / "data")
    records: list[dict] = []
    config = TrainConfig(window={"window": 32, "stride": 16}, model_overrides={"max_iter": 20})
    result = train_model("feature_gbm", paths, "toy", config, tmp_path / "out", records.append)
    assert len(records) == 1 and result.completed and result.epochs_run == 1
    assert result.best_metric > 0.8 > result.majority_baseline_accuracy
    ckpt = load_torch(result.best_path)
    assert ckpt["model_kind"] == "sklearn" and ckpt["model_overrides"] == {"max_iter": 20}
    model, _ = load_trained_model(result.best_path)
    assert isinstance(model, FeatureGBM) and model.n_iterations == 20
