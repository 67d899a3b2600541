"""Leaderboard: protocols kept apart, honest LOSO aggregation, ranking only among equals."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from scipy.stats import wilcoxon
from sklearn.metrics import f1_score

from ml_core.data.columns import PROTOCOL_ACTIVITIES
from ml_core.evaluation.leaderboard import (
    HEADER,
    MISSING,
    Result,
    build_leaderboard,
    holm_adjusted,
    leaderboard_markdown,
    leaderboard_rows,
    leaderboard_tracking,
    missing_folds,
    pooled_loso,
    sweep_summary,
    write_leaderboard,
)
from ml_core.evaluation.protocol import EvaluationProtocol, LegacyProtocolError
from ml_core.training.config import TrainConfig

LOSO = [f"loso-{s}" for s in range(101, 110)]
ALL_FOLDS = ["stratified", "holdout-106", *LOSO]
PROTOCOL = EvaluationProtocol(256, 128, 1, "protocol12")
OTHER = EvaluationProtocol(128, 64, 2, "protocol11")
TRAINING = TrainConfig().training_settings()


def result(
    model: str,
    fold: str,
    skill: float,
    rng: np.random.Generator,
    seed: int = 0,
    protocol: EvaluationProtocol = PROTOCOL,
    variant: str = "",
    settings: dict | None = None,
    training: dict | None = None,
) -> Result:
    """A fold's predictions: correct with probability `skill`, else a random class."""
    classes = np.array([24]) if fold == "loso-109" else np.array(PROTOCOL_ACTIVITIES[:-1])
    y = rng.choice(classes, size=60)
    wrong = rng.choice(PROTOCOL_ACTIVITIES, size=60)
    pred = np.where(rng.random(60) < skill, y, wrong)
    present = np.unique(y)
    return Result(
        model=model,
        fold=fold,
        protocol=protocol,
        seed=seed,
        y_true=y,
        y_pred=pred,
        macro_f1=float(f1_score(y, pred, labels=present, average="macro")),
        accuracy=float((y == pred).mean()),
        val_macro_f1=0.9,
        calibration={"ece_before": 0.2, "ece_after": 0.1, "nll_before": 1.0, "nll_after": 0.9},
        variant=variant,
        settings=settings or {},
        training=TRAINING if training is None else training,
    )


def section(board: dict, protocol: EvaluationProtocol = PROTOCOL) -> dict:
    return next(s for s in board["protocols"] if s["protocol"]["id"] == protocol.id)


def entry(board: dict, model: str, protocol: EvaluationProtocol = PROTOCOL) -> dict:
    return next(e for e in section(board, protocol)["rows"] if e["model"] == model)


def test_loso_109_is_apart_from_the_mean_but_in_the_pooled_result() -> None:
    rng = np.random.default_rng(0)
    without = [result("lstm", f, 0.6, rng) for f in LOSO[:-1]]
    perfect_109 = result("lstm", "loso-109", 1.0, rng)
    assert perfect_109.macro_f1 == 1.0
    before = entry(build_leaderboard(without), "lstm")
    after = entry(build_leaderboard([*without, perfect_109]), "lstm")
    assert after["loso"]["macro_f1_mean"] == before["loso"]["macro_f1_mean"]
    assert after["loso"]["macro_f1_std"] == before["loso"]["macro_f1_std"]
    assert after["loso"]["macro_f1_mean"] == pytest.approx(np.mean([r.macro_f1 for r in without]))
    assert after["apart"]["loso-109"]["macro_f1"] == 1.0
    assert after["pooled_loso"]["n_windows"] == before["pooled_loso"]["n_windows"] + 60
    assert "loso-109" in after["pooled_loso"]["folds"]


def test_pooled_loso_equals_sklearn_on_concatenated_predictions() -> None:
    rng = np.random.default_rng(1)
    results = [result("cnn", f, 0.7, rng) for f in LOSO]
    pooled = pooled_loso(results)
    y = np.concatenate([r.y_true for r in results])
    pred = np.concatenate([r.y_pred for r in results])
    expected = f1_score(y, pred, labels=np.unique(y), average="macro")
    assert pooled["macro_f1"] == pytest.approx(expected)
    assert pooled["accuracy"] == pytest.approx((y == pred).mean())
    assert pooled["ci_low"] <= pooled["macro_f1"] <= pooled["ci_high"]
    assert pooled["ci_high"] - pooled["ci_low"] > 0.0
    assert pooled_loso(results) == pooled  # the bootstrap is seeded: same CI every time


def test_bootstrap_resamples_subjects_not_windows() -> None:
    # Every fold identical: resampling people changes nothing, so the CI has no width,
    # however many (overlapping) windows each person contributes.
    rng = np.random.default_rng(2)
    one = result("cnn", "loso-101", 0.7, rng)
    same = [
        Result(one.model, f, PROTOCOL, 0, one.y_true, one.y_pred, one.macro_f1, one.accuracy)
        for f in LOSO[:-1]
    ]
    pooled = pooled_loso(same)
    assert pooled["ci_low"] == pytest.approx(pooled["macro_f1"])
    assert pooled["ci_high"] == pytest.approx(pooled["macro_f1"])


def test_incomplete_entry_is_never_ranked_above_a_complete_one() -> None:
    rng = np.random.default_rng(3)
    results = [result("weak_complete", f, 0.4, rng) for f in ALL_FOLDS]
    results += [result("strong_partial", "loso-101", 1.0, rng)]
    section_ = section(build_leaderboard(results))
    assert [e["model"] for e in section_["rows"]] == ["weak_complete", "strong_partial"]
    weak, strong = section_["rows"]
    assert weak["rank"] == 1 and weak["complete"]
    assert strong["rank"] is None and not strong["complete"]
    assert "loso-102" in strong["missing_folds"] and "stratified" in strong["missing_folds"]
    text = leaderboard_markdown(build_leaderboard(results), "t")
    row = next(line for line in text.splitlines() if "| strong_partial |" in line)
    assert row.startswith(f"| {MISSING} |") and "incomplete: no stratified" in row


def test_complete_entries_rank_by_pooled_loso_with_paired_wilcoxon() -> None:
    rng = np.random.default_rng(4)
    results = [result("good", f, 0.9, rng) for f in ALL_FOLDS]
    results += [result("fair", f, 0.5, rng) for f in ALL_FOLDS]
    board = build_leaderboard(results)
    good, fair = section(board)["rows"]
    assert (good["model"], good["rank"], fair["rank"]) == ("good", 1, 2)
    assert good["pooled_loso"]["macro_f1"] > fair["pooled_loso"]["macro_f1"]
    shared = [f for f in LOSO if f != "loso-109"]
    diffs = [fair["per_fold"][f]["macro_f1"] - good["per_fold"][f]["macro_f1"] for f in shared]
    assert fair["vs_best"]["n_folds"] == 8
    assert fair["vs_best"]["p_value"] == pytest.approx(wilcoxon(diffs).pvalue)
    assert fair["vs_best"]["mean_difference"] == pytest.approx(np.mean(diffs))
    assert good["vs_best"]["note"] == "the best entry"


def test_holm_adjustment_matches_its_definition() -> None:
    # Sorted 0.01, 0.03, 0.04 with m = 3: 3 x 0.01, 2 x 0.03, max(0.06, 1 x 0.04).
    assert holm_adjusted([0.03, 0.01, 0.04]) == pytest.approx([0.06, 0.03, 0.06])
    assert holm_adjusted([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm_adjusted([]) == []


def test_comparisons_with_the_best_are_holm_adjusted_as_one_family() -> None:
    rng = np.random.default_rng(6)
    results = [result("good", f, 0.9, rng) for f in ALL_FOLDS]
    results += [result(name, f, 0.5, rng) for name in ("fair", "poor") for f in ALL_FOLDS]
    board = build_leaderboard(results)
    rows = {e["model"]: e["vs_best"] for e in section(board)["rows"]}
    raw = [rows["fair"]["p_value"], rows["poor"]["p_value"]]
    assert [rows["fair"]["p_holm"], rows["poor"]["p_holm"]] == pytest.approx(holm_adjusted(raw))
    assert rows["fair"]["holm_family"] == 2 and "p_holm" not in rows["good"]
    assert all(rows[m]["p_holm"] >= rows[m]["p_value"] for m in ("fair", "poor"))
    text = leaderboard_markdown(board, "t")
    row = next(line for line in text.splitlines() if "| fair |" in line)
    assert f"Holm {rows['fair']['p_holm']:.3f}" in row


def test_seeds_are_replicates_and_show_their_spread() -> None:
    rng = np.random.default_rng(5)
    results = [result("lstm", f, 0.6, rng, seed=s) for s in (0, 1) for f in ALL_FOLDS]
    e = entry(build_leaderboard(results), "lstm")
    assert e["seeds"] == [0, 1] and e["complete"] and e["rank"] == 1
    per_fold = [r.macro_f1 for r in results if r.fold == "loso-101"]
    assert e["per_fold"]["loso-101"]["macro_f1"] == pytest.approx(np.mean(per_fold))
    by_seed = e["pooled_loso"]["macro_f1_by_seed"]
    for seed in (0, 1):
        mine = [r for r in results if r.seed == seed and r.fold.startswith("loso-")]
        y = np.concatenate([r.y_true for r in mine])
        pred = np.concatenate([r.y_pred for r in mine])
        assert by_seed[seed] == pytest.approx(
            f1_score(y, pred, labels=np.unique(y), average="macro")
        )
    text = leaderboard_markdown(build_leaderboard(results), "t")
    low, high = min(by_seed.values()), max(by_seed.values())
    assert f"{low:.3f}–{high:.3f}" in text


def test_protocols_never_share_a_row() -> None:
    rng = np.random.default_rng(6)
    results = [result("lstm", f, 0.6, rng) for f in ALL_FOLDS]
    results += [result("lstm", f, 0.8, rng, protocol=OTHER) for f in ALL_FOLDS[:3]]
    board = build_leaderboard(results)
    assert [s["protocol"]["id"] for s in board["protocols"]] == [PROTOCOL.id, OTHER.id]
    assert entry(board, "lstm")["folds"] == ALL_FOLDS
    assert entry(board, "lstm", OTHER)["folds"] == ALL_FOLDS[:3]
    text = leaderboard_markdown(board, "t")
    assert PROTOCOL.describe() in text and OTHER.describe() in text
    assert "2.56 s" in PROTOCOL.describe() and "50 Hz" in OTHER.describe()


def test_protocol_id_changes_with_every_task_field_but_not_the_training_or_seed() -> None:
    ids = {
        PROTOCOL.id,
        EvaluationProtocol(512, 128, 1, "protocol12").id,
        EvaluationProtocol(256, 64, 1, "protocol12").id,
        EvaluationProtocol(256, 128, 2, "protocol12").id,
        EvaluationProtocol(256, 128, 1, "protocol11").id,
        EvaluationProtocol(256, 128, 1, "protocol12", loso_validation_people=1).id,
    }
    assert len(ids) == 6
    # Training settings are the variant's: a longer-trained, focal-loss run is the same task.
    longer = TrainConfig(epochs=20, loss="focal", lr=1e-3, patience=None, seed=3)
    assert EvaluationProtocol.of(longer) == EvaluationProtocol.of(TrainConfig()) == PROTOCOL
    assert "metric" in PROTOCOL.to_dict() and "classes present" in PROTOCOL.describe()
    assert "2 validation person(s) per LOSO fold" in PROTOCOL.describe()
    assert EvaluationProtocol.from_dict(PROTOCOL.to_dict()) == PROTOCOL
    with pytest.raises(ValueError, match="does not match its fields"):
        EvaluationProtocol.from_dict({**PROTOCOL.to_dict(), "window": 512})
    with pytest.raises(ValueError, match="unknown metric"):
        EvaluationProtocol(256, 128, 1, "protocol12", metric="accuracy")


# A protocol as results recorded it while loss and epochs were part of the id.
LEGACY = {
    "id": "p0b263e62",
    "window": 256,
    "stride": 128,
    "decimate": 1,
    "class_set": "protocol12",
    "loss": "weighted_ce",
    "epochs": 6,
    "loso_validation_people": 2,
}


def test_results_under_a_legacy_protocol_are_refused_saying_what_to_do() -> None:
    with pytest.raises(LegacyProtocolError, match="p0b263e62") as caught:
        EvaluationProtocol.from_dict(LEGACY, "evaluation/loso-101/lstm/p0b263e62/seed-0")
    message = str(caught.value)
    assert "evaluation/loso-101/lstm/p0b263e62/seed-0" in message
    assert "loss=weighted_ce, epochs=6" in message
    assert "Train and evaluate it again" in message and "delete or move away" in message


def test_a_protocol_reads_back_from_mlflow_params_and_a_legacy_run_is_refused() -> None:
    # MLflow stores every param as a string; serving rebuilds the protocol from them.
    params = {k: str(v) for k, v in PROTOCOL.to_params().items()}
    assert EvaluationProtocol.from_params(params) == PROTOCOL
    with pytest.raises(ValueError, match="does not match its fields"):
        EvaluationProtocol.from_params({**params, "protocol_window": "512"})
    legacy = {f"protocol_{k}": str(v) for k, v in LEGACY.items()}
    with pytest.raises(LegacyProtocolError, match="champion_model again"):
        EvaluationProtocol.from_params(legacy, "model pamap2_champion@champion")


def test_variants_that_train_differently_rank_in_one_table_showing_their_training() -> None:
    rng = np.random.default_rng(5)
    longer = {**TRAINING, "epochs": 12, "loss": "focal", "lr": 0.001}
    results = [
        *(result("lstm", f, 0.6, rng) for f in LOSO),
        *(result("lstm", f, 0.9, rng, variant="lstm_long", training=longer) for f in LOSO),
    ]
    board = build_leaderboard(results)
    assert len(board["protocols"]) == 1
    rows = section(board)["rows"]
    assert [(e["variant"], e["rank"]) for e in rows] == [("lstm_long", 1), ("lstm", 2)]
    assert rows[0]["training"] == longer
    text = leaderboard_markdown(board, "t")
    assert "| 1 | lstm_long | lstm | 12 ep, focal (γ=2), lr 0.001, patience 3, aug on |" in text
    assert "| 2 | lstm | lstm | 6 ep, weighted_ce, lr 0.002, patience 3, aug on |" in text


def test_a_variant_whose_folds_trained_with_different_settings_is_not_ranked() -> None:
    rng = np.random.default_rng(6)
    changed = {**TRAINING, "epochs": 9}
    results = [
        result("lstm", f, 0.7, rng, training=changed if f == "loso-103" else None) for f in LOSO
    ]
    results += [result("temporal_cnn", f, 0.5, rng) for f in LOSO]
    e = entry(build_leaderboard(results), "lstm")
    assert e["mixed_training"] and not e["complete"] and e["rank"] is None
    assert "different settings" in leaderboard_markdown(build_leaderboard(results), "t")


def test_refused_legacy_results_are_listed_under_the_leaderboard() -> None:
    rng = np.random.default_rng(8)
    why = "evaluation/loso-101/lstm/p0b263e62/seed-0/summary_metrics.json: recorded under ..."
    board = build_leaderboard([result("lstm", f, 0.7, rng) for f in LOSO], refused=[why])
    text = leaderboard_markdown(board, "t")
    assert "## Not ranked: 1 result(s) under a legacy protocol" in text and why in text


def test_calibration_over_loso_results_counts_each_worse_test_person() -> None:
    rng = np.random.default_rng(11)
    results = [result("lstm", f, 0.7, rng) for f in ALL_FOLDS]
    worse = {"ece_before": 0.1, "ece_after": 0.3, "nll_before": 0.5, "nll_after": 0.56}
    # +12 % on one LOSO person counts; the same on stratified (not a LOSO result) does not.
    results = [
        dataclasses.replace(r, calibration={**worse, "temperature_applied": True})
        if r.fold in ("loso-103", "stratified")
        else r
        for r in results
    ]
    summary = entry(build_leaderboard(results), "lstm")["calibration"]
    assert summary["n_results"] == 9
    assert summary["n_nll_worse_10pct"] == 1 and summary["n_temperature_applied"] == 1
    assert summary["ece_after_mean"] == pytest.approx((8 * 0.1 + 0.3) / 9)
    assert summary["nll_before_mean"] == pytest.approx((8 * 1.0 + 0.5) / 9)
    text = leaderboard_markdown(build_leaderboard(results), "t")
    rows = [line for line in text.splitlines() if line.startswith("| lstm | 9 |")]
    assert rows == [
        "| lstm | 9 | 0.900 | "
        + f"{summary['test_macro_f1_mean']:.3f}"
        + " | 0.189 → 0.122 | 0.944 → 0.862 | 1 | 1 |"
    ]


def test_invalid_results_are_rejected() -> None:
    rng = np.random.default_rng(7)
    good = result("lstm", "stratified", 0.7, rng)
    with pytest.raises(ValueError, match="duplicate result for lstm on stratified with seed 0"):
        build_leaderboard([good, good])
    with pytest.raises(ValueError, match="field 'fold' is 'loso-110'"):
        result("lstm", "loso-110", 0.7, rng)
    with pytest.raises(ValueError, match="field 'macro_f1' is nan"):
        Result("lstm", "stratified", PROTOCOL, 0, good.y_true, good.y_pred, float("nan"), 0.5)


def test_write_leaderboard_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    results = [result(m, f, q, rng) for m, q in (("a", 0.8), ("b", 0.5)) for f in ALL_FOLDS]
    board = build_leaderboard(results)
    paths = write_leaderboard(board, tmp_path, "PAMAP2 leaderboard")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["leaderboard.json", "leaderboard.md", "leaderboard.png", f"leaderboard_{PROTOCOL.id}.png"]
    )
    saved = json.loads(paths["json"].read_text())
    assert [r["model"] for r in saved["protocols"][0]["rows"]] == ["a", "b"]
    assert saved["protocols"][0]["protocol"]["id"] == PROTOCOL.id
    image = imread(paths["plot"])
    assert image.shape[0] >= 400 and image.shape[1] >= 600 and image.std() > 0.01


def test_empty_leaderboard_renders(tmp_path: Path) -> None:
    board = build_leaderboard([])
    assert board["protocols"] == []
    assert "No evaluated models yet" in leaderboard_markdown(board, "empty")
    files = write_leaderboard(board, tmp_path, "empty")
    assert imread(files["plot"]).shape[0] > 0


def test_entries_are_variants_and_the_sweep_summary_picks_each_models_best() -> None:
    rng = np.random.default_rng(7)
    longer = EvaluationProtocol(512, 256, 1, "protocol12")
    narrow, wide = {"m.hidden": 64}, {"m.hidden": 128}
    results = [
        # Two variants of one model under one protocol: two entries, each showing its model.
        *(result("lstm", f, 0.5, rng, variant="sweep-m.hidden=64", settings=narrow) for f in LOSO),
        *(result("lstm", f, 0.7, rng, variant="sweep-m.hidden=128", settings=wide) for f in LOSO),
        # The best lstm variant, under another window: its own section, still compared.
        *(
            result("lstm", f, 0.9, rng, protocol=longer, variant="long", settings={"window": 512})
            for f in LOSO
        ),
        # Better still, but not every fold: never the best of a sweep.
        *(result("lstm", f, 1.0, rng, variant="few") for f in LOSO[:3]),
        *(result("feature_gbm", f, 0.6, rng) for f in LOSO),
        # Another class set: its own line of the summary.
        *(result("lstm", f, 0.3, rng, protocol=OTHER, variant="eleven") for f in LOSO),
    ]
    board = build_leaderboard(results)
    rows = section(board)["rows"]
    by_variant = {e["variant"]: e for e in rows}
    assert set(by_variant) == {"sweep-m.hidden=64", "sweep-m.hidden=128", "few", "feature_gbm"}
    assert by_variant["sweep-m.hidden=128"]["model"] == "lstm"
    assert by_variant["sweep-m.hidden=128"]["settings"] == wide
    assert by_variant["feature_gbm"]["model"] == "feature_gbm"  # a built-in variant
    assert by_variant["sweep-m.hidden=64"]["vs_best"]["against"] == "sweep-m.hidden=128"

    summary = {(s["model"], s["class_set"]): s for s in board["sweep_summary"]}
    assert set(summary) == {
        ("lstm", "protocol12"),
        ("feature_gbm", "protocol12"),
        ("lstm", "protocol11"),
    }
    best = summary[("lstm", "protocol12")]
    long_pooled = entry_of(board, "long", longer)["pooled_loso"]["macro_f1"]
    assert best["best_variant"] == "long" and best["settings"] == {"window": 512}
    assert best["protocol_id"] == longer.id and best["pooled_loso_macro_f1"] == long_pooled
    assert best["variants_compared"] == ["long", "sweep-m.hidden=128", "sweep-m.hidden=64"]
    assert summary[("lstm", "protocol11")]["best_variant"] == "eleven"
    assert sweep_summary(board["protocols"]) == board["sweep_summary"]

    markdown = leaderboard_markdown(board, "t")
    assert "## Sweep summary: best variant per model" in markdown
    assert "| lstm | protocol12 | long |" in markdown and "window=512" in markdown
    assert "- sweep-m.hidden=128 (lstm): m.hidden=128" in markdown


def entry_of(board: dict, variant: str, protocol: EvaluationProtocol) -> dict:
    return next(e for e in section(board, protocol)["rows"] if e["variant"] == variant)


def test_collecting_results_refuses_a_bundle_under_a_legacy_protocol(tmp_path: Path) -> None:
    from ml_core.paths import DataPaths
    from ml_core.pipeline import collect_results

    bundle = tmp_path / "evaluation" / "loso-101" / "lstm" / "p0b263e62" / "seed-0"
    bundle.mkdir(parents=True)
    summary = {"protocol": LEGACY, "fold": "loso-101", "model": "lstm", "seed": 0}
    (bundle / "summary_metrics.json").write_text(json.dumps(summary))
    results, refused = collect_results(DataPaths(tmp_path))
    assert results == [] and len(refused) == 1
    assert str(bundle) in refused[0] and "Train and evaluate it again" in refused[0]


def test_leaderboard_metrics_and_params_for_mlflow(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from ml_core.lifecycle.tracking import MlflowTracker

    rng = np.random.default_rng(3)
    swept = "cnn-lr=1e+03"  # a swept variant's name: `=` and `+` are no MLflow metric key
    results = [
        *(result("lstm", f, 0.7, rng) for f in LOSO),
        *(result("temporal_cnn", f, 0.5, rng, variant=swept) for f in LOSO),
        *(result("lstm", f, 0.6, rng, protocol=OTHER) for f in LOSO[:3]),
    ]
    board = build_leaderboard(results)
    metrics, params = leaderboard_tracking(board)
    main, other = (section(board, p) for p in (PROTOCOL, OTHER))
    for variant, key in (("lstm", "lstm"), (swept, "cnn-lr:1e_03")):
        pooled = next(e for e in main["rows"] if e["variant"] == variant)["pooled_loso"]
        assert metrics[f"{key}/pooled_loso_macro_f1"] == pooled["macro_f1"]
        assert metrics[f"{key}/pooled_loso_ci_low"] == pooled["ci_low"]
        assert metrics[f"{key}/pooled_loso_ci_high"] == pooled["ci_high"]
    # Another protocol's entries are kept apart by its id.
    other_lstm = other["rows"][0]["pooled_loso"]["macro_f1"]
    assert metrics[f"{OTHER.id}/lstm/pooled_loso_macro_f1"] == other_lstm
    assert len(metrics) == 9
    assert params["protocol_id"] == PROTOCOL.id and params["protocol_class_set"] == "protocol12"
    assert params["protocols"] == [PROTOCOL.id, OTHER.id]

    # MLflow accepts every key and value, and its charts read them back.
    tracker = MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with tracker.run("leaderboard", {"asset": "leaderboard"}) as run_id:
        tracker.log_params(params)
        tracker.log_metrics(metrics)
    run = MlflowClient(tracker.tracking_uri).get_run(run_id)
    assert run.data.metrics == pytest.approx(metrics)
    assert run.data.params["protocol_window"] == str(PROTOCOL.window)


def test_leaderboard_rows_are_the_markdown_table_with_numbers_to_sort() -> None:
    rng = np.random.default_rng(4)
    results = [
        *(result("lstm", f, 0.8, rng) for f in LOSO),
        *(result("temporal_cnn", f, 0.5, rng) for f in LOSO[:4]),
        *(result("lstm", f, 0.6, rng, protocol=OTHER) for f in LOSO[:3]),
    ]
    board = build_leaderboard(results)
    rows = leaderboard_rows(board)
    assert [(r["protocol"], r["variant"], r["rank"]) for r in rows] == [
        (PROTOCOL.id, "lstm", 1),
        (PROTOCOL.id, "temporal_cnn", None),
        (OTHER.id, "lstm", 1),
    ]
    assert list(rows[0])[:5] == ["protocol", "rank", "variant", "model", "pooled LOSO macro F1"]
    best = entry(board, "lstm")["pooled_loso"]
    assert rows[0]["pooled LOSO macro F1"] == best["macro_f1"]
    # The other columns are the markdown file's cells, word for word.
    text = leaderboard_markdown(board, "t")
    for row in rows:
        cells = [str(row[h]) if h != "rank" else str(row[h] or MISSING) for h in HEADER]
        assert "| " + " | ".join(cells) + " |" in text
    assert rows[1]["status"].startswith("incomplete: no loso-105")


def test_missing_folds_names_what_each_variant_lacks_of_its_protocol() -> None:
    rng = np.random.default_rng(6)
    protocol11 = EvaluationProtocol(256, 128, 1, "protocol11")  # no rope jumping: no loso-109
    results = [
        *(result("lstm", f, 0.8, rng) for f in ALL_FOLDS),
        *(result("temporal_cnn", f, 0.5, rng) for f in ["holdout-106", *LOSO[:2]]),
        *(result("lstm", f, 0.6, rng, protocol=protocol11) for f in ALL_FOLDS[:-1]),
        *(result("gru", f, 0.6, rng, protocol=OTHER) for f in LOSO[:3]),
    ]
    board = build_leaderboard(results)
    gaps = {(g["protocol"], g["variant"]): g for g in missing_folds(board)}
    # lstm has all 11 folds; under protocol11 all 10 it can have.
    assert set(gaps) == {(PROTOCOL.id, "temporal_cnn"), (OTHER.id, "gru")}
    unranked = gaps[(PROTOCOL.id, "temporal_cnn")]
    assert unranked["rank"] is None
    assert unranked["missing_folds"] == ["stratified", *LOSO[2:]]
    # Ranked (it has every fold any entry of its protocol has) yet incomplete: named too.
    ranked = gaps[(OTHER.id, "gru")]
    assert ranked["rank"] == 1
    assert ranked["missing_folds"] == ["stratified", "holdout-106", *LOSO[3:-1]]  # protocol11
