"""Variants as the `variant` partitions of fold x model: which variant a partition is, the
versioned record of each variant's settings (`variant_settings`), and the sensor that registers
every variant of experiments.yaml (and the built-in ones) and records their settings.

The sensor validates the whole file first (`ml_core.training.variants.load_variants`): on any
problem it registers nothing and its tick shows every problem with file, line, variant and setting.
"""

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from orchestration.defs.partitions import (
    VARIANT_PARTITIONS,
    register_variants,
    variant_partitions,
)

if TYPE_CHECKING:
    from ml_core.training.variants import Variant


def variants_file() -> Path:
    """`experiments.yaml` at the project root, or the file named by `PAMAP_VARIANTS_FILE`."""
    from ml_core.training.variants import VARIANTS_FILE

    return Path(os.environ.get("PAMAP_VARIANTS_FILE", VARIANTS_FILE))


# Where Dagster reads an event's data version (what `DataVersion` sets on the events it records).
DATA_VERSION_TAG = "dagster/data_version"

variant_settings = dg.AssetSpec(
    "variant_settings",
    partitions_def=variant_partitions,
    group_name="train",
    kinds={"yaml"},
    description="Each variant's resolved settings (the model with every argument, training and "
    "window settings, seeds; from experiments.yaml or a model's defaults), with a hash of them "
    "as its data version: editing a variant makes its `trained_model` partitions stale, and the "
    "UI names this asset as the cause. Recorded by `variants_sensor`, `pamap variants "
    "--register`, `pamap demo`, and by a training that finds them changed.",
)


def recorded_settings_version(instance: dg.DagsterInstance, name: str) -> str | None:
    """The data version of `variant_settings[name]` the instance last recorded."""
    records = instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=variant_settings.key, asset_partitions=[name]), limit=1
    ).records
    observation = records[0].asset_observation if records else None
    return observation.tags.get(DATA_VERSION_TAG) if observation else None


def variant_settings_events(
    instance: dg.DagsterInstance, variants: Sequence["Variant"]
) -> list[dg.AssetMaterialization | dg.AssetObservation]:
    """For each variant whose settings differ from what the instance last recorded, the new
    version: an observation (what staleness reads) and a materialization (what a run records
    as its input and declarative automation reads), as for the raw files. Nothing for the
    others."""
    events: list[dg.AssetMaterialization | dg.AssetObservation] = []
    for variant in variants:
        version = variant.settings_version()
        if recorded_settings_version(instance, variant.name) == version:
            continue
        metadata = {
            "model": variant.model,
            "origin": "built-in" if variant.builtin else f"{variants_file()}: {variant.entry}",
            "settings": dg.MetadataValue.json(variant.resolved_settings()),
            "overrides": dg.MetadataValue.json(variant.settings()),
        }
        for event in (dg.AssetObservation, dg.AssetMaterialization):
            events.append(
                event(
                    variant_settings.key,
                    partition=variant.name,
                    tags={DATA_VERSION_TAG: version},
                    metadata=metadata,
                )
            )
    return events


def record_variants(
    instance: dg.DagsterInstance, variants: Sequence["Variant"]
) -> tuple[list[str], list[str]]:
    """Register `variants` as partitions and record the settings of those whose settings
    changed. Returns (the variants added, the variants whose settings were recorded)."""
    new = register_variants(instance, [v.name for v in variants])
    events = variant_settings_events(instance, variants)
    for event in events:
        instance.report_runless_asset_event(event)
    return new, sorted({str(e.partition) for e in events})


def find_variant(name: str) -> "Variant":
    """The variant a partition names: a built-in one, else one of the variants file.

    A built-in variant does not read the file, so a broken file stops only its own variants.
    Raises ValueError naming the file when the variant is not there or the file is invalid.
    """
    from ml_core.training.variants import VariantError, builtin_variants, load_variants

    for variant in builtin_variants():
        if variant.name == name:
            return variant
    path = variants_file()
    try:
        variants = load_variants(path)
    except VariantError as exc:
        raise ValueError(f"variant {name!r}: {path} is invalid:\n{exc}") from None
    for variant in variants:
        if variant.name == name:
            return variant
    raise ValueError(
        f"variant {name!r} is neither a registered model nor a variant of {path} "
        "(renamed or removed since it was registered?)"
    )


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Register every variant of experiments.yaml (and the built-in ones) as a "
    "`variant` partition of fold x model, record the settings of each variant whose settings "
    "changed (`variant_settings`), and delete the partitions of variants removed from the "
    "file; an invalid file changes nothing.",
)
def variants_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    from ml_core.training.variants import VariantError, load_variants

    try:
        variants = load_variants(variants_file())
    except VariantError as exc:
        return dg.SkipReason(f"nothing registered, {len(exc.problems)} problem(s):\n{exc}")
    known = context.instance.get_dynamic_partitions(VARIANT_PARTITIONS)
    names = {v.name for v in variants}
    new = [v.name for v in variants if v.name not in known]
    # A variant removed from the file: its partitions go, so no backfill requests it again.
    removed = [name for name in known if name not in names]
    events = variant_settings_events(context.instance, variants)
    if not new and not removed and not events:
        return dg.SkipReason(f"all {len(variants)} variants are registered and recorded")
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if new:
        context.log.info(f"registering {len(new)} variant(s): {', '.join(new)}")
        requests.append(variant_partitions.build_add_request(new))
    if removed:
        context.log.info(f"removing {len(removed)} variant(s) gone from the file: {removed}")
        requests.append(variant_partitions.build_delete_request(removed))
    if events:
        changed = sorted({str(e.partition) for e in events})
        context.log.info(f"recording the settings of {len(changed)} variant(s): {changed}")
    return dg.SensorResult(dynamic_partitions_requests=requests, asset_events=events)
