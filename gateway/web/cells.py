"""A release's cells as people read them: one row per cell, and the CSV download.

A suppressed cell says so in words, with the reason, never by colour alone; a cell
top- or bottom-coded says which band it is in. Numbers are shown as released, the
noisy value and its 95% interval, rounded as everywhere else
(gateway/release/formatting.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.release import export, formatting
from gateway.release.formatting import NumberFormat


@dataclass(frozen=True)
class CellRow:
    """One cell of a released table, ready to show."""

    group: tuple[str, ...]
    value: str
    interval: str
    status: str
    suppressed: bool
    coded: str | None
    share: str | None
    #: For a rolled-up cell: where it stands ("program area", "3-year window").
    level: str | None = None


def dimensions(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(cells[0]["group"]) if cells else []


def group_label(cell: Mapping[str, Any]) -> str:
    return " · ".join(str(v) for v in cell["group"].values()) or "all"


def suppression_reason(reason: str | None, threshold: int | None) -> str:
    """Why a cell is hidden, in a sentence fragment (decided on the noisy count)."""
    if reason == "primary":
        needed = f"{threshold} teachers" if threshold else "the publish threshold"
        return f"its noisy count did not reach {needed} (primary suppression)"
    if reason == "complementary":
        return "hidden so a small cell cannot be worked out from totals (complementary)"
    return reason or "hidden"


def _level(cell: Mapping[str, Any]) -> str | None:
    """The levels a rolled-up cell stands at, in words; None for a cell as asked."""
    if not cell.get("steps"):
        return None
    levels = [f"{name}: {at}" for name, at in (cell.get("level") or {}).items() if at != "as asked"]
    return "rolled up (" + "; ".join(levels) + ")"


def cell_rows(release: Mapping[str, Any], fmt: NumberFormat | None = None) -> list[CellRow]:
    fmt = fmt or formatting.for_release(release)
    cells: Sequence[Mapping[str, Any]] = release.get("cells") or []
    decisions = release.get("decisions") or {}
    threshold = decisions.get("publish_threshold")
    rows = []
    for cell in cells:
        ci = cell.get("ci95")
        interval = fmt.interval(ci[0], ci[1]) if ci else ""
        share = cell.get("share")
        coded = cell.get("coded")
        if cell.get("suppressed"):
            status = "Suppressed: " + suppression_reason(cell.get("reason"), threshold)
        elif coded:
            status = f"Coded: the share is {coded}; no number is given"
        else:
            level = _level(cell)
            status = f"Released, {level}" if level else "Released"
        rows.append(
            CellRow(
                group=tuple(str(v) for v in cell["group"].values()),
                value=fmt.text(cell.get("value")),
                interval=interval,
                status=status,
                suppressed=bool(cell.get("suppressed")),
                coded=coded,
                share=None if share is None else formatting.percent(share),
                level=_level(cell),
            )
        )
    return rows


def cells_csv(release: Mapping[str, Any], registry: Any = None) -> str:
    """One CSV row per cell (the columns of ``gateway release --csv``)."""
    return export.cells_csv(release, registry=registry)
