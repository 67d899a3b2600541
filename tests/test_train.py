"""The training loop: schedule, losses, learning, determinism, exact resume, guards, checkpoints."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import Tensor, nn

from ml_core import models
from ml_core.data.stats import load_feature_stats
from ml_core.data.windows import WindowConfig, WindowData
from ml_core.io import load_torch, save_torch
from ml_core.models import ModelSpec
from ml_core.paths import DataPaths
from ml_core.training.losses import FocalLoss, build_loss, class_weights
from ml_core.training.train import (
    DeviceMismatchError,
    TrainConfig,
    TrainingDivergedError,
    build_criterion,
    load_trained_model,
    lr_at,
    predict_proba,
    train_model,
)
from tests.test_windows import make_signal_fold

WINDOW = {"window": 32, "stride": 16}


# --- a tiny registered model, so loop tests do not depend on the real architectures' speed ----
@dataclass
class TinyConfig:
    dropout: float = 0.2
    scale: float = 1.0  # 0 makes the output constant (validation F1 can never improve)
    nan_at_call: int = -1  # return NaN logits on this forward call (training guard test)


class Tiny(nn.Module):
    def __init__(self, config: TinyConfig, n_classes: int, modality_channels: dict[str, int]):
        super().__init__()
        self.config = config
        self.modalities = list(modality_channels)
        self.drop = nn.Dropout(config.dropout)
        self.fc = nn.Linear(2 * sum(modality_channels.values()), n_classes)
        self.calls = 0

    def forward(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        h = torch.cat([torch.cat([x[m].mean(1), x[m].std(1)], -1) for m in self.modalities], -1)
        logits = self.config.scale * self.fc(self.drop(h))
        self.calls += 1
        if self.calls == self.config.nan_at_call:
            logits = logits * torch.nan
        return logits


SPEC = ModelSpec(name="tiny_test", kind="torch", config_cls=TinyConfig, build=Tiny)


@pytest.fixture(autouse=True)
def _tiny_model_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(models._MODEL_MODULES, "tiny_test", __name__)
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def fold(tmp_path_factory: pytest.TempPathFactory) -> DataPaths:
    return make_signal_fold(tmp_path_factory.mktemp("data"))


def config(**kw) -> TrainConfig:
    base = {
        "epochs": 3,
        "batch_size": 16,
        "lr": 1e-2,
        "warmup_steps": 2,
        "patience": None,
        "device": "cpu",
        "window": WINDOW,
    }
    return TrainConfig(**(base | kw))


def losses(history: list[dict]) -> list[tuple]:
    return [(r["train_loss"], r["val_loss"], r["val_macro_f1"]) for r in history]


# --- schedule and losses ---------------------------------------------------------------------
def test_lr_schedule_warms_up_linearly_then_decays_to_zero() -> None:
    base, warmup, total = 1e-3, 10, 110
    assert lr_at(0, total, warmup, base) == pytest.approx(base / warmup)
    assert lr_at(4, total, warmup, base) == pytest.approx(base * 5 / warmup)
    assert lr_at(warmup - 1, total, warmup, base) == pytest.approx(base)
    assert lr_at(warmup, total, warmup, base) == pytest.approx(base)
    assert lr_at(60, total, warmup, base) == pytest.approx(base / 2)  # cosine midpoint
    assert lr_at(total, total, warmup, base) == pytest.approx(0.0, abs=1e-15)
    decay = [lr_at(s, total, warmup, base) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))
    assert lr_at(0, 100, 0, base) == pytest.approx(base)


def test_class_weights_are_inverse_frequency_and_zero_for_absent_classes() -> None:
    counts = torch.tensor([30, 10, 0, 60])
    w = class_weights(counts)
    assert w[2] == 0 and torch.isfinite(w).all()
    assert w[1] / w[0] == pytest.approx(3.0) and w[0] / w[3] == pytest.approx(2.0)
    assert float((w * counts).sum() / counts.sum()) == pytest.approx(1.0)  # mean weight 1


def test_focal_loss_with_gamma_zero_is_cross_entropy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 4, generator=g) * 3
    y = torch.randint(0, 4, (50,), generator=g)
    w = class_weights(torch.bincount(y, minlength=4))

    def same(a: Tensor, b: Tensor) -> bool:
        return torch.allclose(a, b, rtol=1e-6, atol=1e-7)

    assert same(FocalLoss(0.0)(logits, y), F.cross_entropy(logits, y))
    assert same(FocalLoss(0.0, w)(logits, y), F.cross_entropy(logits, y, weight=w))
    counts = torch.bincount(y, minlength=4)
    assert same(build_loss("weighted_ce", counts)(logits, y), F.cross_entropy(logits, y, weight=w))
    assert same(
        build_loss("focal", counts, focal_gamma=0.0)(logits, y),
        F.cross_entropy(logits, y, weight=w),
    )
    # gamma > 0 down-weights easy examples, so the loss shrinks.
    assert FocalLoss(2.0, w)(logits, y) < FocalLoss(0.0, w)(logits, y)
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge", counts)


def _epoch_class_weight(config: TrainConfig, labels: Tensor, n_classes: int) -> Tensor:
    """Each class's share of an epoch's total loss weight: windows drawn x loss weight,
    averaged over 50 epochs' orders."""
    data = WindowData(
        torch.zeros(len(labels), 1),
        torch.ones(len(labels), 1, dtype=torch.bool),
        torch.arange(len(labels)),
        labels,
        torch.zeros_like(labels),
        WindowConfig(window=2),
    )
    criterion = build_criterion(config, torch.bincount(labels, minlength=n_classes))
    weight = criterion.weight if criterion.weight is not None else torch.ones(n_classes)
    drawn = torch.zeros(n_classes)
    for epoch in range(50):
        g = torch.Generator().manual_seed(epoch)
        order = data.order(g, shuffle=True, balanced=config.balanced_sampling)
        drawn += torch.bincount(labels[order], minlength=n_classes).float()
    total = drawn * weight
    return total / total.sum()


@pytest.mark.parametrize("loss", ["weighted_ce", "focal"])
def test_imbalance_is_corrected_once_unless_both_are_asked_for(loss: str) -> None:
    labels = torch.tensor([0] * 600 + [1] * 300 + [2] * 100)
    equal = torch.full((3,), 1 / 3)
    # Default: a class-weighted loss over every window once; each class weighs a third.
    default = TrainConfig(loss=loss)
    assert (
        default.weighted_loss
        and build_criterion(default, torch.bincount(labels)).weight is not None
    )
    assert torch.allclose(_epoch_class_weight(default, labels, 3), equal, atol=1e-6)
    # Balanced sampling alone: the loss is unweighted, the draws equalise the classes.
    sampled = TrainConfig(loss=loss, balanced_sampling=True)
    assert build_criterion(sampled, torch.bincount(labels)).weight is None
    assert torch.allclose(_epoch_class_weight(sampled, labels, 3), equal, atol=0.01)
    # Both, only when asked: each window weighs 1 / count², so a class's share of the epoch
    # goes as 1 / count and the rarest class dominates.
    both = TrainConfig(loss=loss, balanced_sampling=True, loss_class_weights=True)
    inverse = 1 / torch.tensor([600.0, 300.0, 100.0])
    share = _epoch_class_weight(both, labels, 3)
    assert torch.allclose(share, inverse / inverse.sum(), atol=0.01)
    # And neither, when asked: the classes weigh as often as they occur.
    plain = TrainConfig(loss=loss, loss_class_weights=False)
    assert torch.allclose(_epoch_class_weight(plain, labels, 3), torch.tensor([0.6, 0.3, 0.1]))


# --- training --------------------------------------------------------------------------------
def test_training_beats_chance_and_the_majority_baseline(fold: DataPaths, tmp_path: Path) -> None:
    records: list[dict] = []
    overrides = {"widths": [8, 16], "head_hidden": 16}
    # No augmentation: the toy classes differ by channel offsets and heart-rate level, exactly
    # what the offset augmentation is there to hide.
    cfg = config(epochs=4, lr=5e-3, model_overrides=overrides, augment={"enabled": False})
    result = train_model("temporal_cnn", fold, "toy", cfg, tmp_path, on_epoch=records.append)
    assert [r["epoch"] for r in records] == [1, 2, 3, 4] == [r["epoch"] for r in result.history]
    assert set(records[0]) >= {
        "epoch", "step", "train_loss", "val_loss", "val_macro_f1", "val_accuracy", "lr", "seconds"
    }  # fmt: skip
    assert result.completed and not result.stopped_early and result.epochs_run == 4
    assert result.best_metric == max(r["val_macro_f1"] for r in records)
    assert result.best_metric > 0.8
    assert records[-1]["val_accuracy"] > result.majority_baseline_accuracy + 0.3
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    assert sum(result.class_counts["train"].values()) == 6 * 16
    assert result.best_path.exists() and result.last_path.exists() and result.history_path.exists()


def test_same_seed_gives_identical_losses(fold: DataPaths, tmp_path: Path) -> None:
    a = train_model("tiny_test", fold, "toy", config(seed=3), tmp_path / "a")
    b = train_model("tiny_test", fold, "toy", config(seed=3), tmp_path / "b")
    c = train_model("tiny_test", fold, "toy", config(seed=4), tmp_path / "c")
    assert losses(a.history) == losses(b.history)
    assert losses(a.history) != losses(c.history)


def test_default_training_reruns_bit_identically(fold: DataPaths, tmp_path: Path) -> None:
    """A real model with augmentation and dropout, at the default settings and two threads:
    the same seed writes the same weights and metrics, to the last bit."""
    assert TrainConfig().deterministic
    torch.set_num_threads(2)
    cfg = config(epochs=2, model_overrides={"widths": [8, 16], "head_hidden": 16})
    runs = [train_model("temporal_cnn", fold, "toy", cfg, tmp_path / n) for n in "ab"]
    a, b = ([{k: v for k, v in r.items() if k != "seconds"} for r in run.history] for run in runs)
    assert a == b
    for name in ("best.pt", "last.pt"):
        first, second = (load_torch(tmp_path / n / name) for n in "ab")
        assert first["best_metric"] == second["best_metric"]
        for key, tensor in first["model_state"].items():
            assert torch.equal(tensor, second["model_state"][key]), (name, key)
        for key, tensor in first["optimizer_state"]["state"][0].items():
            assert torch.equal(tensor, second["optimizer_state"]["state"][0][key]), key


@pytest.mark.parametrize("balanced", [False, True])
def test_resume_after_max_steps_equals_a_straight_run(
    fold: DataPaths, tmp_path: Path, balanced: bool
) -> None:
    cfg = config(balanced_sampling=balanced)  # 96 train windows / 16 = 6 steps per epoch
    straight = train_model("tiny_test", fold, "toy", cfg, tmp_path / "straight")

    out = tmp_path / "resumed"
    paused = train_model(
        "tiny_test", fold, "toy", config(balanced_sampling=balanced, max_steps=8), out
    )
    assert not paused.completed and paused.steps == 8 and paused.epochs_run == 1
    assert paused.history[-1]["partial"] and len(paused.history) == 2
    resumed = train_model("tiny_test", fold, "toy", cfg, out)
    assert resumed.completed and resumed.steps == straight.steps == 18

    assert losses(resumed.history) == losses(straight.history)
    for name in ("last.pt", "best.pt"):
        a, b = load_torch(tmp_path / "straight" / name), load_torch(out / name)
        assert a["model_state"].keys() == b["model_state"].keys()
        for key, tensor in a["model_state"].items():
            assert torch.equal(tensor, b["model_state"][key]), (name, key)
        assert a["epoch"] == b["epoch"] and a["best_metric"] == b["best_metric"]


def test_a_finished_run_is_returned_and_a_changed_config_retrains(
    fold: DataPaths, tmp_path: Path
) -> None:
    first = train_model("tiny_test", fold, "toy", config(epochs=2), tmp_path)
    stamp = first.last_path.stat().st_mtime_ns
    again = train_model("tiny_test", fold, "toy", config(epochs=2), tmp_path)
    assert again.last_path.stat().st_mtime_ns == stamp
    assert losses(again.history) == losses(first.history)
    changed = train_model("tiny_test", fold, "toy", config(epochs=2, lr=3e-3), tmp_path)
    assert losses(changed.history) != losses(first.history)
    assert load_torch(changed.last_path)["train_config"]["lr"] == 3e-3


def test_early_stopping_when_validation_f1_stops_improving(fold: DataPaths, tmp_path: Path) -> None:
    cfg = config(epochs=10, patience=2, model_overrides={"scale": 0.0})
    result = train_model("tiny_test", fold, "toy", cfg, tmp_path)
    assert result.stopped_early and result.epochs_run == 3 and result.best_epoch == 1


def test_divergence_stops_with_epoch_and_step(fold: DataPaths, tmp_path: Path) -> None:
    cfg = config(model_overrides={"nan_at_call": 3, "dropout": 0.0})
    with pytest.raises(TrainingDivergedError, match=r"epoch 1, step 2.*loss is nan"):
        train_model("tiny_test", fold, "toy", cfg, tmp_path)
    with pytest.raises(TrainingDivergedError, match="epoch"):
        train_model("tiny_test", fold, "toy", config(lr=1e30, warmup_steps=0), tmp_path / "b")


def test_checkpoints_load_weights_only_and_reproduce_the_best_metric(
    fold: DataPaths, tmp_path: Path
) -> None:
    result = train_model("tiny_test", fold, "toy", config(), tmp_path)
    ckpt = load_torch(result.best_path)  # weights_only=True
    assert ckpt["model_name"] == "tiny_test" and ckpt["class_ids"] == result.class_ids
    assert ckpt["train_config"]["window"] == {**WINDOW, "decimate": 1, "class_set": "protocol12"}
    assert {"optimizer_state", "rng", "step", "epoch", "best_metric"} <= set(ckpt)
    assert isinstance(ckpt["rng"]["torch"], torch.Tensor)

    model, loaded = load_trained_model(result.best_path)
    assert not model.training and loaded["best_epoch"] == result.best_epoch
    stats = load_feature_stats(fold.feature_stats("toy"))
    val = WindowData.from_fold(fold, "toy", "val", stats, WindowConfig(**WINDOW))
    probs, y = predict_proba(model, val, batch_size=7)
    assert probs.shape == (len(val), 12)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    # Validation's macro F1 is over the classes present in the validation labels.
    f1 = f1_score(y, probs.argmax(1), labels=np.unique(y), average="macro", zero_division=0)
    assert math.isclose(f1, result.best_metric)


# --- precision, devices, auxiliary losses ---------------------------------------------------
def test_bf16_autocast_trains_with_finite_losses(fold: DataPaths, tmp_path: Path) -> None:
    overrides = {"widths": [8, 16], "head_hidden": 16}
    cfg = config(epochs=3, lr=5e-3, precision="bf16", model_overrides=overrides)
    result = train_model("temporal_cnn", fold, "toy", cfg, tmp_path)
    assert result.completed
    assert all(math.isfinite(v) for r in result.history for v in losses([r])[0])
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_metric > result.majority_baseline_accuracy
    with pytest.raises(ValueError, match="precision"):
        config(precision="fp8")


@pytest.mark.parametrize("deterministic", [True, False])
def test_resume_on_another_device_is_refused_when_exactness_is_asked(
    fold: DataPaths, tmp_path: Path, deterministic: bool, caplog: pytest.LogCaptureFixture
) -> None:
    paused = train_model(
        "tiny_test", fold, "toy", config(max_steps=3, deterministic=deterministic), tmp_path
    )
    ckpt = load_torch(paused.last_path)
    assert ckpt["device"] == "cpu"
    save_torch({**ckpt, "device": "cuda (NVIDIA H200)"}, paused.last_path)  # as if written there
    cfg = config(deterministic=deterministic)
    if deterministic:
        with pytest.raises(DeviceMismatchError, match=r"written on cuda \(NVIDIA H200\).*on cpu"):
            train_model("tiny_test", fold, "toy", cfg, tmp_path)
    else:
        resumed = train_model("tiny_test", fold, "toy", cfg, tmp_path)
        assert resumed.completed and resumed.steps == 18  # continued, not restarted
        assert "not bit-exact" in caplog.text


def test_centre_attention_hinge_is_an_auxiliary_loss_of_training_passes() -> None:
    torch.manual_seed(0)
    channels = {"imu_hand": 10, "heart_rate": 1}
    model = models.create_model(
        "temporal_cnn", 3, channels, centre_hinge_weight=2.0, centre_hinge_margin=0.9
    )
    x = {m: torch.randn(4, 64, c) for m, c in channels.items()}
    present = {m: torch.ones(4, 64, dtype=torch.bool) for m in channels}
    model.train()
    model(x, present)
    aux = model.aux_loss
    assert aux is not None and 0 < float(aux.detach()) <= 2.0 * 0.9
    aux.backward()
    assert model.pool.score[0].weight.grad is not None  # it trains the attention
    model.eval()
    model(x, present)
    assert model.aux_loss is None
