"""Where every step reads and writes, derived from one data root and a partition key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_ROOT = PROJECT_ROOT / "data"


def default_data_root() -> Path:
    return Path(os.environ.get("PAMAP_DATA_ROOT", DEFAULT_DATA_ROOT)).resolve()


@dataclass(frozen=True)
class DataPaths:
    root: Path

    # --- inputs -------------------------------------------------------------------------
    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def dataset(self) -> Path:
        """The extracted archive's folder, holding Protocol/ and Optional/."""
        return self.raw / "PAMAP2_Dataset"

    @property
    def synthetic_marker(self) -> Path:
        """Present when the data set was written by `ml_core.data.synthetic`, not recorded."""
        return self.dataset / "SYNTHETIC.json"

    def dat_file(self, session: str, subject: int) -> Path:
        folder = {"protocol": "Protocol", "optional": "Optional"}[session]
        return self.dataset / folder / f"subject{subject}.dat"

    # --- per-subject tables -------------------------------------------------------------
    def table(self, stage: str, subject: int) -> Path:
        """`stage` is one of raw_recording, validated_recording, imputed_recording."""
        return self.root / "interim" / stage / f"subject_{subject}.parquet"

    def shard_dir(self, subject: int) -> Path:
        return self.root / "processed" / f"subject_{subject}"

    def tensor_shard(self, subject: int, activity: int) -> Path:
        return self.root / "processed_tensors" / f"subject_{subject}" / f"activity_{activity}.pt"

    def tensor_shard_dir(self, subject: int) -> Path:
        return self.root / "processed_tensors" / f"subject_{subject}"

    # --- per-fold -----------------------------------------------------------------------
    def fold_dir(self, fold: str) -> Path:
        return self.root / "folds" / fold

    def manifest(self, fold: str, split: str) -> Path:
        return self.fold_dir(fold) / f"{split}.txt"

    def feature_stats(self, fold: str) -> Path:
        return self.fold_dir(fold) / "feature_stats.json"

    # --- per fold x variant x protocol x seed -------------------------------------------
    # A variant (ml_core.training.variants; a built-in one is named after its model), a protocol id
    # (ml_core.evaluation.protocol) and a seed in every path: a run of another variant or under
    # other settings is stored beside earlier results, never over them.
    def model_root(self, fold: str, variant: str) -> Path:
        """Every protocol's trainings of `variant` on `fold` (and `latest.json`)."""
        return self.root / "models" / fold / variant

    def model_dir(self, fold: str, variant: str, protocol_id: str, seed: int) -> Path:
        return self.model_root(fold, variant) / protocol_id / f"seed-{seed}"

    def evaluation_dir(self, fold: str, variant: str, protocol_id: str, seed: int) -> Path:
        return self.root / "evaluation" / fold / variant / protocol_id / f"seed-{seed}"

    # --- serving --------------------------------------------------------------------------
    @property
    def inbox(self) -> Path:
        """New `.dat` recordings to run the champion over (one `inbox_timeline` partition each)."""
        return self.root / "inbox"

    def timeline_dir(self, recording: str) -> Path:
        """`recording` is `subject_<id>` or `inbox_<file stem>`."""
        return self.root / "timelines" / recording

    # --- reports ------------------------------------------------------------------------
    @property
    def reports(self) -> Path:
        return self.root / "reports"

    # --- what each stage writes -----------------------------------------------------------
    def stage_outputs(self, stage: str) -> list[Path]:
        """The folders stage `stage` (one of `STAGES`) writes, and nothing else: never the raw
        data, the inbox or the MLflow store."""
        folders = {
            "ingest": [
                self.root / "interim",
                self.root / "processed",
                self.root / "processed_tensors",
            ],
            "prepare": [self.root / "folds"],
            # The feature cache is keyed by content: removing it only costs recomputing it.
            "train": [self.root / "models", self.root / "evaluation", self.root / "cache"],
            "report": [self.reports],
            "timelines": [self.root / "timelines"],
        }
        if stage not in folders:
            raise ValueError(f"unknown stage {stage!r}; one of {', '.join(STAGES)}")
        return folders[stage]


# The stages whose outputs `DataPaths.stage_outputs` names, in the order they run.
STAGES: tuple[str, ...] = ("ingest", "prepare", "train", "report", "timelines")
