"""Early fusion: every modality's channels (and present flags) side by side into one conv net."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from ml_core.models import ModelSpec
from ml_core.models.layers import (
    ClassifierHead,
    ConvEncoder,
    fused_channels,
    fused_input,
    masked_mean,
)


@dataclass
class EarlyFusionConfig:
    dim: int = 64  # conv channels
    depth: int = 2  # residual conv blocks after the stem
    kernel_size: int = 5
    stride: int = 4  # samples per stem patch: the conv stack runs at 100 / stride Hz
    dropout: float = 0.1  # before the classifier


class EarlyFusion(nn.Module):
    def __init__(
        self, config: EarlyFusionConfig, n_classes: int, modality_channels: dict[str, int]
    ) -> None:
        super().__init__()
        self.modalities = list(modality_channels)
        self.encoder = ConvEncoder(
            fused_channels(modality_channels),
            config.dim,
            config.depth,
            config.kernel_size,
            config.stride,
        )
        self.head = ClassifierHead(config.dim, n_classes, config.dropout)

    def forward(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        h, mask = fused_input(x, present, self.modalities)
        h, mask = self.encoder(h, mask)
        return self.head(masked_mean(h, mask))


SPEC = ModelSpec(name="early_fusion", kind="torch", config_cls=EarlyFusionConfig, build=EarlyFusion)
