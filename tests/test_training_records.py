"""What a fold x variant's files say about it: whether its latest training was evaluated under a
protocol, and which of its model and bundle files are gone (what `pamap demo` and the
`files_present` checks rely on)."""

from __future__ import annotations

from pathlib import Path

from ml_core.evaluation.evaluate import BUNDLE_FILES, BUNDLE_PLOTS
from ml_core.evaluation.protocol import (
    MODEL_FILES,
    EvaluationProtocol,
    evaluated_under,
    missing_bundle_files,
    missing_model_files,
    write_latest_training,
)
from ml_core.paths import DataPaths
from ml_core.training.config import TrainConfig

FOLD, VARIANT = "holdout-106", "lstm"


def _trained(tmp_path: Path, seeds: list[int]) -> tuple[DataPaths, str]:
    paths = DataPaths(tmp_path)
    protocol = EvaluationProtocol.of(TrainConfig())
    write_latest_training(paths.model_root(FOLD, VARIANT), protocol, seeds)
    for seed in seeds:
        model_dir = paths.model_dir(FOLD, VARIANT, protocol.id, seed)
        bundle = paths.evaluation_dir(FOLD, VARIANT, protocol.id, seed)
        for folder, names in ((model_dir, MODEL_FILES), (bundle, BUNDLE_FILES)):
            folder.mkdir(parents=True, exist_ok=True)
            for name in names:
                (folder / name).write_text("x")
    return paths, protocol.id


def test_nothing_is_missing_from_a_complete_training(tmp_path: Path) -> None:
    paths, protocol_id = _trained(tmp_path, [0, 1])
    assert missing_model_files(paths, FOLD, VARIANT) == []
    assert missing_bundle_files(paths, FOLD, VARIANT) == []
    assert evaluated_under(paths, FOLD, VARIANT, protocol_id)
    assert not evaluated_under(paths, FOLD, VARIANT, "p00000000")  # another protocol


def test_removed_files_are_named_relative_to_the_data_root(tmp_path: Path) -> None:
    paths, protocol_id = _trained(tmp_path, [0, 1])
    (paths.model_dir(FOLD, VARIANT, protocol_id, 1) / "best.pt").unlink()
    summary = paths.evaluation_dir(FOLD, VARIANT, protocol_id, 0) / "summary_metrics.json"
    summary.unlink()
    assert missing_model_files(paths, FOLD, VARIANT) == [
        f"models/{FOLD}/{VARIANT}/{protocol_id}/seed-1/best.pt"
    ]
    assert missing_bundle_files(paths, FOLD, VARIANT) == [str(summary.relative_to(paths.root))]
    assert not evaluated_under(paths, FOLD, VARIANT, protocol_id)


def test_without_a_training_record_the_record_is_what_is_missing(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path)
    record = f"models/{FOLD}/{VARIANT}/latest.json"
    assert missing_model_files(paths, FOLD, VARIANT) == [record]
    assert missing_bundle_files(paths, FOLD, VARIANT) == [record]
    assert not evaluated_under(paths, FOLD, VARIANT, "p00000000")


def test_every_plot_is_a_bundle_file() -> None:
    names = [name for name, _, _ in BUNDLE_PLOTS]
    assert len(set(names)) == len(names) == 4
    assert {file for _, file, _ in BUNDLE_PLOTS} <= set(BUNDLE_FILES)
