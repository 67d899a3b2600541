"""Windows over fold splits: boundaries, normalisation, missing data, classes, batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ml_core.data.columns import CLASS_SETS, MODALITIES, MODEL_CHANNELS
from ml_core.data.windows import MODALITY_SLICES, WindowConfig, WindowData
from ml_core.io import save_torch, write_json
from ml_core.paths import DataPaths

C = len(MODEL_CHANNELS)


# --- fake fold builders (also used by test_train and test_feature_gbm) ------------------------
def write_shard(
    paths: DataPaths,
    subject: int,
    activity: int,
    data: np.ndarray,
    segments: list[tuple[int, int]] | None = None,
) -> str:
    """A tensor shard in the activity_shards format (one segment unless `segments` are given);
    returns its manifest path."""
    target = paths.tensor_shard(subject, activity)
    save_torch(
        {
            "format": 2,
            "segments": torch.tensor(segments or [(0, len(data))], dtype=torch.long),
            "data": torch.as_tensor(data, dtype=torch.float32),
            "channels": list(MODEL_CHANNELS),
            "subject_id": subject,
            "activity_id": activity,
            "session": "protocol",
            "timestamp_start": 0.0,
        },
        target,
    )
    return target.relative_to(paths.root).as_posix()


def write_manifest(paths: DataPaths, fold: str, split: str, lines: list[tuple[str, int, int]]):
    target = paths.manifest(fold, split)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(f"{p},{a},{b}\n" for p, a, b in lines))


def make_stats(mean: np.ndarray, std: np.ndarray) -> dict:
    return {
        "feature_order": list(MODEL_CHANNELS),
        "per_feature": {
            c: {"transform": "identity", "mean": float(m), "std": float(s)}
            for c, m, s in zip(MODEL_CHANNELS, mean, std, strict=True)
        },
    }


IDENTITY_STATS = make_stats(np.zeros(C), np.ones(C))


def make_signal_fold(
    root: Path,
    fold: str = "toy",
    activities: tuple[int, ...] = (1, 4, 5),
    subjects: tuple[int, ...] = (101, 102),
    rows: int = 400,
    seed: int = 0,
) -> DataPaths:
    """Shards whose channel means and a sinusoid's frequency depend on the activity; train on
    the first 70 % of each shard, validate on the last 25 %, stats from the train rows."""
    paths = DataPaths(root)
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    train, val, train_rows = [], [], []
    for k, activity in enumerate(activities):
        offset = rng.normal(0.0, 1.0, C)
        for subject in subjects:
            x = rng.normal(0.0, 1.0, (rows, C)) + offset * 1.5
            x[:, :3] += 2.0 * np.sin(2 * np.pi * (k + 1) * t / 16)[:, None]
            x[:, -1] = 80.0 + 20.0 * k + rng.normal(0.0, 2.0, rows)  # heart rate
            path = write_shard(paths, subject, activity, x)
            cut = int(rows * 0.7)
            train.append((path, 0, cut))
            val.append((path, int(rows * 0.75), rows))
            train_rows.append(x[:cut])
    write_manifest(paths, fold, "train", train)
    write_manifest(paths, fold, "val", val)
    all_train = np.concatenate(train_rows)
    write_json(make_stats(all_train.mean(0), all_train.std(0)), paths.feature_stats(fold))
    return paths


# --- tests --------------------------------------------------------------------------------------
def sentinel(range_id: int, rows: int) -> np.ndarray:
    """Every channel holds range_id * 10_000 + the row's index in its shard."""
    return np.repeat((range_id * 10_000 + np.arange(rows, dtype=np.float64))[:, None], C, 1)


@pytest.mark.parametrize("decimate", [1, 3])
def test_windows_never_cross_a_range_and_cover_it(tmp_path: Path, decimate: int) -> None:
    paths = DataPaths(tmp_path)
    a = write_shard(paths, 101, 1, sentinel(1, 300))
    b = write_shard(paths, 102, 4, sentinel(2, 500))
    c = write_shard(paths, 101, 4, sentinel(3, 20))  # shorter than a window: no windows
    # Two ranges of one shard with a gap: a window must not bridge them.
    ranges = [(a, 0, 300), (b, 0, 230), (b, 250, 500), (c, 0, 20)]
    write_manifest(paths, "f", "train", ranges)
    cfg = WindowConfig(window=32, stride=10, decimate=decimate)
    data = WindowData.from_fold(paths, "f", "train", IDENTITY_STATS, cfg)

    x = data.batch(torch.arange(len(data))).x["imu_hand"][:, :, 0].double().numpy()
    shard_id, row = np.divmod(x, 10_000)
    assert (shard_id == shard_id[:, :1]).all()  # one shard per window
    assert (np.diff(row, axis=1) == decimate).all()  # consecutive (decimated) rows
    # No window straddles the gap between b's two ranges.
    in_b = shard_id[:, 0] == 2
    assert not ((row[in_b, 0] < 230) & (row[in_b, -1] >= 250)).any()
    expected = sum(
        max(0, (len(range(s, e, decimate)) - cfg.window) // cfg.stride + 1) for _, s, e in ranges
    )
    assert len(data) == expected
    # The first window of every range starts at its first row.
    starts = {(int(i), int(r)) for i, r in zip(shard_id[:, 0], row[:, 0], strict=True)}
    assert {(1, 0), (2, 0), (2, 250)} <= starts
    # origins name each window's shard and first shard row (what the feature cache keys on).
    origins = data.origins
    assert origins is not None and origins.root == paths.root
    files = np.array(origins.files)[origins.shard.numpy()]
    assert (files == np.array([a, b, c])[shard_id[:, 0].astype(int) - 1]).all()
    assert (origins.row.numpy() == row[:, 0]).all()


@pytest.mark.parametrize("decimate", [1, 2])
def test_windows_never_span_a_time_gap_inside_a_shard(tmp_path: Path, decimate: int) -> None:
    paths = DataPaths(tmp_path)
    # An activity done in two stretches: rows 0-99 and 100-249, a time jump between them.
    a = write_shard(paths, 101, 12, sentinel(1, 250), segments=[(0, 100), (100, 250)])
    # Format-1 shard (no segments): one segment, as before.
    b = write_shard(paths, 101, 13, sentinel(2, 100))
    target = paths.tensor_shard(101, 13)
    legacy = torch.load(target, weights_only=True)
    del legacy["segments"], legacy["format"]
    save_torch(legacy, target)
    # The range starts inside the first stretch and ends inside the second.
    write_manifest(paths, "f", "train", [(a, 10, 240), (b, 0, 100)])
    cfg = WindowConfig(window=20, stride=10, decimate=decimate)
    data = WindowData.from_fold(paths, "f", "train", IDENTITY_STATS, cfg)

    x = data.batch(torch.arange(len(data))).x["imu_hand"][:, :, 0].double().numpy()
    shard_id, row = np.divmod(x, 10_000)
    in_a = shard_id[:, 0] == 1
    assert not ((row[in_a, 0] < 100) & (row[in_a, -1] >= 100)).any()
    assert (np.diff(row, axis=1) == decimate).all()
    # Pieces [10, 100) and [100, 240) of a, and [0, 100) of b, each windowed on its own.
    pieces = [(10, 100), (100, 240), (0, 100)]
    per_piece = [max(0, (len(range(s, e, decimate)) - 20) // 10 + 1) for s, e in pieces]
    assert len(data) == sum(per_piece)
    assert int(in_a.sum()) == per_piece[0] + per_piece[1]
    # Each piece is decimated from its own first row; the second stretch's first window
    # starts exactly at the gap.
    assert {10, 100} <= set(row[in_a, 0].astype(int).tolist())
    # Windows that would have crossed the gap (as a gap-blind cut would make) are not produced.
    blind = (len(range(10, 240, decimate)) - 20) // 10 + 1
    assert int(in_a.sum()) < blind


def test_normalisation_uses_the_given_stats(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path)
    rng = np.random.default_rng(1)
    raw = rng.normal(5.0, 3.0, (64, C))
    write_manifest(paths, "f", "val", [(write_shard(paths, 103, 2, raw), 0, 64)])
    mean, std = rng.normal(0, 2, C), rng.uniform(0.5, 4, C)
    data = WindowData.from_fold(paths, "f", "val", make_stats(mean, std), WindowConfig(64, 64))
    batch = data.batch(torch.tensor([0]))
    for modality, s in MODALITY_SLICES.items():
        expected = (raw[:, s] - mean[s]) / std[s]
        np.testing.assert_allclose(batch.x[modality][0].numpy(), expected, rtol=1e-5, atol=1e-5)


def test_nan_becomes_zero_and_marks_the_modality_absent(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path)
    raw = np.ones((40, C))
    hand = MODALITY_SLICES["imu_hand"]
    raw[5, hand.start + 1] = np.nan  # one hand channel missing: the whole hand sample is absent
    raw[7, MODALITY_SLICES["heart_rate"]] = np.nan
    write_manifest(paths, "f", "train", [(write_shard(paths, 101, 3, raw), 0, 40)])
    data = WindowData.from_fold(paths, "f", "train", IDENTITY_STATS, WindowConfig(40, 40))
    batch = data.batch(torch.tensor([0]))
    assert not batch.present["imu_hand"][0, 5] and batch.present["imu_hand"].sum() == 39
    assert not batch.present["heart_rate"][0, 7] and batch.present["heart_rate"].sum() == 39
    assert batch.present["imu_chest"].all() and batch.present["imu_ankle"].all()
    assert (batch.x["imu_hand"][0, 5] == 0).all() and (batch.x["heart_rate"][0, 7] == 0).all()
    assert (batch.x["imu_hand"][0, 6] == 1).all()
    assert all(torch.isfinite(t).all() for t in batch.x.values())


def test_class_set_filters_ranges_and_indexes_classes(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path)
    lines = [
        (write_shard(paths, 101, activity, np.zeros((64, C))), 0, 64) for activity in (24, 9, 1)
    ]
    write_manifest(paths, "f", "train", lines)
    protocol = WindowData.from_fold(paths, "f", "train", IDENTITY_STATS, WindowConfig(32, 32))
    assert len(protocol) == 4  # activity 9 (optional session) is not in protocol12
    p12 = CLASS_SETS["protocol12"]
    assert protocol.labels.tolist() == [p12.index(24)] * 2 + [p12.index(1)] * 2
    assert protocol.class_count_report()["rope jumping"] == 2
    assert protocol.class_counts().sum() == 4 and protocol.n_classes == 12

    cfg = WindowConfig(32, 32, class_set="all18")
    everything = WindowData.from_fold(paths, "f", "train", IDENTITY_STATS, cfg)
    a18 = CLASS_SETS["all18"]
    assert everything.labels.tolist() == [a18.index(a) for a in (24, 24, 9, 9, 1, 1)]
    assert everything.subjects.tolist() == [101] * 6


def test_batch_gather_equals_a_naive_slice(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path)
    rng = np.random.default_rng(2)
    raws = {a: rng.normal(size=(150, C)) for a in (4, 5)}
    lines = [(write_shard(paths, 104, a, x), 10, 150) for a, x in raws.items()]
    write_manifest(paths, "f", "test", lines)
    data = WindowData.from_fold(paths, "f", "test", IDENTITY_STATS, WindowConfig(48, 20))
    indices = torch.tensor([5, 0, 9, 3, 5])
    batch = data.batch(indices)
    assert batch.y.tolist() == data.labels[indices].tolist()
    for i, w in enumerate(indices.tolist()):
        start = int(data.starts[w])
        naive = data.data[start : start + 48]
        for modality, s in MODALITY_SLICES.items():
            assert torch.equal(batch.x[modality][i], naive[:, s])
            assert batch.x[modality].shape == (5, 48, len(MODALITIES[modality]))
    # Sequential batches visit every window once, the last batch short.
    sizes = [len(b.y) for b in data.iter_batches(4)]
    assert sum(sizes) == len(data) and max(sizes) == 4


def test_orders_are_reproducible_and_balanced_sampling_balances(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path)
    lines = [
        (write_shard(paths, 101, 1, np.zeros((4000, C))), 0, 4000),  # ~ 10x the windows of 24
        (write_shard(paths, 101, 24, np.zeros((400, C))), 0, 400),
    ]
    write_manifest(paths, "f", "train", lines)
    data = WindowData.from_fold(paths, "f", "train", IDENTITY_STATS, WindowConfig(16, 8))
    counts = data.class_counts()
    assert counts.max() > 9 * counts[counts > 0].min()

    def order(seed: int, **kw: bool) -> torch.Tensor:
        return data.order(torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(order(0, shuffle=True), order(0, shuffle=True))
    assert not torch.equal(order(0, shuffle=True), order(1, shuffle=True))
    assert sorted(order(0, shuffle=True).tolist()) == list(range(len(data)))
    drawn = torch.bincount(data.labels[order(0, balanced=True)], minlength=data.n_classes)
    drawn = drawn[counts > 0].double() / len(data)
    assert torch.allclose(drawn, torch.full_like(drawn, 0.5), atol=0.05)


def test_bad_inputs_name_the_file(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path)
    path = write_shard(paths, 101, 1, np.zeros((50, C)))
    write_manifest(paths, "f", "train", [(path, 0, 60)])
    with pytest.raises(ValueError, match="outside its 50 rows"):
        WindowData.from_fold(paths, "f", "train", IDENTITY_STATS, WindowConfig(16, 8))
    stats = make_stats(np.zeros(C), np.ones(C))
    del stats["per_feature"][MODEL_CHANNELS[3]]
    write_manifest(paths, "f", "train", [(path, 0, 50)])
    with pytest.raises(ValueError, match=MODEL_CHANNELS[3]):
        WindowData.from_fold(paths, "f", "train", stats, WindowConfig(16, 8))
    with pytest.raises(ValueError, match="class_set"):
        WindowConfig(class_set="all20")
