"""Rules an agreement must follow, within itself and against the policies.

Release rules chosen here (documented in docs/agreements.md):

- a **dimension** must be a ``quasi_identifier`` column of type string,
  integer or boolean: numbers and dates would give one cell per value;
- a **measure** must be a ``measure`` or ``student_measure`` column;
- ``educator_id`` and direct identifiers are never release fields;
- a plain release field stored by several datasets coarsens alike in each
  (one hierarchy per field), and the agreement's ``groupings`` follow the
  hierarchy rules of :mod:`.hierarchy_checks` over the column's codes or the
  agreement's public values.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.agreements.extract_checks import check_extracts
from gateway.agreements.findings import Finding, duplicates
from gateway.agreements.hierarchy_checks import check_hierarchy
from gateway.agreements.models import (
    AgreementDocument,
    ColumnSpec,
    DatasetSchema,
    DisclosureProfile,
    Hierarchy,
    HierarchyCode,
)
from gateway.agreements.policy_checks import resolve_disclosure
from gateway.agreements.yamldoc import Loc
from gateway.errors import NotFound

#: Column types a release dimension may have: few distinct values per column.
DIMENSION_TYPES = frozenset({"string", "integer", "boolean"})


@dataclass(frozen=True)
class Policies:
    """The valid dataset schemas and disclosure profiles an agreement may refer to,
    and the names of the policy files that exist but are broken."""

    schemas: Mapping[str, DatasetSchema]
    profiles: Mapping[str, DisclosureProfile]
    invalid_schemas: frozenset[str] = frozenset()
    invalid_profiles: frozenset[str] = frozenset()


def check_agreement(
    document: AgreementDocument, policies: Policies
) -> tuple[DisclosureProfile | None, list[Finding]]:
    """Every rule an agreement breaks, and its resolved disclosure profile (None
    when the profile is unknown or the overrides make it invalid)."""
    findings: list[Finding] = []
    findings += duplicates(
        [party.id for party in document.parties], "party id", ("parties",), ("id",)
    )
    if document.ends <= document.effective:
        findings.append(
            Finding(
                ("ends",),
                f"ends ({document.ends}) must be after effective ({document.effective})",
            )
        )
    findings += _check_datasets(document, policies)
    findings += _check_linkage(document, policies)
    findings += _check_releases(document, policies)
    findings += _check_public_values(document, policies)
    findings += _check_groupings(document, policies)
    findings += _check_public_values_grouped(document, policies)
    findings += _check_one_hierarchy_per_field(document, policies)
    resolved, disclosure_findings = _check_disclosure(document, policies)
    findings += disclosure_findings
    findings += _check_budget_limits(document, resolved)
    findings += check_extracts(document, dict(policies.schemas), resolved)
    findings += duplicates(
        [report.name for report in document.reports],
        "report name",
        ("reports",),
        ("name",),
    )
    return resolved, findings


def _check_public_values(document: AgreementDocument, policies: Policies) -> list[Finding]:
    """Each public dimension is a stored quasi-identifier, and its values fit the column."""
    findings: list[Finding] = []
    for column, values in document.public_values.items():
        specs = [
            policies.schemas[d.schema_name].columns[column]
            for d in document.datasets
            if d.schema_name in policies.schemas
            and column in d.stored_fields
            and column in policies.schemas[d.schema_name].columns
        ]
        if not specs:
            findings.append(
                Finding(
                    ("public_values", column), f"{column!r} is not a stored field of any dataset"
                )
            )
            continue
        if any(spec.role != "quasi_identifier" for spec in specs):
            findings.append(
                Finding(
                    ("public_values", column), f"{column!r} is not a quasi_identifier dimension"
                )
            )
            continue
        if len(set(map(str, values))) != len(values):
            findings.append(Finding(("public_values", column), "values must not repeat"))
        for index, value in enumerate(values):
            for spec in specs:
                if spec.codes and value not in spec.code_values:
                    findings.append(
                        Finding(
                            ("public_values", column, index),
                            f"{value!r} is not one of the codes of {column!r}",
                        )
                    )
                    break
                if (
                    spec.pattern
                    and isinstance(value, str)
                    and not re.fullmatch(spec.pattern, value)
                ):
                    findings.append(
                        Finding(
                            ("public_values", column, index),
                            f"{value!r} does not match the pattern of {column!r}",
                        )
                    )
                    break
    return findings


def _schema_of(document: AgreementDocument, index: int, policies: Policies) -> DatasetSchema | None:
    return policies.schemas.get(document.datasets[index].schema_name)


def _check_datasets(document: AgreementDocument, policies: Policies) -> list[Finding]:
    findings: list[Finding] = []
    parties = {party.id: party for party in document.parties}
    findings += duplicates(
        [d.name for d in document.datasets], "dataset name", ("datasets",), ("name",)
    )
    for index, dataset in enumerate(document.datasets):
        base: Loc = ("datasets", index)
        schema = policies.schemas.get(dataset.schema_name)
        if schema is None:
            findings.append(
                Finding((*base, "schema"), _unknown_schema(dataset.schema_name, policies))
            )

        provider = parties.get(dataset.provided_by)
        if provider is None:
            findings.append(
                Finding(
                    (*base, "provided_by"),
                    f"{dataset.provided_by!r} is not a party of this agreement "
                    f"(parties: {', '.join(parties)})",
                )
            )
        elif schema is not None and provider.kind not in schema.providers:
            findings.append(
                Finding(
                    (*base, "provided_by"),
                    f"party {provider.id!r} is {_a(provider.kind)} {provider.kind}, but schema "
                    f"{schema.name!r} may only be provided by: {', '.join(schema.providers)}",
                )
            )

        findings += duplicates(dataset.stored_fields, "stored field", (*base, "stored_fields"))
        if schema is not None:
            findings += _check_stored_fields(base, dataset.stored_fields, schema)
        findings += _check_header_map(base, dataset.header_map, schema)
    return findings


def _a(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _unknown_schema(name: str, policies: Policies) -> str:
    if name in policies.invalid_schemas:
        return f"schema {name!r} has problems of its own (reported with its file)"
    known = ", ".join(sorted(policies.schemas)) or "none"
    return f"unknown schema {name!r} (known schemas: {known})"


def _check_stored_fields(base: Loc, stored: list[str], schema: DatasetSchema) -> list[Finding]:
    findings: list[Finding] = []
    for index, name in enumerate(stored):
        loc: Loc = (*base, "stored_fields", index)
        column = schema.columns.get(name)
        if column is None:
            findings.append(
                Finding(loc, f"field {name!r} is not a column of schema {schema.name!r}")
            )
        elif column.role == "direct_identifier":
            findings.append(
                Finding(
                    loc,
                    f"{name!r} is a direct identifier: it is dropped at upload and can "
                    "never be stored",
                )
            )
    id_column = schema.educator_id_column
    if id_column is not None and id_column not in stored:
        findings.append(
            Finding(
                (*base, "stored_fields"),
                f"the educator_id column {id_column!r} must be stored: it is the only join "
                "key (kept as a pseudonym, never in the clear)",
            )
        )
    return findings


def _header_key(header: str) -> str:
    """How upload headers are matched: ignoring case and surrounding spaces."""
    return header.strip().casefold()


def _check_header_map(
    base: Loc, header_map: Mapping[str, str], schema: DatasetSchema | None
) -> list[Finding]:
    findings: list[Finding] = []
    first_seen: dict[str, str] = {}
    for header, target in header_map.items():
        loc: Loc = (*base, "header_map", header)
        key = _header_key(header)
        if not key:
            findings.append(Finding(loc, "a header name cannot be empty"))
            continue
        if key in first_seen:
            findings.append(
                Finding(
                    loc,
                    f"header {header!r} repeats header {first_seen[key]!r} (headers match "
                    "ignoring case and surrounding spaces)",
                )
            )
            continue
        first_seen[key] = header
        if schema is None:
            continue
        if target not in schema.columns:
            findings.append(
                Finding(
                    loc,
                    f"header {header!r} maps to {target!r}, which is not a column of "
                    f"schema {schema.name!r}",
                )
            )
            continue
        shadowed = next((c for c in schema.columns if c == key and c != target), None)
        if shadowed is not None:
            findings.append(
                Finding(
                    loc,
                    f"header {header!r} is the schema's own column {shadowed!r}; mapping it "
                    f"to {target!r} would hide that column",
                )
            )
    return findings


def _check_linkage(document: AgreementDocument, policies: Policies) -> list[Finding]:
    """Datasets link on the pseudonym only if their IDs normalise identically."""
    findings: list[Finding] = []
    reference: tuple[int, DatasetSchema] | None = None
    for index in range(len(document.datasets)):
        schema = _schema_of(document, index, policies)
        if schema is None or schema.educator_id_column is None:
            continue
        if reference is None:
            reference = (index, schema)
            continue
        first_index, first = reference
        mine = schema.columns[schema.educator_id_column].normalization
        theirs = first.columns[first.educator_id_column or ""].normalization
        if mine != theirs:
            findings.append(
                Finding(
                    ("datasets", index, "schema"),
                    f"schema {schema.name!r} normalises educator IDs differently from schema "
                    f"{first.name!r} (datasets[{first_index}]): pseudonyms would not link",
                )
            )
    return findings


def _check_releases(document: AgreementDocument, policies: Policies) -> list[Finding]:
    findings: list[Finding] = []
    party_ids = {party.id for party in document.parties}
    dataset_names = {d.name for d in document.datasets}
    for party_id, fields in document.releases.items():
        base: Loc = ("releases", party_id)
        if party_id not in party_ids:
            findings.append(
                Finding(
                    base,
                    f"{party_id!r} is not a party of this agreement "
                    f"(parties: {', '.join(sorted(party_ids))})",
                )
            )
        for kind, refs in (("dimensions", fields.dimensions), ("measures", fields.measures)):
            findings += duplicates(refs, "field", (*base, kind))
            for index, ref in enumerate(refs):
                reason = _release_field_problem(document, policies, ref, kind, dataset_names)
                if reason is not None:
                    findings.append(Finding((*base, kind, index), reason))
    return findings


def _release_field_problem(
    document: AgreementDocument,
    policies: Policies,
    ref: str,
    kind: str,
    dataset_names: set[str],
) -> str | None:
    dataset_name, dot, column = ref.rpartition(".")
    if dot and dataset_name not in dataset_names:
        return f"{ref!r} names dataset {dataset_name!r}, which this agreement does not have"
    candidates = [d for d in document.datasets if not dot or d.name == dataset_name]

    # Say why a forbidden field is forbidden before saying it is not stored.
    for dataset in candidates:
        schema = policies.schemas.get(dataset.schema_name)
        spec = schema.columns.get(column) if schema is not None else None
        if spec is not None and spec.role == "educator_id":
            return (
                f"{ref!r} is the educator ID, the pseudonymised join key: it can never be "
                "a release field"
            )
        if spec is not None and spec.role == "direct_identifier":
            return f"{ref!r} is a direct identifier: it is never stored, never released"

    storing = document.datasets_storing(ref)
    if not storing:
        if dot:
            return f"{ref!r} is not a stored field of dataset {dataset_name!r}"
        return f"{ref!r} is not a stored field of any dataset of this agreement"

    for dataset in storing:
        schema = policies.schemas.get(dataset.schema_name)
        spec = schema.columns.get(column) if schema is not None else None
        if spec is None:
            continue  # the dataset's own problems are reported under datasets[...]
        where = f"in dataset {dataset.name!r}"
        if kind == "dimensions":
            if spec.role != "quasi_identifier":
                return (
                    f"{ref!r} is a {spec.role} {where}; dimensions must be quasi_identifier columns"
                )
            if spec.type not in DIMENSION_TYPES:
                return (
                    f"{ref!r} is a {spec.type} column {where}; dimensions must be string, "
                    "integer or boolean columns (a date or number gives a cell per value)"
                )
        elif spec.role not in ("measure", "student_measure"):
            return (
                f"{ref!r} is a {spec.role} {where}; measures must be measure or "
                "student_measure columns"
            )
    return None


def _check_budget_limits(
    document: AgreementDocument, profile: DisclosureProfile | None
) -> list[Finding]:
    """Each limit names a recipient and stays within the agreement's budget: the
    ``period_budget`` when one is declared (limits then apply per school year), else
    the ``privacy_budget``."""
    findings = []
    for party_id, limit in document.budget_limits.items():
        base: Loc = ("budget_limits", party_id)
        if party_id not in document.releases:
            findings.append(
                Finding(base, f"{party_id!r} receives no releases (no releases.{party_id})")
            )
            continue
        if profile is None:
            continue
        name, budget = "privacy_budget", profile.privacy_budget
        if profile.period_budget is not None:
            name, budget = "period_budget", profile.period_budget
        for part in ("epsilon", "delta"):
            if getattr(limit, part) > getattr(budget, part):
                findings.append(
                    Finding(
                        (*base, part),
                        f"the limit's {part} {getattr(limit, part)} exceeds the agreement's "
                        f"{name} {part} {getattr(budget, part)}"
                        + (" (limits apply per school year)" if name == "period_budget" else ""),
                    )
                )
    return findings


def _check_disclosure(
    document: AgreementDocument, policies: Policies
) -> tuple[DisclosureProfile | None, list[Finding]]:
    name = document.disclosure.profile
    profile = policies.profiles.get(name)
    if profile is None:
        if name in policies.invalid_profiles:
            reason = f"profile {name!r} has problems of its own (reported with its file)"
        else:
            known = ", ".join(sorted(policies.profiles)) or "none"
            reason = f"unknown disclosure profile {name!r} (known profiles: {known})"
        return None, [Finding(("disclosure", "profile"), reason)]
    return resolve_disclosure(profile, document.disclosure.overrides)


# --- hierarchies -----------------------------------------------------------------


def _values_of(
    document: AgreementDocument, column: str, spec: ColumnSpec
) -> tuple[HierarchyCode, ...] | None:
    """All the values ``column`` takes under this agreement, when they are listed: the
    agreement's public values, else the schema's codes (booleans: both)."""
    if column in document.public_values:
        return tuple(document.public_values[column])
    if spec.codes:
        return tuple(code for code in spec.code_values if not isinstance(code, float))
    if spec.type == "boolean":
        return (False, True)
    return None


def effective_hierarchies(
    document: AgreementDocument, schemas: Mapping[str, DatasetSchema]
) -> dict[str, dict[str, Hierarchy]]:
    """The hierarchy in force for each stored column that has one, by dataset and column.

    An agreement's ``groupings`` entry for ``dataset.column`` wins over one for the
    plain ``column``, which wins over the schema's; the result keeps only the
    values the agreement lists (its public values), so a program area with none
    of this EPP's programs is not a group here.
    """
    found: dict[str, dict[str, Hierarchy]] = {}
    for dataset in document.datasets:
        schema = schemas.get(dataset.schema_name)
        if schema is None:
            continue
        for column in dataset.stored_fields:
            spec = schema.columns.get(column)
            if spec is None:
                continue
            hierarchy = document.groupings.get(
                f"{dataset.name}.{column}", document.groupings.get(column, spec.hierarchy)
            )
            if hierarchy is None:
                continue
            values = _values_of(document, column, spec)
            if values is not None and not hierarchy.pooled:
                hierarchy = hierarchy.restricted_to(values)
            found.setdefault(dataset.name, {})[column] = hierarchy
    return found


def _column_specs(
    document: AgreementDocument, policies: Policies, ref: str
) -> list[tuple[str, ColumnSpec]]:
    """(dataset name, column spec) of each dataset storing the release field ``ref``."""
    column = ref.rpartition(".")[2]
    specs = []
    for dataset in document.datasets_storing(ref):
        schema = policies.schemas.get(dataset.schema_name)
        spec = schema.columns.get(column) if schema is not None else None
        if spec is not None:
            specs.append((dataset.name, spec))
    return specs


def _check_groupings(document: AgreementDocument, policies: Policies) -> list[Finding]:
    """Each grouping names a stored column and is a valid hierarchy of it."""
    findings: list[Finding] = []
    dataset_names = {d.name for d in document.datasets}
    for ref, hierarchy in document.groupings.items():
        base: Loc = ("groupings", ref)
        dataset_name, dot, column = ref.rpartition(".")
        if dot and dataset_name not in dataset_names:
            findings.append(
                Finding(
                    base,
                    f"{ref!r} names dataset {dataset_name!r}, which this agreement does not have",
                )
            )
            continue
        if not document.datasets_storing(ref):
            where = f"dataset {dataset_name!r}" if dot else "any dataset of this agreement"
            findings.append(Finding(base, f"{ref!r} is not a stored field of {where}"))
            continue
        for _, spec in _column_specs(document, policies, ref):
            for finding in check_hierarchy(
                hierarchy,
                spec,
                name=ref,
                base=base,
                codes=_values_of(document, column, spec),
                codes_are=(
                    f"this agreement's public_values of {column!r}"
                    if column in document.public_values
                    else None
                ),
            ):
                if finding not in findings:  # a plain field over two datasets: say it once
                    findings.append(finding)
    return findings


def _check_public_values_grouped(document: AgreementDocument, policies: Policies) -> list[Finding]:
    """A schema's hierarchy of a column without codes (``program_code``) covers
    every public value the agreement lists for it."""
    findings: list[Finding] = []
    for column, values in document.public_values.items():
        for dataset in document.datasets_storing(column):
            schema = policies.schemas.get(dataset.schema_name)
            spec = schema.columns.get(column) if schema is not None else None
            if (
                spec is None
                or spec.codes  # the schema's own check covers every code
                or spec.hierarchy is None
                or spec.hierarchy.pooled
                or column in document.groupings
                or f"{dataset.name}.{column}" in document.groupings
            ):
                continue
            for index, value in enumerate(values):
                for level in spec.hierarchy.levels:
                    try:
                        spec.hierarchy.parent(value, level.name)
                    except NotFound:
                        finding = Finding(
                            ("public_values", column, index),
                            f"{value!r} is in no group of level {level.name!r} of the hierarchy "
                            f"of {dataset.schema_name}.{column} (policies/datasets/"
                            f"{dataset.schema_name}.yaml): add it there, or declare this "
                            f"agreement's own groupings.{column}",
                        )
                        if finding not in findings:
                            findings.append(finding)
                        break
    return findings


def _check_one_hierarchy_per_field(
    document: AgreementDocument, policies: Policies
) -> list[Finding]:
    """A plain release field stored by several datasets coarsens the same way in each,
    so a cell of that field has one parent."""
    findings: list[Finding] = []
    hierarchies = effective_hierarchies(document, policies.schemas)
    for party_id, fields in document.releases.items():
        for kind, refs in (("dimensions", fields.dimensions), ("measures", fields.measures)):
            for index, ref in enumerate(refs):
                if "." in ref:
                    continue
                used = [
                    (name, hierarchies.get(name, {}).get(ref))
                    for name, _ in _column_specs(document, policies, ref)
                ]
                differing = next((other for other in used[1:] if other[1] != used[0][1]), None)
                if differing is not None:
                    findings.append(
                        Finding(
                            ("releases", party_id, kind, index),
                            f"{ref!r} coarsens differently in dataset {used[0][0]!r} than in "
                            f"dataset {differing[0]!r} (their schemas' hierarchies differ): "
                            f"declare the agreement's own groupings.{ref}, or qualify the field",
                        )
                    )
    return findings
