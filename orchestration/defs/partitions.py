"""Partition definitions: subjects, evaluation folds, and fold x variant.

The model dimension of fold x model holds variants (`ml_core.training.variants`): the built-in ones
(each registered model with its defaults, named after the model) and those of `experiments.yaml`.
It is the dynamic partitions definition `variant`, so a new variant appears without a code change;
`register_variants` (the sensor, `pamap variants --register` and `pamap demo` use it) adds them to
an instance. The dimension keeps the name `model`, so keys such as `holdout-106|feature_gbm` stay
what they were before variants.
"""

from collections.abc import Iterable

import dagster as dg

from ml_core.data.columns import SUBJECTS
from ml_core.data.folds import FOLD_NAMES

VARIANT_PARTITIONS = "variant"

subject_partitions = dg.StaticPartitionsDefinition([str(s) for s in SUBJECTS])
fold_partitions = dg.StaticPartitionsDefinition(FOLD_NAMES)
variant_partitions = dg.DynamicPartitionsDefinition(name=VARIANT_PARTITIONS)
fold_model_partitions = dg.MultiPartitionsDefinition(
    {"fold": fold_partitions, "model": variant_partitions}
)


def register_variants(instance: dg.DagsterInstance, names: Iterable[str]) -> list[str]:
    """Add the variant partitions `instance` does not have yet; returns the ones added."""
    known = set(instance.get_dynamic_partitions(VARIANT_PARTITIONS))
    new = list(dict.fromkeys(n for n in names if n not in known))
    if new:
        instance.add_dynamic_partitions(VARIANT_PARTITIONS, new)
    return new


def fold_and_variant(context: dg.AssetExecutionContext) -> tuple[str, str]:
    """The (fold, variant) of a fold x model run."""
    key = context.partition_key
    assert isinstance(key, dg.MultiPartitionKey), f"expected a fold|model key, got {key!r}"
    return key.keys_by_dimension["fold"], key.keys_by_dimension["model"]
