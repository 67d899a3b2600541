"""Every asset's code_version is derived from the `ml_core` modules its compute imports: editing
one of them changes the version (Dagster marks the asset stale), editing an unrelated module
does not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ml_core.paths import PROJECT_ROOT
from orchestration.code_versions import asset_modules, code_version

DEFS = PROJECT_ROOT / "orchestration" / "defs"
# Asset -> the module and function that compute it.
COMPUTES = {
    "raw_recording": ("ingest.py", "raw_recording"),
    "imputed_recording": ("ingest.py", "imputed_recording"),
    "feature_stats": ("prepare.py", "feature_stats"),
    "trained_model": ("train.py", "trained_model"),
    "evaluation_bundle": ("train.py", "evaluation_bundle"),
    "leaderboard": ("report.py", "leaderboard"),
    "activity_timeline": ("timeline.py", "activity_timeline"),
}


def test_the_code_location_uses_the_derived_versions() -> None:
    from orchestration.definitions import defs

    graph = defs().resolve_asset_graph()
    for asset, (file, function) in COMPUTES.items():
        node = graph.get(next(k for k in graph.materializable_asset_keys if k.path == [asset]))
        assert node.code_version == code_version(DEFS / file, function), asset
    versions = [graph.get(k).code_version for k in graph.materializable_asset_keys]
    assert all(v and len(v) == 12 for v in versions)


def test_an_assets_modules_are_what_it_imports_transitively() -> None:
    trained = asset_modules(DEFS / "train.py", "trained_model")
    # What its compute calls, what that imports (also inside functions), the models the
    # registry names in strings, and the variants file reader reached through
    # orchestration.defs.variants.find_variant.
    for module in (
        "ml_core.pipeline",
        "ml_core.training.train",
        "ml_core.data.stats",
        "ml_core.data.folds",
        "ml_core.models.lstm",
        "ml_core.training.variants",
    ):
        assert module in trained, module
    ingest = asset_modules(DEFS / "ingest.py", "raw_recording")
    assert "ml_core.data.ingest" in ingest and "ml_core.models.lstm" not in ingest


def _copy_project(tmp_path: Path) -> Path:
    for package in ("ml_core", "orchestration"):
        shutil.copytree(
            PROJECT_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    return tmp_path


@pytest.mark.parametrize(
    ("edited", "changed", "unchanged"),
    [
        # A model's module: the trainings change, ingest does not import it.
        ("ml_core/models/lstm.py", {"trained_model"}, {"raw_recording", "feature_stats"}),
        # Training code: every result of a training changes, the data steps do not.
        (
            "ml_core/training/train.py",
            {"trained_model", "evaluation_bundle", "leaderboard"},
            {"raw_recording", "imputed_recording", "feature_stats"},
        ),
        # The timeline code: only the timelines import it.
        (
            "ml_core/lifecycle/timeline.py",
            {"activity_timeline"},
            {"trained_model", "raw_recording"},
        ),
        # Fold statistics, which the hand-kept lists once missed for trained_model.
        ("ml_core/data/stats.py", {"feature_stats", "trained_model"}, set()),
    ],
)
def test_editing_a_module_changes_the_versions_of_exactly_the_assets_that_import_it(
    tmp_path: Path, edited: str, changed: set[str], unchanged: set[str]
) -> None:
    root = _copy_project(tmp_path)

    def versions() -> dict[str, str]:
        return {
            asset: code_version(root / "orchestration" / "defs" / file, function, root)
            for asset, (file, function) in COMPUTES.items()
        }

    before = versions()
    path = root / edited
    path.write_text(path.read_text() + "\n\ndef added() -> int:\n    return 1\n")
    after = versions()
    assert {a for a in changed if after[a] != before[a]} == changed
    assert {a for a in unchanged if after[a] == before[a]} == unchanged
