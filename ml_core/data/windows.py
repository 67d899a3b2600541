"""Sliding windows over a fold split, held in memory as one tensor and gathered in batches.

A split's shard ranges are loaded once into a contiguous float32 tensor of model channels,
normalised with the fold's train statistics. A window is only a start row: batches are built
by one vectorised gather, so there is no per-window Python object and no DataLoader.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ml_core.data.columns import ACTIVITY_NAMES, MODALITIES, MODEL_CHANNELS
from ml_core.training.config import WindowConfig
from ml_core.data.folds import ShardRange, read_manifest
from ml_core.io import load_torch
from ml_core.paths import DataPaths

_WIDTHS: list[int] = [len(cols) for cols in MODALITIES.values()]
_BOUNDS: list[int] = [0, *accumulate(_WIDTHS)]
# Where each modality's channels sit in MODEL_CHANNELS (they are concatenated in order).
MODALITY_SLICES: dict[str, slice] = {
    m: slice(_BOUNDS[i], _BOUNDS[i + 1]) for i, m in enumerate(MODALITIES)
}


@dataclass(frozen=True)
class WindowOrigins:
    """Where each window's rows come from: tensor shard `root / files[shard[i]]`, rows
    `row[i]`, `row[i] + decimate`, … (the same rows in every fold that windows them alike)."""

    root: Path
    files: list[str]  # relative to root, as in the manifests
    shard: Tensor  # [N] index into files
    row: Tensor  # [N] first shard row of the window


@dataclass
class Batch:
    """x[modality]: [B, T, C] float32; present[modality]: [B, T] bool; y: [B] class index."""

    x: dict[str, Tensor]
    present: dict[str, Tensor]
    y: Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            {m: t.to(device) for m, t in self.x.items()},
            {m: t.to(device) for m, t in self.present.items()},
            self.y.to(device),
        )


def _check_shard(shard: Mapping[str, Any], r: ShardRange, file: Path, source: str) -> None:
    if list(shard["channels"]) != MODEL_CHANNELS:
        raise ValueError(f"{file}: field channels does not match MODEL_CHANNELS")
    for field, expected in (("activity_id", r.activity), ("subject_id", r.subject)):
        if int(shard[field]) != expected:
            raise ValueError(
                f"{file}: field {field} is {int(shard[field])}, but {source} names {expected}"
            )


def shard_segments(shard: Mapping[str, Any]) -> Tensor:
    """A loaded tensor shard's contiguous segments [S, 2] (rows [start, end)); a format-1
    shard, written before shards recorded them, is one segment."""
    if "segments" in shard:
        return shard["segments"]
    return torch.tensor([[0, shard["data"].shape[0]]], dtype=torch.long)


def normaliser(stats: Mapping[str, Any], source: str) -> tuple[Tensor, Tensor]:
    """Per-channel mean and std in MODEL_CHANNELS order; only the identity transform exists."""
    per_feature = stats["per_feature"]
    means, stds = [], []
    for channel in MODEL_CHANNELS:
        entry = per_feature.get(channel)
        if entry is None:
            raise ValueError(f"{source}: feature stats have no entry for channel {channel!r}")
        if entry.get("transform", "identity") != "identity":
            raise ValueError(
                f"{source}: per_feature.{channel}.transform {entry['transform']!r} is not "
                "supported (only 'identity')"
            )
        means.append(float(entry["mean"]))
        stds.append(float(entry["std"]))
    return torch.tensor(means), torch.tensor(stds)


class WindowData:
    """All windows of one split: `data` [R, C] normalised rows (NaN set to 0), `present` [R, M]
    per-modality observation mask, and per window its start row, class index and subject.
    `origins` (when loaded from shards) says which shard rows each window holds."""

    def __init__(
        self,
        data: Tensor,
        present: Tensor,
        starts: Tensor,
        labels: Tensor,
        subjects: Tensor,
        config: WindowConfig,
        origins: WindowOrigins | None = None,
    ) -> None:
        self.origins = origins
        self.data = data
        self.present = present
        self.starts = starts
        self.labels = labels
        self.subjects = subjects
        self.config = config
        self.class_ids = config.class_ids
        self.modalities = list(MODALITIES)
        self.modality_channels = {m: len(cols) for m, cols in MODALITIES.items()}
        self._offsets = torch.arange(config.window, device=starts.device)

    @classmethod
    def from_fold(
        cls,
        paths: DataPaths,
        fold: str,
        split: str,
        stats: Mapping[str, Any],
        config: WindowConfig | None = None,
    ) -> WindowData:
        """Windows of `paths.manifest(fold, split)`, normalised with the fold's `stats`."""
        manifest = paths.manifest(fold, split)
        return cls.from_ranges(paths, read_manifest(manifest), stats, config, source=str(manifest))

    @classmethod
    def from_ranges(
        cls,
        paths: DataPaths,
        ranges: Sequence[ShardRange],
        stats: Mapping[str, Any],
        config: WindowConfig | None = None,
        source: str = "ranges",
    ) -> WindowData:
        """Load each range's rows once into a preallocated tensor; ranges outside the class set
        are skipped unread. A range is cut at its shard's time gaps into pieces, each decimated
        from its own first row, and windows are cut inside one piece, never across a gap."""
        config = config or WindowConfig()
        class_index = {a: i for i, a in enumerate(config.class_ids)}
        mean, std = normaliser(stats, source)
        d = config.decimate
        selected = [r for r in ranges if r.activity in class_index]
        # Mapped, not read: the first pass needs only the segments and the row counts.
        shards: dict[str, dict[str, Any]] = {}
        pieces: list[tuple[str, int, int]] = []  # (shard path, start, end) rows of one segment
        piece_range: list[int] = []  # index into `selected` of each piece
        for i, r in enumerate(selected):
            if r.path not in shards:
                file = paths.root / r.path
                shards[r.path] = load_torch(file, mmap=True)
                _check_shard(shards[r.path], r, file, source)
            shard = shards[r.path]
            rows = shard["data"].shape[0]
            if r.end > rows:
                raise ValueError(
                    f"{source}: range [{r.start}, {r.end}) of {r.path} outside its {rows} rows"
                )
            segments = shard_segments(shard)
            lo = segments[:, 0].clamp(min=r.start)
            hi = segments[:, 1].clamp(max=r.end)
            for a, b in torch.stack([lo, hi], 1)[hi > lo].tolist():
                pieces.append((r.path, a, b))
                piece_range.append(i)
        lengths = torch.tensor([(b - a + d - 1) // d for _, a, b in pieces], dtype=torch.long)
        offsets = lengths.cumsum(0) - lengths
        data = torch.empty(int(lengths.sum()), len(MODEL_CHANNELS))
        for (path, a, b), offset, length in zip(
            pieces, offsets.tolist(), lengths.tolist(), strict=True
        ):
            data[offset : offset + length] = shards[path]["data"][a:b:d]
        del shards

        # Windows per piece, then every window's start row, all by tensor arithmetic.
        per_piece = ((lengths - config.window) // config.stride + 1).clamp(min=0)
        first = per_piece.cumsum(0) - per_piece
        within = torch.arange(int(per_piece.sum())) - first.repeat_interleave(per_piece)
        starts = offsets.repeat_interleave(per_piece) + within * config.stride
        files = list(dict.fromkeys(path for path, _, _ in pieces))
        file_index = {path: i for i, path in enumerate(files)}
        origins = WindowOrigins(
            paths.root,
            files,
            torch.tensor([file_index[p] for p, _, _ in pieces], dtype=torch.long)
            .repeat_interleave(per_piece),
            torch.tensor([a for _, a, _ in pieces], dtype=torch.long).repeat_interleave(per_piece)
            + within * (config.stride * d),
        )
        owner = torch.tensor(piece_range, dtype=torch.long)
        labels = torch.tensor([class_index[r.activity] for r in selected], dtype=torch.long)
        subjects = torch.tensor([r.subject for r in selected], dtype=torch.long)
        labels, subjects = labels[owner], subjects[owner]

        data.sub_(mean).div_(std)
        observed = torch.isfinite(data)
        present = torch.stack([observed[:, s].all(dim=1) for s in MODALITY_SLICES.values()], 1)
        # A modality sample is used whole or not at all, so a partly missing one is zeroed too.
        data.masked_fill_(~present.repeat_interleave(torch.tensor(_WIDTHS), dim=1), 0.0)
        return cls(
            data,
            present,
            starts,
            labels.repeat_interleave(per_piece),
            subjects.repeat_interleave(per_piece),
            config,
            origins,
        )

    def to(self, device: torch.device | str) -> WindowData:
        """The same windows with every tensor on `device`: batches are then gathered there."""
        return WindowData(
            self.data.to(device),
            self.present.to(device),
            self.starts.to(device),
            self.labels.to(device),
            self.subjects.to(device),
            self.config,
            self.origins,
        )

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    @property
    def n_classes(self) -> int:
        return len(self.class_ids)

    def class_counts(self) -> Tensor:
        """Windows per class index, [n_classes]."""
        return torch.bincount(self.labels, minlength=self.n_classes)

    def class_count_report(self) -> dict[str, int]:
        """Windows per activity name, for logs and asset metadata."""
        counts = self.class_counts().tolist()
        return {ACTIVITY_NAMES[a]: int(n) for a, n in zip(self.class_ids, counts, strict=True)}

    def batch(self, indices: Tensor) -> Batch:
        """Gather windows `indices` (into 0..len-1) with one indexing op per tensor."""
        rows = self.starts[indices][:, None] + self._offsets[None, :]  # [B, T]
        x = self.data[rows]  # [B, T, C]
        present = self.present[rows]  # [B, T, M]
        return Batch(
            {m: x[:, :, s].contiguous() for m, s in MODALITY_SLICES.items()},
            {m: present[:, :, i] for i, m in enumerate(self.modalities)},
            self.labels[indices],
        )

    def order(
        self,
        generator: torch.Generator | None = None,
        shuffle: bool = False,
        balanced: bool = False,
    ) -> Tensor:
        """An epoch's window order: sequential, a permutation, or class-balanced draws.

        Balanced: len(self) draws with replacement, each window weighted 1 / (its class count),
        so every class present is drawn about equally often.
        """
        n = len(self)
        if balanced:
            weights = 1.0 / self.class_counts()[self.labels].to(torch.float64)
            return torch.multinomial(weights, n, replacement=True, generator=generator)
        if shuffle:
            return torch.randperm(n, generator=generator)
        return torch.arange(n)

    def iter_batches(self, batch_size: int, order: Tensor | None = None) -> Iterator[Batch]:
        """Batches over `order` (default: every window in sequence); the last may be short."""
        order = torch.arange(len(self), device=self.starts.device) if order is None else order
        for i in range(0, len(order), batch_size):
            yield self.batch(order[i : i + batch_size])
