"""Small helpers that turn step reports into readable asset metadata."""

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


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


def png_data_uri(path: str | Path) -> str:
    """A PNG inlined as a data URI, so the Dagster UI shows it as a markdown image."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()
