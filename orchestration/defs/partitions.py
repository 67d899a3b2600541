"""Partition definitions: subjects, evaluation folds, and fold x model."""

import dagster as dg

from ml_core.columns import SUBJECTS
from ml_core.folds import FOLD_NAMES
from ml_core.models import model_names

subject_partitions = dg.StaticPartitionsDefinition([str(s) for s in SUBJECTS])
fold_partitions = dg.StaticPartitionsDefinition(FOLD_NAMES)
model_partitions = dg.StaticPartitionsDefinition(model_names())
fold_model_partitions = dg.MultiPartitionsDefinition(
    {"fold": fold_partitions, "model": model_partitions}
)


def fold_and_model(context: dg.AssetExecutionContext) -> tuple[str, str]:
    """The (fold, model) of a multi-partitioned run."""
    key = context.partition_key
    assert isinstance(key, dg.MultiPartitionKey), f"expected a fold|model key, got {key!r}"
    return key.keys_by_dimension["fold"], key.keys_by_dimension["model"]
