"""Charts drawn on the server as inline SVG: no script, no image files.

This module only works out geometry (positions, lengths, labels); the templates
write the SVG. Each chart has a title and a description for screen readers, and
the page shows the same numbers in a table beside it. Nothing is told by colour
alone: suppressed cells are labelled in words, lines differ in dash pattern and
marker, and each line is labelled at its end.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from gateway.web.rendering import format_number

#: The most bars one chart draws; the table always has every cell.
MAX_BARS = 120


@dataclass(frozen=True)
class Tick:
    position: float
    label: str


def nice_ticks(top: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``top``."""
    if top <= 0 or not math.isfinite(top):
        return [0.0, 1.0]
    raw = top / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    ticks = []
    value = 0.0
    while value < top + step / 2:
        ticks.append(round(value, 10))
        if value >= top:
            break
        value += step
    return ticks


def _short(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(frozen=True)
class Bar:
    label: str
    y: float
    length: float
    whisker: tuple[float, float] | None
    text: str
    text_x: float
    hidden: bool


@dataclass(frozen=True)
class BarChart:
    """Horizontal bars, one per cell, with 95% interval whiskers."""

    width: int
    height: int
    plot_left: int
    plot_width: int
    plot_top: int
    row_height: int
    bars: list[Bar]
    ticks: list[Tick]
    title: str
    description: str
    left_out: int


def chart_top(cells: Sequence[Mapping[str, Any]]) -> float:
    """The largest value or interval end among ``cells`` (0 when none is published)."""
    return max(
        (
            max(float(c["value"]), float((c.get("ci95") or [0, c["value"]])[1]))
            for c in cells[:MAX_BARS]
            if c.get("value") is not None
        ),
        default=0.0,
    )


def bar_chart(
    title: str, cells: Sequence[Mapping[str, Any]], *, top: float | None = None
) -> BarChart:
    """The cells of one released table as bars with their intervals; ``top`` puts
    several tables of one report on one scale (their largest value)."""
    shown = list(cells[:MAX_BARS])
    ticks_at = nice_ticks(max(chart_top(shown), top or 0.0))
    top = ticks_at[-1] or 1.0
    plot_left, plot_width, plot_top, row = 230, 380, 28, 24
    scale = plot_width / top

    def x(value: float) -> float:
        return round(plot_left + max(0.0, min(value, top)) * scale, 2)

    bars = []
    hidden = 0
    for index, cell in enumerate(shown):
        y = plot_top + index * row
        label = _short(" · ".join(str(v) for v in cell["group"].values()) or "all")
        value = cell.get("value")
        ci = cell.get("ci95")
        if cell.get("suppressed"):
            hidden += 1
            bars.append(Bar(label, y, 0.0, None, "suppressed", plot_left + 6, True))
        elif value is None:
            note = str(cell.get("coded") or "no value")
            bars.append(Bar(label, y, 0.0, None, note, plot_left + 6, True))
        else:
            end = x(float(value))
            whisker = (x(float(ci[0])), x(float(ci[1]))) if ci else None
            text_x = max(end, whisker[1] if whisker else end) + 6
            bars.append(
                Bar(label, y, end - plot_left, whisker, format_number(value), text_x, False)
            )
    height = plot_top + len(shown) * row + 12
    description = (
        f"{len(shown)} bars, one per cell: the noisy value, with a line across each bar "
        f"for its 95% interval. {hidden} cell(s) suppressed, labelled 'suppressed' and "
        "drawn without a bar. The table below gives every number."
    )
    return BarChart(
        width=plot_left + plot_width + 90,
        height=height,
        plot_left=plot_left,
        plot_width=plot_width,
        plot_top=plot_top,
        row_height=row,
        bars=bars,
        ticks=[Tick(x(t), format_number(t)) for t in ticks_at],
        title=title,
        description=description,
        left_out=max(0, len(cells) - len(shown)),
    )


# --- the privacy budget over time -------------------------------------------------------

#: Dash patterns and markers told apart without colour, in turn for each party.
LINE_STYLES = (("", "circle"), ("8 4", "square"), ("2 3", "diamond"), ("12 3 3 3", "triangle"))


@dataclass(frozen=True)
class Step:
    points: str  # an SVG polyline's points
    markers: list[tuple[float, float]]
    party: str
    dash: str
    marker: str
    label_y: float
    spent: str


@dataclass(frozen=True)
class Level:
    y: float
    label: str
    label_y: float = 0.0


@dataclass(frozen=True)
class StepChart:
    width: int
    height: int
    plot_left: int
    plot_top: int
    plot_width: int
    plot_height: int
    steps: list[Step]
    levels: list[Level]
    y_ticks: list[Tick]
    x_ticks: list[Tick]
    title: str
    description: str


#: The least vertical distance between two labels at the right of a chart, in pixels.
LABEL_GAP = 14


def _spread_labels(steps: list[Step], levels: list[Level]) -> tuple[list[Step], list[Level]]:
    """Move the labels at the right edge apart so none overlaps another (lowest first,
    each pushed up as needed); the lines stay where they are."""
    placed: list[tuple[float, str, int]] = sorted(
        [(s.label_y, "step", i) for i, s in enumerate(steps)]
        + [(lv.label_y, "level", i) for i, lv in enumerate(levels)],
        reverse=True,
    )
    moved: dict[tuple[str, int], float] = {}
    floor: float | None = None
    for wanted, kind, index in placed:
        at = wanted if floor is None else min(wanted, floor - LABEL_GAP)
        moved[(kind, index)] = at
        floor = at
    return (
        [replace(s, label_y=moved[("step", i)]) for i, s in enumerate(steps)],
        [replace(lv, label_y=moved[("level", i)]) for i, lv in enumerate(levels)],
    )


def _time_label(moment: datetime, span: timedelta) -> str:
    if span < timedelta(days=1):
        return moment.strftime("%H:%M:%S")
    return moment.strftime("%Y-%m-%d")


def budget_chart(
    title: str,
    history: Sequence[Mapping[str, Any]],
    *,
    total: float,
    share: float | None,
    now: datetime,
) -> StepChart | None:
    """Each party's running epsilon as a step line, against the agreement's total (and
    each recipient's share); None when nothing was reserved yet."""
    if not history:
        return None
    times = [datetime.fromisoformat(str(e["at"])) for e in history]
    start = min(times)
    if start.tzinfo is None and now.tzinfo is not None:
        now = now.replace(tzinfo=None)
    end = max(max(times), now)
    span = max(end - start, timedelta(seconds=1))
    running: dict[str, list[tuple[datetime, float]]] = {}
    for moment, entry in zip(times, history, strict=True):
        running.setdefault(str(entry["party"]), []).append(
            (moment, float(Decimal(str(entry["party_spent"]))))
        )
    highest = max([total, *(p[-1][1] for p in running.values())])
    y_values = nice_ticks(highest, 4)
    top = y_values[-1] or 1.0
    left, plot_top, width, height = 70, 20, 520, 220

    def x(moment: datetime) -> float:
        return round(left + (moment - start) / span * width, 2)

    def y(value: float) -> float:
        return round(plot_top + height - value / top * height, 2)

    steps = []
    for index, (party, points) in enumerate(sorted(running.items())):
        dash, marker = LINE_STYLES[index % len(LINE_STYLES)]
        path = [(x(start), y(0.0))]
        previous = 0.0
        for moment, value in points:
            path += [(x(moment), y(previous)), (x(moment), y(value))]
            previous = value
        path.append((x(end), y(previous)))
        steps.append(
            Step(
                points=" ".join(f"{px},{py}" for px, py in path),
                markers=[(x(m), y(v)) for m, v in points],
                party=party,
                dash=dash,
                marker=marker,
                label_y=y(previous) + 4,
                spent=format_number(previous),
            )
        )
    levels = [Level(y(total), f"agreement total ε {format_number(total)}", y(total) + 4)]
    if share is not None and share != total:
        label = f"your spending limit ε {format_number(share)}"
        levels.append(Level(y(share), label, y(share) + 4))
    steps, levels = _spread_labels(steps, levels)
    middle = start + span / 2
    x_ticks = [Tick(x(t), _time_label(t, span)) for t in (start, middle, start + span)]
    parties = ", ".join(f"{s.party} has spent ε {s.spent}" for s in steps)
    description = (
        f"Epsilon spent over time by each recipient party, as steps at each reservation "
        f"({len(history)} in all), against the agreement's total of ε "
        f"{format_number(total)}. {parties}. The table below lists every reservation."
    )
    return StepChart(
        width=left + width + 190,
        height=plot_top + height + 40,
        plot_left=left,
        plot_top=plot_top,
        plot_width=width,
        plot_height=height,
        steps=steps,
        levels=levels,
        y_ticks=[Tick(y(v), format_number(v)) for v in y_values],
        x_ticks=x_ticks,
        title=title,
        description=description,
    )


@dataclass(frozen=True)
class HeatCell:
    text: str  # the value, or why there is none
    shade: float  # 0 to 1: the value against the largest published one
    hidden: bool


@dataclass(frozen=True)
class HeatMap:
    """A joint table (teachers by the pair of scores two raters gave) as a grid: one row
    per first score, one column per second; each cell's number is written in it, and
    its shade repeats the number (never the only way to read it)."""

    title: str
    row_name: str
    column_name: str
    rows: list[str]
    columns: list[str]
    grid: list[list[HeatCell | None]]  # None: no cell of the table there


def heat_map(title: str, cells: Sequence[Mapping[str, Any]]) -> HeatMap | None:
    """The grid of a table whose last two dimensions are two raters' scores (None for
    a table that has no two such dimensions). A coarsened table's bands and scores
    are rows and columns in the order the table lists them."""
    if not cells or len(cells[0]["group"]) < 2:
        return None
    names = list(cells[0]["group"])
    first, second = names[-2], names[-1]
    rows: list[str] = []
    columns: list[str] = []
    for cell in cells:
        for name, seen in ((first, rows), (second, columns)):
            label = str(cell["group"][name])
            if label not in seen:
                seen.append(label)
    top = max(
        (float(c["value"]) for c in cells if not c.get("suppressed") and c.get("value")),
        default=0.0,
    )
    grid: list[list[HeatCell | None]] = [[None] * len(columns) for _ in rows]
    for cell in cells:
        row = rows.index(str(cell["group"][first]))
        column = columns.index(str(cell["group"][second]))
        if cell.get("suppressed"):
            grid[row][column] = HeatCell("suppressed", 0.0, True)
        elif cell.get("value") is None:
            grid[row][column] = HeatCell(str(cell.get("coded") or "-"), 0.0, False)
        else:
            value = float(cell["value"])
            shade = value / top if top > 0 else 0.0
            grid[row][column] = HeatCell(format_number(value), round(shade, 3), False)
    return HeatMap(title, first, second, rows, columns, grid)
