"""Versions and staleness as the Dagster UI shows them, read through the instance: a changed raw
file makes exactly its subject, then every fold, their statistics and their models stale; an
unchanged file re-materialized makes nothing stale; a code version bump makes its asset stale."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from ml_core.data.columns import SUBJECTS
from ml_core.paths import DataPaths
from orchestration.definitions import defs as load_defs
from orchestration.staleness import Staleness, observe_raw_files
from tests.integration.conftest import execute
from tests.raw_edits import edit_labelled_row

FOLDS = ("holdout-106", "loso-101")
MODEL = "feature_gbm"
INGEST = ("raw_recording", "validated_recording", "imputed_recording", "activity_shards")


def _fold_model(fold: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"fold": fold, "model": MODEL})


def _not_fresh(instance: dg.DagsterInstance) -> set[str]:
    """Every `asset[partition]` of the materialized scope that is stale or missing."""
    staleness = Staleness(instance, load_defs())
    keys: list[tuple[str, str | dg.MultiPartitionKey]] = [
        (asset, str(s)) for asset in INGEST for s in SUBJECTS
    ]
    keys += [(asset, fold) for asset in ("fold_manifests", "feature_stats") for fold in FOLDS]
    keys += [
        (asset, _fold_model(fold))
        for asset in ("trained_model", "evaluation_bundle")
        for fold in FOLDS
    ]
    return {
        f"{asset}[{partition}]"
        for asset, partition in keys
        if staleness.status(asset, partition).value != "FRESH"
    }


def test_staleness_follows_content_changes_through_the_graph(
    copy_prepared: Callable[[], Path], tmp_path: Path
) -> None:
    paths = DataPaths(copy_prepared())
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        # Every subject, two folds and one model on each, materialized in one instance.
        observe_raw_files(instance)
        for subject in SUBJECTS:
            assert execute("ingest_job", instance, str(subject)).success
        for fold in FOLDS:
            assert execute("prepare_job", instance, fold).success
            assert execute("training_job", instance, _fold_model(fold)).success
        assert _not_fresh(instance) == set()

        # A touched but unchanged file: its subject is stale until re-read, then nothing is.
        dat = paths.dat_file("protocol", 104)
        os.utime(dat, ns=(dat.stat().st_atime_ns, dat.stat().st_mtime_ns + 10**9))
        observe_raw_files(instance)
        assert _not_fresh(instance) == {"raw_recording[104]"}
        assert execute("ingest_job", instance, "104").success
        assert _not_fresh(instance) == set()

        # A changed file: exactly its subject, then every fold, its statistics and its models.
        edit_labelled_row(paths.dat_file("protocol", 103), field=4, change=0.5)
        observe_raw_files(instance)
        assert _not_fresh(instance) == {"raw_recording[103]"}
        causes = Staleness(instance, load_defs()).causes("raw_recording", "103")
        assert causes == ["raw_files[103] has a new data version"]
        assert execute("ingest_job", instance, "103").success
        assert _not_fresh(instance) == {
            *(f"{a}[{fold}]" for a in ("fold_manifests", "feature_stats") for fold in FOLDS),
            *(
                f"{a}[{_fold_model(fold)}]"
                for a in ("trained_model", "evaluation_bundle")
                for fold in FOLDS
            ),
        }
