"""Evaluation protocols: the settings that make two results comparable, and their short id.

Two results may share a leaderboard row or a folder only when they were produced under the
same protocol: the same window and stride, sampling rate (after decimation), class set, loss
and epoch budget. The seed is recorded with every result too, but it is not part of the id:
runs that differ only in seed are replicates of one protocol, and the leaderboard shows their
spread rather than ranking them apart.
"""

from __future__ import annotations

import hashlib
import json
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
    "loss",
    "epochs",
    "loso_validation_people",
)
# A protocol field's value before the field existed: at that value it is left out of the id,
# so results recorded earlier keep their ids (and parse when the field is missing).
LEGACY_VALUES: dict[str, Any] = {"loso_validation_people": 1}
# People who validate each LOSO fold (`ml_core.data.folds.LOSO_VALIDATION_PEOPLE`; kept here as
# a value so this module stays free of the data stack, and checked equal by a test).
LOSO_VALIDATION_PEOPLE = 2
PARAM_PREFIX = "protocol_"


@dataclass(frozen=True)
class EvaluationProtocol:
    """What a result was measured under; `id` is derived from every field."""

    window: int  # samples after decimation
    stride: int  # samples after decimation
    decimate: int  # keep every `decimate`-th row of the 100 Hz recording
    class_set: str
    loss: str
    epochs: int
    loso_validation_people: int = LOSO_VALIDATION_PEOPLE  # early stopping and calibration

    @classmethod
    def of(cls, config: Any) -> EvaluationProtocol:
        """The protocol of a `ml_core.training.config.TrainConfig` (duck-typed: no torch here)."""
        w = config.window
        return cls(w.window, w.stride, w.decimate, w.class_set, config.loss, config.epochs)

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
        fields = {k: v for k, v in asdict(self).items() if LEGACY_VALUES.get(k, object()) != v}
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"))
        return "p" + hashlib.sha256(canonical.encode()).hexdigest()[:8]

    def describe(self) -> str:
        """One line a reader can check a result against."""
        classes = CLASS_SETS[self.class_set]
        return (
            f"protocol {self.id}: {self.window}-sample windows ({self.window_s:g} s), stride "
            f"{self.stride} ({self.stride_s:g} s), {self.sampling_rate_hz:g} Hz, class set "
            f"{self.class_set} ({len(classes)} classes), loss {self.loss}, {self.epochs} epochs, "
            f"{self.loso_validation_people} validation person(s) per LOSO fold"
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
    def from_dict(cls, values: dict[str, Any]) -> EvaluationProtocol:
        """Inverse of `to_dict`; a recorded id that does not match its fields is an error."""
        protocol = cls(
            **{k: values[k] if k in values else LEGACY_VALUES[k] for k in PROTOCOL_FIELDS}
        )
        if "id" in values and values["id"] != protocol.id:
            raise ValueError(
                f"protocol id {values['id']!r} does not match its fields (expected {protocol.id})"
            )
        return protocol

    def to_params(self) -> dict[str, Any]:
        """`to_dict` as MLflow run params, each key prefixed `protocol_`."""
        return {f"{PARAM_PREFIX}{k}": v for k, v in self.to_dict().items()}

    @classmethod
    def from_params(cls, params: dict[str, str]) -> EvaluationProtocol:
        """Inverse of `to_params` (MLflow returns every param as a string); a run logged before
        a field existed lacks its param and reads as that field's legacy value."""
        integers = {f.name for f in fields(cls) if f.type in ("int", int)}
        values: dict[str, Any] = {}
        for key in (*PROTOCOL_FIELDS, "id"):
            if (text := params.get(f"{PARAM_PREFIX}{key}")) is not None:
                values[key] = int(text) if key in integers else text
        return cls.from_dict(values)


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
