"""How runs execute: every step of a run inside the run's own process.

A separate process per step would import Dagster and load this code location again for every
step (seconds each on a small machine), which is most of a short run's time; this graph's runs
are chains whose steps cannot overlap anyway. Runs still go in parallel, each in its process,
and the `training` pool still allows one training step at a time.
"""

import dagster as dg


@dg.definitions
def execution() -> dg.Definitions:
    return dg.Definitions(executor=dg.in_process_executor)
