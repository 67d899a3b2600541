"""A variant's window is never longer than its fold's gap between train, val and test (a file
variant trained through Dagster is in test_training_graph.py, beside the built-in ones)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from ml_core.paths import DataPaths
from ml_core.pipeline import check_fold_window, fold_split_gap
from ml_core.training.config import TrainConfig, WindowConfig
from tests.integration.conftest import execute

FOLD = "holdout-106"


def _variants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    file = tmp_path / "experiments.yaml"
    file.write_text(text)
    monkeypatch.setenv("PAMAP_VARIANTS_FILE", str(file))


def test_a_window_longer_than_the_folds_gap_is_refused_until_the_fold_is_rebuilt(
    copy_prepared: Callable[[], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = DataPaths(copy_prepared())
    text = (
        "variants:\n  slow:\n    model: feature_gbm\n    epochs: 1\n    window: 100\n"
        "    decimate: 3\n"
    )
    _variants(tmp_path, monkeypatch, text)
    # Only the stratified cut leaves train, val and test parts of one recording side by side.
    assert fold_split_gap(paths, "stratified") == 256
    assert fold_split_gap(paths, FOLD) is None
    instance = dg.DagsterInstance.ephemeral()
    key = dg.MultiPartitionKey({"fold": "stratified", "model": "slow"})

    # 100 samples after decimation by 3 span 300 rows: more than the 256-row gap.
    result = execute("training_job", instance, key)
    assert not result.success
    events = [e for e in result.all_events if e.step_key == "trained_model"]
    assert not [e for e in events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    (failure,) = [e for e in events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert "rebuild fold_manifests[stratified] with config window: 300" in message
    assert not paths.model_root("stratified", "slow").exists()

    rebuild = {"ops": {"fold_manifests": {"config": {"window": 300}}}}
    assert execute("prepare_job", instance, "stratified", rebuild).success
    assert fold_split_gap(paths, "stratified") == 300
    config = TrainConfig(window=WindowConfig(window=100, decimate=3))
    check_fold_window(paths, "stratified", config)  # what refused the training now passes
    with pytest.raises(ValueError, match="leave 300 rows"):
        check_fold_window(paths, "stratified", TrainConfig(window=WindowConfig(decimate=2)))
