"""The synthetic PAMAP2 generator: official file format, quirks, missing data, realistic signals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.neighbors import NearestCentroid
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ml_core.data.columns import (
    ACTIVITY,
    DAT_COLUMNS,
    HEART_RATE,
    IMUS,
    OPTIONAL_ACTIVITIES,
    OPTIONAL_SUBJECTS,
    PROTOCOL_ACTIVITIES,
    SUBJECTS,
    TIMESTAMP,
    imu_columns,
)
from ml_core.data.synthetic import SCALES, RecordingsExistError, generate_recording, write_dataset
from ml_core.paths import DataPaths

# The real excerpt lives in ../shared beside the repository (in CI too).
EXCERPT = Path(__file__).resolve().parents[2] / "shared/data/pamap2_real_excerpt/excerpt_13x500.csv"
WINDOW = 256  # 2.56 s at 100 Hz


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataPaths, dict]:
    """All nine subjects at the `tiny` scale, written once for the module."""
    paths = DataPaths(tmp_path_factory.mktemp("synthetic"))
    summary = write_dataset(paths.raw, scale="tiny", seed=0)
    return paths, summary


def _read(path: Path) -> pl.DataFrame:
    return pl.read_csv(
        path,
        separator=" ",
        has_header=False,
        new_columns=DAT_COLUMNS,
        schema_overrides={c: pl.Float64 for c in DAT_COLUMNS},
    ).with_columns(pl.col(ACTIVITY).cast(pl.Int64))


@pytest.fixture(scope="module")
def protocol(tiny: tuple[DataPaths, dict]) -> dict[int, pl.DataFrame]:
    paths, _ = tiny
    return {s: _read(paths.dat_file("protocol", s)) for s in SUBJECTS}


@pytest.fixture(scope="module")
def optional(tiny: tuple[DataPaths, dict]) -> dict[int, pl.DataFrame]:
    paths, _ = tiny
    return {s: _read(paths.dat_file("optional", s)) for s in OPTIONAL_SUBJECTS}


def _vectors(frame: pl.DataFrame, imu: str, field: str) -> np.ndarray:
    return frame.select(f"{imu}_{field}_{a}" for a in "xyz").to_numpy()


def test_writes_the_official_layout_and_a_matching_summary(tiny: tuple[DataPaths, dict]) -> None:
    paths, summary = tiny
    written = sorted(p.relative_to(paths.raw).as_posix() for p in paths.raw.rglob("*.dat"))
    expected = sorted(
        [f"PAMAP2_Dataset/Protocol/subject{s}.dat" for s in SUBJECTS]
        + [f"PAMAP2_Dataset/Optional/subject{s}.dat" for s in OPTIONAL_SUBJECTS]
    )
    assert written == expected
    assert not [p for p in paths.raw.rglob("*") if p.name.endswith(".tmp")]
    assert sorted(summary["files"]) == expected
    for rel, info in summary["files"].items():
        path = paths.raw / rel
        assert info["bytes"] == path.stat().st_size
        assert info["rows"] == sum(1 for _ in path.open())
    assert summary["rows"] == sum(f["rows"] for f in summary["files"].values())
    assert summary["seconds"] > 0
    assert SCALES == ("tiny", "demo", "full")


def test_lines_follow_the_official_text_format(tiny: tuple[DataPaths, dict]) -> None:
    paths, _ = tiny
    lines = paths.dat_file("protocol", 101).read_text().splitlines()
    previous = None
    for number, line in enumerate(lines, 1):
        tokens = line.split(" ")
        assert len(tokens) == 54, f"line {number}"
        values = [float(t) for t in tokens]  # no header: every token is a number or NaN
        assert all(t == "NaN" or t.lstrip("-")[0].isdigit() for t in tokens), f"line {number}"
        assert tokens[1].isdigit() and (tokens[2] == "NaN" or tokens[2].isdigit())
        ticks = values[0] * 100
        assert abs(ticks - round(ticks)) < 1e-6, f"line {number}: {tokens[0]} off the 0.01 s grid"
        if previous is not None:
            assert round(ticks) - previous == 1, f"line {number}: timestamps must step by 0.01 s"
        previous = round(ticks)
    assert "NaN" in " ".join(lines)
    # Valid orientation columns read like the official first row: `1 0 0 0`.
    assert lines[0].split(" ")[16:20] in (["1", "0", "0", "0"], ["NaN"] * 4)


def test_all_files_are_on_the_grid_with_known_activity_ids(
    protocol: dict[int, pl.DataFrame], optional: dict[int, pl.DataFrame]
) -> None:
    for session, frames, allowed in (
        ("protocol", protocol, set(PROTOCOL_ACTIVITIES) | {0}),
        ("optional", optional, set(OPTIONAL_ACTIVITIES) | {0}),
    ):
        for subject, frame in frames.items():
            steps = (frame[TIMESTAMP] * 100).round().diff().drop_nulls()
            assert (steps == 1).all(), f"{session} {subject}"
            assert set(frame[ACTIVITY].unique()) <= allowed, f"{session} {subject}"
            assert frame[ACTIVITY][0] == 0 and frame[ACTIVITY][-1] == 0  # breaks at both ends


def test_same_seed_gives_identical_bytes_and_subjects_are_independent(tmp_path: Path) -> None:
    first = write_dataset(tmp_path / "a", scale="tiny", seed=3, subjects=[109])
    write_dataset(tmp_path / "b", scale="tiny", seed=3, subjects=[103, 109])
    write_dataset(tmp_path / "c", scale="tiny", seed=4, subjects=[109])
    for rel in first["files"]:
        a = (tmp_path / "a" / rel).read_bytes()
        assert a == (tmp_path / "b" / rel).read_bytes(), rel
        assert a != (tmp_path / "c" / rel).read_bytes(), rel


def test_protocol_quirks(protocol: dict[int, pl.DataFrame]) -> None:
    def seconds(subject: int) -> dict[int, float]:
        counts = protocol[subject][ACTIVITY].value_counts()
        return {int(a): n / 100 for a, n in counts.iter_rows() if a != 0}

    assert set(seconds(109)) == {24}
    assert not {5, 6, 7, 24} & set(seconds(103))
    assert not {5, 24} & set(seconds(104))
    assert 24 not in seconds(107)
    assert seconds(107)[5] < seconds(107)[4]
    assert 0 < seconds(106)[24] < 5
    for subject in SUBJECTS:
        for activity, secs in seconds(subject).items():
            if (subject, activity) != (106, 24):
                assert secs >= 25, f"{subject} activity {activity}: {secs} s"
    # Protocol order, stairs up and down alternating twice.
    runs = protocol[101].filter(pl.col(ACTIVITY) > 0)[ACTIVITY].rle().struct.field("value")
    assert runs.to_list() == [1, 2, 3, 17, 16, 12, 13, 12, 13, 4, 7, 6, 5, 24]


def test_optional_files_hold_the_optional_activities(optional: dict[int, pl.DataFrame]) -> None:
    found = {s: set(f[ACTIVITY].unique()) - {0} for s, f in optional.items()}
    assert found == {
        101: {9, 11, 18, 19},
        105: {10, 19},
        106: {10, 18, 19},
        108: {10, 18, 19, 20},
        109: {10, 18, 19, 20},
    }


def test_unknown_scale_subject_or_session_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="scale"):
        write_dataset(tmp_path, scale="huge")
    with pytest.raises(ValueError, match="subject 110"):
        write_dataset(tmp_path, scale="tiny", subjects=[110])
    with pytest.raises(ValueError, match="no Optional"):
        generate_recording(102, "optional", "tiny")


def test_heart_rate_is_sparse_activity_dependent_and_lagging(
    protocol: dict[int, pl.DataFrame],
) -> None:
    rows = pl.concat(protocol.values())
    missing = rows[HEART_RATE].is_nan().mean()
    assert 0.89 < missing < 0.93  # ~9 Hz readings at 100 Hz
    readings = rows.filter(pl.col(HEART_RATE).is_not_nan())
    assert readings[HEART_RATE].min() >= 57 and readings[HEART_RATE].max() <= 202
    level = readings.group_by(ACTIVITY).agg(pl.col(HEART_RATE).mean())
    level = dict(level.iter_rows())
    assert level[1] < level[4] < level[5]
    assert level[1] + 40 < level[24]
    # Running follows cycling: the heart rate is still climbing through the segment.
    rises = []
    for frame in protocol.values():
        hr = frame.filter(pl.col(ACTIVITY) == 5)[HEART_RATE].to_numpy()
        if len(hr) >= 2000:
            rises.append(np.nanmean(hr[-500:]) - np.nanmean(hr[:500]))
    assert len(rises) >= 5 and np.mean(rises) > 5


def test_dropped_packets_blank_one_imu_at_the_real_rates(
    protocol: dict[int, pl.DataFrame],
) -> None:
    rows = pl.concat(protocol.values())
    for imu, rate in (("hand", 0.0046), ("chest", 0.0012), ("ankle", 0.0041)):
        blank = rows.select(pl.col(c).is_nan() for c in imu_columns(imu)).to_numpy()
        assert (blank.all(axis=1) == blank.any(axis=1)).all(), f"{imu}: partial blank rows"
        assert 0.6 * rate < blank[:, 0].mean() < 1.4 * rate, imu


def test_accelerometer_ranges_orientation_temperature_and_field(
    protocol: dict[int, pl.DataFrame],
) -> None:
    rows = pl.concat(protocol.values())
    vigorous = rows.filter(pl.col(ACTIVITY).is_in([5, 24]))
    ranges = {"hand": (31, 34), "chest": (33, 36), "ankle": (30, 34)}
    for imu in IMUS:
        acc6 = np.abs(_vectors(vigorous, imu, "acc6"))
        acc16 = np.abs(_vectors(vigorous, imu, "acc16"))
        assert 60 < np.nanmax(acc6) <= 62, f"{imu}: the ±6 g sensor saturates near 61 m/s²"
        assert np.nanmax(acc16) > 65, f"{imu}: the ±16 g sensor does not"
        valid = rows.filter(pl.col(f"{imu}_temperature_c").is_not_nan())
        orientation = valid.select(imu_columns(imu)[-4:]).to_numpy()
        assert (orientation == [1, 0, 0, 0]).all()
        temperature = valid[f"{imu}_temperature_c"].to_numpy()
        lo, hi = ranges[imu]
        assert lo <= temperature.min() and temperature.max() <= hi
        assert (temperature * 16 == np.round(temperature * 16)).all()
        field = np.linalg.norm(_vectors(valid, imu, "mag"), axis=1)
        assert np.percentile(field, 5) > 20 and np.percentile(field, 95) < 80, imu


def _excerpt() -> pl.DataFrame:
    return pl.read_csv(EXCERPT, null_values=["NaN"])


def _direction(acc: np.ndarray) -> np.ndarray:
    mean = np.nanmean(acc, axis=0)
    return mean / np.linalg.norm(mean)


def _angle(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip(u @ v, -1, 1))))


def test_gravity_directions_and_energy_match_the_real_excerpt(
    protocol: dict[int, pl.DataFrame],
) -> None:
    excerpt = _excerpt()
    right_handed = [s for s in SUBJECTS if s != 108]
    for activity in (1, 2, 3, 6, 12, 13, 16, 24):
        real = excerpt.filter(pl.col("activityID") == activity)
        for imu in ("chest", "ankle"):
            target = _direction(real.select(f"{imu}Acc{a}" for a in "XYZ").to_numpy())
            directions = [
                _direction(_vectors(f.filter(pl.col(ACTIVITY) == activity), imu, "acc16"))
                for s, f in protocol.items()
                if s in right_handed and (f[ACTIVITY] == activity).sum() > 0
            ]
            pooled = np.mean(directions, axis=0)
            angle = _angle(pooled / np.linalg.norm(pooled), target)
            assert angle < 30, f"activity {activity} {imu}: {angle:.0f}° from the excerpt"

    def magnitude_std(activity: int, imu: str) -> float:
        stds = []
        for frame in protocol.values():
            acc = _vectors(frame.filter(pl.col(ACTIVITY) == activity), imu, "acc16")
            norm = np.linalg.norm(acc[~np.isnan(acc).any(axis=1)], axis=1)
            if len(norm) >= 500:  # 5 s windows, as in the facts table
                stds += [w.std() for w in np.array_split(norm, len(norm) // 500)]
        return float(np.mean(stds))

    assert magnitude_std(5, "ankle") > 50 * magnitude_std(1, "ankle")
    assert magnitude_std(4, "ankle") > 1.5 * magnitude_std(4, "chest")
    real = excerpt.filter(pl.col("activityID") == 5)
    real_acc = real.select(f"ankleAcc{a}" for a in "XYZ").drop_nulls().to_numpy()
    real_norm = np.linalg.norm(real_acc, axis=1)
    assert 0.5 < magnitude_std(5, "ankle") / real_norm.std() < 2


def test_walking_cadence_shows_in_the_ankle(protocol: dict[int, pl.DataFrame]) -> None:
    peaks = []
    for frame in protocol.values():
        acc = _vectors(frame.filter(pl.col(ACTIVITY) == 4), "ankle", "acc16")
        if len(acc) == 0:
            continue
        norm = np.linalg.norm(np.nan_to_num(acc, nan=0.0), axis=1)[:2000]
        spectrum = np.abs(np.fft.rfft((norm - norm.mean()) * np.hanning(len(norm))))
        freqs = np.fft.rfftfreq(len(norm), 0.01)
        peaks.append(freqs[1:][spectrum[1:].argmax()])
    assert 1.5 < np.median(peaks) < 2.1  # steps at ~1.8 Hz, as in the real excerpt


def _window_features(frames: dict[int, pl.DataFrame]) -> tuple[np.ndarray, ...]:
    """Mean and std per channel over 2.56 s windows inside each subject x activity run."""
    channels = [f"{imu}_{k}_{a}" for imu in IMUS for k in ("acc16", "gyro", "mag") for a in "xyz"]
    features, labels, subjects, late = [], [], [], []
    for subject, frame in frames.items():
        labeled = frame.filter(pl.col(ACTIVITY) > 0)
        for (activity,), part in labeled.group_by(ACTIVITY, maintain_order=True):
            values = part.select(channels).fill_nan(None).fill_null(strategy="forward")
            values = values.fill_null(strategy="backward").to_numpy()
            count = len(values) // WINDOW
            if count < 2:
                continue
            windows = values[: count * WINDOW].reshape(count, WINDOW, -1)
            features.append(np.concatenate([windows.mean(1), windows.std(1)], axis=1))
            labels += [activity] * count
            subjects += [subject] * count
            late += list(np.arange(count) >= 0.7 * count)
    return np.concatenate(features), np.array(labels), np.array(subjects), np.array(late)


def test_models_learn_across_subjects_and_within_subject_is_easier(
    protocol: dict[int, pl.DataFrame],
) -> None:
    x, y, subject, late = _window_features(protocol)

    def accuracy(train: np.ndarray, test: np.ndarray) -> float:
        model = make_pipeline(StandardScaler(), NearestCentroid())
        return float(model.fit(x[train], y[train]).score(x[test], y[test]))

    # Leave one subject out (109 has rope jumping only), against the first 70 % of every
    # subject x activity run predicting its last 30 %.
    cross = np.mean([accuracy(subject != s, subject == s) for s in SUBJECTS if s != 109])
    within = accuracy(~late, late)
    chance = 1 / len(np.unique(y))
    assert cross > 4 * chance, f"cross-subject accuracy {cross:.2f}"
    assert within > cross + 0.05, f"within {within:.2f} vs cross-subject {cross:.2f}"


def test_recordings_it_did_not_write_are_never_overwritten_unasked(tmp_path: Path) -> None:
    """Real recordings (no synthetic marker) stop the generator before it writes anything;
    `overwrite=True` is the explicit way; its own earlier output it rewrites freely."""
    paths = DataPaths(tmp_path)
    real = paths.dat_file("protocol", 101)
    real.parent.mkdir(parents=True)
    real.write_bytes(b"0.01 1 100 real recording\n")
    with pytest.raises(RecordingsExistError, match="not generated here.*subject101.dat"):
        write_dataset(paths.raw, scale="tiny", subjects=[101, 102])
    assert real.read_bytes() == b"0.01 1 100 real recording\n"
    assert sorted(p.name for p in paths.dataset.rglob("*")) == ["Protocol", "subject101.dat"]

    write_dataset(paths.raw, scale="tiny", subjects=[101], overwrite=True)
    assert paths.synthetic_marker.exists() and real.read_bytes() != b"0.01 1 100 real recording\n"
    write_dataset(paths.raw, scale="tiny", subjects=[101, 102])  # its own files: no flag needed
    assert paths.dat_file("protocol", 102).exists()


def test_pamap_synth_refuses_real_recordings_without_overwrite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from orchestration.cli import main

    monkeypatch.setenv("PAMAP_DATA_ROOT", str(tmp_path))  # main() sets it; restored after

    paths = DataPaths(tmp_path)
    real = paths.dat_file("optional", 105)
    real.parent.mkdir(parents=True)
    real.write_bytes(b"real\n")
    assert main(["synth", "--scale", "tiny", "--data-root", str(tmp_path)]) == 1
    assert real.read_bytes() == b"real\n" and not paths.synthetic_marker.exists()
