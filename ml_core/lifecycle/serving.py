"""A trained model wrapped to take raw sensor rows, as logged to MLflow for serving.

The wrapper repeats the cleaning of `ml_core.data.impute` inside each window before normalising, so
raw `.dat` rows get the predictions the evaluation path gives the same rows. Training cleans a
whole recording, serving sees one window, so two edges differ (measured in
tests/test_serving.py): heart rate before the window's first reading is back-filled from it
(training carries the previous reading forward), and the 25-sample median and the IMU gap
interpolation stop at the window's edges (an IMU gap touching an edge stays missing).

The serving model is published only when a model is promoted (`ml_core.lifecycle.champion`):
`export_serving_program` turns a checkpoint into a `torch.export` program file (`.pt2`), and
`load_serving_program` reads one back without running pickle: the archive must hold nothing
but the exported graph (JSON) and raw tensor bytes, and every tensor load is forced to
`weights_only`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml_core.data.columns import HEART_RATE, MODALITIES, MODEL_CHANNELS
from ml_core.data.impute import HR_MEDIAN_WINDOW, MAX_GAP_SAMPLES
from ml_core.io import atomic_path
from ml_core.training.config import TrainConfig
from ml_core.training.train import load_trained_model

SERVING_FORMAT = "torch.export"
SERVING_FILE = "model.pt2"


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


def export_serving_program(best_path: Path, stats: dict[str, Any], target: Path) -> str:
    """Export the model of checkpoint `best_path` as a `SensorWindowClassifier` (raw rows in,
    probabilities out; `feature_gbm` as its tensor form) to the `torch.export` file `target`,
    with a dynamic batch dimension. Returns the file's sha256."""
    model, ckpt = load_trained_model(best_path)
    config = TrainConfig(**ckpt["train_config"])
    net = model if isinstance(model, nn.Module) else model.as_module()
    serving = SensorWindowClassifier(net, stats, decimate=config.window.decimate).eval()
    rows = config.window.window * config.window.decimate
    # Two windows: torch.export specialises a batch dimension of size 1 to a constant.
    example = torch.zeros(2, rows, len(MODEL_CHANNELS))
    with torch.no_grad():
        program = torch.export.export(
            serving, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},)
        )
    buffer = io.BytesIO()  # torch.export.save wants a `.pt2` name or a buffer
    torch.export.save(program, buffer)
    with atomic_path(target) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


# What a `torch.export.save` archive of a plain tensor program holds, below its top folder. An
# AOTInductor library (native code), a pickled tensor subclass or a custom object is refused.
_ALLOWED_ENTRIES = re.compile(
    r"(archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/[\w.-]+\.json|data/weights/(weight_\d+|[\w.-]+_weights_config\.json)"
    r"|data/constants/(tensor_\d+|[\w.-]+_constants_config\.json)"
    r"|data/sample_inputs/[\w.-]+\.pt)"
)
# torch.load's weights_only switch is process-wide (an environment variable): one load at a time.
_LOAD_LOCK = threading.Lock()


class UnsafeModelError(ValueError):
    """A model file that is not a plain `torch.export` program of this platform."""


def check_serving_archive(path: Path) -> None:
    """Refuse `path` unless it is a `torch.export` archive of tensors and a graph only."""
    if not zipfile.is_zipfile(path):
        raise UnsafeModelError(f"{path}: not a torch.export program (not a .pt2 archive)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        tops = {name.split("/", 1)[0] for name in names}
        if len(tops) != 1:
            raise UnsafeModelError(f"{path}: not a torch.export program (several top folders)")
        (top,) = tops
        inner = [name.split("/", 1)[1] if "/" in name else "" for name in names]
        unexpected = [name for name in inner if not _ALLOWED_ENTRIES.fullmatch(name)]
        if unexpected or "models/model.json" not in inner:
            what = ", ".join(unexpected[:3]) or "no models/model.json"
            raise UnsafeModelError(f"{path}: not a plain torch.export program ({what})")
        for name in inner:
            if not name.endswith("_config.json"):
                continue
            try:
                config = json.loads(archive.read(f"{top}/{name}"))["config"]
                pickled = [k for k, v in config.items() if v.get("use_pickle", True)]
            except (ValueError, KeyError, AttributeError, TypeError) as exc:
                raise UnsafeModelError(f"{path}: {name} is not a payload config: {exc}") from exc
            if pickled:
                raise UnsafeModelError(
                    f"{path}: {name} stores {', '.join(pickled[:3])} as pickle; refused"
                )


def load_serving_program(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    """The program of `export_serving_program` as a raw-window predictor, loaded without
    unpickling anything (`check_serving_archive` first; every tensor load weights-only)."""
    check_serving_archive(path)
    with _LOAD_LOCK:
        saved = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
        os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
        try:
            module = torch.export.load(path).module()
        finally:
            if saved is None:
                os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
            else:
                os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = saved

    def predict(windows: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32)))
        return out.double().numpy()

    return predict
