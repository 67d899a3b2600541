"""Champion selection: the best complete variant within the ECE bound, whatever its kind; any
variant but the baseline must beat the baseline."""

from __future__ import annotations

from dataclasses import replace

from ml_core.lifecycle.champion import ChampionGates, LeaderboardRow, select_champion

LOSO = tuple(f"loso-{s}" for s in range(101, 110))
GATES = ChampionGates(baseline="feature_gbm", max_ece=0.1, min_margin=0.0)


def _row(variant: str, f1: float, ece: float = 0.05, **changes) -> LeaderboardRow:
    row = LeaderboardRow(
        variant=variant,
        protocol_id=f"p-{variant}",
        class_set="protocol12",
        folds=LOSO,
        complete=True,
        pooled_loso_macro_f1=f1,
        ece=ece,
        run_id=f"r-{variant}",
        source_dir=f"models/holdout-106/{variant}/p-{variant}/seed-0",
    )
    return replace(row, **changes)


def test_the_best_variant_past_every_gate_wins():
    rows = [
        _row("feature_gbm", 0.80),
        _row("lstm", 0.84),
        _row("tcn_focal", 0.90, ece=0.25),  # best F1, badly calibrated
        _row("big_sweep-lr=0.001", 0.95, complete=False),  # best F1, not every fold
        _row("hier", 0.79),  # worse than the baseline
        _row("all18", 0.99, class_set="all18"),  # another task: not comparable
        _row("few_folds", 0.97, folds=LOSO[:3]),
        _row("temporal_cnn", 0.86),
    ]
    selection = select_champion(rows, GATES)
    assert selection.champion is not None and selection.champion.variant == "temporal_cnn"
    assert selection.baseline is not None and selection.baseline.variant == "feature_gbm"
    reasons = selection.rejected
    assert set(reasons) == {r.variant for r in rows} - {"temporal_cnn"}
    assert "ECE 0.2500 above the bound 0.1" in reasons["tcn_focal"]
    assert reasons["big_sweep-lr=0.001"].startswith("incomplete")
    assert "does not beat the baseline's 0.8000" in reasons["hier"]
    assert "class set all18" in reasons["all18"]
    assert "other folds" in reasons["few_folds"]
    assert "below temporal_cnn's 0.8600" in reasons["lstm"]


def test_the_margin_and_ties():
    rows = [_row("feature_gbm", 0.80), _row("a", 0.82, ece=0.06), _row("b", 0.82, ece=0.04)]
    assert select_champion(rows, GATES).champion.variant == "b"  # same F1: lower ECE
    strict = replace(GATES, min_margin=0.05)
    assert select_champion(rows, strict).champion.variant == "feature_gbm"  # nothing beats it


def test_no_champion_without_a_complete_baseline():
    rows = [_row("feature_gbm", 0.80, complete=False), _row("lstm", 0.95)]
    selection = select_champion(rows, GATES)
    assert selection.champion is None and selection.baseline is None
    assert "baseline feature_gbm has no complete entry" in selection.rejected["lstm"]


def test_the_baseline_is_the_champion_when_it_is_the_best():
    rows = [_row("feature_gbm", 0.80), _row("lstm", 0.70), _row("tcn", 0.9, run_id=None)]
    selection = select_champion(rows, GATES)
    assert selection.champion is selection.baseline and selection.baseline.variant == "feature_gbm"
    assert selection.rejected["tcn"] == "no training run with a checkpoint to register"
    assert "does not beat the baseline's 0.8000" in selection.rejected["lstm"]


def test_nothing_past_the_gates_means_no_champion():
    rows = [_row("feature_gbm", 0.80, ece=0.3), _row("lstm", 0.70)]
    selection = select_champion(rows, GATES)
    assert selection.champion is None
    assert "ECE 0.3000 above the bound" in selection.rejected["feature_gbm"]
