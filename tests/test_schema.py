"""The recording schema: good tables pass; bad values, nulls and dtypes fail by column."""

from __future__ import annotations

import polars as pl
import pytest

from ml_core.data.columns import (
    ACTIVITY,
    DAT_COLUMNS,
    HEART_RATE,
    SESSION,
    SUBJECT,
    TABLE_COLUMNS,
    TIMESTAMP,
)
from ml_core.data.ingest import TABLE_DTYPES
from ml_core.data.schema import MAX_FAILURE_ROWS, drop_transient, nan_rates, validate_recording

NAN = float("nan")
# The first row of Protocol/subject101.dat (PAMAP2_FACTS.md).
OFFICIAL_ROW = (
    "8.38 0 104 30 2.37223 8.60074 3.51048 2.43954 8.76165 3.35465 -0.0922174 0.0568115 "
    "-0.0158445 14.6806 -69.2128 -5.58905 1 0 0 0 31.8125 0.23808 9.80003 -1.68896 0.265304 "
    "9.81549 -1.41344 -0.00506495 -0.00678097 -0.00566295 0.47196 -51.0499 43.2903 1 0 0 0 "
    "30.3125 9.65918 -1.65569 -0.0997967 9.64689 -1.55576 0.310404 0.00830026 0.00925038 "
    "-0.0175803 -61.1888 -38.9599 -58.1438 1 0 0 0"
)


def _frame(n: int = 20) -> pl.DataFrame:
    """n copies of the official row, 0.01 s apart, activity 1 after the first row, most heart
    rates NaN (as in the files) and a dropped hand packet on row 3."""
    values = dict(zip(DAT_COLUMNS, (float(v) for v in OFFICIAL_ROW.split(" ")), strict=True))
    frame = pl.DataFrame(
        {**{c: [v] * n for c, v in values.items()}, SUBJECT: [101] * n, SESSION: ["protocol"] * n}
    )
    row = pl.int_range(pl.len())
    frame = frame.with_columns(
        (pl.col(TIMESTAMP) + row / 100).alias(TIMESTAMP),
        pl.when(row == 0).then(0).otherwise(1).alias(ACTIVITY),
        pl.when(row % 10 == 0).then(pl.col(HEART_RATE)).otherwise(NAN).alias(HEART_RATE),
        *(
            pl.when(row == 3).then(NAN).otherwise(pl.col(c)).alias(c)
            for c in DAT_COLUMNS
            if c.startswith("hand_")
        ),
    )
    return frame.cast(TABLE_DTYPES).select(TABLE_COLUMNS)


def _set(frame: pl.DataFrame, column: str, row: int, value: object) -> pl.DataFrame:
    dtype = frame.schema[column]
    return frame.with_columns(
        pl.when(pl.int_range(pl.len()) == row)
        .then(pl.lit(value))
        .otherwise(pl.col(column))
        .cast(dtype)
        .alias(column)
    )


def test_good_frame_with_nan_sensors_passes():
    result = validate_recording(_frame())
    assert result.passed
    assert result.n_failures == 0
    assert result.failure_cases.height == 0


@pytest.mark.parametrize(
    "column, row, value, check",
    [
        (HEART_RATE, 4, 400.0, "or NaN"),
        (HEART_RATE, 5, 20.0, "or NaN"),
        (ACTIVITY, 7, 8, "isin"),
        (TIMESTAMP, 2, None, "not_nullable"),
        (TIMESTAMP, 2, NAN, "not_nullable"),
        (TIMESTAMP, 2, -1.0, "greater_than_or_equal_to"),
        (ACTIVITY, 6, None, "not_nullable"),
        (SUBJECT, 1, 110, "isin"),
        (SESSION, 1, "Protocol", "isin"),
        ("chest_acc16_y", 9, 250.0, "or NaN"),
        ("ankle_acc6_z", 9, -90.0, "or NaN"),
        ("hand_gyro_x", 9, 41.0, "or NaN"),
        ("ankle_mag_x", 9, 301.0, "or NaN"),
        ("hand_temperature_c", 9, 55.0, "or NaN"),
        ("chest_orientation_w", 9, 1.6, "or NaN"),
        ("chest_gyro_z", 9, float("inf"), "or NaN"),
        ("chest_gyro_z", 9, None, "or NaN"),  # null is a bug, unlike NaN
    ],
)
def test_bad_value_fails_naming_column_row_and_check(column, row, value, check):
    result = validate_recording(_set(_frame(), column, row, value))
    assert not result.passed
    assert result.n_failures == 1
    case = result.failure_cases.row(0, named=True)
    assert case["column"] == column
    assert case["index"] == row
    assert check in case["check"]


def test_wrong_dtype_fails_naming_the_column():
    result = validate_recording(_frame().with_columns(pl.col(HEART_RATE).cast(pl.Float64)))
    assert not result.passed
    case = result.failure_cases.filter(pl.col("column") == HEART_RATE).row(0, named=True)
    assert "Float32" in case["check"]
    assert case["failure_case"] == "Float64"


def test_missing_and_extra_columns_fail():
    frame = _frame().drop("ankle_mag_z").with_columns(pl.lit(1).alias("extra"))
    result = validate_recording(frame)
    assert not result.passed
    assert set(result.failure_cases["failure_case"]) >= {"ankle_mag_z", "extra"}


def test_lazy_validation_collects_every_failure_and_limits_the_rows():
    n = MAX_FAILURE_ROWS + 500
    frame = _frame(n).with_columns(
        pl.lit(400.0, dtype=pl.Float32).alias(HEART_RATE), pl.lit(8, dtype=pl.Int16).alias(ACTIVITY)
    )
    result = validate_recording(frame)
    assert result.n_failures == 2 * n
    assert result.failure_cases.height == MAX_FAILURE_ROWS


def test_drop_transient_removes_activity_zero_only():
    frame = _frame()
    kept = drop_transient(frame)
    assert kept.height == frame.height - 1
    assert 0 not in kept[ACTIVITY].to_list()
    assert kept.columns == TABLE_COLUMNS


def test_nan_rates_per_modality():
    rates = nan_rates(_frame(20))
    assert rates == {"imu_hand": 1 / 20, "imu_chest": 0.0, "imu_ankle": 0.0, "heart_rate": 0.9}
