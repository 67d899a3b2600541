"""Edits of raw `.dat` files that tests use to make a subject's data change."""

from __future__ import annotations

from pathlib import Path


def edit_labelled_row(dat: Path, field: int, change: float) -> None:
    """Add `change` to one field of a labelled row (activity 0 is dropped) with no NaN in it."""
    lines = dat.read_text().splitlines(keepends=True)
    row = next(
        i
        for i in range(len(lines) // 2, len(lines))
        if lines[i].split(" ")[1] != "0" and lines[i].split(" ")[field] != "NaN"
    )
    fields = lines[row].split(" ")
    fields[field] = f"{float(fields[field]) + change:.5f}"
    lines[row] = " ".join(fields)
    dat.write_text("".join(lines))
