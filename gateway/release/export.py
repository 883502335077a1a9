"""Released tables as files: CSV (one table a file) and Excel (a whole report).

The one writer behind ``gateway release --csv``/``--out``/``--xlsx`` and the web
pages' downloads.

CSV, one row per cell: with ``table``, first a ``table`` column (the table's title,
so files from one report can be stacked); the dimensions (one column each, in the
asked order); for a coarsened table each coarsening dimension's level
(``<dimension>_level``) and the ``steps`` above the table as asked; then ``value``,
``ci95_low``, ``ci95_high``, ``suppressed``, ``reason``, and ``share``, ``coded`` and
``note`` when any cell has them. A report is one CSV file per table, in a folder or a
zip: there are no comment lines, so every file is plain CSV.

Numbers are rounded as people read them (gateway/release/formatting.py): counts whole,
shares as fractions to three decimals (a percentage with one), means to their
measure's declared precision. JSON keeps every digit.

Text that a spreadsheet would run as a formula is written with a leading apostrophe,
in CSV and in Excel.
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.release import formatting
from gateway.release.formatting import NumberFormat

# Spreadsheets run a cell that starts with one of these as a formula.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def safe(value: Any) -> Any:
    """``value``, neutralised with a leading apostrophe if a spreadsheet would run it."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _columns(cells: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    dimensions = list(cells[0]["group"]) if cells else []
    extra = [c for c in ("share", "coded", "note") if any(c in cell for cell in cells)]
    levels = [d for d in dimensions if any(d in (c.get("level") or {}) for c in cells)]
    return dimensions, levels, extra


def _header(dimensions: list[str], levels: list[str], extra: list[str]) -> list[str]:
    return [
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


def _row(
    cell: Mapping[str, Any],
    dimensions: list[str],
    levels: list[str],
    extra: list[str],
    fmt: NumberFormat,
) -> list[Any]:
    ci = cell.get("ci95") or [None, None]
    extras = {
        "share": formatting.SHARE.rounded(cell.get("share")),
        "coded": cell.get("coded"),
        "note": cell.get("note"),
    }
    return [
        *(cell["group"][d] for d in dimensions),
        *((cell.get("level") or {}).get(d, "") for d in levels),
        *([cell.get("steps", 0)] if levels else []),
        fmt.rounded(cell.get("value")),
        fmt.rounded(ci[0]),
        fmt.rounded(ci[1]),
        bool(cell.get("suppressed")),
        cell.get("reason") or "",
        *(extras[c] for c in extra),
    ]


def cells_csv(
    release: Mapping[str, Any],
    *,
    registry: Any = None,
    table: str | None = None,
    fmt: NumberFormat | None = None,
) -> str:
    """One CSV row per cell of ``release`` (with a first ``table`` column when given)."""
    fmt = fmt or formatting.for_release(release, registry)
    cells: Sequence[Mapping[str, Any]] = release.get("cells") or []
    dimensions, levels, extra = _columns(cells)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    lead = ["table"] if table is not None else []
    writer.writerow([*lead, *_header(dimensions, levels, extra)])
    for cell in cells:
        row = [*([table] if table is not None else []), *_row(cell, dimensions, levels, extra, fmt)]
        writer.writerow([safe(v) for v in row])
    return buffer.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "table"


def report_csv_files(result: Mapping[str, Any], registry: Any = None) -> dict[str, str]:
    """A report's released tables as CSV files, by file name ("01-<title>.csv"), in the
    report's order. A table not run (nothing spent on it) has no file."""
    formats = formatting.for_report_tables(result, registry)
    files: dict[str, str] = {}
    for number, (table, fmt) in enumerate(zip(result["tables"], formats, strict=True), 1):
        if "release" not in table:
            continue
        name = f"{number:02d}-{_slug(table['title'])}.csv"
        files[name] = cells_csv(table["release"], table=table["title"], fmt=fmt)
    return files


def zip_files(files: Mapping[str, str]) -> bytes:
    """Text files (name to content) in one zip."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def report_zip(result: Mapping[str, Any], registry: Any = None) -> bytes:
    """:func:`report_csv_files` in one zip."""
    return zip_files(report_csv_files(result, registry))


# --- Excel -----------------------------------------------------------------------------

#: Fills that mark a cell's row, always beside a ``status`` column that says it in words
#: (colour is never the only sign).
_SUPPRESSED_FILL = "D9D9D9"  # grey: hidden
_COARSENED_FILL = "FFF2CC"  # pale yellow: rolled up into a coarser group
_SHEET_NAME = re.compile(r"[\[\]:*?/\\]")


def _status(cell: Mapping[str, Any]) -> str:
    if cell.get("suppressed"):
        return f"suppressed ({cell.get('reason') or 'hidden'})"
    if cell.get("value") is None and cell.get("coded"):
        return f"coded ({cell['coded']})"
    if cell.get("steps"):
        levels = [f"{k}: {v}" for k, v in (cell.get("level") or {}).items() if v != "as asked"]
        return "rolled up (" + "; ".join(levels) + ")"
    return "published"


def _sheet_title(title: str, number: int, taken: set[str]) -> str:
    base = _SHEET_NAME.sub(" ", title).strip() or "table"
    name = f"{number} {base}"[:31]  # the table's number keeps names apart
    assert name not in taken  # Excel refuses two sheets of one name
    taken.add(name)
    return name


def report_xlsx(result: Mapping[str, Any], registry: Any = None) -> bytes:
    """A whole report as one workbook: an "About" sheet (the report, its parameters and
    its cost), then one sheet per released table, each cell's row with a ``status``
    ("published", "suppressed (primary)", "rolled up (...)", "coded (...)"); suppressed
    rows are grey and rolled-up rows pale yellow. Numbers are stored rounded, with the
    number format that shows them as the other outputs do."""
    from openpyxl import Workbook
    from openpyxl.styles import Font, PatternFill

    formats = formatting.for_report_tables(result, registry)
    workbook = Workbook()
    about = workbook.active
    assert about is not None
    about.title = "About"
    bold = Font(bold=True)
    about.append([safe(f"Report: {result.get('report', '')}")])
    about["A1"].font = bold
    about.append([safe(str(result.get("description", "")))])
    for name, value in (result.get("parameters") or {}).items():
        about.append([safe(str(name)), safe(str(value))])
    if "epsilon_spent" in result:
        about.append(["epsilon spent", result["epsilon_spent"]])
    about.append([])
    about.append(["Suppressed cells are grey and rolled-up cells pale yellow; the status"])
    about.append(["column says which, and why. Every number is noisy: see its 95% interval."])
    for table in result.get("tables") or []:
        if "skipped" in table:
            about.append([safe(str(table["title"])), safe(f"not run: {table['skipped']}")])
    about.column_dimensions["A"].width = 40
    about.column_dimensions["B"].width = 60

    grey = PatternFill("solid", start_color=_SUPPRESSED_FILL, end_color=_SUPPRESSED_FILL)
    yellow = PatternFill("solid", start_color=_COARSENED_FILL, end_color=_COARSENED_FILL)
    taken: set[str] = {"About"}
    for number, (table, fmt) in enumerate(zip(result.get("tables") or [], formats, strict=True)):
        if "release" not in table:
            continue
        cells: Sequence[Mapping[str, Any]] = table["release"].get("cells") or []
        dimensions, levels, extra = _columns(cells)
        sheet = workbook.create_sheet(_sheet_title(str(table["title"]), number + 1, taken))
        sheet.append([safe(str(table["title"]))])
        sheet["A1"].font = bold
        header = [*_header(dimensions, levels, extra), "status"]
        sheet.append(header)
        for column in range(1, len(header) + 1):
            sheet.cell(row=2, column=column).font = bold
        numeric = {header.index(c) + 1 for c in ("value", "ci95_low", "ci95_high")}
        share_at = header.index("share") + 1 if "share" in header else None
        for cell in cells:
            row = [*_row(cell, dimensions, levels, extra, fmt), _status(cell)]
            sheet.append([safe(v) for v in row])
            at = sheet.max_row
            fill = grey if cell.get("suppressed") else yellow if cell.get("steps") else None
            for column in range(1, len(header) + 1):
                target = sheet.cell(row=at, column=column)
                if fill is not None:
                    target.fill = fill
                if column in numeric:
                    target.number_format = fmt.excel
                elif column == share_at:
                    target.number_format = formatting.SHARE.excel
        sheet.freeze_panes = "A3"
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()
