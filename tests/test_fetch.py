"""PAMAP2 download: verified install, atomic swap, and every way a download can go wrong.

A real HTTP server on 127.0.0.1 serves archives built here; no other host is ever contacted.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import socket
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ml_core.data.columns import OPTIONAL_SUBJECTS, SUBJECTS
from ml_core.data.fetch import EXPECTED_FILES, FetchError, fetch_pamap2

# Small stand-ins for the real files, each with distinct content.
FILES: dict[str, bytes] = {
    f"{session}/subject{subject}.dat": "".join(
        f"{row * 0.01 + subject:.2f} {row % 7} NaN {subject}.{row} {session}\n"
        for row in range(200)
    ).encode()
    for session, subject in [("Protocol", 101), ("Protocol", 102), ("Optional", 101)]
}


def expected_table(files: dict[str, bytes]) -> dict[str, tuple[int, str]]:
    return {rel: (len(data), hashlib.sha256(data).hexdigest()) for rel, data in files.items()}


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    """A zip, stored by default so member bytes appear verbatim in the archive."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def dataset_zip(files: dict[str, bytes], extra: dict[str, bytes] | None = None) -> bytes:
    """The PAMAP2_Dataset/ layout plus a readme, which must not be extracted."""
    members = {f"PAMAP2_Dataset/{rel}": data for rel, data in files.items()}
    members["PAMAP2_Dataset/readme.pdf"] = b"%PDF not a data file"
    return zip_bytes({**members, **(extra or {})})


def uci_zip(files: dict[str, bytes]) -> bytes:
    """The official UCI layout: an outer (deflated) zip holding PAMAP2_Dataset.zip and a readme."""
    outer = {"PAMAP2_Dataset.zip": dataset_zip(files), "readme.txt": b"PAMAP2"}
    return zip_bytes(outer, compression=zipfile.ZIP_DEFLATED)


class Server:
    """Serves `root` on 127.0.0.1; `/short/<name>` claims 1000 bytes more than it sends and
    `/slow/<name>` waits (until teardown) before answering."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.release = threading.Event()
        handler = functools.partial(self._handler_class(), directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        # A short poll interval keeps shutdown (and so each test's teardown) fast.
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def _handler_class(self) -> type[http.server.SimpleHTTPRequestHandler]:
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/slow/"):
                    server.release.wait(10)
                    return
                if self.path.startswith("/short/"):
                    body = (server.root / self.path.removeprefix("/short/")).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(body) + 1000))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                super().do_GET()

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def publish(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return self.url(name)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture(autouse=True)
def local_network_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection that is not to 127.0.0.1, and keep proxies out of the way."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    real = socket.create_connection

    def create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
        assert address[0] == "127.0.0.1", f"test tried to reach {address}"
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    srv = Server(root)
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture
def raw_dir(tmp_path: Path) -> Path:
    return tmp_path / "raw"


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative path."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


def install_previous(raw_dir: Path) -> dict[str, bytes]:
    """A previous good dataset (different content) that failures must leave untouched."""
    previous = raw_dir / "PAMAP2_Dataset"
    (previous / "Protocol").mkdir(parents=True)
    (previous / "Protocol" / "subject101.dat").write_bytes(b"previous good data\n")
    (previous / "Protocol" / "stale.dat").write_bytes(b"only in the previous copy\n")
    return tree(previous)


@pytest.mark.parametrize("layout", ["direct", "nested"])
def test_fetch_installs_exactly_the_verified_files(
    server: Server, raw_dir: Path, layout: str
) -> None:
    archive = dataset_zip(FILES) if layout == "direct" else uci_zip(FILES)
    url = server.publish("pamap2.zip", archive)
    report = fetch_pamap2(raw_dir, url, expected=expected_table(FILES))

    assert tree(raw_dir / "PAMAP2_Dataset") == FILES  # no readme, nothing else
    assert [p.name for p in raw_dir.iterdir()] == ["PAMAP2_Dataset"]  # no temp files left
    assert report["files"] == [
        {"name": rel, "bytes": size, "sha256": sha}
        for rel, (size, sha) in sorted(expected_table(FILES).items())
    ]
    assert report["archive_bytes"] == len(archive)


def test_fetch_replaces_a_previous_dataset_and_keeps_the_users_files(
    server: Server, raw_dir: Path
) -> None:
    install_previous(raw_dir)
    notes = raw_dir / "PAMAP2_Dataset" / "notes" / "labels.txt"
    notes.parent.mkdir()
    notes.write_text("my own annotations\n")
    url = server.publish("pamap2.zip", uci_zip(FILES))
    report = fetch_pamap2(raw_dir, url, expected=expected_table(FILES))

    # The fetched files replace theirs; files fetch does not install stay as they were.
    assert tree(raw_dir / "PAMAP2_Dataset") == FILES | {
        "Protocol/stale.dat": b"only in the previous copy\n",
        "notes/labels.txt": b"my own annotations\n",
    }
    assert report["kept"] == ["Protocol/stale.dat", "notes/labels.txt"]
    assert [p.name for p in raw_dir.iterdir()] == ["PAMAP2_Dataset"]


def test_fetch_over_a_synthetic_set_drops_the_generator_files(
    server: Server, raw_dir: Path
) -> None:
    install_previous(raw_dir)
    (raw_dir / "PAMAP2_Dataset" / "SYNTHETIC.json").write_text("{}")
    (raw_dir / "PAMAP2_Dataset" / "README.md").write_text("mine\n")
    url = server.publish("pamap2.zip", uci_zip(FILES))
    fetch_pamap2(raw_dir, url, expected=expected_table(FILES))

    # The generator's .dat files and marker go with the synthetic set; the user's file stays.
    assert tree(raw_dir / "PAMAP2_Dataset") == FILES | {"README.md": b"mine\n"}


def test_a_killed_fetch_leaves_nothing_for_long(server: Server, raw_dir: Path) -> None:
    """Work folders of a fetch killed mid-download (GBs) go at the next fetch; one killed between
    the two renames of the swap holds the previous data set, which is put back first."""
    install_previous(raw_dir)
    dead = dead_pid()
    download = raw_dir / f".pamap2-fetch-@{socket.gethostname()}-{dead}@-abc"
    download.mkdir()
    (download / "download.zip").write_bytes(b"x" * 1000)
    alive = raw_dir / f".pamap2-fetch-@{socket.gethostname()}-{os.getpid()}@-def"
    alive.mkdir()  # a fetch still running (here: this process) is left alone
    url = server.publish("pamap2.zip", uci_zip(FILES))
    fetch_pamap2(raw_dir, url, expected=expected_table(FILES))
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted(["PAMAP2_Dataset", alive.name])

    # Killed between the renames: PAMAP2_Dataset is missing, its copy is in the work folder.
    swapped = raw_dir / f".pamap2-fetch-@{socket.gethostname()}-{dead}@-ghi"
    swapped.mkdir()
    (raw_dir / "PAMAP2_Dataset").rename(swapped / "previous")
    restored = tree(swapped / "previous")
    with pytest.raises(FetchError):
        fetch_pamap2(raw_dir, server.url("missing.zip"), expected=expected_table(FILES))
    assert tree(raw_dir / "PAMAP2_Dataset") == restored
    assert not swapped.exists()


def dead_pid() -> int:
    """The id of a process that has ended."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def assert_untouched(raw_dir: Path, previous: dict[str, bytes] | None) -> None:
    """Nothing half-written: either no dataset and no files at all, or the old one as it was."""
    if previous is None:
        assert not raw_dir.exists() or list(raw_dir.iterdir()) == []
    else:
        assert [p.name for p in raw_dir.iterdir()] == ["PAMAP2_Dataset"]
        assert tree(raw_dir / "PAMAP2_Dataset") == previous


@pytest.mark.parametrize("has_previous", [False, True])
def test_changed_member_fails_hash_check_and_installs_nothing(
    server: Server, raw_dir: Path, has_previous: bool
) -> None:
    previous = install_previous(raw_dir) if has_previous else None
    bad = dict(FILES)
    data = bytearray(bad["Protocol/subject102.dat"])
    data[100] ^= 0x01
    bad["Protocol/subject102.dat"] = bytes(data)
    url = server.publish("pamap2.zip", uci_zip(bad))
    size, good_sha = expected_table(FILES)["Protocol/subject102.dat"]

    with pytest.raises(FetchError, match="Protocol/subject102.dat") as error:
        fetch_pamap2(raw_dir, url, expected=expected_table(FILES))
    assert good_sha in str(error.value)
    assert hashlib.sha256(data).hexdigest() in str(error.value)
    assert_untouched(raw_dir, previous)


def test_short_member_fails_size_check(server: Server, raw_dir: Path) -> None:
    bad = {**FILES, "Optional/subject101.dat": FILES["Optional/subject101.dat"][:-10]}
    url = server.publish("pamap2.zip", dataset_zip(bad))
    size = len(FILES["Optional/subject101.dat"])

    with pytest.raises(FetchError, match=f"Optional/subject101.dat: expected {size:,} bytes, got"):
        fetch_pamap2(raw_dir, url, expected=expected_table(FILES))
    assert_untouched(raw_dir, None)


def test_corrupted_archive_bytes_are_detected(server: Server, raw_dir: Path) -> None:
    previous = install_previous(raw_dir)
    archive = bytearray(dataset_zip(FILES))
    offset = archive.find(FILES["Protocol/subject101.dat"]) + 50  # stored: content is verbatim
    archive[offset] ^= 0x01
    url = server.publish("pamap2.zip", bytes(archive))

    with pytest.raises(FetchError, match="Protocol/subject101.dat"):
        fetch_pamap2(raw_dir, url, expected=expected_table(FILES))
    assert_untouched(raw_dir, previous)


def test_download_shorter_than_content_length_is_detected(server: Server, raw_dir: Path) -> None:
    previous = install_previous(raw_dir)
    server.publish("pamap2.zip", uci_zip(FILES))

    with pytest.raises(FetchError, match="truncated"):
        fetch_pamap2(raw_dir, server.url("short/pamap2.zip"), expected=expected_table(FILES))
    assert_untouched(raw_dir, previous)


def test_cut_archive_is_detected(server: Server, raw_dir: Path) -> None:
    archive = uci_zip(FILES)
    url = server.publish("pamap2.zip", archive[: len(archive) // 2])

    with pytest.raises(FetchError, match="not a readable zip"):
        fetch_pamap2(raw_dir, url, expected=expected_table(FILES))
    assert_untouched(raw_dir, None)


def test_http_error_names_url_and_status(server: Server, raw_dir: Path) -> None:
    url = server.url("missing.zip")
    with pytest.raises(FetchError, match="HTTP 404") as error:
        fetch_pamap2(raw_dir, url, expected=expected_table(FILES))
    assert url in str(error.value)
    assert_untouched(raw_dir, None)


def test_timeout_is_reported(server: Server, raw_dir: Path) -> None:
    url = server.url("slow/pamap2.zip")
    with pytest.raises(FetchError, match=url):
        fetch_pamap2(raw_dir, url, expected=expected_table(FILES), timeout=0.2)
    assert_untouched(raw_dir, None)


@pytest.mark.parametrize("layout", ["direct", "nested"])
@pytest.mark.parametrize(
    "evil", ["../evil.dat", "/tmp/evil.dat", "PAMAP2_Dataset/../../evil.dat", "..\\evil.dat"]
)
def test_zip_slip_member_is_rejected(
    server: Server, raw_dir: Path, tmp_path: Path, layout: str, evil: str
) -> None:
    inner = dataset_zip(FILES, extra={evil: b"escape"})
    archive = inner if layout == "direct" else zip_bytes({"PAMAP2_Dataset.zip": inner})
    url = server.publish("pamap2.zip", archive)

    with pytest.raises(FetchError, match="unsafe member name") as error:
        fetch_pamap2(raw_dir, url, expected=expected_table(FILES))
    assert repr(evil) in str(error.value)
    assert not (tmp_path / "evil.dat").exists()
    assert_untouched(raw_dir, None)


def test_missing_expected_file_is_named(server: Server, raw_dir: Path) -> None:
    expected = {**expected_table(FILES), "Optional/subject109.dat": (10, "0" * 64)}
    url = server.publish("pamap2.zip", uci_zip(FILES))

    with pytest.raises(
        FetchError, match="lacks the expected file PAMAP2_Dataset/Optional/subject109"
    ):
        fetch_pamap2(raw_dir, url, expected=expected)
    assert_untouched(raw_dir, None)


def test_official_table_covers_every_subject_file() -> None:
    names = {f"Protocol/subject{s}.dat" for s in SUBJECTS}
    names |= {f"Optional/subject{s}.dat" for s in OPTIONAL_SUBJECTS}
    assert set(EXPECTED_FILES) == names
    for size, sha in EXPECTED_FILES.values():
        assert size > 1_000_000
        assert len(sha) == 64 and int(sha, 16) >= 0
