"""The variants sensor registers the file's variants as dynamic partitions, or nothing."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from ml_core.models import model_names
from orchestration.cli import main
from orchestration.defs.variants import VARIANT_PARTITIONS, variants_sensor


def _tick(instance: dg.DagsterInstance) -> dg.SensorResult | dg.SkipReason:
    result = variants_sensor(dg.build_sensor_context(instance=instance))
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result


def _apply(instance: dg.DagsterInstance, result: dg.SensorResult | dg.SkipReason) -> None:
    # What the daemon does with the tick's requests.
    assert isinstance(result, dg.SensorResult)
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(
                request.partitions_def_name, list(request.partition_keys)
            )
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    for event in result.asset_events or []:  # the variants' settings
        instance.report_runless_asset_event(event)  # type: ignore[arg-type]


def test_sensor_registers_new_variants_and_nothing_from_a_bad_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = tmp_path / "experiments.yaml"
    monkeypatch.setenv("PAMAP_VARIANTS_FILE", str(file))
    file.write_text("variants:\n  s:\n    model: lstm\n    lr: [0.01, 0.001]\n")
    instance = dg.DagsterInstance.ephemeral()

    first = _tick(instance)
    _apply(instance, first)
    registered = instance.get_dynamic_partitions(VARIANT_PARTITIONS)
    assert sorted(registered) == sorted([*model_names(), "s-lr=0.01", "s-lr=0.001"])
    assert isinstance(first, dg.SensorResult)
    recorded = {str(e.partition) for e in first.asset_events if isinstance(e, dg.AssetObservation)}
    assert recorded == set(registered)  # every variant's settings, versioned
    assert isinstance(_tick(instance), dg.SkipReason)  # nothing new

    # One more variant and one bad one: the tick names the problem and registers nothing.
    file.write_text(
        "variants:\n  s:\n    model: lstm\n    lr: [0.01, 0.001, 0.1]\n"
        "  t:\n    model: lstm\n    epochs: 0\n"
    )
    skipped = _tick(instance)
    assert isinstance(skipped, dg.SkipReason)
    assert f"{file}:7: variant 't', setting 'epochs'" in str(skipped.skip_message)
    assert sorted(instance.get_dynamic_partitions(VARIANT_PARTITIONS)) == sorted(registered)

    # Fixed: only the new variant is requested.
    file.write_text("variants:\n  s:\n    model: lstm\n    lr: [0.01, 0.001, 0.1]\n")
    result = _tick(instance)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.dynamic_partitions_requests or []
    assert list(request.partition_keys) == ["s-lr=0.1"]
    _apply(instance, result)

    # A variant removed from the file (and a whole entry): its partitions are deleted, so the
    # weekly backfill no longer requests (and fails) them; built-in variants stay.
    file.write_text("variants:\n  s:\n    model: lstm\n    lr: [0.01, 0.1]\n")
    result = _tick(instance)
    assert isinstance(result, dg.SensorResult)
    (request,) = result.dynamic_partitions_requests or []
    assert isinstance(request, dg.DeleteDynamicPartitionsRequest)
    assert list(request.partition_keys) == ["s-lr=0.001"]
    _apply(instance, result)
    assert sorted(instance.get_dynamic_partitions(VARIANT_PARTITIONS)) == sorted(
        [*model_names(), "s-lr=0.01", "s-lr=0.1"]
    )
    file.write_text("variants:\n  u:\n    model: lstm\n    epochs: 3\n")
    _apply(instance, _tick(instance))
    assert sorted(instance.get_dynamic_partitions(VARIANT_PARTITIONS)) == sorted(
        [*model_names(), "u"]
    )


def test_cli_registers_the_files_variants_in_the_project_instance_or_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("PAMAP_DATA_ROOT", str(tmp_path / "data"))  # main() sets it; restored
    file = tmp_path / "experiments.yaml"
    file.write_text(
        "variants:\n  s:\n    model: lstm\n    lr: [0.01, 0.001]\n"
        "  bad:\n    model: lstm\n    model_args:\n      hiden: 3\n"
    )
    assert main(["variants", "--file", str(file), "--register"]) == 1
    assert "variant 'bad', setting 'model_args.hiden'" in capsys.readouterr().err
    with dg.DagsterInstance.get() as instance:
        assert instance.get_dynamic_partitions(VARIANT_PARTITIONS) == []

    file.write_text("variants:\n  s:\n    model: lstm\n    lr: [0.01, 0.001]\n")
    assert main(["variants", "--file", str(file), "--register"]) == 0
    with dg.DagsterInstance.get() as instance:
        registered = instance.get_dynamic_partitions(VARIANT_PARTITIONS)
    assert sorted(registered) == sorted([*model_names(), "s-lr=0.01", "s-lr=0.001"])
    assert main(["variants", "--file", str(file), "--register"]) == 0  # again: nothing new
    assert "registered 0 new variant partition(s)" in capsys.readouterr().out
