"""Download the official PAMAP2 archive, verify every `.dat` file, and swap it into place.

The UCI download is a zip holding `PAMAP2_Dataset.zip`, which holds `PAMAP2_Dataset/Protocol/…`
and `PAMAP2_Dataset/Optional/…`; an archive holding `PAMAP2_Dataset/…` directly works too.
Nothing lands in `raw_dir/PAMAP2_Dataset` unless every expected file has the right size and
sha256: work happens in a temporary sibling directory that is renamed in at the end.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import IO, Any

from ml_core.io import is_leftover, owner_tag, remove_leftovers

PAMAP2_URL = "https://archive.ics.uci.edu/static/public/231/pamap2+physical+activity+monitoring.zip"
DATASET_DIR = "PAMAP2_Dataset"
CHUNK = 1 << 20
PROGRESS_EVERY = 16 << 20
WORK_PREFIX = ".pamap2-fetch-"
PREVIOUS = "previous"
SYNTHETIC_MARKER = "SYNTHETIC.json"  # DataPaths.synthetic_marker, inside DATASET_DIR

# Relative path inside PAMAP2_Dataset -> (bytes, sha256), from the official archive.
EXPECTED_FILES: dict[str, tuple[int, str]] = {
    "Protocol/subject101.dat": (
        141_698_539,
        "80b3fffd089c236ae88098df3b906b8d3c67a858023fe4f75045d78612147266",
    ),
    "Protocol/subject102.dat": (
        207_349_310,
        "468f3c6ba3e6e961f383783665265afbcddbbd33a3a84bba0386b7d0d4e3c632",
    ),
    "Protocol/subject103.dat": (
        117_863_364,
        "5be64631d085e3efc700728395516da3512ff9de17dab30d253508441a98d3f0",
    ),
    "Protocol/subject104.dat": (
        153_227_482,
        "7eb272213cbfe11d9e466a2163b6c9c2ed8d2542fc6f08283fd1bf222cac8994",
    ),
    "Protocol/subject105.dat": (
        173_773_599,
        "7837cfede57fe45ec20d553c6c2b0c498ab324daae23bfd202c0ffea9f71a7f6",
    ),
    "Protocol/subject106.dat": (
        168_263_273,
        "0da1dda3fa56d75d6413fc9198949d3ebc2102d77574cb5fe0739674687609f2",
    ),
    "Protocol/subject107.dat": (
        145_823_268,
        "a02195e9599eb249f79103912d27eb4f62d8a0f59e4763b0dd8250fee5f3f020",
    ),
    "Protocol/subject108.dat": (
        190_019_653,
        "81ce6b21b9c1e01dc02099c4f9387699547b08b28b387d09a56e0cb0a8af22fc",
    ),
    "Protocol/subject109.dat": (
        3_891_140,
        "5109d5cd8334769566b4ae602adf3e5f4bb7b9ee8ca678f0c481d333114b07c7",
    ),
    "Optional/subject101.dat": (
        121_246_257,
        "a8b71371406001ae563acad1d7d946ceacd0afeb51b97bfb9a9cbad95c78e52c",
    ),
    "Optional/subject105.dat": (
        72_521_536,
        "a7c4ccd8d7e8fe21abad8c111229649ec10ca9b353cc29fcc4986c2243301adc",
    ),
    "Optional/subject106.dat": (
        60_905_306,
        "50882fc519f01e8fe200a5a4373daff443e88624d7e8a2d31d759569823fb491",
    ),
    "Optional/subject108.dat": (
        85_403_002,
        "e871b2e5692867f8655b69b769e866927739aa288b9da5cc9a15dc930f154336",
    ),
    "Optional/subject109.dat": (
        90_594_049,
        "a6a8f7521d63fe80bd7f203c5ee1256a2bc8b3772f028ae767256ec1d6a93930",
    ),
}


class FetchError(RuntimeError):
    """The download failed or the archive does not hold the expected, intact files."""


def _is_unsafe(name: str) -> bool:
    """True for names that could write outside the target: absolute, drive-qualified or `..`."""
    parts = name.replace("\\", "/").split("/")
    return name.startswith(("/", "\\")) or ".." in parts or (len(name) > 1 and name[1] == ":")


def _progress(done: int, total: int | None) -> None:
    if sys.stderr.isatty():
        of = f" / {total / 1e6:,.0f}" if total else ""
        print(f"downloaded {done / 1e6:,.0f}{of} MB", file=sys.stderr, flush=True)


def download(url: str, target: Path, timeout: float = 60.0) -> int:
    """Stream `url` into `target` in chunks; return its size, checked against Content-Length."""
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        raise FetchError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"download of {url} failed: {exc}") from exc
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        done, shown = 0, 0
        try:
            with open(target, "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if done - shown >= PROGRESS_EVERY:
                        _progress(done, total)
                        shown = done
        except (http.client.HTTPException, OSError) as exc:
            raise FetchError(f"download of {url} broke off after {done:,} bytes: {exc}") from exc
    if total is not None and done != total:
        raise FetchError(f"download of {url} is truncated: got {done:,} of {total:,} bytes")
    _progress(done, total)
    return done


def _open_zip(path: Path, label: str) -> zipfile.ZipFile:
    """Open `path` as a zip after refusing any member name that could escape the target."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise FetchError(f"{label} is not a readable zip archive: {exc}") from exc
    for name in archive.namelist():
        if _is_unsafe(name):
            archive.close()
            raise FetchError(f"{label} holds an unsafe member name {name!r}; refusing to extract")
    return archive


def _copy_member(archive: zipfile.ZipFile, name: str, out: IO[bytes], label: str) -> None:
    """Stream one member into `out`; zip CRC or decompression errors become FetchError."""
    try:
        with archive.open(name) as src:
            shutil.copyfileobj(src, out, CHUNK)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise FetchError(f"{label}: member {name} is corrupt: {exc}") from exc


def _dataset_archive(archive_path: Path, work: Path, url: str) -> zipfile.ZipFile:
    """The zip that holds `PAMAP2_Dataset/…`: the download itself or its one nested zip."""
    outer = _open_zip(archive_path, f"archive from {url}")
    names = outer.namelist()
    if any(n.startswith(f"{DATASET_DIR}/") for n in names):
        return outer
    nested = [n for n in names if n.lower().endswith(".zip")]
    if len(nested) != 1:
        outer.close()
        raise FetchError(
            f"archive from {url} holds neither {DATASET_DIR}/ nor exactly one nested zip "
            f"(nested zips: {nested})"
        )
    inner_path = work / "inner.zip"
    with outer, open(inner_path, "wb") as out:
        _copy_member(outer, nested[0], out, f"archive from {url}")
    archive_path.unlink()  # the outer archive is no longer needed; free its disk space early
    return _open_zip(inner_path, f"{nested[0]} inside {url}")


def _extract_verified(
    archive: zipfile.ZipFile, rel: str, size: int, sha256: str, target: Path, label: str
) -> dict[str, Any]:
    """Extract `PAMAP2_Dataset/<rel>` to `target`, hashing while streaming; raise on mismatch."""
    member = f"{DATASET_DIR}/{rel}"
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise FetchError(f"{label} lacks the expected file {member}") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    try:
        with archive.open(info) as src, open(target, "wb") as out:
            while chunk := src.read(CHUNK):
                written += len(chunk)
                if written > size:  # stop early: no point writing past the expected size
                    break
                digest.update(chunk)
                out.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise FetchError(f"{member}: archive member is corrupt: {exc}") from exc
    if written != size:
        actual = f"more than {size:,}" if written > size else f"{written:,}"
        raise FetchError(f"{member}: expected {size:,} bytes, got {actual}")
    if digest.hexdigest() != sha256:
        raise FetchError(f"{member}: expected sha256 {sha256}, got {digest.hexdigest()}")
    return {"name": rel, "bytes": written, "sha256": sha256}


def _keep_users_files(old: Path, new: Path, expected: dict[str, tuple[int, str]]) -> list[str]:
    """Link every file of the installed `old` folder that fetch does not install into `new`
    (a user's notes, extra recordings), so the swap deletes none of them. Hard links: both
    copies exist until the swap, so a kill at any point loses nothing. The synthetic marker
    goes (the data are no longer synthetic), and so do the generator's own `.dat` files when
    the installed set was synthetic."""
    synthetic = (old / SYNTHETIC_MARKER).exists()
    kept = []
    for path in sorted(p for p in old.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(old).as_posix()
        if rel in expected or rel == SYNTHETIC_MARKER:
            continue
        if synthetic and path.suffix == ".dat" and rel.split("/")[0] in ("Protocol", "Optional"):
            continue
        target = new / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target, follow_symlinks=False)
        except OSError:  # no hard links on this file system
            shutil.copy2(path, target, follow_symlinks=False)
        kept.append(rel)
    return kept


def _swap_in(new: Path, target: Path, work: Path) -> None:
    """Rename `new` onto `target`; a previous `target` moves into `work` and goes with it."""
    if not target.exists():
        os.replace(new, target)
        return
    old = work / PREVIOUS
    os.replace(target, old)
    try:
        os.replace(new, target)
    except OSError:
        os.replace(old, target)  # put the previous good copy back before reporting
        raise


def _clean_leftovers(raw_dir: Path, target: Path) -> None:
    """Remove work folders of fetches that were killed (they can hold GBs). One killed between
    the two renames of the swap holds the only copy of the previous data set: put it back."""
    for work in sorted(raw_dir.glob(f"{WORK_PREFIX}*")):
        previous = work / PREVIOUS
        if is_leftover(work) and previous.is_dir() and not target.exists():
            os.replace(previous, target)
    remove_leftovers(raw_dir, f"{WORK_PREFIX}*")


def fetch_pamap2(
    raw_dir: Path,
    url: str = PAMAP2_URL,
    expected: dict[str, tuple[int, str]] | None = None,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Download `url`, verify the expected `.dat` files, install them as `raw_dir/PAMAP2_Dataset`.

    `expected` maps `Protocol/subject101.dat`-style paths to (bytes, sha256); None means the
    official table. On any failure a FetchError is raised, no temporary files stay behind and a
    previous `PAMAP2_Dataset` is left as it was. Files of a previous `PAMAP2_Dataset` that are
    not among the expected ones stay (`kept`), except a synthetic set's own files; work folders
    of killed fetches are removed first.
    """
    expected = EXPECTED_FILES if expected is None else expected
    for rel in expected:
        if _is_unsafe(rel):
            raise FetchError(f"expected file name {rel!r} points outside {DATASET_DIR}")
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    target = raw_dir / DATASET_DIR
    _clean_leftovers(raw_dir, target)
    start = time.perf_counter()
    # The work directory sits beside the target so the final rename stays on one file system.
    with tempfile.TemporaryDirectory(prefix=f"{WORK_PREFIX}{owner_tag()}-", dir=raw_dir) as tmp:
        work = Path(tmp)
        archive_path = work / "download.zip"
        archive_bytes = download(url, archive_path, timeout=timeout)
        staged = work / DATASET_DIR
        with _dataset_archive(archive_path, work, url) as archive:
            files = [
                _extract_verified(archive, rel, size, sha, staged / rel, f"archive from {url}")
                for rel, (size, sha) in sorted(expected.items())
            ]
        kept = _keep_users_files(target, staged, expected) if target.is_dir() else []
        _swap_in(staged, target, work)
    return {
        "url": url,
        "archive_bytes": archive_bytes,
        "dataset_dir": str(target),
        "files": files,
        "kept": kept,
        "seconds": round(time.perf_counter() - start, 2),
    }
