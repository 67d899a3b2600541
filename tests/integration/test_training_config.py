"""Training config that fails early and is recorded: an enumerated run setting is rejected
before a run starts (the launchpad's validation), a bad variant setting fails once without
retries, and the architecture's own settings are settable and land in the model's metadata."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from ml_core.io import load_torch
from ml_core.paths import DataPaths
from orchestration.definitions import defs as load_defs
from orchestration.defs.partitions import register_variants
from tests.integration.conftest import execute

KEY = dg.MultiPartitionKey({"fold": "holdout-106", "model": "gbm"})
VARIANT = """variants:
  gbm:
    model: feature_gbm
    epochs: 1
    loss: focal
    augment: {enabled: false, jitter_std: 0.1}
    model_args:
      max_iter: 7
"""


def _training(**config: object) -> dict:
    return {"ops": {"trained_model": {"config": config}}}


def _variants(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str) -> Path:
    file = tmp_path / "experiments.yaml"
    file.write_text(text)
    monkeypatch.setenv("PAMAP_VARIANTS_FILE", str(file))
    return file


@pytest.mark.parametrize(("field", "bad"), [("device", "gpu")])
def test_a_bad_enumerated_value_is_rejected_before_the_run(field: str, bad: str) -> None:
    job = load_defs().resolve_job_def("training_job")
    with pytest.raises(dg.DagsterInvalidConfigError, match=f"{field}.*not in enum"):
        dg.validate_run_config(job, _training(**{field: bad}))
    dg.validate_run_config(job, _training())  # the defaults are valid


def test_a_bad_model_setting_fails_once_without_retries(
    copy_prepared: Callable[[], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_prepared()
    # The file broken after the variant was registered: the training names the problem.
    file = _variants(tmp_path, monkeypatch, VARIANT.replace("max_iter: 7", "depth: 3"))
    instance = dg.DagsterInstance.ephemeral()
    register_variants(instance, ["gbm"])
    job = load_defs().resolve_job_def("training_job")
    result = job.execute_in_process(instance=instance, partition_key=KEY, raise_on_error=False)
    assert not result.success
    events = [e for e in result.all_events if e.step_key == "trained_model"]
    assert not [e for e in events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    (failure,) = [e for e in events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    assert f"{file}:8: variant 'gbm', setting 'model_args.depth': unknown setting" in message


def test_model_settings_are_used_and_the_full_config_is_recorded(
    copy_prepared: Callable[[], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = DataPaths(copy_prepared())
    _variants(tmp_path, monkeypatch, VARIANT)
    instance = dg.DagsterInstance.ephemeral()
    assert execute("training_job", instance, KEY, _training(device="cpu")).success
    record = instance.get_latest_materialization_event(dg.AssetKey("trained_model"))
    assert record is not None and record.asset_materialization is not None
    config = record.asset_materialization.metadata["config"].value
    assert isinstance(config, dict)
    assert config["model_overrides"] == {"max_iter": 7}
    assert config["loss"] == "focal" and config["epochs"] == 1 and config["device"] == "cpu"
    assert config["window"]["class_set"] == "protocol12"
    assert config["augment"]["enabled"] is False and config["augment"]["jitter_std"] == 0.1
    best = record.asset_materialization.metadata["checkpoint"].value
    assert isinstance(best, str) and Path(best).is_relative_to(paths.root)
    checkpoint = load_torch(best)
    assert checkpoint["model_overrides"] == {"max_iter": 7}
    assert checkpoint["train_config"]["augment"]["enabled"] is False
