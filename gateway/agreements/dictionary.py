"""A dataset's data dictionary and upload templates, generated from the policies.

For each column of a dataset's schema, under one agreement: the header the providing
party writes (its ``header_map`` name, else the canonical one), what the column holds
(the schema's description, the label people read), its type, whether an upload must
have it, the values allowed in words, and what the gateway does with it: stored,
replaced by a pseudonym, or dropped (and why). The templates carry the header of every
column the agreement stores, in the party's words, and nothing the gateway would drop.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from gateway.agreements.models import (
    Agreement,
    AgreementDataset,
    ColumnSpec,
    DatasetSchema,
)

_TYPES = {
    "string": "text",
    "integer": "whole number",
    "number": "number",
    "date": "date (YYYY-MM-DD)",
    "boolean": "true or false",
}


@dataclass(frozen=True, kw_only=True)
class DictionaryEntry:
    """One column of a dataset, as the person preparing the file reads it."""

    column: str
    #: The header the providing party writes for it (its own name, where it has one).
    header: str
    #: Other headers accepted for it (the agreement's header_map), besides ``header``.
    also_accepted: tuple[str, ...]
    label: str
    type: str
    required: bool
    allowed: str
    #: "stored", "replaced by a pseudonym" or "dropped".
    kept: str
    why: str

    @property
    def in_template(self) -> bool:
        return self.kept != "dropped"


def allowed_values(spec: ColumnSpec) -> str:
    """The values a column takes, in words (never a regular expression)."""
    if spec.codes:
        return "; ".join(
            f"{code.value} ({code.label})" if code.label else str(code.value) for code in spec.codes
        )
    if spec.range is not None and (spec.range.min is not None or spec.range.max is not None):
        low, high = spec.range.min, spec.range.max
        if low is not None and high is not None:
            return f"from {_plain(low)} to {_plain(high)}"
        return f"at least {_plain(low)}" if low is not None else f"at most {_plain(high)}"
    if spec.rule is not None:
        return spec.rule
    if spec.pattern is not None:
        return "text in the format the agreement sets"
    return "any " + _TYPES.get(spec.type, spec.type)


def _plain(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else str(value)


def _fate(schema: DatasetSchema, dataset: AgreementDataset, name: str) -> tuple[str, str]:
    spec = schema.columns[name]
    if spec.role == "educator_id":
        return (
            "replaced by a pseudonym",
            "the ID links a teacher's records across datasets; it is replaced by a keyed "
            "pseudonym when the file is read and is never stored",
        )
    if spec.role == "direct_identifier":
        return (
            "dropped",
            "a name or other direct identifier: recognised only to be dropped, never stored",
        )
    if name not in dataset.stored_fields:
        return "dropped", "this agreement does not store it; leave it out of the file"
    if spec.role == "student_measure":
        return "stored", "released only where enough students stand behind each value"
    return "stored", "kept for the agreement's de-identified tables"


def headers(dataset: AgreementDataset, column: str) -> list[str]:
    """The headers accepted for ``column``: the party's own names first, then the
    canonical one."""
    own = [h for h, c in dataset.header_map.items() if c == column]
    return [*own, column] if column not in own else own


def dictionary(
    agreement: Agreement, dataset: AgreementDataset, schema: DatasetSchema
) -> list[DictionaryEntry]:
    """Every column of ``schema`` under ``agreement``'s ``dataset``, in file order."""
    out = []
    for name, spec in schema.columns.items():
        accepted = headers(dataset, name)
        kept, why = _fate(schema, dataset, name)
        out.append(
            DictionaryEntry(
                column=name,
                header=accepted[0],
                also_accepted=tuple(accepted[1:]),
                label=spec.description,
                type=_TYPES.get(spec.type, spec.type),
                required=spec.required,
                allowed=allowed_values(spec),
                kept=kept,
                why=why,
            )
        )
    return out


def template_csv(entries: list[DictionaryEntry]) -> str:
    """A CSV with just the header row: every column the agreement keeps, in the party's
    own header names."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow([e.header for e in entries if e.in_template])
    return buffer.getvalue()


def template_xlsx(title: str, entries: list[DictionaryEntry]) -> bytes:
    """An Excel template: a "Data" sheet with the header row (bold, frozen), and a
    "Guide" sheet with each column's meaning, type, whether it is required and the
    values allowed."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    kept = [e for e in entries if e.in_template]
    workbook = Workbook()
    data = workbook.active
    assert data is not None
    data.title = "Data"
    data.append([e.header for e in kept])
    for cell in data[1]:
        cell.font = Font(bold=True)
    for number, entry in enumerate(kept, 1):
        data.column_dimensions[data.cell(row=1, column=number).column_letter].width = max(
            12, len(entry.header) + 2
        )
    data.freeze_panes = "A2"
    guide = workbook.create_sheet("Guide")
    guide.append([title])
    guide["A1"].font = Font(bold=True)
    guide.append(["Column header", "What it holds", "Type", "Required", "Allowed values"])
    for cell in guide[2]:
        cell.font = Font(bold=True)
    for entry in kept:
        guide.append(
            [
                entry.header,
                entry.label,
                entry.type,
                "yes" if entry.required else "no",
                entry.allowed,
            ]
        )
    for letter, width in zip("ABCDE", (22, 60, 18, 10, 60), strict=True):
        guide.column_dimensions[letter].width = width
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()
