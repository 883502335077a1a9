"""Rules inside the policy files: dataset schemas and disclosure profiles.

Also the merge of an agreement's disclosure overrides onto its profile, since
the merged profile must pass the same rules as a profile file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from gateway.agreements.findings import Finding, allowed_fields, describe_error, duplicates
from gateway.agreements.hierarchy_checks import check_hierarchy
from gateway.agreements.models import (
    MAX_PRECISION,
    ColumnSpec,
    DatasetSchema,
    DisclosureProfile,
    ValueRange,
)
from gateway.agreements.yamldoc import Loc, format_path

# Pseudonyms are written in lower-case letters (a..p) only. An educator ID that
# must contain a digit can therefore never appear inside a pseudonym, in any
# case, which lets the leak scanners search released text for raw IDs. These
# letter-only strings probe that a schema's pattern really demands a digit.
_LETTER_ONLY_PROBES = tuple(
    (letters * 64)[:length]
    for letters in ("A", "Z", "a", "p", "ABCDEFGHIJKLMNOP", "abcdefghijklmnop")
    for length in range(1, 65)
)


# --- dataset schemas ---------------------------------------------------------------


def check_dataset_schema(schema: DatasetSchema) -> list[Finding]:
    """Every inconsistency inside one dataset schema."""
    findings: list[Finding] = []
    findings += duplicates(schema.providers, "party kind", ("providers",))

    for index, column in enumerate(schema.key):
        loc: Loc = ("key", index)
        if column not in schema.columns:
            findings.append(Finding(loc, f"key column {column!r} is not a column of this schema"))
        elif schema.columns[column].role == "direct_identifier":
            findings.append(
                Finding(loc, f"key column {column!r} is a direct identifier, dropped at upload")
            )
    findings += duplicates(schema.key, "key column", ("key",))

    id_columns = schema.columns_with_role("educator_id")
    for extra in id_columns[1:]:
        findings.append(
            Finding(
                ("columns", extra, "role"),
                f"only one column may be the educator_id (the join key); {id_columns[0]!r} is",
            )
        )
    if schema.unit == "position" and id_columns:
        # A row about a person (an educator) is never released exactly.
        findings.append(
            Finding(
                ("unit",),
                "a dataset of positions carries no educator_id: its rows are about posted "
                f"positions, not people ({id_columns[0]!r} is an educator_id)",
            )
        )
    for name, spec in schema.columns.items():
        findings += _check_column(schema, name, spec)
    return findings


def _check_column(schema: DatasetSchema, name: str, spec: ColumnSpec) -> list[Finding]:
    base: Loc = ("columns", name)
    findings: list[Finding] = []

    if spec.role == "educator_id":
        findings += _check_educator_id(base, spec)
    elif spec.normalization is not None:
        findings.append(
            Finding((*base, "normalization"), "only the educator_id column is normalised")
        )
    if spec.pattern is not None and spec.type != "string":
        findings.append(
            Finding((*base, "pattern"), f"a pattern applies to string columns, not {spec.type}")
        )
    if spec.role == "direct_identifier" and spec.required:
        # The gateway must never be the reason a party exports names.
        findings.append(
            Finding(
                (*base, "required"),
                "a direct identifier cannot be required: it is only ever dropped",
            )
        )

    if spec.precision is not None:
        if spec.role not in ("measure", "student_measure") or spec.type not in (
            "integer",
            "number",
        ):
            findings.append(
                Finding((*base, "precision"), "only a numeric measure has a display precision")
            )
        elif not 0 <= spec.precision <= MAX_PRECISION:
            findings.append(
                Finding(
                    (*base, "precision"),
                    f"precision is the number of decimals shown, 0 to {MAX_PRECISION}, "
                    f"got {spec.precision}",
                )
            )

    count_column = spec.student_count_column
    if spec.role == "student_measure":
        if count_column is None:
            findings.append(
                Finding(
                    (*base, "student_count_column"),
                    "a student_measure must name its student_count_column "
                    "(the students behind each value, for min_cell_students)",
                )
            )
        elif count_column not in schema.columns:
            findings.append(
                Finding(
                    (*base, "student_count_column"),
                    f"student count column {count_column!r} is not a column of this schema",
                )
            )
        else:
            counted = schema.columns[count_column]
            if counted.type != "integer" or counted.role != "measure":
                findings.append(
                    Finding(
                        (*base, "student_count_column"),
                        f"student count column {count_column!r} must be an integer measure",
                    )
                )
    elif count_column is not None:
        findings.append(
            Finding(
                (*base, "student_count_column"),
                "only a student_measure has a student_count_column",
            )
        )

    code_findings = _check_codes_and_range(base, spec)
    findings += code_findings
    codes_valid = not any(f.loc[: len(base) + 1] == (*base, "codes") for f in code_findings)
    # A hierarchy is checked against the column's codes once they are valid, so a bad
    # code is one problem, not one more for each level that groups it.
    if spec.hierarchy is not None and codes_valid:
        findings += check_hierarchy(
            spec.hierarchy,
            spec,
            name=name,
            base=(*base, "hierarchy"),
            # A number column's codes are floats; check_hierarchy refuses its hierarchy.
            codes=[c for c in spec.code_values if not isinstance(c, float)] if spec.codes else None,
        )
    return findings


def _check_educator_id(base: Loc, spec: ColumnSpec) -> list[Finding]:
    findings: list[Finding] = []
    if spec.type != "string":
        findings.append(
            Finding(
                (*base, "type"),
                "the educator_id column must be of type string (IDs keep leading zeros)",
            )
        )
    if spec.normalization is None:
        findings.append(
            Finding(
                (*base, "normalization"),
                "the educator_id column needs a normalization (trim, upper, "
                "strip_leading_zeros): the same teacher must hash the same in every file",
            )
        )
    if spec.pattern is None:
        findings.append(Finding((*base, "pattern"), "the educator_id column needs a pattern"))
    elif any(re.fullmatch(spec.pattern, probe) for probe in _LETTER_ONLY_PROBES):
        findings.append(
            Finding(
                (*base, "pattern"),
                "the educator_id pattern must require at least one digit: pseudonyms are "
                "written in letters only, so an ID with a digit can never appear inside one",
            )
        )
    return findings


def _matches_type(value: Any, column_type: str) -> bool:
    if isinstance(value, bool):
        return column_type == "boolean"
    if column_type == "string":
        return isinstance(value, str)
    if column_type == "integer":
        return isinstance(value, int)
    if column_type == "number":
        return isinstance(value, int | float)
    return False  # booleans handled above; dates are never coded


def _check_codes_and_range(base: Loc, spec: ColumnSpec) -> list[Finding]:
    findings: list[Finding] = []
    bounds = spec.range
    if bounds is not None:
        loc: Loc = (*base, "range")
        if spec.type not in ("integer", "number"):
            findings.append(Finding(loc, f"a range applies to numeric columns, not {spec.type}"))
        elif bounds.min is None and bounds.max is None:
            findings.append(Finding(loc, "a range needs min, max or both"))
        else:
            for bound in ("min", "max"):
                value = getattr(bounds, bound)
                if value is not None and not _matches_type(value, spec.type):
                    findings.append(
                        Finding((*loc, bound), f"{bound} {value!r} is not a {spec.type}")
                    )
            if bounds.min is not None and bounds.max is not None and bounds.min > bounds.max:
                findings.append(
                    Finding(loc, f"min {bounds.min!r} is greater than max {bounds.max!r}")
                )

    for index, code in enumerate(spec.codes or ()):
        loc = (*base, "codes", index)
        if not _matches_type(code.value, spec.type):
            findings.append(
                Finding(loc, f"code {code.value!r} is not a {spec.type} (the column's type)")
            )
        elif isinstance(code.value, int | float) and not _within(code.value, bounds):
            findings.append(Finding(loc, f"code {code.value!r} lies outside the range"))
    findings += duplicates(spec.code_values, "code", (*base, "codes"))
    if spec.codes is not None and not spec.codes:
        findings.append(Finding((*base, "codes"), "codes, when given, must list at least one"))

    if spec.ordinal:
        ordered_range = (
            spec.type == "integer"
            and bounds is not None
            and bounds.min is not None
            and bounds.max is not None
        )
        if not spec.codes and not ordered_range:
            findings.append(
                Finding(
                    (*base, "ordinal"),
                    "an ordinal column needs its ordered values: codes, or an integer "
                    "range with min and max",
                )
            )
    return findings


def _within(value: float, bounds: ValueRange | None) -> bool:
    if bounds is None:
        return True
    return (bounds.min is None or value >= bounds.min) and (
        bounds.max is None or value <= bounds.max
    )


# --- disclosure profiles ----------------------------------------------------------


def check_disclosure_profile(profile: DisclosureProfile) -> list[Finding]:
    """Rules linking a profile's fields (single-field bounds are in the model)."""
    findings = []
    budget, cap = profile.privacy_budget, profile.per_release_cap
    for part in ("epsilon", "delta"):
        if getattr(cap, part) > getattr(budget, part):
            findings.append(
                Finding(
                    ("per_release_cap", part),
                    f"per_release_cap {part} {getattr(cap, part)} exceeds the total "
                    f"privacy_budget {part} {getattr(budget, part)}",
                    related=(("privacy_budget", part),),
                )
            )
    findings += _check_period_budget(profile)
    floor = profile.per_release_minimum
    if floor.epsilon > cap.epsilon:
        findings.append(
            Finding(
                ("per_release_minimum", "epsilon"),
                f"per_release_minimum epsilon {floor.epsilon} exceeds per_release_cap "
                f"epsilon {cap.epsilon}: no release could be asked",
                related=(("per_release_cap", "epsilon"),),
            )
        )
    if profile.floor_delta > cap.delta:
        findings.append(
            Finding(
                ("floor_delta",),
                f"floor_delta {profile.floor_delta} exceeds per_release_cap delta "
                f"{cap.delta}: every release spends floor_delta, so none would fit",
                related=(("per_release_cap", "delta"),),
            )
        )
    return findings


def _check_period_budget(profile: DisclosureProfile) -> list[Finding]:
    """A school year's budget is spendable (delta above 0: every release spends
    floor_delta), within the lifetime cap, and holds at least one release of the cap."""
    period = profile.period_budget
    if period is None:
        return []
    findings = []
    if period.delta == 0:
        findings.append(
            Finding(
                ("period_budget", "delta"),
                "period_budget delta must be greater than 0: every release spends "
                "floor_delta, so none would fit",
            )
        )
    for part in ("epsilon", "delta"):
        per_year, lifetime = getattr(period, part), getattr(profile.privacy_budget, part)
        cap = getattr(profile.per_release_cap, part)
        if per_year > lifetime:
            findings.append(
                Finding(
                    ("period_budget", part),
                    f"period_budget {part} {per_year} exceeds the lifetime privacy_budget "
                    f"{part} {lifetime}",
                    related=(("privacy_budget", part),),
                )
            )
        if cap > per_year and per_year > 0:
            findings.append(
                Finding(
                    ("per_release_cap", part),
                    f"per_release_cap {part} {cap} exceeds the period_budget {part} "
                    f"{per_year}: a release may spend at most one school year's budget",
                    related=(("period_budget", part),),
                )
            )
    return findings


def merge_overrides(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` laid over it; nested mappings merge key by key,
    anything else is replaced whole."""
    merged = dict(base)
    for key, value in overrides.items():
        current = merged.get(key)
        if isinstance(current, Mapping) and isinstance(value, Mapping):
            merged[key] = merge_overrides(current, value)
        else:
            merged[key] = value
    return merged


def resolve_disclosure(
    profile: DisclosureProfile, overrides: Mapping[str, Any]
) -> tuple[DisclosureProfile | None, list[Finding]]:
    """``profile`` with an agreement's ``overrides`` merged in, or the findings that
    prevent it. Findings are paths in the agreement: the override responsible when
    there is one, otherwise ``disclosure.profile``."""
    if "name" in overrides:
        return None, [
            Finding(
                ("disclosure", "overrides", "name"),
                "a profile's name cannot be overridden: choose the profile with disclosure.profile",
            )
        ]
    merged = merge_overrides(profile.model_dump(), overrides)
    try:
        resolved = DisclosureProfile.model_validate(merged)
    except ValidationError as exc:
        findings = []
        for error in exc.errors():
            loc = tuple(error["loc"])
            reason = describe_error(error, DisclosureProfile, loc)
            if error["type"] == "extra_forbidden":
                reason = _unknown_override_reason(loc)
            findings.append(_blame(Finding(loc, reason), overrides, profile.name))
        return None, findings
    return resolved, [
        _blame(finding, overrides, profile.name) for finding in check_disclosure_profile(resolved)
    ]


def _unknown_override_reason(loc: Loc) -> str:
    parent = allowed_fields(DisclosureProfile, loc[:-1])
    where = f"a field of {format_path(loc[:-1])}" if loc[:-1] else "a disclosure profile field"
    return f"{loc[-1]!r} is not {where} (fields: {', '.join(parent)})"


def _blame(finding: Finding, overrides: Mapping[str, Any], profile_name: str) -> Finding:
    for loc in (finding.loc, *finding.related):
        overridden = _overridden_prefix(overrides, loc)
        if overridden is not None:
            return Finding(("disclosure", "overrides", *overridden), finding.reason)
    return Finding(("disclosure", "profile"), f"profile {profile_name!r}: {finding.reason}")


def _overridden_prefix(overrides: Mapping[str, Any], loc: Loc) -> Loc | None:
    """The longest prefix of ``loc`` the overrides set, or None if they set none of it."""
    node: Any = overrides
    found: Loc | None = None
    for end, part in enumerate(loc, start=1):
        if not isinstance(node, Mapping) or part not in node:
            break
        node = node[part]
        found = loc[:end]
    return found
