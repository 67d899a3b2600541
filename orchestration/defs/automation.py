"""Jobs per stage, and declarative automation: the conditions the assets carry and the sensors
that evaluate them (`raw_files_sensor`, which observes the raw files, is in `ingest.py`). All of
it is stopped until a user turns it on (docs/automation.md).

- Data flow: a raw-file observation with a new data version requests that subject's chain
  (`raw_recording` → `activity_shards`); shards with new content request every fold's manifests
  and statistics. A step runs only when an input's *data version* changed (re-reading an
  unchanged file requests nothing) and its inputs' blocking checks passed.
- Training: every fold x model of `trained_model` and `evaluation_bundle` on a weekly cron,
  emitted by the sensor as one asset backfill (the Backfills page shows its progress).
"""

import dagster as dg

AC = dg.AutomationCondition

TRAINING_CRON = "0 2 * * 0"  # Sundays 02:00 UTC

# `eager()` reacts to any new materialization or observation of an input; this reacts only to a
# new data version, so re-observing an unchanged file or rewriting identical output is no news.
_DEPS_DATA_CHANGED = AC.any_deps_match(
    (AC.data_version_changed() & ~AC.executed_with_root_target()) | AC.will_be_requested()
).with_label("any_deps_data_changed")

DATA_FLOW = (
    AC.eager().replace("any_deps_updated", _DEPS_DATA_CHANGED)
    & AC.all_deps_blocking_checks_passed()
).with_label("data_flow")

# The report assets gather many partitions: they refresh when an input has new content (or will,
# in the same tick), once nothing they read is being written; a variant not evaluated on every
# fold (a missing input) does not hold them back, unlike `eager()`.
REPORT_FLOW = (
    (AC.newly_missing() | _DEPS_DATA_CHANGED).since_last_handled()
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label("report_flow")

# `on_cron()` also waits for every input to update after the tick; weekly training retrains on
# the current data whether or not it changed, so only the cron tick and present inputs count.
WEEKLY_TRAINING = (
    AC.on_cron(TRAINING_CRON).without(AC.all_deps_updated_since_cron(TRAINING_CRON))
    & ~AC.any_deps_missing()
    & ~AC.any_deps_in_progress()
    & ~AC.in_progress()
).with_label("weekly_training")

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.groups("ingest") | dg.AssetSelection.assets("activity_shards"),
    description="Parse, validate, impute and shard one subject.",
)
prepare_job = dg.define_asset_job(
    "prepare_job",
    selection=dg.AssetSelection.assets("fold_manifests", "feature_stats"),
    description="Build one fold's manifests and feature statistics.",
)
# The `files_present` checks look at every partition at once: they run in their own job.
_FILES_PRESENT = dg.AssetSelection.checks(
    *(
        dg.AssetCheckKey(dg.AssetKey(a), "files_present")
        for a in ("trained_model", "evaluation_bundle")
    )
)
training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets("trained_model", "evaluation_bundle") - _FILES_PRESENT,
    description="Train and evaluate one fold x model.",
)
outputs_check_job = dg.define_asset_job(
    "outputs_check_job",
    selection=_FILES_PRESENT,
    description="Check that every materialized fold x variant of trained_model and "
    "evaluation_bundle still has its files.",
)
fold_results_job = dg.define_asset_job(
    "fold_results_job",
    selection=dg.AssetSelection.assets("fold_results"),
    description="Gather one fold's evaluation bundles, every variant side by side.",
)
report_job = dg.define_asset_job(
    "report_job",
    selection=dg.AssetSelection.assets("leaderboard"),
    description="Rebuild the leaderboard from every evaluation bundle.",
)

data_automation = dg.AutomationConditionSensorDefinition(
    "data_automation",
    target=dg.AssetSelection.groups("ingest", "prepare"),
    default_status=dg.DefaultSensorStatus.STOPPED,
    emit_backfills=True,
    description="Evaluates the data-flow condition of the ingest and prepare assets: a raw file "
    "with a new data version flows through its subject's chain to every fold's statistics.",
)

training_automation = dg.AutomationConditionSensorDefinition(
    "training_automation",
    target=dg.AssetSelection.assets(
        "trained_model", "evaluation_bundle", "fold_results", "leaderboard", "champion_model"
    ),
    default_status=dg.DefaultSensorStatus.STOPPED,
    emit_backfills=True,
    description=f"Requests every fold x model of the training assets at each tick of "
    f"`{TRAINING_CRON}` (UTC), with the fold results, leaderboard and champion after them, as "
    "one asset backfill; evaluation bundles with new content (also from a run launched by "
    "hand) refresh their folds' results, the leaderboard and the champion.",
)
