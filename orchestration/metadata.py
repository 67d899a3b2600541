"""Small helpers that turn step reports into readable asset metadata."""

import base64
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import dagster as dg

from ml_core.io import files_digest


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Rows of dicts as a markdown table (floats rounded) for the asset page."""
    if not rows:
        return "_none_"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [
            f"{v:.4g}" if isinstance(v, float) else str(v) for v in (row.get(c) for c in columns)
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
