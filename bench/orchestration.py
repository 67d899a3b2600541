"""Benchmark orchestration overhead: runs launched the way users launch them.

(a) one subject's ingest chain through the real CLI,
    `dagster asset materialize --select raw_recording,...,activity_shards --partition 101`;
(b) a backfill of 4 fold x model training partitions submitted with `dagster job backfill` and
    run by `dagster-daemon` (queued run coordinator, default run launcher: one process per run).

For each: wall time, time inside asset bodies (the steps' own durations from the event log),
and the overhead share 1 - body / wall. Training steps share the `training` pool (one at a time),
so in (b) the bodies run one after another and the share is comparable with (a).
`--baseline REF` runs the same measurements on the code of a git revision (extracted with
`git archive`, run with this environment's packages) in the same invocation.

    uv run python bench/orchestration.py                          # tiny synthetic data
    uv run python bench/orchestration.py --baseline 7d09697       # and the code before the split
    uv run python bench/orchestration.py --skip-backfill          # (a) only
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from ml_core.data.synthetic import write_dataset
from ml_core.paths import PROJECT_ROOT

INGEST = "raw_recording,validated_recording,imputed_recording,activity_shards"
FOLDS = ("holdout-106", "loso-101")
MODELS = ("feature_gbm", "early_fusion")
TARGET_A_WALL_S = 15.0
TARGET_B_OVERHEAD = 0.25


def _checkout(ref: str | None, scratch: Path) -> Path:
    """The code to measure: this working tree, or `ref` extracted into `scratch`."""
    if ref is None:
        return PROJECT_ROOT
    code = scratch / f"code-{ref}"
    code.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(code)], input=archive, check=True)
    return code


def _env(code: Path, home: Path, data: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(code),
        "DAGSTER_HOME": str(home),
        "PAMAP_DATA_ROOT": str(data),
        "MLFLOW_TRACKING_URI": f"sqlite:///{data / 'mlflow.db'}",
    }


def _program(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def _body_seconds(instance: dg.DagsterInstance, run_ids: list[str]) -> float:
    total_ms = 0
    for run_id in run_ids:
        for record in instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.STEP_SUCCESS
        ).records:
            event = record.event_log_entry.dagster_event
            assert event is not None
            total_ms += event.step_success_data.duration_ms
    return total_ms / 1000


def _fresh_home(code: Path, scratch: Path, name: str) -> Path:
    home = scratch / name
    home.mkdir()
    shutil.copy(code / "dagster.yaml", home / "dagster.yaml")
    return home


def bench_cli(code: Path, scratch: Path, raw: Path) -> dict[str, float]:
    """(a): one subject's ingest chain through `dagster asset materialize`."""
    data = scratch / f"data-cli-{code.name}"
    shutil.copytree(raw, data / "raw")
    home = _fresh_home(code, scratch, f"home-cli-{code.name}")
    command = [_program("dagster"), "asset", "materialize", "-m", "orchestration.definitions"]
    command += ["--select", INGEST, "--partition", "101"]
    started = time.perf_counter()
    subprocess.run(command, env=_env(code, home, data), cwd=code, check=True, capture_output=True)
    wall = time.perf_counter() - started
    with dg.DagsterInstance.from_config(str(home)) as instance:
        body = _body_seconds(instance, [r.run_id for r in instance.get_runs()])
    return {"wall_s": wall, "body_s": body}


def _prepare(code: Path, env: dict[str, str]) -> None:
    """Not timed: every subject ingested and the folds prepared, in process."""
    script = (
        "import dagster as dg\n"
        "from orchestration.definitions import defs\n"
        "d = defs() if callable(defs) else defs\n"
        "i = dg.DagsterInstance.get()\n"
        "for s in range(101, 110):\n"
        "    assert d.resolve_job_def('ingest_job').execute_in_process(instance=i, partition_key=str(s)).success\n"  # noqa: E501
        f"for f in {FOLDS!r}:\n"
        "    assert d.resolve_job_def('prepare_job').execute_in_process(instance=i, partition_key=f).success\n"  # noqa: E501
        # The variants the backfill trains are registered partitions (a --baseline from before
        # variants has static model partitions and no register_variants).
        "try:\n"
        "    from orchestration.defs.partitions import register_variants\n"
        "except ImportError:\n"
        "    pass\n"
        "else:\n"
        f"    register_variants(i, {MODELS!r})\n"
    )
    subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        cwd=env["PYTHONPATH"],
        check=True,
        capture_output=True,
    )


def bench_backfill(code: Path, scratch: Path, raw: Path, timeout_s: float) -> dict[str, float]:
    """(b): 4 training partitions as one backfill, run by the daemon."""
    data = scratch / f"data-backfill-{code.name}"
    shutil.copytree(raw, data / "raw")
    home = _fresh_home(code, scratch, f"home-backfill-{code.name}")
    env = _env(code, home, data)
    _prepare(code, env)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        before = {r.run_id for r in instance.get_runs()}
    daemon = subprocess.Popen(
        [_program("dagster-daemon"), "run", "-m", "orchestration.definitions"],
        env=env,
        cwd=code,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        keys = ",".join(f"{fold}|{model}" for fold in FOLDS for model in MODELS)
        started = time.perf_counter()
        subprocess.run(
            [
                _program("dagster"),
                "job",
                "backfill",
                "-m",
                "orchestration.definitions",
                "-j",
                "training_job",
                "--partitions",
                keys,
                "--noprompt",
            ],
            env=env,
            cwd=code,
            check=True,
            capture_output=True,
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            while True:
                runs = [r for r in instance.get_runs() if r.run_id not in before]
                if len(runs) == 4 and all(r.is_finished for r in runs):
                    break
                if time.perf_counter() - started > timeout_s:
                    raise TimeoutError(f"backfill not done after {timeout_s:.0f}s")
                time.sleep(0.5)
            wall = time.perf_counter() - started
            failed = [r.run_id for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
            if failed:
                raise RuntimeError(f"backfill runs failed: {failed}")
            body = _body_seconds(instance, [r.run_id for r in runs])
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
    return {"wall_s": wall, "body_s": body}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=None, help="git revision to measure as well")
    parser.add_argument("--scale", default="tiny", choices=["tiny", "demo"])
    parser.add_argument("--skip-backfill", action="store_true")
    parser.add_argument("--timeout", type=float, default=1800.0, help="per backfill, seconds")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-orchestration-") as tmp:
        scratch = Path(tmp)
        raw = scratch / "raw"
        rows = write_dataset(raw, scale=args.scale, seed=0)["rows"]
        codes = {"now": _checkout(None, scratch)}
        if args.baseline:
            codes[f"baseline {args.baseline}"] = _checkout(args.baseline, scratch)
        results: list[tuple[str, str, dict[str, float]]] = []
        for label, code in codes.items():
            results.append(
                ("(a) CLI ingest chain, subject 101", label, bench_cli(code, scratch, raw))
            )
        if not args.skip_backfill:
            for label, code in codes.items():
                result = bench_backfill(code, scratch, raw, args.timeout)
                results.append(("(b) daemon backfill, 4 fold x model", label, result))

    one, five, fifteen = os.getloadavg()
    print(
        f"\n{args.scale} synthetic data ({rows:,} rows); {os.cpu_count()} CPUs; "
        f"load average {one:.2f} {five:.2f} {fifteen:.2f} (at the end)\n"
    )
    print("| measurement | code | wall s | in asset bodies s | overhead share |")
    print("|---|---|---|---|---|")
    for name, label, r in results:
        share = 1 - r["body_s"] / r["wall_s"]
        print(f"| {name} | {label} | {r['wall_s']:.1f} | {r['body_s']:.1f} | {share:.0%} |")
    print(
        f"\ntargets: (a) wall <= {TARGET_A_WALL_S:.0f} s; (b) overhead <= {TARGET_B_OVERHEAD:.0%}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
