"""Augmentation: shapes and masks kept, real rotations and reflections, identity when off,
determinism for a seed, and that the training loop applies it and resumes it exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor

from ml_core.data.columns import AXES, MODALITIES, MODEL_CHANNELS
from ml_core.io import load_torch
from ml_core.paths import DataPaths
from ml_core.training.augment import Augmenter, rotation_matrices
from ml_core.training.config import AugmentConfig
from ml_core.training.train import TrainConfig, train_model
from tests.test_train import WINDOW, losses
from tests.test_windows import make_signal_fold

CHANNELS = {m: len(cols) for m, cols in MODALITIES.items()}
# Normalisation with non-trivial means and stds, so physical units differ from normalised ones.
MEANS = {c: 0.5 * (i % 7) - 1.0 for i, c in enumerate(MODEL_CHANNELS)}
STDS = {c: 0.5 + 0.25 * (i % 5) for i, c in enumerate(MODEL_CHANNELS)}
STATS = {"per_feature": {c: {"mean": MEANS[c], "std": STDS[c]} for c in MODEL_CHANNELS}}
OFF = {
    "rotation_deg": 0.0,
    "scale_std": 0.0,
    "time_warp": 0.0,
    "jitter_std": 0.0,
    "mag_offset_ut": 0.0,
    "temperature_offset_c": 0.0,
    "heart_rate_offset_bpm": 0.0,
}
OFF_ALL = {**OFF, "mirror_left_handed": False, "mirror_prob": 0.0}


def batch(b: int = 6, t: int = 40, seed: int = 0) -> tuple[dict, dict, Tensor]:
    """Random windows with scattered gaps, one wholly missing hand IMU (window 1), and the
    subjects 101, 108, 101, 108, ..."""
    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(b, t, c, generator=g) for m, c in CHANNELS.items()}
    present = {m: torch.rand(b, t, generator=g) > 0.2 for m in CHANNELS}
    present["imu_hand"][1] = False
    present["imu_chest"][0] = True
    x = {m: v * present[m].unsqueeze(-1) for m, v in x.items()}
    subjects = torch.tensor([101, 108] * (b // 2))
    return x, present, subjects


def physical(m: str, field: str, x: dict[str, Tensor]) -> Tensor:
    """One IMU field [B, T, 3] in physical units."""
    imu = m.removeprefix("imu_")
    cols = [f"{imu}_{field}_{a}" for a in AXES]
    idx = [MODALITIES[m].index(c) for c in cols]
    mean = torch.tensor([MEANS[c] for c in cols])
    std = torch.tensor([STDS[c] for c in cols])
    return x[m][:, :, idx] * std + mean


def augmenter(seed: int = 0, **cfg) -> Augmenter:
    return Augmenter(AugmentConfig(**cfg), STATS, seed)


def test_rotation_matrices_are_rotations() -> None:
    r = rotation_matrices(torch.randn(50, 3, generator=torch.Generator().manual_seed(0)))
    eye = torch.eye(3).expand(50, 3, 3)
    assert torch.allclose(r @ r.transpose(1, 2), eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(r), torch.ones(50), atol=1e-5)
    assert torch.allclose(rotation_matrices(torch.zeros(1, 3)), torch.eye(3)[None])
    # A quarter turn about z takes x to y.
    quarter = rotation_matrices(torch.tensor([0.0, 0.0, torch.pi / 2]))
    assert torch.allclose(quarter @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))


@pytest.mark.parametrize("cfg", [{}, {"time_warp": 0.0}], ids=["default", "no-warp"])
def test_shapes_masks_and_missing_samples_are_kept(cfg: dict) -> None:
    x, present, subjects = batch()
    before = {m: v.clone() for m, v in x.items()}
    out, out_present = augmenter(**cfg)(x, present, subjects)
    assert all(torch.equal(x[m], before[m]) for m in x)  # inputs untouched
    for m in CHANNELS:
        assert out[m].shape == x[m].shape and out_present[m].dtype == torch.bool
        assert torch.isfinite(out[m]).all()
        assert not out[m][~out_present[m]].any()  # missing samples stay zero
        assert not out_present[m][~present[m].any(dim=1)].any()  # wholly missing stays so
        assert out_present[m][present[m].all(dim=1)].all()  # wholly present stays so
        if "time_warp" in cfg:
            assert torch.equal(out_present[m], present[m])
        assert not torch.equal(out[m], x[m])


def test_rotation_keeps_every_vector_length_and_moves_the_triplets_together() -> None:
    x, present, subjects = batch()
    out, _ = augmenter(**{**OFF_ALL, "rotation_deg": 30.0})(x, present, subjects)
    for m in ("imu_hand", "imu_chest", "imu_ankle"):
        rotated = {}
        for field in ("acc16", "gyro", "mag"):
            a, b = physical(m, field, x), physical(m, field, out)
            keep = present[m]
            assert torch.allclose(a.norm(dim=-1)[keep], b.norm(dim=-1)[keep], atol=1e-4)
            # Fit the rotation of this window from the field: the same for all three.
            rotated[field] = torch.linalg.lstsq(a[0][keep[0]], b[0][keep[0]]).solution
        assert torch.allclose(rotated["acc16"], rotated["gyro"], atol=1e-3)
        assert torch.allclose(rotated["acc16"], rotated["mag"], atol=1e-3)
        # Temperature is not a vector: untouched.
        assert torch.equal(out[m][:, :, -1], x[m][:, :, -1])
    assert torch.equal(out["heart_rate"], x["heart_rate"])


def test_left_handed_wrist_and_ankle_are_mirrored_onto_the_right_handed_layout() -> None:
    x, present, subjects = batch()
    out, _ = augmenter(**{**OFF, "mirror_left_handed": True, "mirror_prob": 0.0})(
        x, present, subjects
    )
    left = subjects == 108
    for m in ("imu_hand", "imu_ankle"):
        for field, signs in (("acc16", [1, -1, 1]), ("gyro", [-1, 1, -1]), ("mag", [1, -1, 1])):
            a, b = physical(m, field, x), physical(m, field, out)
            keep = present[m].unsqueeze(-1)
            expected = torch.where(left[:, None, None], a * torch.tensor(signs), a)
            assert torch.allclose(b * keep, expected * keep, atol=1e-5)
    assert torch.allclose(out["imu_chest"], x["imu_chest"], atol=1e-5)  # on the midline


def test_offsets_are_constant_over_a_window_in_physical_units() -> None:
    x, present, subjects = batch()
    cfg = {**OFF_ALL, "mag_offset_ut": 10.0, "temperature_offset_c": 1.0}
    out, out_present = augmenter(**cfg)(x, present, subjects)
    for m in ("imu_hand", "imu_ankle"):
        keep = present[m]
        shift = physical(m, "mag", out) - physical(m, "mag", x)  # [B, T, 3]
        for w in range(len(subjects)):
            if keep[w].sum() > 1:
                s = shift[w][keep[w]]
                assert torch.allclose(s, s[:1].expand_as(s), atol=1e-4)
        assert torch.allclose(physical(m, "acc16", out), physical(m, "acc16", x), atol=1e-5)
        assert torch.equal(out_present[m], present[m])
    assert torch.equal(out["heart_rate"], x["heart_rate"])  # its offset is off here


def test_off_is_the_identity_and_draws_nothing() -> None:
    x, present, subjects = batch()
    for aug in (augmenter(enabled=False), augmenter(**OFF_ALL)):
        state = aug.state().clone()
        out, out_present = aug(x, present, subjects)
        assert all(torch.equal(out[m], x[m]) for m in x)
        assert all(torch.equal(out_present[m], present[m]) for m in x)
        assert torch.equal(aug.state(), state)


def test_same_seed_same_draws_and_state_restores_them() -> None:
    x, present, subjects = batch()
    a, b, c = augmenter(seed=1), augmenter(seed=1), augmenter(seed=2)
    first, same, other = (aug(x, present, subjects)[0] for aug in (a, b, c))
    assert all(torch.equal(first[m], same[m]) for m in x)
    assert not torch.equal(first["imu_hand"], other["imu_hand"])
    state = a.state().clone()
    second = a(x, present, subjects)[0]
    assert not torch.equal(second["imu_hand"], first["imu_hand"])  # the stream moves on
    a.set_state(state)
    again = a(x, present, subjects)[0]
    assert all(torch.equal(second[m], again[m]) for m in x)


def test_bad_settings_are_refused() -> None:
    for bad in ({"time_warp": 1.0}, {"mirror_prob": 1.5}, {"jitter_std": -0.1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AugmentConfig(**bad)


# --- in the training loop ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def fold(tmp_path_factory: pytest.TempPathFactory) -> DataPaths:
    return make_signal_fold(tmp_path_factory.mktemp("data"))


def config(**kw) -> TrainConfig:
    base = {
        "epochs": 2,
        "batch_size": 16,
        "lr": 1e-2,
        "warmup_steps": 2,
        "patience": None,
        "device": "cpu",
        "window": WINDOW,
        "model_overrides": {"widths": [8, 16], "head_hidden": 16},
    }
    return TrainConfig(**(base | kw))


def test_training_augments_and_resumes_its_draws_exactly(fold: DataPaths, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = config()
    assert cfg.augment.enabled  # the training default
    plain = train_model("temporal_cnn", fold, "toy", config(augment={"enabled": False}), tmp_path)
    straight = train_model("temporal_cnn", fold, "toy", cfg, tmp_path / "straight")
    assert losses(straight.history) != losses(plain.history)

    out = tmp_path / "resumed"
    paused = train_model("temporal_cnn", fold, "toy", config(max_steps=8), out)
    assert not paused.completed
    assert isinstance(load_torch(paused.last_path)["augment_rng"], torch.Tensor)
    resumed = train_model("temporal_cnn", fold, "toy", cfg, out)
    assert losses(resumed.history) == losses(straight.history)
    a, b = load_torch(straight.last_path), load_torch(resumed.last_path)
    assert all(torch.equal(v, b["model_state"][k]) for k, v in a["model_state"].items())
    assert torch.equal(a["augment_rng"], b["augment_rng"])
