"""`pamap`: the project's command line (synthetic data, the end-to-end demo, the real download)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ml_core.paths import PROJECT_ROOT, DataPaths, default_data_root


def _use_project_instance() -> None:
    """Share one persistent Dagster instance between this command, `dagster dev` and the daemon."""
    os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT))


def _synth(args: argparse.Namespace) -> int:
    from ml_core.synthetic import write_dataset

    paths = DataPaths(Path(args.data_root).resolve())
    print(f"writing {args.scale} synthetic PAMAP2 data (seed {args.seed}) to {paths.dataset}")
    summary = write_dataset(paths.raw, scale=args.scale, seed=args.seed)
    rows, files, seconds = summary["rows"], len(summary["files"]), summary["seconds"]
    print(f"{rows:,} rows in {files} files, {seconds:.1f}s")
    return 0


def _demo(args: argparse.Namespace) -> int:
    _use_project_instance()
    from orchestration.demo import run_demo

    return run_demo(
        data_root=Path(args.data_root).resolve(),
        models=args.models,
        folds=args.folds,
        scale=args.scale,
        force=args.force,
        class_set=args.class_set,
    )


def _fetch(args: argparse.Namespace) -> int:
    from ml_core.fetch import PAMAP2_URL, fetch_pamap2

    paths = DataPaths(Path(args.data_root).resolve())
    report = fetch_pamap2(paths.raw, url=args.url or PAMAP2_URL)
    print(f"verified {len(report['files'])} files into {paths.dataset}")
    return 0


def _variants(args: argparse.Namespace) -> int:
    from ml_core.variants import VariantError, load_variants

    try:
        variants = load_variants(args.file)
    except VariantError as exc:
        print(f"{len(exc.problems)} problem(s), no variant registered:", file=sys.stderr)
        print(exc, file=sys.stderr)
        return 1
    for v in variants:
        settings = " ".join(f"{k}={val}" for k, val in v.settings().items() if k != "seeds")
        origin = "built-in" if v.builtin else v.entry
        print(f"{v.name:<40} {v.model:<24} {origin:<18} seeds={v.seeds} {settings}")
    print(f"{len(variants)} variants ({sum(not v.builtin for v in variants)} from {args.file})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pamap", description=__doc__)
    parser.add_argument(
        "--data-root",
        default=str(default_data_root()),
        help="data folder (env PAMAP_DATA_ROOT; default ./data)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write a synthetic PAMAP2-format data set to data/raw")
    synth.add_argument("--scale", choices=["tiny", "demo", "full"], default="demo")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=_synth)

    demo = sub.add_parser("demo", help="materialize the whole graph end to end")
    demo.add_argument(
        "--models", nargs="+", default=None, help="models to train ('all': every registered one)"
    )
    demo.add_argument("--folds", nargs="+", default=None, help="folds to run (default all)")
    demo.add_argument("--scale", choices=["tiny", "demo", "full"], default="demo")
    demo.add_argument("--force", action="store_true", help="redo every step")
    demo.add_argument(
        "--class-set",
        choices=["protocol12", "protocol11", "all18"],
        default=None,
        help="classes to train and evaluate on (default protocol12)",
    )
    demo.set_defaults(func=_demo)

    fetch = sub.add_parser("fetch", help="download and verify the official PAMAP2 archive")
    fetch.add_argument("--url", default=None, help="archive URL (default: the UCI archive)")
    fetch.set_defaults(func=_fetch)

    variants = sub.add_parser("variants", help="validate experiments.yaml and list the variants")
    variants.add_argument("--file", default=str(PROJECT_ROOT / "experiments.yaml"))
    variants.set_defaults(func=_variants)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Assets read the data root from the environment, so runs started here see the same one.
    os.environ["PAMAP_DATA_ROOT"] = str(Path(args.data_root).resolve())
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
