"""Atomic writers: parquet codec choice, tensor files read in full or mapped, file modes."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
import torch
from polars.testing import assert_frame_equal

from ml_core.io import (
    PARQUET_COMPRESSION,
    PartitionBusyError,
    atomic_path,
    load_torch,
    partition_lock,
    save_torch,
    staging_root,
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


def _dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_second_writer_of_a_partition_is_refused_until_the_first_ends(tmp_path):
    with partition_lock(tmp_path, "models/holdout-106/lstm"):
        busy = pytest.raises(PartitionBusyError, match=f"another run .*process {os.getpid()}")
        with busy, partition_lock(tmp_path, "models/holdout-106/lstm"):
            pass
        with partition_lock(tmp_path, "models/holdout-106/tcn"):  # other partitions run
            pass
    with partition_lock(tmp_path, "models/holdout-106/lstm"):
        pass


def test_a_killed_writer_never_leaves_its_partition_locked(tmp_path):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from ml_core.io import partition_lock\n"
            f"with partition_lock({str(tmp_path)!r}, 'evaluation/loso-101/lstm'):\n"
            "    print('locked', flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        busy = pytest.raises(PartitionBusyError, match=f"process {holder.pid}")
        with busy, partition_lock(tmp_path, "evaluation/loso-101/lstm"):
            pass
    finally:
        holder.kill()
        holder.wait()
    with partition_lock(tmp_path, "evaluation/loso-101/lstm"):
        pass


def test_leftovers_of_killed_writers_are_removed_and_live_ones_kept(tmp_path):
    host, dead = socket.gethostname(), _dead_pid()
    staging = tmp_path / ".staging"
    staging.mkdir()
    (staging / f"evaluation-loso-101-0.@{host}-{dead}@.x1").mkdir()
    (staging / f"evaluation-loso-101-0.@{host}-{dead}@.x1" / "predictions.parquet").write_bytes(
        b"half"
    )
    live = staging / f"shards-101.@{host}-{os.getpid()}@.x2"
    live.mkdir()
    foreign = staging / "fold-loso-102.@another-host-1@.x3"  # another machine, recent
    foreign.mkdir()
    with staging_root(tmp_path, "fold-loso-101") as folder:
        assert folder.parent == staging
    assert sorted(p.name for p in staging.iterdir()) == sorted([live.name, foreign.name])

    target = tmp_path / "summary.json"
    stale = tmp_path / f".summary.json.@{host}-{dead}@.abc.tmp"
    stale.write_bytes(b"x" * 100)
    write_json({"ok": True}, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".staging", "summary.json"]
