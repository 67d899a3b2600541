"""Steps import only what they use: a Dagster step process that ingests a subject or builds a
fold must not pay for torch, scikit-learn or MLflow (seconds each on a small machine)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "sklearn", "mlflow")


def _imported_after(code: str) -> list[str]:
    """The heavy top-level packages in sys.modules after running `code` in a fresh Python."""
    report = f"print('heavy:' + ','.join(m for m in {HEAVY!r} if m in sys.modules))"
    probe = f"{code}\nimport sys\n{report}\n"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    line = out.stdout.strip().splitlines()[-1]
    assert line.startswith("heavy:"), out.stdout
    return [m for m in line.removeprefix("heavy:").split(",") if m]


def test_loading_the_code_location_imports_no_ml_framework() -> None:
    code = "from orchestration.definitions import defs\ndefs()"
    assert _imported_after(code) == []


def test_data_step_modules_import_no_ml_framework() -> None:
    modules = ("ml_core.data.pipeline", "orchestration.defs.ingest", "orchestration.defs.prepare")
    assert _imported_after("\n".join(f"import {m}" for m in modules)) == []


def test_the_training_stage_does_import_them() -> None:
    # The check above is only meaningful if the probe can see these imports at all.
    assert _imported_after("import ml_core.pipeline") == list(HEAVY)


def test_ml_core_never_imports_dagster() -> None:
    # ml_core is the pure-Python ML package; orchestration depends on it, never the reverse.
    walk = (
        "import importlib, pkgutil, ml_core\n"
        "for m in pkgutil.walk_packages(ml_core.__path__, 'ml_core.'):\n"
        "    importlib.import_module(m.name)\n"
        "import sys\n"
        "print('dagster:' + ','.join(sorted(m for m in sys.modules if m.startswith('dagster'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", walk], capture_output=True, text=True, check=True, timeout=300
    )
    assert out.stdout.strip().splitlines()[-1] == "dagster:"
