"""Settings for the whole test session, loaded before pytest-xdist starts its workers."""

from __future__ import annotations

import os
import sys

# Under PYTHONDONTWRITEBYTECODE Python keeps no bytecode cache, so every process the tests start
# (both xdist workers, `pamap demo`, the Dagster and MLflow servers, the Celery workers) would
# compile torch, Dagster and MLflow from source again: about 10 s of CPU each, more for a
# training that loads torch's compiler. The test session lets them cache it (in the git-ignored
# `__pycache__` folders), so only the first import compiles.
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
