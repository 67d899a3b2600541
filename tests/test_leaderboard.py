"""Leaderboard aggregation over folds, its markdown table, plot and files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from ml_core.leaderboard import (
    MISSING,
    STD_DDOF,
    build_leaderboard,
    leaderboard_markdown,
    leaderboard_plot,
    write_leaderboard,
)

LOSO = [f"loso-{s}" for s in range(101, 110)]


def records_for(model: str, folds: list[str], rng: np.random.Generator) -> list[dict]:
    return [
        {
            "fold": f,
            "model": model,
            "macro_f1": float(rng.uniform(0.4, 0.95)),
            "accuracy": float(rng.uniform(0.5, 0.99)),
        }
        for f in folds
    ]


@pytest.fixture
def records() -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        *records_for("lstm", ["stratified", "holdout-106", *LOSO], rng),
        *records_for("temporal_cnn", ["stratified", *LOSO[:4]], rng),
        *records_for("feature_gbm", ["stratified", "holdout-106"], rng),
        *records_for("early_fusion", ["holdout-106", LOSO[0]], rng),
    ]


def row(board: dict, model: str) -> dict:
    return next(r for r in board["rows"] if r["model"] == model)


def test_loso_mean_std_equal_numpy(records: list[dict]) -> None:
    board = build_leaderboard(records)
    for model in ("lstm", "temporal_cnn"):
        mine = [r for r in records if r["model"] == model and r["fold"].startswith("loso-")]
        loso = row(board, model)["loso"]
        assert loso["n_folds"] == len(mine)
        for key in ("macro_f1", "accuracy"):
            values = np.array([r[key] for r in mine])
            assert loso[f"{key}_mean"] == pytest.approx(values.mean())
            assert loso[f"{key}_std"] == pytest.approx(values.std(ddof=STD_DDOF))
    assert STD_DDOF == 1
    # One fold: no spread to estimate.
    assert row(board, "early_fusion")["loso"]["macro_f1_std"] is None


def test_order_gap_and_missing_protocols(records: list[dict]) -> None:
    board = build_leaderboard(records)
    models = [r["model"] for r in board["rows"]]
    with_loso = [r for r in board["rows"] if r["loso"] is not None]
    means = [r["loso"]["macro_f1_mean"] for r in with_loso]
    assert means == sorted(means, reverse=True)
    assert models[-1] == "feature_gbm"  # no LOSO results: last
    assert row(board, "feature_gbm")["loso"] is None
    assert row(board, "temporal_cnn")["holdout-106"] is None
    lstm = row(board, "lstm")
    strat = next(r for r in records if r["model"] == "lstm" and r["fold"] == "stratified")
    assert lstm["gap_macro_f1"] == pytest.approx(strat["macro_f1"] - lstm["loso"]["macro_f1_mean"])
    assert row(board, "early_fusion")["gap_macro_f1"] is None  # no stratified result


def test_markdown_table(records: list[dict]) -> None:
    board = build_leaderboard(records)
    text = leaderboard_markdown(board, "PAMAP2 leaderboard")
    lines = text.splitlines()
    assert lines[0] == "# PAMAP2 leaderboard"
    assert "LOSO macro F1 (mean ± std, n folds)" in lines[2]
    assert "ddof=1" in text
    table = [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [line.split(" | ")[1] for line in table] == [r["model"] for r in board["rows"]]
    gbm = next(line for line in table if "feature_gbm" in line)
    assert gbm.split(" | ")[2] == MISSING  # LOSO cell
    lstm_loso = row(board, "lstm")["loso"]
    expected = f"{lstm_loso['macro_f1_mean']:.3f} ± {lstm_loso['macro_f1_std']:.3f} (n=9)"
    assert expected in next(line for line in table if "| lstm |" in line)
    early = next(line for line in table if "early_fusion" in line)
    assert f"± {MISSING} (n=1)" in early


def test_invalid_records_are_rejected() -> None:
    good = {"fold": "stratified", "model": "lstm", "macro_f1": 0.8, "accuracy": 0.9}
    with pytest.raises(ValueError, match="record 1: duplicate result for lstm on stratified"):
        build_leaderboard([good, dict(good)])
    with pytest.raises(ValueError, match="record 0: field 'fold'"):
        build_leaderboard([{**good, "fold": "loso-110"}])
    with pytest.raises(ValueError, match="record 0: missing field 'accuracy'"):
        build_leaderboard([{k: v for k, v in good.items() if k != "accuracy"}])
    with pytest.raises(ValueError, match="record 0: field 'macro_f1'"):
        build_leaderboard([{**good, "macro_f1": float("nan")}])


def test_write_leaderboard_files(records: list[dict], tmp_path: Path) -> None:
    board = build_leaderboard(records)
    paths = write_leaderboard(board, tmp_path, "PAMAP2 leaderboard")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "leaderboard.json",
        "leaderboard.md",
        "leaderboard.png",
    ]
    saved = json.loads(paths["json"].read_text())
    assert saved["rows"] == board["rows"]
    assert paths["markdown"].read_text() == leaderboard_markdown(board, "PAMAP2 leaderboard")
    image = imread(paths["plot"])
    assert image.shape[0] >= 400 and image.shape[1] >= 600
    assert image.std() > 0.01


def test_empty_leaderboard_renders(tmp_path: Path) -> None:
    board = build_leaderboard([])
    assert board["rows"] == []
    assert MISSING in leaderboard_markdown(board, "empty")
    assert imread(leaderboard_plot(board, tmp_path / "empty.png", "empty")).shape[0] > 0
