"""Atomic writers: parquet codec choice, and tensor files read in full or mapped."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import torch
from polars.testing import assert_frame_equal

from ml_core.io import PARQUET_COMPRESSION, load_torch, save_torch, write_parquet


def _codec(path: Path) -> str:
    return pq.ParquetFile(path).metadata.row_group(0).column(0).compression


def test_write_parquet_uses_the_chosen_codec_and_round_trips(tmp_path):
    frame = pl.DataFrame({"x": [1.5, float("nan"), -2.0] * 100, "s": ["a", "b", "c"] * 100})
    default = write_parquet(frame, tmp_path / "default.parquet")
    zstd = write_parquet(frame, tmp_path / "zstd.parquet", compression="zstd")
    # The default codec is the module's choice (lz4 is written as LZ4 or LZ4_RAW).
    assert _codec(default).startswith(PARQUET_COMPRESSION.upper())
    assert _codec(zstd) == "ZSTD"
    for path in (default, zstd):
        assert_frame_equal(pl.read_parquet(path), frame)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["default.parquet", "zstd.parquet"]


def test_mapped_load_gives_the_same_tensors(tmp_path):
    data = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    target = save_torch({"data": data, "channels": ["a", "b", "c"]}, tmp_path / "t.pt")
    for mmap in (False, True):
        loaded = load_torch(target, mmap=mmap)
        assert loaded["channels"] == ["a", "b", "c"]
        torch.testing.assert_close(loaded["data"], data)
