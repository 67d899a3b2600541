"""Leaderboard: every variant under one protocol side by side, ranked only against its equals.

A protocol is the evaluation task (`ml_core.evaluation.protocol`); how a variant was trained
(epochs, loss, learning rate, augmentation, early stopping) is shown beside it, so variants
that train differently are ranked in one table.

Input is one `Result` per (protocol, variant, fold, seed): the test labels and predictions of an
evaluation bundle plus its summary numbers. A variant is a registered model with overrides
(`ml_core.training.variants`); a built-in one is named after its model. Per protocol (never
mixed), each variant is one entry (showing its model) and gets:
- per-fold macro F1 (over the classes present in that fold's test labels), seed-averaged;
- LOSO mean ± sample std over loso-101…108; loso-109 (one test class) on its own line;
- pooled LOSO: every LOSO test window (109 included) in one confusion matrix, macro F1 over
  every class present, with a 95 % bootstrap CI that resamples subjects (folds), not windows,
  because overlapping windows of one person are not independent;
- completeness: an entry missing any fold that another entry of its protocol has is shown as
  incomplete, unranked, below every complete entry;
- a paired comparison with the best complete entry over their shared LOSO folds (Wilcoxon
  signed-rank, two-sided, loso-109 left out as in the mean), Holm-adjusted over the table;
- the spread over seeds when a variant was trained with several.

The sweep summary (`sweep_summary`) names, per model and class set, its best variant by pooled
LOSO macro F1 among complete entries of every protocol section, with the variant's settings and
protocol: the entry to pick from a sweep.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.stats import wilcoxon

from ml_core.data.columns import CLASS_SETS
from ml_core.data.folds import FOLD_NAMES
from ml_core.evaluation.metrics import confusion_counts, macro_f1_from_confusion
from ml_core.evaluation.protocol import PARAM_PREFIX, EvaluationProtocol
from ml_core.io import atomic_path, write_json, write_text

LOSO_PREFIX = "loso-"
# Subject 109's Protocol data is rope jumping only: its fold's macro F1 is over one class.
LOSO_APART = ("loso-109",)
STD_DDOF = 1  # sample std: the LOSO folds are a sample of possible people
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95
MISSING = "–"


@dataclass
class Result:
    """One evaluation bundle: a variant of a model under a protocol on one fold with one seed.

    `variant` defaults to the model's name (its built-in variant); `settings` are the
    variant's overrides; `training` its effective training settings
    (`TrainConfig.training_settings`)."""

    model: str
    fold: str
    protocol: EvaluationProtocol
    seed: int
    y_true: np.ndarray  # activity ids of the test windows
    y_pred: np.ndarray
    macro_f1: float
    accuracy: float
    val_macro_f1: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    variant: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.variant = self.variant or self.model
        where = f"result {self.variant}/{self.fold}/{self.protocol.id}/seed-{self.seed}"
        if self.fold not in FOLD_NAMES:
            raise ValueError(f"{where}: field 'fold' is {self.fold!r}, not one of {FOLD_NAMES}")
        if not self.model:
            raise ValueError(f"{where}: field 'model' is empty")
        for name in ("macro_f1", "accuracy"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:  # also rejects NaN
                raise ValueError(f"{where}: field {name!r} is {value!r}, not in [0, 1]")
        self.y_true, self.y_pred = np.asarray(self.y_true), np.asarray(self.y_pred)
        if self.y_true.shape != self.y_pred.shape or self.y_true.ndim != 1:
            raise ValueError(f"{where}: y_true and y_pred must be equal-length 1-D arrays")


def pooled_loso(results: list[Result], resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, Any]:
    """Pooled LOSO macro F1 and accuracy with a subject-level bootstrap CI.

    Every seed's predictions count (replicates of one protocol); the bootstrap draws the LOSO
    folds (one test person each) with replacement, so the CI reflects between-person
    variation. Vectorised: a resample's confusion matrix is a weighted sum of the folds'.
    """
    folds = sorted({r.fold for r in results})
    classes = np.unique(np.concatenate([np.concatenate([r.y_true, r.y_pred]) for r in results]))
    per_fold = np.stack(
        [
            sum(
                (confusion_counts(r.y_true, r.y_pred, classes) for r in results if r.fold == f),
                np.zeros((len(classes), len(classes)), dtype=np.int64),
            )
            for f in folds
        ]
    )
    pooled = per_fold.sum(axis=0)
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = rng.integers(0, len(folds), size=(resamples, len(folds)))
    weights = np.stack([np.bincount(d, minlength=len(folds)) for d in draws])
    boot = macro_f1_from_confusion(np.einsum("bf,fij->bij", weights, per_fold))
    alpha = (1.0 - CI_LEVEL) / 2.0
    seeds = sorted({r.seed for r in results})
    by_seed = [
        float(
            macro_f1_from_confusion(
                sum(
                    (confusion_counts(r.y_true, r.y_pred, classes) for r in results if r.seed == s),
                    np.zeros((len(classes), len(classes)), dtype=np.int64),
                )
            )
        )
        for s in seeds
    ]
    return {
        "macro_f1": float(macro_f1_from_confusion(pooled)),
        "accuracy": float(np.trace(pooled) / pooled.sum()),
        "ci_low": float(np.quantile(boot, alpha)),
        "ci_high": float(np.quantile(boot, 1.0 - alpha)),
        "ci": f"{CI_LEVEL:.0%} bootstrap over {len(folds)} test subjects, {resamples} resamples",
        "folds": folds,
        "n_windows": int(pooled.sum()),
        "classes": classes.tolist(),
        "confusion": pooled.tolist(),
        "macro_f1_by_seed": dict(zip(seeds, by_seed, strict=True)),
    }


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    std = float(np.std(values, ddof=STD_DDOF)) if len(values) > STD_DDOF else None
    return float(np.mean(values)), std


def _calibration_summary(results: list[Result]) -> dict[str, Any]:
    """Over the LOSO results: validation vs test macro F1, test ECE / NLL before and after."""
    loso = [r for r in results if r.fold.startswith(LOSO_PREFIX)]
    out: dict[str, Any] = {"n_results": len(loso)}
    vals = [r.val_macro_f1 for r in loso if r.val_macro_f1 is not None]
    out["val_macro_f1_mean"] = float(np.mean(vals)) if vals else None
    out["test_macro_f1_mean"] = float(np.mean([r.macro_f1 for r in loso])) if loso else None
    for key in ("ece_before", "ece_after", "nll_before", "nll_after"):
        values = [r.calibration[key] for r in loso if r.calibration.get(key) is not None]
        out[f"{key}_mean"] = float(np.mean(values)) if values else None
    scaled = [r for r in loso if r.calibration.get("nll_after") is not None]
    out["n_nll_worse_10pct"] = sum(
        r.calibration["nll_after"] > 1.1 * r.calibration["nll_before"] for r in scaled
    )
    out["n_temperature_applied"] = sum(bool(r.calibration.get("temperature_applied")) for r in loso)
    return out


def _entry(variant: str, results: list[Result]) -> dict[str, Any]:
    models = sorted({r.model for r in results})
    if len(models) != 1:
        raise ValueError(f"variant {variant}: results of several models {models}")
    by_fold: dict[str, list[Result]] = defaultdict(list)
    for r in results:
        by_fold[r.fold].append(r)
    per_fold: dict[str, dict[str, Any]] = {
        f: {
            "macro_f1": float(np.mean([r.macro_f1 for r in rs])),
            "accuracy": float(np.mean([r.accuracy for r in rs])),
            "seeds": sorted(r.seed for r in rs),
        }
        for f, rs in sorted(by_fold.items(), key=lambda kv: FOLD_NAMES.index(kv[0]))
    }
    loso_folds = [f for f in per_fold if f.startswith(LOSO_PREFIX) and f not in LOSO_APART]
    mean, std = _mean_std([per_fold[f]["macro_f1"] for f in loso_folds])
    loso_results = [r for r in results if r.fold.startswith(LOSO_PREFIX)]
    return {
        "variant": variant,
        "model": models[0],
        "settings": results[0].settings,
        "training": results[0].training,
        # Folds trained with other settings (the variant changed in between): not one entry.
        "mixed_training": any(r.training != results[0].training for r in results),
        "seeds": sorted({r.seed for r in results}),
        "folds": list(per_fold),
        "per_fold": per_fold,
        "loso": {"macro_f1_mean": mean, "macro_f1_std": std, "folds": loso_folds}
        if loso_folds
        else None,
        "apart": {f: per_fold[f] for f in LOSO_APART if f in per_fold},
        "pooled_loso": pooled_loso(loso_results) if loso_results else None,
        "calibration": _calibration_summary(results),
    }


def _score(entry: dict[str, Any], reference: list[str]) -> float:
    """Pooled LOSO macro F1 when the protocol's folds include LOSO, else the mean over them."""
    if entry["pooled_loso"] is not None:
        return entry["pooled_loso"]["macro_f1"]
    return float(np.mean([entry["per_fold"][f]["macro_f1"] for f in reference]))


def _paired(entry: dict[str, Any], best: dict[str, Any]) -> dict[str, Any]:
    shared = sorted(
        set(entry["loso"]["folds"] if entry["loso"] else ())
        & set(best["loso"]["folds"] if best["loso"] else ())
    )
    out: dict[str, Any] = {"against": best["variant"], "n_folds": len(shared), "p_value": None}
    if not shared:
        out["note"] = "no shared LOSO folds"
        return out
    diffs = np.array(
        [entry["per_fold"][f]["macro_f1"] - best["per_fold"][f]["macro_f1"] for f in shared]
    )
    out["mean_difference"] = float(diffs.mean())
    if entry is best:
        out["note"] = "the best entry"
    elif np.all(diffs == 0):
        out["note"] = "identical on every shared fold"
    elif len(shared) < 2:
        out["note"] = "one shared fold: no test"
    else:
        out["p_value"] = float(wilcoxon(diffs, alternative="two-sided").pvalue)
        out["test"] = "Wilcoxon signed-rank, two-sided, per-fold macro F1"
    return out


def holm_adjusted(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment of m p-values (family-wise error rate), in input order:
    the i-th smallest becomes max over j <= i of min(1, (m - j + 1) p_(j))."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def build_protocol_board(protocol: EvaluationProtocol, results: list[Result]) -> dict[str, Any]:
    """One protocol's table: complete entries ranked, incomplete ones after them, unranked."""
    if any(r.protocol != protocol for r in results):
        raise ValueError(f"build_protocol_board: results of other protocols than {protocol.id}")
    by_variant: dict[str, list[Result]] = defaultdict(list)
    seen: set[tuple[str, str, int]] = set()
    for r in results:
        key = (r.variant, r.fold, r.seed)
        if key in seen:
            raise ValueError(
                f"duplicate result for {r.variant} on {r.fold} with seed {r.seed} "
                f"under protocol {protocol.id}"
            )
        seen.add(key)
        by_variant[r.variant].append(r)
    entries = [_entry(v, rs) for v, rs in sorted(by_variant.items())]
    reference = [f for f in FOLD_NAMES if any(f in e["per_fold"] for e in entries)]
    for e in entries:
        e["missing_folds"] = [f for f in reference if f not in e["per_fold"]]
        e["complete"] = not e["missing_folds"] and not e["mixed_training"]
        e["score"] = _score(e, reference) if e["complete"] else None
    complete = sorted(
        (e for e in entries if e["complete"]), key=lambda e: (-e["score"], e["variant"])
    )
    incomplete = sorted((e for e in entries if not e["complete"]), key=lambda e: e["variant"])
    for rank, e in enumerate(complete, start=1):
        e["rank"] = rank
    for e in incomplete:
        e["rank"] = None
    rows = complete + incomplete
    best = complete[0] if complete else None
    for e in rows:
        e["vs_best"] = _paired(e, best) if best is not None else None
    # Every comparison against the best is one test of a family, and the best was itself
    # picked on these folds: Holm's correction keeps the family-wise error rate at 5 %.
    tested = [e["vs_best"] for e in rows if e["vs_best"] and e["vs_best"]["p_value"] is not None]
    for vs, adjusted in zip(tested, holm_adjusted([v["p_value"] for v in tested]), strict=True):
        vs["p_holm"] = adjusted
        vs["holm_family"] = len(tested)
    return {
        "protocol": protocol.to_dict(),
        "reference_folds": reference,
        "ranked_by": "pooled LOSO macro F1"
        if any(f.startswith(LOSO_PREFIX) for f in reference)
        else "mean macro F1 over the reference folds",
        "rows": rows,
    }


def sweep_summary(sections: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model and class set: its best variant by pooled LOSO macro F1 among the complete
    entries of every protocol section (ties: the lower protocol id, then the name), with the
    variant's settings, its protocol and how many variants it was chosen from."""
    groups: dict[tuple[str, str], list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)
    for section in sections:
        protocol = section["protocol"]
        for e in section["rows"]:
            if e["complete"] and e["pooled_loso"] is not None:
                groups[(e["model"], protocol["class_set"])].append((protocol, e))
    summary = []
    for (model, class_set), entries in sorted(groups.items()):
        protocol, best = min(
            entries,
            key=lambda pe: (-pe[1]["pooled_loso"]["macro_f1"], pe[0]["id"], pe[1]["variant"]),
        )
        pooled = best["pooled_loso"]
        summary.append(
            {
                "model": model,
                "class_set": class_set,
                "best_variant": best["variant"],
                "settings": best["settings"],
                "pooled_loso_macro_f1": pooled["macro_f1"],
                "ci_low": pooled["ci_low"],
                "ci_high": pooled["ci_high"],
                "protocol_id": protocol["id"],
                "protocol": protocol["description"],
                "variants_compared": sorted({e["variant"] for _, e in entries}),
            }
        )
    return summary


def build_leaderboard(results: list[Result], refused: list[str] | None = None) -> dict[str, Any]:
    """Every protocol's board, the protocol with the most results first, and the sweep summary.
    `refused`: why each stored result that cannot be ranked (a legacy protocol) was left out."""
    by_protocol: dict[EvaluationProtocol, list[Result]] = defaultdict(list)
    for r in results:
        by_protocol[r.protocol].append(r)
    order = sorted(by_protocol, key=lambda p: (-len(by_protocol[p]), p.id))
    sections = [build_protocol_board(p, by_protocol[p]) for p in order]
    return {
        "notes": NOTES,
        "protocols": sections,
        "sweep_summary": sweep_summary(sections),
        "refused": list(refused or []),
    }


NOTES = [
    "Per-fold macro F1 averages over the classes present in that fold's test labels.",
    "LOSO mean ± std: loso-101…108, sample std (ddof=1). loso-109 is apart: subject 109's "
    "Protocol data is rope jumping only, so its macro F1 is over one class.",
    "Pooled LOSO: every LOSO test window (loso-109 included) in one confusion matrix, macro F1 "
    "over every class present; 95 % CI from a bootstrap that resamples test subjects.",
    "Validation: LOSO folds validate on held-out people, disjoint from train and test (fixed "
    "rotation, never 109; how many per fold is in the protocol line), holdout-106 on 105; "
    "stratified validates within-subject. A temperature is applied only when it carries from "
    "one validation group to another (the two people of a LOSO fold, otherwise the time halves "
    "of one person's windows).",
    "Ranked: only complete entries (every fold of the protocol's reference set, all trained "
    "with the same settings), by pooled LOSO macro F1. Incomplete entries are listed below, "
    "unranked.",
    "training: how each variant was trained (epochs, loss, learning rate, early-stopping "
    "patience, augmentation); training settings are the variant's, not the protocol's, so "
    "variants that train differently share a table.",
    "vs best: mean per-fold macro F1 difference from the rank-1 entry over shared LOSO folds "
    "(109 apart), the Wilcoxon signed-rank p-value, and that p-value Holm-adjusted over every "
    "comparison with the best in the table (the best was picked on the same folds), with n "
    "folds.",
    "An entry is a variant (a registered model with overrides, named in experiments.yaml; a "
    "built-in variant is named after its model). Sweep summary: per model and class set, the "
    "best complete variant by pooled LOSO macro F1 over every protocol, under its own protocol.",
]


def _f(value: float | None, digits: int = 3) -> str:
    return MISSING if value is None else f"{value:.{digits}f}"


def _cells(e: dict[str, Any], reference: list[str]) -> list[str]:
    pooled, loso, vs = e["pooled_loso"], e["loso"], e["vs_best"] or {}
    pooled_cell = (
        MISSING
        if pooled is None
        else f"{pooled['macro_f1']:.3f} [{pooled['ci_low']:.3f}, {pooled['ci_high']:.3f}]"
    )
    loso_cell = (
        MISSING
        if loso is None
        else f"{loso['macro_f1_mean']:.3f} ± {_f(loso['macro_f1_std'])} (n={len(loso['folds'])})"
    )
    if not vs or vs.get("note") == "the best entry":
        vs_cell = "best" if vs else MISSING
    else:
        delta = vs.get("mean_difference")
        p, holm = vs["p_value"], vs.get("p_holm")  # boards saved before Holm lack it
        vs_cell = (
            f"{_f(delta, 3) if delta is None else f'{delta:+.3f}'}, "
            f"p={_f(p, 3)}{'' if holm is None else f', Holm {holm:.3f}'} (n={vs['n_folds']})"
        )
    by_seed = pooled["macro_f1_by_seed"] if pooled else {}
    spread = (
        f"{min(by_seed.values()):.3f}–{max(by_seed.values()):.3f}" if len(by_seed) > 1 else MISSING
    )
    status = (
        "complete"
        if e["complete"]
        else "incomplete: no " + ", ".join(e["missing_folds"])
        if e["missing_folds"]
        else "incomplete: folds trained with different settings; train them again"
    )
    apart = e["apart"].get("loso-109")
    return [
        MISSING if e["rank"] is None else str(e["rank"]),
        e["variant"],
        e["model"],
        format_training(e.get("training", {})),  # absent from boards saved before it existed
        pooled_cell,
        loso_cell,
        vs_cell,
        _f(apart["macro_f1"]) if apart else MISSING,
        _f(e["per_fold"].get("stratified", {}).get("macro_f1")),
        _f(e["per_fold"].get("holdout-106", {}).get("macro_f1")),
        str(len(e["seeds"])),
        spread,
        status,
    ]


HEADER = [
    "rank",
    "variant",
    "model",
    "training",
    "pooled LOSO macro F1 [95% CI]",
    "LOSO macro F1 mean ± std (n)",
    "vs best: Δ, Wilcoxon p, Holm-adjusted (n)",
    "loso-109 (apart)",
    "stratified",
    "holdout-106",
    "seeds",
    "seed spread (pooled)",
    "status",
]


def leaderboard_rows(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every entry of every protocol section as one row of the markdown table's columns (rank
    as a number, pooled LOSO macro F1 as a number beside its text with the CI), the protocol
    id first: the leaderboard as a table a UI shows inline and sorts."""
    rows = []
    for section in board["protocols"]:
        for e in section["rows"]:
            cells = dict(zip(HEADER, _cells(e, section["reference_folds"]), strict=True))
            pooled = e["pooled_loso"]
            first = {
                "protocol": section["protocol"]["id"],
                "rank": e["rank"],
                "variant": e["variant"],
                "model": e["model"],
                "pooled LOSO macro F1": None if pooled is None else pooled["macro_f1"],
            }
            rows.append(first | {k: v for k, v in cells.items() if k not in first})
    return rows


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(r) + " |" for r in rows
    ]


def format_training(training: dict[str, Any]) -> str:
    """Training settings in short: epochs, loss, learning rate, patience, augmentation."""
    if not training:
        return MISSING
    loss = training["loss"]
    if loss == "focal":
        loss = f"focal (γ={training['focal_gamma']:g})"
    patience = training["patience"]
    augment = "on" if training["augment"]["enabled"] else "off"
    return (
        f"{training['epochs']} ep, {loss}, lr {training['lr']:g}, "
        f"patience {'none' if patience is None else patience}, aug {augment}"
    )


def format_settings(settings: dict[str, Any]) -> str:
    """A variant's overrides as `key=value` text (model arguments as `m.<name>`)."""
    return ", ".join(f"{k}={v}" for k, v in settings.items()) or "defaults"


def sweep_summary_lines(summary: list[dict[str, Any]]) -> list[str]:
    """The sweep summary as markdown lines: a heading, a note and one table row per model."""
    rows = [
        [
            s["model"],
            s["class_set"],
            s["best_variant"],
            f"{s['pooled_loso_macro_f1']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]",
            s["protocol_id"],
            format_settings(s["settings"]),
            str(len(s["variants_compared"])),
        ]
        for s in summary
    ]
    header = [
        "model",
        "class set",
        "best variant",
        "pooled LOSO macro F1 [95% CI]",
        "protocol",
        "settings",
        "variants compared",
    ]
    return [
        "## Sweep summary: best variant per model",
        "",
        "Among complete entries of every protocol, by pooled LOSO macro F1; each under the "
        "protocol named (its section above).",
        "",
        *_table(header, rows),
        "",
    ]


def _calibration_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Per variant over its LOSO results: validation vs test macro F1 (whether the held-out
    validation people predict the test person) and test calibration before and after the
    temperature."""
    rows = [e for e in rows if e["calibration"]["n_results"]]
    if not rows:
        return []
    header = [
        "variant",
        "LOSO results",
        "mean val macro F1",
        "mean test macro F1",
        "test ECE before → after",
        "test NLL before → after",
        "test NLL +>10 %",
        "T applied",
    ]
    table = [
        [
            e["variant"],
            str(c["n_results"]),
            _f(c["val_macro_f1_mean"]),
            _f(c["test_macro_f1_mean"]),
            f"{_f(c['ece_before_mean'])} → {_f(c['ece_after_mean'])}",
            f"{_f(c['nll_before_mean'])} → {_f(c['nll_after_mean'])}",
            str(c["n_nll_worse_10pct"]),
            str(c["n_temperature_applied"]),
        ]
        for e in rows
        for c in [e["calibration"]]
    ]
    intro = "Validation against test, and calibration on the test set, over the LOSO results:"
    return [intro, "", *_table(header, table), ""]


def leaderboard_markdown(board: dict[str, Any], title: str) -> str:
    """One section per protocol (its description, the ranked table, the per-fold table, the
    validation and calibration table), then the sweep summary."""
    lines = [f"# {title}", ""]
    if not board["protocols"]:
        lines += ["No evaluated models yet.", ""]
    for section in board["protocols"]:
        protocol, reference = section["protocol"], section["reference_folds"]
        lines += [f"## {protocol['description']}", ""]
        lines += [f"Folds: {', '.join(reference)}. Ranked by {section['ranked_by']}.", ""]
        lines += _table(HEADER, [_cells(e, reference) for e in section["rows"]])
        lines += ["", "Per-fold test macro F1 (seed mean):", ""]
        per_fold = [
            [e["variant"], *(_f(e["per_fold"].get(f, {}).get("macro_f1")) for f in reference)]
            for e in section["rows"]
        ]
        lines += _table(["variant", *reference], per_fold)
        lines.append("")
        lines += _calibration_lines(section["rows"])
        overridden = [e for e in section["rows"] if e["settings"]]
        if overridden:
            lines += ["Variant settings (overrides of the model's and the run's defaults):", ""]
            lines += [
                f"- {e['variant']} ({e['model']}): {format_settings(e['settings'])}"
                for e in overridden
            ]
            lines.append("")
    if board.get("sweep_summary"):
        lines += sweep_summary_lines(board["sweep_summary"])
    if board.get("refused"):
        lines += [f"## Not ranked: {len(board['refused'])} result(s) under a legacy protocol", ""]
        lines += [f"- {why}" for why in board["refused"]]
        lines.append("")
    lines += [f"- {note}" for note in board["notes"]]
    return "\n".join([*lines, ""])


def leaderboard_plot(section: dict[str, Any], path: Path, title: str) -> Path:
    """Per variant: every LOSO fold's macro F1 (dots, 109 hollow), their box, and the pooled
    macro F1 with its CI (diamond and bar): the distribution, not a single bar."""
    rows = section["rows"] if section else []
    fig = Figure(figsize=(max(7.0, 1.1 * len(rows) + 3.0), 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for i, e in enumerate(rows):
        folds = e["loso"]["folds"] if e["loso"] else []
        values = [e["per_fold"][f]["macro_f1"] for f in folds]
        if len(values) > 1:
            ax.boxplot([values], positions=[i], widths=0.5, showfliers=False)
        jitter = np.linspace(-0.12, 0.12, max(len(values), 1))[: len(values)]
        ax.scatter(i + jitter, values, s=18, color="tab:blue", zorder=3, label=None)
        apart = e["apart"].get("loso-109")
        if apart:
            ax.scatter([i + 0.2], [apart["macro_f1"]], s=24, facecolors="none", edgecolors="grey")
        pooled = e["pooled_loso"]
        if pooled:
            ax.errorbar(
                [i + 0.3],
                [pooled["macro_f1"]],
                yerr=[
                    [pooled["macro_f1"] - pooled["ci_low"]],
                    [pooled["ci_high"] - pooled["macro_f1"]],
                ],
                fmt="D",
                color="tab:red",
                capsize=3,
            )
    labels = [
        f"{e['variant']}\n" + ("incomplete" if not e["complete"] else f"#{e['rank']}") for e in rows
    ]
    ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test macro F1")
    protocol = section["protocol"]["id"] if section else "no results"
    ax.set_title(
        f"{title} [{protocol}]\n"
        "blue: LOSO folds 101–108 · hollow: loso-109 · red: pooled LOSO with 95% CI",
        fontsize=10,
    )
    ax.grid(axis="y", alpha=0.3)
    if not rows:
        ax.text(0.5, 0.5, "no results yet", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_leaderboard(board: dict[str, Any], out_dir: Path, title: str) -> dict[str, Path]:
    """leaderboard.md, leaderboard.json, leaderboard.png (first protocol) and one
    leaderboard_<protocol id>.png per protocol, each written atomically."""
    out_dir = Path(out_dir)
    sections = board["protocols"]
    files = {
        "markdown": write_text(leaderboard_markdown(board, title), out_dir / "leaderboard.md"),
        "json": write_json({"title": title, **board}, out_dir / "leaderboard.json"),
        "plot": leaderboard_plot(
            sections[0] if sections else {}, out_dir / "leaderboard.png", title
        ),
    }
    for section in sections:
        pid = section["protocol"]["id"]
        files[f"plot_{pid}"] = leaderboard_plot(section, out_dir / f"leaderboard_{pid}.png", title)
    return files


def protocol_folds(class_set: str) -> list[str]:
    """Every fold a variant is evaluated on under a protocol of `class_set`: all of them, but
    loso-109 where the class set has no rope jumping (subject 109's only activity)."""
    rope_jumping = 24
    if rope_jumping in CLASS_SETS[class_set]:
        return list(FOLD_NAMES)
    return [f for f in FOLD_NAMES if f not in LOSO_APART]


def missing_folds(board: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries not evaluated on every fold of their protocol (`protocol_folds`), ranked ones
    included (an entry is ranked when it has every fold some entry of its protocol has, which
    a leaderboard of a partial run satisfies): protocol, variant, rank and the missing folds."""
    gaps = []
    for section in board["protocols"]:
        expected = protocol_folds(section["protocol"]["class_set"])
        for e in section["rows"]:
            absent = [f for f in expected if f not in e["per_fold"]]
            if absent:
                gaps.append(
                    {
                        "protocol": section["protocol"]["id"],
                        "variant": e["variant"],
                        "rank": e["rank"],
                        "missing_folds": absent,
                    }
                )
    return gaps


def _tracking_key(text: str) -> str:
    """`text` as an MLflow metric key: a swept variant's `=` becomes `:` and `+` (in a number
    such as 1e+03) `_`, the two characters of a variant name that MLflow refuses."""
    return text.replace("=", ":").replace("+", "_")


def leaderboard_tracking(board: dict[str, Any]) -> tuple[dict[str, float], dict[str, Any]]:
    """The leaderboard as MLflow metrics and params, so its runs chart against each other.

    Metrics: each variant's pooled LOSO macro F1 and its CI bounds,
    `<variant>/pooled_loso_macro_f1`, `<variant>/pooled_loso_ci_low`,
    `<variant>/pooled_loso_ci_high`, for the main (first) protocol section; the other sections'
    keys start with `<protocol id>/`. Params: the main protocol (`protocol_*`) and the ids of
    every section (`protocols`)."""
    sections = board["protocols"]
    metrics: dict[str, float] = {}
    for i, section in enumerate(sections):
        prefix = "" if i == 0 else f"{section['protocol']['id']}/"
        for e in section["rows"]:
            pooled = e["pooled_loso"]
            if pooled is None:
                continue
            key = _tracking_key(f"{prefix}{e['variant']}")
            metrics[f"{key}/pooled_loso_macro_f1"] = pooled["macro_f1"]
            metrics[f"{key}/pooled_loso_ci_low"] = pooled["ci_low"]
            metrics[f"{key}/pooled_loso_ci_high"] = pooled["ci_high"]
    params: dict[str, Any] = {"protocols": [s["protocol"]["id"] for s in sections]}
    if sections:  # recorded as EvaluationProtocol.to_dict: logged as a training run logs it
        params |= {f"{PARAM_PREFIX}{k}": v for k, v in sections[0]["protocol"].items()}
    return metrics, params
