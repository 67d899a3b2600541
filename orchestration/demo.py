"""`pamap demo`: materialize the whole graph into the project's persistent Dagster instance.

Each partition runs as its own in-process Dagster run, so `dagster dev` afterwards shows every
materialization with its metadata. What runs is what Dagster reports as missing or stale (the
UI's badges): the raw files are observed first, then each stage asks Dagster, after the stage
before it ran, which of its partitions are missing or stale (a changed file, new upstream
content, a bumped code version). `--force` redoes everything.

Stopping (`orchestration.interrupts`): a stop signal cancels the run in progress the way Dagster
cancels one (the step fails, the run ends CANCELED, its pool slot is freed); what finished stays.
The next demo redoes only what is missing, and trains an interrupted fold x model from its last
checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import time
import warnings
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from ml_core.data.columns import SUBJECTS
from ml_core.data.folds import FOLD_NAMES, SPLITS, test_subject
from ml_core.evaluation.protocol import EvaluationProtocol, evaluated_under
from ml_core.models import model_names
from ml_core.paths import DataPaths
from ml_core.training.train import TrainConfig
from orchestration.code_location import filed_under_job
from orchestration.interrupts import stop_requested
from orchestration.staleness import PartitionKey, Staleness, observe_raw_files

DEFAULT_DEMO_MODELS: list[str] = ["feature_gbm", "temporal_cnn"]
# The fold whose model of the chosen variant the demo registers (champion_model's default);
# a demo without it registers the model of its first fold.
CHAMPION_SOURCE_FOLD = "holdout-106"
# Each job's assets in order, each reading the one before.
INGEST_CHAIN = ("raw_recording", "validated_recording", "imputed_recording", "activity_shards")
PREPARE_CHAIN = ("fold_manifests", "feature_stats")
TRAINING_CHAIN = ("trained_model", "evaluation_bundle")
# Step and epoch lines on the terminal; Dagster's per-event debug lines stay in the UI.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}
PID_TAG = "pamap/pid"  # the demo process that runs a run in process
_UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass
class Progress:
    """What this demo has finished, for the line printed when it is stopped."""

    done: list[str] = field(default_factory=list)
    current: str | None = None  # the run in progress
    training: bool = False  # whether it trains (and so resumes from a checkpoint)

    def describe(self) -> tuple[str, str]:
        """(what is finished and kept, what running the demo again does)."""
        kept = f"{len(self.done)} run(s) finished in this demo and kept" + (
            f" (last: {self.done[-1]})" if self.done else ""
        )
        if self.current is None:
            return kept, "resumes: it redoes only what is missing or stale"
        return (
            f"{kept}; {self.current} was interrupted and its run canceled",
            f"resumes: it skips what is finished and retries {self.current}"
            + (" from its last checkpoint" if self.training else ""),
        )


@dataclass(frozen=True)
class Summary:
    """What the demo ends with: the leaderboard, the champion and its timeline, where the time
    went, the instance it used."""

    leaderboard: str
    timing: str
    dagster_home: str
    served: str = ""  # the champion in the registry and the timeline drawn, or why not


@dataclass
class Timing:
    """Wall time of the runs and the time spent inside their asset steps."""

    wall_s: float = 0.0
    step_s: float = 0.0
    runs: int = 0


def _run(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    timing: Timing,
    label: str,
    assets: Sequence[str],
    partition_key: str | dg.MultiPartitionKey | None = None,
    run_config: dict | None = None,
    progress: Progress | None = None,
) -> None:
    started = time.perf_counter()
    progress = progress if progress is not None else Progress()
    progress.current = label
    progress.training = job.name == "training_job"
    with filed_under_job(instance, job.name):  # listed under its job in the UI
        result = job.execute_in_process(
            instance=instance,
            partition_key=partition_key,
            asset_selection=[dg.AssetKey(a) for a in assets],
            run_config=run_config or QUIET_CONSOLE,
            raise_on_error=False,
            tags={PID_TAG: str(os.getpid())},
        )
    stop = stop_requested()
    if stop is not None:  # Dagster records an interrupted step as failed and returns
        raise stop
    progress.current = None
    progress.done.append(label)
    wall = time.perf_counter() - started
    step_ms = sum(e.step_success_data.duration_ms for e in result.get_step_success_events())
    timing.wall_s += wall
    timing.step_s += step_ms / 1000
    timing.runs += 1
    status = "ok" if result.success else "FAILED"
    line = f"  {label:<40} {wall:6.1f}s  {status}"
    print(line, flush=True)
    if not result.success:
        for event in result.get_step_failure_events():
            error = event.step_failure_data.error
            while error is not None and error.cause is not None:  # the wrapped error explains
                error = error.cause
            print(f"    {event.step_key}: {error.message.strip() if error else 'failed'}")
        raise SystemExit(f"demo stopped: {label} failed (run {result.run_id})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def release_abandoned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the demo runs whose process is gone (a killed demo) and free their
    `training` pool slots: otherwise the next demo's training step waits for the slot forever."""
    released = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=_UNFINISHED)):
        pid = run.tags.get(PID_TAG)
        if pid is None or _alive(int(pid)):
            continue
        instance.report_run_failed(run, message=f"the demo process {pid} that ran it is gone")
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released


def _runs_of(instance: dg.DagsterInstance, pid: int) -> list[dg.DagsterRun]:
    filters = dg.RunsFilter(statuses=_UNFINISHED, tags={PID_TAG: str(pid)})
    return list(instance.get_runs(filters=filters))


def cancel_runs(pid: int) -> None:
    """Ask Dagster to cancel the runs demo process `pid` has in progress: marked CANCELING, a run
    whose step then fails ends CANCELED, as when it is terminated from the UI."""
    with dg.DagsterInstance.get() as instance:
        for run in _runs_of(instance, pid):
            instance.report_run_canceling(run, message="pamap demo was asked to stop")


def settle_runs(pid: int, signum: int) -> list[str]:
    """After demo process `pid` was stopped: mark canceled its runs that did not end, and free
    the `training` pool slots its runs hold (Dagster frees a step's slot when the step ends; this
    covers a run stopped at another point). Dagster has no public call to free slots: this is
    what the UI's "free concurrency slots" does. Returns the runs it marked canceled."""
    settled = []
    with dg.DagsterInstance.get() as instance:
        for run in _runs_of(instance, pid):
            message = f"pamap demo stopped by {signal.Signals(signum).name}"
            instance.report_run_canceled(run, message=message)
            settled.append(run.run_id)
        for run in instance.get_runs(filters=dg.RunsFilter(tags={PID_TAG: str(pid)}), limit=5):
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return settled


def _interrupted(instance: dg.DagsterInstance, key: dg.MultiPartitionKey) -> bool:
    """The latest training run of `key` did not finish (stopped, killed or failed)."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name="training_job", tags={"dagster/partition": str(key)}),
        limit=1,
    )
    return bool(runs) and runs[0].status in (
        dg.DagsterRunStatus.CANCELED,
        dg.DagsterRunStatus.FAILURE,
    )


def _with_resume(run_config: dict) -> dict:
    """`run_config` with the training continuing its last checkpoint (`last.pt`), where one of
    the same model, config and data exists; otherwise the training starts afresh."""
    ops = run_config["ops"]
    trained = ops["trained_model"]
    return run_config | {
        "ops": ops | {"trained_model": trained | {"config": trained["config"] | {"resume": True}}}
    }


def _say_if_up_to_date(done: Sized | int) -> None:
    if not (done if isinstance(done, int) else len(done)):
        print("  up to date (Dagster reports nothing missing or stale; --force redoes it)")


def _to_redo(
    staleness: Staleness, chain: Sequence[str], partition: PartitionKey, force: bool
) -> list[str]:
    return list(chain) if force else staleness.to_redo(chain, partition)


def _missing(outputs: Sequence[Path]) -> bool:
    """Dagster's staleness reads the instance, not the disk: outputs deleted by hand (a clean
    `data/` under the same instance) must be rebuilt too."""
    return not all(p.exists() for p in outputs)


def _ingest_outputs(paths: DataPaths, subject: int) -> list[Path]:
    tables = [paths.table(stage, subject) for stage in INGEST_CHAIN[:-1]]
    return [*tables, paths.shard_dir(subject), paths.tensor_shard_dir(subject)]


def _prepare_outputs(paths: DataPaths, fold: str) -> list[Path]:
    return [*(paths.manifest(fold, split) for split in SPLITS), paths.feature_stats(fold)]


def _champion(instance: dg.DagsterInstance) -> dict[str, str] | None:
    """The registered champion as `champion_model` last recorded it (version, variant, decision,
    registry link), or None when there is none."""
    event = instance.get_latest_materialization_event(dg.AssetKey("champion_model"))
    if event is None or event.asset_materialization is None:
        return None
    metadata = event.asset_materialization.metadata
    values = {k: str(getattr(v, "value", v)) for k, v in metadata.items() if k != "comparison"}
    return values if values.get("champion_version", "none") != "none" else None


def _timeline_subject(paths: DataPaths, source_fold: str) -> int:
    """The person whose timeline the demo draws: the one the registered model was tested on in
    its source fold (never trained on), else the first subject with a recording."""
    subject = test_subject(source_fold)
    if subject is not None and paths.dat_file("protocol", subject).exists():
        return subject
    return next(s for s in SUBJECTS if paths.dat_file("protocol", s).exists())


def _served_lines(
    instance: dg.DagsterInstance,
    chosen: dict[str, str] | None,
    folds: Sequence[str],
    subject: int,
    plot: Path,
) -> str:
    from ml_core.lifecycle.champion import REGISTERED_MODEL

    if chosen is None:
        event = instance.get_latest_materialization_event(dg.AssetKey("champion_model"))
        materialization = event.asset_materialization if event is not None else None
        decision = materialization.metadata.get("decision") if materialization else None
        why = getattr(decision, "value", "champion_model has not run")
        if not any(f.startswith("loso-") for f in folds):
            why += "; the champion is chosen by pooled LOSO macro F1: add a loso-* fold"
        return f"champion: none registered ({why}), so no timeline was drawn"
    lines = [
        f"champion: {REGISTERED_MODEL} version {chosen['champion_version']} "
        f"(latest decision: {chosen['decision']})",
        f"  registry : {chosen['registry']}",
    ]
    if plot.exists():
        lines.append(f"  timeline : {plot} (subject {subject}, the champion over every recording)")
    return "\n".join(lines)


def run_demo(
    data_root: Path,
    models: Sequence[str] | None = None,
    folds: Sequence[str] | None = None,
    scale: str = "demo",
    force: bool = False,
    progress: Progress | None = None,
) -> Summary:
    """Materialize what is missing or stale, printing a line per run; `progress` records what
    finished. Raises `Interrupted` when the command is stopped (see `run_stoppable`)."""
    from ml_core.data.synthetic import write_dataset
    from ml_core.training.variants import builtin_variants
    from orchestration.definitions import defs as load_defs
    from orchestration.defs.variants import record_variants

    began = time.perf_counter()
    import mlflow  # noqa: F401  (imported first: it configures its loggers on import)

    # Loading the champion for its timeline would draw MLflow's download progress bar.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for noisy in ("mlflow", "torch._export", "alembic"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    # torch.export's note about LSTM weights when MLflow saves the model; the export works.
    warnings.filterwarnings(
        "ignore", message="The tensor attributes .* were assigned during export"
    )
    paths = DataPaths(data_root)
    models = list(models or DEFAULT_DEMO_MODELS)
    if models == ["all"]:
        models = model_names()
    train_config = TrainConfig()  # the built-in variants' protocol
    protocol = EvaluationProtocol.of(train_config)
    training_run_config = QUIET_CONSOLE | {"ops": {"trained_model": {"config": {}}}}
    folds = list(folds or FOLD_NAMES)
    synth_s = 0.0
    if not any(paths.dat_file("protocol", s).exists() for s in SUBJECTS):
        print(f"no PAMAP2 files in {paths.dataset}: writing the {scale}-scale synthetic set")
        summary = write_dataset(paths.raw, scale=scale, seed=0)
        synth_s = summary["seconds"]
        print(f"  {summary['rows']:,} rows in {len(summary['files'])} files")

    definitions = load_defs()
    instance = dg.DagsterInstance.get()
    for run_id in release_abandoned_runs(instance):
        print(f"run {run_id} of a demo that was killed: marked failed, its pool slots freed")
    # The built-in variants (one per registered model) are the model partitions it trains.
    record_variants(instance, builtin_variants())
    timing = Timing()
    progress = progress if progress is not None else Progress()
    ingest = definitions.resolve_job_def("ingest_job")
    prepare = definitions.resolve_job_def("prepare_job")
    training = definitions.resolve_job_def("training_job")
    fold_results = definitions.resolve_job_def("fold_results_job")
    report = definitions.resolve_job_def("report_job")
    champion = definitions.resolve_job_def("champion_job")
    serve = definitions.resolve_job_def("serve_job")

    print("1/5 ingest: parse, validate, impute and shard each subject")
    observe_raw_files(instance, paths)
    staleness = Staleness(instance, definitions)
    ingested = 0
    for subject in SUBJECTS:
        if not paths.dat_file("protocol", subject).exists():
            continue
        redo = force or _missing(_ingest_outputs(paths, subject))
        assets = _to_redo(staleness, INGEST_CHAIN, str(subject), redo)
        if assets:
            _run(
                ingest, instance, timing, f"subject {subject}", assets, str(subject), None, progress
            )
            ingested += 1
    _say_if_up_to_date(ingested)

    print("2/5 prepare: fold manifests and train-only feature statistics")
    staleness = Staleness(instance, definitions)
    prepared = 0
    for fold in folds:
        redo = force or _missing(_prepare_outputs(paths, fold))
        assets = _to_redo(staleness, PREPARE_CHAIN, fold, redo)
        if assets:
            _run(prepare, instance, timing, f"fold {fold}", assets, fold, None, progress)
            prepared += 1
    _say_if_up_to_date(prepared)

    print(f"3/5 train and evaluate: {', '.join(models)} on {len(folds)} folds")
    print(f"  {protocol.describe()}")
    staleness = Staleness(instance, definitions)
    trained = 0
    for fold in folds:
        for model in models:
            key = dg.MultiPartitionKey({"fold": fold, "model": model})
            # Run config is not versioned: a model trained under another protocol is redone too.
            assets = _to_redo(
                staleness,
                TRAINING_CHAIN,
                key,
                force or not evaluated_under(paths, fold, model, protocol.id),
            )
            if assets:
                run_config = training_run_config
                if not force and _interrupted(instance, key):
                    print(f"  {fold} x {model}: its last run did not finish; resuming its training")
                    run_config = _with_resume(training_run_config)
                _run(
                    training,
                    instance,
                    timing,
                    f"{fold} x {model}",
                    assets,
                    key,
                    run_config,
                    progress,
                )
                trained += 1
    _say_if_up_to_date(trained)

    print("4/5 fold results and leaderboard")
    staleness = Staleness(instance, definitions)
    reported = 0
    for fold in folds:
        redo = force or _missing([paths.reports / "folds" / f"{fold}.json"])
        if _to_redo(staleness, ("fold_results",), fold, redo):
            label = f"results {fold}"
            _run(fold_results, instance, timing, label, ["fold_results"], fold, None, progress)
            reported += 1
    redo = force or _missing([paths.reports / "leaderboard.md"])
    if reported or _to_redo(Staleness(instance, definitions), ("leaderboard",), None, redo):
        _run(report, instance, timing, "leaderboard", ["leaderboard"], None, None, progress)
        reported += 1
    _say_if_up_to_date(reported)

    print("5/5 serve: the champion in the MLflow registry and one subject's activity timeline")
    source_fold = CHAMPION_SOURCE_FOLD if CHAMPION_SOURCE_FOLD in folds else folds[0]
    served = 0
    staleness = Staleness(instance, definitions)
    if reported or _to_redo(staleness, ("champion_model",), None, force):
        config = {"ops": {"champion_model": {"config": {"source_fold": source_fold}}}}
        _run(
            champion,
            instance,
            timing,
            "champion",
            ["champion_model"],
            None,
            QUIET_CONSOLE | config,
            progress,
        )
        served += 1
    chosen = _champion(instance)
    subject = _timeline_subject(paths, source_fold)
    plot = paths.timeline_dir(f"subject_{subject}") / "timeline.png"
    if chosen is not None:
        staleness = Staleness(instance, definitions)
        redo = force or _missing([plot])
        if _to_redo(staleness, ("activity_timeline",), str(subject), redo):
            label, assets = f"timeline subject {subject}", ["activity_timeline"]
            _run(serve, instance, timing, label, assets, str(subject), None, progress)
            served += 1
    _say_if_up_to_date(served)
    board = (paths.reports / "leaderboard.md").read_text()
    total = time.perf_counter() - began
    orchestrated = total - synth_s  # wall time of everything but writing the synthetic files
    overhead = max(orchestrated - timing.step_s, 0.0)
    return Summary(
        leaderboard=board,
        timing=(
            f"done in {total:.1f}s ({synth_s:.1f}s writing synthetic data): {timing.runs} runs, "
            f"{timing.step_s:.1f}s inside asset steps, orchestration overhead {overhead:.1f}s "
            f"({100 * overhead / max(orchestrated, 1e-9):.1f}% of {orchestrated:.1f}s)"
        ),
        dagster_home=str(instance.root_directory),
        served=_served_lines(instance, chosen, folds, subject, plot),
    )
