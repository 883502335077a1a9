"""Charts drawn on the server as inline SVG: no script, no image files.

This module only works out geometry (positions, lengths, labels); the templates
write the SVG. Each chart has a title and a description for screen readers, and
the page shows the same numbers in a table beside it. Nothing is told by colour
alone: suppressed cells are labelled in words, lines differ in dash pattern and
marker, and each line is labelled at its end.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
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


# --- bars -------------------------------------------------------------------------------
#
# Bars run across, each under its own label, so a chart is narrow enough for a phone
# (CHART_WIDTH, scaled down by its viewBox) and a long group name never squeezes the
# plot. A cell without a number (suppressed, or coded into a band) gets no bar but a
# dashed empty box with the word written beside it: marked, and never by colour alone.

#: The width of every bar and line chart, in the viewBox's units (pixels on a desktop).
CHART_WIDTH = 480
#: Left and right ends of the plot; the right margin holds the number written at a bar.
PLOT_LEFT, PLOT_RIGHT = 8, CHART_WIDTH - 72
#: Where a bar's first label sits below the ticks.
PLOT_TOP = 28
#: A cell without a number is drawn as an empty dashed box this wide.
PLACEHOLDER = 44


def nice_scale(low: float, high: float, count: int = 4) -> list[float]:
    """Round tick values covering ``low`` to ``high`` and always 0 (a bar starts there).
    Magnitudes below 1e-9 count as 0 (no released number is that small)."""
    low = min(low, 0.0) if abs(low) > 1e-9 else 0.0
    high = max(high, 0.0) if abs(high) > 1e-9 else 0.0
    if not (math.isfinite(low) and math.isfinite(high)) or high - low <= 0:
        return [0.0, 1.0]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    # Written to 12 significant digits: 0.1 * 3 is 0.3, not 0.30000000000000004.
    return [float(f"{k * step:.12g}") + 0.0 for k in range(first, last + 1)]


@dataclass(frozen=True)
class Scale:
    """Values from ``low`` to ``high`` onto the plot's x from PLOT_LEFT to PLOT_RIGHT."""

    low: float
    high: float

    @property
    def pixels_per_unit(self) -> float:
        return (PLOT_RIGHT - PLOT_LEFT) / ((self.high - self.low) or 1.0)

    def x(self, value: float) -> float:
        span = (self.high - self.low) or 1.0
        clipped = max(self.low, min(value, self.high))
        return round(PLOT_LEFT + (clipped - self.low) / span * (PLOT_RIGHT - PLOT_LEFT), 2)


def _extent(cells: Sequence[Mapping[str, Any]]) -> tuple[float, float]:
    """The smallest and largest value or interval end among ``cells``."""
    ends = [0.0]
    for cell in cells:
        if cell.get("value") is None or cell.get("suppressed"):
            continue
        ends.append(float(cell["value"]))
        ends.extend(float(v) for v in cell.get("ci95") or ())
    return min(ends), max(ends)


def chart_top(cells: Sequence[Mapping[str, Any]]) -> float:
    """The largest value or interval end among ``cells`` (0 when none is published)."""
    return _extent(cells[:MAX_BARS])[1]


def group_label(group: Mapping[str, Any], leave_out: Sequence[str] = ()) -> str:
    return " · ".join(str(v) for k, v in group.items() if k not in leave_out) or "all"


@dataclass(frozen=True)
class Bar:
    label: str  # the group (a grouped chart: the series)
    y: float  # the top of the bar
    x: float  # its left end
    length: float
    whisker: tuple[float, float] | None
    text: str  # the number, or why there is none ("suppressed", a coded band)
    text_x: float
    anchor: str  # of the text: "start", or "end" left of a negative bar
    hidden: bool  # no number: an empty dashed box and the word
    series: int = 0  # a grouped chart's series, for its style
    rolled: bool = False  # the cell stands for a larger group than asked (coarsened)


@dataclass(frozen=True)
class Heading:
    """A grouped chart's group name, above its bars."""

    text: str
    y: float


@dataclass(frozen=True)
class BarChart:
    """Bars across, one per cell (a grouped chart: one per series in each group), on one
    scale, with 95% interval whiskers."""

    width: int
    height: int
    zero: float  # x of the value 0
    pixels_per_unit: float  # the one scale of every bar
    plot_top: int
    bar_height: int
    bars: list[Bar]
    headings: list[Heading]
    ticks: list[Tick]
    legend: list[str]  # a grouped chart's series names, in style order
    labelled: bool  # each bar's label written above it (else the legend names them)
    title: str
    description: str
    left_out: int = 0


Number = Callable[[Any], str]


def _bar(
    cell: Mapping[str, Any] | None, *, label: str, y: float, scale: Scale, text: Number, series: int
) -> Bar:
    zero = scale.x(0.0)
    if cell is None or cell.get("suppressed") or cell.get("value") is None:
        if cell is None:
            note = "not published at this level"
        elif cell.get("suppressed"):
            note = "suppressed"
        else:
            note = str(cell.get("coded") or "no value")
        if zero + PLACEHOLDER + 90 <= CHART_WIDTH:
            return Bar(
                label,
                y,
                zero,
                PLACEHOLDER,
                None,
                note,
                zero + PLACEHOLDER + 6,
                "start",
                True,
                series,
            )
        # Zero at the right (every value negative): the box and its word to its left.
        box = zero - PLACEHOLDER
        return Bar(label, y, box, PLACEHOLDER, None, note, box - 6, "end", True, series)
    value = float(cell["value"])
    end = scale.x(value)
    ci = cell.get("ci95")
    whisker = (scale.x(float(ci[0])), scale.x(float(ci[1]))) if ci else None
    if value < 0:
        text_x, anchor = min(end, whisker[0] if whisker else end) - 6, "end"
    else:
        text_x, anchor = max(end, whisker[1] if whisker else end) + 6, "start"
    rolled = bool(cell.get("steps"))
    if rolled:  # said in words as well as by the bar's dashed outline
        label = f"{label} (rolled up)"
    return Bar(
        label,
        y,
        min(zero, end),
        abs(end - zero),
        whisker,
        text(value),
        text_x,
        anchor,
        False,
        series,
        rolled,
    )


def bar_chart(
    title: str,
    cells: Sequence[Mapping[str, Any]],
    *,
    top: float | None = None,
    low: float | None = None,
    text: Number = format_number,
) -> BarChart:
    """The cells of one released table as bars with their intervals; ``top`` and ``low``
    put several tables on one scale (the extent of them all)."""
    shown = list(cells[:MAX_BARS])
    least, most = _extent(shown)
    ticks_at = nice_scale(min(least, low or 0.0), max(most, top or 0.0))
    scale = Scale(ticks_at[0], ticks_at[-1])
    row, bar_height = 36, 14
    bars = [
        _bar(cell, label=_short(group_label(cell["group"]), 60), y=PLOT_TOP + i * row + 16,
             scale=scale, text=text, series=0)
        for i, cell in enumerate(shown)
    ]  # fmt: skip
    hidden = sum(1 for b in bars if b.hidden)
    rolled = sum(1 for b in bars if b.rolled)
    description = (
        f"{len(shown)} bars, one per cell, each under its group's name: the noisy value, with "
        f"a line across the bar for its 95% interval. {hidden} cell(s) without a number "
        "(suppressed, or given as a band) are drawn as an empty dashed box with the reason "
        f"written beside it; {rolled} cell(s) rolled up into a larger group say so after "
        "their name and have a dashed outline. The table below gives every number."
    )
    return BarChart(
        width=CHART_WIDTH,
        height=PLOT_TOP + len(shown) * row + 8,
        zero=scale.x(0.0),
        pixels_per_unit=scale.pixels_per_unit,
        plot_top=PLOT_TOP,
        bar_height=bar_height,
        bars=bars,
        headings=[],
        ticks=[Tick(scale.x(t), text(t)) for t in ticks_at],
        legend=[],
        labelled=True,
        title=title,
        description=description,
        left_out=max(0, len(cells) - len(shown)),
    )


def _grouped(
    title: str,
    groups: Sequence[tuple[str, Sequence[tuple[str, int, Mapping[str, Any] | None, str]]]],
    *,
    text: Number,
    legend: list[str],
    description: str,
    labelled: bool,
) -> BarChart:
    """The layout of a grouped chart: each group a heading and its bars, one scale. A
    bar is (label, style, cell, note added after its number)."""
    every = [cell for _, bars in groups for _, _, cell, _ in bars if cell is not None]
    least, most = _extent(every)
    ticks_at = nice_scale(least, most)
    scale = Scale(ticks_at[0], ticks_at[-1])
    bar_height, step, heading_room, gap = 12, 17, 18, 10
    drawn: list[Bar] = []
    headings: list[Heading] = []
    y = float(PLOT_TOP)
    for heading, bars in groups:
        at = y + 13
        y += heading_room
        rolled = False
        for label, style, cell, note in bars:
            if cell is None:  # the table has no cell for this group (it rolled up)
                continue
            if labelled:
                y += 14
            bar = _bar(cell, label=label, y=y, scale=scale, text=text, series=style)
            if note and not bar.hidden:
                bar = replace(bar, text=f"{bar.text} {note}")
            rolled = rolled or bar.rolled
            drawn.append(bar)
            y += step
        # Bars named by the legend: the group's heading says it was rolled up.
        suffix = " (rolled up)" if rolled and not labelled else ""
        headings.append(Heading(_short(heading, 60) + suffix, at))
        y += gap
    return BarChart(
        width=CHART_WIDTH,
        height=int(y) + 4,
        zero=scale.x(0.0),
        pixels_per_unit=scale.pixels_per_unit,
        plot_top=PLOT_TOP,
        bar_height=bar_height,
        bars=drawn,
        headings=headings,
        ticks=[Tick(scale.x(t), text(t)) for t in ticks_at],
        legend=legend,
        labelled=labelled,
        title=title,
        description=description,
    )


def _by_group(
    cells: Sequence[Mapping[str, Any]], order: list[str], leave_out: Sequence[str] = ()
) -> dict[str, Mapping[str, Any]]:
    """A table's cells by group label (the first cell of a label), noting new labels."""
    found: dict[str, Mapping[str, Any]] = {}
    for cell in cells[:MAX_BARS]:
        label = group_label(cell["group"], leave_out)
        found.setdefault(label, cell)
        if label not in order:
            order.append(label)
    return found


def grouped_bar_chart(
    title: str,
    series: Sequence[tuple[str, Sequence[Mapping[str, Any]]]],
    *,
    text: Number = format_number,
) -> BarChart:
    """Several tables over the same groups (the needs report's positions, unfilled
    positions, candidates and their gap, by licensure area) as one bar per table in each
    group, all on one scale. Groups are taken in the order they first appear; a table
    without a cell for a group gets a marked empty box."""
    order: list[str] = []
    tables = [_by_group(cells, order) for _, cells in series]
    groups = [
        (group, [(name, i, found.get(group), "") for i, ((name, _), found) in
                 enumerate(zip(series, tables, strict=True))])
        for group in order
    ]  # fmt: skip
    hidden = sum(1 for _, bars in groups for _, _, c, _ in bars if c and c.get("value") is None)
    names = "; ".join(name for name, _ in series)
    description = (
        f"{len(order)} groups, each with one bar per table ({names}), in that order and on "
        f"one scale, with a line across each bar for its 95% interval; a table with no "
        f"cell for a group (it rolled the group up into a larger one) has no bar there. "
        f"{hidden} bar(s) without a number (suppressed, or given as a band) are drawn as "
        "an empty dashed box with the reason written beside it. The tables below give "
        "every number."
    )
    return _grouped(
        title,
        groups,
        text=text,
        legend=[name for name, _ in series],
        description=description,
        labelled=False,
    )


def funnel_chart(
    title: str,
    stages: Sequence[tuple[str, Sequence[Mapping[str, Any]], Sequence[str]]],
    *,
    shares: Mapping[str, Mapping[str, Any]] | None = None,
    text: Number = format_number,
) -> BarChart:
    """A pipeline stage by stage (the diversity report: completers, then those hired), one
    bar per group at each stage on one scale, each stage's bar saying what share of the
    group's previous stage it is. A stage is (name, cells, dimensions to leave out of the
    group's name: the stage's own). ``shares``: each group's share of its previous stage
    as the report computed it (its conversion rows, by group name), written instead of
    a division of the drawn numbers."""
    order: list[str] = []
    tables = [_by_group(cells, order, leave_out) for _, cells, leave_out in stages]
    groups = []
    for index, (name, _, _) in enumerate(stages):
        bars = []
        for style, group in enumerate(order):
            cell = tables[index].get(group)
            before = tables[index - 1].get(group) if index else None
            note = ""
            given = (shares or {}).get(group) if index else None
            if given is not None and given.get("value") is not None:
                note = f"({float(given['value']) * 100:.0f}% of the stage before)"
            elif (
                cell is not None
                and before is not None
                and before.get("value")
                and cell.get("value") is not None
            ):
                share = float(cell["value"]) / float(before["value"])
                note = f"({share * 100:.0f}% of the stage before)"
            bars.append((group, style, cell, note))
        groups.append((name, bars))
    description = (
        f"{len(stages)} stages of the pipeline, in order ({'; '.join(s[0] for s in stages)}), "
        f"each with one bar per group ({'; '.join(order)}) on one scale; a bar says what "
        "share of the group's previous stage it is. A group a stage rolled up has no bar "
        "there; bars without a number (suppressed) are drawn as an empty dashed box with "
        "the reason written beside it. The tables below give every number."
    )
    return _grouped(title, groups, text=text, legend=[], description=description, labelled=True)


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


# --- lines over years -------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class Line:
    name: str
    segments: list[str]  # SVG polyline points; a line breaks where a point has no number
    points: list[Point]
    hidden: list[float]  # x of the points without a number, marked on the axis
    dash: str
    marker: str
    style: int


@dataclass(frozen=True)
class LineChart:
    """One line per group across ordered x values (school years, cohorts, years after
    hiring), on one y scale from 0."""

    width: int
    height: int
    plot_left: int
    plot_right: int
    plot_top: int
    plot_bottom: int
    x_ticks: list[Tick]
    y_ticks: list[Tick]
    lines: list[Line]
    x_name: str
    title: str
    description: str


#: The most lines one chart draws (each told apart by dash and marker as well as colour).
MAX_LINES = 8


def line_chart(
    title: str,
    lines: Sequence[tuple[str, Sequence[tuple[str, Mapping[str, Any] | None]]]],
    *,
    x_values: Sequence[str],
    x_name: str,
    text: Number = format_number,
    share: bool = False,
) -> LineChart | None:
    """Each line is (name, [(x value, cell)]); a cell without a number breaks the line
    and is marked on the x axis. ``share``: values are shares, the y axis runs to 100%.
    None when there is nothing to draw (no x value, or more than MAX_LINES lines)."""
    if not x_values or not lines or len(lines) > MAX_LINES:
        return None
    left, right, top, bottom = 52, CHART_WIDTH - 44, 16, 196  # room for the last x label
    published = [
        float(c["value"])
        for _, points in lines
        for _, c in points
        if c is not None and c.get("value") is not None and not c.get("suppressed")
    ]
    y_values = (
        [0.0, 0.25, 0.5, 0.75, 1.0] if share else nice_scale(0.0, max(published, default=0.0))
    )
    high = y_values[-1] or 1.0
    step = (right - left) / max(len(x_values) - 1, 1)

    def x_of(value: str) -> float:
        index = x_values.index(value)
        return round(left + (index * step if len(x_values) > 1 else (right - left) / 2), 2)

    def y_of(value: float) -> float:
        return round(bottom - max(0.0, min(value, high)) / high * (bottom - top), 2)

    def label(value: float) -> str:
        return f"{value * 100:.0f}%" if share else text(value)

    drawn = []
    hidden_count = 0
    for index, (name, points) in enumerate(lines):
        dash, marker = LINE_STYLES[index % len(LINE_STYLES)]
        segments: list[list[tuple[float, float]]] = [[]]
        marks, hidden = [], []
        for at, cell in sorted(points, key=lambda p: x_values.index(p[0])):
            if cell is None or cell.get("value") is None or cell.get("suppressed"):
                hidden.append(x_of(at))
                segments.append([])
                continue
            value = float(cell["value"])
            spot = (x_of(at), y_of(value))
            segments[-1].append(spot)
            marks.append(Point(spot[0], spot[1], text(value)))
        hidden_count += len(hidden)
        drawn.append(
            Line(
                name=_short(name, 60),
                segments=[" ".join(f"{px},{py}" for px, py in s) for s in segments if len(s) > 1],
                points=marks,
                hidden=hidden,
                dash=dash,
                marker=marker,
                style=index % len(LINE_STYLES),
            )
        )
    names = "; ".join(line.name for line in drawn)
    description = (
        f"{len(drawn)} line(s) ({names}) across {x_name}: "
        f"{', '.join(x_values)}. Each point is a noisy value. {hidden_count} point(s) "
        "without a number (suppressed, or given as a band) break their line and are "
        "marked with a cross on the axis. The table below gives every number."
    )
    return LineChart(
        width=CHART_WIDTH,
        height=bottom + 40,
        plot_left=left,
        plot_right=right,
        plot_top=top,
        plot_bottom=bottom,
        x_ticks=[Tick(x_of(v), _short(v, 14)) for v in x_values],
        y_ticks=[Tick(y_of(v), label(v)) for v in y_values],
        lines=drawn,
        x_name=x_name,
        title=title,
        description=description,
    )


# --- a joint table as a grid ------------------------------------------------------------

#: Shades of a heat map's squares, lightest first (classes shade-0 ... in gateway.css; the
#: page's Content-Security-Policy allows no inline style, so a shade is a class).
SHADES = 6


@dataclass(frozen=True)
class HeatCell:
    text: str  # the value, or why there is none
    shade: float  # 0 to 1: the value against the largest published one
    hidden: bool

    @property
    def level(self) -> int:
        """Which of the SHADES classes the square takes."""
        return min(SHADES - 1, int(self.shade * SHADES))


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


def heat_map(
    title: str,
    cells: Sequence[Mapping[str, Any]],
    *,
    names: Mapping[str, str] | None = None,
    text: Number = format_number,
) -> HeatMap | None:
    """The grid of a table whose last two dimensions are two raters' scores (None for
    a table that has no two such dimensions). A coarsened table's bands and scores
    are rows and columns in the order the table lists them; ``names`` label the two."""
    if not cells or len(cells[0]["group"]) < 2:
        return None
    dims = list(cells[0]["group"])
    first, second = dims[-2], dims[-1]
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
            grid[row][column] = HeatCell(text(value), round(max(shade, 0.0), 3), False)
    names = names or {}
    return HeatMap(title, names.get(first, first), names.get(second, second), rows, columns, grid)
