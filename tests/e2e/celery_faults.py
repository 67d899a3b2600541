"""A transient failure for the Celery e2e test, imported by its workers (`-i`, Celery's include).

With `PAMAP_FAULTS_DIR` set, the first training of `PAMAP_FAULTS_TARGET` (`<fold>/<model>`)
takes `PAMAP_FAULTS_STEPS` optimizer steps, leaves its `last.pt`, and then fails; every call is
recorded in `<dir>/calls.jsonl` (resume flag, checkpoint step before and after) so the test can
see what the retry started from. The workers are separate processes, so the test cannot
monkeypatch them; a marker file makes "first" hold across workers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ml_core import pipeline
from ml_core.io import load_torch

_real_train_model = pipeline.train_model


def _last_step(model_dir: Path) -> int | None:
    last = model_dir / "last.pt"
    return int(load_torch(last)["step"]) if last.exists() else None


def _flaky_train_model(*args: Any, **kwargs: Any) -> Any:
    model_name, _, fold, config, model_dir = args[:5]
    faults = Path(os.environ["PAMAP_FAULTS_DIR"])
    if f"{fold}/{model_name}" != os.environ["PAMAP_FAULTS_TARGET"]:
        return _real_train_model(*args, **kwargs)
    resume = bool(kwargs.get("resume", args[6] if len(args) > 6 else True))
    before = _last_step(Path(model_dir))
    try:
        (faults / "failed_once").touch(exist_ok=False)
        first = True
    except FileExistsError:
        first = False
    if first:
        config.max_steps = int(os.environ["PAMAP_FAULTS_STEPS"])
        _real_train_model(*args, **kwargs)
        config.max_steps = None
    result = None if first else _real_train_model(*args, **kwargs)
    with (faults / "calls.jsonl").open("a") as log:
        record = {
            "resume": resume,
            "step_before": before,
            "step_after": _last_step(Path(model_dir)),
            "model_dir": str(model_dir),
        }
        log.write(json.dumps(record) + "\n")
    if first:
        raise ConnectionError("injected transient failure after writing last.pt")
    return result


if os.environ.get("PAMAP_FAULTS_DIR"):
    pipeline.train_model = _flaky_train_model
