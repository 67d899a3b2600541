"""Imputation on hand-made sequences: heart-rate fill and smoothing, IMU gap interpolation."""

from __future__ import annotations

import math

import polars as pl
import pytest

from ml_core.columns import (
    ACTIVITY,
    HEART_RATE,
    IMUS,
    SESSION,
    SUBJECT,
    TABLE_COLUMNS,
    TIMESTAMP,
    imu_columns,
)
from ml_core.impute import impute_recording
from ml_core.ingest import TABLE_DTYPES

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
