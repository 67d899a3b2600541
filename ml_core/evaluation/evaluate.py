"""Evaluation bundles: test-set metrics, curves, calibration and their plots for one fold × model.

Labels are class indices 0..K-1 into `class_ids` (PAMAP2 activity ids). A test set may lack
some classes (a LOSO subject who never did an activity; subject 109 has rope jumping only),
so every metric states the classes it averages over and absent classes report null.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import (
    average_precision_score,
    classification_report,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from ml_core.data.columns import ACTIVITY_NAMES
from ml_core.evaluation.calibration import (
    fit_temperature,
    nll_from_logits,
    nll_from_probs,
    reliability_table,
    softmax,
)
from ml_core.evaluation.metrics import macro_f1_from_confusion
from ml_core.io import atomic_path, write_json, write_parquet, write_text

BUNDLE_FILES: tuple[str, ...] = (
    "summary_metrics.json",
    "classification_report.json",
    "confusion_matrix.csv",
    "confusion_matrix.png",
    "roc_curves.json",
    "roc_curves.png",
    "pr_curves.json",
    "pr_curves.png",
    "reliability.json",
    "reliability.png",
    "predictions.parquet",
)
# The bundle's plots: name, file, title.
BUNDLE_PLOTS: tuple[tuple[str, str, str], ...] = (
    ("confusion_plot", "confusion_matrix.png", "confusion matrix"),
    ("roc_plot", "roc_curves.png", "ROC curves"),
    ("pr_plot", "pr_curves.png", "precision-recall curves"),
    ("reliability_plot", "reliability.png", "reliability diagram"),
)
assert {file for _, file, _ in BUNDLE_PLOTS} <= set(BUNDLE_FILES)
DPI = 110
# Curves are stored thinned to this many points; AUC / AP always use the full curve.
MAX_CURVE_POINTS = 500
LABEL_NOTES = {
    "accuracy": "all test samples",
    "macro_f1": "unweighted mean F1 over the classes present in this test set's labels",
    "weighted_f1": "support-weighted mean F1 over classes present in y_true",
    "balanced_accuracy": "mean recall over classes present in y_true",
    "per_class_recall": "every class; null where the class is absent from y_true",
}


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(K, K) counts, rows = true class, columns = predicted class."""
    flat = np.asarray(y_true, dtype=np.int64) * n_classes + np.asarray(y_pred, dtype=np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict:
    """Accuracy, macro / weighted F1, balanced accuracy and per-class recall.

    Macro F1 is the project's one metric (`ml_core.evaluation.metrics`, as in validation):
    over the classes present in y_true, so on a test person who did only some activities,
    predicting an absent class costs precision of the present ones but does not add a zero-F1
    class of its own. Balanced accuracy is over classes in y_true too; per-class
    recall is None for absent classes.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.ndim != 1 or y_true.shape != y_pred.shape or len(y_true) == 0:
        raise ValueError(
            f"y_true and y_pred must be equal-length non-empty 1-D arrays, "
            f"got {y_true.shape} and {y_pred.shape}"
        )
    for name, arr in (("y_true", y_true), ("y_pred", y_pred)):
        if arr.min() < 0 or arr.max() >= n_classes:
            raise ValueError(f"{name} must lie in 0..{n_classes - 1}, got {arr.min()}..{arr.max()}")
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    in_true = support > 0
    in_either = in_true | (predicted > 0)
    recall = tp / np.maximum(support, 1)
    f1 = 2.0 * tp / np.maximum(support + predicted, 1)
    return {
        "accuracy": float(tp.sum() / len(y_true)),
        "macro_f1": float(macro_f1_from_confusion(cm)),
        "weighted_f1": float((f1 * support).sum() / support.sum()),
        "balanced_accuracy": float(recall[in_true].mean()),
        "per_class_recall": [float(r) if k else None for r, k in zip(recall, in_true, strict=True)],
        "classes_in_y_true": np.flatnonzero(in_true).tolist(),
        "classes_in_y_true_or_pred": np.flatnonzero(in_either).tolist(),
    }


def _thin(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    if len(x) > MAX_CURVE_POINTS:
        keep = np.unique(np.linspace(0, len(x) - 1, MAX_CURVE_POINTS).round().astype(np.int64))
        x, y = x[keep], y[keep]
    return np.round(x, 6).tolist(), np.round(y, 6).tolist()


def _mean_or_none(values: list[Any]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _one_vs_rest(y_true: np.ndarray, k: int) -> tuple[np.ndarray, int, str | None]:
    """Class `k`'s positives, their count, and why its curve is undefined (None if it is not)."""
    positives = y_true == k
    n_pos = int(positives.sum())
    if n_pos == 0:
        return positives, n_pos, "absent from y_true"
    if n_pos == len(y_true):
        return positives, n_pos, "no negatives in y_true"
    return positives, n_pos, None


def roc_curves(y_true: np.ndarray, probs: np.ndarray, names: list[str]) -> dict:
    """One-vs-rest ROC per class; null where the class has no positives or no negatives."""
    per_class = {}
    for k, name in enumerate(names):
        positives, n_pos, reason = _one_vs_rest(y_true, k)
        if reason:
            per_class[name] = {"auc": None, "n_positive": n_pos, "reason": reason}
            continue
        fpr, tpr, _ = roc_curve(positives, probs[:, k])
        fpr_list, tpr_list = _thin(fpr, tpr)
        per_class[name] = {
            "auc": float(roc_auc_score(positives, probs[:, k])),
            "n_positive": n_pos,
            "fpr": fpr_list,
            "tpr": tpr_list,
        }
    macro = _mean_or_none([c["auc"] for c in per_class.values()])
    return {
        "macro_auc": macro,
        "macro_over": "classes with both positives and negatives in y_true",
        "per_class": per_class,
    }


def pr_curves(y_true: np.ndarray, probs: np.ndarray, names: list[str]) -> dict:
    """One-vs-rest precision-recall per class; null where the class has no positives or no
    negatives (with no negatives every ranking has precision 1: AP says nothing)."""
    per_class = {}
    for k, name in enumerate(names):
        positives, n_pos, reason = _one_vs_rest(y_true, k)
        if reason:
            per_class[name] = {"average_precision": None, "n_positive": n_pos, "reason": reason}
            continue
        precision, recall, _ = precision_recall_curve(
            positives, probs[:, k], drop_intermediate=True
        )
        recall_list, precision_list = _thin(recall, precision)
        per_class[name] = {
            "average_precision": float(average_precision_score(positives, probs[:, k])),
            "n_positive": n_pos,
            "prevalence": n_pos / len(y_true),
            "recall": recall_list,
            "precision": precision_list,
        }
    macro = _mean_or_none([c["average_precision"] for c in per_class.values()])
    return {
        "macro_average_precision": macro,
        "macro_over": "classes with both positives and negatives in y_true",
        "per_class": per_class,
    }


def _save(fig: Figure, target: Path) -> None:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)


def _plot_confusion(cm: np.ndarray, names: list[str], title: str, target: Path) -> None:
    fig = Figure(figsize=(8, 7))
    ax = fig.add_subplot()
    # Colour by row share so rare classes are as readable as common ones; text shows counts.
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    k = len(names)
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted activity")
    ax.set_ylabel("true activity")
    ax.set_title(f"Confusion matrix: {title}", fontsize=10)
    fontsize = 8 if k <= 12 else 6
    for i, j in zip(*np.nonzero(cm), strict=True):
        colour = "white" if share[i, j] > 0.5 else "black"
        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=fontsize, color=colour)
    _save(fig, target)


def _plot_curves(curves: dict, kind: str, title: str, target: Path) -> None:
    fig = Figure(figsize=(8, 6.5))
    ax = fig.add_subplot()
    colours = [colormaps["tab20"](i % 20) for i in range(len(curves["per_class"]))]
    plotted = 0
    for colour, (name, c) in zip(colours, curves["per_class"].items(), strict=True):
        if kind == "roc" and c["auc"] is not None:
            ax.plot(c["fpr"], c["tpr"], color=colour, lw=1.3, label=f"{name} ({c['auc']:.3f})")
            plotted += 1
        elif kind == "pr" and c["average_precision"] is not None:
            label = f"{name} ({c['average_precision']:.3f})"
            ax.step(c["recall"], c["precision"], where="post", color=colour, lw=1.3, label=label)
            plotted += 1
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        macro, what, loc = curves["macro_auc"], "ROC (one-vs-rest), macro AUC", "lower right"
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        macro = curves["macro_average_precision"]
        what, loc = "Precision-recall (one-vs-rest), macro AP", "lower left"
    macro_text = "n/a" if macro is None else f"{macro:.3f}"
    ax.set_title(f"{what} {macro_text}: {title}", fontsize=10)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if plotted:
        ax.legend(loc=loc, fontsize=7, ncol=2 if plotted > 9 else 1, title="class (score)")
    else:
        ax.text(0.5, 0.5, "no class with both positives and negatives", ha="center")
    _save(fig, target)


def _plot_reliability(tables: dict[str, dict], title: str, target: Path) -> None:
    fig = Figure(figsize=(6 * len(tables), 5.5))
    for i, (label, table) in enumerate(tables.items()):
        ax = fig.add_subplot(1, len(tables), i + 1)
        edges = np.asarray(table["bin_edges"])
        width = edges[1] - edges[0]
        filled = np.array([a is not None for a in table["accuracy"]])
        centres = (edges[:-1] + edges[1:])[filled] / 2.0
        acc = np.array([a for a in table["accuracy"] if a is not None])
        conf = np.array([c for c in table["confidence"] if c is not None])
        ax.bar(centres, acc, width * 0.9, color="tab:blue", alpha=0.8, label="accuracy")
        # The red segment runs from a bin's accuracy to its mean confidence: the gap ECE sums.
        ax.vlines(centres, acc, conf, color="tab:red", lw=2)
        ax.scatter(centres, conf, marker="_", s=150, color="tab:red", label="mean confidence")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", label="perfect calibration")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("confidence (top-label probability)")
        ax.set_ylabel("accuracy")
        ax.set_title(f"{label}: ECE {table['ece']:.4f}", fontsize=10)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Reliability: {title}", fontsize=11)
    _save(fig, target)


def _write_confusion_csv(cm: np.ndarray, names: list[str], target: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true \\ predicted", *names])
    for name, row in zip(names, cm.tolist(), strict=True):
        writer.writerow([name, *row])
    write_text(buf.getvalue(), target)


def _check_inputs(
    y_true: np.ndarray, probs: np.ndarray, class_ids: list[int]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    unknown = [c for c in class_ids if c not in ACTIVITY_NAMES]
    if unknown:
        raise ValueError(f"class_ids holds unknown activity ids {unknown}")
    if len(set(class_ids)) != len(class_ids):
        raise ValueError(f"class_ids holds duplicates: {class_ids}")
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    if probs.ndim != 2 or probs.shape[1] != len(class_ids):
        raise ValueError(f"probs must have shape (n, {len(class_ids)}), got {probs.shape}")
    if y_true.shape != (probs.shape[0],) or len(y_true) == 0:
        raise ValueError(f"y_true must have shape ({probs.shape[0]},) and be non-empty")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
    if y_true.min() < 0 or y_true.max() >= len(class_ids):
        raise ValueError(f"y_true must lie in 0..{len(class_ids) - 1}")
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError("probs must be finite and non-negative")
    worst = float(np.abs(probs.sum(axis=1) - 1.0).max())
    if worst > 1e-3:
        raise ValueError(f"probs rows must sum to 1 (worst row is off by {worst:.3g})")
    return y_true.astype(np.int64), probs, [ACTIVITY_NAMES[c] for c in class_ids]


def _calibration(
    y_true: np.ndarray,
    probs: np.ndarray,
    val_logits: np.ndarray | None,
    val_y: np.ndarray | None,
    test_logits: np.ndarray | None,
    val_groups: np.ndarray | None,
    val_group_names: list[str] | None,
) -> tuple[dict, dict[str, dict]]:
    """Calibration summary and reliability tables, before and (with val logits) after scaling.

    ECE and NLL before and after are both measured on the test set; the temperature is
    chosen on validation only, cross-checked between `val_groups` (`fit_temperature`).
    """
    before = reliability_table(probs, y_true)
    summary: dict[str, Any] = {
        "ece_before": before["ece"],
        "nll_before": nll_from_probs(probs, y_true),
        "measured_on": "test set",
    }
    tables = {"before temperature scaling": before}
    if val_logits is None and val_y is None:
        return summary, tables
    if val_logits is None or val_y is None:
        raise ValueError("val_logits and val_y must be given together")
    if test_logits is None:
        # softmax(log p / T) is p temperature-scaled, so log-probabilities stand in for logits.
        test_logits = np.log(np.clip(probs, 1e-12, 1.0))
    test_logits = np.asarray(test_logits, dtype=np.float64)
    if test_logits.shape != probs.shape:
        raise ValueError(f"test_logits shape {test_logits.shape} != probs shape {probs.shape}")
    fit = fit_temperature(val_logits, val_y, val_groups, val_group_names)
    after = reliability_table(softmax(test_logits, fit.temperature), y_true)
    summary |= {
        "temperature": fit.temperature,
        "temperature_applied": fit.applied,
        "temperature_note": fit.note,
        "fitted_on": f"validation logits ({len(val_y)} windows)",
        "group_temperatures": fit.group_temperatures,
        "val_nll_before": fit.val_nll_before,
        "val_nll_after": fit.val_nll_after,
        "ece_after": after["ece"],
        "nll_after": nll_from_logits(test_logits, y_true, fit.temperature),
    }
    tables["after temperature scaling"] = after
    return summary, tables


def write_evaluation_bundle(
    out_dir: Path,
    y_true: np.ndarray,
    probs: np.ndarray,
    class_ids: list[int],
    title: str,
    val_logits: np.ndarray | None = None,
    val_y: np.ndarray | None = None,
    test_logits: np.ndarray | None = None,
    context: dict[str, Any] | None = None,
    val_groups: np.ndarray | None = None,
    val_group_names: list[str] | None = None,
) -> dict:
    """Write every file of BUNDLE_FILES into `out_dir` (atomically) and return the summary.

    `probs` are test-set class probabilities (n, K); `y_true` indexes `class_ids`. With
    `val_logits` / `val_y`, a temperature is chosen on validation, cross-checked between
    `val_groups` (named by `val_group_names`; see `fit_temperature`), and the test calibration
    is reported before and after scaling (`test_logits` default to log `probs`). `context`
    (fold, model, seed, protocol, notes) is stored at the top of `summary_metrics.json`.
    """
    out_dir = Path(out_dir)
    y_true, probs, names = _check_inputs(y_true, probs, class_ids)
    k = len(class_ids)
    y_pred = probs.argmax(axis=1)
    metrics = classification_metrics(y_true, y_pred, k)
    cm = confusion_matrix(y_true, y_pred, k)

    report_labels = metrics["classes_in_y_true"]
    report = classification_report(
        y_true,
        y_pred,
        labels=report_labels,
        target_names=[names[i] for i in report_labels],
        output_dict=True,
        zero_division=0,
    )
    roc = roc_curves(y_true, probs, names)
    pr = pr_curves(y_true, probs, names)
    calibration, tables = _calibration(
        y_true, probs, val_logits, val_y, test_logits, val_groups, val_group_names
    )

    present = metrics["classes_in_y_true"]
    summary = {
        **(context or {}),
        "title": title,
        "n_test": int(len(y_true)),
        "n_classes": k,
        "n_classes_present": len(present),
        "classes": [
            {"index": i, "activity_id": c, "name": names[i]} for i, c in enumerate(class_ids)
        ],
        "classes_present": [names[i] for i in present],
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "weighted_f1": metrics["weighted_f1"],
        "balanced_accuracy": metrics["balanced_accuracy"],
        "per_class_recall": dict(zip(names, metrics["per_class_recall"], strict=True)),
        "metric_labels": {
            **LABEL_NOTES,
            "macro_f1_classes": [names[i] for i in report_labels],
        },
        "roc_macro_auc": roc["macro_auc"],
        "pr_macro_average_precision": pr["macro_average_precision"],
        "calibration": calibration,
    }

    write_json(summary, out_dir / "summary_metrics.json")
    write_json(report, out_dir / "classification_report.json")
    _write_confusion_csv(cm, names, out_dir / "confusion_matrix.csv")
    _plot_confusion(cm, names, title, out_dir / "confusion_matrix.png")
    write_json(roc, out_dir / "roc_curves.json")
    _plot_curves(roc, "roc", title, out_dir / "roc_curves.png")
    write_json(pr, out_dir / "pr_curves.json")
    _plot_curves(pr, "pr", title, out_dir / "pr_curves.png")
    write_json({"calibration": calibration, "tables": tables}, out_dir / "reliability.json")
    _plot_reliability(tables, title, out_dir / "reliability.png")
    write_predictions(y_true, probs, class_ids, out_dir / "predictions.parquet")
    return summary


def write_predictions(
    y_true: np.ndarray, probs: np.ndarray, class_ids: list[int], target: Path
) -> Path:
    """Per-window test predictions (true and predicted activity id, every class probability),
    in window order: what pooled LOSO metrics and their bootstrap are computed from."""
    ids = np.asarray(class_ids, dtype=np.int64)
    frame = pl.DataFrame(
        {
            "window": np.arange(len(y_true), dtype=np.int64),
            "true_activity_id": ids[y_true],
            "predicted_activity_id": ids[probs.argmax(axis=1)],
            **{f"p_{c}": probs[:, i] for i, c in enumerate(class_ids)},
        }
    )
    return write_parquet(frame, target, compression="zstd")


def read_predictions(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(true, predicted) activity ids of a bundle's `predictions.parquet`."""
    frame = pl.read_parquet(path, columns=["true_activity_id", "predicted_activity_id"])
    return frame["true_activity_id"].to_numpy(), frame["predicted_activity_id"].to_numpy()


def bundle_files(out_dir: Path) -> list[Path]:
    """Paths of every file an evaluation bundle in `out_dir` consists of."""
    return [Path(out_dir) / name for name in BUNDLE_FILES]


def check_bundle_complete(out_dir: Path) -> tuple[bool, list[str]]:
    """(complete, names of missing files) for the bundle in `out_dir`."""
    missing = [p.name for p in bundle_files(out_dir) if not p.is_file()]
    return not missing, missing


# ECE before and after a temperature of 1 differ by rounding alone (softmax(log p) is p).
_FLOAT_NOISE = 1e-9


@dataclass(frozen=True)
class BundleHeadline:
    """What a bundle's summary says at a glance, in words a UI can show beside its numbers."""

    test: str  # macro F1 with the classes and windows it is over
    calibration: str  # ECE before -> after, or that no temperature was applied
    calibration_applied: bool
    one_class: bool  # the test labels hold one class: macro F1 says little


def bundle_headline(summary: dict[str, Any]) -> BundleHeadline:
    """The headline of an evaluation summary (`write_evaluation_bundle`'s): macro F1 beside the
    number of classes and windows it is over (a one-class fold such as loso-109 reads 1.0 from
    a handful of windows), and calibration, which reads "not applied" where the temperature
    was not applied or ECE before and after differ by float noise only."""
    present, k, n = summary["n_classes_present"], summary["n_classes"], summary["n_test"]
    one_class = present == 1
    test = f"macro F1 {summary['macro_f1']:.3f} over {present} of {k} classes, {n:,} test windows"
    if one_class:
        test += (
            f" ({summary['classes_present'][0]} only: compare variants on the leaderboard's "
            "pooled LOSO instead)"
        )
    cal = summary["calibration"]
    before, after = cal["ece_before"], cal.get("ece_after")
    applied = (
        bool(cal.get("temperature_applied"))
        and after is not None
        and abs(after - before) > _FLOAT_NOISE
    )
    if applied:
        calibration = (
            f"temperature {cal['temperature']:.3g} applied: test ECE {before:.4f} -> {after:.4f}"
        )
    else:
        why = cal.get("temperature_note") or "no validation logits"
        calibration = f"not applied (test ECE {before:.4f}): {why}"
    return BundleHeadline(test, calibration, applied, one_class)
