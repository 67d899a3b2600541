"""Train stage: one model per fold x variant partition, then its evaluation bundle.

The model dimension holds variants (`orchestration.defs.partitions`). A variant's settings
(experiments.yaml, or a model's defaults) decide everything that changes a result, and they are
versioned: `trained_model` reads `variant_settings`, whose data version is a hash of them, so
editing a variant makes its partitions stale. The launchpad's run config chooses only where and
how a training runs (device, compile, deterministic, resume); any other key fails the run.

`ml_core.pipeline` (torch, scikit-learn, MLflow) is imported inside the asset bodies, so loading
the code location and running the data steps does not pay for it.
"""

from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg

from ml_core.evaluation.protocol import missing_bundle_files, missing_model_files
from ml_core.io import checkpoint_digest
from ml_core.paths import DataPaths
from ml_core.training.config import RUN_SETTINGS, Device, TrainConfig
from orchestration.code_versions import code_version
from orchestration.defs.automation import WEEKLY_TRAINING
from orchestration.defs.partitions import fold_and_variant, fold_model_partitions
from orchestration.defs.prepare import activity_shards, feature_stats, fold_manifests
from orchestration.defs.resources import DataRoot, MlflowTracking
from orchestration.defs.variants import (
    find_variant,
    recorded_settings_version,
    variant_settings,
    variant_settings_events,
)
from orchestration.metadata import files_version, number, png_markdown, raise_blocked, table

TRAINING_POOL = "training"


class TrainingConfig(dg.PermissiveConfig):
    """Where and how a training runs, never what it computes: `device`, `compile`,
    `deterministic` (exact runs; refuse a resume on another device) and `resume` (continue from
    `last.pt`). Everything that changes a result (epochs, loss, window, model arguments, seeds,
    ...) is a variant's setting in experiments.yaml, versioned by `variant_settings`; such a key
    here fails the run at once, naming it. (Permissive so that the failure can say so; the
    launchpad still checks these fields' values.)"""

    device: Device = TrainConfig.device
    compile: bool = TrainConfig.compile
    deterministic: bool = TrainConfig.deterministic
    resume: bool = False


_BY_FOLD = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="fold")
_BY_VARIANT = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="model")
# What a fold x model partition reads: its fold's manifests and statistics, and the tensor
# shards of every subject (the manifests name ranges of them).
_FOLD_INPUTS = [
    dg.AssetDep(fold_manifests, partition_mapping=_BY_FOLD),
    dg.AssetDep(feature_stats, partition_mapping=_BY_FOLD),
    dg.AssetDep(activity_shards, partition_mapping=dg.AllPartitionMapping()),
]


def _run_tags(
    context: dg.AssetExecutionContext, fold: str, variant: str, mlflow: MlflowTracking
) -> dict[str, str]:
    """Tags of the MLflow run, with the link back to the Dagster run that made it."""
    run_id = context.run.run_id
    return {
        "dagster.run_id": run_id,
        "dagster.run_url": mlflow.dagster_run_url(run_id),
        "fold": fold,
        "variant": variant,
    }


def _training_slots(context: dg.AssetExecutionContext) -> int:
    """How many trainings may run at once: the `training` pool's limit (1 if unknown)."""
    try:
        info = context.instance.event_log_storage.get_concurrency_info(TRAINING_POOL)
    except NotImplementedError:  # a storage without pools
        return 1
    return max(1, info.slot_count)


@dg.asset(
    partitions_def=fold_model_partitions,
    group_name="train",
    kinds={"pytorch", "mlflow"},
    deps=[dg.AssetDep(variant_settings, partition_mapping=_BY_VARIANT), *_FOLD_INPUTS],
    code_version=code_version(__file__, "trained_model"),
    automation_condition=WEEKLY_TRAINING,
    pool=TRAINING_POOL,
    retry_policy=dg.RetryPolicy(max_retries=2, delay=2),
    check_specs=[
        dg.AssetCheckSpec(
            "beats_majority_baseline",
            asset="trained_model",
            partitions_def=fold_model_partitions,
            description="Validation accuracy is above always predicting the most common class "
            "(a warning: the model is kept and ranked).",
        )
    ],
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    data_root: DataRoot,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """A variant's model trained by `ml_core` on one fold: `best.pt`, `last.pt` and
    `history.json` under `data/models/<fold>/<variant>/<protocol id>/seed-<seed>/`, one MLflow
    run per seed tagged with the variant. The variant's settings decide the result; the run
    config only where and how it runs. Another protocol (window, stride, rate, class set) is
    stored beside, never over; training settings are recorded with the result. A retry resumes
    from `last.pt`.

    Partly filled is normal: `pamap demo` trains two models (`feature_gbm`, `temporal_cnn`) of
    the 11 folds x every variant, so most partitions stay missing. "Materialize all" (or a
    backfill of every partition) starts a training for each missing fold x variant: pick
    partitions, or run `pamap demo --models ...`, to train only some."""
    from ml_core import pipeline

    fold, name = fold_and_variant(context)
    run = {k: v for k, v in context.op_execution_context.op_config.items() if k != "resume"}
    try:
        if not_run := sorted(set(run) - set(RUN_SETTINGS)):
            raise ValueError(
                f"the run config sets {', '.join(not_run)}, which would change the result; it "
                f"may set only {', '.join(RUN_SETTINGS)} and resume. Set the others on a "
                f"variant in experiments.yaml (its settings are versioned)"
            )
        variant = find_variant(name)
        train_config = variant.train_config(**run)
        pipeline.check_fold_window(data_root.paths(), fold, train_config)
    except (TypeError, ValueError) as exc:
        # A bad setting fails the same way every time: no retry.
        raise dg.Failure(
            description=f"{fold}/{name}: invalid training config: {exc}", allow_retries=False
        ) from exc
    if recorded_settings_version(context.instance, name) != variant.settings_version():
        # Edited since last recorded (no sensor or registration saw it): record the settings,
        # then retry, because a step reads its inputs' versions as it starts, and the result
        # must name the settings it was trained with.
        for event in variant_settings_events(context.instance, [variant]):
            context.instance.report_runless_asset_event(event)
        context.log.info(f"recorded the changed settings of {name}; restarting the step")
        raise dg.RetryRequested(max_retries=1)
    model, seeds = variant.model, variant.n_seeds
    resume = config.resume or context.retry_number > 0
    if resume:
        context.log.info(
            f"resuming {fold}/{name} from its last checkpoint (retry {context.retry_number})"
        )

    def log_epoch(record: dict) -> None:
        context.log.info(
            f"{fold}/{name} epoch {record['epoch']}: train_loss={record['train_loss']:.4f} "
            f"val_macro_f1={record['val_macro_f1']:.4f} val_acc={record['val_accuracy']:.4f} "
            f"({record['seconds']:.1f}s)"
        )

    summary = pipeline.train_fold_model(
        data_root.paths(),
        fold,
        model,
        train_config,
        tracker=mlflow.tracker(),
        tags=_run_tags(context, fold, name, mlflow),
        resume=resume,
        on_epoch=log_epoch,
        seeds=seeds,
        variant=name,
        variant_settings=variant.settings(),
        threads=pipeline.threads_per_slot(_training_slots(context)),
    )
    history_rows = [
        {k: r.get(k) for k in ("epoch", "train_loss", "val_loss", "val_macro_f1", "val_accuracy")}
        for r in summary["history"]
    ]
    return dg.MaterializeResult(
        metadata={
            "variant": name,
            "model": model,
            "variant_settings": dg.MetadataValue.json(variant.settings()),
            "settings_version": variant.settings_version(),
            "protocol_id": summary["protocol"]["id"],
            "protocol": summary["protocol"]["description"],
            "seeds": str(summary["seeds"]),
            "val_macro_f1": number(summary["best_val_macro_f1"]),
            "val_accuracy": number(summary["val_accuracy"]),
            "majority_baseline_accuracy": number(summary["majority_baseline_accuracy"]),
            "epochs": summary["epochs"],
            "stopped_early": summary["stopped_early"],
            "train_windows": summary["train_windows"],
            "train_seconds": round(summary["seconds"], 1),
            "history": table(history_rows),
            "checkpoint": dg.MetadataValue.path(summary["best_path"]),
            "mlflow_run": dg.MetadataValue.url(summary["mlflow_url"]),
            "mlflow_run_id": summary["mlflow_run_id"],
            "config": dg.MetadataValue.json(
                {
                    "variant": name,
                    "model": model,
                    "fold": fold,
                    "resume": resume,
                    "seeds": seeds,
                    **train_config.to_dict(),
                }
            ),
        },
        data_version=dg.DataVersion(
            "-".join(checkpoint_digest(s["best_path"])[:16] for s in summary["per_seed"])
        ),
        check_results=[
            dg.AssetCheckResult(
                check_name="beats_majority_baseline",
                # A weak model is worth a look, not a failed run: the leaderboard ranks it.
                severity=dg.AssetCheckSeverity.WARN,
                passed=summary["val_accuracy"] > summary["majority_baseline_accuracy"],
                metadata={
                    "val_accuracy": number(summary["val_accuracy"]),
                    "majority_baseline_accuracy": number(summary["majority_baseline_accuracy"]),
                },
            )
        ],
    )


@dg.asset(
    partitions_def=fold_model_partitions,
    group_name="train",
    kinds={"mlflow", "matplotlib"},
    deps=[trained_model, *_FOLD_INPUTS],
    code_version=code_version(__file__, "evaluation_bundle"),
    automation_condition=WEEKLY_TRAINING,
    check_specs=[
        dg.AssetCheckSpec(
            "bundle_complete",
            asset="evaluation_bundle",
            blocking=True,
            partitions_def=fold_model_partitions,
            description="Every file of every seed's evaluation bundle is present; an incomplete "
            "bundle is not materialized and blocks what reads it.",
        )
    ],
)
def evaluation_bundle(
    context: dg.AssetExecutionContext, data_root: DataRoot, mlflow: MlflowTracking
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Test-set metrics of the best checkpoint: summary metrics, classification report,
    confusion matrix, ROC and PR curves, and a reliability diagram with expected calibration
    error before and after temperature scaling (chosen on validation, applied only when it
    carries from one validation person to the other; the notes say which). Logged to the model's
    MLflow run. Written to `data/evaluation/<fold>/<variant>/<protocol id>/seed-<seed>/`.

    Each partition's headline gives macro F1 with the number of test classes and windows it is
    over: a one-class fold (loso-109: rope jumping only) reads 1.0 from a few windows; compare
    variants by the leaderboard's pooled LOSO. Like `trained_model`, most partitions stay
    missing after `pamap demo` (two models); materializing all of them trains every missing
    fold x variant first."""
    from ml_core import pipeline
    from ml_core.evaluation.evaluate import BUNDLE_PLOTS, bundle_headline

    fold, name = fold_and_variant(context)
    result = pipeline.evaluate_fold_model(
        data_root.paths(),
        fold,
        name,
        tracker=mlflow.tracker(),
        tags=_run_tags(context, fold, name, mlflow),
    )
    summary = result["summary"]
    headline = bundle_headline(summary)
    for note in result["notes"]:
        context.log.info(f"{fold}/{name}: {note}")
    missing = [f"seed-{r['seed']}/{f}" for r in result["per_seed"] for f in r["missing_files"]]
    check = dg.AssetCheckResult(
        check_name="bundle_complete",
        passed=not missing,
        metadata={"missing": ", ".join(missing) or "none"},
    )
    if missing:
        yield check
        raise_blocked(check, f"{fold}/{name}: missing {', '.join(missing)}")
    yield dg.MaterializeResult(
        metadata={
            "variant": name,
            "model": summary["model"],
            "protocol_id": result["protocol"]["id"],
            "protocol": result["protocol"]["description"],
            "seeds": str(result["seeds"]),
            "headline": headline.test,
            "test_macro_f1": number(summary["macro_f1"]),
            "test_classes": f"{summary['n_classes_present']} of {summary['n_classes']}",
            "test_windows": summary["n_test"],
            "test_accuracy": number(summary["accuracy"]),
            "test_balanced_accuracy": number(summary["balanced_accuracy"]),
            "calibration": headline.calibration,
            "ece_before": number(result["ece_before"]),
            "nll_before": number(result["nll_before"]),
            # Without a temperature, "after" repeats "before" up to float noise.
            **(
                {
                    "ece_after": number(result["ece_after"]),
                    "nll_after": number(result["nll_after"]),
                    "temperature": number(result["temperature"]),
                }
                if headline.calibration_applied
                else {}
            ),
            "notes": dg.MetadataValue.md("\n".join(f"- {n}" for n in result["notes"]) or "_none_"),
            "confusion_matrix": table(result["confusion_rows"]),
            **{
                f"{key} (image)": png_markdown(Path(result["folder"]) / file, title)
                for key, file, title in BUNDLE_PLOTS
            },
            "folder": dg.MetadataValue.path(result["folder"]),
            "mlflow_run": dg.MetadataValue.url(result["mlflow_url"]),
        },
        data_version=files_version(
            [Path(r["folder"]) / "summary_metrics.json" for r in result["per_seed"]],
            data_root.paths().root,
        ),
        check_results=[check],
    )


# Files deleted by hand stay "materialized" in the instance (`pamap clean` wipes both together):
# these checks find the partitions whose files are gone. They run on their own
# (`outputs_check_job`, or "Execute" on the asset's Checks tab), not with each training.
FILES_PRESENT = "files_present"


def _materialized_partitions(instance: dg.DagsterInstance, key: dg.AssetKey) -> set[str]:
    partitions: set[str] = set()
    cursor = None
    while True:
        page = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key), limit=1000, cursor=cursor
        )
        partitions.update(r.partition_key for r in page.records if r.partition_key)
        if not page.has_more:
            return partitions
        cursor = page.cursor


def _files_present(
    instance: dg.DagsterInstance,
    key: dg.AssetKey,
    paths: DataPaths,
    missing_files: Callable[[DataPaths, str, str], list[str]],
) -> dg.AssetCheckResult:
    missing: dict[str, list[str]] = {}
    materialized = _materialized_partitions(instance, key)
    for partition in sorted(materialized):
        # Keys read `<fold>|<variant>` (dimensions in alphabetical order).
        fold, variant = partition.split("|", 1)
        if files := missing_files(paths, fold, variant):
            missing[partition] = files
    return dg.AssetCheckResult(
        passed=not missing,
        severity=dg.AssetCheckSeverity.ERROR,
        description=(
            f"{len(missing)} materialized partition(s) have files missing: materialize them "
            "again (or `pamap clean train` to start over)"
            if missing
            else "every materialized partition has its files"
        ),
        metadata={
            "partitions_missing_files": dg.MetadataValue.json(missing),
            "partitions_checked": len(materialized),
        },
    )


@dg.asset_check(
    asset=trained_model,
    name=FILES_PRESENT,
    description="Every materialized partition still has its latest training's files "
    "(best.pt, last.pt, history.json of each seed); lists the partitions whose files are gone.",
)
def trained_model_files_present(
    context: dg.AssetCheckExecutionContext, data_root: DataRoot
) -> dg.AssetCheckResult:
    return _files_present(
        context.instance, trained_model.key, data_root.paths(), missing_model_files
    )


@dg.asset_check(
    asset=evaluation_bundle,
    name=FILES_PRESENT,
    description="Every materialized partition still has every file of its evaluation bundle "
    "(each seed's); lists the partitions whose files are gone.",
)
def evaluation_bundle_files_present(
    context: dg.AssetCheckExecutionContext, data_root: DataRoot
) -> dg.AssetCheckResult:
    return _files_present(
        context.instance, evaluation_bundle.key, data_root.paths(), missing_bundle_files
    )
