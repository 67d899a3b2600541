"""The classical baseline: window statistics, learning, exact tree export, training entry point."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from ml_core.data.columns import AXES, MODALITIES
from ml_core.data.folds import read_manifest
from ml_core.data.stats import load_feature_stats
from ml_core.data.windows import WindowConfig, WindowData, normaliser
from ml_core.io import load_torch, save_torch
from ml_core.lifecycle.serving import (
    SensorWindowClassifier,
    export_serving_program,
    load_serving_program,
)
from ml_core.models import create_model
from ml_core.models.feature_gbm import (
    BASIC,
    MOTION,
    FeatureGBM,
    FeatureGBMConfig,
    boosting_threads,
)
from ml_core.training import feature_cache
from ml_core.training.train import TrainConfig, load_trained_model, predict_proba, train_model
from tests.test_windows import make_signal_fold, make_stats

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


def naive_features(x: np.ndarray, present: np.ndarray, motion: bool, rate: float) -> np.ndarray:
    """One window of a generic layout, one channel at a time, with plain numpy."""
    x = x.astype(np.float64)
    basic, extra = [], []
    for channel in x.T:
        v = channel[present]
        q = np.percentile(v, [10, 25, 50, 75, 90])
        basic += [v.mean(), v.std(), v.min(), v.max(), *q, q[3] - q[1]]
        if not motion:
            continue
        centred = np.where(present, channel - v.mean(), 0.0)
        pairs = present[1:] & present[:-1]
        crossing = (pairs & (centred[1:] * centred[:-1] < 0)).sum() / pairs.sum() * rate
        jerk = np.sqrt((np.diff(channel)[pairs] ** 2).mean()) * rate
        power = np.abs(np.fft.rfft(centred))[1:] ** 2
        hz = np.arange(1, power.size + 1) * rate / len(channel)
        share = power / power.sum()
        edges = [0.0, 0.5, 1.5, 3.0, 6.0, 12.0, np.inf]
        bands = [share[(hz > lo) & (hz <= hi)].sum() for lo, hi in itertools.pairwise(edges)]
        entropy = -(share * np.log(share)).sum() / np.log(power.size)
        extra += [crossing, jerk, *bands, entropy, hz[np.argmax(power)]]
    return np.array(basic + extra)


def test_features_match_a_naive_numpy_computation() -> None:
    x, present, _ = windows(4, 64, seed=0)
    present["imu_hand"][1, 10:30] = False  # a long gap
    present["imu_hand"][2] = False  # hand absent for the whole window
    model = FeatureGBM(FeatureGBMConfig(), 3, CHANNELS)
    features = model.features(x, present)
    n_hand = 3 * (len(BASIC) + len(MOTION))
    assert features.shape == (4, n_hand + len(BASIC)) == (4, len(model.feature_names()))
    assert model.feature_names()[:2] == ["imu_hand_0_mean", "imu_hand_0_std"]
    for w in (0, 1, 3):
        expected = np.concatenate(
            [
                naive_features(x[m][w].numpy(), present[m][w].numpy(), m == "imu_hand", 100.0)
                for m in CHANNELS
            ]
        )
        np.testing.assert_allclose(features[w], expected, rtol=1e-4, atol=1e-4)
    assert np.isnan(features[2, :n_hand]).all() and np.isfinite(features[2, n_hand:]).all()


def _rotation(seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=torch.Generator().manual_seed(seed)))
    return q * torch.sign(torch.linalg.det(q))


def test_real_imu_features_are_physical_and_magnitudes_orientation_invariant() -> None:
    x, present, _ = windows(3, 128, seed=5, hand=len(HAND))
    present["imu_hand"][1, 5:20] = False
    x["imu_hand"] = x["imu_hand"] * 3.0 + torch.tensor([0.0, 9.8, 0.0] + [0.0] * 7)  # gravity
    channels = {"imu_hand": len(HAND), "heart_rate": 1}
    physical = FeatureGBM(FeatureGBMConfig(), 3, channels)
    names = physical.feature_names()
    for name in ("hand_acc16_norm_p90", "hand_acc16_vertical_dominant_hz", "hand_gyro_norm_jerk"):
        assert name in names
    assert "hand_acc16_x__hand_acc16_y_corr" in names and "hand_mag_x_crossing_rate" not in names
    reference = physical.features(x, present)
    assert reference.shape == (3, len(names))

    # The same windows normalised with a fold's statistics: the model inverts them.
    mean, std = torch.randn(len(HAND) + 1), torch.rand(len(HAND) + 1) + 0.5
    normalised = {
        "imu_hand": (x["imu_hand"] - mean[:-1]) / std[:-1],
        "heart_rate": (x["heart_rate"] - mean[-1:]) / std[-1:],
    }
    model = FeatureGBM(FeatureGBMConfig(), 3, channels)
    model.set_units(mean, std, 100.0)
    np.testing.assert_allclose(model.features(normalised, present), reference, rtol=1e-4, atol=1e-3)

    # Turning the sensor (every 3-axis sensor by one rotation) leaves the magnitudes alone.
    turn = _rotation(7)
    turned = x["imu_hand"].clone()
    for sensor in ("acc16", "gyro", "mag"):
        idx = [HAND.index(f"hand_{sensor}_{a}") for a in AXES]
        turned[..., idx] = x["imu_hand"][..., idx] @ turn.T
    rotated = physical.features({**x, "imu_hand": turned}, present)
    invariant = [
        i
        for i, n in enumerate(names)
        if any(k in n for k in ("_norm_", "_vertical_", "_horizontal_", "temperature"))
    ]
    assert len(invariant) > 60
    np.testing.assert_allclose(rotated[:, invariant], reference[:, invariant], rtol=1e-3, atol=1e-3)
    axis = names.index("hand_acc16_x_mean")
    assert not np.allclose(rotated[:, axis], reference[:, axis], atol=1e-2)


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


def test_serving_program_predicts_like_the_checkpoint(tmp_path: Path) -> None:
    """feature_gbm is served as a torch.export program (loaded without pickle) that takes raw
    rows."""
    paths = make_signal_fold(tmp_path / "data")
    config = TrainConfig(window={"window": 32, "stride": 16}, model_overrides={"max_iter": 20})
    result = train_model("feature_gbm", paths, "toy", config, tmp_path / "out")
    model, _ = load_trained_model(result.best_path)
    stats = load_feature_stats(paths.feature_stats("toy"))
    val = WindowData.from_fold(paths, "toy", "val", stats, config.window)
    probs, _ = predict_proba(model, val)
    # The torch form computes the same features and walks the same trees.
    batch = val.batch(torch.arange(len(val)))
    module_probs = torch.softmax(model.as_module()(batch.x, batch.present).double(), 1).numpy()
    np.testing.assert_allclose(module_probs, probs, atol=1e-6)

    raw = torch.stack(
        [
            load_torch(paths.root / r.path)["data"][start : start + 32]
            for r in read_manifest(paths.manifest("toy", "val"))
            for start in range(r.start, r.end - 32 + 1, 16)
        ]
    )
    export_serving_program(result.best_path, stats, tmp_path / "model.pt2")
    served = load_serving_program(tmp_path / "model.pt2")
    with torch.no_grad():
        expected = SensorWindowClassifier(model.as_module(), stats)(raw).numpy()
    got = served(raw.numpy())
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # Raw rows (heart rate smoothed as imputation would) agree with the evaluation path.
    assert (got.argmax(1) == probs.argmax(1)).mean() >= 0.9


def test_cached_features_match_the_fold_path_and_are_computed_once_per_data_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_signal_fold(tmp_path / "data")
    window = WindowConfig(window=32, stride=16)
    stats = load_feature_stats(paths.feature_stats("toy"))
    val = WindowData.from_fold(paths, "toy", "val", stats, window)
    model = FeatureGBM(FeatureGBMConfig(), val.n_classes, val.modality_channels)
    mean, std = normaliser(stats, "toy")
    model.set_units(mean, std, 100.0)
    from_batches = model.features(*_all(val))

    cached = feature_cache.window_features(model, val)
    # From the shards' own rows instead of the fold's normalised copy: the same up to rounding.
    np.testing.assert_array_equal(np.isnan(cached), np.isnan(from_batches))
    np.testing.assert_allclose(cached, from_batches, rtol=1e-4, atol=1e-4, equal_nan=True)
    files = list(feature_cache.cache_dir(paths.root).glob("*.pt"))
    assert val.origins is not None and len(files) == len(val.origins.files)

    # Another fold over the same rows (other normalisation) reads them; nothing is recomputed.
    def refuse(*args: object) -> None:
        raise AssertionError("features recomputed")

    monkeypatch.setattr(feature_cache, "_compute", refuse)
    shifted = make_stats(mean.numpy() + 1, 2 * std.numpy())
    other = WindowData.from_fold(paths, "toy", "val", shifted, window)
    assert len(other) == len(val)
    np.testing.assert_array_equal(feature_cache.window_features(model, other), cached)
    monkeypatch.undo()

    # New shard content is a new data version: its windows are computed afresh.
    shard = paths.root / val.origins.files[0]
    content = load_torch(shard)
    content["data"] = content["data"] * 2
    save_torch(content, shard)
    fresh = feature_cache.window_features(
        model, WindowData.from_fold(paths, "toy", "val", stats, window)
    )
    first = (val.origins.shard == 0).numpy()
    assert not np.allclose(fresh[first], cached[first], equal_nan=True)
    np.testing.assert_array_equal(fresh[~first], cached[~first])


def _all(data: WindowData) -> tuple[dict, dict]:
    batch = data.batch(torch.arange(len(data)))
    return batch.x, batch.present


def test_validation_windows_stop_the_boosting_once_their_loss_stops_improving() -> None:
    x, present, y = windows(300, 32, seed=5)
    features = FeatureGBM(FeatureGBMConfig(), 3, CHANNELS).features(x, present)
    val_x, val_present, val_y = windows(150, 32, seed=6)
    val_features = FeatureGBM(FeatureGBMConfig(), 3, CHANNELS).features(val_x, val_present)
    shuffled = val_y[torch.randperm(150, generator=torch.Generator().manual_seed(0))]

    def iterations(config: FeatureGBMConfig, labels: torch.Tensor | None) -> int:
        model = FeatureGBM(config, 3, CHANNELS)
        if labels is None:
            return model.fit_features(features, y.numpy()).n_iterations
        return model.fit_features(features, y.numpy(), val_features, labels.numpy()).n_iterations

    config = FeatureGBMConfig(max_iter=60, early_stopping_rounds=5)
    assert iterations(config, None) == 60  # nothing to stop on
    # Labels unrelated to the windows: the validation loss only worsens, so it stops at once.
    assert iterations(config, shuffled) <= 10
    # Learnable validation people: it goes on while they improve.
    assert iterations(config, shuffled) < iterations(config, val_y)
    assert iterations(FeatureGBMConfig(max_iter=60, early_stopping_rounds=None), shuffled) == 60
