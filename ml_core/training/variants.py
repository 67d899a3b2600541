"""Model variants: a registered model plus overrides, named in a versioned file (experiments.yaml).

A variant is what the model dimension of fold x model trains: a registered model, overrides of
its hyperparameters (`model_args`), its training settings (epochs, loss, lr, early stopping,
seed, and `seeds`: how many trainings, with seeds seed, seed + 1, ...) and the window settings
(window, stride, decimate, class_set). Training settings are the variant's own: variants that
differ only in them share a protocol and are ranked in one leaderboard table; the window
settings are part of the protocol (the evaluation task). A list of values for a setting
expands into the Cartesian product (a sweep); each variant gets a readable name made from the
entry's name and the swept values, e.g. `lstm_sweep-lr=0.002-m.hidden=64`, stable when values
are added to or reordered in a list. The registered models with their defaults are the
built-in variants; a model's own training defaults (`ModelSpec.train_defaults`, e.g. more
epochs) are its built-in variant's settings.

`load_variants` validates everything before returning anything: an unknown model, an unknown
setting or a bad value is one `VariantError` that names the file, the line, the variant and
the setting of every problem.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.resolver import BaseResolver

from ml_core.data.columns import MODALITIES
from ml_core.models import create_model, get_spec, make_config, model_names
from ml_core.paths import PROJECT_ROOT
from ml_core.training.config import RUN_SETTINGS, TrainConfig, WindowConfig

VARIANTS_FILE = PROJECT_ROOT / "experiments.yaml"
# Variants one entry may expand to: each trains on every fold, so more is a typo, not a plan.
MAX_SWEEP = 64
WINDOW_SETTINGS = tuple(f.name for f in fields(WindowConfig))
# What a variant may set for training: everything that changes a result. The rest
# (`RUN_SETTINGS`: device, compile, deterministic) is where and how a run goes, set per run.
TRAIN_SETTINGS = (
    "epochs",
    "max_steps",
    "precision",
    "batch_size",
    "lr",
    "weight_decay",
    "warmup_steps",
    "grad_clip",
    "loss",
    "focal_gamma",
    "balanced_sampling",
    "loss_class_weights",
    "patience",
    "seed",
    "augment",  # a mapping of AugmentConfig fields, e.g. {enabled: false}
)
ENTRY_KEYS = ("model", "description", "model_args", "seeds")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_VALUE_TEXT = re.compile(r"^[A-Za-z0-9_.+-]+$")


class VariantError(ValueError):
    """Every problem found in a variants file, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True)
class Variant:
    """One trainable variant. `train`, `window` and `model_args` hold only the overrides."""

    name: str
    model: str
    train: dict[str, Any] = field(default_factory=dict)
    window: dict[str, Any] = field(default_factory=dict)
    model_args: dict[str, Any] = field(default_factory=dict)
    seeds: int | None = None  # trainings per fold (seeds seed, seed + 1, ...); None: run config's
    entry: str = ""  # the file entry it was expanded from ("" for a built-in variant)
    description: str = ""

    @property
    def builtin(self) -> bool:
        return not self.entry

    def train_config(self, **run: Any) -> TrainConfig:
        """The TrainConfig of this variant's (first) training, with `run`'s settings of where
        and how it runs (`RUN_SETTINGS` only: nothing that changes a result)."""
        if unknown := sorted(set(run) - set(RUN_SETTINGS)):
            raise ValueError(
                f"variant {self.name!r}: {', '.join(unknown)} would change its result; only "
                f"{', '.join(RUN_SETTINGS)} may be set for a run"
            )
        return TrainConfig(
            **self.train,
            **run,
            model_overrides=dict(self.model_args),
            window=WindowConfig(**self.window),
        )

    @property
    def n_seeds(self) -> int:
        """Trainings per fold (seeds seed, seed + 1, ...)."""
        return 1 if self.seeds is None else self.seeds

    def resolved_settings(self) -> dict[str, Any]:
        """Everything that decides this variant's result: the model with every argument (its
        defaults included), the training and window settings, the number of seeds. What only
        decides where and how a run goes (`RUN_SETTINGS`) is left out."""
        config = self.train_config().to_dict()
        for key in RUN_SETTINGS:
            config.pop(key)
        config["model_overrides"] = dataclasses.asdict(make_config(self.model, **self.model_args))
        return {"model": self.model, "seeds": self.n_seeds, **config}

    def settings_version(self) -> str:
        """A short hash of `resolved_settings`: it changes exactly when a result would."""
        text = json.dumps(self.resolved_settings(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def settings(self) -> dict[str, Any]:
        """Every override, flat (model arguments prefixed `m.`), for tables and MLflow."""
        return {
            **self.train,
            **self.window,
            **{f"m.{k}": v for k, v in self.model_args.items()},
            **({} if self.seeds is None else {"seeds": self.seeds}),
        }


def builtin_variants() -> list[Variant]:
    """Each registered model with its defaults (and its own training defaults), named after
    the model."""
    return [
        Variant(name=name, model=name, train=dict(get_spec(name).train_defaults))
        for name in model_names()
    ]


# --- reading the file --------------------------------------------------------------------------


class _LineDict(dict):
    """A mapping from YAML that remembers the line (1-based) of each key."""

    lines: dict[Any, int]


class _Loader(yaml.SafeLoader):
    """Safe YAML that rejects duplicate keys (a second variant of one name would win silently)
    and records where each key is."""


def _construct_mapping(loader: _Loader, node: yaml.MappingNode) -> _LineDict:
    result = _LineDict()
    result.lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if not isinstance(key, str | int | float | bool):
            raise ConstructorError(
                None, None, f"a key must be a name, got {key!r}", key_node.start_mark
            )
        if key in result:
            raise ConstructorError(
                None,
                None,
                f"duplicate key {key!r} (first on line {result.lines[key]})",
                key_node.start_mark,
            )
        result[key] = loader.construct_object(value_node, deep=True)
        result.lines[key] = line
    return result


_Loader.add_constructor(BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _check_type(value: Any, hint: Any) -> str | None:
    """Why `value` does not fit the dataclass field type `hint`, or None if it does."""
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is bool and isinstance(value, bool):
            return None
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return None
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return None if math.isfinite(value) else f"expected a finite number, got {value!r}"
        if option is str and isinstance(value, str):
            return None
        if typing.get_origin(option) is typing.Literal and isinstance(value, str):
            return None  # the config's own check names the allowed values
        if dataclasses.is_dataclass(option) and isinstance(value, dict):
            return None  # its fields: the dataclass's own check names an unknown one
    expected = " or ".join("null" if o is type(None) else _type_name(o) for o in options)
    return f"expected {expected}, got {value!r}"


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return format(value, "g")
    return "none" if value is None else str(value)


def _as_choices(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def _expand_entry(
    where: str, name: str, entry: dict[str, Any], lines: dict[Any, int], problems: list[str]
) -> list[Variant]:
    """The variants of one file entry, or none (with `problems` filled) if it is invalid."""
    start = len(problems)

    def problem(setting: str, message: str) -> None:
        setting = f"model_args.{setting[2:]}" if setting.startswith("m.") else setting
        line = lines.get(setting, lines.get("__entry__", 0))
        problems.append(f"{where}:{line}: variant {name!r}, setting {setting!r}: {message}")

    if not _NAME.match(str(name)):
        problem("name", "use lower-case letters, digits and _ (starting with a letter)")
    model = entry.get("model")
    if model is None:
        problem("model", f"missing; one of {', '.join(model_names())}")
    elif model not in model_names():
        problem("model", f"unknown model {model!r}; registered models: {', '.join(model_names())}")
    train_hints = _hints(TrainConfig)
    window_hints = _hints(WindowConfig)
    swept: dict[str, list[Any]] = {}  # setting (model args as m.<name>) -> values
    for key, value in entry.items():
        if key in ("model", "description"):
            if key == "description" and not isinstance(value, str):
                problem(key, f"expected text, got {value!r}")
            continue
        if key == "seeds":
            swept[key] = _as_choices(value)
            for one in swept[key]:
                if not isinstance(one, int) or isinstance(one, bool) or one < 1:
                    problem(key, f"expected an integer >= 1 (trainings per fold), got {one!r}")
            continue
        if key == "model_args":
            if not isinstance(value, dict):
                problem(key, f"expected a mapping of {model or 'the model'}'s settings")
                continue
            if model not in model_names():
                continue
            model_hints = _hints(get_spec(model).config_cls)
            for arg, arg_value in value.items():
                if arg not in model_hints:
                    problem(
                        f"model_args.{arg}",
                        f"unknown setting of {model}; known: {', '.join(model_hints)}",
                    )
                    continue
                swept[f"m.{arg}"] = _as_choices(arg_value)
                for one in swept[f"m.{arg}"]:
                    if (why := _check_type(one, model_hints[arg])) is not None:
                        problem(f"model_args.{arg}", why)
            continue
        hints = train_hints if key in TRAIN_SETTINGS else window_hints
        if key not in TRAIN_SETTINGS and key not in WINDOW_SETTINGS:
            known = ", ".join((*ENTRY_KEYS, *TRAIN_SETTINGS, *WINDOW_SETTINGS))
            problem(key, f"unknown setting; known: {known}")
            continue
        choices = _as_choices(value)
        if not choices:
            problem(key, "an empty list sweeps over nothing")
            continue
        swept[key] = choices
        for one in choices:
            if (why := _check_type(one, hints[key])) is not None:
                problem(key, why)
                continue
            # The dataclasses' own checks (ranges, known losses and class sets), one at a time
            # so the message can name the setting.
            try:
                if key in TRAIN_SETTINGS:
                    TrainConfig(**{key: one})
                else:
                    WindowConfig(**{key: one})
            except (ValueError, TypeError) as exc:
                problem(key, str(exc))
    for key, values in swept.items():
        if len(values) != len(set(map(_format_value, values))):
            problem(key, f"a value is listed twice: {values!r}")
        for one in values:
            if len(values) > 1 and not _VALUE_TEXT.match(_format_value(one)):
                problem(key, f"value {one!r} cannot be part of a variant name")
    if len(problems) > start:
        return []

    size = math.prod(len(v) for v in swept.values())
    if size > MAX_SWEEP:
        problems.append(
            f"{where}:{lines.get('__entry__', 0)}: variant {name!r}: the sweep makes {size} "
            f"variants, more than {MAX_SWEEP}: split it into entries"
        )
        return []
    variants = []
    sweep_keys = sorted(k for k, v in swept.items() if len(v) > 1)
    for combo in itertools.product(*(swept[k] for k in swept)):
        chosen = dict(zip(swept, combo, strict=True))
        suffix = "".join(f"-{k}={_format_value(chosen[k])}" for k in sweep_keys)
        variant = Variant(
            name=f"{name}{suffix}",
            model=str(model),
            train={k: v for k, v in chosen.items() if k in TRAIN_SETTINGS},
            window={k: v for k, v in chosen.items() if k in WINDOW_SETTINGS},
            model_args={k[2:]: v for k, v in chosen.items() if k.startswith("m.")},
            seeds=chosen.get("seeds"),
            entry=str(name),
            description=str(entry.get("description", "")),
        )
        try:  # settings that are fine alone but not together, and the model's own checks
            config = variant.train_config()
            create_model(
                variant.model,
                n_classes=len(config.window.class_ids),
                modality_channels={m: len(cols) for m, cols in MODALITIES.items()},
                **variant.model_args,
            )
        except (ValueError, TypeError, AssertionError) as exc:
            settings = ", ".join(f"{k}={v!r}" for k, v in variant.settings().items())
            problem("model_args", f"{variant.name} ({settings}) does not build: {exc}")
            continue
        variants.append(variant)
    return variants


def load_variants(path: str | Path = VARIANTS_FILE) -> list[Variant]:
    """The built-in variants, then every variant of the file (sweeps expanded), all validated.

    A missing file means no extra variants. Any problem raises one VariantError listing all
    of them, and then no variant is returned.
    """
    path = Path(path)
    variants = builtin_variants()
    if not path.exists():
        return variants
    where = str(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise VariantError(
            [f"{where}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})"]
        ) from None
    try:
        document = yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = mark.line + 1 if mark is not None else 0
        raise VariantError([f"{where}:{line}: not valid YAML: {exc.problem}"]) from None
    except yaml.YAMLError as exc:  # the reader's errors (a control character) carry no mark
        line = text.count("\n", 0, getattr(exc, "position", 0)) + 1
        raise VariantError([f"{where}:{line}: not valid YAML: {exc}"]) from None
    if document is None:
        return variants
    if not isinstance(document, dict) or set(document) != {"variants"}:
        raise VariantError([f"{where}:1: expected one top-level key `variants:`"])
    entries = document["variants"] or {}
    if not isinstance(entries, _LineDict):
        raise VariantError([f"{where}:{document.lines['variants']}: `variants` must be a mapping"])
    problems: list[str] = []
    for name, entry in entries.items():
        line = entries.lines[name]
        if not isinstance(entry, _LineDict):
            problems.append(f"{where}:{line}: variant {name!r}: expected a mapping of settings")
            continue
        lines = {"__entry__": line, **entry.lines}
        if isinstance(entry.get("model_args"), _LineDict):
            lines |= {f"model_args.{k}": n for k, n in entry["model_args"].lines.items()}
        variants.extend(_expand_entry(where, name, entry, lines, problems))
    seen: dict[str, str] = {}
    for variant in variants:
        if variant.name in seen:
            origin = (
                f"the built-in variant of {variant.name}"
                if not seen[variant.name]
                else (f"a variant of {seen[variant.name]!r}")
            )
            problems.append(f"{where}: variant name {variant.name!r} is taken by {origin}")
        seen.setdefault(variant.name, variant.entry)
    if problems:
        raise VariantError(problems)
    return variants
