"""Numbers as people read them: the one place that rounds a released number for show.

Counts are whole numbers (thousands separated), shares are percentages with one
decimal, means have the decimals their measure's schema declares (``precision``,
default 1), and a 95% interval reads "a to b". The CLI, the demo, CSV, Excel and the
web pages all format through here; JSON (``--json``, the API) keeps every digit,
because formatting is for people, and a program that wants to round can.

Rounding a noisy number says nothing more about the data than the number itself did.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.agreements.models import DEFAULT_PRECISION, ColumnSpec

Kind = Literal["count", "share", "mean"]

#: Measures whose cells count teachers, candidates or positions.
COUNT_KINDS = frozenset({"count", "distribution", "joint"})
#: Measures whose cells are a share of teachers (0 to 1).
SHARE_KINDS = frozenset({"rate", "retention", "agreement"})


@dataclass(frozen=True, kw_only=True)
class NumberFormat:
    """How the numbers of one table (or one figure) are shown."""

    kind: Kind
    #: Decimals of a mean; a count has none and a share always one (of a percentage).
    decimals: int = 0

    def text(self, value: Any) -> str:
        """``value`` as people read it; "" for None; anything not a number as is."""
        if value is None:
            return ""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return str(value)
        if not math.isfinite(value):
            return str(value)
        if self.kind == "share":
            return percent(value)
        if self.kind == "count":
            return count(value)
        return f"{_zero(round(value, self.decimals)):,.{self.decimals}f}"

    def interval(self, low: Any, high: Any) -> str:
        """A 95% interval: "a to b" ("" when there is none)."""
        if low is None or high is None:
            return ""
        return f"{self.text(low)} to {self.text(high)}"

    def rounded(self, value: Any) -> Any:
        """``value`` rounded as shown, still a number (for CSV and Excel cells): a count
        an integer, a share a fraction with three decimals (a percentage with one), a
        mean its declared decimals. None and non-numbers are returned as they are."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        if not math.isfinite(value):
            return value
        if self.kind == "count":
            return round(value)
        if self.kind == "share":
            return _zero(round(value, 3))
        return _zero(round(value, self.decimals)) if self.decimals else round(value)

    @property
    def excel(self) -> str:
        """The spreadsheet number format that shows a :meth:`rounded` value the same way."""
        if self.kind == "share":
            return "0.0%"
        if self.kind == "count" or not self.decimals:
            return "#,##0"
        return "#,##0." + "0" * self.decimals


COUNT = NumberFormat(kind="count")
SHARE = NumberFormat(kind="share")
#: A statistic such as a weighted kappa (-1 to 1): two decimals.
STATISTIC = NumberFormat(kind="mean", decimals=2)


def _zero(value: float) -> float:
    # -0.0 reads as "-0.0"; a rounded value that is zero is shown as 0.
    return 0.0 if value == 0 else value


def count(value: float) -> str:
    """A count: a whole number, thousands separated (a noisy 12.6 reads 13)."""
    return f"{round(value):,}"


def percent(value: float) -> str:
    """A share (0 to 1) as a percentage with one decimal: 0.4567 reads 45.7%."""
    return f"{_zero(round(value * 100, 1)):.1f}%"


def mean(value: float, decimals: int = DEFAULT_PRECISION) -> str:
    """A mean with ``decimals`` decimals."""
    return NumberFormat(kind="mean", decimals=decimals).text(value)


def for_measure(kind: str, column: ColumnSpec | None) -> NumberFormat:
    """The format of a table's cells, from its measure's kind and (for a mean or sum)
    the measured column's schema."""
    if kind in COUNT_KINDS:
        return COUNT
    if kind in SHARE_KINDS:
        return SHARE
    if kind == "sum" and (column is None or column.type == "integer"):
        return COUNT  # a sum of whole numbers (candidates, positions) is a count
    return NumberFormat(
        kind="mean",
        decimals=column.display_precision if column is not None else DEFAULT_PRECISION,
    )


def for_derived(kind: str) -> NumberFormat:
    """A figure from two tables: a gap between counts, or a conversion (a share)."""
    return SHARE if kind == "conversion" else COUNT


def measured_column(release: Mapping[str, Any], registry: Any) -> ColumnSpec | None:
    """The schema column a release's measure is over (None for a count, or when the
    agreement or the column can no longer be found: the default precision then)."""
    measure = (release.get("query") or {}).get("measure") or {}
    field = measure.get("field")
    agreement_id = (release.get("agreement") or {}).get("id")
    if not field or not agreement_id or registry is None:
        return None
    try:
        agreement = registry.agreement(agreement_id)
    except Exception:  # a terminated or removed agreement: show with the default
        return None
    named, dot, column = str(field).rpartition(".")
    for dataset in (release.get("query") or {}).get("datasets") or []:
        if dot and dataset != named:
            continue
        try:
            schema = registry.schema_for(agreement.dataset(dataset))
        except Exception:  # noqa: S112 - a dataset the agreement no longer has
            continue
        if column in schema.columns:
            spec: ColumnSpec = schema.columns[column]
            return spec
    return None


def for_release(release: Mapping[str, Any], registry: Any = None) -> NumberFormat:
    """The format of a released table's (or a preview's) cells."""
    kind = ((release.get("query") or {}).get("measure") or {}).get("kind", "count")
    return for_measure(str(kind), measured_column(release, registry))


def cell_text(cell: Mapping[str, Any], fmt: NumberFormat) -> tuple[str, str]:
    """A published cell's value and its 95% interval, formatted (for a hidden or coded
    cell: "" for both)."""
    if cell.get("suppressed") or cell.get("value") is None:
        return "", ""
    ci = cell.get("ci95") or [None, None]
    return fmt.text(cell["value"]), fmt.interval(ci[0], ci[1])


def half_width(value: Any, fmt: NumberFormat) -> str:
    """A 95% half-width ("± 6"), in the table's format; a range of them "± 2 to 6"."""
    if isinstance(value, list | tuple) and len(value) == 2:
        return f"± {fmt.interval(value[0], value[1])}"
    return f"± {fmt.text(value)}"


def accuracy_lines(accuracy: Mapping[str, Any], fmt: NumberFormat) -> list[str]:
    """A preview's 95% accuracy in words, one line each (the CLI's ``--dry-run``)."""
    if accuracy.get("exact"):
        return ["released exactly: no noise (posted positions are not people)"]
    lines = []
    if accuracy.get("publish_threshold") is not None:
        lines.append(
            f"a cell is published when its noisy count reaches "
            f"{count(accuracy['publish_threshold'])}"
        )
    if accuracy.get("count_half_width") is not None:
        lines.append(
            f"counts within {half_width(accuracy['count_half_width'], COUNT)}, 95% of the time"
        )
    if accuracy.get("sum_half_width") is not None:
        lines.append(f"sums within {half_width(accuracy['sum_half_width'], fmt)}, 95% of the time")
    if accuracy.get("numerator_half_width") is not None:
        lines.append(
            f"rate numerators within {half_width(accuracy['numerator_half_width'], COUNT)} "
            "teachers, 95% of the time"
        )
    if accuracy.get("selection_threshold") is not None:
        lines.append(
            f"groups come from the data: a group needs about "
            f"{count(accuracy['selection_threshold'])} teachers to appear"
        )
    for step in accuracy.get("coarsening") or []:
        level = ", ".join(f"{k}: {v}" for k, v in (step.get("level") or {}).items())
        threshold = step.get("publish_threshold")
        shown = (
            COUNT.interval(*threshold) if isinstance(threshold, list | tuple) else count(threshold)
        )
        lines.append(
            f"rolled up to {level or 'the top'}: {count(step['cells'])} cell(s), published "
            f"from a noisy count of {shown}, counts within "
            f"{half_width(step['count_half_width'], COUNT)}"
        )
    return lines


def for_report_tables(result: Mapping[str, Any], registry: Any = None) -> list[NumberFormat]:
    """The format of each table of a report's result (a run or a preview): a released
    table's from its query; a previewed one's from the report's table as declared."""
    from gateway.release.reports import definition  # the report catalogue, only here

    agreement_ref = result.get("agreement") or {}
    declared: list[Any] = []
    if registry is not None and agreement_ref.get("id"):
        try:
            agreement = registry.agreement(agreement_ref["id"])
            spec = next(r for r in agreement.reports if r.name == result.get("report"))
            declared = list(definition(spec).tables)
        except Exception:  # noqa: S110 - a report no longer declared: default formats
            pass
    formats = []
    for number, table in enumerate(result.get("tables") or []):
        if "release" in table:
            formats.append(for_release(table["release"], registry))
        elif number < len(declared):
            query = {"query": declared[number].query, "agreement": agreement_ref}
            formats.append(for_release(query, registry))
        else:
            formats.append(COUNT)
    return formats
