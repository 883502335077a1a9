"""Names people read for a table's fields: from the dataset schemas' descriptions, never
the column names (``licensure_area`` is shown as "Licensure area the posted positions
require").

A column's label is the first clause of its description (up to the first comma, colon,
semicolon, full stop or bracket). Two fields of one table with the same label (a joint
table's two raters' scores) each add their dataset's name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.agreements.loader import Registry
from gateway.agreements.models import Agreement

_CLAUSE_END = re.compile(r"[,;:.(]")


def column_label(description: str) -> str:
    """The first clause of a column's description, as a label."""
    first = _CLAUSE_END.split(description.strip(), maxsplit=1)[0].strip()
    return first or description.strip()


def _columns(query: Mapping[str, Any]) -> list[str]:
    """The qualified fields a release's cells may be grouped by: its grouping and, for a
    distribution or a joint table, the measure's fields."""
    measure = query.get("measure") or {}
    named = [*(query.get("group_by") or []), measure.get("field"), measure.get("compare_to")]
    return [str(f) for f in named if f]


def field_labels(
    release: Mapping[str, Any], *, agreement: Agreement, registry: Registry
) -> dict[str, str]:
    """The label of each field a release's cells are grouped by, keyed as the cells name
    it (``program_code`` or, in a joint table, ``epp_observations.score``). A field not
    found in a schema keeps its name."""
    query = release.get("query") or {}
    datasets = [str(d) for d in query.get("datasets") or []]
    found: dict[str, tuple[str, str]] = {}  # cell key -> (label, dataset)
    for name in _columns(query):
        dataset, _, column = name.rpartition(".")
        candidates = [dataset] if dataset else datasets
        for candidate in candidates:
            stored = next((d for d in agreement.datasets if d.name == candidate), None)
            schema = registry.schemas.get(stored.schema_name) if stored else None
            if schema is None or column not in schema.columns:
                continue  # not this dataset's column
            description = schema.columns[column].description
            label = column_label(description)
            found[name] = (label, candidate)
            found.setdefault(column, (label, candidate))
            break
    labels = {key: label for key, (label, _) in found.items()}
    seen: dict[str, list[str]] = {}
    for key, label in labels.items():
        if "." in key:
            seen.setdefault(label, []).append(key)
    for label, keys in seen.items():
        if len(keys) > 1:  # two fields, one wording: say whose
            for key in keys:
                labels[key] = f"{label} ({found[key][1].replace('_', ' ')})"
    return labels
