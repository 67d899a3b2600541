"""One Dagster instance per data folder, and outputs whose files are gone are never reported
fresh: `pamap clean` removes a stage's files and wipes its assets together, and the
`files_present` checks name the partitions whose files were deleted by hand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest

from ml_core.paths import PROJECT_ROOT, DataPaths
from orchestration.clean import CleanRefused, clean
from orchestration.cli import main
from orchestration.definitions import defs as load_defs
from orchestration.defs.partitions import VARIANT_PARTITIONS
from orchestration.staleness import Staleness
from tests.integration.conftest import execute

FOLD = "holdout-106"
KEY = dg.MultiPartitionKey({"fold": FOLD, "model": "feature_gbm"})


def _register(root: Path, variants: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)  # each `pamap` is its own process
    assert main(["--data-root", str(root), "variants", "--register", "--file", str(variants)]) == 0


def test_each_data_folder_has_its_own_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PAMAP_DATA_ROOT", str(tmp_path))  # restored after `main` sets it
    monkeypatch.setenv("DAGSTER_HOME", "unset below")
    one, two = tmp_path / "one", tmp_path / "two"
    variants = tmp_path / "experiments.yaml"
    variants.write_text("variants:\n  only_in_one:\n    model: lstm\n")
    _register(one, variants, monkeypatch)
    variants.write_text("variants:\n  only_in_two:\n    model: lstm\n")
    _register(two, variants, monkeypatch)
    for root, own, other in (
        (one, "only_in_one", "only_in_two"),
        (two, "only_in_two", "only_in_one"),
    ):
        home = root / ".dagster"
        # The project's instance settings (run launcher, concurrency) come with it.
        assert (home / "dagster.yaml").read_bytes() == (PROJECT_ROOT / "dagster.yaml").read_bytes()
        monkeypatch.setenv("DAGSTER_HOME", str(home))
        with dg.DagsterInstance.get() as instance:
            partitions = instance.get_dynamic_partitions(VARIANT_PARTITIONS)
        assert own in partitions and other not in partitions

    # DAGSTER_HOME set by hand wins: nothing is created in the data folder.
    explicit, three = tmp_path / "explicit", tmp_path / "three"
    explicit.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(explicit))
    assert main(["--data-root", str(three), "variants", "--register", "--file", str(variants)]) == 0
    assert not (three / ".dagster").exists()
    with dg.DagsterInstance.get() as instance:
        assert "only_in_two" in instance.get_dynamic_partitions(VARIANT_PARTITIONS)


def _check_passed(instance: dg.DagsterInstance, asset: str) -> tuple[bool, dict]:
    result = execute("outputs_check_job", instance)
    assert result.success
    (evaluation,) = [
        e.event_specific_data
        for e in result.all_events
        if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION
        and e.event_specific_data.asset_key == dg.AssetKey(asset)  # type: ignore[union-attr]
    ]
    missing = evaluation.metadata["partitions_missing_files"].value  # type: ignore[union-attr]
    return evaluation.passed, missing  # type: ignore[union-attr]


def test_clean_wipes_what_it_removes_and_the_check_finds_files_removed_by_hand(
    copy_prepared: Callable[[], Path], tmp_path: Path
) -> None:
    paths = DataPaths(copy_prepared())
    (tmp_path / "home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "home")) as instance:
        assert execute("prepare_job", instance, FOLD).success
        assert execute("training_job", instance, KEY).success
        assert _check_passed(instance, "trained_model") == (True, {})
        assert _check_passed(instance, "evaluation_bundle") == (True, {})

        # A checkpoint deleted by hand: the instance still says materialized, the check names it.
        (best,) = (paths.root / "models" / FOLD / "feature_gbm").rglob("best.pt")
        best.unlink()
        passed, missing = _check_passed(instance, "trained_model")
        assert not passed and missing == {str(KEY): [str(best.relative_to(paths.root))]}
        assert _check_passed(instance, "evaluation_bundle") == (True, {})

        # Refused while a run is in progress: nothing wiped, nothing removed.
        running = dg.DagsterRun(job_name="training_job", status=dg.DagsterRunStatus.STARTED)
        instance.add_run(running)
        with pytest.raises(CleanRefused, match="1 run\\(s\\) in progress"):
            clean(instance, paths, ["train"])
        assert (paths.root / "evaluation").exists()
        instance.delete_run(running.run_id)

        removed = clean(instance, paths, ["train"])
        assert {p.name for p in removed} >= {"models", "evaluation"}
        assert not (paths.root / "models").exists() and (paths.root / "folds").exists()
        staleness = Staleness(instance, load_defs())
        for asset in ("trained_model", "evaluation_bundle"):
            assert staleness.status(asset, KEY).value == "MISSING", asset
        assert staleness.status("fold_manifests", FOLD).value == "FRESH"  # another stage: kept
        assert _check_passed(instance, "trained_model") == (True, {})


def test_pamap_clean_names_stages_and_uses_the_data_folders_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PAMAP_DATA_ROOT", str(tmp_path))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    root = tmp_path / "data"
    (root / "reports").mkdir(parents=True)
    (root / "reports" / "leaderboard.md").write_text("old")
    (root / "raw").mkdir()
    assert main(["--data-root", str(root), "clean", "report"]) == 0
    out = capsys.readouterr().out
    assert f"from the Dagster instance at {root / '.dagster'}" in out
    assert f"removed {root / 'reports'}" in out
    assert not (root / "reports").exists() and (root / "raw").exists()  # raw data is kept
    with pytest.raises(SystemExit):
        main(["--data-root", str(root), "clean", "raw"])
    assert "unknown stage 'raw'" in capsys.readouterr().err
    assert main(["--data-root", str(root), "clean"]) == 2  # nothing named
