"""Small helpers that turn step reports into readable asset metadata."""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import dagster as dg

from ml_core.io import files_digest

if TYPE_CHECKING:
    import pandera.polars as pa


def number(value: float | None, digits: int = 4) -> float | None:
    """A metric as the UI shows it: `digits` significant digits (0.7059499977415516 reads
    0.7059), still a number, so Dagster plots it across materializations; NaN reads None."""
    if value is None or math.isnan(value):
        return None
    return float(f"{value:.{digits}g}")


def _cell(value: Any) -> str | int | float | bool | None:
    if isinstance(value, float):
        # Four significant digits: readable, and the column still sorts as numbers.
        return number(value)
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _column_type(values: Sequence[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "bool"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "int"
    if present and all(isinstance(v, int | float) and not isinstance(v, bool) for v in present):
        return "float"
    return "string"


def table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None
) -> dg.TableMetadataValue:
    """Rows of dicts as typed table metadata: the UI shows every row and column, sortable, with
    each column's type (floats rounded to four significant digits)."""
    names = list(columns or (rows[0].keys() if rows else []))
    cells = [{c: _cell(row.get(c)) for c in names} for row in rows]
    schema = dg.TableSchema(
        columns=[dg.TableColumn(c, _column_type([r[c] for r in cells])) for c in names]
    )
    return dg.MetadataValue.table([dg.TableRecord(r) for r in cells], schema=schema)


def column_schema(schema: pa.DataFrameSchema) -> dg.TableSchema:
    """A pandera schema as the column schema the UI shows on a table asset: each column's
    dtype, whether it may hold nulls, and its checks as pandera describes them."""
    return dg.TableSchema(
        columns=[
            dg.TableColumn(
                name,
                str(column.dtype),
                constraints=dg.TableColumnConstraints(
                    nullable=bool(column.nullable),
                    unique=bool(column.unique),
                    other=[str(check.error or check.name) for check in column.checks],
                ),
            )
            for name, column in schema.columns.items()
        ]
    )


def raise_blocked(check: dg.AssetCheckResult, detail: str) -> NoReturn:
    """Fail the step after a blocking check failed: the check result (yielded before this) is
    recorded for the partition, no materialization is, and the run fails without retries (the
    same input would fail the same way)."""
    raise dg.Failure(
        description=f"blocking check {check.check_name!r} failed: {detail}", allow_retries=False
    )


def files_version(files: Iterable[str | Path], root: str | Path) -> dg.DataVersion:
    """A content hash of an asset's output files: rewriting the same output keeps the version,
    so nothing downstream turns stale."""
    return dg.DataVersion(files_digest((Path(f) for f in files), Path(root)))


def png_data_uri(path: str | Path) -> str:
    """A PNG inlined as a data URI, so the Dagster UI shows it as a markdown image."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def png_markdown(path: str | Path, title: str) -> dg.MarkdownMetadataValue:
    """A plot shown on the asset page at the size it was drawn (the PNG inlined)."""
    return dg.MetadataValue.md(f"![{title}]({png_data_uri(path)})")
