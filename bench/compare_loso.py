"""Pooled LOSO macro F1 of two result sets side by side, e.g. before and after a code change.

A source is either a `bench/generalisation.py` output folder (`OUT/<model>/<fold>.json`, e.g.
the same script run in a worktree of older code) or a data root whose evaluation bundles hold
the product's own results (`evaluation/<fold>/<variant>/<protocol>/seed-<n>/predictions.parquet`,
as `pamap demo` writes them; `--protocol` picks the protocol id). Both are pooled with the
leaderboard's own function (`pooled_loso`: one confusion matrix over every LOSO test window,
macro F1 over the classes present, 95 % CI from a bootstrap over test subjects), and the per-fold
mean ± sample std leaves loso-109 apart, as the leaderboard does. Only models with every LOSO
fold in both sources are compared.

    uv run python bench/compare_loso.py --before bench:/tmp/gen_before \\
        --after data:data --protocol <protocol id>
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl

from ml_core.data.columns import SUBJECTS
from ml_core.evaluation.leaderboard import LOSO_APART, STD_DDOF, Result, pooled_loso
from ml_core.evaluation.metrics import confusion_counts, macro_f1_from_confusion
from ml_core.evaluation.protocol import EvaluationProtocol

LOSO_FOLDS = [f"loso-{s}" for s in SUBJECTS]
# Results are pooled by label only; the protocol object just satisfies `Result`.
_ANY_PROTOCOL = EvaluationProtocol(256, 128, 1, "protocol12")


def _result(model: str, fold: str, y_true: np.ndarray, y_pred: np.ndarray) -> Result:
    classes = np.unique(y_true)
    f1 = float(
        macro_f1_from_confusion(confusion_counts(y_true, y_pred, np.union1d(classes, y_pred)))
    )
    accuracy = float(np.mean(y_true == y_pred))
    return Result(model, fold, _ANY_PROTOCOL, 0, y_true, y_pred, f1, accuracy)


def from_bench(folder: Path) -> dict[str, list[Result]]:
    """`bench/generalisation.py` results: {model: [Result per LOSO fold]}."""
    out: dict[str, list[Result]] = {}
    for model_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        results = []
        for fold in LOSO_FOLDS:
            path = model_dir / f"{fold}.json"
            if path.is_file():
                record = json.loads(path.read_text())
                y_true, y_pred = np.array(record["y_true"]), np.array(record["y_pred"])
                results.append(_result(model_dir.name, fold, y_true, y_pred))
        out[model_dir.name] = results
    return out


def from_evaluations(root: Path, protocol: str, seed: int) -> dict[str, list[Result]]:
    """The product's evaluation bundles under `root/evaluation`: {variant: [Result per fold]}."""
    out: dict[str, list[Result]] = {}
    for fold in LOSO_FOLDS:
        for bundle in sorted((root / "evaluation" / fold).glob(f"*/{protocol}/seed-{seed}")):
            predictions = pl.read_parquet(bundle / "predictions.parquet")
            y_true = predictions["true_activity_id"].to_numpy()
            y_pred = predictions["predicted_activity_id"].to_numpy()
            variant = bundle.parent.parent.name
            out.setdefault(variant, []).append(_result(variant, fold, y_true, y_pred))
    return out


def load(source: str, protocol: str, seed: int) -> dict[str, list[Result]]:
    kind, _, path = source.partition(":")
    if kind == "bench":
        return from_bench(Path(path))
    if kind == "data":
        return from_evaluations(Path(path), protocol, seed)
    raise SystemExit(f"source {source!r}: expected bench:<folder> or data:<data root>")


def summary(results: list[Result]) -> tuple[dict, float, float]:
    pooled = pooled_loso(results)
    per_fold = [r.macro_f1 for r in results if r.fold not in LOSO_APART]
    return pooled, float(np.mean(per_fold)), float(np.std(per_fold, ddof=STD_DDOF))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", required=True, help="bench:<folder> or data:<data root>")
    parser.add_argument("--after", required=True, help="bench:<folder> or data:<data root>")
    parser.add_argument("--protocol", default="", help="protocol id of data: sources")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    before = load(args.before, args.protocol, args.seed)
    after = load(args.after, args.protocol, args.seed)

    def complete(results: dict[str, list[Result]], model: str) -> bool:
        return sorted(r.fold for r in results.get(model, [])) == sorted(LOSO_FOLDS)

    print(
        "| model | before: pooled [95% CI] | after: pooled [95% CI] | change "
        "| before: mean ± std (109 apart) | after: mean ± std | test windows before / after |"
    )
    print("|---|---|---|---|---|---|---|")
    rows = []
    for model in sorted(set(before) | set(after)):
        if not complete(after, model):
            continue
        a, a_mean, a_std = summary(after[model])
        cells = [f"{a['macro_f1']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]"]
        if complete(before, model):
            b, b_mean, b_std = summary(before[model])
            change = f"{a['macro_f1'] - b['macro_f1']:+.3f}"
            before_cells = [f"{b['macro_f1']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}]"]
            means = [f"{b_mean:.3f} ± {b_std:.3f}", f"{a_mean:.3f} ± {a_std:.3f}"]
            windows = f"{b['n_windows']:,} / {a['n_windows']:,}"
        else:
            change, before_cells = "–", ["– (not in before)"]
            means = ["–", f"{a_mean:.3f} ± {a_std:.3f}"]
            windows = f"– / {a['n_windows']:,}"
        rows.append(
            (
                a["macro_f1"],
                f"| {model} | {before_cells[0]} | {cells[0]} | {change} | "
                f"{means[0]} | {means[1]} | {windows} |",
            )
        )
    for _, row in sorted(rows, reverse=True):
        print(row)
    missing = sorted(m for m in set(before) | set(after) if not complete(after, m))
    if missing:
        print(f"\nleft out (not every LOSO fold in the after source): {', '.join(missing)}")


if __name__ == "__main__":
    main()
