"""Rules an agreement's ``extracts:`` follow (docs/agreements.md#extracts).

An extract hands teacher-level rows to another party, so its declaration is
checked as strictly as a release allowlist, and more:

- its recipients and approvers are parties; the approving party provided the data
  and is not a recipient; every dataset comes from the approving party or a recipient
  (a third party's data needs its own approval, which one extract cannot carry);
- its datasets are datasets of the agreement whose rows are about teachers, and each
  column it links on (besides the teacher) is stored by two or more of them;
- a field names one stored column of one of its datasets (``dataset.column`` where
  two store it), never the educator ID or a direct identifier, and never a date or
  free text (a date is as good as a name when joined with a staff directory);
- every quasi_identifier column among the fields is declared a quasi-identifier, so
  nothing an outsider could know passes ungeneralised; each is a string, integer or
  boolean column (it must have values to group);
- sensitive fields are measures, not quasi-identifiers; a number field needs bands
  (else every value is its own category); ``l`` is given exactly when there are
  sensitive fields, is at most ``k``, and at most the categories each can take;
- ``k`` is at least PTAC's floor of 3 (the model refuses less). It may be below the
  profile's minimum cell: a table is published to every party, an extract goes to
  one recipient bound by the agreement, and the parties choose its k.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from gateway.agreements.findings import Finding, duplicates
from gateway.agreements.models import (
    AgreementDocument,
    ColumnSpec,
    DatasetSchema,
    DisclosureProfile,
    ExtractSpec,
)
from gateway.agreements.yamldoc import Loc

#: Column types a quasi-identifier of an extract may have (values to group).
GENERALISABLE_TYPES = frozenset({"string", "integer", "boolean"})
#: Units of datasets whose rows are about one teacher.
TEACHER_UNITS = frozenset({"teacher", "candidate", "student_derived"})


@dataclass(frozen=True)
class ExtractField:
    """A field of an extract, resolved: the dataset and column it reads."""

    ref: str
    dataset: str
    column: str
    spec: ColumnSpec


class FieldProblem(ValueError):
    """A field of an extract that does not resolve; the message says why."""


def resolve_field(
    document: AgreementDocument,
    schemas: dict[str, DatasetSchema],
    extract: ExtractSpec,
    ref: str,
) -> ExtractField:
    """The dataset column ``ref`` names within ``extract``; :class:`FieldProblem` if none."""
    dataset_name, dot, column = ref.rpartition(".")
    if dot and dataset_name not in extract.datasets:
        raise FieldProblem(
            f"{ref!r} names dataset {dataset_name!r}, which this extract does not read"
        )
    by_name = {d.name: d for d in document.datasets}
    storing = [
        by_name[name]
        for name in (extract.datasets if not dot else [dataset_name])
        if name in by_name and column in by_name[name].stored_fields
    ]
    for dataset in storing:
        schema = schemas.get(dataset.schema_name)
        role = schema.columns[column].role if schema and column in schema.columns else None
        if role == "educator_id":
            raise FieldProblem(
                f"{ref!r} is the educator ID: the file carries the recipient's own teacher "
                "ID instead"
            )
        if role == "direct_identifier":
            raise FieldProblem(f"{ref!r} is a direct identifier: never stored, never released")
    if not storing:
        where = f"dataset {dataset_name!r}" if dot else "any dataset of this extract"
        raise FieldProblem(f"{ref!r} is not a stored field of {where}")
    if len(storing) > 1 and column not in extract.link_on:
        names = " and ".join(repr(d.name) for d in storing)
        raise FieldProblem(f"{ref!r} is stored by datasets {names}: write it as dataset.column")
    dataset = storing[0]
    schema = schemas.get(dataset.schema_name)
    if schema is None or column not in schema.columns:
        raise FieldProblem(f"{ref!r}: the schema of dataset {dataset.name!r} has problems")
    return ExtractField(ref=ref, dataset=dataset.name, column=column, spec=schema.columns[column])


def check_extracts(
    document: AgreementDocument,
    schemas: dict[str, DatasetSchema],
    profile: DisclosureProfile | None,
) -> list[Finding]:
    """Every rule the agreement's extracts break."""
    findings = duplicates(
        [e.name for e in document.extracts], "extract name", ("extracts",), ("name",)
    )
    for index, extract in enumerate(document.extracts):
        findings += _check_extract(document, schemas, profile, extract, ("extracts", index))
    return findings


def _check_extract(
    document: AgreementDocument,
    schemas: dict[str, DatasetSchema],
    profile: DisclosureProfile | None,
    extract: ExtractSpec,
    base: Loc,
) -> list[Finding]:
    findings: list[Finding] = []
    parties = {party.id: party for party in document.parties}
    findings += duplicates(extract.recipients, "recipient", (*base, "recipients"))
    for index, recipient in enumerate(extract.recipients):
        if recipient not in parties:
            findings.append(
                Finding(
                    (*base, "recipients", index),
                    f"{recipient!r} is not a party of this agreement "
                    f"(parties: {', '.join(parties)})",
                )
            )
    approvers = extract.approvers
    if approvers.party not in parties:
        findings.append(
            Finding(
                (*base, "approvers", "party"),
                f"{approvers.party!r} is not a party of this agreement "
                f"(parties: {', '.join(parties)})",
            )
        )
    elif approvers.party in extract.recipients:
        findings.append(
            Finding(
                (*base, "approvers", "party"),
                f"{approvers.party!r} is also a recipient: the party that provided the data "
                "approves, and another party receives it",
            )
        )
    findings += duplicates(approvers.people, "approver", (*base, "approvers", "people"))
    if approvers.required > len(set(approvers.people)):
        findings.append(
            Finding(
                (*base, "approvers", "required"),
                f"{approvers.required} approvals are required but only "
                f"{len(set(approvers.people))} people may approve",
            )
        )

    approver_ok = approvers.party in parties and approvers.party not in extract.recipients
    findings += duplicates(extract.datasets, "dataset", (*base, "datasets"))
    by_name = {d.name: d for d in document.datasets}
    readable: list[str] = []
    for index, name in enumerate(extract.datasets):
        loc: Loc = (*base, "datasets", index)
        dataset = by_name.get(name)
        if dataset is None:
            known = ", ".join(by_name)
            findings.append(Finding(loc, f"{name!r} is not a dataset of this agreement ({known})"))
            continue
        schema = schemas.get(dataset.schema_name)
        if schema is None:
            continue  # reported under datasets[...]
        if schema.unit not in TEACHER_UNITS or schema.educator_id_column is None:
            findings.append(
                Finding(
                    loc,
                    f"dataset {name!r} holds {schema.unit} rows, not rows about educators: "
                    "an extract joins rows per teacher",
                )
            )
            continue
        if (
            approver_ok
            and dataset.provided_by != approvers.party
            and dataset.provided_by not in extract.recipients
        ):
            findings.append(
                Finding(
                    loc,
                    f"dataset {name!r} is provided by {dataset.provided_by!r}, which neither "
                    f"approves this extract ({approvers.party!r}) nor receives it",
                )
            )
        readable.append(name)
    if (
        approver_ok
        and readable
        and not any(by_name[name].provided_by == approvers.party for name in readable)
    ):
        findings.append(
            Finding(
                (*base, "approvers", "party"),
                f"{approvers.party!r} provides none of this extract's datasets: the providing "
                "party approves",
            )
        )
    if len(readable) != len(extract.datasets):
        return findings  # fields cannot be resolved against missing datasets

    findings += duplicates(extract.link_on, "link column", (*base, "link_on"))
    for index, column in enumerate(extract.link_on):
        storing = [n for n in readable if column in by_name[n].stored_fields]
        if len(storing) < 2:
            findings.append(
                Finding(
                    (*base, "link_on", index),
                    f"{column!r} is stored by {len(storing)} of this extract's datasets; rows "
                    "link on a column two or more of them store",
                )
            )

    resolved: dict[str, ExtractField] = {}
    findings += duplicates(extract.fields, "field", (*base, "fields"))
    for index, ref in enumerate(extract.fields):
        loc = (*base, "fields", index)
        try:
            field = resolve_field(document, dict(schemas), extract, ref)
        except FieldProblem as exc:
            findings.append(Finding(loc, str(exc)))
            continue
        role, kind = field.spec.role, field.spec.type
        if role == "educator_id":
            findings.append(
                Finding(
                    loc,
                    f"{ref!r} is the educator ID: the file carries the recipient's own "
                    "teacher ID instead",
                )
            )
        elif role == "direct_identifier":
            findings.append(
                Finding(loc, f"{ref!r} is a direct identifier: never stored, never released")
            )
        elif kind == "date":
            findings.append(
                Finding(
                    loc,
                    f"{ref!r} is a date: a date identifies a teacher with a calendar; leave it out",
                )
            )
        else:
            resolved[ref] = field
            columns = [f.column for f in resolved.values()]
            if columns.count(field.column) > 1:
                findings.append(
                    Finding(loc, f"{ref!r} would be a second column {field.column!r} of the file")
                )

    findings += _check_roles(extract, resolved, base)
    findings += _check_bands(extract, resolved, base)
    findings += _check_k_and_l(extract, resolved, profile, base)
    return findings


def _check_roles(extract: ExtractSpec, fields: dict[str, ExtractField], base: Loc) -> list[Finding]:
    findings: list[Finding] = []
    declared = set(extract.quasi_identifiers)
    for index, ref in enumerate(extract.fields):
        field = fields.get(ref)
        if field is not None and field.spec.role == "quasi_identifier" and ref not in declared:
            findings.append(
                Finding(
                    (*base, "fields", index),
                    f"{ref!r} is a quasi_identifier column: list it under quasi_identifiers, "
                    "so it is generalised before anyone receives it",
                )
            )
    findings += duplicates(
        extract.quasi_identifiers, "quasi-identifier", (*base, "quasi_identifiers")
    )
    for index, ref in enumerate(extract.quasi_identifiers):
        loc: Loc = (*base, "quasi_identifiers", index)
        field = fields.get(ref)
        if ref not in extract.fields:
            findings.append(Finding(loc, f"{ref!r} is not one of this extract's fields"))
        elif field is not None and field.spec.type not in GENERALISABLE_TYPES:
            findings.append(
                Finding(
                    loc,
                    f"{ref!r} is a {field.spec.type} column; a quasi-identifier must be a "
                    "string, integer or boolean column (values to group)",
                )
            )
        elif field is not None and field.spec.role in ("measure", "student_measure"):
            findings.append(Finding(loc, f"{ref!r} is a {field.spec.role}; list it as sensitive"))
    findings += duplicates(extract.sensitive, "sensitive field", (*base, "sensitive"))
    for index, ref in enumerate(extract.sensitive):
        loc = (*base, "sensitive", index)
        field = fields.get(ref)
        if ref not in extract.fields:
            findings.append(Finding(loc, f"{ref!r} is not one of this extract's fields"))
        elif ref in declared:
            findings.append(
                Finding(loc, f"{ref!r} is a quasi-identifier; it cannot also be sensitive")
            )
        elif field is not None and field.spec.role not in ("measure", "student_measure"):
            findings.append(
                Finding(loc, f"{ref!r} is a {field.spec.role}; sensitive fields are measures")
            )
        elif field is not None and field.spec.type == "number" and ref not in extract.bands:
            findings.append(
                Finding(
                    loc,
                    f"{ref!r} is a number: declare its bands (bands.{ref}), else every value "
                    "is its own category and l-diversity means nothing",
                )
            )
    return findings


def _check_bands(extract: ExtractSpec, fields: dict[str, ExtractField], base: Loc) -> list[Finding]:
    findings: list[Finding] = []
    for ref, cuts in extract.bands.items():
        loc: Loc = (*base, "bands", ref)
        field = fields.get(ref)
        if ref not in extract.fields:
            findings.append(Finding(loc, f"{ref!r} is not one of this extract's fields"))
            continue
        if field is not None and field.spec.type not in ("number", "integer"):
            findings.append(
                Finding(loc, f"{ref!r} is a {field.spec.type} column; only numbers have bands")
            )
            continue
        if field is not None and field.spec.codes:
            findings.append(Finding(loc, f"{ref!r} has codes; bands are for numbers without them"))
            continue
        if not cuts:
            findings.append(Finding(loc, "list at least one cut point"))
        elif any(later <= earlier for earlier, later in itertools.pairwise(cuts)):
            findings.append(Finding(loc, "cut points must rise strictly"))
        elif field is not None and field.spec.range is not None:
            low, high = field.spec.range.min, field.spec.range.max
            outside = [
                c for c in cuts if (low is not None and c <= low) or (high is not None and c > high)
            ]
            if outside:
                findings.append(
                    Finding(
                        loc,
                        f"cut point {outside[0]!r} is outside the range of {ref!r} "
                        f"({low} to {high}): it would make an empty band",
                    )
                )
    return findings


def categories(extract: ExtractSpec, field: ExtractField) -> int | None:
    """How many values a sensitive field can take in the file; None if unbounded."""
    if field.ref in extract.bands:
        return len(extract.bands[field.ref]) + 1
    if field.spec.codes:
        return len(field.spec.codes)
    if field.spec.type == "boolean":
        return 2
    return None


def _check_k_and_l(
    extract: ExtractSpec,
    fields: dict[str, ExtractField],
    profile: DisclosureProfile | None,
    base: Loc,
) -> list[Finding]:
    findings: list[Finding] = []
    if extract.sensitive and extract.l is None:
        findings.append(
            Finding(
                (*base, "sensitive"), "sensitive fields need l (the values each class must show)"
            )
        )
    if extract.l is not None:
        if not extract.sensitive:
            findings.append(Finding((*base, "l"), "l is given but no field is sensitive"))
        if extract.l > extract.k:
            findings.append(
                Finding(
                    (*base, "l"),
                    f"l {extract.l} exceeds k {extract.k}: a class of k teachers cannot "
                    "show more values",
                )
            )
        for ref in extract.sensitive:
            field = fields.get(ref)
            most = categories(extract, field) if field is not None else None
            if most is not None and extract.l > most:
                findings.append(
                    Finding(
                        (*base, "l"),
                        f"l {extract.l} exceeds the {most} values {ref!r} can take: no class "
                        "could ever qualify",
                    )
                )
    return findings
