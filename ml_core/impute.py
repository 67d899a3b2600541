"""Fill missing heart rate and short IMU packet gaps in a validated, transient-free table."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from ml_core.columns import (
    ACTIVITY,
    HEART_RATE,
    IMUS,
    SAMPLE_RATE_HZ,
    SESSION,
    SUBJECT,
    TIMESTAMP,
    imu_columns,
)

# Consecutive samples are 0.01 s apart; a larger step means rows were removed (a dropped
# transient) or skipped, and interpolating across it would invent signal.
MAX_STEP_S = 1.5 / SAMPLE_RATE_HZ
SEGMENT = "_segment"
ROW = "_row"


@dataclass(frozen=True)
class ImputationReport:
    heart_rate_coverage_before: float  # fraction of rows with a heart-rate value
    heart_rate_coverage_after: float
    interpolated: dict[str, int]  # per IMU: samples whose gap was filled
    left_missing: dict[str, int]  # per IMU: samples still missing (long or edge gaps)
    long_gaps: dict[str, int]  # per IMU: gaps longer than max_gap_samples
    max_gap_samples: int
    hr_median_window: int


def impute_recording(
    frame: pl.DataFrame, max_gap_samples: int = 10, hr_median_window: int = 25
) -> tuple[pl.DataFrame, ImputationReport]:
    """Heart rate: forward then backward fill per (subject, session), then a centred rolling
    median. IMU channels: linear interpolation across gaps of at most `max_gap_samples`
    samples inside one contiguous segment (same subject, session and activity, 0.01 s
    steps). Rows must be in time order within each (subject, session); order is kept."""
    hr_before = _coverage(frame, HEART_RATE)
    work = frame.with_columns(
        pl.int_range(pl.len(), dtype=pl.Int64).alias(ROW), _segment_id().alias(SEGMENT)
    )
    missing_before = work.select(_imu_missing(imu).alias(imu) for imu in IMUS)
    work = work.with_columns(
        _smooth_heart_rate(hr_median_window),
        *(_fill_short_gaps(c, max_gap_samples) for imu in IMUS for c in imu_columns(imu)),
    )
    missing_after = work.select(_imu_missing(imu).alias(imu) for imu in IMUS)
    long_gaps = {
        imu: _count_long_runs(missing_before[imu], work[SEGMENT], max_gap_samples) for imu in IMUS
    }
    report = ImputationReport(
        heart_rate_coverage_before=hr_before,
        heart_rate_coverage_after=_coverage(work, HEART_RATE),
        interpolated={imu: int((missing_before[imu] & ~missing_after[imu]).sum()) for imu in IMUS},
        left_missing={imu: int(missing_after[imu].sum()) for imu in IMUS},
        long_gaps=long_gaps,
        max_gap_samples=max_gap_samples,
        hr_median_window=hr_median_window,
    )
    return work.select(frame.columns), report


def _coverage(frame: pl.DataFrame, column: str) -> float:
    if frame.height == 0:
        return 0.0
    return float(frame.select(pl.col(column).fill_nan(None).is_not_null().mean()).item())


def _segment_id() -> pl.Expr:
    """Running id of contiguous stretches: a new one starts at a change of subject, session
    or activity, or where the timestamp does not advance by one sample."""
    step = pl.col(TIMESTAMP).diff()
    starts = (
        (pl.col(SUBJECT) != pl.col(SUBJECT).shift())
        | (pl.col(SESSION) != pl.col(SESSION).shift())
        | (pl.col(ACTIVITY) != pl.col(ACTIVITY).shift())
        | (step <= 0)
        | (step > MAX_STEP_S)
    )
    return starts.fill_null(True).cum_sum()


def _smooth_heart_rate(window: int) -> pl.Expr:
    # NaN is not null in polars, and only nulls are filled, so turn NaN into null first.
    filled = pl.col(HEART_RATE).fill_nan(None).forward_fill().backward_fill()
    median = filled.rolling_median(window, min_samples=1, center=True)
    # A (subject, session) with no heart rate at all stays missing, as NaN like the input.
    return median.over(SUBJECT, SESSION).fill_null(float("nan")).cast(pl.Float32).alias(HEART_RATE)


def _fill_short_gaps(column: str, max_gap: int) -> pl.Expr:
    """Linear interpolation of a run of missing samples that has a valid sample on both
    sides in the same segment and is at most `max_gap` samples long; vectorised with
    forward/backward fills of the neighbouring valid sample's row, value and segment."""
    value = pl.col(column).fill_nan(None).cast(pl.Float64)
    valid = value.is_not_null()
    prev_row = pl.when(valid).then(pl.col(ROW)).forward_fill()
    next_row = pl.when(valid).then(pl.col(ROW)).backward_fill()
    prev_value = pl.when(valid).then(value).forward_fill()
    next_value = pl.when(valid).then(value).backward_fill()
    prev_segment = pl.when(valid).then(pl.col(SEGMENT)).forward_fill()
    next_segment = pl.when(valid).then(pl.col(SEGMENT)).backward_fill()
    fillable = (
        ~valid
        & (prev_segment == pl.col(SEGMENT))
        & (next_segment == pl.col(SEGMENT))
        & (next_row - prev_row - 1 <= max_gap)
    )
    fraction = (pl.col(ROW) - prev_row) / (next_row - prev_row)
    interpolated = prev_value + (next_value - prev_value) * fraction
    return (
        pl.when(fillable.fill_null(False))
        .then(interpolated)
        .otherwise(pl.col(column))
        .cast(pl.Float32)
        .alias(column)
    )


def _imu_missing(imu: str) -> pl.Expr:
    """A sample of one IMU is missing when any of its channels is."""
    return pl.any_horizontal(pl.col(c).is_nan() | pl.col(c).is_null() for c in imu_columns(imu))


def _count_long_runs(missing: pl.Series, segment: pl.Series, max_gap: int) -> int:
    """Runs of missing samples within one segment that are longer than `max_gap`."""
    runs = pl.DataFrame({"missing": missing, SEGMENT: segment})
    run_lengths = (
        runs.with_columns(
            run=(
                (pl.col("missing") != pl.col("missing").shift())
                | (pl.col(SEGMENT) != pl.col(SEGMENT).shift())
            )
            .fill_null(True)
            .cum_sum()
        )
        .filter(pl.col("missing"))
        .group_by("run")
        .len()
    )
    return int((run_lengths["len"] > max_gap).sum())
