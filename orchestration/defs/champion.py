"""Lifecycle stage: the best complete variant past the gates, as the registry's champion."""

import dagster as dg

from orchestration.code_versions import code_version
from orchestration.defs.automation import REPORT_FLOW
from orchestration.defs.report import leaderboard
from orchestration.defs.resources import DataRoot, MlflowTracking
from orchestration.metadata import table


class ChampionConfig(dg.Config):
    """Gates a champion must pass, and which fold's model to register."""

    baseline: str = "feature_gbm"  # any other variant must beat it on pooled LOSO macro F1
    max_ece: float = 0.15  # mean test ECE over the LOSO folds, after temperature scaling
    min_margin: float = 0.0  # pooled LOSO macro F1 needed above the baseline's
    source_fold: str = "holdout-106"  # the fold whose model of the variant is registered
    # Register a model retrained on every subject but validation person 105 (the deployment
    # fold `all-subjects`) instead of the source fold's; only done when it would be promoted.
    retrain_on_all: bool = False


@dg.asset(
    group_name="report",
    kinds={"mlflow"},
    deps=[leaderboard],
    code_version=code_version(__file__, "champion_model"),
    automation_condition=REPORT_FLOW,
)
def champion_model(
    context: dg.AssetExecutionContext,
    config: ChampionConfig,
    data_root: DataRoot,
    mlflow: MlflowTracking,
) -> dg.MaterializeResult:
    """Picks the best complete variant of the leaderboard (every protocol section with the
    main section's class set) by pooled LOSO macro F1, past the gates (ECE within the bound;
    any variant but the classical baseline must beat it, so the baseline wins when nothing
    does), and registers its model trained on `source_fold` in the
    MLflow Model Registry as `pamap2-activity@champion` only when it beats the current
    champion; the replaced version keeps the alias `previous_champion` (rollback = one alias
    move). With `retrain_on_all`, the registered model is the chosen variant retrained on every
    subject but validation person 105. The metadata shows the decision and why every other
    variant was not chosen."""
    from ml_core.lifecycle.champion import REGISTERED_MODEL, ChampionGates
    from ml_core.pipeline import choose_champion

    tracker = mlflow.tracker()
    outcome = choose_champion(
        data_root.paths(),
        tracker,
        ChampionGates(config.baseline, config.max_ece, config.min_margin),
        source_fold=config.source_fold,
        retrain_on_all=config.retrain_on_all,
        tags={"dagster.run_id": context.run.run_id},
    )
    rows, selection, promotion = outcome["rows"], outcome["selection"], outcome["promotion"]
    chosen = selection.champion.variant if selection.champion else None
    comparison = [
        {
            "variant": r.variant,
            "model": r.model,
            "protocol": r.protocol_id,
            "pooled LOSO macro F1": r.pooled_loso_macro_f1,
            "ECE": r.ece,
            "complete": r.complete,
            "verdict": "selected" if r.variant == chosen else selection.rejected.get(r.variant),
        }
        for r in sorted(rows, key=lambda r: -r.pooled_loso_macro_f1)
    ]
    return dg.MaterializeResult(
        metadata={
            "promoted": promotion.promoted,
            "decision": promotion.reason,
            "champion_version": promotion.champion_version or "none",
            "previous_version": promotion.previous_version or "none",
            "selected": chosen or "none",
            "registered_model_trained_on": selection.champion.trained_on
            if promotion.promoted and selection.champion
            else "none",
            "comparison": table(comparison),
            **(
                {
                    "registry": dg.MetadataValue.url(
                        tracker.registered_model_url(REGISTERED_MODEL, promotion.champion_version)
                    )
                }
                if promotion.champion_version
                else {}
            ),
        },
        # The registry's champion: a new one makes the timelines that run it stale.
        data_version=dg.DataVersion(f"champion-{promotion.champion_version or 'none'}"),
    )


champion_job = dg.define_asset_job(
    "champion_job",
    selection=dg.AssetSelection.assets(champion_model),
    description="Choose the champion from the leaderboard and register it in MLflow.",
)
