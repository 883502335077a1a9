"""A released table as CSV: the one writer behind ``gateway release --csv`` and the web
pages' download.

One row per cell: the dimensions (one column each, in the asked order); for a
coarsened table each coarsening dimension's level (``<dimension>_level``) and the
``steps`` above the table as asked; then ``value``, ``ci95_low``, ``ci95_high``,
``suppressed``, ``reason``, and ``share``, ``coded`` and ``note`` when any cell has
them. Text
that a spreadsheet would run as a formula is written with a leading apostrophe.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

# Spreadsheets run a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe(value: Any) -> Any:
    """``value``, neutralised with a leading apostrophe if a spreadsheet would run it."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def cells_csv(release: Mapping[str, Any]) -> str:
    cells: Sequence[Mapping[str, Any]] = release.get("cells") or []
    dimensions = list(cells[0]["group"]) if cells else []
    extra = [c for c in ("share", "coded", "note") if any(c in cell for cell in cells)]
    levels = [d for d in dimensions if any(d in (c.get("level") or {}) for c in cells)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            *dimensions,
            *(f"{d}_level" for d in levels),
            *(["steps"] if levels else []),
            "value",
            "ci95_low",
            "ci95_high",
            "suppressed",
            "reason",
            *extra,
        ]
    )
    for cell in cells:
        ci = cell.get("ci95") or [None, None]
        row = [
            *(cell["group"][d] for d in dimensions),
            *((cell.get("level") or {}).get(d, "") for d in levels),
            *([cell.get("steps", 0)] if levels else []),
            cell.get("value"),
            ci[0],
            ci[1],
            bool(cell.get("suppressed")),
            cell.get("reason") or "",
            *(cell.get(c) for c in extra),
        ]
        writer.writerow([safe(v) for v in row])
    return buffer.getvalue()
