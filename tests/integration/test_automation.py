"""The scheduled fold backfill, the raw-file sensor, and retry-and-resume of training."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import torch

from ml_core import pipeline
from ml_core.config import make_train_config
from ml_core.folds import FOLD_NAMES
from ml_core.io import load_torch
from ml_core.models import model_names
from ml_core.paths import DataPaths
from ml_core.protocol import latest_dirs
from orchestration.definitions import defs as load_defs
from orchestration.defs.automation import fold_backfill_schedule, raw_files_sensor
from orchestration.defs.partitions import register_variants
from orchestration.defs.resources import DataRoot
from tests.integration.conftest import execute


def test_schedule_requests_every_fold_and_registered_variant(tmp_path: Path) -> None:
    variants = [*model_names(), "lstm_sweep-lr=0.002"]
    with dg.DagsterInstance.local_temp(str(tmp_path)) as instance:
        register_variants(instance, variants)
        context = dg.build_schedule_context(
            instance=instance, scheduled_execution_time=datetime(2026, 11, 22, 2, tzinfo=UTC)
        )
        requests = fold_backfill_schedule(context)
    keys = sorted(str(r.partition_key) for r in requests)
    expected = sorted(f"{fold}|{variant}" for fold in FOLD_NAMES for variant in variants)
    assert keys == expected
    assert len({r.run_key for r in requests}) == len(requests)
    assert load_defs().resolve_schedule_def("fold_backfill_schedule").job_name == "training_job"


def test_sensor_requests_exactly_new_or_changed_subjects(tmp_path: Path) -> None:
    paths = DataPaths(tmp_path)
    for subject in (101, 102):
        target = paths.dat_file("protocol", subject)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("1.0 1 80 " + " ".join(["0"] * 51) + "\n")
    resources = {"data_root": DataRoot(path=str(tmp_path))}

    first = raw_files_sensor(dg.build_sensor_context(resources=resources))
    assert sorted(r.partition_key for r in first.run_requests) == ["101", "102"]

    quiet = raw_files_sensor(dg.build_sensor_context(cursor=first.cursor, resources=resources))
    assert quiet.run_requests == []

    changed = paths.dat_file("protocol", 102)
    changed.write_text(changed.read_text() + "1.01 1 80 " + " ".join(["0"] * 51) + "\n")
    os.utime(changed, ns=(1, 2_000_000_000_000_000_000))
    new = paths.dat_file("optional", 105)
    new.parent.mkdir(parents=True, exist_ok=True)
    new.write_text("1.0 9 80 " + " ".join(["0"] * 51) + "\n")
    second = raw_files_sensor(dg.build_sensor_context(cursor=first.cursor, resources=resources))
    assert sorted(r.partition_key for r in second.run_requests) == ["102", "105"]
    assert all(r.job_name in (None, "ingest_job") for r in second.run_requests)


def test_failed_training_retries_and_resumes_from_last_checkpoint(
    copy_prepared: Callable[[], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = DataPaths(copy_prepared())
    fold, model = "holdout-106", "early_fusion"
    settings = {"epochs": 2, "warmup_steps": 5, "seed": 3}

    # A straight run, for reference.
    straight_dir = paths.root / "straight"
    pipeline.train_model(
        model, paths, fold, make_train_config(settings), straight_dir, resume=False
    )
    expected = load_torch(straight_dir / "last.pt")["model_state"]

    # The first attempt dies after 7 steps (a transient failure), leaving last.pt behind.
    real_train = pipeline.train_model
    calls: list[bool] = []

    def flaky_train(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs.get("resume", args[6] if len(args) > 6 else None))
        if len(calls) == 1:
            config = args[3]
            config.max_steps = 7
            real_train(*args, **kwargs)
            config.max_steps = None
            raise ConnectionError("transient failure")
        return real_train(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_model", flaky_train)
    key = dg.MultiPartitionKey({"fold": fold, "model": model})
    result = execute(
        "training_job",
        dg.DagsterInstance.ephemeral(),
        key,
        {"ops": {"trained_model": {"config": settings}}},
    )
    assert result.success
    assert calls == [False, True]  # first attempt fresh, the retry resumed
    resumed = load_torch(latest_dirs(paths, fold, model)[0] / "last.pt")
    assert resumed["step"] > 7
    for name, tensor in expected.items():
        assert torch.equal(tensor, resumed["model_state"][name]), name
