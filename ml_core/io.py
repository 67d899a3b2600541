"""Atomic file writes: a failed or killed step leaves the previous good output in place."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import Generator, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import polars as pl

# The tables and shards are working files that the next step reads back: lz4 takes about a
# third less CPU than zstd to write and a quarter as much to read, for files ~15 % larger.
ParquetCompression = Literal["lz4", "zstd", "snappy", "gzip", "brotli", "uncompressed"]
PARQUET_COMPRESSION: ParquetCompression = "lz4"


def _create_temp_beside(target: Path) -> Path:
    """Create an empty, uniquely named file beside `target` with mode 0666 minus the umask.

    `tempfile.mkstemp` would make it 0600 whatever the umask, and the rename keeps that mode,
    so on a shared data volume no other user (webserver, MLflow server, a worker) could read
    the output. Opening with O_EXCL lets the kernel apply the umask atomically.
    """
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


@contextmanager
def atomic_path(target: str | Path) -> Generator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp_beside(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def staging_root(root: str | Path, name: str) -> Generator[Path]:
    """A fresh folder under `<root>/.staging/` to write a whole output into before it is checked;
    removed on exit, so a failed check leaves nothing behind. Same file system as `root`, so a
    checked output moves into place by renaming (`replace_dir`)."""
    parent = Path(root) / ".staging"
    parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{name}.", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def replace_dir(staged: Path, target: Path) -> None:
    """Move the folder `staged` onto `target`, removing the previous `target` only afterwards."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.replaced")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)


def write_json(obj: Any, target: str | Path) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    return Path(target)


def write_text(text: str, target: str | Path) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text)
    return Path(target)


def write_parquet(
    frame: pl.DataFrame, target: str | Path, compression: ParquetCompression = PARQUET_COMPRESSION
) -> Path:
    with atomic_path(target) as tmp:
        frame.write_parquet(tmp, compression=compression)
    return Path(target)


def save_torch(obj: Any, target: str | Path) -> Path:
    import torch  # here, not at the top: steps that only write tables never load torch

    with atomic_path(target) as tmp:
        torch.save(obj, tmp)
    return Path(target)


def load_torch(path: str | Path, mmap: bool = False) -> Any:
    """Load a tensor file or checkpoint without unpickling arbitrary objects; `mmap` maps the
    tensors' storage from the file instead of reading it (for a look at shapes)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def files_digest(files: Iterable[Path], root: Path) -> str:
    """sha256 over files' paths (relative to `root`) and bytes, in path order: an output's data
    version. Equal outputs give equal digests however often they are rewritten."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def checkpoint_digest(path: str | Path) -> str:
    """sha256 over a checkpoint's model state (tensors by bytes, nested settings by value). The
    file's own bytes differ between two saves of the same state, so they cannot be a version."""
    import torch

    digest = hashlib.sha256()

    def add(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(value.detach().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                digest.update(f"<{key}>".encode())
                add(value[key])
        elif isinstance(value, list | tuple):
            for item in value:
                add(item)
        else:
            digest.update(repr(value).encode())

    add(load_torch(path)["model_state"])
    return digest.hexdigest()
