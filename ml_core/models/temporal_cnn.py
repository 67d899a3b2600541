"""Temporal CNN: conv stem, residual stages 64/128/256, temporal attention pooling + centre feature.

Source design: the 3D-CNN clip classifier, adapted from video clips to IMU windows. As there:
a convolutional stem (conv, batch norm, GELU, max pooling), three residual stages of widths
64/128/256 whose second and third halve the time axis (strided conv, with a 1x1 strided
projection on the shortcut), softmax attention weights over the last stage's time steps, and a
head that concatenates the attention context with the feature at the centre time step and
passes it through an MLP (GELU, dropout). The optional centre-attention hinge penalty,
`centre_hinge_weight * relu(centre_hinge_margin - attention weight of the centre step)`,
averaged over the batch, is exposed as `aux_loss` after a training forward pass; the training
loop adds it to the classification loss.

Where it departs, and why:
- 1-D convolutions over time instead of 3-D over (time, height, width): an IMU window has no
  spatial axes. Every modality's channels and presence flags enter the stem side by side.
- The stem's conv has stride 2 and its pooling another 2 (the clip model's stem is the same
  4x reduction in time), so the stages run at 25 Hz: at 100 Hz the 256-wide stage would cost
  4x more for little gain on human movement.
- Attention and the centre feature ignore time steps with no observed sample (the mask is
  max-pooled alongside every downsampling); the clip model has no missing frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ml_core.models import ModelSpec
from ml_core.models.layers import AttentionPool, fused_channels, fused_input


@dataclass
class TemporalCNNConfig:
    widths: tuple[int, ...] = (64, 128, 256)  # one residual stage each; later ones halve time
    blocks_per_stage: int = 1
    kernel_size: int = 5
    head_hidden: int = 256  # MLP width of the head
    dropout: float = 0.2  # in the head
    centre_hinge_weight: float = 0.0  # 0: no centre-attention penalty
    centre_hinge_margin: float = 0.1  # the centre step's attention weight it asks for


def _downsample_mask(mask: Tensor) -> Tensor:
    """[B, T] -> [B, ceil(T / 2)]: a step is present if either of its two samples is."""
    return F.max_pool1d(mask.unsqueeze(1).float(), 2, 2, ceil_mode=True).squeeze(1) > 0


class ResidualBlock(nn.Module):
    """conv-BN-GELU-conv-BN plus the shortcut, then GELU; stride 2 halves time, on [B, D, T]."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.net = nn.Sequential(
            nn.Conv1d(c_in, c_out, kernel_size, stride, pad, bias=False),
            nn.BatchNorm1d(c_out),
            nn.GELU(),
            nn.Conv1d(c_out, c_out, kernel_size, 1, pad, bias=False),
            nn.BatchNorm1d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if c_in == c_out and stride == 1
            else nn.Sequential(nn.Conv1d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm1d(c_out))
        )

    def forward(self, h: Tensor) -> Tensor:
        return F.gelu(self.net(h) + self.shortcut(h))


class TemporalCNN(nn.Module):
    def __init__(
        self, config: TemporalCNNConfig, n_classes: int, modality_channels: dict[str, int]
    ) -> None:
        super().__init__()
        self.config = config
        self.modalities = list(modality_channels)
        widths = list(config.widths)
        k = config.kernel_size
        self.stem = nn.Sequential(
            nn.Conv1d(fused_channels(modality_channels), widths[0], k, 2, k // 2, bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.GELU(),
            nn.MaxPool1d(2, 2, ceil_mode=True),
        )
        stages = []
        for i, width in enumerate(widths):
            c_in = widths[max(0, i - 1)]
            blocks = [ResidualBlock(c_in, width, k, 1 if i == 0 else 2)]
            blocks += [
                ResidualBlock(width, width, k, 1) for _ in range(config.blocks_per_stage - 1)
            ]
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        d = widths[-1]
        self.pool = AttentionPool(d)
        hidden = nn.Linear(2 * d, config.head_hidden)
        out = nn.Linear(config.head_hidden, n_classes)
        # Small last-layer weights: the first loss is about ln(K).
        nn.init.normal_(out.weight, std=0.01)
        nn.init.zeros_(out.bias)
        self.head = nn.Sequential(hidden, nn.GELU(), nn.Dropout(config.dropout), out)
        self.aux_loss: Tensor | None = None

    def forward(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        h, mask = fused_input(x, present, self.modalities)
        h = self.stem(h.transpose(1, 2))
        mask = _downsample_mask(_downsample_mask(mask))
        for i, stage in enumerate(self.stages):
            h = stage(h)
            if i > 0:
                mask = _downsample_mask(mask)
        h = h.transpose(1, 2)  # [B, L, D]
        context, weights = self.pool(h, mask)
        centre = h.shape[1] // 2
        centre_feature = h[:, centre] * mask[:, centre, None].to(h.dtype)
        logits = self.head(torch.cat([context, centre_feature], dim=-1))
        cfg = self.config
        self.aux_loss = None
        if self.training and cfg.centre_hinge_weight > 0:
            hinge = F.relu(cfg.centre_hinge_margin - weights[:, centre])
            self.aux_loss = cfg.centre_hinge_weight * hinge.mean()
        return logits


SPEC = ModelSpec(name="temporal_cnn", kind="torch", config_cls=TemporalCNNConfig, build=TemporalCNN)
