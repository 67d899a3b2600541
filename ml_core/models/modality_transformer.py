"""Modality transformer: a small transformer per modality, then one across modalities.

Each modality's window is cut into patches (16 samples by default), embedded, and read by its
own transformer whose CLS token summarises the modality. A fusion transformer then attends over
the modality summaries (plus a modality-type embedding each) and a global CLS token that feeds
the classifier. Missing patches and wholly missing modalities are key-padding masked; the CLS
tokens are always attendable, so no row is ever fully masked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ml_core.models import ModelSpec
from ml_core.models.layers import (
    ClassifierHead,
    Patchify,
    modality_input,
    sinusoidal_positions,
    transformer,
    with_token,
)


@dataclass
class ModalityTransformerConfig:
    dim: int = 64  # token width
    patch: int = 16  # samples per patch token
    heads: int = 4
    modality_layers: int = 1  # transformer layers inside each modality
    fusion_layers: int = 1  # transformer layers across modalities
    dropout: float = 0.1  # in the transformer layers and before the classifier


class ModalityTransformer(nn.Module):
    def __init__(
        self, config: ModalityTransformerConfig, n_classes: int, modality_channels: dict[str, int]
    ) -> None:
        super().__init__()
        d = config.dim
        self.patches = nn.ModuleDict(
            {m: Patchify(c + 1, d, config.patch) for m, c in modality_channels.items()}
        )
        self.modality_cls = nn.ParameterDict(
            {m: nn.Parameter(torch.randn(1, 1, d) * 0.02) for m in modality_channels}
        )
        self.encoders = nn.ModuleDict(
            {
                m: transformer(d, config.heads, config.modality_layers, config.dropout)
                for m in modality_channels
            }
        )
        self.modality_embedding = nn.Parameter(torch.randn(len(modality_channels), d) * 0.02)
        self.global_cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.fusion = transformer(d, config.heads, config.fusion_layers, config.dropout)
        self.head = ClassifierHead(d, n_classes, config.dropout)

    def forward(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        summaries, available = [], []
        for m, encoder in self.encoders.items():
            h, mask = self.patches[m](modality_input(x[m], present[m]), present[m])
            h = h + sinusoidal_positions(h.shape[1], h)
            h, padding = with_token(self.modality_cls[m], h, mask)
            summaries.append(encoder(h, src_key_padding_mask=padding)[:, 0])
            available.append(mask.any(dim=1))
        h = torch.stack(summaries, dim=1) + self.modality_embedding  # [B, M, D]
        h, padding = with_token(self.global_cls, h, torch.stack(available, dim=1))
        return self.head(self.fusion(h, src_key_padding_mask=padding)[:, 0])


SPEC = ModelSpec(
    name="modality_transformer",
    kind="torch",
    config_cls=ModalityTransformerConfig,
    build=ModalityTransformer,
)
