"""Where a data folder's Dagster instance lives: `<data root>/.dagster` unless `DAGSTER_HOME`
says otherwise, so two data folders never share run history, partitions or staleness.

Dagster-free: the `pamap` commands call it before anything loads an instance.
"""

from __future__ import annotations

import os
from pathlib import Path

from ml_core.io import atomic_path
from ml_core.paths import PROJECT_ROOT, DataPaths

# The project's instance settings (run launcher, concurrency, run monitoring): the default
# instance of every data folder runs with a copy of them.
INSTANCE_SETTINGS = PROJECT_ROOT / "dagster.yaml"


def instance_home(paths: DataPaths) -> Path:
    """The default Dagster instance folder of a data folder."""
    return paths.root / ".dagster"


def use_data_instance(paths: DataPaths) -> Path:
    """Point `DAGSTER_HOME` at the data folder's instance (`<data root>/.dagster`) unless it is
    set, and give that folder the project's `dagster.yaml` (rewritten when the project's
    changed). An explicitly set `DAGSTER_HOME` is used as it is, settings included. Returns the
    instance folder."""
    explicit = os.environ.get("DAGSTER_HOME")
    if explicit:
        return Path(explicit)
    home = instance_home(paths)
    home.mkdir(parents=True, exist_ok=True)
    settings = INSTANCE_SETTINGS.read_bytes()
    target = home / "dagster.yaml"
    if not target.exists() or target.read_bytes() != settings:
        with atomic_path(target) as tmp:
            tmp.write_bytes(settings)
    os.environ["DAGSTER_HOME"] = str(home)
    return home
