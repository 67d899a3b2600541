"""`pamap`: the project's command line (synthetic data, the end-to-end demo, the UIs, the real
download)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ml_core.data.folds import FOLD_NAMES
from ml_core.models import model_names
from ml_core.paths import PROJECT_ROOT, STAGES, DataPaths, default_data_root
from orchestration.instance_home import use_data_instance
from orchestration.interrupts import Interrupted, raise_on_stop_signals, run_stoppable
from orchestration.servers import DAGSTER_PORT, MLFLOW_PORT, run_servers, where_to_look

if TYPE_CHECKING:
    from orchestration.demo import Progress


def _synth(args: argparse.Namespace) -> int:
    from ml_core.data.synthetic import write_dataset

    paths = DataPaths(Path(args.data_root).resolve())
    print(f"writing {args.scale} synthetic PAMAP2 data (seed {args.seed}) to {paths.dataset}")
    try:
        summary = write_dataset(
            paths.raw, scale=args.scale, seed=args.seed, overwrite=args.overwrite
        )
    except FileExistsError as exc:
        print(f"pamap synth: {exc}", file=sys.stderr)
        return 1
    rows, files, seconds = summary["rows"], len(summary["files"]), summary["seconds"]
    print(f"{rows:,} rows in {files} files, {seconds:.1f}s")
    return 0


def _demo(args: argparse.Namespace) -> int:
    use_data_instance(DataPaths(Path(args.data_root).resolve()))
    from orchestration import demo

    progress = demo.Progress()
    args.progress = progress  # for the line printed if it is stopped

    def abandon(signum: int) -> None:
        demo.settle_runs(os.getpid(), signum)
        print(_stopped_line(args, Interrupted(signum), progress), flush=True)

    try:
        summary = run_stoppable(
            lambda: demo.run_demo(
                data_root=Path(args.data_root).resolve(),
                models=args.models,
                folds=args.folds,
                scale=args.scale,
                force=args.force,
                progress=progress,
            ),
            on_stop=lambda signum: demo.cancel_runs(os.getpid()),
            on_abandon=abandon,
        )
    except Interrupted as stop:
        demo.settle_runs(os.getpid(), stop.signum)
        raise
    print("\n" + summary.leaderboard)
    print(summary.served)
    print(summary.timing)
    print("\n" + where_to_look(DataPaths(Path(args.data_root).resolve()), summary.dagster_home))
    return 0


def _ui(args: argparse.Namespace) -> int:
    paths = DataPaths(Path(args.data_root).resolve())
    use_data_instance(paths)
    return run_servers(paths, args.dagster_port, args.mlflow_port)


def _fetch(args: argparse.Namespace) -> int:
    from ml_core.data.fetch import PAMAP2_URL, fetch_pamap2

    paths = DataPaths(Path(args.data_root).resolve())
    report = fetch_pamap2(paths.raw, url=args.url or PAMAP2_URL)
    print(f"verified {len(report['files'])} files into {paths.dataset}")
    return 0


def _variants(args: argparse.Namespace) -> int:
    from ml_core.training.variants import VariantError, load_variants

    try:
        variants = load_variants(args.file)
    except VariantError as exc:
        print(f"{len(exc.problems)} problem(s), no variant registered:", file=sys.stderr)
        print(exc, file=sys.stderr)
        return 1
    for v in variants:
        settings = " ".join(f"{k}={val}" for k, val in v.settings().items())
        origin = "built-in" if v.builtin else v.entry
        print(f"{v.name:<40} {v.model:<24} {origin:<18} {settings}")
    print(f"{len(variants)} variants ({sum(not v.builtin for v in variants)} from {args.file})")
    if args.register:
        import dagster as dg

        from orchestration.defs.variants import record_variants

        use_data_instance(DataPaths(Path(args.data_root).resolve()))
        with dg.DagsterInstance.get() as instance:
            new, changed = record_variants(instance, variants)
            home = instance.root_directory
        print(
            f"registered {len(new)} new variant partition(s) in the Dagster instance at {home}"
            + (f": {', '.join(new)}" if new else " (all were registered)")
        )
        edited = sorted(set(changed) - set(new))
        print(
            f"recorded the settings of {len(changed)} variant(s)"
            + (
                f"; changed since last recorded (their models are stale): {', '.join(edited)}"
                if edited
                else ""
            )
        )
    return 0


def _stage(name: str) -> str:
    if name not in STAGES:
        raise argparse.ArgumentTypeError(f"unknown stage {name!r}; one of: {', '.join(STAGES)}")
    return name


def _clean(args: argparse.Namespace) -> int:
    import dagster as dg

    from orchestration.clean import STAGE_ASSETS, CleanRefused, clean

    stages = list(STAGES) if args.all else list(dict.fromkeys(args.stages))
    if not stages:
        print("pamap clean: name the stages to clean, or --all", file=sys.stderr)
        return 2
    paths = DataPaths(Path(args.data_root).resolve())
    use_data_instance(paths)
    with dg.DagsterInstance.get() as instance:
        try:
            removed = clean(instance, paths, stages)
        except CleanRefused as exc:
            print(f"pamap clean: nothing removed: {exc}", file=sys.stderr)
            return 1
        home = instance.root_directory
    assets = [a for s in stages for a in STAGE_ASSETS[s]]
    print(f"wiped {', '.join(assets)} from the Dagster instance at {home}")
    for folder in removed:
        print(f"removed {folder}")
    if not removed:
        print(f"no output files of {', '.join(stages)} under {paths.root}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    data_root_help = "data folder (env PAMAP_DATA_ROOT; default ./data)"
    parser = argparse.ArgumentParser(prog="pamap", description=__doc__)
    parser.add_argument("--data-root", default=str(default_data_root()), help=data_root_help)
    # Also accepted after the subcommand; SUPPRESS keeps the value given before it otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-root", default=argparse.SUPPRESS, help=data_root_help)
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser(
        "synth", parents=[common], help="write a synthetic PAMAP2 data set to data/raw"
    )
    synth.add_argument("--scale", choices=["tiny", "demo", "full"], default="demo")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--overwrite",
        action="store_true",
        help="replace recordings that were not generated by pamap synth (real data included)",
    )
    synth.set_defaults(func=_synth)

    models, folds = model_names(), list(FOLD_NAMES)
    demo = sub.add_parser("demo", parents=[common], help="materialize the whole graph end to end")
    demo.add_argument(
        "--models",
        nargs="+",
        choices=[*models, "all"],
        default=None,
        metavar="MODEL",
        help="models to train (default feature_gbm temporal_cnn; 'all': every registered one); "
        f"one of: {', '.join(models)}",
    )
    demo.add_argument(
        "--folds",
        nargs="+",
        choices=folds,
        default=None,
        metavar="FOLD",
        help=f"folds to run (default all); one of: {', '.join(folds)}",
    )
    demo.add_argument("--scale", choices=["tiny", "demo", "full"], default="demo")
    demo.add_argument("--force", action="store_true", help="redo every step")
    demo.set_defaults(func=_demo)

    ui = sub.add_parser(
        "ui",
        parents=[common],
        help=f"start the Dagster UI with its daemon (127.0.0.1:{DAGSTER_PORT}) and the MLflow UI "
        f"(127.0.0.1:{MLFLOW_PORT}) on the project's instance and store",
    )
    ui.add_argument("--dagster-port", type=int, default=DAGSTER_PORT)
    ui.add_argument("--mlflow-port", type=int, default=MLFLOW_PORT)
    ui.set_defaults(func=_ui)

    fetch = sub.add_parser(
        "fetch", parents=[common], help="download and verify the official PAMAP2 archive"
    )
    fetch.add_argument("--url", default=None, help="archive URL (default: the UCI archive)")
    fetch.set_defaults(func=_fetch)

    clean = sub.add_parser(
        "clean",
        parents=[common],
        help="remove a stage's output files and wipe its assets from the Dagster instance "
        "together (the raw data, the inbox and MLflow are kept)",
    )
    clean.add_argument(
        "stages", nargs="*", type=_stage, metavar="STAGE", help=f"one of: {', '.join(STAGES)}"
    )
    clean.add_argument("--all", action="store_true", help="every stage")
    clean.set_defaults(func=_clean)

    variants = sub.add_parser("variants", help="validate experiments.yaml and list the variants")
    variants.add_argument("--file", default=str(PROJECT_ROOT / "experiments.yaml"))
    variants.add_argument(
        "--register",
        action="store_true",
        help="also add them as `variant` partitions of fold x model to the data folder's Dagster "
        "instance (DAGSTER_HOME, default <data root>/.dagster) and record their settings (a "
        "changed variant's models turn stale); an invalid file adds nothing",
    )
    variants.set_defaults(func=_variants)
    return parser


# What a stopped command kept, and what running it again does.
_AFTER_STOP = {
    "demo": ("no step had started", "starts it"),
    "ui": ("both servers and the processes they started are stopped", "starts them again"),
    "synth": ("each file written so far is complete (files are written whole)", "writes the set"),
    "fetch": ("nothing partial is kept (files go into place only once verified)", "downloads it"),
    "variants": ("nothing partial is kept", "runs it again"),
    "clean": ("what was wiped or removed stays so (the instance first)", "finishes it"),
}


def _stopped_line(args: argparse.Namespace, stop: Interrupted, progress: Progress | None) -> str:
    """The last line of a stopped command: what was finished and how to resume."""
    again = "uv run pamap " + shlex.join(args.argv)
    if progress is not None:
        kept, resumes = progress.describe()
    else:
        kept, resumes = _AFTER_STOP[args.command]
    return f"pamap {args.command} stopped by {stop.signal_name}: {kept}; `{again}` {resumes}"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    # Assets read the data root from the environment, so runs started here see the same one.
    os.environ["PAMAP_DATA_ROOT"] = str(Path(args.data_root).resolve())
    try:
        with raise_on_stop_signals():
            return args.func(args)
    except Interrupted as stop:
        print(_stopped_line(args, stop, getattr(args, "progress", None)), flush=True)
        sys.stderr.flush()
        # Everything is settled and flushed: skip the interpreter's teardown, whose final garbage
        # collection of the demo's large heap alone can take a minute on a busy machine.
        os._exit(stop.exit_status)


if __name__ == "__main__":
    sys.exit(main())
