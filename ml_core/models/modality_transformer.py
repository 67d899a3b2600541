"""Modality transformer: a transformer per modality, then a fusion transformer across modalities.

Source design: the LOSO multimodal transformer plan. As there: each modality has its own
projection (Linear, LayerNorm, GELU), a learnable CLS token and learned positional embeddings,
and pre-norm encoder layers whose attention is masked by padding (missing samples) and by the
modality mask; a fusion transformer reads the modality CLS outputs plus learnable modality-type
embeddings, masks the modalities unavailable in a window, and mean-pools over the available
ones; an MLP head classifies.

Where it departs, and why:
- A token is a patch of `patch` samples (16 by default, 0.16 s), not one sample: attention over
  256 single samples per modality costs 16^2 times more on a CPU, and a patch still resolves
  the fastest PAMAP2 movement (rope jumping, ~2 Hz). A patch is present if any sample in it is.
- Learned positional embeddings have a fixed number of positions, `max_tokens`; a longer
  window is refused with a clear error rather than silently extrapolated.
- A window with no modality at all pools to zeros (the head then gives the same logits for
  every such window); the plan does not say what to do with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ml_core.models import ModelSpec
from ml_core.models.layers import masked_mean, modality_input, pad_time, transformer, with_token


@dataclass
class ModalityTransformerConfig:
    dim: int = 64  # token width
    patch: int = 16  # samples per token
    max_tokens: int = 64  # learned positions per modality (windows up to patch * max_tokens)
    heads: int = 4
    modality_layers: int = 2  # pre-norm layers inside each modality
    fusion_layers: int = 1  # pre-norm layers across modalities
    head_hidden: int = 128  # MLP width of the head
    dropout: float = 0.1  # in the transformer layers and the head


class ModalityEncoder(nn.Module):
    """One modality: patches -> Linear + LayerNorm + GELU -> CLS + positions -> pre-norm layers."""

    def __init__(self, channels: int, config: ModalityTransformerConfig) -> None:
        super().__init__()
        d, self.patch = config.dim, config.patch
        self.project = nn.Sequential(
            nn.Linear((channels + 1) * config.patch, d), nn.LayerNorm(d), nn.GELU()
        )
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.positions = nn.Parameter(torch.randn(config.max_tokens + 1, d) * 0.02)
        self.layers = transformer(d, config.heads, config.modality_layers, config.dropout)
        self.norm = nn.LayerNorm(d)  # pre-norm layers leave the output un-normalised

    def forward(self, x: Tensor, present: Tensor) -> tuple[Tensor, Tensor]:
        """The CLS output [B, D] and whether the window holds any observed sample [B]."""
        h, mask = pad_time(modality_input(x, present), present, self.patch)
        b, t, c = h.shape
        n = t // self.patch
        if n > self.positions.shape[0] - 1:
            raise ValueError(
                f"modality_transformer: {t} samples make {n} tokens of {self.patch}, more than "
                f"max_tokens={self.positions.shape[0] - 1}; raise max_tokens or patch"
            )
        h = self.project(h.reshape(b, n, self.patch * c))
        mask = mask.reshape(b, n, self.patch).any(dim=-1)
        h, padding = with_token(self.cls, h, mask)
        h = self.layers(h + self.positions[: n + 1], src_key_padding_mask=padding)
        return self.norm(h[:, 0]), mask.any(dim=1)


class ModalityTransformer(nn.Module):
    def __init__(
        self, config: ModalityTransformerConfig, n_classes: int, modality_channels: dict[str, int]
    ) -> None:
        super().__init__()
        d = config.dim
        self.encoders = nn.ModuleDict(
            {m: ModalityEncoder(c, config) for m, c in modality_channels.items()}
        )
        self.modality_embedding = nn.Parameter(torch.randn(len(modality_channels), d) * 0.02)
        self.fusion = transformer(d, config.heads, config.fusion_layers, config.dropout)
        self.norm = nn.LayerNorm(d)
        hidden = nn.Linear(d, config.head_hidden)
        out = nn.Linear(config.head_hidden, n_classes)
        # Small last-layer weights: the first loss is about ln(K).
        nn.init.normal_(out.weight, std=0.01)
        nn.init.zeros_(out.bias)
        self.head = nn.Sequential(hidden, nn.GELU(), nn.Dropout(config.dropout), out)

    def forward(self, x: dict[str, Tensor], present: dict[str, Tensor]) -> Tensor:
        tokens, available = zip(
            *(encoder(x[m], present[m]) for m, encoder in self.encoders.items()), strict=True
        )
        h = torch.stack(tokens, dim=1) + self.modality_embedding  # [B, M, D]
        available = torch.stack(available, dim=1)  # [B, M]
        # A window with no modality at all would leave attention nothing to attend to: let it
        # attend to every token; the mean below ignores them all anyway.
        padding = ~available & available.any(dim=1, keepdim=True)
        h = self.norm(self.fusion(h, src_key_padding_mask=padding))
        return self.head(masked_mean(h, available))


SPEC = ModelSpec(
    name="modality_transformer",
    kind="torch",
    config_cls=ModalityTransformerConfig,
    build=ModalityTransformer,
)
