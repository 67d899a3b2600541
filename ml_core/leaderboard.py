"""Leaderboard: every model side by side per evaluation protocol, LOSO as mean ± std over folds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ml_core.folds import FOLD_NAMES
from ml_core.io import atomic_path, write_json, write_text

METRICS: tuple[str, ...] = ("macro_f1", "accuracy")
LOSO_PREFIX = "loso-"
# Sample standard deviation across LOSO folds (the folds are a sample of possible subjects).
STD_DDOF = 1
MISSING = "–"
PROTOCOL_NOTE = (
    "Protocols: *stratified* = 70/15/15 of every subject × activity shard, contiguous in time; "
    "*holdout-106* = train on the rest, validate on subject 105, test on subject 106; "
    f"*LOSO* = leave one subject out, mean ± sample std (ddof={STD_DDOF}) over the LOSO folds "
    "present, n = number of folds; *gap* = stratified macro F1 − LOSO mean macro F1 (how much "
    f"a within-subject split overstates cross-subject performance). {MISSING} = no result."
)


def _check_record(i: int, record: dict) -> tuple[str, str, dict[str, float]]:
    for key in ("fold", "model", *METRICS):
        if key not in record:
            raise ValueError(f"leaderboard record {i}: missing field {key!r} in {record}")
    fold, model = record["fold"], record["model"]
    if fold not in FOLD_NAMES:
        raise ValueError(
            f"leaderboard record {i}: field 'fold' is {fold!r}, not one of {FOLD_NAMES}"
        )
    if not isinstance(model, str) or not model:
        raise ValueError(f"leaderboard record {i}: field 'model' must be a non-empty string")
    values = {}
    for key in METRICS:
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, int | float | np.number):
            raise ValueError(f"leaderboard record {i}: field {key!r} is {value!r}, not a number")
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"leaderboard record {i}: field {key!r} is {value!r}, not in [0, 1]")
        values[key] = float(value)
    return fold, model, values


def _loso_summary(per_fold: dict[str, dict[str, float]]) -> dict | None:
    folds = sorted(f for f in per_fold if f.startswith(LOSO_PREFIX))
    if not folds:
        return None
    out: dict = {"n_folds": len(folds), "folds": folds}
    for key in METRICS:
        values = np.array([per_fold[f][key] for f in folds])
        out[f"{key}_mean"] = float(values.mean())
        # One fold has no spread to estimate: std is None rather than 0 or NaN.
        out[f"{key}_std"] = float(values.std(ddof=STD_DDOF)) if len(folds) > STD_DDOF else None
        out[f"{key}_per_fold"] = dict(zip(folds, values.tolist(), strict=True))
    return out


def _rank_key(row: dict[str, Any]) -> tuple[bool, float, str]:
    """Best LOSO mean macro F1 first; models without LOSO results last, by name."""
    loso = row["loso"]
    return (loso is None, -loso["macro_f1_mean"] if loso else 0.0, row["model"])


def build_leaderboard(records: list[dict]) -> dict:
    """Aggregate (fold, model, macro_f1, accuracy) records into one row per model.

    Rows are sorted by LOSO mean macro F1 (descending); models without LOSO results come
    last, by name. Missing protocols are None.
    """
    by_model: dict[str, dict[str, dict[str, float]]] = {}
    for i, record in enumerate(records):
        fold, model, values = _check_record(i, record)
        if fold in by_model.setdefault(model, {}):
            raise ValueError(f"leaderboard record {i}: duplicate result for {model} on {fold}")
        by_model[model][fold] = values

    rows = []
    for model, per_fold in by_model.items():
        loso = _loso_summary(per_fold)
        stratified = per_fold.get("stratified")
        gap = None
        if stratified is not None and loso is not None:
            gap = stratified["macro_f1"] - loso["macro_f1_mean"]
        rows.append(
            {
                "model": model,
                "stratified": stratified,
                "holdout-106": per_fold.get("holdout-106"),
                "loso": loso,
                "gap_macro_f1": gap,
            }
        )
    rows.sort(key=_rank_key)
    return {"std_ddof": STD_DDOF, "protocol_note": PROTOCOL_NOTE, "rows": rows}


def _fmt(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


def _fmt_loso(loso: dict | None, key: str) -> str:
    if loso is None:
        return MISSING
    return f"{loso[f'{key}_mean']:.3f} ± {_fmt(loso[f'{key}_std'])} (n={loso['n_folds']})"


def leaderboard_markdown(board: dict, title: str) -> str:
    """A markdown table of the board, one row per model, with the protocol of every column."""
    header = [
        "rank",
        "model",
        "LOSO macro F1 (mean ± std, n folds)",
        "LOSO accuracy (mean ± std, n folds)",
        "stratified macro F1",
        "stratified accuracy",
        "holdout-106 macro F1",
        "holdout-106 accuracy",
        "gap (stratified − LOSO macro F1)",
    ]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rank, row in enumerate(board["rows"], start=1):
        strat, hold = row["stratified"] or {}, row["holdout-106"] or {}
        cells = [
            str(rank),
            row["model"],
            _fmt_loso(row["loso"], "macro_f1"),
            _fmt_loso(row["loso"], "accuracy"),
            _fmt(strat.get("macro_f1")),
            _fmt(strat.get("accuracy")),
            _fmt(hold.get("macro_f1")),
            _fmt(hold.get("accuracy")),
            MISSING if row["gap_macro_f1"] is None else f"{row['gap_macro_f1']:+.3f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not board["rows"]:
        lines.append("| " + " | ".join([MISSING] * len(header)) + " |")
    return "\n".join([*lines, "", board["protocol_note"], ""])


def leaderboard_plot(board: dict, path: Path, title: str) -> Path:
    """Grouped bars of macro F1 per model: stratified, holdout-106, LOSO mean ± std (PNG)."""
    rows = board["rows"]
    fig = Figure(figsize=(max(7.0, 1.3 * len(rows) + 3.0), 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.27
    x = np.arange(len(rows))
    # Missing cells draw no bar (the markdown table shows them as "–").
    for offset, protocol, colour in (
        (-width, "stratified", "tab:gray"),
        (0.0, "holdout-106", "tab:orange"),
    ):
        idx = [i for i, r in enumerate(rows) if r[protocol] is not None]
        heights = [rows[i][protocol]["macro_f1"] for i in idx]
        ax.bar(x[idx] + offset, heights, width, color=colour, label=protocol)
    idx = [i for i, r in enumerate(rows) if r["loso"] is not None]
    loso = [rows[i]["loso"] for i in idx]
    means = [summary["macro_f1_mean"] for summary in loso]
    stds = [summary["macro_f1_std"] or 0.0 for summary in loso]
    ax.bar(
        x[idx] + width,
        means,
        width,
        yerr=stds,
        capsize=3,
        color="tab:blue",
        label="LOSO mean ± std",
    )
    for i, mean, std, summary in zip(idx, means, stds, loso, strict=True):
        n = summary["n_folds"]
        ax.text(x[i] + width, mean + std + 0.01, f"n={n}", ha="center", fontsize=7)
    ax.set_xticks(x, [r["model"] for r in rows], rotation=30, ha="right")
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("macro F1")
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    if rows:
        ax.legend(loc="upper center", ncol=3, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no results yet", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return path


def write_leaderboard(board: dict, out_dir: Path, title: str) -> dict[str, Path]:
    """Write leaderboard.md, leaderboard.json and leaderboard.png into `out_dir` atomically."""
    out_dir = Path(out_dir)
    return {
        "markdown": write_text(leaderboard_markdown(board, title), out_dir / "leaderboard.md"),
        "json": write_json({"title": title, **board}, out_dir / "leaderboard.json"),
        "plot": leaderboard_plot(board, out_dir / "leaderboard.png", title),
    }
