"""Which raw `.dat` files exist and whether they changed: the raw-file sensor's logic."""

from __future__ import annotations

import re

from ml_core.paths import DataPaths

_SUBJECT_FILE = re.compile(r"subject(\d{3})\.dat$")


def raw_file_fingerprints(paths: DataPaths) -> dict[str, str]:
    """`{"Protocol/subject101.dat": "<size>-<mtime_ns>", ...}` for every subject file present."""
    fingerprints: dict[str, str] = {}
    for session_dir in ("Protocol", "Optional"):
        folder = paths.dataset / session_dir
        if not folder.is_dir():
            continue
        for path in sorted(folder.glob("subject*.dat")):
            if _SUBJECT_FILE.search(path.name):
                stat = path.stat()
                fingerprints[f"{session_dir}/{path.name}"] = f"{stat.st_size}-{stat.st_mtime_ns}"
    return fingerprints


def subject_of(name: str) -> int:
    match = _SUBJECT_FILE.search(name)
    if match is None:
        raise ValueError(f"not a PAMAP2 subject file name: {name!r}")
    return int(match.group(1))


def subject_fingerprint(current: dict[str, str], subject: int) -> str:
    """One string that changes whenever any of the subject's files changes."""
    return ";".join(f"{n}={fp}" for n, fp in sorted(current.items()) if subject_of(n) == subject)
