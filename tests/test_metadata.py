"""Asset metadata the UI shows: typed tables, and table assets' column schemas derived from the
pandera schema."""

from __future__ import annotations

import math

import dagster as dg

from ml_core.data.ingest import TABLE_COLUMNS
from ml_core.data.schema import RECORDING_SCHEMA
from orchestration.definitions import defs as load_defs
from orchestration.metadata import column_schema, number, table

TABLE_ASSETS = ("raw_recording", "validated_recording", "imputed_recording", "activity_shards")


def test_a_table_keeps_every_row_and_types_its_columns() -> None:
    rows = [
        {"split": "train", "rows": 1200, "share": 0.7012345, "subjects": "101, 102", "ok": True},
        {"split": "test", "rows": 300, "share": math.nan, "subjects": "103", "ok": False},
    ]
    value = table(rows)
    assert isinstance(value, dg.TableMetadataValue)
    assert [(c.name, c.type) for c in value.schema.columns] == [
        ("split", "string"),
        ("rows", "int"),
        ("share", "float"),
        ("subjects", "string"),
        ("ok", "bool"),
    ]
    assert [r.data for r in value.records] == [
        {"split": "train", "rows": 1200, "share": 0.7012, "subjects": "101, 102", "ok": True},
        {"split": "test", "rows": 300, "share": None, "subjects": "103", "ok": False},
    ]


def test_an_empty_table_still_names_its_columns() -> None:
    value = table([], columns=["column", "check"])
    assert value.records == []
    assert [c.name for c in value.schema.columns] == ["column", "check"]


def test_the_column_schema_is_the_pandera_schema() -> None:
    schema = column_schema(RECORDING_SCHEMA)
    columns = {c.name: c for c in schema.columns}
    assert list(columns) == list(TABLE_COLUMNS)
    heart_rate = columns["heart_rate_bpm"]
    assert heart_rate.type == "Float32"
    assert heart_rate.constraints.other == ["in [30.0, 250.0] or NaN"]
    activity = columns["activity_id"]
    assert activity.type == "Int16" and not activity.constraints.nullable
    assert activity.constraints.other[0].startswith("isin([0, 1, 2")
    assert columns["subject_id"].constraints.other == [
        "isin([101, 102, 103, 104, 105, 106, 107, 108, 109])"
    ]


def test_every_table_asset_shows_its_column_schema() -> None:
    graph = load_defs().resolve_asset_graph()
    expected = column_schema(RECORDING_SCHEMA)
    for asset in TABLE_ASSETS:
        assert graph.get(dg.AssetKey(asset)).metadata["dagster/column_schema"] == expected, asset


def test_metric_numbers_are_rounded_and_stay_numbers() -> None:
    assert number(0.7059499977415516) == 0.7059
    assert number(0.00012345678) == 0.0001235
    assert number(12.0) == 12.0 and number(math.nan) is None and number(None) is None


def test_training_descriptions_say_that_materializing_all_trains_everything() -> None:
    graph = load_defs().resolve_asset_graph()
    for asset in ("trained_model", "evaluation_bundle"):
        description = graph.get(dg.AssetKey(asset)).description or ""
        assert "pamap demo" in description and "two models" in description, asset
        assert "trains every missing" in description or "training for each missing" in description
