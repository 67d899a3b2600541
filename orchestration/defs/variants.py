"""Variants from experiments.yaml as dynamic `variant` partitions, registered by a sensor.

The sensor validates the whole file first (`ml_core.variants.load_variants`): on any problem it
registers nothing and its tick shows every problem with file, line, variant and setting. The
partitions are not yet the model dimension of fold x model (that stays the registered models).
"""

import os
from pathlib import Path

import dagster as dg

VARIANT_PARTITIONS = "variant"
variant_partitions = dg.DynamicPartitionsDefinition(name=VARIANT_PARTITIONS)


def variants_file() -> Path:
    """`experiments.yaml` at the project root, or the file named by `PAMAP_VARIANTS_FILE`."""
    from ml_core.variants import VARIANTS_FILE

    return Path(os.environ.get("PAMAP_VARIANTS_FILE", VARIANTS_FILE))


@dg.sensor(
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Register every variant of experiments.yaml (and the built-in ones) as a "
    "`variant` partition; an invalid file registers nothing.",
)
def variants_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult | dg.SkipReason:
    from ml_core.variants import VariantError, load_variants

    try:
        variants = load_variants(variants_file())
    except VariantError as exc:
        return dg.SkipReason(f"nothing registered, {len(exc.problems)} problem(s):\n{exc}")
    known = set(context.instance.get_dynamic_partitions(VARIANT_PARTITIONS))
    new = [v.name for v in variants if v.name not in known]
    if not new:
        return dg.SkipReason(f"all {len(variants)} variants are registered")
    context.log.info(f"registering {len(new)} variant(s): {', '.join(new)}")
    return dg.SensorResult(dynamic_partitions_requests=[variant_partitions.build_add_request(new)])
