"""Deterministic CPU training: what it costs, whether reruns match, and how far seeds move a result.

1. Cost: `--model` trained for `--steps` optimizer steps on `--fold`, alternately with
   `deterministic=False` (the baseline) and `deterministic=True` (the default), A B A B, each
   `--repeats` times in this one process; wall seconds per run (data loading included), and
   whether every run of one setting wrote bit-identical weights.
2. Threads: the same deterministic run at 1 torch thread, against the runs above (a machine with
   another core count picks another thread count).
3. Seeds (`--seeds N`, 0 skips it): full trainings at the default `TrainConfig` with seeds
   0 .. N-1, each evaluated on the fold's test person (macro F1 of best.pt over the classes
   present); cached in `OUT/seed-<n>.json`, so a killed run picks up where it stopped.

    uv run python bench/determinism.py --root /tmp/pamap_det --out /tmp/det --seeds 3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from generalisation import prepare, run_one  # bench/ is the script's folder

from ml_core.data.folds import FOLD_NAMES
from ml_core.data.synthetic import SCALES
from ml_core.io import load_torch
from ml_core.paths import DataPaths
from ml_core.training.train import TrainConfig, train_model


def _load() -> str:
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())


def _weights_digest(ckpt_path: Path) -> tuple[str, dict[str, torch.Tensor]]:
    state = load_torch(ckpt_path)["model_state"]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode())
        digest.update(state[name].detach().contiguous().numpy().tobytes())
    return digest.hexdigest()[:12], state


def _timed_run(
    paths: DataPaths, model: str, fold: str, steps: int, deterministic: bool
) -> tuple[float, str, dict[str, torch.Tensor]]:
    cfg = TrainConfig(device="cpu", seed=0, max_steps=steps, deterministic=deterministic)
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        result = train_model(model, paths, fold, cfg, out, resume=False)
        seconds = time.perf_counter() - started
        digest, state = _weights_digest(result.last_path)
    return seconds, digest, state


def _max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].numel())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="data root (prepared if needed)")
    parser.add_argument("--out", type=Path, required=True, help="per-seed results (part 3)")
    parser.add_argument("--scale", choices=SCALES, default="demo", help="synthetic set size")
    parser.add_argument("--model", default="temporal_cnn")
    parser.add_argument("--fold", choices=FOLD_NAMES, default="holdout-106")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per setting")
    parser.add_argument("--seeds", type=int, default=3, help="full trainings (part 3)")
    args = parser.parse_args()
    paths = DataPaths(args.root.resolve())
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} thread(s); load average {_load()}", flush=True)
    prepare(paths, args.scale, [args.fold])

    print(f"\n1. {args.model} on {args.fold}, {args.steps} steps, seed 0, {threads} threads")
    times: dict[bool, list[float]] = {False: [], True: []}
    digests: dict[bool, set[str]] = {False: set(), True: set()}
    states: dict[bool, dict[str, torch.Tensor]] = {}
    for _ in range(args.repeats):
        for deterministic in (False, True):
            seconds, digest, state = _timed_run(
                paths, args.model, args.fold, args.steps, deterministic
            )
            times[deterministic].append(seconds)
            digests[deterministic].add(digest)
            states[deterministic] = state
    print("\n| deterministic | median s | min–max s | runs | distinct weights (sha256) |")
    print("|---|---|---|---|---|")
    for deterministic in (False, True):
        t, seen = times[deterministic], sorted(digests[deterministic])
        print(
            f"| {deterministic} | {statistics.median(t):.2f} | {min(t):.2f}–{max(t):.2f} | "
            f"{len(t)} | {len(seen)} ({', '.join(seen)}) |"
        )
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"\ndeterministic / baseline median time: {ratio:.3f}")
    same = digests[False] == digests[True]
    print(f"both settings wrote the same weights: {same}")

    torch.set_num_threads(1)
    _, digest_1, state_1 = _timed_run(paths, args.model, args.fold, args.steps, True)
    torch.set_num_threads(threads)
    print(
        f"\n2. deterministic at 1 thread: weights {digest_1}; max |w(1 thread) - w({threads})| = "
        f"{_max_abs_diff(state_1, states[True]):.3g}"
    )

    if args.seeds:
        print(f"\n3. {args.model} on {args.fold}, default TrainConfig, seeds 0–{args.seeds - 1}")
        scores = []
        for seed in range(args.seeds):
            cfg = TrainConfig(device="cpu", seed=seed)
            record = run_one(paths, args.model, args.fold, cfg, args.out / f"seed-{seed}")
            scores.append(record["macro_f1"])
            print(
                f"  seed {seed}: test macro F1 {record['macro_f1']:.3f} (best epoch "
                f"{record['best_epoch']}/{record['epochs_run']}, {record['seconds']:.0f} s)",
                flush=True,
            )
        print(
            f"\n{args.fold} test macro F1 over {len(scores)} seeds: mean "
            f"{statistics.mean(scores):.3f}, min {min(scores):.3f}, max {max(scores):.3f}"
        )
    print(f"\nload average after the run: {_load()}")
    print(json.dumps({"times": {str(k): v for k, v in times.items()}}))


if __name__ == "__main__":
    main()
