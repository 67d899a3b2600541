"""Benchmark training and inference throughput against a per-window `Dataset` + `DataLoader`.

For every registered model at its default config: training windows/s end to end (building the
batch, then augmentation, forward, backward, gradient clipping and the AdamW step, as
`ml_core.training.train` runs them, with no host synchronisation per step), inference windows/s
(eval mode, no grad, batches of 256) and the share of the step time spent building batches.
Ours gathers each batch from `WindowData` in one indexing op. The baseline is what a typical PyTorch
project writes: a `Dataset` whose `__getitem__` slices one window from its shard tensor,
normalises it and builds the per-modality inputs and masks, and a
`DataLoader` with the default collate. It trains the default model (`temporal_cnn`, the one
`pamap demo` trains) in the same run, on the same windows.

    uv run python bench/train.py                         # demo-scale synthetic set, CPU
    uv run python bench/train.py --models temporal_cnn lstm --steps 50
    uv run python bench/train.py --root DIR              # keep the prepared fold; reruns reuse it
    uv run python bench/train.py --device cpu cuda       # the same table on the GPU as well
    uv run python bench/train.py --device cuda --precision bf16 --compile
    uv run python bench/train.py --no-augment            # without augmentation: the models alone

On CUDA the fold's windows are moved to the GPU first (as `ml_core.training.train` does when
they fit), so batches are gathered there; the baseline's DataLoader batches are copied from
pinned memory.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, default_collate

from ml_core.data.columns import MODEL_CHANNELS, SUBJECTS
from ml_core.data.folds import FOLD_NAMES, SPLITS, read_manifest
from ml_core.data.shards import INDEX_NAME
from ml_core.data.stats import load_feature_stats
from ml_core.data.synthetic import SCALES, write_dataset
from ml_core.data.windows import MODALITY_SLICES, Batch, WindowConfig, WindowData, shard_segments
from ml_core.io import load_torch
from ml_core.models import create_model, get_spec, model_names
from ml_core.paths import DataPaths
from ml_core.training.augment import Augmenter
from ml_core.training.config import PRECISIONS
from ml_core.training.losses import build_loss
from ml_core.training.train import TrainConfig, TrainingDivergedError

SEED = 0
DEFAULT_MODEL = "temporal_cnn"  # the model `pamap demo` trains beside feature_gbm
INFER_BATCHES = 10  # timed inference batches (of eval_batch_size), after one warm-up batch
# Targets from the issue, for the project's 2-core CPU machine.
TARGET_BUILD_SHARE = 5.0  # % of training step time spent building batches, ours
TARGET_SPEEDUP = 3.0  # default model, ours vs the baseline, training windows/s end to end


# --- data --------------------------------------------------------------------------------------


def prepare(root: Path, scale: str, fold: str) -> str:
    """Make sure `fold` is prepared under `root`: reuse it, or run the pipeline steps that are
    missing (writing the synthetic set first if there is no raw data). Returns what was done."""
    paths = DataPaths(root)
    marker = paths.synthetic_marker
    outputs = [paths.manifest(fold, s) for s in SPLITS] + [paths.feature_stats(fold)]
    if all(f.is_file() for f in outputs):
        kind = (
            f"synthetic, {json.loads(marker.read_text())['scale']} scale"
            if marker.exists()
            else "recorded data"
        )
        return f"reusing fold {fold} prepared in {root} ({kind})"

    from ml_core.data import pipeline

    started = time.perf_counter()
    if not paths.dataset.is_dir():
        print(f"writing the {scale} synthetic data set to {paths.raw} ...", flush=True)
        write_dataset(paths.raw, scale=scale, seed=SEED)
    print(f"preparing fold {fold} with ml_core.data.pipeline ...", flush=True)
    for subject in SUBJECTS:
        if (paths.tensor_shard_dir(subject) / INDEX_NAME).is_file():
            continue  # sharded by an earlier run or the assets
        pipeline.ingest_subject(paths, subject)
        result, _ = pipeline.validate_subject(paths, subject)
        if not result.passed:
            raise SystemExit(f"subject {subject}: {result.n_failures} schema failures")
        pipeline.impute_subject(paths, subject)
        passed, message, _ = pipeline.shard_subject(paths, subject)
        if not passed:
            raise SystemExit(f"subject {subject}: {message}")
    pipeline.build_fold_manifests(paths, fold, window=WindowConfig().window)
    pipeline.fold_feature_stats(paths, fold)
    return f"prepared fold {fold} in {root} in {time.perf_counter() - started:.0f} s"


class PerWindowDataset(Dataset):
    """The conventional path: one window per `__getitem__`, sliced from its shard's tensor,
    normalised and masked on the spot; the DataLoader's default collate stacks them."""

    def __init__(
        self, paths: DataPaths, fold: str, split: str, stats: dict[str, Any], config: WindowConfig
    ) -> None:
        per_feature = stats["per_feature"]
        self.mean = torch.tensor([float(per_feature[c]["mean"]) for c in MODEL_CHANNELS])
        self.std = torch.tensor([float(per_feature[c]["std"]) for c in MODEL_CHANNELS])
        self.window = config.window
        class_index = {a: i for i, a in enumerate(config.class_ids)}
        shards: dict[str, dict[str, Tensor]] = {}
        self.pieces: list[Tensor] = []  # one view per contiguous segment of a manifest range
        self.windows: list[tuple[int, int, int]] = []  # (piece, start row, class index)
        for r in read_manifest(paths.manifest(fold, split)):
            if r.activity not in class_index:
                continue
            if r.path not in shards:
                shards[r.path] = load_torch(paths.root / r.path)
            # Windows never span a time gap: cut them inside each segment, as training does.
            for a, b in shard_segments(shards[r.path]).tolist():
                a, b = max(a, r.start), min(b, r.end)
                if b <= a:
                    continue
                piece = shards[r.path]["data"][a : b : config.decimate]
                for start in range(0, piece.shape[0] - self.window + 1, config.stride):
                    self.windows.append((len(self.pieces), start, class_index[r.activity]))
                self.pieces.append(piece)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], dict[str, Tensor], int]:
        piece, start, label = self.windows[index]
        w = (self.pieces[piece][start : start + self.window] - self.mean) / self.std
        x, present = {}, {}
        for modality, channels in MODALITY_SLICES.items():
            observed = torch.isfinite(w[:, channels]).all(dim=1)
            x[modality] = torch.where(observed[:, None], w[:, channels], 0.0)
            present[modality] = observed
        return x, present, label


def check_same_windows(ours: WindowData, baseline: PerWindowDataset) -> None:
    """Both paths must feed the models identical batches, or the comparison means nothing."""
    if len(ours) != len(baseline):
        raise SystemExit(f"window counts differ: ours {len(ours)}, baseline {len(baseline)}")
    idx = torch.linspace(0, len(ours) - 1, min(len(ours), 64)).long()
    a = ours.batch(idx)
    x, present, y = default_collate([baseline[int(i)] for i in idx])
    same = torch.equal(a.y, y) and all(
        torch.equal(a.x[m], x[m]) and torch.equal(a.present[m], present[m]) for m in a.x
    )
    if not same:
        raise SystemExit("the baseline's batches differ from WindowData's for the same windows")


# --- timing ------------------------------------------------------------------------------------


@dataclass
class Timing:
    """Windows and seconds of timed batches: building (gather + move to device) and stepping."""

    windows: int = 0
    batches: int = 0
    build_s: float = 0.0
    step_s: float = 0.0

    def add(self, windows: int, build_s: float, step_s: float) -> None:
        self.windows += windows
        self.batches += 1
        self.build_s += build_s
        self.step_s += step_s

    @property
    def windows_per_s(self) -> float:
        return self.windows / (self.build_s + self.step_s)

    @property
    def build_share(self) -> float:
        return 100.0 * self.build_s / (self.build_s + self.step_s)

    def ms(self, seconds: float) -> float:
        return 1000.0 * seconds / self.batches


@dataclass
class Row:
    label: str
    params: str
    train: Timing
    infer: Timing
    notes: list[str] = field(default_factory=list)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_batches(
    runs: list[tuple[Iterator[Batch], Callable[[Batch], None]]],
    device: torch.device,
    n: int,
    warmup: int,
) -> list[Timing]:
    """For each run, draw a batch and move it to `device`, then `step` on it; time the two
    apart. Runs take turns step by step, so on a shared machine they see the same load."""
    timings = [Timing() for _ in runs]
    for i in range(warmup + n):
        for (batches, step), timing in zip(runs, timings, strict=True):
            _sync(device)
            started = time.perf_counter()
            batch = next(batches).to(device)
            _sync(device)
            built = time.perf_counter()
            step(batch)
            _sync(device)
            if i >= warmup:
                timing.add(int(batch.y.shape[0]), built - started, time.perf_counter() - built)
    return timings


def our_batches(data: WindowData, batch_size: int, train: bool) -> Iterator[Batch]:
    """Endless batches as `ml_core.training.train` draws them: for training a fresh permutation per
    epoch with the short last batch dropped, for inference `iter_batches` in order."""
    for epoch in count():
        if train:
            order = data.order(torch.Generator().manual_seed(SEED + epoch), shuffle=True)
            order = order.to(data.starts.device)
            for s in range(len(data) // batch_size):
                yield data.batch(order[s * batch_size : (s + 1) * batch_size])
        else:
            yield from data.iter_batches(batch_size)


def loader_batches(dataset: PerWindowDataset, batch_size: int, train: bool) -> Iterator[Batch]:
    """Endless batches from a plain DataLoader. num_workers=0: on a 2-core machine worker
    processes would compete with the model's own threads for the same two cores."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=train,
        drop_last=train,
        num_workers=0,
        generator=torch.Generator().manual_seed(SEED),
        pin_memory=torch.cuda.is_available(),
    )
    while True:
        for x, present, y in loader:
            yield Batch(x, present, y)


class TorchRun:
    """One model with its optimizer, loss and augmenter as `ml_core.training.train` builds them,
    and its
    steps."""

    def __init__(
        self,
        name: str,
        class_counts: Tensor,
        modality_channels: dict[str, int],
        stats: dict[str, Any],
        cfg: TrainConfig,
        device: torch.device,
    ) -> None:
        torch.manual_seed(SEED)
        self.name = name
        self.model = create_model(name, len(class_counts), modality_channels).to(device)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
        self.criterion = build_loss(cfg.loss, class_counts, cfg.focal_gamma).to(device)
        self.grad_clip = cfg.grad_clip
        self.augmenter = Augmenter(cfg.augment, stats, SEED, device)
        self.autocast = torch.autocast(device.type, torch.bfloat16, enabled=cfg.precision == "bf16")
        self.loss_sum = torch.zeros((), device=device)  # read once, after the timed steps

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def train_step(self, batch: Batch) -> None:
        # The streams do not track subjects; the augmentation's cost does not depend on them.
        subjects = torch.full_like(batch.y, SUBJECTS[0])
        x, present = self.augmenter(batch.x, batch.present, subjects)
        with self.autocast:
            logits = self.forward(x, present)
        loss = self.criterion(logits.float(), batch.y)
        aux = getattr(self.model, "aux_loss", None)
        if aux is not None:
            loss = loss + aux.float()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.loss_sum += loss.detach()

    def check_finite(self) -> None:
        value = float(self.loss_sum)
        if not math.isfinite(value):
            raise TrainingDivergedError(f"{self.name}: summed training loss is {value}")

    @torch.no_grad()
    def infer_step(self, batch: Batch) -> None:
        with self.autocast:
            self.forward(batch.x, batch.present).float().cpu()


@dataclass
class Source:
    """Where one run's batches come from: training and inference streams."""

    label: str
    train: Iterator[Batch]
    infer: Iterator[Batch]


def bench_torch(
    name: str,
    sources: list[Source],
    class_counts: Tensor,
    modality_channels: dict[str, int],
    stats: dict[str, Any],
    cfg: TrainConfig,
    device: torch.device,
    steps: int,
    warmup: int,
) -> list[Row]:
    """Train model `name` once per source for `steps` timed steps, then time inference; the
    sources take turns step by step (each with its own, identically initialised model)."""
    runs = [TorchRun(name, class_counts, modality_channels, stats, cfg, device) for _ in sources]
    for run in runs:
        run.model.train()
    train = time_batches(
        [(s.train, r.train_step) for s, r in zip(sources, runs, strict=True)],
        device,
        steps,
        warmup,
    )
    for run in runs:
        run.check_finite()
        run.model.eval()
    infer = time_batches(
        [(s.infer, r.infer_step) for s, r in zip(sources, runs, strict=True)],
        device,
        INFER_BATCHES,
        1,
    )
    return [
        Row(s.label, f"{r.params:,}", t, i)
        for s, r, t, i in zip(sources, runs, train, infer, strict=True)
    ]


def bench_gbm(train: WindowData, val: WindowData, cfg: TrainConfig) -> Row:
    """feature_gbm as `ml_core.training.train` fits it: window statistics batch by batch over every
    train window, one tree fit on them all; then predict on val batches."""
    model = create_model("feature_gbm", train.n_classes, train.modality_channels)
    fit = Timing()
    features = []
    batches = train.iter_batches(cfg.eval_batch_size)
    while True:
        started = time.perf_counter()
        batch = next(batches, None)
        built = time.perf_counter()
        if batch is None:
            break
        features.append(model.features(batch.x, batch.present))
        fit.add(int(batch.y.shape[0]), built - started, time.perf_counter() - built)
    started = time.perf_counter()
    model.fit_features(np.concatenate(features), train.labels.numpy())
    fit.step_s += time.perf_counter() - started
    [predict] = time_batches(
        [
            (
                our_batches(val, cfg.eval_batch_size, train=False),
                lambda b: model.predict_proba(b.x, b.present),
            )
        ],
        torch.device("cpu"),
        INFER_BATCHES,
        1,
    )
    nodes = int(model.trees["feature"].shape[0])
    note = (
        f"feature_gbm: one fit over all {len(train):,} train windows; its step ms is the "
        f"statistics of one batch of {cfg.eval_batch_size} plus the tree fit spread over the "
        f"{fit.batches} batches"
    )
    return Row("feature_gbm", f"{nodes:,} nodes", fit, predict, [note])


# --- report ------------------------------------------------------------------------------------


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} CPUs"


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} torch threads)"


def print_table(ours: list[Row], baseline: Row, batch_size: int, eval_batch_size: int) -> None:
    header = (
        f"  {'model':<26}{'params':>13}{'train win/s':>13}{'infer win/s':>13}"
        f"{'build ms/step':>15}{'step ms':>9}{'build share %':>15}{'infer share %':>15}"
    )
    print("\n" + header + "\n  " + "-" * (len(header) - 2))

    def line(r: Row) -> None:
        t, i = r.train, r.infer
        print(
            f"  {r.label:<26}{r.params:>13}{t.windows_per_s:>13,.0f}{i.windows_per_s:>13,.0f}"
            f"{t.ms(t.build_s):>15.2f}{t.ms(t.step_s):>9.1f}{t.build_share:>15.1f}"
            f"{i.build_share:>15.1f}"
        )

    print("  ours: WindowData.batch, one gather per batch")
    for r in ours:
        line(r)
    print(
        f"  baseline: per-window Dataset + DataLoader(batch_size={batch_size}, shuffle=True, "
        "num_workers=0, default collate)"
    )
    line(baseline)
    print(
        f"  (training: batches of {batch_size}; build = gather + move to the device; step = "
        f"forward, loss, backward, clip, AdamW; inference: eval, no grad, batches of "
        f"{eval_batch_size}.)"
    )
    for r in (*ours, baseline):
        for note in r.notes:
            print(f"  {note}")


def print_targets(ours: list[Row], baseline: Row) -> None:
    torch_rows = [r for r in ours if get_spec(r.label).kind == "torch"]
    worst = max(torch_rows, key=lambda r: r.train.build_share)
    default = next(r for r in ours if r.label == DEFAULT_MODEL)
    speedup = default.train.windows_per_s / baseline.train.windows_per_s
    infer_speedup = default.infer.windows_per_s / baseline.infer.windows_per_s
    print("\n  targets:")
    for text, value, met in (
        (
            f"ours: batch building <= {TARGET_BUILD_SHARE:.0f} % of training step time "
            f"(worst: {worst.label})",
            f"{worst.train.build_share:.1f} %",
            worst.train.build_share <= TARGET_BUILD_SHARE,
        ),
        (
            f"{DEFAULT_MODEL}: >= {TARGET_SPEEDUP:.0f}x the baseline's training windows/s",
            f"{speedup:.2f}x",
            speedup >= TARGET_SPEEDUP,
        ),
    ):
        print(f"    {text:<74}{value:>9}  {'met' if met else 'MISSED'}")
    # Amdahl: the model step is the same work on both paths, so only the build time can shrink.
    ceiling = (baseline.train.build_s + baseline.train.step_s) / default.train.step_s
    print(
        f"    (bound: with batches built for free, ours could reach {ceiling:.2f}x; the "
        f"baseline spends {100 - baseline.train.build_share:.0f} % of its step in the model)"
    )
    print(f"    (inference, same model: {infer_speedup:.2f}x the baseline's windows/s)")


def run_device(
    device: torch.device,
    paths: DataPaths,
    fold: str,
    models: list[str],
    cfg: TrainConfig,
    steps: int,
    warmup: int,
) -> None:
    stats = load_feature_stats(paths.feature_stats(fold))
    train = WindowData.from_fold(paths, fold, "train", stats, cfg.window)
    val = WindowData.from_fold(paths, fold, "val", stats, cfg.window)
    if len(train) < cfg.batch_size or len(val) == 0:
        raise SystemExit(
            f"fold {fold}: {len(train)} train and {len(val)} val windows; the benchmark needs "
            f"at least {cfg.batch_size} train windows and one val window"
        )
    base_train = PerWindowDataset(paths, fold, "train", stats, cfg.window)
    base_val = PerWindowDataset(paths, fold, "val", stats, cfg.window)
    check_same_windows(train, base_train)
    check_same_windows(val, base_val)
    class_counts = train.class_counts()
    if device.type == "cuda":  # as ml_core.training.train does when a fold fits on the GPU
        train, val = train.to(device), val.to(device)
    print(
        f"\ndevice {_device_name(device)}, fold {fold}: {len(train):,} train and {len(val):,} "
        f"val windows of {cfg.window.window} samples, stride {cfg.window.stride}; "
        f"{steps} timed training steps after {warmup} warm-up steps; precision "
        f"{cfg.precision}, torch.compile {'on' if cfg.compile else 'off'}, augmentation "
        f"{'on' if cfg.augment.enabled else 'off'}"
    )
    print(f"  {_load()}", flush=True)
    if (
        device.type == "cpu"
        and torch.get_num_threads() > 1
        and os.getloadavg()[0] > (os.cpu_count() or 1)
    ):
        print(
            "  warning: more runnable tasks than CPUs; multi-threaded torch timings then "
            "measure contention more than work (try --threads 1)"
        )

    def source(name: str) -> Source:
        return Source(
            name,
            our_batches(train, cfg.batch_size, train=True),
            our_batches(val, cfg.eval_batch_size, train=False),
        )

    def bench(name: str, sources: list[Source]) -> list[Row]:
        return bench_torch(
            name,
            sources,
            class_counts,
            train.modality_channels,
            stats,
            cfg,
            device,
            steps,
            warmup,
        )

    # The default model and the baseline take turns step by step: the machine may be shared.
    baseline_source = Source(
        f"{DEFAULT_MODEL} (baseline)",
        loader_batches(base_train, cfg.batch_size, train=True),
        loader_batches(base_val, cfg.eval_batch_size, train=False),
    )
    print(f"  {DEFAULT_MODEL}, ours and the baseline ...", flush=True)
    default, baseline = bench(DEFAULT_MODEL, [source(DEFAULT_MODEL), baseline_source])
    rows = {DEFAULT_MODEL: default}
    for name in models:
        if name in rows:
            continue
        if get_spec(name).kind == "sklearn" and device.type != "cpu":
            print(f"  {name}: scikit-learn runs on the CPU only, see the cpu table")
            continue
        print(f"  {name} ...", flush=True)
        if get_spec(name).kind == "sklearn":
            rows[name] = bench_gbm(train, val, cfg)
        else:
            [rows[name]] = bench(name, [source(name)])
    ordered = [rows[n] for n in model_names() if n in rows]
    print_table(ordered, baseline, cfg.batch_size, cfg.eval_batch_size)
    print_targets(ordered, baseline)
    print(f"  after the run: {_load()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="demo", help="synthetic set size")
    parser.add_argument("--fold", choices=FOLD_NAMES, default="stratified")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=model_names(),
        default=model_names(),
        help=f"models to time (default: all; {DEFAULT_MODEL} always runs, for the comparison)",
    )
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before them")
    parser.add_argument(
        "--device", nargs="+", choices=["cpu", "cuda"], default=["cpu"], help="one table each"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument(
        "--no-augment",
        action="store_true",
        help="time training without augmentation (to separate its cost from the model's)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's own choice); 1 avoids thread contention "
        "when other work shares the cores",
    )
    parser.add_argument(
        "--root", type=Path, help="data root to prepare and keep (reused if the fold is there)"
    )
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        raise SystemExit("--steps and --threads must be >= 1, --warmup >= 0")
    if "cuda" in args.device and not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda: CUDA is not available here (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'}); run with --device cpu"
        )

    if args.root is None:
        root, temporary = Path(tempfile.mkdtemp(prefix="pamap_bench_train_")), True
    else:
        root, temporary = args.root.resolve(), False
        root.mkdir(parents=True, exist_ok=True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}; {_load()}")
    try:
        print(prepare(root, args.scale, args.fold))
        for device in args.device:
            run_device(
                torch.device(device),
                DataPaths(root),
                args.fold,
                args.models,
                TrainConfig(
                    precision=args.precision,
                    compile=args.compile,
                    augment={"enabled": not args.no_augment},
                ),
                args.steps,
                args.warmup,
            )
    finally:
        if temporary:
            shutil.rmtree(root)


if __name__ == "__main__":
    main()
