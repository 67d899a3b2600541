"""Atomic writers: parquet codec choice, tensor files read in full or mapped, file modes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from polars.testing import assert_frame_equal

from ml_core.io import (
    PARQUET_COMPRESSION,
    atomic_path,
    load_torch,
    save_torch,
    write_json,
    write_parquet,
    write_text,
)


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


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=lambda m: f"umask{m:03o}")
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def test_outputs_respect_the_process_umask(tmp_path, umask):
    # A shared data volume: other users read what the writers leave, as the umask allows.
    frame = pl.DataFrame({"x": [1.0, 2.0]})
    written = [
        write_parquet(frame, tmp_path / "t.parquet"),
        save_torch({"x": torch.zeros(2)}, tmp_path / "t.pt"),
        write_json({"a": 1}, tmp_path / "t.json"),
        write_text("hello\n", tmp_path / "sub" / "t.txt"),
    ]
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path.name
    # The folder the writer created follows the umask too; no temporary file stays behind.
    assert stat.S_IMODE((tmp_path / "sub").stat().st_mode) == 0o777 & ~umask
    assert not [p for p in tmp_path.rglob(".*.tmp")]


def test_a_failed_write_keeps_the_previous_output(tmp_path):
    target = write_text("good\n", tmp_path / "out.txt")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "good\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
