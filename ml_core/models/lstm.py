"""Bidirectional LSTM over all modalities side by side, pooled by "mean" or "last".

A patch stem first shortens the sequence (4 samples per step by default), because an LSTM is
sequential in time and that is where its cost lies. "last" pooling takes the forward direction
at the last present step and the backward direction at the first present step, so both have
read every observed sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ml_core.models import ModelSpec
from ml_core.models.layers import (
    ClassifierHead,
    Patchify,
    fused_channels,
    fused_input,
    masked_mean,
)

POOLINGS = ("mean", "last")


@dataclass
class LSTMConfig:
    hidden: int = 64  # per direction
    layers: int = 1
    stride: int = 4  # samples per LSTM step
    pooling: str = "mean"  # "mean" over present steps, or "last" (see module docstring)
    dropout: float = 0.1  # before the classifier (and between LSTM layers)


class LSTM(nn.Module):
    def __init__(
        self, config: LSTMConfig, n_classes: int, modality_channels: dict[str, int]
    ) -> None:
        super().__init__()
        if config.pooling not in POOLINGS:
            raise ValueError(f"lstm: pooling must be one of {POOLINGS}, got {config.pooling!r}")
        self.modalities = list(modality_channels)
        self.pooling = config.pooling
        self.stem = Patchify(fused_channels(modality_channels), config.hidden, config.stride)
        self.lstm = nn.LSTM(
            config.hidden,
            config.hidden,
            num_layers=config.layers,
            batch_first=True,
            bidirectional=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.head = ClassifierHead(2 * config.hidden, n_classes, config.dropout)

    def forward(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        h, mask = self.stem(*fused_input(x, present, self.modalities))
        h, _ = self.lstm(h)  # [B, N, 2 * hidden]
        if self.pooling == "mean":
            return self.head(masked_mean(h, mask))
        steps = torch.arange(1, mask.shape[1] + 1, device=mask.device)
        # argmax returns the first maximum: the first present step, and via the step numbers
        # the last one; a window with nothing present falls back to step 0.
        first = mask.to(torch.int64).argmax(dim=1)
        last = (mask * steps).argmax(dim=1)
        forward_dir, backward_dir = h.chunk(2, dim=-1)
        rows = torch.arange(h.shape[0], device=h.device)
        return self.head(torch.cat([forward_dir[rows, last], backward_dir[rows, first]], dim=-1))


SPEC = ModelSpec(name="lstm", kind="torch", config_cls=LSTMConfig, build=LSTM)
