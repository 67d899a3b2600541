"""`pamap clean`: remove a stage's output files and wipe its assets in the Dagster instance
together, so Dagster never reports fresh a partition whose files are gone.

The instance is wiped first: if removing the files then fails part way, Dagster reports the
partitions missing (and rebuilds them), never fresh over a half-removed output.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from ml_core.paths import STAGES, DataPaths

# The assets whose outputs each stage's folders hold (`DataPaths.stage_outputs`).
STAGE_ASSETS: dict[str, tuple[str, ...]] = {
    "ingest": ("raw_recording", "validated_recording", "imputed_recording", "activity_shards"),
    "prepare": ("fold_manifests", "feature_stats"),
    "train": ("trained_model", "evaluation_bundle"),
    "report": ("fold_results", "leaderboard"),
    "timelines": ("activity_timeline", "inbox_timeline"),
}
assert tuple(STAGE_ASSETS) == STAGES, "every stage with outputs names its assets"
_IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


class CleanRefused(RuntimeError):
    """Runs are in progress: cleaning now would remove files a step is writing."""


def clean(instance: dg.DagsterInstance, paths: DataPaths, stages: Sequence[str]) -> list[Path]:
    """Wipe the assets of `stages` from `instance`, then remove their output folders.
    Returns the folders removed. Refuses (CleanRefused) while any run is in progress."""
    unknown = [s for s in stages if s not in STAGE_ASSETS]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; one of {', '.join(STAGES)}")
    running = instance.get_runs(filters=dg.RunsFilter(statuses=_IN_PROGRESS))
    if running:
        ids = ", ".join(run.run_id for run in running[:5])
        raise CleanRefused(
            f"{len(running)} run(s) in progress ({ids}): let them finish or terminate them first"
        )
    instance.wipe_assets([dg.AssetKey(a) for s in stages for a in STAGE_ASSETS[s]])
    removed = []
    for stage in stages:
        for folder in paths.stage_outputs(stage):
            if folder.exists():
                shutil.rmtree(folder)
                removed.append(folder)
    return removed
