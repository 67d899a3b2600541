"""`pamap demo` as a user runs it: synthetic data, the whole graph, the leaderboard, re-runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest
from mlflow.tracking import MlflowClient

from ml_core.evaluation.protocol import latest_dirs
from ml_core.lifecycle.champion import CHAMPION, REGISTERED_MODEL
from ml_core.paths import PROJECT_ROOT, DataPaths
from orchestration.code_location import REPOSITORY_LABEL_TAG, repository_label
from tests.e2e.conftest import venv_program
from tests.raw_edits import edit_labelled_row

# subjects, folds, fold x model, each fold's results, leaderboard, champion, one timeline
JOB_RUNS = {
    "ingest_job": 9,
    "prepare_job": 2,
    "training_job": 2,
    "fold_results_job": 2,
    "report_job": 1,
    "champion_job": 1,
    "serve_job": 1,
}
ARGS = ["--scale", "tiny", "--models", "feature_gbm", "--folds", "holdout-106", "loso-109"]


def _demo(env: dict[str, str], data_root: Path) -> str:
    completed = subprocess.run(
        [venv_program("pamap"), "--data-root", str(data_root), "demo", *ARGS],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        cwd=PROJECT_ROOT,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_demo_builds_everything_then_redoes_only_what_changed(tmp_path: Path) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROJECT_ROOT / "dagster.yaml", home / "dagster.yaml")
    data_root = tmp_path / "data"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
    }

    first = _demo(env, data_root)
    assert "writing the tiny-scale synthetic set" in first
    assert "| feature_gbm |" in first and "orchestration overhead" in first
    paths = DataPaths(data_root)
    assert (paths.reports / "leaderboard.md").exists()
    for fold in ("holdout-106", "loso-109"):
        assert (latest_dirs(paths, fold, "feature_gbm")[1] / "summary_metrics.json").exists()
    # The serve group is filled: a champion in the registry, drawn over subject 106 (the test
    # person of the fold whose model is registered), and the demo says where to see both.
    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    champion = client.get_model_version_by_alias(REGISTERED_MODEL, CHAMPION)
    assert champion.tags["variant"] == "feature_gbm"
    assert champion.tags["trained_on"] == "holdout-106"
    plot = paths.timeline_dir("subject_106") / "timeline.png"
    assert plot.stat().st_size > 0
    assert (paths.timeline_dir("subject_106") / "timeline.parquet").exists()
    assert f"champion: {REGISTERED_MODEL} version {champion.version} " in first
    assert f"#/models/{REGISTERED_MODEL}/versions/{champion.version}" in first
    assert f"timeline : {plot} (subject 106" in first
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        # Filed under their jobs as the UI finds a job's runs (job name and the code location's
        # label), like runs launched from the UI, so the Jobs pages and Overview show them.
        label = {REPOSITORY_LABEL_TAG: repository_label()}
        filed = {
            job: instance.get_runs(filters=dg.RunsFilter(job_name=job, tags=label))
            for job in JOB_RUNS
        }
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    # Raw files are observed without a run.
    assert len(runs) == sum(JOB_RUNS.values())
    assert {job: len(rs) for job, rs in filed.items()} == JOB_RUNS
    for run in runs:
        origin = run.remote_job_origin
        assert origin is not None and origin.location_name == "orchestration.definitions"

    second = _demo(env, data_root)
    assert second.count("up to date") == 5 and ": 0 runs," in second
    assert f"champion: {REGISTERED_MODEL} version {champion.version} " in second

    # New content in one file: Dagster reports that subject stale, then the folds built from it.
    edit_labelled_row(paths.dat_file("protocol", 103), field=4, change=0.5)
    third = _demo(env, data_root)
    assert "subject 103" in third and "subject 104" not in third
    assert "holdout-106 x feature_gbm" in third and "leaderboard" in third

    # The documented clean rerun: data/ removed, the instance kept. Dagster still reports every
    # partition fresh (same content), so the demo must notice the missing files and rebuild.
    shutil.rmtree(data_root)
    fourth = _demo(env, data_root)
    assert "writing the tiny-scale synthetic set" in fourth
    assert "subject 109" in fourth and "fold holdout-106" in fourth and "fold loso-109" in fourth
    assert "holdout-106 x feature_gbm" in fourth and "loso-109 x feature_gbm" in fourth
    assert paths.manifest("holdout-106", "train").exists()
    assert (paths.reports / "leaderboard.md").exists()
    assert "timeline subject 106" in fourth and plot.exists()
