"""Peak memory of reading a large `.dat` recording and of an activity timeline over it, for this
checkout and a baseline git ref, in one invocation.

A PAMAP2-format `.dat` file of about `--size-mb` MB is generated (54 space-separated fields a
line, 100 Hz timestamps, activities in blocks, heart rate on every 11th row, some dropped IMU
packets as NaN), plus a copy whose last line has a bad field. Each stage then runs in a fresh
Python process, and its peak resident set is that process's own high-water mark (`VmHWM` of
`/proc/self/status`, which starts afresh at exec, unlike `ru_maxrss`, which a child inherits
from the parent it forked from; Linux only); its resident set after its imports, before any
work, is shown beside it as the floor:

- `read`: `read_dat` over the file (parse and validate);
- `read-bad-line`: `read_dat` over the copy, which must fail naming the line;
- `timeline`: what the inbox timeline does (`read_dat`, then `build_timeline` with the default
  protocol's 256-row windows every 128 rows, HMM smoothing), with a cheap NumPy model in place
  of the registered champion, so the numbers are the platform's own memory, not a network's.

The baseline ref is checked out into a temporary git worktree and runs with this checkout's
environment (its `ml_core` first on the path), so both sides use the same library versions.

    uv run python bench/memory.py --baseline main --size-mb 1024
    uv run python bench/memory.py --baseline HEAD~2 --size-mb 50 --out /data/bench
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ml_core.data.columns import ACTIVITY, DAT_COLUMNS, HEART_RATE, IMUS, TIMESTAMP, imu_columns
from ml_core.paths import PROJECT_ROOT

BLOCK_ROWS = 20_000  # ~11 MB of text
STAGES = ("read", "read-bad-line", "timeline")

# Run in a fresh interpreter inside the checkout under test: argv = stage, path.
STAGE = r"""
import json, sys, time
stage, path = sys.argv[1], sys.argv[2]
import numpy as np
import polars as pl
import ml_core
from ml_core.data.ingest import MalformedRecordingError, read_dat
if stage == "timeline":
    from ml_core.data.columns import CLASS_SETS, MODEL_CHANNELS, SESSION
    from ml_core.lifecycle.timeline import build_timeline

    classes = list(CLASS_SETS["protocol12"])
    signal = MODEL_CHANNELS.index("ankle_acc16_x")

    def predict(windows):
        level = np.nan_to_num(windows[:, :, signal].mean(axis=1))
        logits = -np.abs(level[:, None] - np.arange(len(classes))[None, :])
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)



def status_mb(field):
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith(field + ":"))
    return int(line.split()[1]) / 1024


imports_mb = status_mb("VmRSS")
start = time.perf_counter()
try:
    if stage == "timeline":
        frame = read_dat(path, 0, "protocol").with_columns(pl.lit("inbox").alias(SESSION))
        timeline = build_timeline(frame, predict, classes, 256, 128, "hmm")
        result = f"{len(timeline.frame)} windows"
    else:
        result = f"{read_dat(path, 0, 'protocol').height} rows"
except MalformedRecordingError as exc:
    result = "error: " + str(exc).splitlines()[-1].strip()
wall_s = time.perf_counter() - start
print(json.dumps({"wall_s": wall_s, "result": result, "imports_mb": imports_mb,
                  "peak_mb": status_mb("VmHWM"), "ml_core": ml_core.__file__}))
"""


def _git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=PROJECT_ROOT, check=True, capture_output=True, text=True
    ).stdout.strip()


def write_recording(target: Path, size_mb: float, seed: int = 0) -> int:
    """A PAMAP2-format `.dat` file of about `size_mb` MB, written in blocks of BLOCK_ROWS rows;
    returns its number of rows."""
    rng = np.random.default_rng(seed)
    rows = 0
    with target.open("wb") as out:
        while out.tell() < size_mb * 1e6:
            n = BLOCK_ROWS
            index = rows + np.arange(n)
            values = rng.normal(0.0, 3.0, size=(n, len(DAT_COLUMNS))).astype(np.float32)
            frame = pl.DataFrame({c: values[:, i] for i, c in enumerate(DAT_COLUMNS)}).with_columns(
                pl.Series(TIMESTAMP, np.round(index * 0.01 + 5.0, 2)),
                # Activities in 60 s blocks.
                pl.Series(
                    ACTIVITY,
                    np.array([1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17, 24])[(index // 6000) % 12],
                ),
                pl.when(pl.Series(index % 11 == 0))
                .then(pl.col(HEART_RATE).abs() * 10 + 80)
                .otherwise(float("nan"))
                .alias(HEART_RATE),
            )
            for imu in IMUS:  # dropped packets: a whole IMU missing on ~1 % of rows
                dropped = pl.Series(rng.random(n) < 0.01)
                frame = frame.with_columns(
                    pl.when(dropped).then(float("nan")).otherwise(pl.col(c)).alias(c)
                    for c in imu_columns(imu)
                )
            out.write(frame.write_csv(separator=" ", include_header=False).encode())
            rows += n
    return rows


def with_bad_last_line(good: Path, target: Path) -> None:
    """`good` with its last line's heart rate replaced by a token that is not a number."""
    shutil.copyfile(good, target)
    with target.open("rb+") as f:
        f.seek(max(f.seek(0, os.SEEK_END) - 4096, 0))
        tail = f.read()
        last = tail.rstrip(b"\n").rfind(b"\n") + 1
        fields = tail[last:].split(b" ")
        fields[2] = b"1.2.3"
        f.seek(f.tell() - len(tail) + last)
        f.write(b" ".join(fields))
        f.truncate()


def run_stage(checkout: Path, stage: str, path: Path) -> dict[str, Any]:
    """One stage in a fresh interpreter with `checkout`'s ml_core."""
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    with tempfile.TemporaryFile() as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-c", STAGE, stage, str(path)], cwd=checkout, env=env, stdout=stdout
        )
        returncode = proc.wait()
        stdout.seek(0)
        text = stdout.read().decode()
    if returncode != 0:  # e.g. -9: killed for memory
        return {"peak_mb": None, "imports_mb": None, "wall_s": None, "result": f"exit {returncode}"}
    report = json.loads(text.strip().splitlines()[-1])
    if not Path(report["ml_core"]).resolve().is_relative_to(checkout.resolve()):
        raise RuntimeError(f"{stage} imported ml_core from {report['ml_core']}, not {checkout}")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=1024.0, help="size of the .dat file")
    parser.add_argument("--baseline", help="git ref to compare with (e.g. main, HEAD~3, a sha)")
    parser.add_argument("--out", type=Path, help="folder for the files (default: a temp folder)")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pamap-memory-") as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        good, bad = work / "subject900.dat", work / "subject900_bad.dat"
        start = time.perf_counter()
        rows = write_recording(good, args.size_mb)
        if "read-bad-line" in args.stages:
            with_bad_last_line(good, bad)
        size = good.stat().st_size / 1e6
        print(f"wrote {size:.0f} MB, {rows} rows in {time.perf_counter() - start:.0f}s")
        checkouts = {"this checkout": PROJECT_ROOT}
        if args.baseline:
            sha = _git("rev-parse", "--short", args.baseline)
            checkouts = {f"baseline {args.baseline} ({sha})": work / "baseline", **checkouts}
            _git("worktree", "add", "--detach", str(work / "baseline"), sha)
        load = os.getloadavg()[0]
        try:
            results = {
                (name, stage): run_stage(where, stage, bad if "bad" in stage else good)
                for name, where in checkouts.items()
                for stage in args.stages
            }
        finally:
            if args.baseline:
                _git("worktree", "remove", "--force", str(work / "baseline"))
        print(f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after\n")
        print(
            f"| stage ({size:.0f} MB file) | code | peak RSS (MB) | after imports (MB) "
            "| wall (s) | result |"
        )
        print("|---|---|---:|---:|---:|---|")
        for (name, stage), r in results.items():
            wall = "" if r["wall_s"] is None else f"{r['wall_s']:.1f}"
            floor = "" if r["imports_mb"] is None else f"{r['imports_mb']:.0f}"
            print(f"| {stage} | {name} | {r['peak_mb']:.0f} | {floor} | {wall} | {r['result']} |")


if __name__ == "__main__":
    main()
