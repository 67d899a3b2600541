"""Each asset's `code_version` and the `ml_core` source it runs.

Dagster shows a materialized partition as stale when its asset's code version differs from the
one it was materialized with. Bump an asset's version here when the code that computes it
changes; `tests/test_code_versions.py` fails when that source changed but its version did not
(the version and a hash of the source are recorded together in `code_versions.json`). After a
bump, record the new hashes:

    uv run python -m orchestration.code_versions --record

A change that moves or renames code without changing what any asset computes (a module moved to
another folder, an import renamed) re-records the hashes without a bump, so every materialized
partition stays current; the unchanged test suite is what vouches for it:

    uv run python -m orchestration.code_versions --record --refactor
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import sys
from pathlib import Path

from ml_core.paths import PROJECT_ROOT

RECORD = Path(__file__).with_name("code_versions.json")

_DATA = "ml_core/data/pipeline.py"
_TRAIN = "ml_core/pipeline.py"

# The code each asset runs: a file, a folder of modules, or `file:function` for one top-level
# function of a module shared by several assets.
SOURCES: dict[str, tuple[str, ...]] = {
    "raw_recording": (
        f"{_DATA}:ingest_subject",
        "ml_core/data/ingest.py",
        "ml_core/data/columns.py",
    ),
    "validated_recording": (f"{_DATA}:validate_subject", "ml_core/data/schema.py"),
    "imputed_recording": (f"{_DATA}:impute_subject", "ml_core/data/impute.py"),
    "activity_shards": (f"{_DATA}:shard_subject", "ml_core/data/shards.py"),
    "fold_manifests": (f"{_DATA}:build_fold_manifests", "ml_core/data/folds.py"),
    "feature_stats": (f"{_DATA}:fold_feature_stats", "ml_core/data/stats.py"),
    "trained_model": (
        f"{_TRAIN}:train_fold_model",
        f"{_TRAIN}:_train_one_seed",
        f"{_TRAIN}:check_fold_window",
        f"{_TRAIN}:fold_split_gap",
        "ml_core/training/variants.py",
        "ml_core/training/train.py",
        "ml_core/training/feature_cache.py",
        "ml_core/evaluation/metrics.py",
        "ml_core/training/config.py",
        "ml_core/evaluation/protocol.py",
        "ml_core/training/losses.py",
        "ml_core/data/windows.py",
        "ml_core/training/augment.py",
        "ml_core/lifecycle/tracking.py",
        "ml_core/models",
    ),
    "evaluation_bundle": (
        f"{_TRAIN}:evaluate_fold_model",
        f"{_TRAIN}:_evaluate_one_seed",
        f"{_TRAIN}:check_fold_window",
        "ml_core/evaluation/evaluate.py",
        "ml_core/evaluation/metrics.py",
        "ml_core/evaluation/calibration.py",
        "ml_core/training/feature_cache.py",
    ),
    "fold_results": (f"{_TRAIN}:collect_fold_results",),
    "leaderboard": (
        f"{_TRAIN}:collect_results",
        f"{_TRAIN}:build_report",
        "ml_core/evaluation/leaderboard.py",
        "ml_core/evaluation/metrics.py",
    ),
    "activity_timeline": (
        "ml_core/lifecycle/timeline.py",
        "ml_core/evaluation/metrics.py",
        "ml_core/lifecycle/serving.py",
        "ml_core/lifecycle/tracking.py",
    ),
    "inbox_timeline": (
        "ml_core/lifecycle/timeline.py",
        "ml_core/evaluation/metrics.py",
        "ml_core/lifecycle/serving.py",
        "ml_core/data/ingest.py",
    ),
    "champion_model": (
        f"{_TRAIN}:champion_candidates",
        f"{_TRAIN}:choose_champion",
        f"{_TRAIN}:retrain_on_all_subjects",
        f"{_TRAIN}:publish_serving_model",
        "ml_core/lifecycle/champion.py",
        "ml_core/lifecycle/serving.py",
    ),
}

CODE_VERSIONS: dict[str, str] = {
    "raw_recording": "2",
    "validated_recording": "1",
    "imputed_recording": "1",
    "activity_shards": "1",
    "fold_manifests": "3",
    "feature_stats": "1",
    "trained_model": "12",
    "evaluation_bundle": "6",
    "fold_results": "1",
    "leaderboard": "6",
    "activity_timeline": "5",
    "inbox_timeline": "5",
    "champion_model": "6",
}


def _function_source(path: Path, name: str) -> str:
    text = path.read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            segment = ast.get_source_segment(text, node)
            assert segment is not None
            return segment
    raise KeyError(f"{path}: no top-level function {name!r}")


def source_hash(asset: str) -> str:
    """sha256 over the source an asset runs (files in name order, functions by their text)."""
    digest = hashlib.sha256()
    for source in SOURCES[asset]:
        file, _, function = source.partition(":")
        path = PROJECT_ROOT / file
        if function:
            text = _function_source(path, function)
        elif path.is_dir():
            text = "".join(p.read_text() for p in sorted(path.glob("*.py")))
        else:
            text = path.read_text()
        digest.update(f"{source}\n{text}\n".encode())
    return digest.hexdigest()


def recorded() -> dict[str, dict[str, str]]:
    return json.loads(RECORD.read_text())


def record(refactor: bool = False) -> list[str]:
    """Write the current source hashes; refuse for an asset whose source changed but whose
    version did not (that is the mistake this file exists to catch), unless `refactor` says
    the change moved code without changing its behaviour."""
    previous = recorded() if RECORD.exists() else {}
    table, unbumped = {}, []
    for asset, version in CODE_VERSIONS.items():
        current = source_hash(asset)
        old = previous.get(asset)
        changed = old and old["source_sha256"] != current and old["version"] == version
        if changed and not refactor:
            unbumped.append(asset)
        table[asset] = {"version": version, "source_sha256": current}
    if not unbumped:
        RECORD.write_text(json.dumps(table, indent=2) + "\n")
    return unbumped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write code_versions.json")
    parser.add_argument(
        "--refactor",
        action="store_true",
        help="with --record: the change moved code without changing behaviour; keep versions",
    )
    args = parser.parse_args(argv)
    if not args.record:
        for asset, version in CODE_VERSIONS.items():
            print(f"{asset:<20} {version:>4}  {source_hash(asset)[:16]}")
        return 0
    unbumped = record(refactor=args.refactor)
    if unbumped:
        print(f"source changed, version not bumped: {', '.join(unbumped)}; bump CODE_VERSIONS")
        return 1
    print(f"recorded {RECORD}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
