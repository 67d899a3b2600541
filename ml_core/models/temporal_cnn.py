"""Temporal CNN: residual 1-D conv stages, ever coarser in time and wider, then attention pooling.

The first stage's patch stem downsamples by `stride`; each later stage merges pairs of steps
(a stride-2 patch) and grows the width by `growth`. Learned attention weights over the present
steps of the last stage pool the window.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ml_core.models import ModelSpec
from ml_core.models.layers import (
    AttentionPool,
    ClassifierHead,
    ConvEncoder,
    fused_channels,
    fused_input,
)


@dataclass
class TemporalCNNConfig:
    dim: int = 32  # width of the first stage
    growth: int = 2  # width multiplier per later stage
    stages: int = 3
    blocks_per_stage: int = 1  # residual blocks per stage (dilations 1, 2, 4, ...)
    kernel_size: int = 5
    stride: int = 4  # samples per patch of the first stage's stem
    dropout: float = 0.1  # before the classifier


class TemporalCNN(nn.Module):
    def __init__(
        self, config: TemporalCNNConfig, n_classes: int, modality_channels: dict[str, int]
    ) -> None:
        super().__init__()
        self.modalities = list(modality_channels)
        widths = [config.dim * config.growth**i for i in range(config.stages)]
        in_widths = [fused_channels(modality_channels), *widths[:-1]]
        strides = [config.stride] + [2] * (config.stages - 1)
        self.stages = nn.ModuleList(
            ConvEncoder(c_in, c_out, config.blocks_per_stage, config.kernel_size, s)
            for c_in, c_out, s in zip(in_widths, widths, strides, strict=True)
        )
        self.pool = AttentionPool(widths[-1])
        self.head = ClassifierHead(widths[-1], n_classes, config.dropout)

    def forward(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        h, mask = fused_input(x, present, self.modalities)
        for stage in self.stages:
            h, mask = stage(h, mask)
        return self.head(self.pool(h, mask))


SPEC = ModelSpec(name="temporal_cnn", kind="torch", config_cls=TemporalCNNConfig, build=TemporalCNN)
