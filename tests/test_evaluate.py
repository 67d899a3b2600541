"""Evaluation metrics, calibration and the evaluation bundle files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

from ml_core.data.columns import ACTIVITY_NAMES, PROTOCOL_ACTIVITIES
from ml_core.evaluation.calibration import (
    T_MAX,
    T_MIN,
    calibration_groups,
    expected_calibration_error,
    fit_temperature,
    nll_from_logits,
    reliability_table,
    softmax,
)
from ml_core.evaluation.evaluate import (
    BUNDLE_FILES,
    bundle_files,
    bundle_headline,
    check_bundle_complete,
    classification_metrics,
    write_evaluation_bundle,
)

NAMES = [ACTIVITY_NAMES[c] for c in PROTOCOL_ACTIVITIES]
K = len(PROTOCOL_ACTIVITIES)


def sample_labels(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One label per row drawn from that row's class probabilities."""
    return (rng.random(len(probs))[:, None] < probs.cumsum(axis=1)).argmax(axis=1)


def calibrated(rng: np.random.Generator, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): calibrated by construction."""
    logits = rng.normal(0.0, 2.0, size=(n, k))
    return logits, sample_labels(rng, softmax(logits))


def strict_json(path: Path) -> dict:
    """Parse JSON, failing on NaN / Infinity (absent classes must be null, not NaN)."""

    def reject(token: str) -> None:
        raise AssertionError(f"{path.name} contains {token}")

    return json.loads(path.read_text(), parse_constant=reject)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_metrics_equal_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, K - 2, size=400)  # the last two classes never occur in y_true
    y_pred = np.where(rng.random(400) < 0.6, y_true, rng.integers(0, K - 1, size=400))
    m = classification_metrics(y_true, y_pred, K)

    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    present = np.unique(y_true)
    # Over the classes present in the test labels: a predicted-only class (K - 2 here) is
    # not averaged in as a zero.
    expected = f1_score(y_true, y_pred, labels=present, average="macro")
    assert m["macro_f1"] == pytest.approx(expected)
    assert m["macro_f1"] > f1_score(y_true, y_pred, average="macro")
    assert m["weighted_f1"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected_bacc = balanced_accuracy_score(y_true, y_pred)
    assert m["balanced_accuracy"] == pytest.approx(expected_bacc)
    expected_recall = recall_score(y_true, y_pred, labels=present, average=None)
    assert [m["per_class_recall"][i] for i in present] == pytest.approx(expected_recall)
    assert m["per_class_recall"][K - 1] is None and m["per_class_recall"][K - 2] is None
    assert m["classes_in_y_true"] == present.tolist()
    assert m["classes_in_y_true_or_pred"] == np.union1d(y_true, y_pred).tolist()


def test_per_class_recall_and_absent_classes() -> None:
    y_true = np.array([0, 0, 1, 1, 1, 3])
    y_pred = np.array([0, 1, 1, 1, 0, 3])
    m = classification_metrics(y_true, y_pred, 5)
    assert m["per_class_recall"] == pytest.approx([0.5, 2 / 3, None, 1.0, None])
    # Balanced accuracy averages the three classes present in y_true only.
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3 + 1.0) / 3)
    # Class 2 and 4 occur nowhere, so macro F1 averages classes 0, 1 and 3.
    assert m["classes_in_y_true_or_pred"] == [0, 1, 3]


def test_classification_metrics_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match="y_pred must lie in 0..2"):
        classification_metrics(np.array([0, 1]), np.array([0, 3]), 3)


def test_ece_near_zero_when_calibrated_and_large_when_overconfident() -> None:
    rng = np.random.default_rng(0)
    logits, y = calibrated(rng, 20_000, 5)
    assert expected_calibration_error(softmax(logits), y) < 0.02
    assert expected_calibration_error(softmax(3.0 * logits), y) > 0.1


def test_reliability_table_bins() -> None:
    # Every prediction says 0.9 for class 0; half are right: one bin, |0.5 - 0.9| = 0.4.
    probs = np.tile([0.9, 0.1], (10, 1))
    y = np.array([0, 1] * 5)
    table = reliability_table(probs, y, n_bins=10)
    assert table["counts"] == [0] * 9 + [10]
    assert table["accuracy"][9] == pytest.approx(0.5)
    assert table["confidence"][9] == pytest.approx(0.9)
    assert table["accuracy"][0] is None
    assert table["bin_edges"] == pytest.approx(np.linspace(0, 1, 11))
    assert table["ece"] == pytest.approx(0.4)


def two_people(
    rng: np.random.Generator, scales: tuple[float, float], n: int = 3000, k: int = 6
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validation logits of two people: calibrated logits times each person's `scale`."""
    parts = [calibrated(rng, n, k) for _ in scales]
    logits = np.concatenate([scale * lg for scale, (lg, _) in zip(scales, parts, strict=True)])
    y = np.concatenate([labels for _, labels in parts])
    return logits, y, np.repeat([0, 1], n)


def test_temperature_scaling_recovers_scale_and_reduces_nll() -> None:
    # Both validation people are overconfident by 2: each one's T carries to the other.
    logits, y, groups = two_people(np.random.default_rng(1), (2.0, 2.0))
    fit = fit_temperature(logits, y, groups, ["subject 102", "subject 103"])
    assert fit.applied and fit.temperature == pytest.approx(2.0, rel=0.1)
    assert set(fit.group_temperatures) == {"subject 102", "subject 103"}
    # The applied T is the fit nearest 1 of the two people's.
    assert fit.temperature == min(fit.group_temperatures.values())
    assert fit.val_nll_after < fit.val_nll_before
    assert nll_from_logits(logits, y, fit.temperature) < nll_from_logits(logits, y)


@pytest.mark.parametrize(
    "scales", [(0.05, 0.05), (0.3, 0.5), (1.0, 1.0), (2.0, 0.5), (3.0, 1.0), (40.0, 6.0)]
)
def test_temperature_scaling_never_worsens_validation_nll(scales: tuple[float, float]) -> None:
    logits, y, groups = two_people(np.random.default_rng(4), scales, n=1500)
    fit = fit_temperature(logits, y, groups)
    assert fit.val_nll_before == pytest.approx(nll_from_logits(logits, y))
    assert T_MIN <= fit.temperature <= T_MAX
    # Neither the pooled validation NLL nor either person's gets worse.
    for rows in (groups >= 0, groups == 0, groups == 1):
        at_one = nll_from_logits(logits[rows], y[rows])
        assert nll_from_logits(logits[rows], y[rows], fit.temperature) <= at_one + 1e-12
    if not fit.applied:
        assert fit.temperature == 1.0 and fit.note.startswith("kept T = 1")


def test_fit_temperature_keeps_one_when_people_disagree() -> None:
    # One person overconfident, the other underconfident: no temperature suits both.
    logits, y, groups = two_people(np.random.default_rng(5), (2.0, 0.5))
    fit = fit_temperature(logits, y, groups, ["subject 101", "subject 102"])
    assert not fit.applied and fit.temperature == 1.0
    assert "kept T = 1" in fit.note and "does not lower the NLL of subject" in fit.note
    assert fit.group_temperatures["subject 101"] > 1.5 > 0.7 > fit.group_temperatures["subject 102"]


def test_fit_temperature_keeps_one_when_a_fit_does_not_carry_to_the_other_person() -> None:
    # Fitted on person 0 (T ~ 4), scaling would make well-calibrated person 1 too soft.
    logits, y, groups = two_people(np.random.default_rng(6), (4.0, 1.0))
    fit = fit_temperature(logits, y, groups)
    assert not fit.applied and fit.temperature == 1.0
    assert "fitted on group 0 does not lower the NLL of group 1" in fit.note
    # Pooled, the same windows would have chosen a T well above 1: the old rule's answer.
    assert nll_from_logits(logits, y, 2.0) < nll_from_logits(logits, y)


def test_fit_temperature_needs_two_groups_to_apply() -> None:
    logits, y, _ = two_people(np.random.default_rng(7), (3.0, 3.0))
    fit = fit_temperature(logits, y)
    assert not fit.applied and fit.temperature == 1.0
    assert "one validation group" in fit.note and fit.val_nll_after == fit.val_nll_before


def test_fit_temperature_stays_inside_its_bounds() -> None:
    # Logits far too soft want T < T_MIN: the temperature is clamped, never below.
    logits, y, groups = two_people(np.random.default_rng(8), (0.05, 0.05))
    fit = fit_temperature(logits, y, groups)
    assert fit.applied and fit.temperature == pytest.approx(T_MIN, abs=1e-3)
    assert "at a search bound" in fit.note


def test_calibration_groups_are_people_or_time_halves() -> None:
    groups, names = calibration_groups(np.array([103, 102, 103, 102]), np.array([0, 0, 1, 1]))
    assert groups.tolist() == [1, 0, 1, 0] and names == ["subject 102", "subject 103"]
    # One person: each class's windows, in time order, split into a first and second half.
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2])
    groups, names = calibration_groups(np.full(8, 105), labels)
    assert groups.tolist() == [0, 0, 1, 1, 0, 1, 1, 1]
    assert names == ["subject 105, first half", "subject 105, second half"]
    with pytest.raises(ValueError, match="differ in shape"):
        calibration_groups(np.zeros(3), np.zeros(4))


def test_fit_temperature_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="labels must lie in 0..2"):
        fit_temperature(np.zeros((3, 3)), np.array([0, 1, 3]))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, np.ndarray]:
    rng = np.random.default_rng(2)
    logits, y = calibrated(rng, 600, K)
    val_logits, val_y = calibrated(rng, 600, K)
    out = tmp_path_factory.mktemp("bundle")
    summary = write_evaluation_bundle(
        out,
        y,
        softmax(2.5 * logits),
        PROTOCOL_ACTIVITIES,
        "fold stratified, model lstm",
        val_logits=2.5 * val_logits,
        val_y=val_y,
        test_logits=2.5 * logits,
        val_groups=np.arange(len(val_y)) % 2,
        val_group_names=["subject 102", "subject 103"],
    )
    return out, summary, y


def test_bundle_writes_every_file(bundle: tuple[Path, dict, np.ndarray]) -> None:
    out, _, _ = bundle
    assert sorted(p.name for p in out.iterdir()) == sorted(BUNDLE_FILES)
    assert check_bundle_complete(out) == (True, [])


def test_check_bundle_complete_names_missing_file(
    bundle: tuple[Path, dict, np.ndarray], tmp_path: Path
) -> None:
    out, _, _ = bundle
    for path in bundle_files(out):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "roc_curves.png").unlink()
    assert check_bundle_complete(tmp_path) == (False, ["roc_curves.png"])


def test_summary_metrics(bundle: tuple[Path, dict, np.ndarray]) -> None:
    out, summary, y = bundle
    assert strict_json(out / "summary_metrics.json") == summary
    assert summary["n_test"] == len(y)
    assert summary["n_classes_present"] == len(np.unique(y))
    assert list(summary["per_class_recall"]) == NAMES
    for key in ("accuracy", "macro_f1", "weighted_f1", "balanced_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    cal = summary["calibration"]
    # The test probabilities were made overconfident ×2.5; scaling on val logits undoes it.
    assert cal["temperature"] == pytest.approx(2.5, rel=0.2) and cal["temperature_applied"]
    assert cal["val_nll_after"] < cal["val_nll_before"]
    assert cal["measured_on"] == "test set"
    assert cal["nll_after"] < cal["nll_before"]
    assert cal["ece_after"] < cal["ece_before"]


def test_classification_report_uses_activity_names(bundle: tuple[Path, dict, np.ndarray]) -> None:
    out, summary, _ = bundle
    report = strict_json(out / "classification_report.json")
    for name in NAMES:
        assert report[name]["recall"] == pytest.approx(summary["per_class_recall"][name])
    assert report["macro avg"]["f1-score"] == pytest.approx(summary["macro_f1"])


def test_confusion_matrix_csv(bundle: tuple[Path, dict, np.ndarray]) -> None:
    out, _, y = bundle
    rows = list(csv.reader((out / "confusion_matrix.csv").open()))
    assert rows[0][1:] == NAMES
    assert [r[0] for r in rows[1:]] == NAMES
    counts = np.array([[int(v) for v in r[1:]] for r in rows[1:]])
    assert counts.sum() == len(y)
    assert counts.sum(axis=1).tolist() == np.bincount(y, minlength=K).tolist()


def test_curves_and_reliability_json(bundle: tuple[Path, dict, np.ndarray]) -> None:
    out, summary, y = bundle
    roc = strict_json(out / "roc_curves.json")
    pr = strict_json(out / "pr_curves.json")
    assert list(roc["per_class"]) == NAMES
    aucs = [c["auc"] for c in roc["per_class"].values()]
    assert roc["macro_auc"] == pytest.approx(np.mean(aucs))
    assert summary["roc_macro_auc"] == roc["macro_auc"]
    assert all(0.5 < a <= 1.0 for a in aucs)  # informative logits beat chance
    for c in pr["per_class"].values():
        assert c["average_precision"] > c["prevalence"]
    reliability = strict_json(out / "reliability.json")
    assert set(reliability["tables"]) == {"before temperature scaling", "after temperature scaling"}
    assert sum(reliability["tables"]["before temperature scaling"]["counts"]) == len(y)


@pytest.mark.parametrize(
    "name", ["confusion_matrix.png", "roc_curves.png", "pr_curves.png", "reliability.png"]
)
def test_plots_are_valid_images(bundle: tuple[Path, dict, np.ndarray], name: str) -> None:
    image = imread(bundle[0] / name)
    assert image.shape[0] >= 500 and image.shape[1] >= 500
    assert image.std() > 0.01  # something was drawn


def test_bundle_with_single_class_test_set(tmp_path: Path) -> None:
    # Like LOSO fold 109: the test subject only did rope jumping (the last protocol class).
    rng = np.random.default_rng(3)
    y = np.full(50, K - 1)
    probs = softmax(rng.normal(size=(50, K)))
    summary = write_evaluation_bundle(tmp_path, y, probs, PROTOCOL_ACTIVITIES, "fold loso-109")
    assert check_bundle_complete(tmp_path) == (True, [])
    assert summary["n_classes_present"] == 1
    assert summary["per_class_recall"]["lying"] is None
    assert summary["per_class_recall"]["rope jumping"] == pytest.approx(
        float((probs.argmax(axis=1) == K - 1).mean())
    )
    assert summary["roc_macro_auc"] is None  # no class has both positives and negatives
    assert "temperature" not in summary["calibration"]
    roc = strict_json(tmp_path / "roc_curves.json")
    assert roc["per_class"]["rope jumping"]["reason"] == "no negatives in y_true"
    pr = strict_json(tmp_path / "pr_curves.json")
    assert pr["per_class"]["lying"]["average_precision"] is None
    # With no negatives any ranking has precision 1: AP is null, not a perfect 1.0.
    assert pr["per_class"]["rope jumping"]["average_precision"] is None
    assert pr["per_class"]["rope jumping"]["reason"] == "no negatives in y_true"
    assert pr["macro_average_precision"] is None
    # Macro F1 is over the one class present, whatever wrong classes were predicted.
    pred = probs.argmax(axis=1)
    assert summary["macro_f1"] == pytest.approx(f1_score(y, pred, labels=[K - 1], average="macro"))
    assert summary["macro_f1"] > f1_score(y, pred, average="macro")  # the old union average
    for name in BUNDLE_FILES:
        if name.endswith(".json"):
            strict_json(tmp_path / name)


def test_bundle_rejects_mismatched_inputs(tmp_path: Path) -> None:
    probs = softmax(np.zeros((4, K)))
    with pytest.raises(ValueError, match="probs must have shape"):
        write_evaluation_bundle(tmp_path, np.zeros(4, dtype=int), probs[:, :3], [1, 2], "t")
    with pytest.raises(ValueError, match="unknown activity ids"):
        write_evaluation_bundle(tmp_path, np.zeros(4, dtype=int), probs, [99] * K, "t")
    with pytest.raises(ValueError, match="val_logits and val_y"):
        write_evaluation_bundle(
            tmp_path, np.zeros(4, dtype=int), probs, PROTOCOL_ACTIVITIES, "t", val_y=np.zeros(4)
        )
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_headline_says_what_macro_f1_is_over_and_whether_calibration_applied(
    bundle: tuple[Path, dict, np.ndarray], tmp_path: Path
) -> None:
    _, summary, y = bundle
    headline = bundle_headline(summary)
    assert headline.test == (
        f"macro F1 {summary['macro_f1']:.3f} over {K} of {K} classes, {len(y):,} test windows"
    )
    assert not headline.one_class
    # The fixture's logits are over-confident by 2.5: the temperature carries between groups.
    cal = summary["calibration"]
    assert cal["temperature_applied"] and headline.calibration_applied
    assert headline.calibration == (
        f"temperature {cal['temperature']:.3g} applied: "
        f"test ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}"
    )

    # Kept at T = 1, ECE "after" differs from "before" by float noise only: said so.
    rng = np.random.default_rng(5)
    logits, labels = calibrated(rng, 300, K)
    kept = write_evaluation_bundle(
        tmp_path / "kept",
        labels,
        softmax(logits),
        PROTOCOL_ACTIVITIES,
        "kept",
        val_logits=logits[:100],
        val_y=labels[:100],
        val_groups=np.zeros(100, dtype=np.int64),
    )
    noise = kept["calibration"]
    assert not noise["temperature_applied"]
    assert noise["ece_after"] == pytest.approx(noise["ece_before"], abs=1e-9)
    quiet = bundle_headline(kept)
    assert not quiet.calibration_applied
    assert quiet.calibration.startswith(f"not applied (test ECE {noise['ece_before']:.4f}): kept")

    # One class (loso-109): macro F1 from a handful of windows is flagged as such.
    one = write_evaluation_bundle(
        tmp_path / "one", np.full(11, K - 1), softmax(logits[:11]), PROTOCOL_ACTIVITIES, "109"
    )
    flagged = bundle_headline(one)
    assert flagged.one_class and not flagged.calibration_applied
    assert flagged.test.startswith(f"macro F1 {one['macro_f1']:.3f} over 1 of {K} classes, 11 ")
    assert "rope jumping only" in flagged.test and "pooled LOSO" in flagged.test
    ece = one["calibration"]["ece_before"]
    assert flagged.calibration == f"not applied (test ECE {ece:.4f}): no validation logits"
