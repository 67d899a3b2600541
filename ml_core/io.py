"""Atomic file writes: a failed or killed step leaves the previous good output in place.

Temporary files and staging folders carry their writer's host and process id in their name
(`@host-pid@`), so the next writer can tell leftovers of a killed process from work in
progress and remove them (`remove_leftovers`). `partition_lock` keeps two runs of one
partition from writing the same outputs at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Generator, Iterable
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import polars as pl

# The tables and shards are working files that the next step reads back: lz4 takes about a
# third less CPU than zstd to write and a quarter as much to read, for files ~15 % larger.
ParquetCompression = Literal["lz4", "zstd", "snappy", "gzip", "brotli", "uncompressed"]
PARQUET_COMPRESSION: ParquetCompression = "lz4"


# Leftovers of a process on another host (a shared volume) are removed after this long.
FOREIGN_LEFTOVER_AGE_S = 24 * 3600
_OWNER = re.compile(r"@(?P<host>[^@/]+)-(?P<pid>\d+)@")


def owner_tag() -> str:
    """`@host-pid@`: who writes a temporary file or folder, as part of its name."""
    return f"@{socket.gethostname()}-{os.getpid()}@"


def is_leftover(path: Path) -> bool:
    """Whether `path` (a temporary name with an owner tag) belongs to a process that is gone."""
    found = _OWNER.search(path.name)
    if found is None:
        return False
    if found["host"] != socket.gethostname():
        try:
            return time.time() - path.lstat().st_mtime > FOREIGN_LEFTOVER_AGE_S
        except FileNotFoundError:
            return False
    pid = int(found["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def remove_leftovers(folder: Path, pattern: str) -> list[Path]:
    """Remove the entries of `folder` matching `pattern` that a killed process left behind
    (its owner tag names a process that no longer runs); returns what was removed."""
    removed = []
    for path in sorted(Path(folder).glob(pattern)) if Path(folder).is_dir() else []:
        if is_leftover(path):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _create_temp_beside(target: Path) -> Path:
    """Create an empty, uniquely named file beside `target` with mode 0666 minus the umask.

    `tempfile.mkstemp` would make it 0600 whatever the umask, and the rename keeps that mode,
    so on a shared data volume no other user (webserver, MLflow server, a worker) could read
    the output. Opening with O_EXCL lets the kernel apply the umask atomically.
    """
    remove_leftovers(target.parent, f".{glob_escape(target.name)}.@*@.*.tmp")
    while True:
        tmp = target.parent / f".{target.name}.{owner_tag()}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp


def glob_escape(name: str) -> str:
    """`name` with glob's special characters taken literally."""
    return re.sub(r"([*?\[])", r"[\1]", name)


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
    checked output moves into place by renaming (`replace_dir`). Staging folders of killed
    processes are removed first."""
    parent = Path(root) / ".staging"
    parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(parent, "*")
    folder = Path(tempfile.mkdtemp(prefix=f"{name}.{owner_tag()}.", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def replace_dir(staged: Path, target: Path) -> None:
    """Move the folder `staged` onto `target`, removing the previous `target` only afterwards.
    A process killed between the two renames leaves the previous copy as `.<name>.replaced`:
    the next call puts it back before anything else, so it is never deleted as a leftover."""
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.replaced")
    if old.exists() and not target.exists():
        os.replace(old, target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(staged, target)
    shutil.rmtree(old, ignore_errors=True)


class PartitionBusyError(RuntimeError):
    """Another run is writing the same partition's outputs."""


@contextmanager
def partition_lock(root: str | Path, key: str) -> Generator[Path]:
    """Hold the lock of partition `key` under `<root>/.locks/` while its outputs are written;
    a second run of the same partition fails at once, naming the holder, instead of writing
    the same files. The kernel releases the lock when its process ends, killed or not, so a
    crash never leaves a partition locked."""
    folder = Path(root) / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (re.sub(r"[^\w.=+-]+", "__", key) + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            raise PartitionBusyError(
                f"{key}: another run is writing this partition ({holder}); its outputs are "
                "left to it. Retry when it has finished."
            ) from None
        os.ftruncate(fd, 0)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()} since {since}".encode(), 0)
        yield path
    finally:
        os.close(fd)


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
