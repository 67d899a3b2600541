"""`pamap demo` on this checkout and on a baseline git ref, in one invocation: wall time, time in
asset steps, orchestration overhead, CPU time, peak memory, and each model's pooled LOSO macro F1.

Each demo is `uv run pamap demo` in its own checkout with its own environment, on a fresh data
root and a fresh Dagster instance (a DAGSTER_HOME holding that checkout's dagster.yaml), one
after the other, the baseline first. The baseline ref is checked out into a temporary git
worktree that gets its own environment (`uv sync --locked`). Wall time is the whole command,
synthetic data included; steps and overhead are what the demo reports; peak RSS is the largest
resident set in the demo's process tree and CPU the tree's user + system seconds (both from
wait4's rusage). CPU time says what a run costs when other work shares the cores; wall time
does not, so the load average before and after each run is printed with it.

Pooled LOSO macro F1 is the leaderboard's (`pooled_loso`: one confusion matrix over every LOSO
test window, macro F1 over the classes present, 95 % CI from a bootstrap over test subjects),
computed with this checkout's code from both runs' evaluation bundles.

    uv run python bench/demo.py --baseline main                    # the default demo
    uv run python bench/demo.py --baseline main --models all       # every registered model
    uv run python bench/demo.py --baseline HEAD~1 --folds loso-101 loso-102 --scale tiny
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ml_core.evaluation.leaderboard import Result, pooled_loso
from ml_core.evaluation.metrics import confusion_counts, macro_f1_from_confusion
from ml_core.evaluation.protocol import EvaluationProtocol
from ml_core.paths import PROJECT_ROOT

DONE = re.compile(
    r"done in (?P<total>[\d.]+)s \((?P<synthetic>[\d.]+)s writing synthetic data\): "
    r"(?P<runs>\d+) runs, (?P<steps>[\d.]+)s inside asset steps, orchestration overhead "
    r"(?P<overhead>[\d.]+)s"
)
TRAINING_LINE = re.compile(r"^\s+(?P<fold>\S+) x (?P<model>\S+)\s+(?P<wall>[\d.]+)s\s+ok$")


def _git(*args: str, cwd: Path = PROJECT_ROOT) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout.strip()


def run_demo(checkout: Path, work: Path, demo_args: list[str]) -> dict[str, Any]:
    """One `pamap demo` of `checkout` on fresh `work/data` and `work/dagster_home`."""
    home, root = work / "dagster_home", work / "data"
    home.mkdir(parents=True)
    shutil.copy(checkout / "dagster.yaml", home / "dagster.yaml")
    env = {**os.environ, "DAGSTER_HOME": str(home), "PAMAP_DATA_ROOT": str(root)}
    env.pop("VIRTUAL_ENV", None)  # the checkout's own environment, not this one's
    command = ["uv", "run", "--locked", "--project", str(checkout), "pamap", "demo"]
    command += ["--data-root", str(root), *demo_args]
    load_before = os.getloadavg()
    log = work / "demo.log"
    started = time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=checkout, env=env, stdout=out, stderr=out)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    text = log.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed; its output:\n{text[-4000:]}")
    done = DONE.search(text)
    if done is None:
        raise SystemExit(f"{log}: no 'done in' line from the demo")
    per_model: dict[str, float] = {}
    for line in text.splitlines():
        match = TRAINING_LINE.match(line)
        if match:
            model = match["model"]
            per_model[model] = per_model.get(model, 0.0) + float(match["wall"])
    return {
        "wall_s": wall,
        "demo_total_s": float(done["total"]),
        "synthetic_s": float(done["synthetic"]),
        "runs": int(done["runs"]),
        "steps_s": float(done["steps"]),
        "overhead_s": float(done["overhead"]),
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_mb": usage.ru_maxrss / 1024,  # kilobytes on Linux
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "training_s": per_model,
        "f1": loso_f1(root),
        "log": str(log),
    }


def loso_f1(root: Path) -> dict[str, dict[str, Any]]:
    """Pooled LOSO macro F1 per variant from the evaluation bundles under `root` (seed 0)."""
    by_variant: dict[str, list[Result]] = {}
    for bundle in sorted(root.glob("evaluation/loso-*/*/*/seed-0/predictions.parquet")):
        fold, variant = bundle.parts[-5], bundle.parts[-4]
        predictions = pl.read_parquet(bundle)
        y_true = predictions["true_activity_id"].to_numpy()
        y_pred = predictions["predicted_activity_id"].to_numpy()
        classes = np.union1d(np.unique(y_true), y_pred)
        f1 = float(macro_f1_from_confusion(confusion_counts(y_true, y_pred, classes)))
        result = Result(
            variant,
            fold,
            # Pooled by label only: the protocol object just satisfies `Result`.
            EvaluationProtocol(256, 128, 1, "protocol12"),
            0,
            y_true,
            y_pred,
            f1,
            float(np.mean(y_true == y_pred)),
        )
        by_variant.setdefault(variant, []).append(result)
    return {variant: pooled_loso(results) for variant, results in by_variant.items()}


def _f1_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "–"
    return f"{entry['macro_f1']:.3f} [{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def print_tables(runs: dict[str, dict[str, Any]]) -> None:
    names = list(runs)
    print("| | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))

    def row(label: str, cell: Any) -> None:
        print(f"| {label} | " + " | ".join(cell(runs[n]) for n in names) + " |")

    row("wall (s)", lambda r: f"{r['wall_s']:.1f}")
    row("writing synthetic data (s)", lambda r: f"{r['synthetic_s']:.1f}")
    row("inside asset steps (s)", lambda r: f"{r['steps_s']:.1f}")

    def overhead(r: dict[str, Any]) -> str:
        orchestrated = max(r["demo_total_s"] - r["synthetic_s"], 1e-9)
        return f"{r['overhead_s']:.1f} ({100 * r['overhead_s'] / orchestrated:.1f} %)"

    row("orchestration overhead (s)", overhead)
    row("CPU, user + system (s)", lambda r: f"{r['cpu_s']:.1f}")
    row("peak RSS (MB)", lambda r: f"{r['peak_rss_mb']:,.0f}")
    row("Dagster runs", lambda r: str(r["runs"]))
    models = sorted({m for r in runs.values() for m in r["training_s"]})
    for model in models:
        row(
            f"{model}: train + evaluate, all folds (s)",
            lambda r, model=model: f"{r['training_s'].get(model, 0):.1f}",
        )
    row(
        "load average before / after",
        lambda r: f"{r['load_before'][0]:.2f} / {r['load_after'][0]:.2f}",
    )

    variants = sorted({v for r in runs.values() for v in r["f1"]})
    print("\nPooled LOSO macro F1 [95 % CI, bootstrap over test subjects]:\n")
    print(
        "| model | "
        + " | ".join(names)
        + (" | change | within the baseline's CI |" if len(names) == 2 else " |")
    )
    print("|---|" + "---|" * (len(names) + (2 if len(names) == 2 else 0)))
    for variant in variants:
        entries = [runs[n]["f1"].get(variant) for n in names]
        cells = [_f1_cell(e) for e in entries]
        if len(names) == 2:
            before, after = entries
            if before is not None and after is not None:
                inside = before["ci_low"] <= after["macro_f1"] <= before["ci_high"]
                # One test person gives no interval to speak of.
                verdict = ("yes" if inside else "NO") if len(before["folds"]) > 1 else "–"
                cells += [f"{after['macro_f1'] - before['macro_f1']:+.3f}", verdict]
            else:
                cells += ["–", "–"]
        print(f"| {variant} | " + " | ".join(cells) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="git ref to compare with (e.g. main, HEAD~3, a sha)")
    parser.add_argument("--models", nargs="+", help="as pamap demo --models (default its own)")
    parser.add_argument("--folds", nargs="+", help="as pamap demo --folds (default all)")
    parser.add_argument("--scale", default="demo", choices=["tiny", "demo", "full"])
    parser.add_argument("--out", type=Path, help="keep the runs' data and logs here")
    parser.add_argument("--json", type=Path, help="also write the measurements to this file")
    args = parser.parse_args()

    demo_args = ["--scale", args.scale]
    if args.models:
        demo_args += ["--models", *args.models]
    if args.folds:
        demo_args += ["--folds", *args.folds]
    work = args.out or Path(tempfile.mkdtemp(prefix="bench_demo_"))
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, dict[str, Any]] = {}
    print(f"pamap demo {' '.join(demo_args)}; runs under {work}", flush=True)
    try:
        if args.baseline:
            sha = _git("rev-parse", "--short", args.baseline)
            checkout = work / "baseline_checkout"
            _git("worktree", "add", "--detach", str(checkout), sha)
            try:
                subprocess.run(
                    ["uv", "sync", "--locked", "--quiet", "--project", str(checkout)],
                    cwd=checkout,
                    check=True,
                    env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"},
                )
                print(f"baseline {args.baseline} ({sha}) ...", flush=True)
                runs[f"baseline {args.baseline} ({sha})"] = run_demo(
                    checkout, work / "baseline", demo_args
                )
            finally:
                _git("worktree", "remove", "--force", str(checkout))
        # Read now, not at the start: the baseline's run may take long.
        head = _git("rev-parse", "--short", "HEAD")
        changed = _git("status", "--porcelain", "--untracked-files=no")
        dirty = " + uncommitted changes" if changed else ""
        print(f"current ({head}{dirty}) ...", flush=True)
        runs[f"current ({head}{dirty})"] = run_demo(PROJECT_ROOT, work / "current", demo_args)
    finally:
        if args.out is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_tables(runs)
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
