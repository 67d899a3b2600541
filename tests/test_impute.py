"""Imputation on hand-made sequences: heart-rate fill and smoothing, IMU gap interpolation."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ml_core.data.columns import (
    ACTIVITY,
    HEART_RATE,
    IMUS,
    SESSION,
    SUBJECT,
    TABLE_COLUMNS,
    TIMESTAMP,
    imu_columns,
)
from ml_core.data.impute import _segment_id, impute_recording
from ml_core.data.ingest import TABLE_DTYPES

NAN = float("nan")
IMU_CHANNELS = [c for imu in IMUS for c in imu_columns(imu)]


def _table(
    n: int,
    *,
    start: float = 100.0,
    activity: int = 1,
    subject: int = 101,
    session: str = "protocol",
    heart_rate: list[float] | None = None,
) -> pl.DataFrame:
    """n samples 0.01 s apart; IMU channel k reads 10 k + row, a straight line in time, so a
    correct linear interpolation gives back exactly the value that was blanked."""
    rows = range(n)
    data = {
        TIMESTAMP: [round(start + i / 100, 2) for i in rows],
        ACTIVITY: [activity] * n,
        HEART_RATE: [float(v) for v in heart_rate] if heart_rate is not None else [90.0] * n,
        **{c: [10.0 * k + i for i in rows] for k, c in enumerate(IMU_CHANNELS)},
        SUBJECT: [subject] * n,
        SESSION: [session] * n,
    }
    return pl.DataFrame(data).cast(TABLE_DTYPES).select(TABLE_COLUMNS)


def _blank(frame: pl.DataFrame, imu: str, rows: list[int]) -> pl.DataFrame:
    """A dropped packet: every channel of one IMU is NaN on the given rows."""
    hit = pl.int_range(pl.len()).is_in(rows)
    return frame.with_columns(
        pl.when(hit).then(NAN).otherwise(pl.col(c)).cast(pl.Float32).alias(c)
        for c in imu_columns(imu)
    )


def _is_nan(frame: pl.DataFrame, column: str) -> list[bool]:
    return frame[column].is_nan().to_list()


def test_heart_rate_is_filled_both_ways_then_median_smoothed():
    hr = [NAN, 90, NAN, 200, NAN, 90, 90, NAN, 95, NAN]
    out, report = impute_recording(_table(10, heart_rate=hr), hr_median_window=5)
    # Forward then backward fill: 90 90 90 200 200 90 90 90 95 95. Centred median of 5
    # (shorter windows at the ends): the two-sample spike to 200 is removed.
    assert out[HEART_RATE].to_list() == [90, 90, 90, 90, 90, 90, 90, 90, 92.5, 95]
    assert report.heart_rate_coverage_before == pytest.approx(0.5)
    assert report.heart_rate_coverage_after == 1.0


def test_heart_rate_default_window_spans_25_samples():
    # A 12-sample plateau is shorter than half of a 25-sample window, so it is smoothed away.
    hr = [80.0] * 30 + [150.0] * 12 + [80.0] * 30
    out, _ = impute_recording(_table(72, heart_rate=hr))
    assert out[HEART_RATE].to_list() == [80.0] * 72
    # A 13-sample plateau is the majority of the centred window at its middle.
    hr = [80.0] * 30 + [150.0] * 13 + [80.0] * 30
    out, _ = impute_recording(_table(73, heart_rate=hr))
    assert out[HEART_RATE][36] == 150.0


def test_three_sample_packet_gap_is_interpolated_linearly():
    frame = _blank(_table(12), "hand", [4, 5, 6])
    out, report = impute_recording(frame)
    expected = _table(12)
    for c in imu_columns("hand"):
        assert out[c].to_list() == expected[c].to_list()
    assert out["hand_acc16_x"].to_list()[3:8] == [
        13.0,
        14.0,
        15.0,
        16.0,
        17.0,
    ]  # channel 1: 10 + row
    assert report.interpolated == {"hand": 3, "chest": 0, "ankle": 0}
    assert report.left_missing == {"hand": 0, "chest": 0, "ankle": 0}
    assert report.long_gaps == {"hand": 0, "chest": 0, "ankle": 0}


def test_interpolation_uses_the_neighbours_not_a_global_line():
    frame = _table(5).with_columns(pl.Series("chest_gyro_x", [1.0, 3.0, NAN, NAN, 9.0]))
    out, _ = impute_recording(frame.cast(TABLE_DTYPES))
    assert out["chest_gyro_x"].to_list() == [1.0, 3.0, 5.0, 7.0, 9.0]


def test_gap_longer_than_the_limit_stays_nan_and_is_counted():
    gap = list(range(5, 25))  # 20 samples
    frame = _blank(_blank(_table(40), "ankle", gap), "ankle", [30, 31])
    out, report = impute_recording(frame, max_gap_samples=10)
    missing = _is_nan(out, "ankle_gyro_z")
    assert [i for i, m in enumerate(missing) if m] == gap
    assert out["ankle_gyro_z"][30] == _table(40)["ankle_gyro_z"][30]
    assert report.long_gaps == {"hand": 0, "chest": 0, "ankle": 1}
    assert report.left_missing["ankle"] == 20
    assert report.interpolated["ankle"] == 2


def test_gap_of_exactly_the_limit_is_filled_and_one_more_is_not():
    out, report = impute_recording(_blank(_table(20), "hand", list(range(5, 9))), max_gap_samples=4)
    assert not any(_is_nan(out, "hand_mag_y"))
    out, report = impute_recording(
        _blank(_table(20), "hand", list(range(5, 10))), max_gap_samples=4
    )
    assert sum(_is_nan(out, "hand_mag_y")) == 5
    assert report.long_gaps["hand"] == 1


def test_gap_at_the_edge_of_a_segment_is_left_missing_but_not_a_long_gap():
    out, report = impute_recording(_blank(_table(10), "chest", [0, 1, 9]))
    assert _is_nan(out, "chest_acc16_y") == [True, True] + [False] * 7 + [True]
    assert report.left_missing["chest"] == 3
    assert report.long_gaps["chest"] == 0


def test_no_interpolation_across_an_activity_change():
    walk = _blank(_table(6, activity=4), "hand", [4, 5])
    run = _blank(_table(6, start=100.06, activity=5), "hand", [0])
    out, report = impute_recording(pl.concat([walk, run]))
    assert [i for i, m in enumerate(_is_nan(out, "hand_acc16_z")) if m] == [4, 5, 6]
    assert report.interpolated["hand"] == 0
    assert report.left_missing["hand"] == 3


def test_no_interpolation_across_a_removed_transient():
    # The same activity resumes 30 s later (the transient in between was dropped).
    before = _blank(_table(6, start=100.0), "ankle", [5])
    after = _blank(_table(6, start=130.0), "ankle", [0])
    inside = _blank(_table(6, start=130.06), "ankle", [2])
    out, report = impute_recording(pl.concat([before, after, inside]))
    assert [i for i, m in enumerate(_is_nan(out, "ankle_mag_x")) if m] == [5, 6]
    assert report.interpolated["ankle"] == 1


def test_subjects_and_sessions_are_imputed_in_isolation():
    protocol = _blank(_table(5, heart_rate=[100, NAN, NAN, NAN, NAN]), "hand", [4])
    optional = _table(5, start=100.05, session="optional", heart_rate=[NAN, NAN, 150, NAN, NAN])
    optional = _blank(optional, "hand", [0])
    other = _table(5, start=100.1, subject=102, heart_rate=[NAN] * 5)
    out, report = impute_recording(pl.concat([protocol, optional, other]), hr_median_window=3)
    hr = out[HEART_RATE].to_list()
    assert hr[:10] == [100.0] * 5 + [150.0] * 5
    assert all(math.isnan(v) for v in hr[10:])  # subject 102 never had a heart rate
    assert report.heart_rate_coverage_after == pytest.approx(10 / 15)
    # The hand gap spans the session boundary although the timestamps run on: not filled.
    assert _is_nan(out, "hand_temperature_c")[4:6] == [True, True]
    assert report.interpolated["hand"] == 0


def test_output_keeps_columns_dtypes_and_row_order():
    frame = _blank(_table(30, heart_rate=[NAN if i % 9 else 88.0 for i in range(30)]), "hand", [7])
    out, _ = impute_recording(frame)
    assert out.schema == frame.schema
    assert out[TIMESTAMP].to_list() == frame[TIMESTAMP].to_list()
    untouched = [c for c in TABLE_COLUMNS if c != HEART_RATE and not c.startswith("hand_")]
    assert out.select(untouched).equals(frame.select(untouched))


def _polars_reference(
    frame: pl.DataFrame, max_gap: int
) -> tuple[pl.DataFrame, dict[str, dict[str, int]]]:
    """The polars implementation this module had before its numpy gap filler: per channel,
    forward/backward fills of the neighbouring valid sample's row, value and segment; per
    IMU, missing means any channel NaN or null. Returns the IMU columns and the counts."""
    work = frame.with_columns(pl.int_range(pl.len()).alias("row"), _segment_id().alias("seg"))

    def fill(column: str) -> pl.Expr:
        value = pl.col(column).fill_nan(None).cast(pl.Float64)
        valid = value.is_not_null()
        prev_row, prev_seg, prev_value = (
            pl.when(valid).then(e).forward_fill() for e in (pl.col("row"), pl.col("seg"), value)
        )
        next_row, next_seg, next_value = (
            pl.when(valid).then(e).backward_fill() for e in (pl.col("row"), pl.col("seg"), value)
        )
        fillable = (
            ~valid
            & (prev_seg == pl.col("seg"))
            & (next_seg == pl.col("seg"))
            & (next_row - prev_row - 1 <= max_gap)
        )
        fraction = (pl.col("row") - prev_row) / (next_row - prev_row)
        interpolated = prev_value + (next_value - prev_value) * fraction
        return (
            pl.when(fillable.fill_null(False))
            .then(interpolated)
            .otherwise(pl.col(column))
            .cast(pl.Float32)
            .alias(column)
        )

    def missing(table: pl.DataFrame, imu: str) -> pl.Series:
        return table.select(
            pl.any_horizontal(pl.col(c).is_nan() | pl.col(c).is_null() for c in imu_columns(imu))
        ).to_series()

    out = work.with_columns(fill(c) for c in IMU_CHANNELS)
    counts: dict[str, dict[str, int]] = {"interpolated": {}, "left_missing": {}, "long_gaps": {}}
    for imu in IMUS:
        before, after = missing(work, imu), missing(out, imu)
        counts["interpolated"][imu] = int((before & ~after).sum())
        counts["left_missing"][imu] = int(after.sum())
        runs = pl.DataFrame({"m": before, "seg": work["seg"]}).with_columns(
            run=((pl.col("m") != pl.col("m").shift()) | (pl.col("seg") != pl.col("seg").shift()))
            .fill_null(True)
            .cum_sum()
        )
        lengths = runs.filter(pl.col("m")).group_by("run").len()["len"]
        counts["long_gaps"][imu] = int((lengths > max_gap).sum())
    return out.select(IMU_CHANNELS), counts


@pytest.mark.parametrize("seed", range(6))
def test_gap_filler_matches_the_polars_reference_on_random_gaps(seed):
    rng = np.random.default_rng(seed)
    # Segments of random length: activity changes, removed transients, a session change.
    pieces, clock = [], 100.0
    for k in range(8):
        n = int(rng.integers(40, 400))
        session = "protocol" if k < 5 else "optional"
        pieces.append(_table(n, start=clock, activity=[1, 4, 4, 5][k % 4], session=session))
        clock = round(clock + n / 100 + (30.0 if k % 3 == 2 else 0.0), 2)
    frame = pl.concat(pieces)
    n = frame.height
    values = {c: frame[c].to_numpy().copy() for c in IMU_CHANNELS}
    for c in IMU_CHANNELS:  # smooth random signals, so interpolation is not exact
        values[c] += rng.normal(scale=5.0, size=n).cumsum().astype(np.float32)
    for _ in range(60):  # dropped packets (every channel of an IMU) of 1..15 samples
        start, length = int(rng.integers(0, n)), int(rng.integers(1, 16))
        for c in imu_columns(IMUS[rng.integers(len(IMUS))]):
            values[c][start : start + length] = np.nan
    for _ in range(30):  # a lone NaN in one channel also makes that IMU sample missing
        values[IMU_CHANNELS[rng.integers(len(IMU_CHANNELS))]][rng.integers(n)] = np.nan
    frame = frame.with_columns(pl.Series(c, v, dtype=pl.Float32) for c, v in values.items())
    # Nulls (not NaN) count as missing too; one that is not filled stays null.
    nulls = rng.choice(n, size=20, replace=False)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()).is_in(nulls))
        .then(None)
        .otherwise(pl.col("hand_gyro_x"))
        .alias("hand_gyro_x")
    )

    for max_gap in (3, 10):
        out, report = impute_recording(frame, max_gap_samples=max_gap)
        expected, counts = _polars_reference(frame, max_gap)
        assert_frame_equal(out.select(IMU_CHANNELS), expected, check_exact=True)
        assert report.interpolated == counts["interpolated"]
        assert report.left_missing == counts["left_missing"]
        assert report.long_gaps == counts["long_gaps"]
        # The random gaps do exercise every case: filled, too long, and left missing.
        assert sum(report.interpolated.values()) > 0
        assert sum(report.long_gaps.values()) > 0
        assert sum(report.left_missing.values()) > 0
