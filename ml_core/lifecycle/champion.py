"""The champion: the best complete variant past the gates, kept in the MLflow Model Registry.

`select_champion` is a pure function over leaderboard rows: among complete variants evaluated
like the classical baseline (same LOSO folds, same class set) and within the ECE bound, the one
with the best pooled LOSO macro F1, whatever its kind: the baseline itself when nothing beats it
by more than the margin. `promote_champion`
registers it under one registered-model name with the alias `champion`, only when it beats the
current champion; the version it replaces gets the alias `previous_champion`, so
`rollback_champion` is one alias move (and can itself be undone the same way).

Only a promotion exports a serving model: `promote_champion` calls `publish`, which writes the
chosen run's checkpoint as a `torch.export` program into that run's artifacts (`serving/`); the
registered version points at it and records its format and sha256, which
`ml_core.lifecycle.timeline.load_registered_model` checks before loading it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ml_core.lifecycle.serving import SERVING_FORMAT

CHAMPION = "champion"
PREVIOUS = "previous_champion"
REGISTERED_MODEL = "pamap2-activity"
# Where a promoted run's serving program goes among its artifacts, and the version tags that
# describe it.
SERVING_DIR = "serving"
FORMAT_TAG = "serving_format"
SHA256_TAG = "serving_sha256"


@dataclass(frozen=True)
class LeaderboardRow:
    """What the selection needs of one variant's leaderboard entry.

    `variant` is its name (a built-in variant is named after its model), `model` the registered
    model it trains. `complete`: every fold in `folds` was evaluated. `ece`: expected
    calibration error of the pooled LOSO predictions (after temperature scaling when the bundle
    has it). `run_id`: the MLflow training run of the model to register for this variant,
    trained on fold `trained_on` in `source_dir` (its `best.pt`).
    """

    variant: str
    protocol_id: str
    class_set: str
    folds: tuple[str, ...]
    complete: bool
    pooled_loso_macro_f1: float
    ece: float
    run_id: str | None = None
    trained_on: str = ""
    source_dir: str | None = None
    model: str = ""  # the registered model the variant trains


@dataclass(frozen=True)
class ChampionGates:
    """A champion has ECE <= `max_ece`; a variant other than `baseline` must also beat the
    baseline's pooled LOSO macro F1 by more than `min_margin` (so the baseline is the champion
    when nothing does)."""

    baseline: str = "feature_gbm"
    max_ece: float = 0.15
    min_margin: float = 0.0


@dataclass(frozen=True)
class Selection:
    """The chosen row (None if nothing passed) and, for every other row, why not."""

    champion: LeaderboardRow | None
    baseline: LeaderboardRow | None
    rejected: dict[str, str] = field(default_factory=dict)


def select_champion(rows: list[LeaderboardRow], gates: ChampionGates) -> Selection:
    """Pick the best complete variant past the gates, the baseline included; ties go to the
    lower ECE, then the name."""
    baselines = [r for r in rows if r.variant == gates.baseline and r.complete]
    rejected: dict[str, str] = {}
    if len(baselines) != 1:
        found = "no complete entry" if not baselines else f"{len(baselines)} complete entries"
        for row in rows:
            rejected[row.variant] = f"no comparison: the baseline {gates.baseline} has {found}"
        return Selection(None, None, rejected)
    (baseline,) = baselines
    bar = baseline.pooled_loso_macro_f1 + gates.min_margin
    eligible = []
    for row in rows:
        if not row.complete:
            rejected[row.variant] = "incomplete: not every fold was evaluated"
        elif set(row.folds) != set(baseline.folds):
            rejected[row.variant] = f"evaluated on other folds than {baseline.variant}"
        elif row.class_set != baseline.class_set:
            rejected[row.variant] = (
                f"class set {row.class_set} differs from the baseline's {baseline.class_set}"
            )
        elif row is not baseline and row.pooled_loso_macro_f1 <= bar:
            rejected[row.variant] = (
                f"pooled LOSO macro F1 {row.pooled_loso_macro_f1:.4f} does not beat the "
                f"baseline's {baseline.pooled_loso_macro_f1:.4f} (+ margin {gates.min_margin})"
            )
        elif row.ece > gates.max_ece:
            rejected[row.variant] = f"ECE {row.ece:.4f} above the bound {gates.max_ece}"
        elif row.run_id is None or row.source_dir is None:
            rejected[row.variant] = "no training run with a checkpoint to register"
        else:
            eligible.append(row)
    if not eligible:
        return Selection(None, baseline, rejected)
    best = min(eligible, key=lambda r: (-r.pooled_loso_macro_f1, r.ece, r.variant))
    for row in eligible:
        if row is not best:
            rejected[row.variant] = (
                f"pooled LOSO macro F1 {row.pooled_loso_macro_f1:.4f} below "
                f"{best.variant}'s {best.pooled_loso_macro_f1:.4f}"
            )
    return Selection(best, baseline, rejected)


@dataclass(frozen=True)
class Promotion:
    """What `promote_champion` decided: the champion version after the call and why."""

    promoted: bool
    reason: str
    champion_version: str | None
    previous_version: str | None
    champion_f1: float | None


def _alias_version(client: MlflowClient, name: str, alias: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:  # no such model or alias
        return None


def current_champion(
    client: MlflowClient, name: str = REGISTERED_MODEL
) -> tuple[str | None, float | None]:
    """The champion's version and pooled LOSO macro F1, or (None, None) without one. A champion
    that is not a published serving program (registered before the platform exported one, or
    by hand) has no F1 to defend: any candidate past the gates replaces it."""
    current = _alias_version(client, name, CHAMPION)
    if current is None:
        return None, None
    tags = client.get_model_version(name, current).tags
    if tags.get(FORMAT_TAG) != SERVING_FORMAT:
        return current, None
    return current, float(tags["pooled_loso_macro_f1"])


def beats_current(candidate: LeaderboardRow, current_f1: float | None) -> bool:
    """Whether `candidate` would replace a champion of pooled LOSO macro F1 `current_f1`."""
    return current_f1 is None or candidate.pooled_loso_macro_f1 > current_f1


def version_description(row: LeaderboardRow) -> str:
    """A registered version named by what it is: variant (and model), fold, protocol."""
    model = f" ({row.model})" if row.model and row.model != row.variant else ""
    return f"{row.variant}{model} trained on {row.trained_on}, protocol {row.protocol_id}"


def promote_champion(
    client: MlflowClient,
    selection: Selection,
    publish: Callable[[LeaderboardRow], str],
    name: str = REGISTERED_MODEL,
) -> Promotion:
    """Register the selected variant and move `champion` to it, if it beats the current one.

    `publish(row)` is called only then: it writes the row's serving program (`SERVING_FILE` of
    `ml_core.lifecycle.serving`) under `SERVING_DIR` in the artifacts of run `row.run_id` and
    returns its sha256."""

    current, current_f1 = current_champion(client, name)
    candidate = selection.champion
    if candidate is None:
        return Promotion(False, "no variant passed the gates", current, None, current_f1)
    if not beats_current(candidate, current_f1):
        reason = (
            f"{candidate.variant} ({candidate.pooled_loso_macro_f1:.4f}) does not beat the "
            f"current champion, version {current} ({current_f1:.4f})"
        )
        return Promotion(False, reason, current, None, current_f1)
    assert candidate.run_id is not None  # select_champion rejects rows without one
    digest = publish(candidate)
    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description="PAMAP2 activity recognition champion")
    baseline = selection.baseline
    version = client.create_model_version(
        name,
        source=f"runs:/{candidate.run_id}/{SERVING_DIR}",
        run_id=candidate.run_id,
        # The registry's version list shows this: which variant, trained on which fold.
        description=version_description(candidate),
        tags={
            FORMAT_TAG: SERVING_FORMAT,
            SHA256_TAG: digest,
            "variant": candidate.variant,
            "model": candidate.model,
            "protocol_id": candidate.protocol_id,
            "class_set": candidate.class_set,
            "trained_on": candidate.trained_on,
            "pooled_loso_macro_f1": repr(candidate.pooled_loso_macro_f1),
            "ece": repr(candidate.ece),
            "baseline_pooled_loso_macro_f1": repr(baseline.pooled_loso_macro_f1)
            if baseline is not None
            else "",
        },
    ).version
    version = str(version)  # the SQLite store gives an int, a tracking server a string
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS, current)
    client.set_registered_model_alias(name, CHAMPION, version)
    if current is None:
        versus = "is the first"
    elif current_f1 is None:
        versus = f"replaces version {current}, which is not a {SERVING_FORMAT} program"
    else:
        versus = f"beats version {current} ({current_f1:.4f})"
    reason = f"{candidate.variant} ({candidate.pooled_loso_macro_f1:.4f}) {versus}"
    return Promotion(True, reason, version, current, candidate.pooled_loso_macro_f1)


def rollback_champion(client: MlflowClient, name: str = REGISTERED_MODEL) -> tuple[str, str]:
    """Swap `champion` and `previous_champion`; returns (champion, previous) versions after."""
    current = _alias_version(client, name, CHAMPION)
    previous = _alias_version(client, name, PREVIOUS)
    if current is None or previous is None:
        raise ValueError(f"{name}: rollback needs both aliases {CHAMPION} and {PREVIOUS}")
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_registered_model_alias(name, PREVIOUS, current)
    return previous, current
