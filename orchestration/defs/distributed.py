"""The training job on Dagster's Celery executor: every step is a task for a Celery worker.

The broker and result backend come from the environment (`PAMAP_CELERY_BROKER_URL`,
`PAMAP_CELERY_BACKEND_URL`, e.g. `redis://127.0.0.1:6379/0`) so one definition serves every
deployment; the launchpad shows them and can override them for one run.
"""

import dagster as dg
from dagster_celery import celery_executor

celery_training_job = dg.define_asset_job(
    "celery_training_job",
    selection=dg.AssetSelection.assets("trained_model", "evaluation_bundle"),
    executor_def=celery_executor,
    config={
        "execution": {
            "config": {
                "broker": {"env": "PAMAP_CELERY_BROKER_URL"},
                "backend": {"env": "PAMAP_CELERY_BACKEND_URL"},
            }
        }
    },
    description="Train and evaluate one fold x model, each step on a Celery worker.",
)
