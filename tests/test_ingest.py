"""Parsing PAMAP2 `.dat` files: the official first row, the real excerpt, odd line ends, errors."""

from __future__ import annotations

import math
from pathlib import Path

import polars as pl
import pytest

from ml_core.data.columns import (
    ACTIVITY,
    AXES,
    DAT_COLUMNS,
    HEART_RATE,
    IMUS,
    SESSION,
    SUBJECT,
    TABLE_COLUMNS,
    TIMESTAMP,
    imu_columns,
)
from ml_core.data.ingest import TABLE_DTYPES, MalformedRecordingError, read_dat, read_subject
from ml_core.data.schema import validate_recording
from ml_core.paths import DataPaths

# The first row of Protocol/subject101.dat, as PAMAP2_FACTS.md quotes it.
OFFICIAL_ROW = (
    "8.38 0 104 30 2.37223 8.60074 3.51048 2.43954 8.76165 3.35465 -0.0922174 0.0568115 "
    "-0.0158445 14.6806 -69.2128 -5.58905 1 0 0 0 31.8125 0.23808 9.80003 -1.68896 0.265304 "
    "9.81549 -1.41344 -0.00506495 -0.00678097 -0.00566295 0.47196 -51.0499 43.2903 1 0 0 0 "
    "30.3125 9.65918 -1.65569 -0.0997967 9.64689 -1.55576 0.310404 0.00830026 0.00925038 "
    "-0.0175803 -61.1888 -38.9599 -58.1438 1 0 0 0"
)
# The real excerpt lives in ../shared beside the repository (in CI too).
EXCERPT = Path(__file__).resolve().parents[2] / "shared/data/pamap2_real_excerpt/excerpt_13x500.csv"
# The excerpt's name for an IMU field, e.g. hand_acc16_x is handAccX.
EXCERPT_FIELDS = {"acc16": "Acc", "gyro": "Gyr", "mag": "Mag"}


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())
    return path


def _row(timestamp: float, activity: int = 1) -> str:
    """A valid 54-field line with a chosen timestamp and activity."""
    fields = OFFICIAL_ROW.split(" ")
    return " ".join([f"{timestamp:.2f}", str(activity), *fields[2:]])


def test_official_first_row_parses_to_its_values(tmp_path):
    frame = read_dat(_write(tmp_path / "subject101.dat", OFFICIAL_ROW + "\n"), 101, "protocol")
    assert frame.columns == TABLE_COLUMNS
    assert frame.schema == pl.Schema(TABLE_DTYPES)
    row = frame.row(0, named=True)
    assert row[TIMESTAMP] == 8.38
    assert row[ACTIVITY] == 0
    assert row[HEART_RATE] == 104
    assert row["hand_temperature_c"] == 30
    assert row["chest_temperature_c"] == 31.8125
    assert row["ankle_mag_z"] == pytest.approx(-58.1438, abs=1e-5)
    assert row["hand_acc16_x"] == pytest.approx(2.37223, abs=1e-6)
    for imu in IMUS:
        orientation = [row[c] for c in imu_columns(imu)[-4:]]
        assert orientation == [1, 0, 0, 0]
    assert row[SUBJECT] == 101
    assert row[SESSION] == "protocol"
    # Every one of the 54 fields lands in its column.
    expected = [float(v) for v in OFFICIAL_ROW.split(" ")]
    parsed = [float(row[c]) for c in DAT_COLUMNS]
    assert parsed == pytest.approx(expected, rel=1e-6, abs=1e-7)


def _excerpt_as_dat(path: Path) -> pl.DataFrame:
    """Write the real excerpt as a 54-column `.dat` file; return the values it should parse to.

    The excerpt lacks temperature, the +-6 g accelerometer and orientation: temperature is
    32 C, acc6 is acc16 clipped at +-61 m/s^2, orientation 1 0 0 0 (all NaN with a dropped
    packet, like the real files). Heart rate is kept on every 11th row only (~9 Hz).
    """
    excerpt = pl.read_csv(EXCERPT)
    columns = {
        TIMESTAMP: pl.col("timestamp"),
        ACTIVITY: pl.col("activityID"),
        HEART_RATE: pl.when(pl.int_range(pl.len()) % 11 == 0)
        .then(pl.col("heartrate"))
        .otherwise(float("nan")),
    }
    for imu in IMUS:
        present = pl.col(f"{imu}AccX").is_not_nan()
        for col in imu_columns(imu):
            field, axis = col.removeprefix(f"{imu}_").rsplit("_", 1)
            if field in EXCERPT_FIELDS:
                expr = pl.col(f"{imu}{EXCERPT_FIELDS[field]}{axis.upper()}")
            elif field == "acc6":
                expr = pl.col(f"{imu}Acc{axis.upper()}").clip(-61.0, 61.0)
            elif col.endswith("temperature_c"):
                expr = pl.when(present).then(32.0).otherwise(float("nan"))
            else:  # orientation w, x, y, z
                quaternion = 1.0 if axis == "w" else 0.0
                expr = pl.when(present).then(quaternion).otherwise(float("nan"))
            columns[col] = expr
    table = excerpt.select(expr.alias(c) for c, expr in columns.items()).select(DAT_COLUMNS)
    path.write_text(table.write_csv(separator=" ", include_header=False))
    return table


def test_real_excerpt_parses_with_values_and_packet_gaps_and_passes_schema(tmp_path):
    expected = _excerpt_as_dat(tmp_path / "subject108.dat")
    frame = read_dat(tmp_path / "subject108.dat", 108, "protocol")
    assert frame.height == 6500
    assert frame.select(DAT_COLUMNS).equals(
        expected.cast({c: TABLE_DTYPES[c] for c in DAT_COLUMNS})
    )
    # The real dropped packets stay NaN: 49 hand, 4 chest, 69 ankle rows in the excerpt.
    dropped = {imu: int(frame[f"{imu}_acc16_{AXES[0]}"].is_nan().sum()) for imu in IMUS}
    assert dropped == {"hand": 49, "chest": 4, "ankle": 69}
    for imu in IMUS:
        blank = frame.filter(pl.col(f"{imu}_acc16_{AXES[0]}").is_nan())
        assert blank.select(pl.all_horizontal(pl.col(imu_columns(imu)).is_nan()).all()).item()
    assert frame[HEART_RATE].is_nan().sum() == 6500 - len(range(0, 6500, 11))
    result = validate_recording(frame)
    assert result.passed, result.failure_cases


@pytest.mark.parametrize(
    "line_end, final",
    [
        ("\r\n", "\r\n"),  # CRLF
        (" \n", " \n"),  # one trailing space
        ("  \r\n", "  \r\n"),  # trailing spaces and CRLF
        ("\n", ""),  # no final newline
        ("\n", "\n\n\n"),  # blank lines at the end
        (" \n", ""),  # trailing space, no final newline
    ],
)
def test_line_ends_and_trailing_spaces_parse_like_a_plain_file(tmp_path, line_end, final):
    lines = [_row(8.38 + i / 100, activity=i % 3) for i in range(5)]
    plain = read_dat(_write(tmp_path / "plain.dat", "\n".join(lines) + "\n"), 101, "optional")
    odd = read_dat(_write(tmp_path / "odd.dat", line_end.join(lines) + final), 101, "optional")
    assert odd.height == 5
    assert odd.equals(plain)
    assert odd[ACTIVITY].to_list() == [0, 1, 2, 0, 1]


def _lines(n: int) -> list[str]:
    return [_row(8.38 + i / 100) for i in range(n)]


@pytest.mark.parametrize(
    "line_no, bad_line, expected",
    [
        (3, OFFICIAL_ROW.rsplit(" ", 1)[0], ["53 fields", "field 54 (ankle_orientation_z)"]),
        (7, OFFICIAL_ROW + " 5", ["55 fields", "field 55", "'5'"]),
        (2, OFFICIAL_ROW.replace(" 2.37223 ", " 1.2.3 "), ["field 5 (hand_acc16_x)", "'1.2.3'"]),
        (40, OFFICIAL_ROW.replace(" 104 ", " abc ", 1), ["field 3 (heart_rate_bpm)", "'abc'"]),
        (1, OFFICIAL_ROW.replace("8.38 0 ", "8.38 NaN ", 1), ["field 2 (activity_id)", "'NaN'"]),
        (5, OFFICIAL_ROW.replace(" 30 ", "  ", 1), ["field 4 (hand_temperature_c) is empty"]),
    ],
)
def test_malformed_line_names_file_line_field_and_token(tmp_path, line_no, bad_line, expected):
    lines = _lines(50)
    lines[line_no - 1] = bad_line
    path = _write(tmp_path / "subject105.dat", "\n".join(lines) + "\n")
    with pytest.raises(MalformedRecordingError) as caught:
        read_dat(path, 105, "protocol")
    message = str(caught.value)
    assert str(path) in message
    assert f"line {line_no}:" in message
    for part in expected:
        assert part in message
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "prefix, line_no, field",
    [(b"", 1, "field 1 (timestamp_s)"), (b"8.38 0 1", 2, "field 3 (heart_rate_bpm)")],
)
def test_binary_file_names_file_line_and_field(tmp_path, prefix, line_no, field):
    # A PNG saved as .dat: polars alone reports only "invalid utf8".
    good = (OFFICIAL_ROW + "\n").encode() * (line_no - 1)
    path = tmp_path / "subject106.dat"
    path.write_bytes(good + prefix + b"\x89PNG\r\n\x1a\n\x00\xff" + b"\n" + good)
    with pytest.raises(MalformedRecordingError) as caught:
        read_dat(path, 106, "protocol")
    message = str(caught.value)
    assert str(path) in message
    assert "not a text file" in message
    assert f"line {line_no}: {field}" in message


def test_every_malformed_line_is_counted_and_the_first_ones_listed(tmp_path):
    lines = _lines(2000)
    for i in (99, 499, 1999):
        lines[i] = lines[i].replace(" 104 ", " 1.2.3 ", 1)
    path = _write(tmp_path / "subject102.dat", "\n".join(lines))
    with pytest.raises(MalformedRecordingError) as caught:
        read_dat(path, 102, "protocol")
    message = str(caught.value)
    assert "3 malformed line(s)" in message
    assert [f"line {n}:" in message for n in (100, 500, 2000)] == [True, True, True]


def test_missing_file_raises_file_not_found_naming_the_path(tmp_path):
    path = tmp_path / "Protocol" / "subject104.dat"
    with pytest.raises(FileNotFoundError, match="subject104.dat"):
        read_dat(path, 104, "protocol")


@pytest.mark.parametrize("text", ["", "\n\n", "  \r\n"])
def test_empty_file_is_malformed_and_says_so(tmp_path, text):
    path = _write(tmp_path / "subject103.dat", text)
    with pytest.raises(MalformedRecordingError, match=r"subject103\.dat: file is empty"):
        read_dat(path, 103, "protocol")


def test_unknown_session_is_rejected(tmp_path):
    path = _write(tmp_path / "subject101.dat", OFFICIAL_ROW)
    with pytest.raises(ValueError, match="session"):
        read_dat(path, 101, "Protocol")


def _dat_file(paths: DataPaths, session: str, subject: int, timestamps: list[float]) -> None:
    path = paths.dat_file(session, subject)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write(path, "\n".join(_row(t) for t in timestamps) + "\n")


def test_read_subject_concatenates_protocol_then_optional_in_time_order(tmp_path):
    paths = DataPaths(tmp_path)
    _dat_file(paths, "protocol", 105, [10.0, 10.01, 10.02])
    _dat_file(paths, "optional", 105, [5.0, 5.02, 5.01])
    frame = read_subject(paths, 105)
    assert frame.columns == TABLE_COLUMNS
    assert frame[SESSION].to_list() == ["protocol"] * 3 + ["optional"] * 3
    assert frame[TIMESTAMP].to_list() == [10.0, 10.01, 10.02, 5.0, 5.01, 5.02]
    assert frame[SUBJECT].unique().to_list() == [105]


def test_read_subject_without_optional_file_reads_protocol_only(tmp_path):
    paths = DataPaths(tmp_path)
    _dat_file(paths, "protocol", 102, [1.0, 1.01])
    frame = read_subject(paths, 102)
    assert frame[SESSION].to_list() == ["protocol", "protocol"]


def test_read_subject_requires_the_protocol_file(tmp_path):
    paths = DataPaths(tmp_path)
    _dat_file(paths, "optional", 109, [1.0])
    with pytest.raises(FileNotFoundError, match=r"Protocol.subject109\.dat"):
        read_subject(paths, 109)


def test_nan_token_is_missing_data_not_an_error(tmp_path):
    line = OFFICIAL_ROW.replace(" 104 ", " NaN ", 1)
    frame = read_dat(_write(tmp_path / "s.dat", line + "\n"), 101, "protocol")
    assert math.isnan(frame[HEART_RATE][0])
    assert frame[HEART_RATE].null_count() == 0


# --- chunked reading: memory follows the parsed table, not the file ---------------------------

CHUNK = 4096  # ~8 records a chunk, so a few hundred lines cross many chunk boundaries


def test_chunked_read_equals_one_chunk_across_blank_lines_and_crlf(tmp_path):
    lines = [_row(8.38 + i / 100, activity=i % 5) for i in range(300)]
    lines[100] += "\r"  # a CRLF line and trailing spaces in a chunk of their own
    lines[101] += "   "
    text = "\n".join(lines[:150]) + "\n\n\n" + "\n".join(lines[150:])  # no final newline
    path = _write(tmp_path / "subject101.dat", text)
    whole = read_dat(path, 101, "protocol", chunk_bytes=len(text) + 1)
    chunked = read_dat(path, 101, "protocol", chunk_bytes=CHUNK)
    assert chunked.height == 300
    assert chunked.equals(whole)
    assert chunked[TIMESTAMP].to_list() == pytest.approx([8.38 + i / 100 for i in range(300)])


def test_late_bad_line_parses_only_its_chunk_line_by_line(tmp_path, monkeypatch):
    # The line-by-line reader holds several times what it reads: it must see one chunk, never
    # the whole file, and the error still names file, line and field.
    lines = _lines(1000)
    lines[989] = lines[989].replace(" 2.37223 ", " x7 ", 1)
    path = _write(tmp_path / "subject105.dat", "\n".join(lines) + "\n")
    seen: list[int] = []
    real_read_lines = pl.read_lines

    def recording_read_lines(source, **kwargs):
        seen.append(len(source))
        return real_read_lines(source, **kwargs)

    monkeypatch.setattr(pl, "read_lines", recording_read_lines)
    with pytest.raises(MalformedRecordingError) as caught:
        read_dat(path, 105, "protocol", chunk_bytes=CHUNK)
    message = str(caught.value)
    assert str(path) in message
    assert "1 malformed line(s)" in message
    assert "line 990: field 5 (hand_acc16_x) token 'x7' is not a number" in message
    assert seen and max(seen) <= CHUNK + len(lines[0]) + 1  # a chunk ends at a line end


def test_bad_lines_in_different_chunks_are_all_counted(tmp_path):
    lines = _lines(800)
    for i in (3, 404, 405, 790):
        lines[i] = lines[i].replace(" 104 ", " 1.2.3 ", 1)
    lines[600] = lines[600].rsplit(" ", 2)[0]
    path = _write(tmp_path / "subject102.dat", "\n".join(lines))
    with pytest.raises(MalformedRecordingError) as caught:
        read_dat(path, 102, "protocol", chunk_bytes=CHUNK)
    message = str(caught.value)
    assert "5 malformed line(s)" in message
    for n in (4, 405, 406, 791):
        assert f"line {n}: field 3 (heart_rate_bpm)" in message
    assert "line 601: 52 fields" in message


def test_binary_bytes_in_a_late_chunk_name_line_and_file_offset(tmp_path):
    good = (OFFICIAL_ROW + "\n").encode()
    path = tmp_path / "subject106.dat"
    path.write_bytes(good * 100 + b"8.38 \xff\n" + good * 10)
    with pytest.raises(MalformedRecordingError) as caught:
        read_dat(path, 106, "protocol", chunk_bytes=CHUNK)
    message = str(caught.value)
    assert "not a text file" in message
    assert "line 101: field 2 (activity_id) holds byte 0xff" in message
    assert f"at file offset {len(good) * 100 + 5}" in message


def test_a_line_longer_than_a_chunk_is_refused_not_buffered(tmp_path):
    path = _write(tmp_path / "subject107.dat", OFFICIAL_ROW + "\n" + "1 " * 5000)
    with pytest.raises(MalformedRecordingError, match=r"subject107\.dat: line 2 runs past 4096"):
        read_dat(path, 107, "protocol", chunk_bytes=CHUNK)
