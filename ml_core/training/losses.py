"""Training losses for imbalanced activity classes: class-weighted cross-entropy and focal loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def class_weights(counts: Tensor) -> Tensor:
    """Inverse-frequency weights `n / (k * count)` over the k classes seen in training.

    A class with zero training windows gets weight 0 (it can never be a training target, and 0
    keeps the weighted mean finite). The weights average to 1 over the training windows, so the
    loss scale does not depend on how imbalanced the fold is.
    """
    counts = counts.to(torch.float64)
    seen = counts > 0
    if not bool(seen.any()):
        raise ValueError("class_weights: every class count is zero")
    weights = torch.zeros_like(counts)
    weights[seen] = counts.sum() / (seen.sum() * counts[seen])
    return weights.to(torch.float32)


class FocalLoss(nn.Module):
    """Focal loss `-(1 - p_y)^gamma * log p_y` (Lin et al. 2017), optionally class-weighted.

    Weighted like `F.cross_entropy`: the sum of `w_y * loss` divided by the sum of `w_y`, so with
    gamma = 0 it is the same number as (weighted) cross-entropy.
    """

    weight: Tensor | None

    def __init__(self, gamma: float = 2.0, weight: Tensor | None = None) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal loss gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: Tensor, y: Tensor) -> Tensor:
        log_p = F.log_softmax(logits, dim=-1).gather(1, y[:, None]).squeeze(1)
        loss = -((1.0 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is None:
            return loss.mean()
        w = self.weight[y]
        return (w * loss).sum() / w.sum()


def build_loss(
    kind: str, counts: Tensor, focal_gamma: float = 2.0, weighted: bool = True
) -> nn.Module:
    """The training criterion: "weighted_ce" or "focal", weighted from train class counts
    (`weighted=False`: every class weighs 1, for use with class-balanced sampling)."""
    weight = class_weights(counts) if weighted else None
    if kind == "weighted_ce":
        return nn.CrossEntropyLoss(weight=weight)
    if kind == "focal":
        return FocalLoss(focal_gamma, weight)
    raise ValueError(f"unknown loss {kind!r}; choose 'weighted_ce' or 'focal'")
