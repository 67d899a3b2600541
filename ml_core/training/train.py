"""Training: one loop for every torch model and a single fit for the classical baseline.

The torch loop is resumable exactly: an epoch's window order is a pure function of
(seed, epoch), the learning rate a pure function of the step, and the checkpoint holds the
model, optimizer, step within the epoch, the partial epoch loss, the global torch RNG state
(dropout) and the augmenter's generator. So k steps + save + load + the rest gives the same
weights and losses as one straight run on the same device; with `deterministic` a resume on
another device is refused. numpy's RNG is not used, so it is not saved.

Ready for a GPU: a fold's windows live on the training device when they fit (else batches are
gathered on the CPU into pinned memory and copied without blocking), the epoch loss and the
divergence guard stay on the device (the host reads them once an epoch, not every step),
validation runs on the same device, and bf16 autocast and `torch.compile` are options.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from ml_core.data.columns import SAMPLE_RATE_HZ
from ml_core.data.stats import load_feature_stats
from ml_core.data.windows import Batch, WindowData, normaliser
from ml_core.evaluation.metrics import macro_f1
from ml_core.evaluation.protocol import EvaluationProtocol
from ml_core.io import load_torch, save_torch, write_json
from ml_core.models import create_model, get_spec
from ml_core.paths import DataPaths
from ml_core.training import feature_cache
from ml_core.training.augment import Augmenter
from ml_core.training.config import TrainConfig
from ml_core.training.losses import build_loss

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# Settings that may differ between a run and its resumption: they do not change the result
# (max_steps only says where a run pauses; the schedule is always sized for all epochs).
_RESUME_FREE = ("max_steps", "device")


class TrainingDivergedError(RuntimeError):
    """The training loss or gradient norm became NaN or infinite."""


def build_criterion(config: TrainConfig, counts: Tensor) -> nn.Module:
    """The configured loss over train class `counts`, class-weighted as `config` says."""
    return build_loss(config.loss, counts, config.focal_gamma, weighted=config.weighted_loss)


class DeviceMismatchError(RuntimeError):
    """An exact (deterministic) resume was asked for on another device than the checkpoint's."""


@dataclass
class TrainResult:
    """What a run produced. `completed` is False when max_steps paused it before the end."""

    model_name: str
    fold: str
    best_metric: float  # best validation macro F1
    best_epoch: int
    epochs_run: int
    steps: int
    stopped_early: bool
    completed: bool
    best_path: Path
    last_path: Path
    history_path: Path
    history: list[dict[str, Any]]
    class_ids: list[int]
    class_counts: dict[str, dict[str, int]]  # split -> activity name -> windows
    majority_baseline_accuracy: float  # val accuracy of always predicting the train majority


def lr_at(step: int, total_steps: int, warmup: int, base_lr: float) -> float:
    """Linear warmup to `base_lr` over `warmup` steps, then cosine decay to 0 at `total_steps`."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def device_label(device: torch.device) -> str:
    """The hardware a run computes on, as checkpoints record it: "cpu", "mps" or the GPU model."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type


def resolve_device(name: str) -> torch.device:
    """ "auto" picks CUDA, then Apple MPS, then CPU."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def train_model(
    model_name: str,
    paths: DataPaths,
    fold: str,
    config: TrainConfig,
    out_dir: str | Path,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    resume: bool = True,
) -> TrainResult:
    """Train `model_name` on `fold`'s train split, select on its val split, write checkpoints.

    Writes `out_dir/last.pt` (every epoch), `best.pt` (on a better val macro F1) and
    `history.json`, each atomically. With `resume`, a matching `last.pt` is continued (or, if
    that run had finished, returned as is); a `last.pt` from another model or config is
    replaced by a fresh run.
    """
    spec = get_spec(model_name)
    out_dir = Path(out_dir)
    stats = load_feature_stats(paths.feature_stats(fold))
    train = WindowData.from_fold(paths, fold, "train", stats, config.window)
    val = WindowData.from_fold(paths, fold, "val", stats, config.window)
    for split, data in (("train", train), ("val", val)):
        if len(data) == 0:
            raise ValueError(
                f"fold {fold}: {paths.manifest(fold, split)} yields no {config.window.window}-"
                f"sample windows of {config.window.class_set} activities"
            )
    run = _Run(model_name, spec.kind, fold, config, train, val, out_dir, on_epoch, stats)
    ckpt = run.resumable_checkpoint() if resume else None
    if spec.kind == "sklearn":
        return _fit_sklearn(run, ckpt, stats)
    return _train_torch(run, ckpt)


@dataclass
class _Run:
    """Everything one training call shares between its steps."""

    model_name: str
    kind: str
    fold: str
    config: TrainConfig
    train: WindowData
    val: WindowData
    out_dir: Path
    on_epoch: Callable[[dict[str, Any]], None] | None
    stats: Mapping[str, Any]  # the fold's feature statistics (the augmenter's physical units)

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def history_path(self) -> Path:
        return self.out_dir / "history.json"

    def header(self) -> dict[str, Any]:
        """Checkpoint fields fixed for a run; a resumable last.pt must agree on all of them."""
        return {
            "format": CHECKPOINT_FORMAT,
            "model_name": self.model_name,
            "model_kind": self.kind,
            "fold": self.fold,
            "model_overrides": dict(self.config.model_overrides),
            "train_config": self.config.to_dict(),
            "class_ids": list(self.train.class_ids),
            "modality_channels": dict(self.train.modality_channels),
            "train_windows": len(self.train),
            "val_windows": len(self.val),
        }

    def resumable_checkpoint(self) -> dict[str, Any] | None:
        if not self.last_path.exists():
            return None
        ckpt = load_torch(self.last_path)
        header = self.header()
        same = all(
            ckpt.get(k) == v for k, v in header.items() if k != "train_config"
        ) and _resume_key(ckpt.get("train_config", {})) == _resume_key(header["train_config"])
        if not same:
            log.warning(
                "%s belongs to another model, config or data set; starting afresh", self.last_path
            )
            return None
        return ckpt

    def majority_baseline(self) -> float:
        majority = int(self.train.class_counts().argmax())
        return float((self.val.labels == majority).double().mean())

    def result(self, ckpt: dict[str, Any], history: list[dict[str, Any]]) -> TrainResult:
        return TrainResult(
            model_name=self.model_name,
            fold=self.fold,
            best_metric=float(ckpt["best_metric"]),
            best_epoch=int(ckpt["best_epoch"]),
            epochs_run=int(ckpt["epoch"]),
            steps=int(ckpt["step"]),
            stopped_early=bool(ckpt["stopped_early"]),
            completed=bool(ckpt["finished"]),
            best_path=self.best_path,
            last_path=self.last_path,
            history_path=self.history_path,
            history=history,
            class_ids=list(self.train.class_ids),
            class_counts={
                "train": self.train.class_count_report(),
                "val": self.val.class_count_report(),
            },
            majority_baseline_accuracy=self.majority_baseline(),
        )

    def write_history(self, ckpt: dict[str, Any], history: list[dict[str, Any]]) -> None:
        write_json(
            {
                "model_name": self.model_name,
                "fold": self.fold,
                "protocol": EvaluationProtocol.of(self.config).to_dict(),
                "training": self.config.training_settings(),
                "seed": self.config.seed,
                "best_metric": ckpt["best_metric"],
                "best_epoch": ckpt["best_epoch"],
                "stopped_early": ckpt["stopped_early"],
                "completed": ckpt["finished"],
                "majority_baseline_accuracy": self.majority_baseline(),
                "class_counts": {
                    "train": self.train.class_count_report(),
                    "val": self.val.class_count_report(),
                },
                "history": history,
            },
            self.history_path,
        )

    def report(self, record: dict[str, Any]) -> None:
        if self.on_epoch is not None:
            self.on_epoch(record)


def _resume_key(train_config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in train_config.items() if k not in _RESUME_FREE}


def _fresh_state() -> dict[str, Any]:
    """The loop's mutable progress, saved verbatim in every checkpoint."""
    return {
        "epoch": 0,  # completed epochs
        "step": 0,  # optimizer steps taken
        "step_in_epoch": 0,
        "loss_sum": 0.0,  # this epoch's summed batch losses so far
        "loss_count": 0,
        "best_metric": None,
        "best_epoch": 0,
        "bad_epochs": 0,
        "history": [],
        "stopped_early": False,
        "finished": False,
    }


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling generator of one epoch, derived from (seed, epoch) alone."""
    entropy = np.random.SeedSequence([seed, epoch]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(entropy))


def _rng_state() -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@torch.no_grad()
def _logits(model: nn.Module, data: WindowData, batch_size: int) -> Tensor:
    device = next(model.parameters()).device
    model.eval()
    # Kept on the device and copied to the host once: no synchronisation per batch.
    out = [model(b.x, b.present).float() for b in _to_device(data.iter_batches(batch_size), device)]
    return torch.cat(out).cpu() if out else torch.zeros(0, data.n_classes)


def _nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (unweighted)."""
    return float(-np.log(np.clip(probs[np.arange(len(y)), y], 1e-15, None)).mean())


def _val_metrics(probs: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Validation loss (mean NLL), macro F1 (the test bundles' metric) and accuracy."""
    pred = probs.argmax(axis=1)
    return {
        "val_loss": _nll(probs, y),
        "val_macro_f1": macro_f1(y, pred),
        "val_accuracy": float((pred == y).mean()),
    }


def predict_proba(
    model: Any, data: WindowData, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities [N, K] (float64) and true class indices [N] for every window.

    Works for a torch model (put in eval mode) and for the sklearn-kind baseline alike.
    """
    if isinstance(model, nn.Module):
        probs = torch.softmax(_logits(model, data, batch_size).double(), dim=1).numpy()
    else:
        probs = model.predict_proba_features(_baseline_features(model, data, batch_size))
    return probs, data.labels.cpu().numpy()


def _baseline_features(model: Any, data: WindowData, batch_size: int) -> np.ndarray:
    """The sklearn-kind baseline's window features: from the per-shard cache for windows
    loaded from shards (computed once per data version), else batch by batch."""
    if data.origins is not None:
        return feature_cache.window_features(model, data)
    chunks = [model.features(b.x, b.present) for b in data.iter_batches(batch_size)]
    return np.concatenate(chunks) if chunks else np.zeros((0, len(model.feature_names())))


def load_trained_model(
    ckpt_path: str | Path, device: str | torch.device = "cpu"
) -> tuple[Any, dict[str, Any]]:
    """Rebuild the model a checkpoint was saved from, with its weights, ready for inference."""
    ckpt = load_torch(ckpt_path)
    model = create_model(
        ckpt["model_name"],
        len(ckpt["class_ids"]),
        ckpt["modality_channels"],
        **ckpt["model_overrides"],
    )
    model.load_state_dict(ckpt["model_state"])
    if isinstance(model, nn.Module):
        model.to(device).eval()
    return model, ckpt


_AUGMENT_STREAM = 0x617567  # "aug": the augmenter's seed is derived from (stream, seed)
# A split whose tensors take more than this share of the free GPU memory stays on the host.
_DEVICE_SHARE = 0.5


def _augment_seed(seed: int) -> int:
    return int(np.random.SeedSequence([_AUGMENT_STREAM, seed]).generate_state(1)[0])


def _on_device(data: WindowData, device: torch.device) -> WindowData:
    """`data` on `device` when it fits in its free memory; otherwise left on the host."""
    if device.type == "cpu":
        return data
    size = sum(t.numel() * t.element_size() for t in (data.data, data.present, data.starts))
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if size > _DEVICE_SHARE * free:
            log.info("%.0f MB of windows stay on the host (pinned copies)", size / 1e6)
            return data
    return data.to(device)


def _to_device(batches: Iterator[Batch], device: torch.device) -> Iterator[Batch]:
    """Batches on `device`: as they are if already there, else via pinned memory, non-blocking."""
    for b in batches:
        if b.y.device == device or device.type != "cuda":
            yield b.to(device)
            continue

        def move(t: Tensor) -> Tensor:
            return t.pin_memory().to(device, non_blocking=True)

        yield Batch(
            {m: move(t) for m, t in b.x.items()},
            {m: move(t) for m, t in b.present.items()},
            move(b.y),
        )


@contextmanager
def _deterministic(enabled: bool) -> Generator[None]:
    """Deterministic kernels for the duration of a run (restored afterwards).

    warn_only: an op with no deterministic kernel on this device warns (torch names it)
    instead of stopping a run that is otherwise exact.
    """
    if not enabled:
        yield
        return
    previous = (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    # cuBLAS reads this when it starts; set it before any CUDA work of this process.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[2])
        torch.backends.cudnn.benchmark = previous[1]


def _check_device(run: _Run, ckpt: dict[str, Any], label: str) -> None:
    """Refuse an exact resume on other hardware; warn about an inexact one."""
    recorded = ckpt.get("device")
    if recorded == label:
        return
    if run.config.deterministic:
        raise DeviceMismatchError(
            f"{run.last_path} was written on {recorded}, but this run is on {label}; an exact "
            "resume (TrainConfig.deterministic) needs the same device. Resume on "
            f"{recorded}, set deterministic=False to continue here (the result will differ "
            "slightly from an uninterrupted run), or delete the checkpoint to start afresh."
        )
    log.warning("resuming %s (written on %s) on %s: not bit-exact", run.last_path, recorded, label)


class _Guard:
    """An epoch's summed loss and its first non-finite loss or gradient norm, on the device.

    Updating them needs no host synchronisation; `check` and `loss_sum` read them (once an
    epoch, and when pausing).
    """

    def __init__(self, device: torch.device, loss_sum: float) -> None:
        self.sum = torch.tensor(loss_sum, dtype=torch.float32, device=device)
        self.bad_step = torch.tensor(-1, device=device)
        self.bad_loss = torch.zeros((), device=device)
        self.bad_norm = torch.zeros((), device=device)
        self.lrs: dict[int, float] = {}

    def add(self, step: int, lr: float, loss: Tensor, norm: Tensor | None) -> None:
        loss = loss.detach()
        self.sum += loss
        finite = torch.isfinite(loss)
        if norm is not None:
            finite = finite & torch.isfinite(norm)
            self.bad_norm = torch.where(finite | (self.bad_step >= 0), self.bad_norm, norm)
        self.bad_loss = torch.where(finite | (self.bad_step >= 0), self.bad_loss, loss)
        self.bad_step = torch.where(finite | (self.bad_step >= 0), self.bad_step, step)
        self.lrs[step] = lr

    def loss_sum(self) -> float:
        return float(self.sum)

    def check(self, run: _Run, epoch: int) -> None:
        step = int(self.bad_step)
        if step < 0:
            return
        where = f"{run.model_name} on fold {run.fold}: epoch {epoch + 1}, step {step}"
        loss, lr = float(self.bad_loss), self.lrs[step]
        if not math.isfinite(loss):
            raise TrainingDivergedError(
                f"{where}: loss is {loss} (lr {lr:.3g}); lower lr or check the inputs"
            )
        raise TrainingDivergedError(
            f"{where}: gradient norm is {float(self.bad_norm)} (lr {lr:.3g}); lower lr"
        )


def _train_torch(run: _Run, ckpt: dict[str, Any] | None) -> TrainResult:
    with _deterministic(run.config.deterministic):
        return _train_torch_loop(run, ckpt)


def _train_torch_loop(run: _Run, ckpt: dict[str, Any] | None) -> TrainResult:
    cfg, train = run.config, run.train
    device = resolve_device(cfg.device)
    label = device_label(device)
    if ckpt is not None:
        _check_device(run, ckpt, label)
    torch.manual_seed(cfg.seed)
    model = create_model(
        run.model_name, train.n_classes, train.modality_channels, **cfg.model_overrides
    ).to(device)
    forward = torch.compile(model) if cfg.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    criterion = build_criterion(cfg, train.class_counts()).to(device)
    batch_size = min(cfg.batch_size, len(train))
    steps_per_epoch = len(train) // batch_size  # the short last batch is dropped
    total_steps = cfg.epochs * steps_per_epoch
    source, val = _on_device(train, device), _on_device(run.val, device)
    augmenter = Augmenter(cfg.augment, run.stats, _augment_seed(cfg.seed), device)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=cfg.precision == "bf16")

    state = _fresh_state()
    if ckpt is not None:
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        state = {k: ckpt[k] for k in state}
        _set_rng_state(ckpt["rng"])
        augmenter.set_state(ckpt["augment_rng"])
        if state["finished"]:
            return run.result(ckpt, state["history"])

    def checkpoint() -> dict[str, Any]:
        return {
            **run.header(),
            "model_state": model.state_dict(),
            "optimizer_state": optimizer.state_dict(),
            "rng": _rng_state(),
            "augment_rng": augmenter.state(),
            "device": label,
            "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps,
            **state,
        }

    while not state["finished"]:
        epoch = state["epoch"]
        started = time.perf_counter()
        order = train.order(
            _epoch_generator(cfg.seed, epoch), shuffle=True, balanced=cfg.balanced_sampling
        )
        order = order.to(source.starts.device)
        # On the device, read by the host once an epoch: the loss sum and the first bad step.
        guard = _Guard(device, state["loss_sum"])
        model.train()
        bar = tqdm(
            range(state["step_in_epoch"], steps_per_epoch),
            desc=f"{run.model_name} epoch {epoch + 1}/{cfg.epochs}",
            disable=not sys.stderr.isatty(),
            leave=False,
        )
        for s in bar:
            if cfg.max_steps is not None and state["step"] >= cfg.max_steps:
                bar.close()
                guard.check(run, epoch)
                state["loss_sum"] = guard.loss_sum()
                return _pause(run, model, checkpoint(), started, val)
            indices = order[s * batch_size : (s + 1) * batch_size]
            [batch] = _to_device(iter([source.batch(indices)]), device)
            x, present = augmenter(batch.x, batch.present, source.subjects[indices])
            lr = lr_at(state["step"], total_steps, cfg.warmup_steps, cfg.lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                logits = forward(x, present)
            loss = criterion(logits.float(), batch.y)
            aux = getattr(model, "aux_loss", None)
            if aux is not None:
                loss = loss + aux.float()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norm = None
            if cfg.grad_clip is not None:
                norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            guard.add(state["step"], lr, loss, norm)
            state["step"] += 1
            state["step_in_epoch"] = s + 1
            state["loss_count"] += 1

        guard.check(run, epoch)
        probs, y = predict_proba(model, val, cfg.eval_batch_size)
        record = {
            "epoch": epoch + 1,
            "step": state["step"],
            "train_loss": guard.loss_sum() / max(1, state["loss_count"]),
            **_val_metrics(probs, y),
            "lr": lr_at(max(0, state["step"] - 1), total_steps, cfg.warmup_steps, cfg.lr),
            "seconds": round(time.perf_counter() - started, 3),
        }
        improved = state["best_metric"] is None or record["val_macro_f1"] > state["best_metric"]
        if improved:
            state["best_metric"], state["best_epoch"], state["bad_epochs"] = (
                record["val_macro_f1"],
                epoch + 1,
                0,
            )
        else:
            state["bad_epochs"] += 1
        state["history"].append(record)
        state["epoch"] = epoch + 1
        state["step_in_epoch"], state["loss_sum"], state["loss_count"] = 0, 0.0, 0
        state["stopped_early"] = cfg.patience is not None and state["bad_epochs"] >= cfg.patience
        state["finished"] = state["stopped_early"] or state["epoch"] == cfg.epochs
        ckpt = checkpoint()
        # best before last: if killed in between, the resumed run redoes this epoch.
        if improved:
            save_torch(ckpt, run.best_path)
        save_torch(ckpt, run.last_path)
        run.write_history(ckpt, state["history"])
        run.report(record)
    assert ckpt is not None, "the loop above saves a checkpoint every epoch"
    return run.result(ckpt, state["history"])


def _pause(
    run: _Run, model: nn.Module, ckpt: dict[str, Any], started: float, val: WindowData
) -> TrainResult:
    """Stop at max_steps: save a resumable last.pt and report a validation of the model as is.

    The partial record is reported and written to history.json but kept out of the
    checkpoint's history, so resuming gives the same history as a straight run. If no epoch
    has finished yet, best.pt holds this model so a smoke run still has something to evaluate.
    """
    save_torch(ckpt, run.last_path)
    probs, y = predict_proba(model, val, run.config.eval_batch_size)
    cfg = run.config
    record = {
        "epoch": ckpt["epoch"] + 1,
        "step": ckpt["step"],
        "train_loss": ckpt["loss_sum"] / max(1, ckpt["loss_count"]),
        **_val_metrics(probs, y),
        "lr": lr_at(max(0, ckpt["step"] - 1), ckpt["total_steps"], cfg.warmup_steps, cfg.lr),
        "seconds": round(time.perf_counter() - started, 3),
        "partial": True,
    }
    history = [*ckpt["history"], record]
    if ckpt["best_metric"] is None:
        ckpt = {**ckpt, "best_metric": record["val_macro_f1"], "best_epoch": record["epoch"]}
        save_torch(ckpt, run.best_path)
    run.write_history(ckpt, history)
    run.report(record)
    return run.result(ckpt, history)


def _fit_sklearn(run: _Run, ckpt: dict[str, Any] | None, stats: dict[str, Any]) -> TrainResult:
    """Fit the baseline once on train-window features; the checkpoint is its exported trees.
    The model is told the fold's normalisation, so it computes features in physical units."""
    if ckpt is not None and ckpt["finished"]:
        return run.result(ckpt, ckpt["history"])
    cfg, train = run.config, run.train
    started = time.perf_counter()
    model = create_model(
        run.model_name, train.n_classes, train.modality_channels, **cfg.model_overrides
    )
    mean, std = normaliser(stats, "feature stats")
    model.set_units(mean, std, SAMPLE_RATE_HZ / cfg.window.decimate)
    features = _baseline_features(model, train, cfg.eval_batch_size)
    val_features = _baseline_features(model, run.val, cfg.eval_batch_size)
    y_train, y = train.labels.numpy(), run.val.labels.numpy()
    model.fit_features(features, y_train, val_features, y)
    train_probs = model.predict_proba_features(features)
    probs = model.predict_proba_features(val_features)
    record = {
        "epoch": 1,
        "step": model.n_iterations,
        "train_loss": _nll(train_probs, y_train),
        **_val_metrics(probs, y),
        "lr": model.config.learning_rate,
        "seconds": round(time.perf_counter() - started, 3),
    }
    state = {
        **_fresh_state(),
        "epoch": 1,
        "step": model.n_iterations,
        "best_metric": record["val_macro_f1"],
        "best_epoch": 1,
        "history": [record],
        "finished": True,
    }
    ckpt = {
        **run.header(),
        "model_state": model.state_dict(),
        "optimizer_state": None,
        "rng": {},
        **state,
    }
    save_torch(ckpt, run.best_path)
    save_torch(ckpt, run.last_path)
    run.write_history(ckpt, state["history"])
    run.report(record)
    return run.result(ckpt, state["history"])
