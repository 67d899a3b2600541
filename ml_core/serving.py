"""A trained model wrapped to take raw sensor windows, as logged to MLflow for serving."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ml_core.columns import MODALITIES, MODEL_CHANNELS


class SensorWindowClassifier(nn.Module):
    """Raw windows [B, T, C] in `MODEL_CHANNELS` order (NaN = missing) -> class probabilities.

    Applies the fold's normalisation and builds the per-modality presence masks exactly as
    training saw them, so a caller needs nothing but the sensor values.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, stats: dict[str, Any]) -> None:
        super().__init__()
        if list(stats["feature_order"]) != MODEL_CHANNELS:
            raise ValueError("feature statistics are not in MODEL_CHANNELS order")
        per_feature = stats["per_feature"]
        self.model = model.eval()
        self.register_buffer("mean", torch.tensor([per_feature[c]["mean"] for c in MODEL_CHANNELS]))
        self.register_buffer("std", torch.tensor([per_feature[c]["std"] for c in MODEL_CHANNELS]))
        self.slices: dict[str, tuple[int, int]] = {}
        start = 0
        for modality, columns in MODALITIES.items():
            self.slices[modality] = (start, start + len(columns))
            start += len(columns)

    def forward(self, windows: Tensor) -> Tensor:
        missing = torch.isnan(windows)
        z = torch.nan_to_num((windows - self.mean) / self.std, nan=0.0)
        x = {m: z[..., a:b] for m, (a, b) in self.slices.items()}
        present = {m: ~missing[..., a:b].any(dim=-1) for m, (a, b) in self.slices.items()}
        return torch.softmax(self.model(x, present), dim=-1)
