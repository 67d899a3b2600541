"""Fold building: exact stratified cuts, subject-disjoint holdout/LOSO, manifests, checks."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest

from ml_core.data.columns import SUBJECTS
from ml_core.data.folds import (
    FOLD_NAMES,
    LOSO_VALIDATION_PEOPLE,
    SPLITS,
    ShardRange,
    build_fold,
    check_no_overlap,
    check_stratified_coverage,
    check_subject_disjoint,
    load_shard_index,
    loso_validation_subjects,
    read_fold,
    read_manifest,
    summarize_fold,
    validation_subjects,
    write_manifests,
)
from ml_core.data.shards import ShardInfo
from ml_core.evaluation.protocol import EvaluationProtocol
from ml_core.io import write_json
from ml_core.paths import DataPaths

W = 256


def shard(subject: int, activity: int, rows: int, session: str = "protocol") -> ShardInfo:
    return ShardInfo(
        f"processed_tensors/subject_{subject}/activity_{activity}.pt",
        subject,
        activity,
        session,
        rows,
    )


def all_subjects() -> list[ShardInfo]:
    """Every subject with a few activities of uneven length; 109 has rope jumping only."""
    shards = []
    for i, subject in enumerate(SUBJECTS[:-1]):
        for j, activity in enumerate((1, 4, 17)):
            shards.append(shard(subject, activity, 3000 + 997 * i + 1301 * j))
    shards.append(shard(106, 24, 260))  # 2.6 s of rope jumping: too short to cut
    shards.append(shard(109, 24, 6391))
    return shards


def test_stratified_cuts_every_shard_70_15_15_with_one_window_gaps():
    # 10512 rows leave 10000 after two 256-row gaps: 7000 / 1500 / 1500.
    ranges = build_fold("stratified", [shard(101, 1, 10_512)], window=W)
    assert [(r.start, r.end) for split in SPLITS for r in ranges[split]] == [
        (0, 7000),
        (7256, 8756),
        (9012, 10_512),
    ]

    shards = all_subjects()
    short = shard(106, 24, 260).path
    ranges = build_fold("stratified", shards, window=W)
    for s in shards:
        parts = {split: [r for r in ranges[split] if r.path == s.path] for split in SPLITS}
        if s.path == short:
            assert parts == {"train": [ShardRange(s.path, 0, 260, 106, 24)], "val": [], "test": []}
            continue
        train, val, test = (parts[split][0] for split in SPLITS)
        usable = s.rows - 2 * W
        assert train.start == 0 and test.end == s.rows
        assert val.start - train.end == W and test.start - val.end == W
        assert train.rows == round(0.70 * usable) and val.rows == round(0.15 * usable)
        assert train.rows + val.rows + test.rows == usable
    usable = sum(s.rows - 2 * W for s in shards if s.path != short)
    for split, fraction in zip(SPLITS, (0.70, 0.15, 0.15), strict=True):
        share = sum(r.rows for r in ranges[split] if r.path != short)
        assert abs(share / usable - fraction) < 0.001
    assert check_stratified_coverage(ranges, window=W)[0]
    assert check_no_overlap(ranges)[0]

    report = summarize_fold("stratified", ranges, window=W)
    assert any("1 shard(s) too short" in note and "106/24" in note for note in report.notes)
    assert report.windows == {split: sum(r.rows // W for r in ranges[split]) for split in SPLITS}


def test_stratified_coverage_check_catches_a_bad_cut():
    ranges = build_fold("stratified", all_subjects(), window=W)
    first = ranges["train"][0]
    shifted = dict(
        ranges, train=[dataclasses.replace(first, end=first.end - 50)] + ranges["train"][1:]
    )
    passed, message = check_stratified_coverage(shifted, window=W)
    assert not passed and first.path in message
    passed, message = check_stratified_coverage(ranges, window=W + 1)
    assert not passed and "expected one window" in message


def test_holdout_validates_on_105_and_tests_on_106():
    shards = all_subjects()
    ranges = build_fold("holdout-106", shards, window=W)
    report = summarize_fold("holdout-106", ranges, window=W)
    assert report.subjects == {
        "train": [101, 102, 103, 104, 107, 108, 109],
        "val": [105],
        "test": [106],
    }
    # Whole shards, every row used once.
    assert all(r.start == 0 for split in SPLITS for r in ranges[split])
    assert sum(report.rows.values()) == sum(s.rows for s in shards)
    assert check_subject_disjoint(ranges)[0] and check_no_overlap(ranges)[0]
    # One of 105's shards moved to train is a whole-shard leak, not a time cut.
    moved = dict(ranges, train=ranges["train"] + ranges["val"][:1], val=ranges["val"][1:])
    passed, message = check_subject_disjoint(moved)
    assert not passed and "train/val: [105]" in message
    assert not check_subject_disjoint(build_fold("stratified", shards, window=W))[0]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_loso_validates_on_a_person_disjoint_from_train_and_test(subject):
    shards = all_subjects()
    fold = f"loso-{subject}"
    ranges = build_fold(fold, shards, window=W)
    subjects = {split: {r.subject for r in ranges[split]} for split in SPLITS}
    assert subjects["test"] == {subject}
    people = loso_validation_subjects(subject)
    assert len(people) == 2 and people == validation_subjects(fold)
    assert subjects["val"] == set(people)
    assert subjects["val"].isdisjoint(subjects["train"] | subjects["test"])
    assert subject not in subjects["train"] and 109 not in subjects["val"]
    # Whole shards: every row of every subject is used exactly once.
    assert all(r.start == 0 for split in SPLITS for r in ranges[split])
    assert sum(r.rows for split in SPLITS for r in ranges[split]) == sum(s.rows for s in shards)
    assert check_subject_disjoint(ranges)[0] and check_no_overlap(ranges)[0]
    leaky = dict(ranges, train=ranges["train"] + ranges["test"][:1])
    passed, message = check_subject_disjoint(leaky)
    assert not passed and f"train/test: [{subject}]" in message
    # The old protocol, validation cut from the tail of the training people's shards, fails.
    val_from_train = dict(ranges, val=ranges["val"] + ranges["train"][:1])
    assert not check_subject_disjoint(val_from_train)[0]


def test_validation_rotation_is_fixed_and_covers_101_to_108_twice():
    rotation = {s: loso_validation_subjects(s) for s in SUBJECTS}
    assert rotation == {
        101: (102, 103),
        102: (103, 104),
        103: (104, 105),
        104: (105, 106),
        105: (106, 107),
        106: (107, 108),
        107: (108, 101),
        108: (101, 102),
        109: (101, 102),
    }
    counts = Counter(v for s in SUBJECTS if s != 109 for v in rotation[s])
    assert counts == {s: 2 for s in range(101, 109)}
    # The protocol id records how many people validate each LOSO fold.
    assert EvaluationProtocol(256, 128, 1, "protocol12").loso_validation_people
    assert LOSO_VALIDATION_PEOPLE == EvaluationProtocol.loso_validation_people == 2
    assert validation_subjects("holdout-106") == (105,)
    assert validation_subjects("stratified") == ()
    notes = summarize_fold("stratified", build_fold("stratified", all_subjects(), W), W).notes
    assert any("validation is within-subject" in n for n in notes)


def test_loso_109_with_rope_jumping_only_builds_and_says_so(tmp_path):
    shards = all_subjects()
    ranges = build_fold("loso-109", shards, window=W)
    assert {r.activity for r in ranges["test"]} == {24}
    report = write_manifests(DataPaths(tmp_path), "loso-109", ranges, window=W, shards=shards)
    assert (
        "loso-109: test subject 109 has only activity 24 (rope jumping) in Protocol data"
        in report.notes
    )
    assert report.rows["test"] == 6391


def test_missing_subjects_contribute_nothing_but_an_empty_split_is_an_error():
    shards = [s for s in all_subjects() if s.subject != 104]
    ranges = build_fold("loso-101", shards, window=W)
    assert 104 not in {r.subject for split in SPLITS for r in ranges[split]}
    with pytest.raises(ValueError, match=r"loso-104: split\(s\) \['test'\] would be empty"):
        build_fold("loso-104", shards, window=W)
    with pytest.raises(ValueError, match="unknown fold"):
        build_fold("loso-110", shards, window=W)


def test_overlap_check_catches_overlaps_within_and_across_splits():
    a = ShardRange.from_path("processed_tensors/subject_101/activity_1.pt", 0, 100)
    b = dataclasses.replace(a, start=90, end=200)
    c = dataclasses.replace(a, start=100, end=200)
    assert check_no_overlap({"train": [a], "val": [c], "test": []})[0]
    passed, message = check_no_overlap({"train": [a], "val": [b], "test": []})
    assert not passed and "train [0, 100) overlaps val [90, 200)" in message
    assert not check_no_overlap({"train": [a, b], "val": [], "test": []})[0]


@pytest.mark.parametrize("fold", FOLD_NAMES)
def test_manifests_round_trip(tmp_path, fold):
    paths = DataPaths(tmp_path)
    ranges = build_fold(fold, all_subjects(), window=W)
    report = write_manifests(paths, fold, ranges, window=W)
    assert read_fold(paths, fold) == ranges
    first = ranges["train"][0]
    lines = paths.manifest(fold, "train").read_text().splitlines()
    assert lines[0] == f"{first.path},{first.start},{first.end}"
    assert report.manifests["test"] == str(paths.manifest(fold, "test"))


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("processed_tensors/subject_101/activity_1.pt,12", "expected 'path,start,end'"),
        ("processed_tensors/subject_101/activity_1.pt,a,100", "field start is not an integer"),
        ("processed_tensors/subject_101/activity_1.pt,0,1e3", "field end is not an integer"),
        ("processed_tensors/subject_101/activity_1.pt,50,50", "need 0 <= start < end"),
        ("somewhere/else.pt,0,100", "field path"),
    ],
)
def test_bad_manifest_line_names_file_line_and_field(tmp_path, line, error):
    manifest = tmp_path / "train.txt"
    manifest.write_text(f"processed_tensors/subject_102/activity_4.pt,0,10\n\n{line}\n")
    with pytest.raises(ValueError, match=error) as info:
        read_manifest(manifest)
    assert f"{manifest}:3:" in str(info.value)


def test_load_shard_index_reads_every_ingested_subject(tmp_path):
    paths = DataPaths(tmp_path)
    for subject in (101, 105):
        entries = [dataclasses.asdict(s) for s in all_subjects() if s.subject == subject]
        write_json(
            {"subject": subject, "shards": entries}, paths.tensor_shard_dir(subject) / "index.json"
        )
    loaded = load_shard_index(paths)
    assert loaded == [s for s in all_subjects() if s.subject in (101, 105)]
    assert load_shard_index(paths, subjects=[105]) == [s for s in loaded if s.subject == 105]

    write_json({"subject": 102, "shards": entries}, paths.tensor_shard_dir(102) / "index.json")
    with pytest.raises(ValueError, match="subject_102/index.json: lists shards of subjects"):
        load_shard_index(paths)
