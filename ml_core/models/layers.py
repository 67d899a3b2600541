"""Small pieces shared by the neural models: input masking, patching, pooling, blocks, heads.

Shapes are channel-last, [B, T, D], except inside `ResidualConvBlock` (Conv1d wants [B, D, T]).
A mask is [B, T] bool, True where the position holds observed data.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def modality_input(x: Tensor, present: Tensor) -> Tensor:
    """[B, T, C] values with missing samples zeroed, plus the present flag: [B, T, C + 1].

    Zeroing here is what makes every model blind to the values of missing samples; the flag
    lets it tell a missing sample from an observed zero.
    """
    flag = present.unsqueeze(-1).to(x.dtype)
    return torch.cat([x * flag, flag], dim=-1)


def fused_input(
    x: dict[str, Tensor], present: dict[str, Tensor], modalities: list[str]
) -> tuple[Tensor, Tensor]:
    """All modalities side by side, [B, T, sum(C + 1)], and where any of them is present."""
    h = torch.cat([modality_input(x[m], present[m]) for m in modalities], dim=-1)
    mask = torch.stack([present[m] for m in modalities], dim=0).any(dim=0)
    return h, mask


def fused_channels(modality_channels: dict[str, int]) -> int:
    """Width of `fused_input`: every modality's channels plus its present flag."""
    return sum(c + 1 for c in modality_channels.values())


def pad_time(h: Tensor, mask: Tensor, multiple: int) -> tuple[Tensor, Tensor]:
    """Right-pad [B, T, D] and its mask to a multiple of `multiple` (padding is missing)."""
    extra = -h.shape[1] % multiple
    if extra == 0:
        return h, mask
    return F.pad(h, (0, 0, 0, extra)), F.pad(mask, (0, extra), value=False)


class Patchify(nn.Module):
    """Non-overlapping patches of `size` samples, each projected to `dim`: [B, ceil(T/size), dim].

    A patch is present if any sample in it is present.
    """

    def __init__(self, in_channels: int, dim: int, size: int) -> None:
        super().__init__()
        self.size = size
        self.proj = nn.Linear(in_channels * size, dim)

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h, mask = pad_time(h, mask, self.size)
        b, t, c = h.shape
        h = self.proj(h.reshape(b, t // self.size, self.size * c))
        return h, mask.reshape(b, t // self.size, self.size).any(dim=-1)


def masked_mean(h: Tensor, mask: Tensor) -> Tensor:
    """Mean of [B, T, D] over the present positions; a row with none pools to zeros."""
    weight = mask.unsqueeze(-1).to(h.dtype)
    return (h * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1.0)


class AttentionPool(nn.Module):
    """Learned softmax weights over present time steps: the pooled [B, D] and the weights [B, T].

    A row with no present step pools to zeros (and its weights are all zero).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        # No bias on the score: softmax ignores a constant shift, so it would never learn.
        self.score = nn.Sequential(nn.Linear(dim, dim), nn.Tanh(), nn.Linear(dim, 1, bias=False))

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        scores = self.score(self.norm(h)).squeeze(-1)
        # The finite minimum, not -inf, keeps all-missing rows free of NaN; `* mask` zeroes them.
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        weights = scores.softmax(dim=1) * mask.to(h.dtype)
        return torch.einsum("bt,btd->bd", weights, h), weights


class ResidualConvBlock(nn.Module):
    """Pre-activation residual block of two same-length 1-D convolutions, on [B, D, T].

    No dropout inside (the models apply theirs before the classifier): on a CPU, drawing a
    dropout mask for every activation costs about as much as the convolutions themselves.
    """

    def __init__(self, dim: int, kernel_size: int, dilation: int) -> None:
        super().__init__()
        padding = dilation * (kernel_size - 1) // 2
        self.net = nn.Sequential(
            nn.BatchNorm1d(dim),
            nn.GELU(),
            nn.Conv1d(dim, dim, kernel_size, padding=padding, dilation=dilation),
            nn.BatchNorm1d(dim),
            nn.GELU(),
            nn.Conv1d(dim, dim, kernel_size, padding=padding, dilation=dilation),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class ConvEncoder(nn.Module):
    """Patch stem (downsamples time by `stride`) then `depth` residual conv blocks.

    [B, T, C] and its mask in, [B, ceil(T / stride), dim] and the patch mask out. Dilations
    double per block so the receptive field grows quickly at little cost.
    """

    def __init__(
        self, in_channels: int, dim: int, depth: int, kernel_size: int, stride: int
    ) -> None:
        super().__init__()
        self.stem = Patchify(in_channels, dim, stride)
        self.blocks = nn.Sequential(
            *(ResidualConvBlock(dim, kernel_size, 2**i) for i in range(depth))
        )

    def forward(self, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        h, mask = self.stem(h, mask)
        h = self.blocks(h.transpose(1, 2)).transpose(1, 2)
        return h, mask


def transformer(dim: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    """Pre-norm transformer encoder stack, batch first, 4x feed-forward width."""
    layer = nn.TransformerEncoderLayer(
        dim,
        heads,
        dim_feedforward=4 * dim,
        dropout=dropout,
        activation="gelu",
        batch_first=True,
        norm_first=True,
    )
    # Nested tensors do not support norm_first; disabling them avoids a warning per model.
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def sinusoidal_positions(n: int, like: Tensor) -> Tensor:
    """Fixed sine/cosine codes for `n` positions of `like`'s width, device and dtype: [n, D].

    Fixed rather than learned: no length limit, so any window length works.
    """
    dim = like.shape[-1]
    position = torch.arange(n, device=like.device, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(
        torch.arange(0, dim, 2, device=like.device, dtype=torch.float32)
        * (-math.log(10000.0) / dim)
    )
    codes = torch.zeros(n, dim, device=like.device)
    codes[:, 0::2] = torch.sin(position * freq)
    codes[:, 1::2] = torch.cos(position * freq[: dim // 2])
    return codes.to(like.dtype)


def with_token(token: Tensor, h: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Prepend a learned token [1, 1, D] to every row of [B, N, D]; it is always attendable.

    Returns the sequence and its key-padding mask (True = ignore), so no row is all padding.
    """
    b = h.shape[0]
    h = torch.cat([token.expand(b, -1, -1), h], dim=1)
    padding = torch.cat([mask.new_zeros(b, 1), ~mask], dim=1)
    return h, padding


class ClassifierHead(nn.Module):
    """LayerNorm, dropout, linear; tiny initial weights so the first loss is about ln(K)."""

    def __init__(self, dim: int, n_classes: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(dim, n_classes)
        # Small but non-zero: zero weights would also block every gradient behind the head.
        nn.init.normal_(self.out.weight, std=0.01)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: Tensor) -> Tensor:
        return self.out(self.drop(self.norm(h)))
