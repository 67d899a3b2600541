"""Hierarchical transformer: attention inside short segments, then across the segments.

Samples are embedded in tokens of `token` samples; each segment of `segment` samples is read
by a local transformer whose CLS token summarises it; a global transformer with its own CLS
token reads the segment summaries in order. Missing tokens and segments are key-padding masked;
the CLS tokens are always attendable, so no row is ever fully masked.
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
    pad_time,
    sinusoidal_positions,
    transformer,
    with_token,
)


@dataclass
class HierarchicalTransformerConfig:
    dim: int = 48  # token width
    token: int = 4  # samples per token
    segment: int = 32  # samples per segment (a multiple of `token`)
    heads: int = 4
    local_layers: int = 1  # transformer layers inside a segment
    global_layers: int = 2  # transformer layers across segments
    dropout: float = 0.1  # in the transformer layers and before the classifier


class HierarchicalTransformer(nn.Module):
    def __init__(
        self,
        config: HierarchicalTransformerConfig,
        n_classes: int,
        modality_channels: dict[str, int],
    ) -> None:
        super().__init__()
        if config.segment % config.token:
            raise ValueError(
                f"hierarchical_transformer: segment ({config.segment}) must be a multiple of "
                f"token ({config.token})"
            )
        d = config.dim
        self.modalities = list(modality_channels)
        self.tokens_per_segment = config.segment // config.token
        self.embed = Patchify(fused_channels(modality_channels), d, config.token)
        self.segment_cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.local = transformer(d, config.heads, config.local_layers, config.dropout)
        self.global_cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.across = transformer(d, config.heads, config.global_layers, config.dropout)
        self.head = ClassifierHead(d, n_classes, config.dropout)

    def forward(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        h, mask = self.embed(*fused_input(x, present, self.modalities))
        h, mask = pad_time(h, mask, self.tokens_per_segment)
        b, n, d = h.shape
        s, length = n // self.tokens_per_segment, self.tokens_per_segment
        # Fold segments into the batch: [B * S, L, D], positions counted within the segment.
        h = h.reshape(b * s, length, d) + sinusoidal_positions(length, h)
        mask = mask.reshape(b * s, length)
        h, padding = with_token(self.segment_cls, h, mask)
        summaries = self.local(h, src_key_padding_mask=padding)[:, 0].reshape(b, s, d)
        summaries = summaries + sinusoidal_positions(s, summaries)
        h, padding = with_token(self.global_cls, summaries, mask.any(dim=1).reshape(b, s))
        return self.head(self.across(h, src_key_padding_mask=padding)[:, 0])


SPEC = ModelSpec(
    name="hierarchical_transformer",
    kind="torch",
    config_cls=HierarchicalTransformerConfig,
    build=HierarchicalTransformer,
)
