"""A variant's settings are a versioned input of its models: editing a variant in the variants
file makes exactly that variant's `trained_model` partitions stale, naming `variant_settings` as
the cause, and the launchpad cannot set anything that changes a result."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from ml_core.training.variants import load_variants
from orchestration.definitions import defs as load_defs
from orchestration.defs.variants import recorded_settings_version, variants_sensor
from orchestration.staleness import Staleness
from tests.integration.conftest import execute

FOLD = "holdout-106"
VARIANTS = """variants:
  small:
    model: feature_gbm
    model_args:
      max_iter: 3
  wide:
    model: feature_gbm
    model_args:
      max_iter: 3
      max_leaf_nodes: 8
"""


def _key(variant: str) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"fold": FOLD, "model": variant})


def _status(instance: dg.DagsterInstance, variant: str) -> str:
    return Staleness(instance, load_defs()).status("trained_model", _key(variant)).value


def _sensor_tick(instance: dg.DagsterInstance) -> None:
    """What `variants_sensor` records in one tick, recorded (as the daemon does)."""
    with dg.build_sensor_context(instance=instance) as context:
        result = variants_sensor(context)
    assert isinstance(result, dg.SensorResult), result
    for event in result.asset_events or []:
        instance.report_runless_asset_event(event)  # type: ignore[arg-type]


def test_editing_a_variant_makes_only_its_models_stale(
    copy_prepared: Callable[[], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy_prepared()
    file = tmp_path / "experiments.yaml"
    file.write_text(VARIANTS)
    monkeypatch.setenv("PAMAP_VARIANTS_FILE", str(file))
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        for variant in ("small", "wide"):
            assert execute("training_job", instance, _key(variant)).success, variant
        assert {_status(instance, v) for v in ("small", "wide")} == {"FRESH"}
        _sensor_tick(instance)  # nothing changed: nothing recorded, nothing stale
        assert {_status(instance, v) for v in ("small", "wide")} == {"FRESH"}

        # One variant edited: once the sensor records it, only its models are stale, and the
        # UI's cause names its settings.
        file.write_text(VARIANTS.replace("max_leaf_nodes: 8", "max_leaf_nodes: 6"))
        _sensor_tick(instance)
        assert (_status(instance, "small"), _status(instance, "wide")) == ("FRESH", "STALE")
        causes = Staleness(instance, load_defs()).causes("trained_model", _key("wide"))
        assert causes == ["variant_settings[wide] has a new data version"]
        record = instance.fetch_observations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey("variant_settings"), asset_partitions=["wide"]
            ),
            limit=1,
        ).records[0]
        settings = record.asset_observation.metadata["settings"].value  # type: ignore[union-attr]
        assert settings["model_overrides"]["max_leaf_nodes"] == 6  # type: ignore[index]
        assert execute("training_job", instance, _key("wide")).success
        assert _status(instance, "wide") == "FRESH"

        # Edited again with no sensor running: the training records the new settings itself and
        # restarts, so its result names the settings it was trained with.
        file.write_text(VARIANTS.replace("max_leaf_nodes: 8", "max_leaf_nodes: 5"))
        job = load_defs().resolve_job_def("training_job")  # launched as is, nothing recorded
        result = job.execute_in_process(
            instance=instance, partition_key=_key("wide"), raise_on_error=False
        )
        assert result.success
        retries = [
            e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
        ]
        assert len(retries) == 1
        (wide,) = [v for v in load_variants(file) if v.name == "wide"]
        assert recorded_settings_version(instance, "wide") == wide.settings_version()
        assert (_status(instance, "small"), _status(instance, "wide")) == ("FRESH", "FRESH")


@pytest.mark.parametrize("setting", [{"epochs": 1}, {"class_set": "all18"}, {"lr": 0.1}])
def test_the_launchpad_cannot_set_what_changes_a_result(
    copy_prepared: Callable[[], Path], setting: dict
) -> None:
    paths = copy_prepared()
    instance = dg.DagsterInstance.ephemeral()
    run_config = {"ops": {"trained_model": {"config": {"device": "cpu", **setting}}}}
    result = execute("training_job", instance, _key("feature_gbm"), run_config)
    assert not result.success
    events = [e for e in result.all_events if e.step_key == "trained_model"]
    assert not [e for e in events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY]
    (failure,) = [e for e in events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
    message = failure.step_failure_data.error.message  # type: ignore[union-attr]
    name = next(iter(setting))
    assert f"the run config sets {name}, which would change the result" in message
    assert "may set only device, compile, deterministic and resume" in message
    assert not (paths / "models").exists()
