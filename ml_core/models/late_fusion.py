"""Late fusion: one conv encoder and classifier per modality; their logits are averaged.

A modality with no observed sample in a window does not vote for that window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ml_core.models import ModelSpec
from ml_core.models.layers import ClassifierHead, ConvEncoder, masked_mean, modality_input


@dataclass
class LateFusionConfig:
    dim: int = 32  # conv channels per modality
    depth: int = 2  # residual conv blocks after each stem
    kernel_size: int = 5
    stride: int = 4  # samples per stem patch
    dropout: float = 0.1  # before each classifier


class LateFusion(nn.Module):
    def __init__(
        self, config: LateFusionConfig, n_classes: int, modality_channels: dict[str, int]
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict(
            {
                m: ConvEncoder(c + 1, config.dim, config.depth, config.kernel_size, config.stride)
                for m, c in modality_channels.items()
            }
        )
        self.heads = nn.ModuleDict(
            {m: ClassifierHead(config.dim, n_classes, config.dropout) for m in modality_channels}
        )

    def forward(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        per_modality = []
        for m, encoder in self.encoders.items():
            h, mask = encoder(modality_input(x[m], present[m]), present[m])
            per_modality.append(self.heads[m](masked_mean(h, mask)))
        logits = torch.stack(per_modality, dim=1)  # [B, M, K]
        votes = torch.stack([present[m].any(dim=1) for m in self.encoders], dim=1)
        votes = votes.unsqueeze(-1).to(logits.dtype)  # [B, M, 1]
        # A window with no modality at all gets zero logits (uniform), not a division by zero.
        return (logits * votes).sum(dim=1) / votes.sum(dim=1).clamp(min=1.0)


SPEC = ModelSpec(name="late_fusion", kind="torch", config_cls=LateFusionConfig, build=LateFusion)
