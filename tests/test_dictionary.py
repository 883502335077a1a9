"""gateway/agreements/dictionary.py: every dataset's data dictionary and templates, for
every agreement of the repository, generated from the policies."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

import openpyxl
import pytest

from gateway.agreements import load_registry
from gateway.agreements.dictionary import dictionary, template_csv, template_xlsx
from gateway.agreements.models import Agreement, AgreementDataset

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = load_registry(ROOT / "agreements", ROOT / "policies")
DATASETS = [
    (agreement, dataset)
    for agreement in REGISTRY.agreements.values()
    for dataset in agreement.datasets
]
# What a regular expression looks like: none may reach the people preparing files.
REGEX = re.compile(r"\(\?=|\{\d+,\d+\}|\[0-9|\^|\$$")


@pytest.mark.parametrize(
    ("agreement", "dataset"), DATASETS, ids=[f"{a.id}:{d.name}" for a, d in DATASETS]
)
def test_each_dictionary_follows_the_policies_and_the_template_holds_what_is_stored(
    agreement: Agreement, dataset: AgreementDataset
) -> None:
    schema = REGISTRY.schema_for(dataset)
    entries = dictionary(agreement, dataset, schema)
    assert [e.column for e in entries] == list(schema.columns)
    for entry in entries:
        spec = schema.columns[entry.column]
        assert entry.label == spec.description  # labels from the schema, not column names
        assert not REGEX.search(entry.allowed), entry
        if spec.role == "direct_identifier" or entry.column not in dataset.stored_fields:
            assert entry.kept == "dropped" and not entry.in_template
        elif spec.role == "educator_id":
            assert entry.kept == "replaced by a pseudonym" and entry.in_template
        else:
            assert entry.kept == "stored"
        # The header is one the upload accepts for the column: the agreement's own name
        # for it, or the canonical name when it has none.
        if entry.header != entry.column:
            assert dataset.header_map[entry.header] == entry.column
    (header,) = list(csv.reader(io.StringIO(template_csv(entries))))
    assert len(header) == len(set(header))
    mapped = [dataset.header_map.get(h, h) for h in header]
    assert sorted(mapped) == sorted(dataset.stored_fields)
    book = openpyxl.load_workbook(io.BytesIO(template_xlsx("t", entries)))
    assert [c.value for c in book["Data"][1]] == header


def test_coded_and_ruled_columns_say_their_values_in_words() -> None:
    agreement = REGISTRY.agreement("student-teaching-bayview-eastport")
    dataset = agreement.dataset("evaluations")
    entries = {e.column: e for e in dictionary(agreement, dataset, REGISTRY.schema_for(dataset))}
    assert entries["summative_rating"].allowed.startswith("1 (ineffective); 2 (needs improvement)")
    assert entries["educator_id"].allowed == (
        "1 to 15 letters and digits, at least one of them a digit (spaces are removed and "
        "letters upper-cased first)"
    )
    assert entries["educator_id"].header == "MEPID"
    assert "Last Name" in [e.header for e in entries.values() if e.kept == "dropped"]
