"""Evaluation protocols: the evaluation task two results must share to be compared, and its id.

A protocol is the task, not how a model was trained: window and stride, sampling rate (after
decimation), class set, the folds' validation rotation (people per LOSO fold) and the metric.
Results of one protocol share a leaderboard table; results of different protocols never share
a table or a folder. Training settings (epochs, loss, learning rate, augmentation, early
stopping) belong to the variant: they are recorded with every result (`training_settings`) and
shown beside it, so variants that train differently are ranked in one table. The seed is
recorded too but is not part of the id: runs that differ only in seed are replicates.

Results recorded when the id also covered the loss and the epoch budget are refused
(`LegacyProtocolError`, saying what to do): their validation also used another macro F1.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ml_core.data.columns import ACTIVITY_NAMES, CLASS_SETS, SAMPLE_RATE_HZ
from ml_core.io import write_json
from ml_core.paths import DataPaths

PROTOCOL_FIELDS: tuple[str, ...] = (
    "window",
    "stride",
    "decimate",
    "class_set",
    "loso_validation_people",
    "metric",
)
# Fields of protocols recorded before training settings moved to the variant.
LEGACY_FIELDS: tuple[str, ...] = ("loss", "epochs")
# `ml_core.evaluation.metrics.macro_f1`, for validation and test alike.
METRIC = "macro_f1_present_classes"
METRICS = {METRIC: "macro F1 over the classes present in the split's labels"}
# People who validate each LOSO fold (`ml_core.data.folds.LOSO_VALIDATION_PEOPLE`; kept here as
# a value so this module stays free of the data stack, and checked equal by a test).
LOSO_VALIDATION_PEOPLE = 2
PARAM_PREFIX = "protocol_"


class LegacyProtocolError(ValueError):
    """A result recorded under a protocol id that still covered training settings."""

    def __init__(self, where: str, values: dict[str, Any]) -> None:
        old = values.get("id", "?")
        super().__init__(
            f"{where}: recorded under protocol {old}, whose id also covered training settings "
            f"({', '.join(f'{k}={values[k]}' for k in LEGACY_FIELDS if k in values)}) and whose "
            "validation used another macro F1; it is not comparable with current results. "
            "Train and evaluate it again (materialize trained_model and evaluation_bundle, or "
            f"`uv run pamap demo`), then delete or move away the folders named {old} under "
            "models/ and evaluation/ of the data root (for a registered champion: materialize "
            "champion_model again)."
        )


@dataclass(frozen=True)
class EvaluationProtocol:
    """What a result was measured under; `id` is derived from every field."""

    window: int  # samples after decimation
    stride: int  # samples after decimation
    decimate: int  # keep every `decimate`-th row of the 100 Hz recording
    class_set: str
    loso_validation_people: int = LOSO_VALIDATION_PEOPLE  # early stopping and calibration
    metric: str = METRIC  # validation (early stopping, best.pt) and test

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"unknown metric {self.metric!r}; known: {sorted(METRICS)}")

    @classmethod
    def of(cls, config: Any) -> EvaluationProtocol:
        """The protocol of a `ml_core.training.config.TrainConfig` (duck-typed: no torch here):
        its window settings; its training settings are the variant's."""
        w = config.window
        return cls(w.window, w.stride, w.decimate, w.class_set)

    @property
    def sampling_rate_hz(self) -> float:
        return SAMPLE_RATE_HZ / self.decimate

    @property
    def window_s(self) -> float:
        return self.window / self.sampling_rate_hz

    @property
    def stride_s(self) -> float:
        return self.stride / self.sampling_rate_hz

    @property
    def id(self) -> str:
        """`p` + 8 hex digits of the SHA-256 of the fields: short, stable, a valid folder name."""
        canonical = json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))
        return "p" + hashlib.sha256(canonical.encode()).hexdigest()[:8]

    def describe(self) -> str:
        """One line a reader can check a result against."""
        classes = CLASS_SETS[self.class_set]
        return (
            f"protocol {self.id}: {self.window}-sample windows ({self.window_s:g} s), stride "
            f"{self.stride} ({self.stride_s:g} s), {self.sampling_rate_hz:g} Hz, class set "
            f"{self.class_set} ({len(classes)} classes), "
            f"{self.loso_validation_people} validation person(s) per LOSO fold, "
            f"{METRICS[self.metric]}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Every field, the derived rates and durations, the class list and the id."""
        return {
            "id": self.id,
            **asdict(self),
            "sampling_rate_hz": self.sampling_rate_hz,
            "window_s": self.window_s,
            "stride_s": self.stride_s,
            "classes": [ACTIVITY_NAMES[c] for c in CLASS_SETS[self.class_set]],
            "description": self.describe(),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "a result") -> EvaluationProtocol:
        """Inverse of `to_dict`; a recorded id that does not match its fields is an error, and
        a protocol recorded with training settings is a `LegacyProtocolError`."""
        if any(k in values for k in LEGACY_FIELDS):
            raise LegacyProtocolError(where, values)
        protocol = cls(**{k: values[k] for k in PROTOCOL_FIELDS})
        if "id" in values and values["id"] != protocol.id:
            raise ValueError(
                f"protocol id {values['id']!r} does not match its fields (expected {protocol.id})"
            )
        return protocol

    def to_params(self) -> dict[str, Any]:
        """`to_dict` as MLflow run params, each key prefixed `protocol_`."""
        return {f"{PARAM_PREFIX}{k}": v for k, v in self.to_dict().items()}

    @classmethod
    def from_params(
        cls, params: dict[str, str], where: str = "an MLflow run"
    ) -> EvaluationProtocol:
        """Inverse of `to_params` (MLflow returns every param as a string); a run logged under
        a protocol with training settings is a `LegacyProtocolError`."""
        integers = {f.name for f in fields(cls) if f.type in ("int", int)}
        values: dict[str, Any] = {}
        for key in (*PROTOCOL_FIELDS, *LEGACY_FIELDS, "id"):
            if (text := params.get(f"{PARAM_PREFIX}{key}")) is not None:
                values[key] = int(text) if key in integers else text
        return cls.from_dict(values, where)


@dataclass(frozen=True)
class LatestTraining:
    """Which protocol and seeds the last training of a fold × variant wrote, and the variant
    (`name`, `model`, `settings`: its overrides); its evaluation reads these."""

    protocol_id: str
    seeds: list[int]
    variant: dict[str, Any] = field(default_factory=dict)


def latest_training_path(model_root: Path) -> Path:
    return Path(model_root) / "latest.json"


def write_latest_training(
    model_root: Path,
    protocol: EvaluationProtocol,
    seeds: list[int],
    variant: dict[str, Any] | None = None,
) -> Path:
    return write_json(
        {
            "protocol_id": protocol.id,
            "protocol": protocol.to_dict(),
            "seeds": list(seeds),
            "variant": variant or {},
        },
        latest_training_path(model_root),
    )


def read_latest_training(model_root: Path) -> LatestTraining:
    path = latest_training_path(model_root)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no training recorded here; materialize trained_model")
    record = json.loads(path.read_text())
    return LatestTraining(
        str(record["protocol_id"]), [int(s) for s in record["seeds"]], record.get("variant", {})
    )


def latest_dirs(paths: DataPaths, fold: str, variant: str) -> tuple[Path, Path]:
    """(model folder, evaluation folder) of the first seed of the latest training."""
    latest = read_latest_training(paths.model_root(fold, variant))
    seed = latest.seeds[0]
    return (
        paths.model_dir(fold, variant, latest.protocol_id, seed),
        paths.evaluation_dir(fold, variant, latest.protocol_id, seed),
    )


def evaluated_under(paths: DataPaths, fold: str, variant: str, protocol_id: str) -> bool:
    """The latest training of `variant` on `fold` is under `protocol_id` and every seed of it
    has been evaluated."""
    try:
        latest = read_latest_training(paths.model_root(fold, variant))
    except FileNotFoundError:
        return False
    return latest.protocol_id == protocol_id and all(
        (paths.evaluation_dir(fold, variant, protocol_id, s) / "summary_metrics.json").exists()
        for s in latest.seeds
    )


# What a training leaves in each seed's folder (`ml_core.training.train`).
MODEL_FILES: tuple[str, ...] = ("best.pt", "last.pt", "history.json")


def _relative(paths: DataPaths, files: list[Path]) -> list[str]:
    return [str(f.relative_to(paths.root)) for f in files if not f.is_file()]


def _missing_training_files(
    paths: DataPaths,
    fold: str,
    variant: str,
    seed_files: Callable[[str, int], Iterable[Path]],
) -> list[str]:
    """The files `seed_files(protocol id, seed)` names for each seed of the latest training of
    `variant` on `fold` that are gone, relative to the data root (its `latest.json` when even
    that is gone)."""
    root = paths.model_root(fold, variant)
    try:
        latest = read_latest_training(root)
    except FileNotFoundError:
        return _relative(paths, [latest_training_path(root)])
    return _relative(
        paths, [f for seed in latest.seeds for f in seed_files(latest.protocol_id, seed)]
    )


def missing_model_files(paths: DataPaths, fold: str, variant: str) -> list[str]:
    """The model files of the latest training of `variant` on `fold` that are gone."""
    return _missing_training_files(
        paths,
        fold,
        variant,
        lambda protocol_id, seed: (
            paths.model_dir(fold, variant, protocol_id, seed) / name for name in MODEL_FILES
        ),
    )


def missing_bundle_files(paths: DataPaths, fold: str, variant: str) -> list[str]:
    """The evaluation bundle files of the latest training of `variant` on `fold` that are gone."""
    from ml_core.evaluation.evaluate import bundle_files

    return _missing_training_files(
        paths,
        fold,
        variant,
        lambda protocol_id, seed: bundle_files(
            paths.evaluation_dir(fold, variant, protocol_id, seed)
        ),
    )
