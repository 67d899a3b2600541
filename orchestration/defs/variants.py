"""Variants as the `variant` partitions of fold x model: which variant a partition is, and the
sensor that registers every variant of experiments.yaml (and the built-in ones).

The sensor validates the whole file first (`ml_core.training.variants.load_variants`): on any
problem it registers nothing and its tick shows every problem with file, line, variant and setting.
"""

import os
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg

from orchestration.defs.partitions import VARIANT_PARTITIONS, variant_partitions

if TYPE_CHECKING:
    from ml_core.training.variants import Variant


def variants_file() -> Path:
    """`experiments.yaml` at the project root, or the file named by `PAMAP_VARIANTS_FILE`."""
    from ml_core.training.variants import VARIANTS_FILE

    return Path(os.environ.get("PAMAP_VARIANTS_FILE", VARIANTS_FILE))


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
    "`variant` partition of fold x model, and delete the partitions of variants removed from "
    "the file; an invalid file changes nothing.",
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
    if not new and not removed:
        return dg.SkipReason(f"all {len(variants)} variants are registered")
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if new:
        context.log.info(f"registering {len(new)} variant(s): {', '.join(new)}")
        requests.append(variant_partitions.build_add_request(new))
    if removed:
        context.log.info(f"removing {len(removed)} variant(s) gone from the file: {removed}")
        requests.append(variant_partitions.build_delete_request(removed))
    return dg.SensorResult(dynamic_partitions_requests=requests)
