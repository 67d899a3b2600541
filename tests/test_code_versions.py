"""Every asset's code_version moves with the `ml_core` source it runs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from orchestration import code_versions
from orchestration.code_versions import CODE_VERSIONS, SOURCES, recorded, source_hash


def test_every_asset_source_is_recorded_with_its_current_version() -> None:
    table = recorded()
    assert set(table) == set(CODE_VERSIONS) == set(SOURCES)
    stale = [
        asset
        for asset, version in CODE_VERSIONS.items()
        if table[asset] != {"version": version, "source_sha256": source_hash(asset)}
    ]
    assert not stale, (
        f"the code of {stale} changed: bump their CODE_VERSIONS in orchestration/code_versions.py, "
        "then run `uv run python -m orchestration.code_versions --record`"
    )


def test_the_code_location_uses_these_versions() -> None:
    from orchestration.definitions import defs

    graph = defs().resolve_asset_graph()
    versions = {
        key.to_user_string(): graph.get(key).code_version for key in graph.materializable_asset_keys
    }
    assert versions == CODE_VERSIONS


def test_an_edited_step_needs_a_version_bump(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = code_versions.PROJECT_ROOT
    shutil.copytree(root / "ml_core", tmp_path / "ml_core")
    record = tmp_path / "code_versions.json"
    shutil.copy(code_versions.RECORD, record)
    monkeypatch.setattr(code_versions, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(code_versions, "RECORD", record)
    assert code_versions.record() == []  # unchanged source: nothing to bump

    impute = tmp_path / "ml_core" / "data" / "impute.py"
    impute.write_text(impute.read_text().replace("25", "31", 1))
    shards = tmp_path / "ml_core" / "data" / "pipeline.py"
    # An edit to one function changes only the asset that runs it.
    shards.write_text(shards.read_text().replace('"written": passed,', '"written": True,'))
    assert code_versions.record() == ["imputed_recording", "activity_shards"]

    monkeypatch.setitem(CODE_VERSIONS, "imputed_recording", "2")
    monkeypatch.setitem(CODE_VERSIONS, "activity_shards", "2")
    assert code_versions.record() == []
    assert recorded()["imputed_recording"]["version"] == "2"


def test_a_refactor_is_recorded_without_a_bump(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(code_versions.PROJECT_ROOT / "ml_core", tmp_path / "ml_core")
    record = tmp_path / "code_versions.json"
    shutil.copy(code_versions.RECORD, record)
    monkeypatch.setattr(code_versions, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(code_versions, "RECORD", record)
    before = recorded()["imputed_recording"]

    impute = tmp_path / "ml_core" / "data" / "impute.py"
    impute.write_text(impute.read_text() + "\n# moved here from another module\n")
    assert code_versions.record(refactor=True) == []
    after = recorded()["imputed_recording"]
    assert after["version"] == before["version"]  # materialized partitions stay current
    assert after["source_sha256"] != before["source_sha256"]
    assert code_versions.record() == []  # the new source is now the recorded one
