"""bench/results.py: the results page is the stored leaderboard's tables, with what produced
them (command, date, commit, protocol, synthetic or not), and fails clearly without one."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from ml_core.evaluation.leaderboard import build_leaderboard, write_leaderboard
from tests.test_leaderboard import ALL_FOLDS, PROTOCOL, result

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "results.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_results", SCRIPT)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_page_carries_the_leaderboard_and_its_provenance(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    results = [result(m, f, q, rng) for m, q in (("a", 0.8), ("b", 0.5)) for f in ALL_FOLDS]
    write_leaderboard(
        build_leaderboard(results), tmp_path / "reports", "PAMAP2 leaderboard (synthetic data)"
    )
    out = tmp_path / "docs" / "results.md"
    command = "uv run pamap demo --models a b"
    script = load_script()
    assert (
        script.main(["--root", str(tmp_path), "--out", str(out), "--command", command, "--image"])
        == 0
    )
    page = out.read_text()
    board = json.loads((tmp_path / "reports" / "leaderboard.json").read_text())
    rows = board["protocols"][0]["rows"]
    assert page.startswith("# Results\n")
    assert "**synthetic**" in page and f"`{command}`" in page
    assert f"commit `{script.commit()}`" in page
    assert PROTOCOL.id in page and "leaderboard written 2" in page
    # The ranked table's first row is the stored leaderboard's, number for number.
    ranked = next(line for line in page.splitlines() if line.startswith("| 1 | a |"))
    assert f"{rows[0]['pooled_loso']['macro_f1']:.3f}" in ranked
    assert "Per-fold test macro F1" in page and "calibration" in page
    assert (tmp_path / "docs" / "images" / "leaderboard.png").is_file()
    assert "](images/leaderboard.png)" in page


def test_results_page_needs_a_leaderboard(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="no leaderboard"):
        load_script().main(["--root", str(tmp_path), "--out", str(tmp_path / "r.md")])
