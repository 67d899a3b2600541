"""Feature statistics: equal to numpy on exactly the train rows, blind to val and test rows."""

from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

import ml_core.data.stats as stats_module
from ml_core.data.columns import (
    ACTIVITY,
    HEART_RATE,
    MODEL_CHANNELS,
    SESSION,
    SUBJECT,
    TABLE_COLUMNS,
    TIMESTAMP,
)
from ml_core.data.folds import (
    ShardRange,
    build_fold,
    load_shard_index,
    read_manifest,
    write_manifests,
)
from ml_core.data.shards import write_activity_shards
from ml_core.data.stats import (
    STD_FLOOR,
    compute_feature_stats,
    load_feature_stats,
    write_feature_stats,
)
from ml_core.io import load_torch, save_torch
from ml_core.paths import DataPaths

SENSORS = [c for c in TABLE_COLUMNS if c not in (TIMESTAMP, ACTIVITY, SUBJECT, SESSION)]
WINDOW = 32
CONSTANT = "chest_temperature_c"


def fake_table(subject: int, activities: list[int], rows: int, seed: int) -> pl.DataFrame:
    """An imputed-style 56-column table, Protocol session, about 10 % NaN in the sensors."""
    rng = np.random.default_rng(seed)
    n = rows * len(activities)
    sensors = rng.normal(loc=50.0, scale=20.0, size=(n, len(SENSORS)))
    sensors[rng.random(size=sensors.shape) < 0.1] = np.nan
    frame = pl.DataFrame(
        {
            TIMESTAMP: 0.01 * np.arange(n),
            ACTIVITY: np.repeat(activities, rows),
            **{c: sensors[:, i] for i, c in enumerate(SENSORS)},
            SUBJECT: np.full(n, subject),
            SESSION: ["protocol"] * n,
        }
    ).with_columns(pl.lit(31.5).alias(CONSTANT))
    return frame.select(TABLE_COLUMNS).cast(
        {ACTIVITY: pl.Int16, SUBJECT: pl.Int16, **dict.fromkeys(SENSORS, pl.Float32)}
    )


@pytest.fixture
def fold(tmp_path) -> tuple[DataPaths, dict[int, pl.DataFrame], dict[str, list[ShardRange]]]:
    """Two subjects' shards and the stratified fold over them, written to disk."""
    paths = DataPaths(tmp_path)
    tables = {}
    for subject, seed in ((101, 0), (102, 1)):
        tables[subject] = fake_table(subject, [1, 4, 12], rows=500 + 37 * seed, seed=seed)
        write_activity_shards(tables[subject], paths, subject)
    ranges = build_fold("stratified", load_shard_index(paths), window=WINDOW)
    write_manifests(paths, "stratified", ranges, window=WINDOW)
    return paths, tables, ranges


def rows_of(tables: dict[int, pl.DataFrame], ranges: list[ShardRange]) -> np.ndarray:
    """The model-channel rows of `ranges`, taken from the tables (not from the tensors)."""
    pieces = []
    for r in ranges:
        table = tables[r.subject].filter(pl.col(ACTIVITY) == r.activity).sort(TIMESTAMP)
        pieces.append(table.select(MODEL_CHANNELS).to_numpy()[r.start : r.end])
    return np.concatenate(pieces).astype(np.float64)


def test_stats_equal_numpy_on_exactly_the_train_rows(fold):
    paths, tables, ranges = fold
    train = read_manifest(paths.manifest("stratified", "train"))
    stats = compute_feature_stats(paths, train)

    x = rows_of(tables, train)
    assert np.isnan(x).any()
    assert stats["feature_order"] == MODEL_CHANNELS
    assert stats["train_rows"] == len(x) == sum(r.rows for r in ranges["train"])
    assert stats["n_ranges"] == len(train)
    for i, channel in enumerate(MODEL_CHANNELS):
        entry = stats["per_feature"][channel]
        assert entry["transform"] == "identity"
        assert entry["count"] == int((~np.isnan(x[:, i])).sum())
        assert entry["nan_fraction"] == pytest.approx(np.isnan(x[:, i]).mean(), abs=1e-12)
        if channel == CONSTANT:
            assert entry["mean"] == 31.5 and entry["std"] == STD_FLOOR
        else:
            assert entry["mean"] == pytest.approx(np.nanmean(x[:, i]), rel=1e-10)
            assert entry["std"] == pytest.approx(max(np.nanstd(x[:, i]), STD_FLOOR), rel=1e-10)


def test_val_and_test_rows_cannot_change_the_stats(fold):
    paths, _, ranges = fold
    before = compute_feature_stats(paths, ranges["train"])

    def overwrite(held: list[ShardRange], value: float) -> None:
        for r in held:
            shard = load_torch(paths.root / r.path)
            shard["data"][r.start : r.end] = value
            save_torch(shard, paths.root / r.path)

    overwrite(ranges["val"] + ranges["test"], 1e9)
    assert compute_feature_stats(paths, ranges["train"]) == before
    # The same edit on one train row does show, so the comparison above can fail.
    overwrite([dataclasses.replace(ranges["train"][0], end=1)], 1e9)
    assert compute_feature_stats(paths, ranges["train"]) != before


def test_channel_never_observed_normalises_as_a_no_op(tmp_path):
    paths = DataPaths(tmp_path)
    table = fake_table(103, [5], rows=300, seed=2).with_columns(
        pl.lit(None, dtype=pl.Float32).alias(HEART_RATE)
    )
    report = write_activity_shards(table, paths, 103)
    whole = ShardRange.from_path(report.shards[0]["tensor"], 0, 300)
    entry = compute_feature_stats(paths, [whole])["per_feature"][HEART_RATE]
    assert entry == {
        "transform": "identity",
        "mean": 0.0,
        "std": 1.0,
        "count": 0,
        "nan_fraction": 1.0,
    }


def test_stats_file_round_trips_and_bad_files_are_named(fold, tmp_path):
    paths, _, ranges = fold
    stats = compute_feature_stats(paths, ranges["train"])
    target = paths.feature_stats("stratified")
    write_feature_stats(stats, target)
    assert load_feature_stats(target) == stats

    stats["per_feature"]["hand_gyro_y"]["std"] = "wide"
    bad = tmp_path / "bad.json"
    write_feature_stats(stats, bad)
    with pytest.raises(ValueError, match=r"bad.json: field per_feature.hand_gyro_y.std is 'wide'"):
        load_feature_stats(bad)


def test_ranges_outside_a_shard_or_no_ranges_are_errors(fold):
    paths, _, ranges = fold
    first = ranges["test"][0]
    with pytest.raises(
        ValueError, match=r"activity_1.pt: range \[\d+, 100000\) outside its 500 rows"
    ):
        compute_feature_stats(paths, [dataclasses.replace(first, end=100_000)])
    with pytest.raises(ValueError, match="no train ranges"):
        compute_feature_stats(paths, [])


def test_nan_free_and_nan_blocks_merge_to_the_numpy_result(tmp_path, monkeypatch):
    # Small blocks, so ranges split into many blocks and end in partial ones.
    monkeypatch.setattr(stats_module, "BLOCK_ROWS", 64)
    paths = DataPaths(tmp_path)
    table = fake_table(104, [1, 4], rows=1000, seed=3)
    # Walking rows have no NaN (the unmasked path) and sit far from zero, where a one-pass
    # sum of squares would cancel even in float64; lying rows keep ~10 % NaN (the masked path).
    walking = pl.col(ACTIVITY) == 4
    table = table.with_columns(
        pl.when(walking).then(pl.col(c).fill_nan(60.0) + 1e8).otherwise(pl.col(c)).alias(c)
        for c in SENSORS
    )
    report = write_activity_shards(table, paths, 104)
    tensors = {s["activity"]: s["tensor"] for s in report.shards}
    lying = [ShardRange.from_path(tensors[1], 5, 931)]
    walks = [
        ShardRange.from_path(tensors[4], 0, 1000),
        ShardRange.from_path(tensors[4], 17, 300),  # rows may count twice, like numpy here
    ]
    for ranges in (lying, walks, lying + walks):
        x = np.concatenate(
            [load_torch(paths.root / r.path)["data"].numpy()[r.start : r.end] for r in ranges]
        ).astype(np.float64)
        assert np.isnan(x).any() == (ranges != walks)
        stats = compute_feature_stats(paths, ranges)
        for i, channel in enumerate(MODEL_CHANNELS):
            entry = stats["per_feature"][channel]
            assert entry["count"] == int((~np.isnan(x[:, i])).sum())
            assert entry["mean"] == pytest.approx(np.nanmean(x[:, i]), rel=1e-10)
            assert entry["std"] == pytest.approx(max(np.nanstd(x[:, i]), STD_FLOOR), rel=1e-10)
