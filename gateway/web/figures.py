"""Which chart shows what in a report's results.

Each released table gets the chart that fits its shape: a joint table (two raters'
scores) a grid; a table over a year-like dimension (school year, cohort) lines across
the years; any other bars. A report may also get an overview above its tables:

- tables counting or summing the same kind of thing by the same groups (the needs
  report's positions, unfilled positions and candidates by licensure area), with their
  gap, as grouped bars on one scale;
- retention after different numbers of years (1, 3, 5) as curves, one per group;
- a conversion from one stage to the next (completers to hired) as a funnel.

The charts repeat the tables; every number stays in the table under its chart.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from gateway.agreements.loader import Registry
from gateway.agreements.models import Agreement
from gateway.release import formatting
from gateway.release.reports import definition
from gateway.web.charts import (
    BarChart,
    HeatMap,
    LineChart,
    bar_chart,
    chart_top,
    funnel_chart,
    grouped_bar_chart,
    heat_map,
    line_chart,
)
from gateway.web.labels import field_labels

Number = Callable[[Any], str]


@dataclass(frozen=True)
class Figure:
    kind: Literal["bars", "grid", "lines"]
    chart: BarChart | LineChart | HeatMap
    caption: str


def _kind(release: Mapping[str, Any]) -> str:
    return str(((release.get("query") or {}).get("measure") or {}).get("kind") or "")


def _year_key(label: str) -> tuple[int, str]:
    """School years and cohorts in order: by the first year a label names."""
    found = re.search(r"\d{4}", label)
    return (int(found.group()) if found else 10**6, label)


def year_dimension(cells: Sequence[Mapping[str, Any]]) -> str | None:
    """The table's year-like dimension (a name ending in "year", values naming years),
    when it has at least two values; else None."""
    if not cells:
        return None
    for name in cells[0]["group"]:
        if not str(name).split(".")[-1].endswith("year"):
            continue
        values = {str(c["group"][name]) for c in cells}
        if len(values) >= 2 and all(re.search(r"\d{4}", v) for v in values):
            return str(name)
    return None


#: Measures whose values are shares (drawn on a 0 to 100% axis).
SHARE_KINDS = formatting.SHARE_KINDS


def trend_chart(
    title: str,
    cells: Sequence[Mapping[str, Any]],
    *,
    year: str,
    labels: Mapping[str, str],
    share: bool = False,
    text: Number = formatting.COUNT.text,
) -> LineChart | None:
    """A table over a year-like dimension as one line per combination of its other
    dimensions (None when there would be too many lines to read)."""
    x_values = sorted({str(c["group"][year]) for c in cells}, key=_year_key)
    lines: dict[str, list[tuple[str, Mapping[str, Any] | None]]] = {}
    for cell in cells:
        rest = [str(v) for k, v in cell["group"].items() if k != year]
        lines.setdefault(" · ".join(rest) or "all", []).append((str(cell["group"][year]), cell))
    return line_chart(
        title,
        list(lines.items()),
        x_values=x_values,
        x_name=labels.get(year, year).lower(),
        text=text,
        share=share,
    )


def table_figure(
    title: str,
    release: Mapping[str, Any],
    *,
    labels: Mapping[str, str],
    text: Number = formatting.COUNT.text,
    top: float | None = None,
) -> Figure:
    """The chart of one released table."""
    cells = release.get("cells") or []
    kind = _kind(release)
    if kind == "joint":
        grid = heat_map(title, cells, names=labels, text=text)
        if grid is not None:
            return Figure(
                "grid",
                grid,
                f"{title}: each square gives its noisy count, and its shade repeats it; "
                "suppressed squares are hatched and say so.",
            )
    year = year_dimension(cells)
    if year is not None:
        lines = trend_chart(
            title, cells, year=year, labels=labels, share=kind in SHARE_KINDS, text=text
        )
        if lines is not None:
            return Figure(
                "lines",
                lines,
                f"{title}: one line per group across {lines.x_name}; a cross on the axis "
                "marks a point without a number (suppressed, or given as a band).",
            )
    if kind in SHARE_KINDS:  # shares on a 0 to 100% scale
        top = 1.0
    chart = bar_chart(title, cells, top=top, text=text)
    caption = (
        f"{title}: bars are noisy values, lines across them 95% intervals; a dashed empty "
        "box marks a cell without a number and says why."
    )
    if chart.left_out:
        caption += f" The chart shows the first {len(chart.bars)} cells; the table has all."
    return Figure("bars", chart, caption)


# --- the overview -------------------------------------------------------------------------


def _short_title(title: str) -> str:
    """A table's title without its grouping ("Positions posted, by licensure area" is
    "Positions posted")."""
    return re.split(r",? by ", title, maxsplit=1)[0].strip() or title


def _released(result: Mapping[str, Any]) -> list[tuple[int, Mapping[str, Any]]]:
    return [(i, t) for i, t in enumerate(result["tables"]) if "release" in t]


def grouped_overview(
    result: Mapping[str, Any],
    derived_specs: Sequence[Any],
    *,
    texts: Sequence[Number] | None = None,
) -> tuple[Figure, set[int]] | None:
    """Tables that count or sum by the same groups, with a gap between two of them, as
    grouped bars on one scale; and which tables it draws. None without two such tables."""
    # Same measure kind (counts beside counts, sums beside sums) and same groups.
    keys: dict[tuple[str, ...], list[int]] = {}
    for index, table in _released(result):
        release = table["release"]
        cells = release.get("cells") or []
        kind = _kind(release)
        if kind in ("count", "sum") and cells and year_dimension(cells) is None:
            keys.setdefault((kind, *cells[0]["group"]), []).append(index)
    best = max(keys.values(), key=len, default=[])
    if len(best) < 2:
        return None
    tables = result["tables"]
    series: list[tuple[str, Sequence[Mapping[str, Any]]]] = [
        (_short_title(tables[i]["title"]), tables[i]["release"].get("cells") or []) for i in best
    ]
    gaps = 0
    for spec, figure in zip(derived_specs, result.get("derived") or [], strict=False):
        if getattr(spec, "kind", None) == "gap" and set(spec.tables) <= set(best):
            rows = [{**row, "suppressed": False} for row in figure.get("rows") or []]
            series.append((_short_title(figure["title"]), rows))
            gaps += 1
    title = "; ".join(name for name, _ in series)
    text = texts[best[0]] if texts else formatting.COUNT.text
    chart = grouped_bar_chart(title, series, text=text)
    caption = (
        "The tables below side by side, one bar for each in every group, all on one scale"
        + (
            " (a gap is the first table's number minus the second's: below zero, the "
            "second is the larger)"
            if gaps
            else ""
        )
        + "; a dashed empty box marks a bar without a number and says why."
    )
    return Figure("bars", chart, caption), set(best)


def retention_overview(
    result: Mapping[str, Any], queries: Sequence[Mapping[str, Any]]
) -> tuple[Figure, set[int]] | None:
    """Retention after different numbers of years as curves, one per group, and which
    tables it draws. ``queries`` are the report's table queries, in order: a table left
    out (its window too short) still names its year, without points."""
    found: list[tuple[int, int]] = []  # (years after, table index)
    for index, query in enumerate(queries):
        measure = query.get("measure") or {}
        if measure.get("kind") == "retention" and measure.get("years_after") is not None:
            found.append((int(measure["years_after"]), index))
    tables = result["tables"]
    drawn = {i for _, i in found if "release" in tables[i]}
    if len(found) < 2 or len(drawn) < 2:
        return None
    found.sort()
    x_values = [f"{n} year{'' if n == 1 else 's'}" for n, _ in found]
    lines: dict[str, list[tuple[str, Mapping[str, Any] | None]]] = {}
    for (_, index), x in zip(found, x_values, strict=True):
        for cell in (tables[index].get("release") or {}).get("cells") or []:
            name = " · ".join(str(v) for v in cell["group"].values()) or "all"
            lines.setdefault(name, []).append((x, cell))
    chart = line_chart(
        "Retention: share still employed, by years after the first year",
        list(lines.items()),
        x_values=x_values,
        x_name="years after the first year",
        text=formatting.SHARE.text,
        share=True,
    )
    if chart is None:
        return None
    caption = (
        "The share of each group still employed some years after their first year (the "
        "tables below, drawn together); a cross on the axis marks a point without a "
        "number, and a year without any point was not run."
    )
    return Figure("lines", chart, caption), drawn


def funnel_overview(
    result: Mapping[str, Any],
    derived_specs: Sequence[Any],
    *,
    value_labels: Mapping[str, Mapping[str, str]] | None = None,
    text: Number = formatting.COUNT.text,
) -> Figure | None:
    """A conversion between two tables (completers, then those hired) as a funnel."""
    tables = result["tables"]
    for spec, figure in zip(derived_specs, result.get("derived") or [], strict=False):
        if getattr(spec, "kind", None) != "conversion":
            continue
        first, second = (tables[i] for i in spec.tables)
        if "release" not in first or "release" not in second:
            continue
        where = dict(spec.where)
        kept = [
            c
            for c in first["release"].get("cells") or []
            if all(str(c["group"].get(k)) == str(v) for k, v in where.items())
        ]
        names = value_labels or {}
        first_name = "; ".join(
            names.get(k, {}).get(str(v), f"{_short_title(first['title'])}: {v}")
            for k, v in where.items()
        ) or _short_title(first["title"])
        shares = {
            " · ".join(str(v) for v in row["group"].values()): row
            for row in figure.get("rows") or []
        }
        chart = funnel_chart(
            _short_title(figure["title"]),
            [
                (first_name, kept, list(where)),
                (_short_title(second["title"]), second["release"].get("cells") or [], []),
            ],
            text=text,
            shares=shares,
        )
        caption = (
            "The pipeline stage by stage, one bar per group at each stage on one scale; each "
            "bar of a later stage gives the share of the group's previous stage (as the "
            "table of shares below computes it)."
        )
        return Figure("bars", chart, caption)
    return None


# --- a report's charts, for its page --------------------------------------------------------


@dataclass(frozen=True)
class ReportCharts:
    """The charts of a report's results: an overview above the tables, then one chart per
    table (None for a table drawn in the overview, or left out), and each table's field
    labels (from the schemas' descriptions)."""

    overview: list[Figure]
    tables: list[Figure | None]
    labels: list[dict[str, str]]

    def headers(self, index: int, dimensions: Sequence[str]) -> list[str]:
        """A table's column headers: its fields' labels."""
        return [self.labels[index].get(name, name) for name in dimensions]


def shared_tops(result: Mapping[str, Any]) -> list[float | None]:
    """One scale for the bars of a report's tables that count the same kind of thing by
    the same dimensions: each such table's chart reaches the largest value among them."""
    keys: list[tuple[bool, tuple[str, ...]]] = []
    for table in result["tables"]:
        release = table.get("release") or {}
        cells = release.get("cells") or []
        keys.append((_kind(release) in ("count", "sum"), tuple(cells[0]["group"]) if cells else ()))
    tops: list[float | None] = []
    for key in keys:
        peers = [t for k, t in zip(keys, result["tables"], strict=True) if k == key]
        if key[0] and len(peers) > 1:
            tops.append(max(chart_top(t["release"].get("cells") or []) for t in peers))
        else:
            tops.append(None)
    return tops


def _value_labels(agreement: Agreement, registry: Registry) -> dict[str, dict[str, str]]:
    """The labels of coded values (``completed``: "Completed the program"), by column."""
    found: dict[str, dict[str, str]] = {}
    for stored in agreement.datasets:
        schema = registry.schemas.get(stored.schema_name)
        for name, column in schema.columns.items() if schema else ():
            for code in column.codes or ():
                if getattr(code, "label", None):
                    found.setdefault(name, {}).setdefault(str(code.value), str(code.label))
    return found


def report_charts(
    result: Mapping[str, Any],
    registry: Registry,
    *,
    texts: Sequence[Number] | None = None,
) -> ReportCharts:
    """Every chart of a report's results (``result`` as run_report returns it).
    ``texts``: how each table's numbers are written (by default as
    gateway/release/formatting.py formats each table's)."""
    agreement = registry.agreement(str(result["agreement"]["id"]))
    spec = next(r for r in agreement.reports if r.name == result["report"])
    report = definition(spec)
    queries = [t.query for t in report.tables]
    tables = result["tables"]
    if texts is None:
        texts = [f.text for f in formatting.for_report_tables(result, registry)]
    labels = [
        field_labels(t["release"], agreement=agreement, registry=registry) if "release" in t else {}
        for t in tables
    ]
    overview: list[Figure] = []
    drawn: set[int] = set()
    grouped = grouped_overview(result, report.derived, texts=texts)
    if grouped is not None:
        overview.append(grouped[0])
        drawn |= grouped[1]
    curves = retention_overview(result, queries)
    if curves is not None:
        overview.append(curves[0])
        drawn |= curves[1]
    funnel = funnel_overview(
        result, report.derived, value_labels=_value_labels(agreement, registry)
    )
    if funnel is not None:
        overview.append(funnel)
    per_table: list[Figure | None] = []
    for index, (table, top) in enumerate(zip(tables, shared_tops(result), strict=True)):
        if "release" not in table or index in drawn:
            per_table.append(None)
            continue
        per_table.append(
            table_figure(
                table["title"], table["release"], labels=labels[index], text=texts[index], top=top
            )
        )
    return ReportCharts(overview=overview, tables=per_table, labels=labels)
