"""The model registry: every model is created by name, and one contract test runs over all.

Each model lives in its own module that defines `SPEC`; the registry imports a module only when
its model is asked for, so a notebook that wants one model does not import all of them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Literal

_MODEL_MODULES: dict[str, str] = {
    "feature_gbm": "ml_core.models.feature_gbm",
    "early_fusion": "ml_core.models.early_fusion",
    "late_fusion": "ml_core.models.late_fusion",
    "hybrid_fusion": "ml_core.models.hybrid_fusion",
    "modality_transformer": "ml_core.models.modality_transformer",
    "lstm": "ml_core.models.lstm",
    "temporal_cnn": "ml_core.models.temporal_cnn",
    "hierarchical_transformer": "ml_core.models.hierarchical_transformer",
    "deep_conv_lstm": "ml_core.models.deep_conv_lstm",
}


@dataclass(frozen=True)
class ModelSpec:
    """How to build one registered model.

    kind "torch": `build(config, n_classes, modality_channels)` returns an `nn.Module` whose
    `forward(x, present)` takes `x[modality]` of shape [B, T, C] (normalised, NaN already 0)
    and `present[modality]` of shape [B, T] (bool, True where the sample was observed) and
    returns logits [B, n_classes]. A model may set `aux_loss` (a scalar tensor, or None) in a
    training forward pass: the training loop adds it to the classification loss.
    kind "sklearn": `build(...)` returns an object with `fit(x, present, y)` and
    `predict_proba(x, present)` over the same per-modality arrays.
    train_defaults: training settings (`TrainConfig` fields such as epochs or lr) this model
    trains with unless a variant or the run says otherwise: its built-in variant sets them.
    """

    name: str
    kind: Literal["torch", "sklearn"]
    config_cls: type[Any]
    build: Callable[..., Any]
    train_defaults: dict[str, Any] = field(default_factory=dict)


def model_names() -> list[str]:
    return list(_MODEL_MODULES)


def get_spec(name: str) -> ModelSpec:
    if name not in _MODEL_MODULES:
        raise KeyError(f"unknown model {name!r}; registered models: {', '.join(_MODEL_MODULES)}")
    spec = importlib.import_module(_MODEL_MODULES[name]).SPEC
    assert isinstance(spec, ModelSpec) and spec.name == name
    return spec


def make_config(name: str, **overrides: Any) -> Any:
    """The model's config dataclass with `overrides` applied; unknown keys are an error."""
    spec = get_spec(name)
    known = {f.name for f in fields(spec.config_cls)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"{name}: unknown config keys {sorted(unknown)}; known: {sorted(known)}")
    return spec.config_cls(**overrides)


def create_model(
    name: str, n_classes: int, modality_channels: dict[str, int], **overrides: Any
) -> Any:
    """Build a registered model by name, e.g. `create_model("lstm", 12, {"imu_hand": 10})`."""
    spec = get_spec(name)
    return spec.build(make_config(name, **overrides), n_classes, modality_channels)
