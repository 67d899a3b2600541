"""How far from 1 a temperature may go before some test person's NLL rises by more than 10 %.

A diagnostic of the calibration target ("no LOSO result whose test NLL grows by more than
10 %"), read from the evaluation bundles `pamap demo` wrote. It applies one temperature T to
every LOSO result's pre-temperature test probabilities (`predictions.parquet`) and counts the
results whose test NLL rises by more than 10 %. It uses the test labels, so it only describes
the target; it must never choose a temperature.

    uv run python bench/calibration_band.py --root data --protocol p0b263e62
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import polars as pl

from ml_core.data.columns import SUBJECTS
from ml_core.evaluation.calibration import nll_from_logits
from ml_core.paths import DataPaths

TEMPERATURES = (0.7, 0.8, 0.9, 0.95, 1.05, 1.1, 1.2, 1.3, 1.5)
TOLERANCE = 1.10  # the target's "+10 %"


def loso_results(paths: DataPaths, protocol: str, seed: int) -> dict[tuple[str, str], Path]:
    """(variant, fold) -> predictions.parquet, for every variant with a bundle of the protocol."""
    found = {}
    for subject in SUBJECTS:
        fold = f"loso-{subject}"
        for variant_dir in sorted((paths.root / "evaluation" / fold).glob("*")):
            path = paths.evaluation_dir(fold, variant_dir.name, protocol, seed)
            if (path / "predictions.parquet").exists():
                found[(variant_dir.name, fold)] = path / "predictions.parquet"
    return found


def nll_by_temperature(path: Path) -> tuple[float, dict[float, float]]:
    """Test NLL at T = 1 and at each of TEMPERATURES, from the stored probabilities."""
    frame = pl.read_parquet(path)
    columns = [c for c in frame.columns if c.startswith("p_")]
    class_ids = [int(c.removeprefix("p_")) for c in columns]
    y = np.searchsorted(class_ids, frame["true_activity_id"].to_numpy())
    logits = np.log(np.clip(frame.select(columns).to_numpy(), 1e-12, 1.0))
    return nll_from_logits(logits, y), {t: nll_from_logits(logits, y, t) for t in TEMPERATURES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("data"), help="the data root")
    parser.add_argument("--protocol", required=True, help="protocol id, e.g. p0b263e62")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    results = loso_results(DataPaths(args.root), args.protocol, args.seed)
    if not results:
        raise SystemExit(f"no LOSO bundles of protocol {args.protocol} under {args.root}")
    worse = dict.fromkeys(TEMPERATURES, 0)
    for path in results.values():
        base, by_t = nll_by_temperature(path)
        for t, nll in by_t.items():
            worse[t] += nll > TOLERANCE * base
    variants = sorted({v for v, _ in results})
    print(
        f"{len(results)} LOSO results of protocol {args.protocol}, seed {args.seed} "
        f"({len(variants)} variants: {', '.join(variants)})"
    )
    print("| T applied to every result | results with test NLL +>10 % |")
    print("|---|---|")
    for t in TEMPERATURES:
        print(f"| {t:g} | {worse[t]} of {len(results)} |")


if __name__ == "__main__":
    main()
