"""The pandera schema of the 56-field recording table, and small checks on validated tables."""

from __future__ import annotations

from dataclasses import dataclass

import pandera.errors
import pandera.polars as pa
import polars as pl

from ml_core.data.columns import (
    ACTIVITY,
    ACTIVITY_NAMES,
    HEART_RATE,
    IMUS,
    MODALITIES,
    SESSION,
    SESSIONS,
    SUBJECT,
    SUBJECTS,
    TIMESTAMP,
    imu_columns,
)
from ml_core.data.ingest import TABLE_DTYPES

MAX_FAILURE_ROWS = 1000
TRANSIENT_ACTIVITY = 0

# Physical ranges per IMU field (the column name without its `<imu>_` prefix and axis).
# Wide enough for the real data (acc16 reaches about -145..+158 m/s^2, acc6 clips near
# +-61), narrow enough to catch unit or column-order mistakes.
IMU_FIELD_RANGES: dict[str, tuple[float, float]] = {
    "temperature_c": (0.0, 50.0),
    "acc16": (-200.0, 200.0),
    "acc6": (-80.0, 80.0),
    "gyro": (-40.0, 40.0),
    "mag": (-300.0, 300.0),
    "orientation": (-1.5, 1.5),
}
HEART_RATE_RANGE: tuple[float, float] = (30.0, 250.0)


def _imu_range(column: str) -> tuple[float, float]:
    field = column.split("_", 1)[1]  # drop the IMU name
    for prefix, bounds in IMU_FIELD_RANGES.items():
        if field.startswith(prefix):
            return bounds
    raise KeyError(f"no physical range for column {column!r}")


def _in_range_or_nan(low: float, high: float) -> pa.Check:
    """NaN is the file's missing-data token and is allowed; null (a bug upstream) is not."""

    def check(data: pa.PolarsData) -> pl.LazyFrame:
        value = pl.col(data.key)
        return data.lazyframe.select(
            (value.is_nan() | value.is_between(low, high)).fill_null(False)
        )

    return pa.Check(
        check, ignore_na=False, name="in_range_or_nan", error=f"in [{low}, {high}] or NaN"
    )


def _sensor_column(dtype: pl.DataType, low: float, high: float) -> pa.Column:
    # nullable=True because pandera counts NaN as null; the check itself rejects real nulls.
    return pa.Column(dtype, checks=[_in_range_or_nan(low, high)], nullable=True)


def build_schema() -> pa.DataFrameSchema:
    """All 56 fields: dtypes, physical ranges, known ids; NaN allowed only in sensor columns."""
    columns = {
        TIMESTAMP: pa.Column(TABLE_DTYPES[TIMESTAMP], checks=[pa.Check.ge(0)]),
        ACTIVITY: pa.Column(TABLE_DTYPES[ACTIVITY], checks=[pa.Check.isin(list(ACTIVITY_NAMES))]),
        HEART_RATE: _sensor_column(TABLE_DTYPES[HEART_RATE], *HEART_RATE_RANGE),
        **{
            c: _sensor_column(TABLE_DTYPES[c], *_imu_range(c))
            for imu in IMUS
            for c in imu_columns(imu)
        },
        SUBJECT: pa.Column(TABLE_DTYPES[SUBJECT], checks=[pa.Check.isin(SUBJECTS)]),
        SESSION: pa.Column(TABLE_DTYPES[SESSION], checks=[pa.Check.isin(list(SESSIONS))]),
    }
    return pa.DataFrameSchema(columns, strict=True, ordered=True, name="pamap2_recording")


RECORDING_SCHEMA = build_schema()


@dataclass(frozen=True)
class ValidationResult:
    passed: bool
    failure_cases: pl.DataFrame  # column, check, failure_case, index (first MAX_FAILURE_ROWS)
    n_failures: int


def validate_recording(frame: pl.DataFrame) -> ValidationResult:
    """Validate lazily so every failing column and check is collected, not just the first."""
    try:
        RECORDING_SCHEMA.validate(frame, lazy=True)
    except pandera.errors.SchemaErrors as err:
        cases = err.failure_cases.select("column", "check", "failure_case", "index")
        return ValidationResult(False, cases.head(MAX_FAILURE_ROWS), cases.height)
    empty = pl.DataFrame(
        schema={
            "column": pl.String,
            "check": pl.String,
            "failure_case": pl.String,
            "index": pl.Int32,
        }
    )
    return ValidationResult(True, empty, 0)


def drop_transient(frame: pl.DataFrame) -> pl.DataFrame:
    """Remove activity 0, the unlabeled transitions between activities."""
    return frame.filter(pl.col(ACTIVITY) != TRANSIENT_ACTIVITY)


def nan_rates(frame: pl.DataFrame) -> dict[str, float]:
    """Fraction of rows missing per modality, read off its first channel (a dropped IMU
    packet blanks every channel of that IMU; heart rate has its own ~9 Hz stream)."""
    if frame.height == 0:
        return {name: 0.0 for name in MODALITIES}
    rates = frame.select(
        pl.col(cols[0]).is_nan().mean().alias(name) for name, cols in MODALITIES.items()
    )
    return {name: float(rates[name].item()) for name in MODALITIES}
