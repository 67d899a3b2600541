"""What Dagster reports as missing or stale (the UI's "Missing" and "Stale" badges), per
partition, and the raw-file observation that makes a changed `.dat` file visible to it.

Dagster marks a partition stale when its code version changed or when one of the partitions it
read now has another data version. Staleness does not jump ahead: after a raw file changes only
that subject's `raw_recording` is stale; once it is re-materialized with new content, the next
asset is, and so on. `pamap demo` therefore asks stage by stage.
"""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._time import get_current_datetime

from ml_core.paths import DataPaths, default_data_root
from orchestration.defs.ingest import raw_file_events

PartitionKey = str | dg.MultiPartitionKey | None


def observe_raw_files(instance: dg.DagsterInstance, paths: DataPaths | None = None) -> list[str]:
    """Record what `raw_files_sensor` records, now: the new data version of `raw_files` for each
    subject whose files changed. Returns those subjects."""
    events = raw_file_events(instance, paths or DataPaths(default_data_root()))
    for event in events:
        instance.report_runless_asset_event(event)
    return sorted({str(e.partition) for e in events})


class Staleness:
    """One consistent reading of the instance: make a new one after materializing."""

    def __init__(self, instance: dg.DagsterInstance, defs: dg.Definitions) -> None:
        graph = defs.resolve_asset_graph()
        view = AssetGraphView(
            temporal_context=TemporalContext(
                effective_dt=get_current_datetime(), last_event_id=None
            ),
            instance=instance,
            asset_graph=graph,
        )
        self._resolver = CachingStaleStatusResolver(instance, graph, loading_context=view)

    def status(self, asset: str, partition: PartitionKey = None) -> StaleStatus:
        key = None if partition is None else str(partition)
        return self._resolver.get_status(dg.AssetKey(asset), key)

    def causes(self, asset: str, partition: PartitionKey = None) -> list[str]:
        """The root causes the UI lists, e.g. `raw_files[103] has a new data version`."""
        key = None if partition is None else str(partition)
        causes = self._resolver.get_stale_root_causes(dg.AssetKey(asset), key)
        return [f"{c.asset_key.to_user_string()}[{c.partition_key}] {c.reason}" for c in causes]

    def to_redo(self, chain: Sequence[str], partition: PartitionKey = None) -> list[str]:
        """The assets of a chain (in order, each reading the one before) to materialize: from the
        first that is missing or stale to the end."""
        for i, asset in enumerate(chain):
            if self.status(asset, partition) != StaleStatus.FRESH:
                return list(chain[i:])
        return []
