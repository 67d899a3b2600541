"""Training and window settings: plain dataclasses, importable without torch.

The Dagster code location reads its config defaults from here, so loading it (and running an
ingest step) does not import torch, scikit-learn or MLflow.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from ml_core.data.columns import CLASS_SETS

# The enumerated settings as types, so a typed config (Dagster's launchpad) rejects a typo
# before a run starts; the tuples are for checks at run time.
Loss = Literal["weighted_ce", "focal"]
Device = Literal["auto", "cpu", "cuda", "mps"]
ClassSet = Literal["protocol12", "protocol11", "all18"]
LOSSES: tuple[str, ...] = get_args(Loss)
DEVICES: tuple[str, ...] = get_args(Device)
assert set(get_args(ClassSet)) == set(CLASS_SETS), "ClassSet must name every CLASS_SETS entry"
Precision = Literal["fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class WindowConfig:
    """Window length and stride in samples after decimation (keep every `decimate`-th row)."""

    window: int = 256
    stride: int = 128
    decimate: int = 1
    class_set: ClassSet = "protocol12"

    def __post_init__(self) -> None:
        for name, least in (("window", 2), ("stride", 1), ("decimate", 1)):
            if getattr(self, name) < least:
                raise ValueError(
                    f"WindowConfig.{name} must be >= {least}, got {getattr(self, name)}"
                )
        if self.class_set not in CLASS_SETS:
            raise ValueError(
                f"unknown class_set {self.class_set!r}; choose from {list(CLASS_SETS)}"
            )

    @property
    def class_ids(self) -> list[int]:
        return list(CLASS_SETS[self.class_set])


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; `enabled=False` (or every strength 0) leaves batches as is.

    On by default for training: the gap between within-subject and leave-one-subject-out
    scores is the problem it addresses, and every strength is set to the spread between
    people of the real data (a few tens of degrees of sensor placement, +-20 % effort and
    pace), not beyond it. Evaluation never augments.
    """

    enabled: bool = True
    rotation_deg: float = 10.0  # std of each rotation-vector component, per IMU and window
    scale_std: float = 0.2  # std of the log of the movement amplitude factor, per IMU
    time_warp: float = 0.2  # largest |a| of the warp (local speed 1 +- a)
    jitter_std: float = 0.05  # additive noise, normalised units
    mag_offset_ut: float = 10.0  # std of the per-window offset of each magnetometer axis, uT
    temperature_offset_c: float = 1.0  # std of the per-window skin temperature offset, degC
    heart_rate_offset_bpm: float = 8.0  # std of the per-window heart rate offset, bpm
    mirror_left_handed: bool = True  # reflect subject 108's wrist and ankle IMUs
    mirror_prob: float = 0.5  # reflect any window's wrist and ankle IMUs with this probability

    def __post_init__(self) -> None:
        offsets = ("mag_offset_ut", "temperature_offset_c", "heart_rate_offset_bpm")
        for name in ("rotation_deg", "scale_std", "jitter_std", *offsets):
            if not getattr(self, name) >= 0:  # NaN fails too
                raise ValueError(f"AugmentConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.time_warp < 1:
            raise ValueError(f"AugmentConfig.time_warp must be in [0, 1), got {self.time_warp}")
        if not 0 <= self.mirror_prob <= 1:
            raise ValueError(f"AugmentConfig.mirror_prob must be in [0, 1], got {self.mirror_prob}")


@dataclass
class TrainConfig:
    """Hyperparameters of one training run; `window` may be given as a dict of its fields.

    max_steps caps the optimizer steps of this call (smoke runs); the learning-rate schedule
    still spans `epochs`, so a capped run can later be resumed to the same result.
    patience: epochs without a better validation macro F1 before stopping (None: never).
    Class imbalance is corrected once by default: the loss is weighted by inverse class
    frequency, or, with balanced_sampling, windows are drawn with probability 1 / class count
    and the loss is unweighted. loss_class_weights=True with balanced_sampling applies both
    (an effective weight of 1 / count², which over-corrects); None picks the single correction.
    augment (an AugmentConfig, or a dict of its fields): training-batch augmentation, on by
    default (see ml_core.training.augment); evaluation never augments.
    precision "bf16" runs forward passes under bfloat16 autocast (CUDA, and CPUs with bf16).
    compile wraps the model in torch.compile (the first steps pay for the compilation).
    deterministic (the default) asks for an exact run: deterministic kernels, and a resume on
    another device than the checkpoint's is refused (off, it proceeds with a warning). Two runs
    with the same seed, data and settings on one machine then write bit-identical checkpoints;
    on CPU it costs nothing measurable (bench/determinism.py).
    """

    epochs: int = 6
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 20
    max_steps: int | None = None
    grad_clip: float | None = 1.0
    loss: Loss = "weighted_ce"
    focal_gamma: float = 2.0
    balanced_sampling: bool = False
    loss_class_weights: bool | None = None
    patience: int | None = 3
    seed: int = 0
    device: Device = "auto"
    eval_batch_size: int = 256
    model_overrides: dict[str, Any] = field(default_factory=dict)
    window: WindowConfig = field(default_factory=WindowConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    precision: str = "fp32"
    compile: bool = False
    deterministic: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.window, dict):
            self.window = WindowConfig(**self.window)
        if isinstance(self.augment, dict):
            self.augment = AugmentConfig(**self.augment)
        if self.loss not in LOSSES:
            raise ValueError(f"TrainConfig.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"TrainConfig.precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
        if self.device not in DEVICES:
            raise ValueError(f"TrainConfig.device must be one of {DEVICES}, got {self.device!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_steps", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"TrainConfig.{name} must be None or >= 1, got {value}")
        if self.warmup_steps < 0:
            raise ValueError(f"TrainConfig.warmup_steps must be >= 0, got {self.warmup_steps}")
        # NaN passes every `<` check, so the floats are checked for being finite first.
        for name, low, inclusive in (
            ("lr", 0.0, False),
            ("weight_decay", 0.0, True),
            ("focal_gamma", 0.0, True),
            ("grad_clip", 0.0, False),
        ):
            value = getattr(self, name)
            if value is None and name == "grad_clip":
                continue
            if not math.isfinite(value) or value < low or (value == low and not inclusive):
                bound = f">= {low:g}" if inclusive else f"> {low:g}"
                raise ValueError(f"TrainConfig.{name} must be a finite number {bound}, got {value}")

    @property
    def weighted_loss(self) -> bool:
        """Whether the loss is class-weighted: as asked, else only without balanced sampling."""
        if self.loss_class_weights is None:
            return not self.balanced_sampling
        return self.loss_class_weights

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def training_settings(self) -> dict[str, Any]:
        """How the model was trained: the variant's side of a result (the protocol is the
        evaluation task). Recorded with every result and shown on the leaderboard."""
        return {k: getattr(self, k) for k in TRAINING_SETTINGS} | {"augment": asdict(self.augment)}


# Where and how a training runs, never what it computes: the only settings a run may choose
# (the Dagster launchpad); everything else belongs to the variant, whose settings are versioned.
RUN_SETTINGS: tuple[str, ...] = ("device", "compile", "deterministic")

# What `training_settings` records (with the augmentation's settings).
TRAINING_SETTINGS: tuple[str, ...] = (
    "epochs",
    "loss",
    "focal_gamma",
    "lr",
    "batch_size",
    "weight_decay",
    "warmup_steps",
    "grad_clip",
    "patience",
    "balanced_sampling",
    "loss_class_weights",
)
