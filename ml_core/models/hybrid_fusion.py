"""Hybrid fusion: per-modality conv encoders, cross-modal attention over their summaries, concat.

Each modality is pooled to one token; a transformer layer lets the tokens attend to each other
(missing modalities are masked out as keys), and the attended tokens are concatenated for the
classifier. A learned null token is always attendable, so a window with every modality missing
still has a key to attend to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ml_core.models import ModelSpec
from ml_core.models.layers import (
    ClassifierHead,
    ConvEncoder,
    masked_mean,
    modality_input,
    transformer,
    with_token,
)


@dataclass
class HybridFusionConfig:
    dim: int = 32  # conv channels per modality and fusion width
    depth: int = 2  # residual conv blocks after each stem
    kernel_size: int = 5
    stride: int = 4  # samples per stem patch
    heads: int = 4  # attention heads in the fusion layers
    fusion_layers: int = 1
    dropout: float = 0.1  # in the fusion layers and before the classifier


class HybridFusion(nn.Module):
    def __init__(
        self, config: HybridFusionConfig, n_classes: int, modality_channels: dict[str, int]
    ) -> None:
        super().__init__()
        d = config.dim
        self.encoders = nn.ModuleDict(
            {
                m: ConvEncoder(c + 1, d, config.depth, config.kernel_size, config.stride)
                for m, c in modality_channels.items()
            }
        )
        self.token_norm = nn.LayerNorm(d)
        self.modality_embedding = nn.Parameter(torch.randn(len(modality_channels), d) * 0.02)
        self.null_token = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.fusion = transformer(d, config.heads, config.fusion_layers, config.dropout)
        self.head = ClassifierHead(d * len(modality_channels), n_classes, config.dropout)

    def forward(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        tokens = []
        for m, encoder in self.encoders.items():
            h, mask = encoder(modality_input(x[m], present[m]), present[m])
            tokens.append(masked_mean(h, mask))
        h = self.token_norm(torch.stack(tokens, dim=1)) + self.modality_embedding  # [B, M, D]
        available = torch.stack([present[m].any(dim=1) for m in self.encoders], dim=1)  # [B, M]
        h, padding = with_token(self.null_token, h, available)
        h = self.fusion(h, src_key_padding_mask=padding)[:, 1:]
        # A missing modality's token holds no information of its own: zero it for the head.
        h = h * available.unsqueeze(-1).to(h.dtype)
        return self.head(h.flatten(1))


SPEC = ModelSpec(
    name="hybrid_fusion", kind="torch", config_cls=HybridFusionConfig, build=HybridFusion
)
