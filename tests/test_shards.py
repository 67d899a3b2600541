"""Per-activity shards: content, order, size limit, stale-file removal and row conservation."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest
import torch
from polars.testing import assert_frame_equal

import ml_core.data.shards as shards_module
from ml_core.data.columns import (
    ACTIVITY,
    MODEL_CHANNELS,
    SESSION,
    SUBJECT,
    TABLE_COLUMNS,
    TIMESTAMP,
)
from ml_core.data.shards import check_shard_rows, read_shard_index, write_activity_shards
from ml_core.io import load_torch, write_parquet
from ml_core.paths import DataPaths

SENSORS = [c for c in TABLE_COLUMNS if c not in (TIMESTAMP, ACTIVITY, SUBJECT, SESSION)]


def fake_table(
    subject: int, blocks: list[tuple[int, str, int]], seed: int = 0, nan_fraction: float = 0.05
) -> pl.DataFrame:
    """An imputed-style 56-column table: (activity, session, rows) blocks, rows shuffled.

    Sensor column i holds values near 1000 * i, so a channel mix-up shows; some values NaN.
    """
    rng = np.random.default_rng(seed)
    n = sum(rows for _, _, rows in blocks)
    clock = {"protocol": 5.0, "optional": 7.0}
    timestamps, activities, sessions = [], [], []
    for activity, session, rows in blocks:
        timestamps.append(clock[session] + 0.01 * np.arange(rows))
        clock[session] += 0.01 * rows + 30.0  # a transient break between activities
        activities.append(np.full(rows, activity))
        sessions += [session] * rows
    sensors = 1000.0 * np.arange(len(SENSORS)) + rng.normal(size=(n, len(SENSORS)))
    sensors[rng.random(size=sensors.shape) < nan_fraction] = np.nan
    frame = pl.DataFrame(
        {
            TIMESTAMP: np.concatenate(timestamps),
            ACTIVITY: np.concatenate(activities),
            **{c: sensors[:, i] for i, c in enumerate(SENSORS)},
            SUBJECT: np.full(n, subject),
            SESSION: sessions,
        }
    ).select(TABLE_COLUMNS)
    frame = frame.cast(
        {
            ACTIVITY: pl.Int16,
            SUBJECT: pl.Int16,
            **dict.fromkeys(SENSORS, pl.Float32),
        }
    )
    return frame[rng.permutation(n)]


BLOCKS = [(1, "protocol", 300), (4, "protocol", 500), (24, "protocol", 120), (10, "optional", 400)]


def sorted_activity(frame: pl.DataFrame, activity: int) -> pl.DataFrame:
    return frame.filter(pl.col(ACTIVITY) == activity).sort(TIMESTAMP)


def test_shards_hold_each_activity_in_time_order(tmp_path):
    paths = DataPaths(tmp_path)
    frame = fake_table(101, BLOCKS)
    report = write_activity_shards(frame, paths, 101)

    assert sorted(s["activity"] for s in report.shards) == [1, 4, 10, 24]
    assert report.rows_in == report.rows_out == frame.height
    for activity, session, rows in BLOCKS:
        expected = sorted_activity(frame, activity)
        parquet = pl.read_parquet(paths.shard_dir(101) / f"activity_{activity}.parquet")
        assert_frame_equal(parquet, expected)

        shard = load_torch(paths.tensor_shard(101, activity))
        assert shard["channels"] == MODEL_CHANNELS
        assert shard["data"].dtype == torch.float32
        assert tuple(shard["data"].shape) == (rows, len(MODEL_CHANNELS))
        np.testing.assert_array_equal(  # NaN kept, same places
            shard["data"].numpy(), expected.select(MODEL_CHANNELS).to_numpy()
        )
        assert (shard["subject_id"], shard["activity_id"], shard["session"]) == (
            101,
            activity,
            session,
        )
        assert shard["timestamp_start"] == pytest.approx(expected[TIMESTAMP][0])

    index = read_shard_index(paths.tensor_shard_dir(101) / "index.json")
    assert {(s.path, s.activity, s.session, s.rows) for s in index} == {
        (f"processed_tensors/subject_101/activity_{a}.pt", a, session, rows)
        for a, session, rows in BLOCKS
    }
    assert check_shard_rows(frame, report)[0]


def test_shards_record_contiguous_segments_at_time_gaps(tmp_path):
    paths = DataPaths(tmp_path)
    # Stairs up done twice with stairs down between: activity 12's shard has a 30 s jump.
    frame = fake_table(101, [(12, "protocol", 150), (13, "protocol", 80), (12, "protocol", 90)])
    # A two-sample step (one row lost) is jitter, not a gap.
    frame = frame.filter(
        ~(
            (pl.col(ACTIVITY) == 13)
            & (pl.col(TIMESTAMP) == pl.col(TIMESTAMP).filter(pl.col(ACTIVITY) == 13).min() + 0.4)
        )
    )
    report = write_activity_shards(frame, paths, 101)

    up = load_torch(paths.tensor_shard(101, 12))
    assert up["format"] == shards_module.SHARD_FORMAT
    assert up["segments"].tolist() == [[0, 150], [150, 240]]
    down = load_torch(paths.tensor_shard(101, 13))
    assert down["segments"].tolist() == [[0, 79]]
    assert {s["activity"]: s["segments"] for s in report.shards} == {12: 2, 13: 1}


def test_large_activity_splits_into_parts_under_the_limit(tmp_path):
    paths = DataPaths(tmp_path)
    frame = fake_table(102, [(4, "protocol", 3000), (5, "protocol", 200)], nan_fraction=0.0)
    limit = 100_000
    report = write_activity_shards(frame, paths, 102, max_file_bytes=limit)

    walking = next(s for s in report.shards if s["activity"] == 4)
    names = [f["path"].rsplit("/", 1)[1] for f in walking["parquet"]]
    assert len(names) > 1
    assert names == [f"activity_4_part{k:02d}.parquet" for k in range(len(names))]
    files = [paths.root / f["path"] for f in walking["parquet"]]
    assert all(f.stat().st_size < limit for f in files)
    # Consecutive parts re-assemble the time-ordered activity exactly.
    assert_frame_equal(pl.concat([pl.read_parquet(f) for f in files]), sorted_activity(frame, 4))
    assert all(p.stat().st_size < limit for p in paths.shard_dir(102).glob("*.parquet"))
    assert check_shard_rows(frame, report)[0]


def test_rewrite_removes_stale_shards_after_writing_new_ones(tmp_path, monkeypatch):
    paths = DataPaths(tmp_path)
    first = fake_table(103, [(1, "protocol", 2000), (4, "protocol", 300)], nan_fraction=0.0)
    write_activity_shards(first, paths, 103, max_file_bytes=100_000)
    shard_dir, tensor_dir = paths.shard_dir(103), paths.tensor_shard_dir(103)
    old_files = sorted(p.name for p in shard_dir.iterdir())
    assert "activity_1_part00.parquet" in old_files and "activity_4.parquet" in old_files
    (shard_dir / "README.txt").write_text("not a shard")

    second = fake_table(103, [(1, "protocol", 2000)], seed=1)

    # A run that dies while writing leaves the previous shards and index untouched.
    def disk_full(*args: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(shards_module, "save_torch", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_activity_shards(second, paths, 103)
    assert (tensor_dir / "activity_4.pt").exists()
    assert {s.activity for s in read_shard_index(tensor_dir / "index.json")} == {1, 4}
    monkeypatch.undo()

    report = write_activity_shards(second, paths, 103)
    assert sorted(p.name for p in shard_dir.iterdir()) == ["README.txt", "activity_1.parquet"]
    assert sorted(p.name for p in tensor_dir.iterdir()) == ["activity_1.pt", "index.json"]
    assert "processed_tensors/subject_103/activity_4.pt" in report.removed
    assert [s.activity for s in read_shard_index(tensor_dir / "index.json")] == [1]
    assert check_shard_rows(second, report)[0]


def test_row_check_fails_when_a_row_is_lost(tmp_path):
    paths = DataPaths(tmp_path)
    frame = fake_table(104, BLOCKS)
    report = write_activity_shards(frame, paths, 104)
    assert check_shard_rows(frame, report) == (
        True,
        f"{frame.height} rows in 4 shards, none lost or duplicated",
    )

    passed, message = check_shard_rows(frame.slice(1), report)
    assert not passed and "activity" in message

    # A parquet file on disk that lost a row no longer matches its tensor.
    target = paths.shard_dir(104) / "activity_4.parquet"
    write_parquet(pl.read_parquet(target).slice(1), target)
    passed, message = check_shard_rows(frame, report)
    assert not passed and "activity 4: parquet files hold 499 rows, tensor 500" in message


def test_bad_input_is_rejected_with_a_reason(tmp_path):
    paths = DataPaths(tmp_path)
    mixed = fake_table(105, [(4, "protocol", 50), (4, "optional", 50)])
    with pytest.raises(ValueError, match="activity 4: rows come from sessions"):
        write_activity_shards(mixed, paths, 105)
    with pytest.raises(ValueError, match="other subjects"):
        write_activity_shards(fake_table(106, BLOCKS), paths, 105)
    with pytest.raises(ValueError, match="lacks columns"):
        write_activity_shards(fake_table(105, BLOCKS).drop(SESSION), paths, 105)
    assert not paths.tensor_shard_dir(105).exists()


def test_index_with_a_bad_entry_names_the_field(tmp_path):
    index = tmp_path / "index.json"
    index.write_text(json.dumps({"subject": 101, "shards": [{"path": "x.pt", "subject": 101}]}))
    with pytest.raises(ValueError, match=r"index.json: shards\[0\]: bad or missing field"):
        read_shard_index(index)


def test_table_in_recording_order_gives_the_shards_of_a_shuffled_one(tmp_path):
    # The imputed table arrives in recording order (protocol, then optional, each in time):
    # activities interleave but each is already in time order, so its part needs no sort.
    shuffled = fake_table(107, BLOCKS)
    recorded = shuffled.sort(SESSION, TIMESTAMP, descending=[True, False])
    assert recorded[ACTIVITY].to_list() != sorted(recorded[ACTIVITY].to_list())
    outputs = {}
    for name, frame in (("recorded", recorded), ("shuffled", shuffled)):
        paths = DataPaths(tmp_path / name)
        report = write_activity_shards(frame, paths, 107)
        assert check_shard_rows(frame, report)[0]
        outputs[name] = {
            s["activity"]: (
                pl.read_parquet(paths.root / s["parquet"][0]["path"]),
                load_torch(paths.root / s["tensor"])["data"],
            )
            for s in report.shards
        }
    assert outputs["recorded"].keys() == outputs["shuffled"].keys()
    for activity, (table, tensor) in outputs["recorded"].items():
        assert_frame_equal(table, sorted_activity(shuffled, activity))
        assert_frame_equal(table, outputs["shuffled"][activity][0])
        torch.testing.assert_close(tensor, outputs["shuffled"][activity][1], equal_nan=True)
