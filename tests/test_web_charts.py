"""The charts' geometry (gateway/web/charts.py), which chart a report's table gets
(gateway/web/figures.py) and the fields' labels (gateway/web/labels.py).

The invariants: every bar stays inside the plot; bars of one chart share one scale (a
bar's length is its value's distance from 0, in the same units for every bar); a cell
without a number is never drawn as a bar but as a marked box that says why; a line
breaks where a point has no number. The browser checks of the pages are in
tests/test_web_screens.py.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.agreements.loader import load_registry
from gateway.release import formatting
from gateway.web import charts
from gateway.web.charts import (
    PLOT_LEFT,
    PLOT_RIGHT,
    bar_chart,
    funnel_chart,
    grouped_bar_chart,
    heat_map,
    line_chart,
    nice_scale,
)
from gateway.web.figures import report_charts, retention_overview, table_figure, year_dimension
from gateway.web.labels import column_label, field_labels
from gateway.web.rendering import _environment
from tests.conftest import AGREEMENTS_DIR, POLICIES_DIR

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


def cell(
    group: str, value: float | None, *, suppressed: bool = False, ci: float = 0.0
) -> dict[str, Any]:
    return {
        "group": {"area": group},
        "value": value,
        "ci95": None if value is None else [value - ci, value + ci],
        "suppressed": suppressed,
    }


@st.composite
def cells(draw: st.DrawFn) -> list[dict[str, Any]]:
    made = []
    for index in range(draw(st.integers(min_value=1, max_value=12))):
        hidden = draw(st.booleans())
        value = None if hidden else draw(finite)
        made.append(cell(f"g{index}", value, suppressed=hidden, ci=draw(st.floats(0, 1e3))))
    return made


# --- the scale ------------------------------------------------------------------------------


@given(finite, finite)
def test_the_ticks_cover_the_values_and_zero(a: float, b: float) -> None:
    low, high = min(a, b), max(a, b)
    ticks = nice_scale(low, high)
    assert ticks == sorted(ticks) and len(set(ticks)) == len(ticks)
    # Covered up to a part in a billion of the scale (no released number is finer).
    slack = 1e-9 * max(1.0, abs(low), abs(high))
    assert ticks[0] <= min(low, 0.0) + slack and ticks[-1] >= max(high, 0.0) - slack
    assert 0.0 in ticks
    assert len(ticks) <= 8


# --- bars -----------------------------------------------------------------------------------


@given(cells())
def test_bars_stay_in_the_plot_on_one_scale_and_mark_every_cell_without_a_number(
    table: list[dict[str, Any]],
) -> None:
    chart = bar_chart("t", table)
    assert len(chart.bars) == len(table)
    zero = chart.zero
    for bar, source in zip(chart.bars, table, strict=True):
        assert bar.x >= PLOT_LEFT - 0.01 and bar.x + bar.length <= PLOT_RIGHT + 0.01
        if source["value"] is None:
            assert bar.hidden and bar.text == "suppressed"
            assert bar.length == charts.PLACEHOLDER and zero in (bar.x, bar.x + bar.length)
            continue
        assert not bar.hidden
        # One scale: a bar is as long as its value's distance from 0, in the same pixels
        # per unit for every bar (positions are rounded to 0.01 px).
        assert bar.length == pytest.approx(abs(source["value"]) * chart.pixels_per_unit, abs=0.03)
        # A negative value's bar ends at zero from the left; a positive one starts there.
        if source["value"] < 0:
            assert bar.x + bar.length == pytest.approx(zero, abs=0.02)
        else:
            assert bar.x == pytest.approx(zero, abs=0.02)
    assert str(sum(1 for c in table if c["value"] is None)) in chart.description


def test_a_coded_cell_says_its_band_and_gets_no_bar() -> None:
    chart = bar_chart(
        "t", [cell("a", 10.0), {"group": {"area": "b"}, "value": None, "coded": ">95%"}]
    )
    assert [b.hidden for b in chart.bars] == [False, True]
    assert chart.bars[1].text == ">95%"


def test_a_rolled_up_cell_says_so_beside_its_name() -> None:
    rolled = {**cell("secondary: SECELA, SECSCI", 30.0), "steps": 1}
    chart = bar_chart("t", [cell("ELEM", 10.0), rolled])
    assert [b.label for b in chart.bars] == ["ELEM", "secondary: SECELA, SECSCI (rolled up)"]
    assert [b.rolled for b in chart.bars] == [False, True]
    assert "1 cell(s) rolled up" in chart.description
    grouped = grouped_bar_chart("g", [("posted", [rolled]), ("unfilled", [cell("ELEM", 1.0)])])
    assert [h.text for h in grouped.headings] == [
        "secondary: SECELA, SECSCI (rolled up)",
        "ELEM",
    ]
    macros: Any = _environment().get_template("_charts.html").module
    assert 'class="value rolled"' in str(macros.bar_chart(chart, "c"))


def test_a_shared_top_puts_two_tables_on_one_scale() -> None:
    small = bar_chart("small", [cell("a", 10.0)], top=100.0)
    large = bar_chart("large", [cell("a", 100.0)])
    assert small.bars[0].length * 10 == pytest.approx(large.bars[0].length, rel=1e-3)


def test_grouped_bars_share_one_scale_and_mark_a_suppressed_cell() -> None:
    posted = [cell("ECE", 40.0), cell("SPED", 20.0)]
    unfilled = [cell("ECE", 10.0), cell("SPED", None, suppressed=True)]
    gap = [cell("ECE", -20.0), cell("ELEM", 5.0)]
    chart = grouped_bar_chart("needs", [("posted", posted), ("unfilled", unfilled), ("gap", gap)])
    assert [h.text for h in chart.headings] == ["ECE", "SPED", "ELEM"]
    assert chart.legend == ["posted", "unfilled", "gap"]
    bars = {(h.text, b.label): b for h, b in _grouped(chart)}
    unit = chart.pixels_per_unit
    assert bars[("ECE", "posted")].length == pytest.approx(40 * unit, abs=0.03)
    assert bars[("ECE", "unfilled")].length == pytest.approx(10 * unit, abs=0.03)
    assert bars[("ECE", "gap")].length == pytest.approx(20 * unit, abs=0.03)
    assert bars[("ECE", "gap")].x + bars[("ECE", "gap")].length == pytest.approx(chart.zero)
    assert bars[("SPED", "unfilled")].hidden and bars[("SPED", "unfilled")].text == "suppressed"
    # ELEM is a group of the gap only: the other tables draw no bar there.
    assert [label for heading, label in bars if heading == "ELEM"] == ["gap"]
    assert [b.series for b in chart.bars[:3]] == [0, 1, 2]


def _grouped(chart: charts.BarChart) -> list[tuple[charts.Heading, charts.Bar]]:
    """Each bar with the heading of its group (the last heading above it)."""
    out = []
    for bar in chart.bars:
        heading = [h for h in chart.headings if h.y < bar.y][-1]
        out.append((heading, bar))
    return out


def test_the_funnel_gives_each_stage_a_bar_per_group_and_the_reports_share() -> None:
    stages: list[dict[str, Any]] = [
        {"group": {"status": "completed", "race": "white"}, "value": 200.0, "ci95": None},
        {"group": {"status": "completed", "race": "black"}, "value": 80.0, "ci95": None},
    ]
    hired: list[dict[str, Any]] = [
        {"group": {"race": "white"}, "value": 100.0, "ci95": None},
        {"group": {"race": "black"}, "value": None, "suppressed": True},
    ]
    chart = funnel_chart(
        "funnel",
        [("Completed", stages, ["status"]), ("Hired", hired, [])],
        shares={"white": {"value": 0.4931}},
    )
    assert [h.text for h in chart.headings] == ["Completed", "Hired"]
    assert [b.label for b in chart.bars] == ["white", "black", "white", "black"]
    assert chart.bars[2].text == "100 (49% of the stage before)"  # the report's share
    assert chart.bars[3].hidden and chart.bars[3].text == "suppressed"
    assert chart.labelled


# --- lines ----------------------------------------------------------------------------------


def test_a_line_breaks_where_a_point_has_no_number() -> None:
    years = ["2021", "2022", "2023", "2024"]
    points = [
        ("2021", cell("x", 0.5)),
        ("2022", cell("x", 0.6)),
        ("2023", cell("x", None, suppressed=True)),
        ("2024", cell("x", 0.7)),
    ]
    chart = line_chart(
        "t",
        [("ELEM", points)],
        x_values=years,
        x_name="school year",
        share=True,
        text=formatting.SHARE.text,
    )
    assert chart is not None
    (line,) = chart.lines
    assert len(line.segments) == 1 and len(line.segments[0].split()) == 2  # 2021-2022 only
    assert [p.text for p in line.points] == ["50.0%", "60.0%", "70.0%"]
    assert line.hidden == [chart.x_ticks[2].position]
    assert chart.y_ticks[-1].label == "100%"
    assert all(chart.plot_top <= p.y <= chart.plot_bottom for p in line.points)
    assert "1 point(s) without a number" in chart.description


def test_too_many_lines_are_not_drawn() -> None:
    lines = [(f"g{i}", [("2024", cell("x", 1.0))]) for i in range(charts.MAX_LINES + 1)]
    assert line_chart("t", lines, x_values=["2024"], x_name="year") is None


def test_a_year_like_dimension_is_found_and_ordered() -> None:
    table = [
        {"group": {"program_code": "ELEM", "cohort_year": "2022-2024"}, "value": 5.0},
        {"group": {"program_code": "ELEM", "cohort_year": "2020-2021"}, "value": 6.0},
    ]
    assert year_dimension(table) == "cohort_year"
    assert year_dimension([{"group": {"licensure_area": "ECE"}, "value": 1.0}]) is None
    figure = table_figure("t", {"query": {"measure": {"kind": "count"}}, "cells": table}, labels={})
    assert figure.kind == "lines"
    assert [t.label for t in figure.chart.x_ticks] == ["2020-2021", "2022-2024"]  # type: ignore[union-attr]


# --- the grid -------------------------------------------------------------------------------


def test_the_grid_shades_by_class_never_by_inline_style() -> None:
    """The pages' Content-Security-Policy allows no inline style: a shade is a class."""
    grid = heat_map(
        "Pairs",
        [
            {"group": {"a": 1, "b": 1}, "value": 100.0},
            {"group": {"a": 1, "b": 2}, "value": 10.0},
            {"group": {"a": 2, "b": 1}, "value": None, "suppressed": True},
        ],
        names={"a": "Supervisor's score", "b": "Evaluator's score"},
    )
    assert grid is not None and grid.row_name == "Supervisor's score"
    macros: Any = _environment().get_template("_charts.html").module
    html = str(macros.heat_map(grid, "h"))
    assert "style=" not in html
    assert 'class="shade-5"' in html and 'class="shade-0"' in html
    assert re.search(r'class="suppressed"><span class="mark">suppressed<', html)
    assert 'tabindex="0"' in html and 'role="region"' in html
    assert html.count("<td") == 4  # the pair (2, 2) has no cell: a dash


# --- labels and the report's charts ---------------------------------------------------------


def test_a_label_is_the_descriptions_first_clause() -> None:
    assert column_label("School year, named by the calendar year it ends in.") == "School year"
    assert column_label("Positions still unfilled (or filled by a substitute).") == (
        "Positions still unfilled"
    )


@pytest.fixture(scope="module")
def registry() -> Any:
    return load_registry(AGREEMENTS_DIR, POLICIES_DIR)


def test_two_fields_with_one_wording_say_whose_they_are(registry: Any) -> None:
    agreement = registry.agreement("calibration-lakeshore-riverbend")
    release = {
        "query": {
            "datasets": ["epp_observations", "district_observations"],
            "measure": {
                "kind": "joint",
                "field": "epp_observations.score",
                "compare_to": "district_observations.score",
            },
            "group_by": [],
        }
    }
    labels = field_labels(release, agreement=agreement, registry=registry)
    assert labels["epp_observations.score"] == (
        "Score on the four-level rubric scale (epp observations)"
    )
    assert labels["district_observations.score"].endswith("(district observations)")


def _table(title: str, dims: dict[str, Any], kind: str, **measure: Any) -> dict[str, Any]:
    return {
        "title": title,
        "release": {
            "query": {
                "datasets": ["vacancies"],
                "measure": {"kind": kind, **measure},
                "group_by": [f"vacancies.{name}" for name in dims],
            },
            "cells": [{"group": dims, "value": 10.0, "ci95": [9.0, 11.0], "suppressed": False}],
        },
    }


def test_the_needs_report_is_drawn_as_grouped_bars_with_the_gap(registry: Any) -> None:
    area = {"licensure_area": "SPED"}
    result = {
        "agreement": {"id": "sped-pipeline-northfield-tricounty"},
        "report": "needs",
        "tables": [
            _table("Positions posted, by licensure area", area, "sum"),
            _table("Positions left unfilled, by licensure area", area, "sum"),
            _table("Candidates intending each licensure area", area, "sum"),
            _table("Positions left unfilled, by school year", {"school_year": 2024}, "sum"),
        ],
        "derived": [
            {
                "title": "Positions left unfilled minus candidates, by licensure area",
                "kind": "gap",
                "rows": [{"group": area, "value": -5.0, "ci95": [-7.0, -3.0]}],
            }
        ],
    }
    drawn = report_charts(result, registry)
    (overview,) = drawn.overview
    assert overview.chart.legend == [  # type: ignore[union-attr]
        "Positions posted",
        "Positions left unfilled",
        "Candidates intending each licensure area",
        "Positions left unfilled minus candidates",
    ]
    assert drawn.tables[:3] == [None, None, None]  # drawn together above
    assert drawn.tables[3] is not None
    assert drawn.headers(0, ["licensure_area"]) == ["Licensure area the posted positions require"]


def test_retention_is_drawn_as_curves_with_a_year_not_run(registry: Any) -> None:
    queries = [{"measure": {"kind": "retention", "years_after": n}} for n in (1, 3, 5)]
    program = {"program_code": "ELEM"}
    result = {
        "tables": [
            {"title": "1", "release": {"cells": [{"group": program, "value": 0.8}]}},
            {"title": "3", "release": {"cells": [{"group": program, "value": 0.6}]}},
            {"title": "5", "skipped": "window too short"},
        ]
    }
    found = retention_overview(result, queries)
    assert found is not None
    figure, drawn = found
    assert drawn == {0, 1}
    assert [t.label for t in figure.chart.x_ticks] == ["1 year", "3 years", "5 years"]  # type: ignore[union-attr]
    (line,) = figure.chart.lines  # type: ignore[union-attr]
    assert [p.text for p in line.points] == ["80.0%", "60.0%"]
    assert math.isclose(line.points[0].x, figure.chart.plot_left)  # type: ignore[union-attr]


def test_counts_and_sums_are_not_drawn_on_one_scale() -> None:
    from gateway.web.figures import grouped_overview

    area = {"licensure_area": "SPED"}
    result = {
        "tables": [
            _table("Teachers, by licensure area", area, "count"),
            _table("Full-time equivalents, by licensure area", area, "sum"),
        ],
        "derived": [],
    }
    assert grouped_overview(result, []) is None
    result["tables"].append(_table("Positions posted, by licensure area", area, "sum"))
    found = grouped_overview(result, [])
    assert found is not None and found[1] == {1, 2}
