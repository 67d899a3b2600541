"""Per subject x activity shards: parquet (all 56 fields) and float32 tensors of the model channels.

One shard holds one subject's rows of one activity, in time order. Windows are cut inside a
shard, so they never cross a subject or activity boundary. An activity done in two stretches
(stairs up, down, up again) has a time jump inside its shard, so a tensor shard also records
its contiguous `segments` and windows are cut inside one segment. Each subject's tensor folder
has an `index.json` listing its shards; fold building reads the indexes, never the tensors.

Tensor shard format 2: `data` [R, C] float32, `channels`, `subject_id`, `activity_id`,
`session`, `timestamp_start`, `format`, and `segments` [S, 2] int64 rows [start, end).
A shard without `format` (format 1, written before segments existed) reads as one segment.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ml_core.data.columns import (
    ACTIVITY,
    MODEL_CHANNELS,
    SAMPLE_RATE_HZ,
    SESSION,
    SUBJECT,
    TABLE_COLUMNS,
    TIMESTAMP,
)
from ml_core.io import PARQUET_COMPRESSION, atomic_path, load_torch, save_torch, write_json
from ml_core.paths import DataPaths

INDEX_NAME = "index.json"
DEFAULT_MAX_FILE_BYTES = 20_000_000
SHARD_FORMAT = 2
# Timestamps step 0.01 s; a step above five sample periods is a time gap (rows of another
# activity or a dropped stretch lie between), not jitter, so a window must not span it.
MAX_CONTIGUOUS_STEP_S = 5 / SAMPLE_RATE_HZ


@dataclass(frozen=True)
class ShardInfo:
    """One tensor shard as its subject's index lists it. `path` is relative to the data root."""

    path: str
    subject: int
    activity: int
    session: str
    rows: int


@dataclass
class ShardReport:
    """What `write_activity_shards` wrote for one subject; paths are relative to `root`."""

    subject: int
    root: str
    rows_in: int
    rows_out: int
    # One dict per activity: activity, session, rows, parquet [{path, bytes, rows}], tensor.
    shards: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _parquet_bytes(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_parquet(buffer, compression=PARQUET_COMPRESSION)
    return buffer.getvalue()


def _split_parquet(frame: pl.DataFrame, max_file_bytes: int) -> list[tuple[pl.DataFrame, bytes]]:
    """Encode `frame` as few consecutive parts as keep every file under `max_file_bytes`."""
    n_parts = 1
    while True:
        chunk = max(1, math.ceil(frame.height / n_parts))
        parts = [frame.slice(lo, chunk) for lo in range(0, max(frame.height, 1), chunk)]
        blobs = [_parquet_bytes(p) for p in parts]
        biggest = max(len(b) for b in blobs)
        if biggest < max_file_bytes:
            return list(zip(parts, blobs, strict=True))
        if chunk == 1:
            raise ValueError(
                f"max_file_bytes={max_file_bytes} is smaller than a one-row parquet file "
                f"({biggest} bytes)"
            )
        # Scale the part count by the overshoot, with 10 % headroom for per-file overhead.
        n_parts = max(n_parts + 1, math.ceil(n_parts * biggest / (0.9 * max_file_bytes)))


def contiguous_segments(timestamps: np.ndarray) -> np.ndarray:
    """[S, 2] int64 row ranges [start, end) of the stretches of sorted `timestamps` whose
    consecutive steps are at most MAX_CONTIGUOUS_STEP_S."""
    breaks = np.flatnonzero(np.diff(timestamps) > MAX_CONTIGUOUS_STEP_S) + 1
    bounds = np.r_[0, breaks, timestamps.size].astype(np.int64)
    return np.stack([bounds[:-1], bounds[1:]], axis=1)


def _check_input(frame: pl.DataFrame, subject: int) -> None:
    missing = [c for c in TABLE_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"subject {subject}: table lacks columns {missing}")
    others = frame.filter(pl.col(SUBJECT) != subject)[SUBJECT].unique().sort().to_list()
    if others:
        raise ValueError(f"subject {subject}: table holds rows of other subjects {others}")
    if (frame[ACTIVITY] == 0).any():
        raise ValueError(f"subject {subject}: activity 0 (transient) must be dropped first")


def write_activity_shards(
    frame: pl.DataFrame,
    paths: DataPaths,
    subject: int,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> ShardReport:
    """Write one subject's parquet and tensor shards and index; then remove its stale shards."""
    import torch  # here: reading a shard index (folds) must not load torch

    _check_input(frame, subject)
    root = paths.root
    shard_dir, tensor_dir = paths.shard_dir(subject), paths.tensor_shard_dir(subject)
    report = ShardReport(subject=subject, root=str(root), rows_in=frame.height, rows_out=0)
    keep: set[Path] = set()
    index: list[dict[str, Any]] = []

    # A stable sort on the activity alone: the rows of one activity normally arrive in time
    # order already, and a two-key sort costs twice as much; a part out of order is sorted.
    ordered = frame.select(TABLE_COLUMNS).sort(ACTIVITY, maintain_order=True)
    for (activity,), part in ordered.partition_by(ACTIVITY, as_dict=True).items():
        activity = int(activity)
        if not part[TIMESTAMP].is_sorted():
            part = part.sort(TIMESTAMP, maintain_order=True)
        if part[SESSION].n_unique() != 1:
            # PAMAP2 activities belong to one session; mixing two would splice unrelated clocks.
            raise ValueError(
                f"subject {subject} activity {activity}: rows come from sessions "
                f"{part[SESSION].unique().sort().to_list()}, a shard must come from one session"
            )
        session = str(part[SESSION][0])

        pieces = _split_parquet(part, max_file_bytes)
        parquet_files = []
        for k, (piece, blob) in enumerate(pieces):
            suffix = "" if len(pieces) == 1 else f"_part{k:02d}"
            target = shard_dir / f"activity_{activity}{suffix}.parquet"
            with atomic_path(target) as tmp:
                tmp.write_bytes(blob)
            keep.add(target)
            parquet_files.append(
                {"path": _relative(target, root), "bytes": len(blob), "rows": piece.height}
            )

        data = np.ascontiguousarray(part.select(MODEL_CHANNELS).to_numpy(), dtype=np.float32)
        segments = contiguous_segments(part[TIMESTAMP].to_numpy())
        tensor_path = paths.tensor_shard(subject, activity)
        save_torch(
            {
                "format": SHARD_FORMAT,
                "data": torch.from_numpy(data),
                "segments": torch.from_numpy(segments),
                "channels": list(MODEL_CHANNELS),
                "subject_id": subject,
                "activity_id": activity,
                "session": session,
                "timestamp_start": float(part[TIMESTAMP][0]),
            },
            tensor_path,
        )
        keep.add(tensor_path)
        rel_tensor = _relative(tensor_path, root)
        index.append(
            {
                "path": rel_tensor,
                "subject": subject,
                "activity": activity,
                "session": session,
                "rows": part.height,
                "segments": len(segments),
            }
        )
        report.shards.append(
            {
                "activity": activity,
                "session": session,
                "rows": part.height,
                "segments": len(segments),
                "parquet": parquet_files,
                "tensor": rel_tensor,
            }
        )
        report.rows_out += part.height

    index_path = tensor_dir / INDEX_NAME
    write_json({"subject": subject, "shards": index}, index_path)
    keep.add(index_path)

    # Only now that the new set is complete do the old shards go.
    stale = [
        p
        for folder, pattern in ((shard_dir, "activity_*.parquet"), (tensor_dir, "activity_*.pt"))
        for p in sorted(folder.glob(pattern))
        if p not in keep
    ]
    for p in stale:
        p.unlink()
        report.removed.append(_relative(p, root))
    return report


def read_shard_index(path: str | Path) -> list[ShardInfo]:
    """Read one subject's `index.json`; a malformed entry is an error naming file and field."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        entries = doc["shards"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a shard index with a 'shards' list ({exc})") from exc
    shards = []
    for i, entry in enumerate(entries):
        try:
            shards.append(
                ShardInfo(
                    path=str(entry["path"]),
                    subject=int(entry["subject"]),
                    activity=int(entry["activity"]),
                    session=str(entry["session"]),
                    rows=int(entry["rows"]),
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: shards[{i}]: bad or missing field {exc}") from exc
    return shards


def check_shard_rows(frame: pl.DataFrame, report: ShardReport) -> tuple[bool, str]:
    """No row lost or duplicated: input rows, per-activity counts and on-disk files agree."""
    problems = []
    if frame.height != report.rows_in:
        problems.append(f"table has {frame.height} rows, report says {report.rows_in} went in")
    shard_total = sum(s["rows"] for s in report.shards)
    if shard_total != frame.height:
        problems.append(f"shards hold {shard_total} rows, table has {frame.height}")

    expected = dict(frame.group_by(ACTIVITY).len().iter_rows())
    written = {s["activity"]: s["rows"] for s in report.shards}
    for activity in sorted(set(expected) | set(written)):
        if expected.get(activity, 0) != written.get(activity, 0):
            problems.append(
                f"activity {activity}: table has {expected.get(activity, 0)} rows, "
                f"shard has {written.get(activity, 0)}"
            )

    root = Path(report.root)
    for s in report.shards:
        parquet_rows = sum(
            pl.scan_parquet(root / f["path"]).select(pl.len()).collect().item()
            for f in s["parquet"]
        )
        # Mapped, not read: only the tensor's shape is needed.
        tensor_rows = int(load_torch(root / s["tensor"], mmap=True)["data"].shape[0])
        if not parquet_rows == tensor_rows == s["rows"]:
            problems.append(
                f"activity {s['activity']}: parquet files hold {parquet_rows} rows, "
                f"tensor {tensor_rows}, report {s['rows']}"
            )
    if problems:
        return False, "; ".join(problems)
    return True, f"{frame.height} rows in {len(report.shards)} shards, none lost or duplicated"
