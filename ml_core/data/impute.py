"""Fill missing heart rate and short IMU packet gaps in a validated, transient-free table."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from ml_core.data.columns import (
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
# Defaults of the cleaning, shared with the serving model (ml_core.lifecycle.serving), which repeats it.
MAX_GAP_SAMPLES = 10
HR_MEDIAN_WINDOW = 25


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
    frame: pl.DataFrame,
    max_gap_samples: int = MAX_GAP_SAMPLES,
    hr_median_window: int = HR_MEDIAN_WINDOW,
) -> tuple[pl.DataFrame, ImputationReport]:
    """Heart rate: forward then backward fill per (subject, session), then a centred rolling
    median. IMU channels: linear interpolation across gaps of at most `max_gap_samples`
    samples inside one contiguous segment (same subject, session and activity, 0.01 s
    steps). Rows must be in time order within each (subject, session); order is kept."""
    segment = frame.select(_segment_id()).to_series().to_numpy()
    filled: list[pl.Series] = []
    interpolated, left_missing, long_gaps = {}, {}, {}
    for imu in IMUS:
        # A sample of one IMU is missing when any of its channels is (NaN or null).
        missing_before = np.zeros(frame.height, dtype=bool)
        missing_after = np.zeros(frame.height, dtype=bool)
        for c in imu_columns(imu):
            column = frame[c]
            values = column.to_numpy()  # zero-copy without nulls; a null reads as NaN
            rows, fill = _short_gap_fills(values, segment, max_gap_samples)
            missing_before |= np.isnan(values)
            if rows.size:
                column = column.scatter(rows, fill)  # copy-on-write: `frame` keeps its data
                values = column.to_numpy()
                filled.append(column)
            missing_after |= np.isnan(values)
        interpolated[imu] = int((missing_before & ~missing_after).sum())
        left_missing[imu] = int(missing_after.sum())
        long_gaps[imu] = _count_long_runs(missing_before, segment, max_gap_samples)
    out = frame.with_columns(_smooth_heart_rate(hr_median_window), *filled)
    report = ImputationReport(
        heart_rate_coverage_before=_coverage(frame, HEART_RATE),
        heart_rate_coverage_after=_coverage(out, HEART_RATE),
        interpolated=interpolated,
        left_missing=left_missing,
        long_gaps=long_gaps,
        max_gap_samples=max_gap_samples,
        hr_median_window=hr_median_window,
    )
    return out, report


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


def _short_gap_fills(
    values: np.ndarray, segment: np.ndarray, max_gap: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows and float32 values that linearly interpolate every run of missing samples with a
    valid sample on both sides in the same segment and at most `max_gap` samples long.
    Packet drops are rare (~0.5 % of rows), so the work follows the missing samples only."""
    missing = np.flatnonzero(np.isnan(values))
    if missing.size == 0:
        return missing, np.empty(0, dtype=np.float32)
    first, last = _runs(missing)
    before, after = first - 1, last + 1
    inside = (before >= 0) & (after < values.size) & (last - first + 1 <= max_gap)
    before, after, first, last = before[inside], after[inside], first[inside], last[inside]
    # Segment ids never decrease, so equal ids at both neighbours cover the whole run.
    same = (segment[before] == segment[first]) & (segment[after] == segment[first])
    before, after, first, last = before[same], after[same], first[same], last[same]
    lengths = last - first + 1
    offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    rows = np.repeat(first, lengths) + offsets
    lo, hi = np.repeat(before, lengths), np.repeat(after, lengths)
    low, high = values[lo].astype(np.float64), values[hi].astype(np.float64)
    fraction = (rows - lo) / (hi - lo)
    return rows, (low + (high - low) * fraction).astype(np.float32)


def _runs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of each run of consecutive values in sorted, unique `rows`."""
    breaks = np.flatnonzero(np.diff(rows) != 1) + 1
    return rows[np.r_[0, breaks]], rows[np.r_[breaks - 1, rows.size - 1]]


def _count_long_runs(missing: np.ndarray, segment: np.ndarray, max_gap: int) -> int:
    """Runs of missing samples within one segment that are longer than `max_gap`."""
    rows = np.flatnonzero(missing)
    if rows.size == 0:
        return 0
    # A segment boundary inside a run of missing samples splits it in two.
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(segment[rows]) != 0)) + 1
    lengths = np.diff(np.r_[0, breaks, rows.size])
    return int((lengths > max_gap).sum())
