"""The graph runs on a PostgreSQL-backed instance configured by deploy/dagster.postgres.yaml.

A throwaway PostgreSQL server (Debian's binaries, started by the `postgres_server` fixture)
holds the run history; the instance file is the deploy one, unchanged, fed through the
environment variables it documents. The graph runs in process, then one more run goes the
shared-deployment way: submitted with `dagster job launch`, queued, and started by
`dagster-daemon run`. Every run and materialization must then be visible to a fresh instance
and be rows in PostgreSQL, not in SQLite files under DAGSTER_HOME.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from tests.e2e.conftest import (
    REPO_ROOT,
    PostgresServer,
    free_port,
    log_tail,
    materialize,
    running_process,
    venv_program,
    wait_for_port,
)

pytestmark = pytest.mark.postgres

DEPLOY_YAML = REPO_ROOT / "deploy" / "dagster.postgres.yaml"
DB_NAME = "dagster"
SUBJECTS = ("101", "102", "103")
# Ingested by the daemon; loso-101 validates on 102 and 103 and trains on 104.
QUEUED_SUBJECT = "104"
RUN_TIMEOUT_S = 300
FOLDS = ("stratified", "loso-101")
TRAINED = dg.MultiPartitionKey({"fold": "stratified", "model": "feature_gbm"})


@pytest.fixture
def instance_home(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """DAGSTER_HOME holding deploy/dagster.postgres.yaml, its env vars pointing at the server."""
    admin = psycopg2.connect(
        host=postgres_server.host,
        port=postgres_server.port,
        user=postgres_server.user,
        dbname="postgres",
    )
    admin.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    with admin.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {DB_NAME}")
    admin.close()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY_YAML, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_HOST", postgres_server.host)
    monkeypatch.setenv("DAGSTER_PG_PORT", str(postgres_server.port))
    monkeypatch.setenv("DAGSTER_PG_USER", postgres_server.user)
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "")  # the throwaway server trusts local clients
    monkeypatch.setenv("DAGSTER_PG_DB", DB_NAME)
    return home


def _materializations_by_asset(server: PostgresServer) -> Counter[str]:
    """Asset materialization events per asset, read straight from PostgreSQL."""
    with (
        psycopg2.connect(
            host=server.host, port=server.port, user=server.user, dbname=DB_NAME
        ) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "SELECT asset_key, count(*) FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION' GROUP BY asset_key"
        )
        rows = cursor.fetchall()
    connection.close()
    return Counter({dg.AssetKey.from_db_string(key).to_user_string(): n for key, n in rows})


@dataclass(frozen=True)
class _Deployment:
    """A code server holding the user code, and the daemon reaching it over gRPC."""

    workspace: Path
    port: int
    code_server: subprocess.Popen
    daemon: subprocess.Popen
    log_dir: Path


@contextmanager
def _code_server_and_daemon(log_dir: Path) -> Iterator[_Deployment]:
    """Started here, awaited only when needed, so their slow start overlaps other work.

    Laid out as in a deployment: one code server imports the user code, and the daemon and the
    CLI reach it over gRPC instead of each importing it (which also keeps this test short).
    """
    port = free_port()
    location = {"host": "127.0.0.1", "port": port, "location_name": "orchestration.definitions"}
    workspace = log_dir / "workspace.yaml"
    workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": location}]}))
    code_server = [
        venv_program("dagster"),
        *("api", "grpc", "-m", "orchestration.definitions", "-d", str(REPO_ROOT)),
        *("-h", "127.0.0.1", "-p", str(port)),
    ]
    daemon = [venv_program("dagster-daemon"), "run", "-w", str(workspace)]
    with (
        running_process(code_server, log_dir / "code_server.log") as server_proc,
        running_process(daemon, log_dir / "daemon.log") as daemon_proc,
    ):
        yield _Deployment(workspace, port, server_proc, daemon_proc, log_dir)


def _launch_through_daemon(
    instance: dg.DagsterInstance, deployment: _Deployment, subject: str
) -> str:
    """Submit one ingest partition to the queue with the CLI; the daemon must start it."""
    server_log = deployment.log_dir / "code_server.log"
    daemon_log = deployment.log_dir / "daemon.log"
    wait_for_port(deployment.port, deployment.code_server, server_log)
    launch = subprocess.run(
        [
            venv_program("dagster"),
            *("job", "launch", "-w", str(deployment.workspace)),
            *("-j", "ingest_job", "--tags", json.dumps({"dagster/partition": subject})),
        ],
        cwd=REPO_ROOT,
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert launch.returncode == 0, launch.stdout + launch.stderr
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if deployment.daemon.poll() is not None:
            pytest.fail(
                f"dagster-daemon exited ({deployment.daemon.returncode}):\n{log_tail(daemon_log)}"
            )
        runs = instance.get_runs(
            filters=dg.RunsFilter(job_name="ingest_job", tags={"dagster/partition": subject})
        )
        if runs and runs[0].is_finished:
            return runs[0].run_id
        time.sleep(1)
    pytest.fail(
        f"the queued ingest_job run for {subject} did not finish in {RUN_TIMEOUT_S}s:\n"
        f"{log_tail(daemon_log)}\n{log_tail(server_log)}"
    )


def test_graph_runs_and_is_recorded_in_postgres(
    instance_home: Path, data_root: Path, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    run_ids = []
    with (
        dg.DagsterInstance.from_config(str(instance_home)) as instance,
        _code_server_and_daemon(tmp_path) as deployment,
    ):
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        for subject in SUBJECTS:
            run_ids.append(materialize("ingest_job", instance, subject).run_id)
        queued_run_id = _launch_through_daemon(instance, deployment, QUEUED_SUBJECT)
        run_ids.append(queued_run_id)
        for fold in FOLDS:
            run_ids.append(materialize("prepare_job", instance, fold).run_id)
        run_ids.append(materialize("training_job", instance, TRAINED).run_id)
        run_ids.append(materialize("report_job", instance).run_id)

    # A fresh instance from the same file (as the webserver or daemon would open it) sees it all.
    with dg.DagsterInstance.from_config(str(instance_home)) as fresh:
        records = fresh.get_run_records()
        assert sorted(r.dagster_run.run_id for r in records) == sorted(run_ids)
        failed = [
            (
                r.dagster_run.job_name,
                r.dagster_run.tags.get("dagster/partition"),
                [
                    e.message
                    for e in fresh.all_logs(r.dagster_run.run_id)
                    if e.dagster_event is not None and e.dagster_event.is_failure
                ],
            )
            for r in records
            if r.dagster_run.status != dg.DagsterRunStatus.SUCCESS
        ]
        assert not failed, f"runs not successful: {failed}\n{log_tail(tmp_path / 'daemon.log')}"
        # The queued run really went through the queue, and the daemon took it off.
        (enqueued,) = fresh.get_records_for_run(
            queued_run_id, of_type=dg.DagsterEventType.RUN_ENQUEUED
        ).records
        (starting,) = fresh.get_records_for_run(
            queued_run_id, of_type=dg.DagsterEventType.RUN_STARTING
        ).records
        assert enqueued.storage_id < starting.storage_id
        ingested = {*SUBJECTS, QUEUED_SUBJECT}
        for asset in ("raw_recording", "validated_recording", "imputed_recording"):
            assert fresh.get_materialized_partitions(dg.AssetKey(asset)) == ingested
        for asset in ("fold_manifests", "feature_stats"):
            assert fresh.get_materialized_partitions(dg.AssetKey(asset)) == set(FOLDS)
        for asset in ("trained_model", "evaluation_bundle"):
            assert fresh.get_materialized_partitions(dg.AssetKey(asset)) == {str(TRAINED)}
        leaderboard = fresh.get_latest_materialization_event(dg.AssetKey("leaderboard"))
        assert leaderboard is not None and leaderboard.asset_materialization is not None
        assert leaderboard.asset_materialization.metadata["evaluated_fold_models"].value == 1
        schema_check = fresh.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("validated_recording"), "schema"), limit=10
        )
        assert len(schema_check) == len(ingested)

    # The events are rows in PostgreSQL; no SQLite run or event storage was created instead.
    assert _materializations_by_asset(postgres_server) == {
        "raw_recording": len(ingested),
        "validated_recording": len(ingested),
        "imputed_recording": len(ingested),
        "activity_shards": len(ingested),
        "fold_manifests": len(FOLDS),
        "feature_stats": len(FOLDS),
        "variant_settings": 1,  # recorded by the training, which read no earlier record
        "trained_model": 1,
        "evaluation_bundle": 1,
        "leaderboard": 1,
    }
    assert not list(instance_home.rglob("*.db"))
