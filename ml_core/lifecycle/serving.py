"""A trained model wrapped to take raw sensor rows, as logged to MLflow for serving.

The wrapper repeats the cleaning of `ml_core.data.impute` inside each window before normalising, so
raw `.dat` rows get the predictions the evaluation path gives the same rows. Training cleans a
whole recording, serving sees one window, so two edges differ (measured in
tests/test_serving.py): heart rate before the window's first reading is back-filled from it
(training carries the previous reading forward), and the 25-sample median and the IMU gap
interpolation stop at the window's edges (an IMU gap touching an edge stays missing).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml_core.data.columns import HEART_RATE, MODALITIES, MODEL_CHANNELS
from ml_core.data.impute import HR_MEDIAN_WINDOW, MAX_GAP_SAMPLES


def _previous_and_next(valid: Tensor) -> tuple[Tensor, Tensor]:
    """Per position along dim 1, the index of the last valid sample at or before it (-1 if
    none) and of the first valid sample at or after it (T if none)."""
    t = valid.shape[1]
    shape = [1, t] + [1] * (valid.dim() - 2)
    index = torch.arange(t, device=valid.device).view(shape).expand_as(valid)
    previous = torch.where(valid, index, -1).cummax(dim=1).values
    following = torch.where(valid, index, t).flip(1).cummin(dim=1).values.flip(1)
    return previous, following


def fill_heart_rate(hr: Tensor, median_window: int = HR_MEDIAN_WINDOW) -> Tensor:
    """[B, T] heart rate with NaN gaps -> forward then backward filled, then a centred rolling
    median of `median_window` samples (fewer at the edges), as `impute_recording` does over a
    recording. A window with no reading stays NaN."""
    valid = ~torch.isnan(hr)
    previous, following = _previous_and_next(valid)
    source = torch.where(previous >= 0, previous, following).clamp(max=hr.shape[1] - 1)
    filled = hr.double().gather(1, source)
    half = median_window // 2
    padded = F.pad(filled, (half, median_window - 1 - half), value=float("nan"))
    neighbours = padded.unfold(1, median_window, 1)  # [B, T, median_window]
    count = (~torch.isnan(neighbours)).sum(-1, keepdim=True)
    ordered = torch.nan_to_num(neighbours, nan=float("inf")).sort(dim=-1).values
    low = ordered.gather(-1, ((count - 1) // 2).clamp(min=0))
    high = ordered.gather(-1, (count // 2).clamp(max=median_window - 1))
    median = torch.where(count > 0, (low + high) / 2, float("nan")).squeeze(-1)
    return median.to(hr.dtype)


def interpolate_short_gaps(x: Tensor, max_gap: int = MAX_GAP_SAMPLES) -> Tensor:
    """[B, T, C] with NaN gaps -> each run of at most `max_gap` missing samples with a reading
    on both sides filled linearly, per channel, as `impute_recording` does for IMU channels."""
    valid = ~torch.isnan(x)
    previous, following = _previous_and_next(valid)
    t = x.shape[1]
    fillable = ~valid & (previous >= 0) & (following < t) & (following - previous - 1 <= max_gap)
    lo, hi = previous.clamp(min=0), following.clamp(max=t - 1)
    values = x.double()
    low, high = values.gather(1, lo), values.gather(1, hi)
    position = torch.arange(t, device=x.device, dtype=torch.float64).view(1, t, 1)
    fraction = (position - lo) / (hi - lo).clamp(min=1)
    filled = (low + (high - low) * fraction).to(x.dtype)
    return torch.where(fillable, filled, x)


def clean_windows(
    windows: Tensor, max_gap: int = MAX_GAP_SAMPLES, median_window: int = HR_MEDIAN_WINDOW
) -> Tensor:
    """Raw rows [B, T, C] in MODEL_CHANNELS order -> heart rate filled, IMU gaps interpolated."""
    hr = MODEL_CHANNELS.index(HEART_RATE)
    imu = interpolate_short_gaps(windows[..., :hr], max_gap)
    heart = fill_heart_rate(windows[..., hr], median_window)[..., None]
    return torch.cat([imu, heart, windows[..., hr + 1 :]], dim=-1)


class SensorWindowClassifier(nn.Module):
    """Raw rows [B, T, C] at 100 Hz in `MODEL_CHANNELS` order (NaN = missing, as in a `.dat`
    file) -> class probabilities.

    Cleans each window as training's imputation did (heart rate filled and median-smoothed,
    IMU gaps of at most `max_gap` samples interpolated), keeps every `decimate`-th row, applies
    the fold's normalisation and builds the per-modality presence masks exactly as training
    saw them, so a caller needs nothing but the sensor values. The rows of one window must be
    consecutive samples of one activity (no time gap inside).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        model: nn.Module,
        stats: dict[str, Any],
        decimate: int = 1,
        max_gap: int = MAX_GAP_SAMPLES,
        median_window: int = HR_MEDIAN_WINDOW,
    ) -> None:
        super().__init__()
        if list(stats["feature_order"]) != MODEL_CHANNELS:
            raise ValueError("feature statistics are not in MODEL_CHANNELS order")
        per_feature = stats["per_feature"]
        self.model = model.eval()
        self.decimate = decimate
        self.max_gap = max_gap
        self.median_window = median_window
        self.register_buffer("mean", torch.tensor([per_feature[c]["mean"] for c in MODEL_CHANNELS]))
        self.register_buffer("std", torch.tensor([per_feature[c]["std"] for c in MODEL_CHANNELS]))
        self.slices: dict[str, tuple[int, int]] = {}
        start = 0
        for modality, columns in MODALITIES.items():
            self.slices[modality] = (start, start + len(columns))
            start += len(columns)

    def forward(self, windows: Tensor) -> Tensor:
        clean = clean_windows(windows, self.max_gap, self.median_window)[:, :: self.decimate]
        z = (clean - self.mean) / self.std
        present = {m: ~torch.isnan(z[..., a:b]).any(dim=-1) for m, (a, b) in self.slices.items()}
        # As in WindowData: a modality sample is used whole or not at all.
        x = {
            m: torch.where(present[m][..., None], z[..., a:b], 0.0)
            for m, (a, b) in self.slices.items()
        }
        return torch.softmax(self.model(x, present), dim=-1)
