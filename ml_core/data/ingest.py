"""Parse raw PAMAP2 `.dat` recordings into the 56-field table."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from ml_core.data.columns import (
    ACTIVITY,
    DAT_COLUMNS,
    SESSION,
    SESSIONS,
    SUBJECT,
    TABLE_COLUMNS,
    TIMESTAMP,
)
from ml_core.paths import DataPaths

# Float64 keeps the 0.01 s timestamp grid exact over hours; the sensors fit in Float32.
DAT_DTYPES: dict[str, pl.DataType] = {
    c: pl.Float64() if c == TIMESTAMP else pl.Int16() if c == ACTIVITY else pl.Float32()
    for c in DAT_COLUMNS
}
TABLE_DTYPES: dict[str, pl.DataType] = {**DAT_DTYPES, SUBJECT: pl.Int16(), SESSION: pl.String()}
MAX_REPORTED_LINES = 5
# Bytes of whole lines parsed at a time (~16k records): large enough for the multithreaded
# reader, small enough that a chunk and the line-by-line path over it stay near 100 MB.
CHUNK_BYTES = 8 << 20
TRAILING_FIELD = "_trailing"


class MalformedRecordingError(ValueError):
    """A `.dat` file that is empty or holds a line that is not 54 numeric fields."""


def read_dat(
    path: Path, subject: int, session: str, *, chunk_bytes: int = CHUNK_BYTES
) -> pl.DataFrame:
    """Parse one `.dat` file into the 56-field table (TABLE_COLUMNS order and TABLE_DTYPES).

    Accepts LF or CRLF line ends, trailing spaces, blank lines and a missing final newline;
    `NaN` tokens become NaN. Raises FileNotFoundError for a missing file and
    MalformedRecordingError for an empty file or a line that is not 54 numbers.

    The file is read about `chunk_bytes` of whole lines at a time, each chunk parsed on its own, so
    memory stays near the size of the parsed table however large the file, and a malformed
    line costs the line-by-line parse of its chunk only. A malformed file is still read to its
    end, to count every bad line, but keeps nothing but the first few bad lines.
    """
    path = Path(path)
    if session not in SESSIONS:
        raise ValueError(f"session must be one of {SESSIONS}, got {session!r}")
    if not path.is_file():
        raise FileNotFoundError(f"recording not found: {path}")
    if path.stat().st_size == 0:
        raise MalformedRecordingError(f"{path}: file is empty")
    frames: list[pl.DataFrame] = []
    examples: list[dict[str, Any]] = []
    n_bad = 0
    for chunk in _chunks(path, chunk_bytes):
        values, bad = _parse_chunk(path, chunk)
        if bad.height:
            n_bad += bad.height
            examples.extend(bad.head(MAX_REPORTED_LINES - len(examples)).iter_rows(named=True))
            frames.clear()  # nothing of a malformed file is returned
        elif not n_bad and values.height:
            frames.append(values)
    if n_bad:
        raise MalformedRecordingError(_describe_bad_lines(path, examples, n_bad))
    if not frames:
        raise MalformedRecordingError(f"{path}: file is empty (no records, only blank lines)")
    # No rechunk: one contiguous copy of the table would double the peak.
    return (
        pl.concat(frames, rechunk=False)
        .with_columns(
            pl.lit(subject, dtype=pl.Int16).alias(SUBJECT),
            pl.lit(session, dtype=pl.String).alias(SESSION),
        )
        .select(TABLE_COLUMNS)
    )


def read_subject(paths: DataPaths, subject: int) -> pl.DataFrame:
    """Protocol recording (required) plus the Optional one when present, sorted by session
    (protocol first) then timestamp."""
    frames = []
    for session in SESSIONS:  # protocol first
        path = paths.dat_file(session, subject)
        if session == "protocol" or path.is_file():
            frame = read_dat(path, subject, session)
            # Recordings are written in time order; only a file that is not pays for a sort.
            if not frame[TIMESTAMP].is_sorted():
                frame = frame.sort(TIMESTAMP, maintain_order=True)
            frames.append(frame)
    return pl.concat(frames)


@dataclass(frozen=True)
class _Chunk:
    """Whole lines of a file: their bytes, the number of the first line, its file offset."""

    data: bytes
    first_line: int
    offset: int


def _chunks(path: Path, chunk_bytes: int) -> Iterator[_Chunk]:
    """`path` as consecutive runs of whole lines of about `chunk_bytes` each. A line longer
    than `chunk_bytes` is no PAMAP2 record (those are ~500 bytes) and is refused rather than
    buffered, so a file without line ends is never held whole."""
    line_no, offset, rest = 1, 0, b""
    with path.open("rb") as file:
        while block := file.read(chunk_bytes):
            data = rest + block
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if len(data) >= chunk_bytes:
                    chunk = _Chunk(data, line_no, offset)
                    raise MalformedRecordingError(
                        _describe_non_utf8(path, chunk)
                        or f"{path}: line {line_no} runs past {chunk_bytes} bytes without a "
                        "line end: not a PAMAP2 record"
                    )
                rest = data
                continue
            yield _Chunk(data[:cut], line_no, offset)
            line_no += data.count(b"\n", 0, cut)
            offset += cut
            rest = data[cut:]
    if rest:
        yield _Chunk(rest, line_no, offset)


def _parse_chunk(path: Path, chunk: _Chunk) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The chunk's records (DAT_COLUMNS) and its malformed lines (empty when none)."""
    values = _read_fast(chunk.data)
    if values is not None:
        return values, _NO_BAD_LINES
    return _read_lines(path, chunk)


def _read_fast(data: bytes) -> pl.DataFrame | None:
    """The multithreaded CSV reader; None when the lines need the line-by-line path
    (blank lines, runs of spaces, or a malformed line to locate)."""
    try:
        frame = pl.read_csv(
            data,
            separator=" ",
            has_header=False,
            # One trailing space reads as an empty 55th field; a real 55th value lands here too.
            schema={**DAT_DTYPES, TRAILING_FIELD: pl.String()},
            missing_columns="insert",
            quote_char=None,
        )
    except pl.exceptions.PolarsError:
        return None
    # A short line or an empty field parses as null; "NaN" parses as NaN, never null.
    values = frame.drop(TRAILING_FIELD)
    if (
        frame.height == 0
        or frame[TRAILING_FIELD].null_count() != frame.height
        or values.null_count().sum_horizontal().item() > 0
    ):
        return None
    return values


def _read_lines(path: Path, chunk: _Chunk) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split every line into tokens and cast them in one vectorised pass; this path defines
    what a valid file is and finds the line and field of anything malformed."""
    try:
        lines = pl.read_lines(
            chunk.data, name="line", row_index_name="line_no", row_index_offset=chunk.first_line
        )
    except pl.exceptions.ComputeError as exc:
        if "utf8" not in str(exc).lower():
            raise
        raise MalformedRecordingError(
            _describe_non_utf8(path, chunk) or f"{path}: not a text file (binary or not UTF-8)"
        ) from None
    lines = lines.with_columns(pl.col("line").str.strip_chars()).filter(
        pl.col("line") != ""  # blank lines hold no record
    )
    fields = [pl.col("tokens").list.get(i, null_on_oob=True) for i in range(len(DAT_COLUMNS))]
    parsed = (
        lines.select("line_no", pl.col("line").str.split(" ").alias("tokens"))
        .with_columns(
            pl.col("tokens").list.len().alias("n_fields"),
            *(
                f.cast(dtype, strict=False).alias(c)
                for f, (c, dtype) in zip(fields, DAT_DTYPES.items(), strict=True)
            ),
        )
        # A token that is present but did not cast is not a number.
        .with_columns(
            (f.is_not_null() & pl.col(c).is_null()).alias(f"bad_{i}")
            for i, (f, c) in enumerate(zip(fields, DAT_COLUMNS, strict=True))
        )
    )
    bad_flags = [f"bad_{i}" for i in range(len(DAT_COLUMNS))]
    bad = parsed.filter(
        (pl.col("n_fields") != len(DAT_COLUMNS)) | pl.any_horizontal(bad_flags)
    ).sort("line_no")
    return parsed.select(DAT_COLUMNS), bad


_NO_BAD_LINES = pl.DataFrame()


def _describe_non_utf8(path: Path, chunk: _Chunk) -> str | None:
    """Where a chunk stops being text (polars' "invalid utf8" names neither file nor line);
    None when it is text, a character cut at the chunk's end included."""
    data = chunk.data
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":
            return None
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        line_no = chunk.first_line + data.count(b"\n", 0, exc.start)
        field = len(re.split(rb"\s+", data[line_start : exc.start].lstrip())) - 1
        column = DAT_COLUMNS[min(field, len(DAT_COLUMNS) - 1)]
        return (
            f"{path}: not a text file (binary or not UTF-8)\n"
            f"  line {line_no}: field {field + 1} ({column}) holds byte "
            f"0x{data[exc.start]:02x} at file offset {chunk.offset + exc.start}"
        )
    return None


def _describe_bad_lines(path: Path, examples: list[dict[str, Any]], n_bad: int) -> str:
    """One message line per malformed line (the first few), naming line, field and token."""
    n_expected = len(DAT_COLUMNS)
    details = []
    for row in examples:
        line_no, n_fields, tokens = row["line_no"], row["n_fields"], row["tokens"]
        problems = []
        if n_fields < n_expected:
            problems.append(
                f"{n_fields} fields, expected {n_expected}: field {n_fields + 1} "
                f"({DAT_COLUMNS[n_fields]}) is missing"
            )
        elif n_fields > n_expected:
            problems.append(
                f"{n_fields} fields, expected {n_expected}: extra field {n_expected + 1} "
                f"{tokens[n_expected]!r}"
            )
        for i, column in enumerate(DAT_COLUMNS):
            if row[f"bad_{i}"]:
                kind = "an integer" if DAT_DTYPES[column] == pl.Int16 else "a number"
                what = "is empty" if tokens[i] == "" else f"token {tokens[i]!r} is not {kind}"
                problems.append(f"field {i + 1} ({column}) {what}")
                break  # the first bad token is enough to find the line
        details.append(f"  line {line_no}: " + "; ".join(problems))
    more = n_bad - len(examples)
    if more > 0:
        details.append(f"  ... and {more} more malformed lines")
    return f"{path}: {n_bad} malformed line(s)\n" + "\n".join(details)
