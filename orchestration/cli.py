"""`pamap`: the project's command line (synthetic data, the end-to-end demo, the UIs, the real
download)."""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ml_core.data.folds import FOLD_NAMES
from ml_core.models import model_names
from ml_core.paths import PROJECT_ROOT, DataPaths, default_data_root

DAGSTER_PORT = 3000
MLFLOW_PORT = 5000


def _use_project_instance() -> None:
    """Share one persistent Dagster instance between this command, `dagster dev` and the daemon."""
    os.environ.setdefault("DAGSTER_HOME", str(PROJECT_ROOT))


def tracking_uri(paths: DataPaths) -> str:
    """Where the platform logs: env `MLFLOW_TRACKING_URI`, else the SQLite store in the data root
    (what the `mlflow` resource resolves to)."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.root / 'mlflow' / 'mlflow.db'}"
    )


def ui_commands(paths: DataPaths) -> dict[str, list[str]]:
    """The UI servers `pamap ui` starts, bound to 127.0.0.1: Dagster's webserver with its daemon
    (`dagster dev`), and MLflow's UI unless the tracking URI is already a server."""
    bin_dir = Path(sys.executable).parent
    commands = {
        "dagster": [
            str(bin_dir / "dagster"),
            "dev",
            "-w",
            str(PROJECT_ROOT / "workspace.yaml"),
            "-h",
            "127.0.0.1",
            "-p",
            str(DAGSTER_PORT),
        ]
    }
    uri = tracking_uri(paths)
    if not uri.startswith(("http://", "https://")):
        commands["mlflow"] = [
            str(bin_dir / "mlflow"),
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(MLFLOW_PORT),
        ]
    return commands


def experiment_url(paths: DataPaths) -> str:
    """The `pamap2` experiment in MLflow's model-training view (its UI otherwise opens new
    browsers in the GenAI view, on an empty Traces page)."""
    from ml_core.lifecycle.tracking import MlflowTracker

    (paths.root / "mlflow").mkdir(parents=True, exist_ok=True)  # the SQLite store's folder
    return MlflowTracker(tracking_uri(paths)).experiment_url()


def where_to_look(paths: DataPaths, dagster_home: str) -> str:
    """Commands that work as printed, from the project folder."""
    uri = tracking_uri(paths)
    data_root = shlex.quote(str(paths.root))
    lines = [
        "where to look (run from the project folder):",
        f"  both UIs   : uv run pamap --data-root {data_root} ui"
        f"  (Dagster http://127.0.0.1:{DAGSTER_PORT}, MLflow http://127.0.0.1:{MLFLOW_PORT})",
        f"  Dagster UI : DAGSTER_HOME={shlex.quote(dagster_home)} PAMAP_DATA_ROOT={data_root} "
        "uv run dagster dev -h 127.0.0.1",
    ]
    if uri.startswith(("http://", "https://")):
        lines.append(f"  MLflow UI  : {uri}")
    else:
        lines.append(
            f"  MLflow UI  : uv run mlflow ui --backend-store-uri {shlex.quote(uri)} "
            "--host 127.0.0.1"
        )
    lines.append(f"  MLflow runs: {experiment_url(paths)}")
    lines.append(
        f"  files      : {paths.root} (reports/leaderboard.md, "
        "evaluation/<fold>/<variant>/<protocol id>/seed-<n>/)"
    )
    return "\n".join(lines)


def _synth(args: argparse.Namespace) -> int:
    from ml_core.data.synthetic import write_dataset

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


def _ui(args: argparse.Namespace) -> int:
    _use_project_instance()
    paths = DataPaths(Path(args.data_root).resolve())
    (paths.root / "mlflow").mkdir(parents=True, exist_ok=True)
    servers = {
        name: subprocess.Popen(command, cwd=PROJECT_ROOT)
        for name, command in ui_commands(paths).items()
    }
    home = os.environ["DAGSTER_HOME"]
    print(f"Dagster UI and daemon: http://127.0.0.1:{DAGSTER_PORT}  (DAGSTER_HOME={home})")
    if "mlflow" in servers:
        print(f"MLflow UI: {experiment_url(paths)}  ({tracking_uri(paths)})")
    print("Ctrl-C stops both.", flush=True)
    try:
        while all(p.poll() is None for p in servers.values()):
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers.values():
            if server.poll() is None:
                server.terminate()
        for server in servers.values():
            server.wait(timeout=30)
    failed = [name for name, p in servers.items() if p.returncode not in (0, -15, None)]
    return 1 if failed else 0


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

        from orchestration.defs.partitions import register_variants

        _use_project_instance()
        with dg.DagsterInstance.get() as instance:
            new = register_variants(instance, [v.name for v in variants])
            home = instance.root_directory
        print(
            f"registered {len(new)} new variant partition(s) in the Dagster instance at {home}"
            + (f": {', '.join(new)}" if new else " (all were registered)")
        )
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
    demo.add_argument(
        "--class-set",
        choices=["protocol12", "protocol11", "all18"],
        default=None,
        help="classes to train and evaluate on (default protocol12)",
    )
    demo.set_defaults(func=_demo)

    ui = sub.add_parser(
        "ui",
        parents=[common],
        help=f"start the Dagster UI with its daemon (127.0.0.1:{DAGSTER_PORT}) and the MLflow UI "
        f"(127.0.0.1:{MLFLOW_PORT}) on the project's instance and store",
    )
    ui.set_defaults(func=_ui)

    fetch = sub.add_parser(
        "fetch", parents=[common], help="download and verify the official PAMAP2 archive"
    )
    fetch.add_argument("--url", default=None, help="archive URL (default: the UCI archive)")
    fetch.set_defaults(func=_fetch)

    variants = sub.add_parser("variants", help="validate experiments.yaml and list the variants")
    variants.add_argument("--file", default=str(PROJECT_ROOT / "experiments.yaml"))
    variants.add_argument(
        "--register",
        action="store_true",
        help="also add them as `variant` partitions of fold x model to the project's Dagster "
        "instance (DAGSTER_HOME, default the project folder); an invalid file adds nothing",
    )
    variants.set_defaults(func=_variants)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Assets read the data root from the environment, so runs started here see the same one.
    os.environ["PAMAP_DATA_ROOT"] = str(Path(args.data_root).resolve())
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
