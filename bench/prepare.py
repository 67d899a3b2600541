"""Benchmark data preparation: raw `.dat` files to shards, fold manifests and feature statistics.

Times the project's own step functions (`ml_core.data.pipeline`, exactly what the Dagster assets
call) against a plain pandas implementation of the same steps, on the synthetic PAMAP2 set.
Each implementation runs in its own subprocess, so its wall time and peak memory are its own.

    uv run python bench/prepare.py                    # full scale: ~3.85 M rows, ~1.4 GB of text
    uv run python bench/prepare.py --scale demo       # a quick run
    uv run python bench/prepare.py --out DIR --keep   # keep the data; a rerun on DIR reuses it
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ml_core.data.columns import SUBJECTS
from ml_core.data.synthetic import SCALES, write_dataset
from ml_core.io import write_json
from ml_core.paths import DataPaths

SEED = 0
WINDOW = 256  # the fold_manifests asset's default window
IMPLEMENTATIONS: dict[str, str] = {"ours": "ml_core (polars)", "pandas": "plain pandas"}
STAGES: tuple[str, ...] = ("ingest", "validate", "impute", "shard", "folds", "stats")
DATASET_MARKER = "bench_dataset.json"
REPORT_NAME = "bench_report.json"
SHARD_MAX_BYTES = 20_000_000  # as ml_core.data.shards: every parquet shard file under 20 MB

# Targets for the full set on the project's 2-core machine.
TARGET_WALL_S = 30.0
TARGET_SPEEDUP = 4.0
TARGET_PEAK_MB = 4000.0


class _Timer:
    """Wall and CPU seconds (all threads) per stage, and in all since the timer was made.
    CPU time shows what a step costs when other work shares the machine."""

    def __init__(self) -> None:
        self.wall = dict.fromkeys(STAGES, 0.0)
        self.cpu = dict.fromkeys(STAGES, 0.0)
        self._started = (time.perf_counter(), time.process_time())

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.wall[name] += time.perf_counter() - wall
        self.cpu[name] += time.process_time() - cpu

    def report(self) -> dict[str, Any]:
        return {
            "steps_s": time.perf_counter() - self._started[0],
            "cpu_s": time.process_time() - self._started[1],
            "stages": self.wall,
            "stages_cpu": self.cpu,
        }


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), which exec resets: the worker's own peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError("/proc/self/status has no VmHWM line")


# --- the project's implementation -----------------------------------------------------------


def run_ours(paths: DataPaths) -> tuple[int, _Timer]:
    """The asset steps in graph order: per subject ingest, validate, impute, shard; then per
    fold the manifests, then per fold the train-only statistics."""
    from ml_core.data import pipeline
    from ml_core.data.folds import FOLD_NAMES

    timer = _Timer()  # after the imports: a running code location has them loaded
    rows = 0
    for subject in SUBJECTS:
        with timer.stage("ingest"):
            rows += pipeline.ingest_subject(paths, subject)["rows"]
        with timer.stage("validate"):
            result, _ = pipeline.validate_subject(paths, subject)
        if not result.passed:
            raise SystemExit(f"subject {subject}: {result.n_failures} schema failures")
        with timer.stage("impute"):
            pipeline.impute_subject(paths, subject)
        with timer.stage("shard"):
            passed, message, _ = pipeline.shard_subject(paths, subject)
        if not passed:
            raise SystemExit(f"subject {subject}: {message}")
    for fold in FOLD_NAMES:
        with timer.stage("folds"):
            pipeline.build_fold_manifests(paths, fold, window=WINDOW)
    for fold in FOLD_NAMES:
        with timer.stage("stats"):
            pipeline.fold_feature_stats(paths, fold)
    return rows, timer


# --- the plain pandas implementation of the same steps -----------------------------------


def run_pandas(paths: DataPaths) -> tuple[int, _Timer]:
    """The same steps and outputs in straightforward pandas: each step reads the previous
    step's table from parquet and writes its own, as the assets do."""
    import numpy as np
    import pandas as pd
    import torch

    from ml_core.data.columns import (
        ACTIVITY,
        ACTIVITY_NAMES,
        DAT_COLUMNS,
        HEART_RATE,
        IMUS,
        MODEL_CHANNELS,
        SESSION,
        SESSIONS,
        SUBJECT,
        TABLE_COLUMNS,
        TIMESTAMP,
        imu_columns,
    )
    from ml_core.data.folds import (
        FOLD_NAMES,
        SPLITS,
        STRATIFIED_FRACTIONS,
        test_subject,
        validation_subjects,
    )
    from ml_core.data.impute import MAX_STEP_S
    from ml_core.data.schema import HEART_RATE_RANGE, IMU_FIELD_RANGES
    from ml_core.io import atomic_path, load_torch, save_torch, write_text

    dtypes = {c: "float32" for c in DAT_COLUMNS} | {TIMESTAMP: "float64", ACTIVITY: "int16"}
    imu_cols = [c for imu in IMUS for c in imu_columns(imu)]
    bounds = {HEART_RATE: HEART_RATE_RANGE} | {
        c: next(r for field, r in IMU_FIELD_RANGES.items() if c.split("_", 1)[1].startswith(field))
        for c in imu_cols
    }

    def write_parquet(frame: pd.DataFrame, target: Path) -> None:
        with atomic_path(target) as tmp:
            frame.to_parquet(tmp, compression="zstd", index=False)

    def ingest(subject: int) -> int:
        frames = []
        for rank, session in enumerate(SESSIONS):
            path = paths.dat_file(session, subject)
            if session != "protocol" and not path.is_file():
                continue
            frame = pd.read_csv(
                path, sep=" ", header=None, names=DAT_COLUMNS, dtype=dtypes, na_values="NaN"
            )
            frame[SUBJECT] = np.int16(subject)
            frame[SESSION] = session
            frame["_rank"] = rank
            frames.append(frame)
        table = pd.concat(frames, ignore_index=True)
        table = table.sort_values(["_rank", TIMESTAMP], kind="stable", ignore_index=True)
        write_parquet(table[TABLE_COLUMNS], paths.table("raw_recording", subject))
        return len(table)

    def validate(subject: int) -> None:
        source = paths.table("raw_recording", subject)
        table = pd.read_parquet(source)
        if list(table.columns) != TABLE_COLUMNS:
            raise SystemExit(f"{source}: columns differ from TABLE_COLUMNS")
        failures = {
            c: int((~(table[c].isna() | table[c].between(lo, hi))).sum())
            for c, (lo, hi) in bounds.items()
        }
        failures[TIMESTAMP] = int((table[TIMESTAMP] < 0).sum())
        failures[ACTIVITY] = int((~table[ACTIVITY].isin(list(ACTIVITY_NAMES))).sum())
        failures[SUBJECT] = int((~table[SUBJECT].isin(SUBJECTS)).sum())
        failures[SESSION] = int((~table[SESSION].isin(SESSIONS)).sum())
        bad = {c: n for c, n in failures.items() if n}
        if bad:
            raise SystemExit(f"{source}: values out of range {bad}")
        kept = table[table[ACTIVITY] != 0]
        write_parquet(kept, paths.table("validated_recording", subject))

    def impute(subject: int) -> None:
        table = pd.read_parquet(paths.table("validated_recording", subject))
        step = table[TIMESTAMP].diff()
        starts = (
            (table[SUBJECT] != table[SUBJECT].shift())
            | (table[SESSION] != table[SESSION].shift())
            | (table[ACTIVITY] != table[ACTIVITY].shift())
            | (step <= 0)
            | (step > MAX_STEP_S)
        )
        segment = starts.cumsum()
        table[HEART_RATE] = (
            table.groupby([SUBJECT, SESSION], sort=False)[HEART_RATE]
            .transform(lambda s: s.ffill().bfill().rolling(25, center=True, min_periods=1).median())
            .astype("float32")
        )
        # pandas' limit also fills the first 10 samples of a longer gap; the synthetic packet
        # drops are bursts of at most 8 samples, so on this data both fill the same samples.
        table[imu_cols] = (
            table.groupby(segment, sort=False)[imu_cols]
            .transform(lambda g: g.interpolate(limit=10, limit_area="inside"))
            .astype("float32")
        )
        write_parquet(table, paths.table("imputed_recording", subject))

    def shard(subject: int) -> None:
        table = pd.read_parquet(paths.table("imputed_recording", subject))
        table = table.sort_values([ACTIVITY, TIMESTAMP], kind="stable")
        index, written = [], 0
        for activity, part in table.groupby(ACTIVITY, sort=True):
            sessions = part[SESSION].unique()
            if len(sessions) != 1:
                raise SystemExit(f"subject {subject} activity {activity}: sessions {sessions}")
            target = paths.shard_dir(subject) / f"activity_{activity}.parquet"
            write_parquet(part, target)
            size = target.stat().st_size
            if size >= SHARD_MAX_BYTES:
                target.unlink()
                chunk = math.ceil(len(part) / math.ceil(size / (0.9 * SHARD_MAX_BYTES)))
                for k, lo in enumerate(range(0, len(part), chunk)):
                    name = f"activity_{activity}_part{k:02d}.parquet"
                    write_parquet(part.iloc[lo : lo + chunk], target.with_name(name))
            data = torch.from_numpy(part[MODEL_CHANNELS].to_numpy(dtype=np.float32, copy=True))
            save_torch(
                {
                    "data": data,
                    "channels": list(MODEL_CHANNELS),
                    "subject_id": subject,
                    "activity_id": int(activity),
                    "session": str(sessions[0]),
                    "timestamp_start": float(part[TIMESTAMP].iloc[0]),
                },
                paths.tensor_shard(subject, int(activity)),
            )
            rel = paths.tensor_shard(subject, int(activity)).relative_to(paths.root).as_posix()
            index.append(
                {
                    "path": rel,
                    "subject": subject,
                    "activity": int(activity),
                    "session": str(sessions[0]),
                    "rows": len(part),
                }
            )
            written += len(part)
        if written != len(table):
            raise SystemExit(f"subject {subject}: {written} rows in shards, table has {len(table)}")
        write_json(
            {"subject": subject, "shards": index}, paths.tensor_shard_dir(subject) / "index.json"
        )

    def cut(rows: int, fractions: tuple[float, ...]) -> list[tuple[int, int]] | None:
        usable = rows - (len(fractions) - 1) * WINDOW
        lengths = [round(f * usable) for f in fractions[:-1]]
        lengths.append(usable - sum(lengths))
        if min(lengths) < WINDOW:
            return None
        starts = np.cumsum([0] + [n + WINDOW for n in lengths[:-1]])
        return [(int(s), int(s) + n) for s, n in zip(starts, lengths, strict=True)]

    def folds() -> None:
        entries = [
            e
            for s in SUBJECTS
            for e in json.loads((paths.tensor_shard_dir(s) / "index.json").read_text())["shards"]
        ]
        shards = pd.DataFrame(entries).sort_values(["subject", "activity", "path"])
        for fold in FOLD_NAMES:
            lines: dict[str, list[str]] = {split: [] for split in SPLITS}
            for shard_row in shards.itertuples():
                whole = [(0, shard_row.rows)]
                if fold == "stratified":
                    parts = cut(shard_row.rows, STRATIFIED_FRACTIONS)
                    splits = SPLITS if parts else ("train",)
                else:
                    held_out = {v: "val" for v in validation_subjects(fold)}
                    held_out[test_subject(fold)] = "test"
                    parts, splits = whole, (held_out.get(shard_row.subject, "train"),)
                for split, (start, end) in zip(splits, parts or whole, strict=True):
                    lines[split].append(f"{shard_row.path},{start},{end}\n")
            for split in SPLITS:
                write_text("".join(lines[split]), paths.manifest(fold, split))

    def stats(fold: str) -> None:
        train = pd.read_csv(
            paths.manifest(fold, "train"), header=None, names=["path", "start", "end"]
        )
        pieces = []
        for path, ranges in train.groupby("path"):
            data = load_torch(paths.root / path)["data"].numpy()
            pieces += [data[s:e] for s, e in zip(ranges["start"], ranges["end"], strict=True)]
        frame = pd.DataFrame(np.concatenate(pieces), columns=MODEL_CHANNELS, dtype="float64")
        mean, std, count = frame.mean(), frame.std(ddof=0), frame.count()
        per_feature = {
            c: {
                "transform": "identity",
                "mean": float(mean[c]),
                "std": max(float(std[c]), 1e-6),
                "count": int(count[c]),
                "nan_fraction": 1 - int(count[c]) / len(frame),
            }
            for c in MODEL_CHANNELS
        }
        write_json(
            {"feature_order": list(MODEL_CHANNELS), "per_feature": per_feature},
            paths.feature_stats(fold),
        )

    timer = _Timer()
    rows = 0
    for subject in SUBJECTS:
        with timer.stage("ingest"):
            rows += ingest(subject)
        with timer.stage("validate"):
            validate(subject)
        with timer.stage("impute"):
            impute(subject)
        with timer.stage("shard"):
            shard(subject)
    with timer.stage("folds"):
        folds()
    for fold in FOLD_NAMES:
        with timer.stage("stats"):
            stats(fold)
    return rows, timer


# --- driver ----------------------------------------------------------------------------------


def worker(implementation: str, root: Path) -> None:
    """Run one implementation on `root` (its own data root) and write its report there."""
    run = {"ours": run_ours, "pandas": run_pandas}[implementation]
    rows, timer = run(DataPaths(root))
    write_json({"rows": rows, **timer.report(), "peak_rss_mb": _peak_rss_mb()}, root / REPORT_NAME)


def _dataset(root: Path, scale: str) -> dict[str, Any]:
    """Write the synthetic set under `root/raw`, or reuse the one a kept earlier run wrote."""
    marker = root / DATASET_MARKER
    if marker.exists():
        summary = json.loads(marker.read_text())
        intact = all(
            (root / "raw" / name).is_file() and (root / "raw" / name).stat().st_size == f["bytes"]
            for name, f in summary["files"].items()
        )
        if summary["scale"] == scale and summary["seed"] == SEED and intact:
            print(f"reusing the {scale} data set in {root / 'raw'}")
            return summary
        marker.unlink()
    shutil.rmtree(root / "raw", ignore_errors=True)
    print(f"writing the {scale} synthetic data set to {root / 'raw'} ...", flush=True)
    summary = write_dataset(root / "raw", scale=scale, seed=SEED)
    summary["bytes"] = sum(f["bytes"] for f in summary["files"].values())
    write_json(summary, marker)
    print(f"  {summary['rows']:,} rows, {summary['bytes'] / 1e6:,.0f} MB in {summary['seconds']} s")
    return summary


def _launch(implementation: str, root: Path) -> dict[str, Any]:
    """Run one implementation in a fresh subprocess on its own output root."""
    out = root / implementation
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    (out / "raw").symlink_to(root / "raw")
    print(f"running {IMPLEMENTATIONS[implementation]} ...", flush=True)
    started = time.perf_counter()
    command = [sys.executable, __file__, "--worker", implementation, "--root", str(out)]
    subprocess.run(command, check=True)
    report = json.loads((out / REPORT_NAME).read_text())
    report["process_s"] = time.perf_counter() - started
    print(f"  {report['steps_s']:.1f} s", flush=True)
    return report


def _compare(root: Path) -> str:
    """Both implementations' shards, manifests and statistics side by side: the same work."""
    from ml_core.data.folds import FOLD_NAMES, SPLITS

    def shard_rows(impl: str) -> dict[tuple[int, int], int]:
        paths = DataPaths(root / impl)
        return {
            (e["subject"], e["activity"]): e["rows"]
            for s in SUBJECTS
            for e in json.loads((paths.tensor_shard_dir(s) / "index.json").read_text())["shards"]
        }

    ours, theirs = shard_rows("ours"), shard_rows("pandas")
    same = sum(ours.get(k) == v for k, v in theirs.items())
    manifests = [(fold, split) for fold in FOLD_NAMES for split in SPLITS]
    identical = sum(
        len({DataPaths(root / impl).manifest(*m).read_text() for impl in IMPLEMENTATIONS}) == 1
        for m in manifests
    )
    worst = 0.0
    for fold in FOLD_NAMES:
        a, b = (
            json.loads(DataPaths(root / impl).feature_stats(fold).read_text())["per_feature"]
            for impl in IMPLEMENTATIONS
        )
        worst = max(worst, *(abs(a[c]["mean"] - b[c]["mean"]) / a[c]["std"] for c in a))
    return (
        f"outputs agree: {same} of {len(ours)} shards (ours) / {len(theirs)} (pandas) have equal "
        f"rows; {identical} of {len(manifests)} fold manifests identical; largest train-mean "
        f"difference over folds and channels {worst:.2e} std"
    )


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def _print_results(dataset: dict[str, Any], reports: dict[str, dict[str, Any]], scale: str) -> None:
    input_mb = dataset["bytes"] / 1e6
    header = (
        f"{'implementation':<18}{'rows':>11}{'input MB':>10}{'wall s':>9}{'rows/s':>11}"
        f"{'MB/s':>8}{'peak RSS MB':>13}{'cpu s':>8}{'process s':>11}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for impl, r in reports.items():
        wall = r["steps_s"]
        print(
            f"{IMPLEMENTATIONS[impl]:<18}{r['rows']:>11,}{input_mb:>10,.0f}{wall:>9.1f}"
            f"{r['rows'] / wall:>11,.0f}{input_mb / wall:>8.1f}{r['peak_rss_mb']:>13,.0f}"
            f"{r['cpu_s']:>8.1f}{r['process_s']:>11.1f}"
        )
    ours, pandas = reports["ours"], reports["pandas"]
    speedup = pandas["steps_s"] / ours["steps_s"]
    print(
        f"speed-up: {speedup:.2f}x in wall time "
        f"({pandas['cpu_s'] / ours['cpu_s']:.2f}x in CPU time)"
    )
    print(
        "(wall s and cpu s: the steps alone, cpu s summed over threads; "
        "process s adds start-up and imports)"
    )

    print(f"\ntargets ({scale} scale; set for the full set on a 2-core machine):")
    for label, value, met in (
        (
            f"full set prepared in <= {TARGET_WALL_S:.0f} s",
            f"{ours['steps_s']:.1f} s",
            ours["steps_s"] <= TARGET_WALL_S,
        ),
        (
            f">= {TARGET_SPEEDUP:.0f}x faster than pandas",
            f"{speedup:.2f}x",
            speedup >= TARGET_SPEEDUP,
        ),
        (
            f"peak memory <= {TARGET_PEAK_MB:,.0f} MB",
            f"{ours['peak_rss_mb']:,.0f} MB",
            ours["peak_rss_mb"] <= TARGET_PEAK_MB,
        ),
    ):
        print(f"  {label:<36}{value:>12}  {'met' if met else 'MISSED'}")

    print("\nseconds per stage (per-subject stages summed over subjects, per-fold over folds):")
    print(f"  {'stage':<10}{'ml_core wall':>14}{'cpu':>8}{'pandas wall':>14}{'cpu':>8}")
    for stage in (*STAGES, "total"):
        o, p = (
            (r["steps_s"], r["cpu_s"])
            if stage == "total"
            else (r["stages"][stage], r["stages_cpu"][stage])
            for r in (ours, pandas)
        )
        print(f"  {stage:<10}{o[0]:>14.2f}{o[1]:>8.2f}{p[0]:>14.2f}{p[1]:>8.2f}")


def _remove(root: Path, created_root: bool) -> None:
    """Delete what this benchmark wrote, and the folder itself if the benchmark made it."""
    if created_root:
        shutil.rmtree(root)
        return
    for name in ("raw", *IMPLEMENTATIONS):
        shutil.rmtree(root / name, ignore_errors=True)
    (root / DATASET_MARKER).unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="full", help="synthetic set size")
    parser.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the data and outputs")
    parser.add_argument("--worker", choices=list(IMPLEMENTATIONS), help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.root)
        return

    if args.out is None:
        root, created_root = Path(tempfile.mkdtemp(prefix="pamap_bench_")), True
    else:
        root = args.out.resolve()
        if root.exists() and any(root.iterdir()) and not (root / DATASET_MARKER).exists():
            raise SystemExit(f"{root} holds other files; give an empty or new folder as --out")
        created_root = not root.exists()
        root.mkdir(parents=True, exist_ok=True)

    print(f"machine: {_load()}")
    try:
        dataset = _dataset(root, args.scale)
        reports = {impl: _launch(impl, root) for impl in IMPLEMENTATIONS}
        _print_results(dataset, reports, args.scale)
        print("\n" + _compare(root))
        print(f"machine after the run: {_load()}")
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            _remove(root, created_root)


if __name__ == "__main__":
    main()
