"""gateway/release/formatting.py and the files of gateway/release/export.py: one number
format for people (counts whole, shares as percentages with one decimal, means to the
measure's declared precision, intervals "a to b"); JSON keeps every digit."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path
from typing import Any

import openpyxl
from hypothesis import given
from hypothesis import strategies as st

from gateway.agreements import load_registry
from gateway.agreements.models import DEFAULT_PRECISION
from gateway.release import export, formatting
from gateway.release.formatting import COUNT, SHARE, NumberFormat

ROOT = Path(__file__).resolve().parents[1]
AGREEMENT = "student-teaching-bayview-eastport"

finite = st.floats(min_value=-1e9, max_value=1e9, allow_nan=False, allow_infinity=False)


def test_each_kind_reads_as_people_expect() -> None:
    assert COUNT.text(74.570395) == "75" and COUNT.text(1234.4) == "1,234"
    assert SHARE.text(0.45678) == "45.7%" and SHARE.text(1) == "100.0%"
    assert NumberFormat(kind="mean", decimals=2).text(3.14159) == "3.14"
    assert COUNT.interval(74.570395, 87.429605) == "75 to 87"
    assert SHARE.interval(0.331, 0.489) == "33.1% to 48.9%"
    assert COUNT.text(None) == "" and COUNT.interval(None, 3) == ""
    assert COUNT.text(-0.2) == "0" and SHARE.text(-0.0001) == "0.0%"


@given(finite)
def test_a_count_is_a_whole_number_within_half_of_the_value(value: float) -> None:
    text = COUNT.text(value)
    assert re.fullmatch(r"-?\d{1,3}(,\d{3})*", text)
    assert abs(int(text.replace(",", "")) - value) <= 0.5


@given(st.floats(min_value=-2, max_value=2, allow_nan=False), st.integers(0, 4))
def test_a_share_has_one_decimal_and_a_mean_its_declared_ones(value: float, places: int) -> None:
    share = SHARE.text(value)
    assert re.fullmatch(r"-?\d+\.\d%", share)
    assert abs(float(share[:-1]) - value * 100) <= 0.05 + 1e-9
    mean = NumberFormat(kind="mean", decimals=places).text(value)
    assert len(mean.partition(".")[2]) == places
    assert abs(float(mean) - value) <= 0.5 * 10**-places + 1e-9


@given(finite)
def test_a_rounded_cell_is_the_number_the_text_shows(value: float) -> None:
    for fmt in (COUNT, SHARE, NumberFormat(kind="mean", decimals=2)):
        rounded = fmt.rounded(value)
        shown = fmt.text(value).replace(",", "").rstrip("%")
        scale = 100 if fmt.kind == "share" else 1
        assert abs(float(shown) - rounded * scale) < 1e-6 * max(1.0, abs(value) * scale)


def test_the_precision_comes_from_the_measures_schema() -> None:
    registry = load_registry(ROOT / "agreements", ROOT / "policies")
    schema = registry.schemas["evaluations"]
    assert schema.columns["summative_rating"].precision == 2
    rating = {
        "agreement": {"id": AGREEMENT},
        "query": {
            "datasets": ["evaluations"],
            "measure": {"kind": "mean", "field": "summative_rating"},
        },
    }
    assert formatting.for_release(rating, registry) == NumberFormat(kind="mean", decimals=2)
    # Unknown to the registry (or no registry): the default precision.
    assert formatting.for_release(rating).decimals == DEFAULT_PRECISION
    rate = {"query": {"measure": {"kind": "rate"}}}
    assert formatting.for_release(rate, registry) is SHARE


def test_a_precision_on_a_column_that_is_not_a_numeric_measure_is_refused(tmp_path: Path) -> None:
    from gateway.agreements.policy_checks import check_dataset_schema

    registry = load_registry(ROOT / "agreements", ROOT / "policies")
    schema = registry.schemas["evaluations"]
    columns = dict(schema.columns)
    name = schema.quasi_identifiers[0]
    columns[name] = columns[name].model_copy(update={"precision": 2})
    columns["summative_rating"] = columns["summative_rating"].model_copy(update={"precision": 9})
    findings = check_dataset_schema(schema.model_copy(update={"columns": columns}))
    messages = {f.loc: f.reason for f in findings}
    assert "only a numeric measure" in messages[("columns", name, "precision")]
    assert "0 to 4" in messages[("columns", "summative_rating", "precision")]


def _cell(value: float | None, low: float, high: float, **extra: Any) -> dict[str, Any]:
    return {"group": {"program": "=SUM(A1)"}, "value": value, "ci95": [low, high], **extra}


def _report() -> dict[str, Any]:
    counts = {
        "release_id": "r1",
        "agreement": {"id": "nowhere"},
        "query": {"measure": {"kind": "count"}},
        "cells": [
            _cell(12.6, 5.2, 20.01, suppressed=False),
            _cell(None, 0, 0, suppressed=True, reason="primary"),
            _cell(30.4, 20.1, 40.9, suppressed=False, steps=1, level={"program": "area"}),
        ],
    }
    rates = {
        "release_id": "r2",
        "agreement": {"id": "nowhere"},
        "query": {"measure": {"kind": "rate"}},
        "cells": [_cell(0.45678, 0.3012, 0.61, suppressed=False)],
    }
    return {
        "report": "pipeline",
        "agreement": {"id": "nowhere"},
        "parameters": {"years": [2025]},
        "tables": [
            {"title": "Completers: by program", "release": counts},
            {"title": "Too short", "skipped": "window too short"},
            {"title": "Employment rate", "release": rates},
        ],
    }


def test_a_reports_csv_is_one_plain_file_per_table_with_its_title() -> None:
    files = export.report_csv_files(_report())
    assert list(files) == ["01-completers-by-program.csv", "03-employment-rate.csv"]
    counts = list(csv.DictReader(io.StringIO(files["01-completers-by-program.csv"])))
    assert {row["table"] for row in counts} == {"Completers: by program"}
    assert [row["value"] for row in counts] == ["13", "", "30"]
    assert (counts[0]["ci95_low"], counts[0]["ci95_high"]) == ("5", "20")
    assert counts[0]["program"] == "'=SUM(A1)"  # never a formula
    rates = list(csv.DictReader(io.StringIO(files["03-employment-rate.csv"])))
    assert (rates[0]["value"], rates[0]["ci95_low"]) == ("0.457", "0.301")
    for text in files.values():
        assert not any(line.startswith("#") for line in text.splitlines())
    with zipfile.ZipFile(io.BytesIO(export.report_zip(_report()))) as archive:
        assert archive.namelist() == list(files)


def test_a_reports_workbook_has_a_sheet_per_table_and_marks_hidden_and_rolled_up_cells() -> None:
    book = openpyxl.load_workbook(io.BytesIO(export.report_xlsx(_report())))
    assert book.sheetnames == ["About", "1 Completers  by program", "3 Employment rate"]
    about = [row[0] for row in book["About"].iter_rows(values_only=True) if row]
    assert "Too short" in about  # a table not run is named on the first sheet
    sheet = book["1 Completers  by program"]
    header = [c.value for c in sheet[2]]
    rows = [[c.value for c in row] for row in sheet.iter_rows(min_row=3)]
    status = header.index("status")
    assert [r[status] for r in rows] == [
        "published",
        "suppressed (primary)",
        "rolled up (program: area)",
    ]
    assert [r[header.index("value")] for r in rows] == [13, None, 30]
    assert sheet.cell(row=4, column=1).fill.start_color.rgb.endswith("D9D9D9")
    assert sheet.cell(row=5, column=1).fill.start_color.rgb.endswith("FFF2CC")
    assert sheet.cell(row=3, column=1).fill.fill_type is None
    assert sheet.cell(row=3, column=1).value == "'=SUM(A1)"
    rate = book["3 Employment rate"]
    value = rate.cell(row=3, column=[c.value for c in rate[2]].index("value") + 1)
    assert value.value == 0.457 and value.number_format == "0.0%"
