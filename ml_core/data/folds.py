"""Evaluation folds: which shard row ranges train, validate and test each fold.

A fold is three manifests (`train.txt`, `val.txt`, `test.txt`), one line per shard range:
`path,start,end` with `path` relative to the data root and `end` exclusive. Folds are built
from the subjects' shard indexes alone; no tensor is opened.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ml_core.data.columns import ACTIVITY_NAMES, SUBJECTS
from ml_core.io import write_text
from ml_core.paths import DataPaths
from ml_core.data.shards import INDEX_NAME, ShardInfo, read_shard_index

FOLD_NAMES: list[str] = ["stratified", "holdout-106", *(f"loso-{s}" for s in SUBJECTS)]
SPLITS: tuple[str, ...] = ("train", "val", "test")

DEFAULT_WINDOW = 256
STRATIFIED_FRACTIONS = (0.70, 0.15, 0.15)
HOLDOUT_VAL_SUBJECT = 105
HOLDOUT_TEST_SUBJECT = 106
# The deployment fold: every subject trains except one validation person, who still chooses
# the epoch and fits the temperature. It has no test person, so it is not an evaluation fold
# (not a partition, never on the leaderboard): a model trained on it is estimated by LOSO.
DEPLOY_FOLD = "all-subjects"
# Subjects that may validate a LOSO fold: 109's Protocol data is rope jumping only, so its
# validation macro F1 would rank checkpoints on one class.
VALIDATION_CANDIDATES: tuple[int, ...] = tuple(s for s in SUBJECTS if s != 109)

_SHARD_PATH = re.compile(r"subject_(\d+)/activity_(\d+)\.pt$")


@dataclass(frozen=True, order=True)
class ShardRange:
    """Rows [start, end) of one tensor shard; `path` is relative to the data root."""

    path: str
    start: int
    end: int
    subject: int
    activity: int

    @property
    def rows(self) -> int:
        return self.end - self.start

    @classmethod
    def from_path(cls, path: str, start: int, end: int) -> ShardRange:
        """Build a range, reading subject and activity from the shard's file name."""
        match = _SHARD_PATH.search(path)
        if match is None:
            raise ValueError(f"shard path {path!r} is not .../subject_<id>/activity_<id>.pt")
        return cls(path, start, end, int(match.group(1)), int(match.group(2)))


@dataclass
class FoldReport:
    """Sizes and composition of a fold's splits, and anything a reader should know."""

    fold: str
    window: int
    rows: dict[str, int]
    windows: dict[str, int]  # non-overlapping windows of `window` rows that fit in the ranges
    subjects: dict[str, list[int]]
    activities: dict[str, list[int]]
    notes: list[str] = field(default_factory=list)
    manifests: dict[str, str] = field(default_factory=dict)


def load_shard_index(paths: DataPaths, subjects: Iterable[int] | None = None) -> list[ShardInfo]:
    """Every listed shard of `subjects` (default: all PAMAP2 subjects); absent indexes skipped."""
    shards: list[ShardInfo] = []
    for subject in SUBJECTS if subjects is None else subjects:
        index = paths.tensor_shard_dir(subject) / INDEX_NAME
        if not index.exists():
            continue  # not ingested yet: contributes nothing
        entries = read_shard_index(index)
        wrong = sorted({s.subject for s in entries} - {subject})
        if wrong:
            raise ValueError(f"{index}: lists shards of subjects {wrong}, expected {subject}")
        shards.extend(entries)
    return shards


# People who validate each LOSO fold. Two, so that a temperature fitted on one of them can be
# checked on the other before it is applied to the test person (see
# `ml_core.evaluation.calibration.fit_temperature`).
LOSO_VALIDATION_PEOPLE = 2


def loso_validation_subjects(test_subject: int) -> tuple[int, ...]:
    """The validation subjects of `loso-<test_subject>`: the next candidates after it, cyclically.

    The rotation is fixed (101→102+103, …, 107→108+101, 108→101+102, 109→101+102), so every
    LOSO fold tunes early stopping, checkpoint choice and calibration on people it neither
    trains nor tests on, and each of 101–108 validates exactly two folds of 101–108.
    """
    if test_subject not in SUBJECTS:
        raise ValueError(f"unknown subject {test_subject}; expected one of {SUBJECTS}")
    others = [s for s in VALIDATION_CANDIDATES if s != test_subject]
    later = [s for s in others if s > test_subject]
    ordered = later + [s for s in others if s < test_subject]
    return tuple(ordered[:LOSO_VALIDATION_PEOPLE])


def validation_subjects(fold: str) -> tuple[int, ...]:
    """The held-out validation subjects of a fold; empty for `stratified` (within-subject)."""
    if fold in ("holdout-106", DEPLOY_FOLD):
        return (HOLDOUT_VAL_SUBJECT,)
    if fold.startswith("loso-"):
        return loso_validation_subjects(int(fold.removeprefix("loso-")))
    return ()


def test_subject(fold: str) -> int | None:
    """The test subject of a holdout or LOSO fold; None for `stratified`."""
    if fold == "holdout-106":
        return HOLDOUT_TEST_SUBJECT
    if fold.startswith("loso-"):
        return int(fold.removeprefix("loso-"))
    return None


def _whole(shard: ShardInfo) -> ShardRange:
    return ShardRange(shard.path, 0, shard.rows, shard.subject, shard.activity)


def _cut(shard: ShardInfo, fractions: Sequence[float], window: int) -> list[ShardRange] | None:
    """Contiguous parts in time with a one-window gap between them; None if any part < window.

    Of the rows left after the gaps, every part but the last gets round(fraction * rows) and
    the last gets the rest, so the parts and gaps add up to the shard exactly.
    """
    usable = shard.rows - (len(fractions) - 1) * window
    lengths = [round(f * usable) for f in fractions[:-1]]
    lengths.append(usable - sum(lengths))
    if min(lengths) < window:
        return None
    parts, start = [], 0
    for length in lengths:
        parts.append(ShardRange(shard.path, start, start + length, shard.subject, shard.activity))
        start += length + window
    return parts


def build_fold(
    fold: str, shards: Sequence[ShardInfo], window: int = DEFAULT_WINDOW
) -> dict[str, list[ShardRange]]:
    """Split the shards into train/val/test ranges for `fold` (one of FOLD_NAMES, or
    DEPLOY_FOLD).

    - stratified: every shard cut 70/15/15 in time with one-window gaps; shards too short
      for every part to hold a window go wholly to train.
    - holdout-106: validate on subject 105, test on 106, train on the rest (whole shards).
    - loso-<id>: test on every shard of <id>, validate on every shard of the fold's two
      validation subjects (`loso_validation_subjects`), train on the rest (whole shards).
    - all-subjects (DEPLOY_FOLD): validate on subject 105, train on everyone else, no test.
    An empty split is an error (but the deployment fold's test): the fold could not be trained
    or evaluated.
    """
    if fold not in (*FOLD_NAMES, DEPLOY_FOLD):
        raise ValueError(f"unknown fold {fold!r}; expected one of {FOLD_NAMES} or {DEPLOY_FOLD}")
    if window < 1:
        raise ValueError(f"window must be at least 1 row, got {window}")
    paths = [s.path for s in shards]
    if len(set(paths)) != len(paths):
        raise ValueError(f"fold {fold}: a shard is listed twice")

    splits: dict[str, list[ShardRange]] = {split: [] for split in SPLITS}
    held_out = {s: "val" for s in validation_subjects(fold)} | {test_subject(fold): "test"}
    for shard in sorted(shards, key=lambda s: (s.subject, s.activity, s.path)):
        if fold == "stratified":
            parts = _cut(shard, STRATIFIED_FRACTIONS, window)
            if parts is None:
                splits["train"].append(_whole(shard))
            else:
                for split, part in zip(SPLITS, parts, strict=True):
                    splits[split].append(part)
        else:
            split = held_out.get(shard.subject, "train")
            splits[split].append(_whole(shard))

    needed = ("train", "val") if fold == DEPLOY_FOLD else SPLITS
    empty = [split for split in needed if not splits[split]]
    if empty:
        subjects = sorted({s.subject for s in shards})
        raise ValueError(
            f"fold {fold}: split(s) {empty} would be empty with {len(shards)} shards of "
            f"subjects {subjects} (window {window}); ingest the missing subjects first"
        )
    return splits


def _activity(activity: int) -> str:
    return f"{activity} ({ACTIVITY_NAMES.get(activity, 'unknown')})"


def _fold_notes(
    fold: str,
    ranges: dict[str, list[ShardRange]],
    window: int,
    shards: Sequence[ShardInfo] | None,
) -> list[str]:
    notes = []
    held_out = {r.path for split in ("val", "test") for r in ranges[split]}
    wholly_train = [r for r in ranges["train"] if r.path not in held_out]
    if fold == "stratified":
        notes.append(
            "stratified: validation is within-subject (the middle 15 % of every shard), so "
            "early stopping and calibration are tuned on people also in train and test"
        )
        if wholly_train:
            names = ", ".join(f"{r.subject}/{r.activity}" for r in wholly_train)
            notes.append(
                f"{len(wholly_train)} shard(s) too short for a 70/15/15 cut with {window}-row "
                f"parts and gaps went wholly to train (subject/activity): {names}"
            )
    else:
        people = " and ".join(str(s) for s in validation_subjects(fold))
        notes.append(f"{fold}: validation subject(s) {people} disjoint from train and test")

    if fold != "stratified":
        unseen = sorted(
            {r.activity for r in ranges["test"]} - {r.activity for r in ranges["train"]}
        )
        if unseen:
            notes.append(
                f"{fold}: test activities never seen in training: "
                + ", ".join(_activity(a) for a in unseen)
            )

    if fold.startswith("loso-"):
        subject = int(fold.removeprefix("loso-"))
        if shards is not None:
            by_session: dict[str, set[int]] = defaultdict(set)
            for s in shards:
                if s.subject == subject:
                    by_session[s.session].add(s.activity)
            for session, activities in sorted(by_session.items()):
                if len(activities) == 1:
                    notes.append(
                        f"{fold}: test subject {subject} has only activity "
                        f"{_activity(next(iter(activities)))} in {session.capitalize()} data"
                    )
        else:
            activities = {r.activity for r in ranges["test"]}
            if len(activities) == 1:
                notes.append(
                    f"{fold}: test subject {subject} has only activity "
                    f"{_activity(next(iter(activities)))}"
                )
    return notes


def summarize_fold(
    fold: str,
    ranges: dict[str, list[ShardRange]],
    window: int = DEFAULT_WINDOW,
    shards: Sequence[ShardInfo] | None = None,
) -> FoldReport:
    """Rows, windows, subjects and activities per split, plus notes (sessions need `shards`)."""
    return FoldReport(
        fold=fold,
        window=window,
        rows={split: sum(r.rows for r in ranges[split]) for split in SPLITS},
        windows={split: sum(r.rows // window for r in ranges[split]) for split in SPLITS},
        subjects={split: sorted({r.subject for r in ranges[split]}) for split in SPLITS},
        activities={split: sorted({r.activity for r in ranges[split]}) for split in SPLITS},
        notes=_fold_notes(fold, ranges, window, shards),
    )


def write_manifests(
    paths: DataPaths,
    fold: str,
    ranges: dict[str, list[ShardRange]],
    *,
    window: int = DEFAULT_WINDOW,
    shards: Sequence[ShardInfo] | None = None,
) -> FoldReport:
    """Write `<fold>/{train,val,test}.txt` (each atomically) and summarize the fold."""
    if set(ranges) != set(SPLITS):
        raise ValueError(f"fold {fold}: ranges must have exactly the splits {SPLITS}")
    report = summarize_fold(fold, ranges, window, shards)
    for split in SPLITS:
        target = paths.manifest(fold, split)
        write_text("".join(f"{r.path},{r.start},{r.end}\n" for r in ranges[split]), target)
        report.manifests[split] = str(target)
    return report


def read_manifest(path: str | Path) -> list[ShardRange]:
    """Parse a manifest; a bad line is an error naming the file, the line and the field."""
    path = Path(path)
    ranges = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rsplit(",", 2)
        where = f"{path}:{lineno}"
        if len(fields) != 3 or not fields[0]:
            raise ValueError(f"{where}: expected 'path,start,end', got {line!r}")
        shard, start_text, end_text = fields
        try:
            start = int(start_text)
        except ValueError:
            raise ValueError(f"{where}: field start is not an integer: {start_text!r}") from None
        try:
            end = int(end_text)
        except ValueError:
            raise ValueError(f"{where}: field end is not an integer: {end_text!r}") from None
        if not 0 <= start < end:
            raise ValueError(f"{where}: need 0 <= start < end, got start={start} end={end}")
        try:
            ranges.append(ShardRange.from_path(shard, start, end))
        except ValueError as exc:
            raise ValueError(f"{where}: field path: {exc}") from None
    return ranges


def read_fold(paths: DataPaths, fold: str) -> dict[str, list[ShardRange]]:
    """All three manifests of a fold."""
    return {split: read_manifest(paths.manifest(fold, split)) for split in SPLITS}


# --- checks: each returns (passed, message) ------------------------------------------------


def _by_path(ranges: dict[str, list[ShardRange]]) -> dict[str, dict[str, list[ShardRange]]]:
    grouped: dict[str, dict[str, list[ShardRange]]] = defaultdict(lambda: defaultdict(list))
    for split in SPLITS:
        for r in ranges.get(split, []):
            grouped[r.path][split].append(r)
    return grouped


def check_stratified_coverage(
    ranges: dict[str, list[ShardRange]], window: int | None = None
) -> tuple[bool, str]:
    """Every cut shard is 70/15/15 of its non-gap rows (within 1 row); overall within 0.1 pp.

    Shards that went wholly to train (too short to cut) are left out of the fractions.
    With `window` given, both gaps must be exactly one window.
    """
    problems = []
    totals = dict.fromkeys(SPLITS, 0)
    cut_shards = 0
    for path, parts in sorted(_by_path(ranges).items()):
        if set(parts) == {"train"} and len(parts["train"]) == 1 and parts["train"][0].start == 0:
            continue  # too short to cut: wholly train
        if any(len(parts.get(split, [])) != 1 for split in SPLITS):
            problems.append(f"{path}: needs exactly one train, val and test range")
            continue
        train, val, test = (parts[split][0] for split in SPLITS)
        gaps = (val.start - train.end, test.start - val.end)
        if train.start != 0 or gaps[0] != gaps[1] or gaps[0] <= 0:
            problems.append(f"{path}: parts must start at 0 with two equal gaps, got gaps {gaps}")
        if window is not None and gaps != (window, window):
            problems.append(f"{path}: gaps {gaps}, expected one window ({window}) each")
        usable = train.rows + val.rows + test.rows
        for part, fraction in zip((train, val, test), STRATIFIED_FRACTIONS, strict=True):
            if abs(part.rows - round(fraction * usable)) > 1:
                problems.append(
                    f"{path}: {part.rows} of {usable} rows, expected {round(fraction * usable)}"
                )
        for split, part in zip(SPLITS, (train, val, test), strict=True):
            totals[split] += part.rows
        cut_shards += 1

    usable = sum(totals.values())
    if usable == 0:
        problems.append("no shard long enough to cut 70/15/15")
    else:
        for split, fraction in zip(SPLITS, STRATIFIED_FRACTIONS, strict=True):
            share = totals[split] / usable
            if abs(share - fraction) > 0.001:
                problems.append(f"overall {split} share {share:.4%}, expected {fraction:.0%}")
    if problems:
        return False, "; ".join(problems)
    shares = ", ".join(f"{split} {totals[split] / usable:.3%}" for split in SPLITS)
    return True, f"{cut_shards} shards cut 70/15/15; overall {shares}"


def check_subject_disjoint(ranges: dict[str, list[ShardRange]]) -> tuple[bool, str]:
    """No subject in two splits (holdout and LOSO folds): train, validation and test people
    are three disjoint sets."""
    subjects = {split: {r.subject for r in ranges.get(split, [])} for split in SPLITS}
    pairs = [("train", "val"), ("train", "test"), ("val", "test")]
    shared = [
        f"{a}/{b}: {sorted(subjects[a] & subjects[b])}"
        for a, b in pairs
        if subjects[a] & subjects[b]
    ]
    if shared:
        return False, "subjects in two splits: " + "; ".join(shared)
    return True, ", ".join(f"{split}: {sorted(subjects[split])}" for split in SPLITS)


def check_no_overlap(ranges: dict[str, list[ShardRange]]) -> tuple[bool, str]:
    """No two ranges of one shard share a row, within or across splits."""
    problems = []
    n_ranges = 0
    for path, parts in sorted(_by_path(ranges).items()):
        tagged = sorted((r.start, r.end, split) for split, rs in parts.items() for r in rs)
        n_ranges += len(tagged)
        for start, end, split in tagged:
            if not 0 <= start < end:
                problems.append(f"{path}: {split} range [{start}, {end}) is empty or negative")
        for (s0, e0, split0), (s1, e1, split1) in zip(tagged, tagged[1:], strict=False):
            if s1 < e0:
                problems.append(f"{path}: {split0} [{s0}, {e0}) overlaps {split1} [{s1}, {e1})")
    if problems:
        return False, "; ".join(problems)
    return True, f"{n_ranges} ranges, none overlapping"
