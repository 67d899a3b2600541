"""Training config that fails early and is recorded: enumerated settings are rejected before a
run starts (the launchpad's validation), a bad setting fails once without retries, and the
architecture's own settings are settable and land in the model's metadata."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from ml_core.io import load_torch
from ml_core.paths import DataPaths
from orchestration.definitions import defs as load_defs
from tests.integration.conftest import execute

KEY = dg.MultiPartitionKey({"fold": "holdout-106", "model": "feature_gbm"})


def _training(**config: object) -> dict:
    return {"ops": {"trained_model": {"config": {"epochs": 1, **config}}}}


@pytest.mark.parametrize(
    ("field", "bad"),
    [("loss", "focall"), ("device", "gpu"), ("class_set", "all20"), ("precision", "fp16")],
)
def test_a_bad_enumerated_value_is_rejected_before_the_run(field: str, bad: str) -> None:
    job = load_defs().resolve_job_def("training_job")
    with pytest.raises(dg.DagsterInvalidConfigError, match=f"{field}.*not in enum"):
        dg.validate_run_config(job, _training(**{field: bad}))
    dg.validate_run_config(job, _training())  # the defaults are valid


def test_a_bad_model_setting_fails_once_without_retries(
    copy_prepared: Callable[[], Path],
) -> None:
    copy_prepared()
    instance = dg.DagsterInstance.ephemeral()
    result = execute("training_job", instance, KEY, _training(model_overrides={"depth": 3}))
    assert not result.success
    events = [e for e in result.all_events if e.step_key == "trained_model"]
    assert not [e for e in events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    (failure,) = [e for e in events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert "unknown config keys ['depth']" in failure.step_failure_data.error.message  # type: ignore[union-attr]


def test_model_settings_are_used_and_the_full_config_is_recorded(
    copy_prepared: Callable[[], Path],
) -> None:
    paths = DataPaths(copy_prepared())
    instance = dg.DagsterInstance.ephemeral()
    run_config = _training(
        model_overrides={"max_iter": 7}, loss="focal", augment={"enabled": False, "jitter_std": 0.1}
    )
    assert execute("training_job", instance, KEY, run_config).success
    record = instance.get_latest_materialization_event(dg.AssetKey("trained_model"))
    assert record is not None and record.asset_materialization is not None
    config = record.asset_materialization.metadata["config"].value
    assert isinstance(config, dict)
    assert config["model_overrides"] == {"max_iter": 7}
    assert config["loss"] == "focal" and config["epochs"] == 1
    assert config["window"]["class_set"] == "protocol12"
    assert config["augment"]["enabled"] is False and config["augment"]["jitter_std"] == 0.1
    best = record.asset_materialization.metadata["checkpoint"].value
    assert isinstance(best, str) and Path(best).is_relative_to(paths.root)
    checkpoint = load_torch(best)
    assert checkpoint["model_overrides"] == {"max_iter": 7}
    assert checkpoint["train_config"]["augment"]["enabled"] is False
