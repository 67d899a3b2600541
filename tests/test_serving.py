"""Serving parity: raw `.dat` rows through the logged model predict what evaluation predicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from ml_core.data import pipeline as data_pipeline
from ml_core.data.columns import HEART_RATE, MODEL_CHANNELS, SESSION, SUBJECT, TIMESTAMP
from ml_core.data.folds import read_manifest
from ml_core.data.impute import impute_recording
from ml_core.data.ingest import read_subject
from ml_core.data.stats import compute_feature_stats, write_feature_stats
from ml_core.data.synthetic import generate_recording, write_dataset
from ml_core.data.windows import WindowConfig, WindowData
from ml_core.io import load_torch
from ml_core.lifecycle.serving import (
    SensorWindowClassifier,
    clean_windows,
    export_serving_program,
    load_serving_program,
)
from ml_core.paths import DataPaths
from ml_core.training.train import TrainConfig, load_trained_model, predict_proba, train_model

TRAIN, TEST = (101, 105), 102
FOLD = "serving"
WINDOW = WindowConfig(window=128, stride=64)


def test_cleaning_a_whole_stretch_equals_the_imputation_step() -> None:
    """Over one contiguous stretch the serving cleaning and `impute_recording` agree."""
    frame = generate_recording(103, "protocol", scale="tiny", seed=1)
    # The longest stretch of one activity (an activity change is a segment boundary).
    runs = frame.with_columns(run=(pl.col("activity_id").diff() != 0).fill_null(True).cum_sum())
    longest = runs.group_by("run").len().sort("len")["run"][-1]
    stretch = runs.filter(pl.col("run") == longest).drop("run")
    stretch = stretch.with_columns(
        pl.lit(103).cast(pl.Int16).alias(SUBJECT), pl.lit("protocol").alias(SESSION)
    )
    raw = torch.from_numpy(stretch.select(MODEL_CHANNELS).to_numpy().astype(np.float32))
    # The generator drops IMU packets and reads heart rate at ~9 Hz, so there is work to do.
    assert torch.isnan(raw).any(0).all() and torch.isnan(raw[:, -1]).float().mean() > 0.8

    imputed, _ = impute_recording(stretch)
    expected = imputed.select(MODEL_CHANNELS).to_numpy().astype(np.float32)
    got = clean_windows(raw[None])[0].numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4, equal_nan=True)
    assert np.isnan(got).sum() == np.isnan(expected).sum()


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataPaths, Path]:
    """Three tiny synthetic subjects through the real pipeline; a temporal CNN trained briefly
    on two of them, tested on the third."""
    paths = DataPaths(tmp_path_factory.mktemp("serving"))
    write_dataset(paths.raw, scale="tiny", seed=0, subjects=[*TRAIN, TEST])
    for subject in (*TRAIN, TEST):
        data_pipeline.ingest_subject(paths, subject)
        assert data_pipeline.validate_subject(paths, subject)[0].passed
        data_pipeline.impute_subject(paths, subject)
        assert data_pipeline.shard_subject(paths, subject)[0]
    index = {s: sorted(paths.tensor_shard_dir(s).glob("activity_*.pt")) for s in (*TRAIN, TEST)}
    lines = {
        split: "".join(
            f"{p.relative_to(paths.root).as_posix()},0,{_rows(p)}\n"
            for s in subjects
            for p in index[s]
        )
        for split, subjects in (("train", TRAIN), ("val", TRAIN), ("test", (TEST,)))
    }
    for split, text in lines.items():
        paths.manifest(FOLD, split).parent.mkdir(parents=True, exist_ok=True)
        paths.manifest(FOLD, split).write_text(text)
    stats = compute_feature_stats(paths, read_manifest(paths.manifest(FOLD, "train")))
    write_feature_stats(stats, paths.feature_stats(FOLD))
    config = TrainConfig(epochs=2, window=WINDOW, seed=0, device="cpu", patience=None)
    overrides = {"widths": (16, 32), "head_hidden": 32}
    config.model_overrides = overrides
    result = train_model("temporal_cnn", paths, FOLD, config, paths.root / "model")
    return paths, result.best_path


def _rows(shard: Path) -> int:
    return int(load_torch(shard, mmap=True)["data"].shape[0])


def _raw_test_windows(paths: DataPaths) -> tuple[torch.Tensor, np.ndarray]:
    """Every test window cut again from the raw `.dat` rows (transients included), found by the
    timestamps of its shard rows; and the activity of each."""
    raw = read_subject(paths, TEST)
    windows, labels = [], []
    for r in read_manifest(paths.manifest(FOLD, "test")):
        if r.activity not in WINDOW.class_ids:
            continue
        shard = load_torch(paths.root / r.path)
        times = pl.read_parquet(paths.shard_dir(TEST) / f"activity_{r.activity}.parquet")
        session = raw.filter(pl.col(SESSION) == shard["session"])
        stamps = session[TIMESTAMP].to_numpy()
        values = session.select(MODEL_CHANNELS).to_numpy().astype(np.float32)
        for a, b in shard["segments"].tolist():
            for start in range(a, b - WINDOW.window + 1, WINDOW.stride):
                first = np.searchsorted(stamps, times[TIMESTAMP][start])
                block = slice(first, first + WINDOW.window)
                expected = times[TIMESTAMP].to_numpy()[start : start + WINDOW.window]
                np.testing.assert_allclose(stamps[block], expected)  # the same rows, in order
                windows.append(values[block])
                labels.append(r.activity)
    return torch.from_numpy(np.stack(windows)), np.array(labels)


def test_raw_rows_through_the_serving_program_agree_with_evaluation(
    trained: tuple[DataPaths, Path], tmp_path: Path
) -> None:
    paths, best = trained
    model, ckpt = load_trained_model(best)
    stats = compute_feature_stats(paths, read_manifest(paths.manifest(FOLD, "train")))
    test = WindowData.from_fold(paths, FOLD, "test", stats, WINDOW)
    probs, y = predict_proba(model, test)
    evaluation = probs.argmax(1)

    windows, activities = _raw_test_windows(paths)
    assert len(windows) == len(test) > 50
    class_ids = np.array(ckpt["class_ids"])
    assert (class_ids[y] == activities).all()
    assert torch.isnan(windows[..., MODEL_CHANNELS.index(HEART_RATE)]).float().mean() > 0.8

    export_serving_program(best, stats, tmp_path / "model.pt2")
    served = load_serving_program(tmp_path / "model.pt2")
    served_probs = served(windows.numpy())
    with torch.no_grad():
        direct = SensorWindowClassifier(model, stats)(windows).numpy()
    np.testing.assert_allclose(served_probs, direct, atol=1e-5)
    agreement = float((served_probs.argmax(1) == evaluation).mean())
    assert agreement >= 0.99, agreement
    # For the record: the same model on raw rows without the cleaning (as serving was before).
    with torch.no_grad():
        z = (windows - serving_mean(stats)) / serving_std(stats)
        bare = SensorWindowClassifier(model, stats)
        x = {m: torch.nan_to_num(z[..., a:b]) for m, (a, b) in bare.slices.items()}
        present = {m: ~torch.isnan(z[..., a:b]).any(-1) for m, (a, b) in bare.slices.items()}
        uncleaned = float((model(x, present).argmax(1).numpy() == evaluation).mean())
    print(
        f"agreement with evaluation over {len(windows)} windows: {agreement:.4f} "
        f"(without cleaning {uncleaned:.4f})"
    )


def serving_mean(stats: dict) -> torch.Tensor:
    return torch.tensor([stats["per_feature"][c]["mean"] for c in MODEL_CHANNELS])


def serving_std(stats: dict) -> torch.Tensor:
    return torch.tensor([stats["per_feature"][c]["std"] for c in MODEL_CHANNELS])
