"""The report assets past 100 evaluation partitions. Dagster traces staleness through at most 99
partitions of one dependency, so the leaderboard reads per-fold results: a new bundle of one
fold x variant (of 110) makes its fold's results stale, then the leaderboard; automation
requests that chain, with the champion, in one tick."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from ml_core import pipeline
from ml_core.data.folds import FOLD_NAMES
from ml_core.io import write_json
from ml_core.models import model_names
from ml_core.paths import DataPaths
from orchestration.definitions import defs as load_defs
from orchestration.defs.ingest import DATA_VERSION_TAG
from orchestration.defs.partitions import register_variants
from orchestration.staleness import Staleness
from tests.integration.conftest import execute

VARIANTS = [*model_names(), "extra"]  # x 11 folds: 110 evaluation partitions
REPORTS = ("fold_results", "leaderboard", "champion_model")


def _bundle(
    instance: dg.DagsterInstance, paths: DataPaths, fold: str, variant: str, f1: float
) -> None:
    """An evaluation bundle's summary on disk and its materialization in the instance, as
    `evaluation_bundle` records them (what is tested here is the graph, not 110 trainings)."""
    summary = {
        "fold": fold,
        "model": variant,
        "variant": variant,
        "seed": 0,
        "protocol": {"id": "p0"},
        "macro_f1": f1,
        "accuracy": f1,
        "n_test": 10,
    }
    path = paths.evaluation_dir(fold, variant, "p0", 0) / "summary_metrics.json"
    write_json(summary, path)
    key = dg.MultiPartitionKey({"fold": fold, "model": variant})
    version = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    instance.report_runless_asset_event(
        dg.AssetMaterialization(
            "evaluation_bundle", partition=str(key), tags={DATA_VERSION_TAG: version}
        )
    )


def _leaderboard_of_fold_results(paths: DataPaths, tracker: Any = None) -> dict[str, Any]:
    """Stands in for the leaderboard's statistics (fake summaries have no predictions): its
    JSON holds every fold's results, so it changes when they do."""
    folds = {p.stem: json.loads(p.read_text()) for p in sorted(paths.reports.glob("folds/*.json"))}
    write_json(folds, paths.reports / "leaderboard.json")
    return {
        "board": {"protocols": [], "sweep_summary": []},
        "markdown": "",
        "n_records": sum(len(rows) for rows in folds.values()),
        "plot_data_uri": "",
        "folder": str(paths.reports),
        "mlflow_url": "",
    }


def _not_fresh(instance: dg.DagsterInstance) -> set[str]:
    staleness = Staleness(instance, load_defs())
    keys = [("fold_results", fold) for fold in FOLD_NAMES] + [("leaderboard", None)]
    return {
        f"{asset}[{partition}]" if partition else asset
        for asset, partition in keys
        if staleness.status(asset, partition).value != "FRESH"
    }


def _requested(instance: dg.DagsterInstance, cursor: Any) -> tuple[dict[str, set[str]], Any]:
    result = dg.evaluate_automation_conditions(
        defs=load_defs(),
        instance=instance,
        asset_selection=dg.AssetSelection.assets(*REPORTS),
        cursor=cursor,
    )
    requested = {
        r.key.to_user_string(): {str(k) for k in r.true_subset.expensively_compute_partition_keys()}
        if r.true_subset.is_partitioned
        else set()
        for r in result.results
        if r.true_subset.size
    }
    return requested, result.cursor


def test_one_new_bundle_of_110_reaches_the_leaderboard_and_the_champion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = DataPaths(tmp_path / "data")
    monkeypatch.setenv("PAMAP_DATA_ROOT", str(paths.root))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setattr(pipeline, "build_report", _leaderboard_of_fold_results)
    instance = dg.DagsterInstance.ephemeral()
    register_variants(instance, VARIANTS)
    for fold in FOLD_NAMES:
        for variant in VARIANTS:
            _bundle(instance, paths, fold, variant, 0.5)
    graph = load_defs().resolve_asset_graph()
    evaluations = graph.get(dg.AssetKey("evaluation_bundle")).partitions_def
    assert evaluations is not None
    assert len(evaluations.get_partition_keys(dynamic_partitions_store=instance)) == 110

    for fold in FOLD_NAMES:
        assert execute("fold_results_job", instance, fold).success
    assert execute("report_job", instance).success
    assert _not_fresh(instance) == set()
    assert json.loads((paths.reports / "folds" / "loso-103.json").read_text())[0]["seed"] == 0
    _, cursor = _requested(instance, None)

    # One bundle of 110 gets new content: its fold's results are stale, nothing else yet...
    _bundle(instance, paths, "loso-103", "extra", 0.75)
    assert _not_fresh(instance) == {"fold_results[loso-103]"}
    causes = Staleness(instance, load_defs()).causes("fold_results", "loso-103")
    assert causes == ["evaluation_bundle[loso-103|extra] has a new data version"]
    # ...and automation requests exactly that fold's results.
    requested, cursor = _requested(instance, cursor)
    assert requested == {"fold_results": {"loso-103"}}

    # The fold's results are redone with new content: now the leaderboard is stale, naming
    # why, and the next tick requests it with the champion after it.
    assert execute("fold_results_job", instance, "loso-103").success
    assert _not_fresh(instance) == {"leaderboard"}
    causes = Staleness(instance, load_defs()).causes("leaderboard")
    assert causes == ["fold_results[loso-103] has a new data version"]
    requested, _ = _requested(instance, cursor)
    assert set(requested) == {"leaderboard", "champion_model"}
    assert execute("report_job", instance).success
    assert _not_fresh(instance) == set()
