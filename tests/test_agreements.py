"""Agreements as code: the examples load, and every broken rule is reported precisely."""

from __future__ import annotations

import functools
import re
import shutil
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from gateway.agreements import (
    Agreement,
    DisclosureProfile,
    Problem,
    check_agreements,
    load_registry,
    yamldoc,
)
from gateway.agreements import models as agreement_models
from gateway.agreements.policy_checks import merge_overrides, resolve_disclosure
from gateway.agreements.yamldoc import YamlSyntaxError, format_path, parse_yaml
from gateway.errors import AgreementInvalid, NotFound

ROOT = Path(__file__).resolve().parent.parent
AGREEMENTS = ROOT / "agreements"
POLICIES = ROOT / "policies"
BROKEN = Path(__file__).resolve().parent / "fixtures" / "broken_agreements"
DOCS = ROOT / "docs" / "agreements.md"

EXAMPLES = {
    "calibration-lakeshore-riverbend",
    "sped-pipeline-northfield-tricounty",
    "diversity-cedar-valley-harmon",
    "student-teaching-bayview-eastport",
}
CALIBRATION = AGREEMENTS / "calibration-lakeshore-riverbend.yaml"


def variant(folder: Path, stem: str, *replacements: tuple[str, str]) -> Path:
    """The calibration example under a new id, with each (old, new) text replaced once."""
    text = CALIBRATION.read_text().replace("id: calibration-lakeshore-riverbend", f"id: {stem}", 1)
    for old, new in replacements:
        assert old in text, old
        text = text.replace(old, new, 1)
    path = folder / f"{stem}.yaml"
    path.write_text(text)
    return path


def only_problem(problems: list[Problem]) -> Problem:
    assert len(problems) == 1, "\n".join(map(str, problems))
    return problems[0]


# --- the examples --------------------------------------------------------------------


def test_examples_and_policies_check_clean() -> None:
    registry, problems = check_agreements(AGREEMENTS, POLICIES)
    assert problems == []
    assert set(registry.agreements) == EXAMPLES
    assert set(registry.schemas) == {
        "evaluations",
        "value_added",
        "observations",
        "student_surveys",
        "staffing",
        "vacancies",
        "completers",
        "candidate_interest",
    }
    assert {"standard", "strict"} <= set(registry.profiles)


def test_load_registry_resolves_disclosure_and_hashes_the_file() -> None:
    registry = load_registry(AGREEMENTS, POLICIES)
    agreement = registry.agreement("calibration-lakeshore-riverbend")
    disclosure = agreement.resolved_disclosure
    # The override raises the total epsilon; delta and everything else come from "standard".
    assert disclosure.name == "standard"
    assert disclosure.privacy_budget.epsilon == Decimal("4.0")
    assert disclosure.privacy_budget.delta == Decimal("0.000001")
    assert disclosure.per_release_cap.epsilon == Decimal("1.0")
    assert disclosure.min_cell_teachers == 10
    assert len(agreement.content_hash) == 64
    assert agreement.source_path == CALIBRATION
    assert [r.name for r in agreement.reports] == ["performance", "calibration"]

    diversity = registry.agreement("diversity-cedar-valley-harmon").resolved_disclosure
    assert (diversity.name, diversity.min_cell_teachers) == ("strict", 20)
    assert diversity.privacy_budget.epsilon == Decimal("2.5")


def test_examples_cover_the_four_partnerships() -> None:
    registry = load_registry(AGREEMENTS, POLICIES)
    schemas_of = {
        agreement.id: {d.schema_name for d in agreement.datasets}
        for agreement in registry.agreements.values()
    }
    assert schemas_of["calibration-lakeshore-riverbend"] == {
        "observations",
        "completers",
        "evaluations",
    }
    assert schemas_of["sped-pipeline-northfield-tricounty"] == {
        "vacancies",
        "candidate_interest",
        "completers",
        "staffing",
    }
    assert schemas_of["diversity-cedar-valley-harmon"] == {
        "candidate_interest",
        "completers",
        "staffing",
        "evaluations",
    }
    assert schemas_of["student-teaching-bayview-eastport"] == {
        "completers",
        "staffing",
        "evaluations",
        "value_added",
        "student_surveys",
        "observations",
    }
    for agreement in registry.agreements.values():
        assert sorted(p.kind for p in agreement.parties) == ["district", "epp"]
        assert set(agreement.releases) == {p.id for p in agreement.parties}


def test_agreement_lookups() -> None:
    registry = load_registry(AGREEMENTS, POLICIES)
    agreement = registry.agreement("calibration-lakeshore-riverbend")
    assert agreement.party("riverbend-sd").kind == "district"
    assert agreement.dataset("epp_observations").schema_name == "observations"
    assert agreement.dataset("completers").schema_name == "completers"  # defaults to the name
    assert registry.schema_for(agreement.dataset("epp_observations")).name == "observations"
    assert [d.name for d in agreement.datasets_storing("score")] == [
        "epp_observations",
        "district_observations",
    ]
    assert [d.name for d in agreement.datasets_storing("evaluations.summative_rating")] == [
        "evaluations"
    ]
    assert agreement.datasets_storing("completers.score") == ()
    assert agreement.recipient_fields("lakeshore-u").measures == [
        "score",
        "evaluations.summative_rating",
    ]
    assert agreement.in_force(date(2027, 1, 1))
    assert not agreement.in_force(date(2029, 7, 1))

    with pytest.raises(NotFound, match="no party 'nobody'"):
        agreement.party("nobody")
    with pytest.raises(NotFound, match="no dataset 'grades'"):
        agreement.dataset("grades")
    with pytest.raises(NotFound, match="no agreement 'nope'"):
        registry.agreement("nope")
    with pytest.raises(NotFound, match="no column 'gpa'"):
        registry.schema("completers").column("gpa")


def test_schema_helpers() -> None:
    registry = load_registry(AGREEMENTS, POLICIES)
    evaluations = registry.schema("evaluations")
    assert evaluations.educator_id_column == "educator_id"
    assert evaluations.direct_identifiers == ("first_name", "last_name", "birth_date")
    assert "summative_rating" in evaluations.measures
    assert registry.schema("vacancies").educator_id_column is None
    assert registry.schema("value_added").student_measures == ("growth_score",)
    assert registry.schema("completers").direct_identifiers == ("first_name", "last_name", "email")
    rating = evaluations.column("summative_rating")
    assert rating.ordinal and rating.code_values == (1, 2, 3, 4)


# --- broken agreements ------------------------------------------------------------------

# (fixture stem, YAML path, distinctive part of the reason, line)
BROKEN_CASES = [
    ("yaml-syntax-error", "", "expected ',' or ']'", 81),
    ("unknown-field", "renewal", "unknown field 'renewal' (allowed: id, version", 19),
    ("missing-title", "title", "missing required field 'title'", 3),
    ("party-kind-invalid", "parties[0].kind", "'district' or 'epp', got 'university'", 16),
    ("duplicate-party", "parties[2].id", "party id 'riverbend-sd' repeats parties[1].id", 18),
    ("duplicate-yaml-key", "version", "key 'version' is written twice", 5),
    ("stem-mismatch", "id", "must equal the file name without extension ('stem-mismatch')", 3),
    ("ends-before-effective", "ends", "ends (2025-06-30) must be after effective (2026-07-01)", 19),
    ("provider-not-a-party", "datasets[1].provided_by", "'riverbend-sd-118' is not a party", 36),
    (
        "provider-kind-not-allowed",
        "datasets[3].provided_by",
        "schema 'evaluations' may only be provided by: district",
        60,
    ),
    ("unknown-schema", "datasets[1].schema", "unknown schema 'observation'", 35),
    ("duplicate-dataset-name", "datasets[1].name", "'epp_observations' repeats datasets[0]", 34),
    (
        "stored-field-not-in-schema",
        "datasets[2].stored_fields[3]",
        "field 'gpa' is not a column of schema 'completers'",
        49,
    ),
    (
        "direct-identifier-stored",
        "datasets[3].stored_fields[1]",
        "'last_name' is a direct identifier",
        63,
    ),
    (
        "educator-id-not-stored",
        "datasets[2].stored_fields",
        "educator_id column 'educator_id' must be stored",
        49,
    ),
    (
        "header-map-target-unknown",
        'datasets[3].header_map["Yrs Exp"]',
        "maps to 'experience_years', which is not a column of schema 'evaluations'",
        76,
    ),
    (
        "header-map-duplicate",
        'datasets[1].header_map[" DOMAIN "]',
        "repeats header 'Domain' (headers match ignoring case",
        45,
    ),
    ("release-party-unknown", "releases.state-board", "'state-board' is not a party", 82),
    (
        "recipient-field-not-stored",
        "releases.riverbend-sd.dimensions[4]",
        "'district_code' is not a stored field of any dataset",
        83,
    ),
    (
        "educator-id-released",
        "releases.lakeshore-u.dimensions[1]",
        "can never be a release field",
        80,
    ),
    (
        "measure-as-dimension",
        "releases.lakeshore-u.dimensions[5]",
        "'summative_rating' is a measure in dataset 'evaluations'; dimensions must be",
        80,
    ),
    ("unknown-profile", "disclosure.profile", "unknown disclosure profile 'lenient'", 86),
    (
        "unknown-override",
        "disclosure.overrides.min_cell_size",
        "'min_cell_size' is not a disclosure profile field",
        91,
    ),
    (
        "min-cell-below-floor",
        "disclosure.overrides.min_cell_teachers",
        "at least 3 (PTAC's absolute floor), got 2",
        91,
    ),
    (
        "cap-above-budget",
        "disclosure.overrides.per_release_cap.epsilon",
        "per_release_cap epsilon 5.0 exceeds the total privacy_budget epsilon 4.0",
        91,
    ),
    ("duplicate-report", "reports[1].name", "report name 'rubric_alignment' repeats", 95),
]


@pytest.mark.parametrize(
    ("stem", "path", "reason", "line"), BROKEN_CASES, ids=[c[0] for c in BROKEN_CASES]
)
def test_broken_agreement_reports_exactly_its_defect(
    stem: str, path: str, reason: str, line: int
) -> None:
    file = BROKEN / f"{stem}.yaml"
    registry, problems = check_agreements(file, POLICIES)
    problem = only_problem(problems)
    assert (problem.file, problem.path, problem.line) == (str(file), path, line)
    assert reason in problem.reason
    assert registry.agreements == {}


def test_every_broken_fixture_is_listed() -> None:
    assert {p.stem for p in BROKEN.glob("*.yaml")} == {case[0] for case in BROKEN_CASES}


def test_broken_folder_reports_every_file_and_loads_nothing() -> None:
    registry, problems = check_agreements(BROKEN, POLICIES)
    assert registry.agreements == {}
    assert len(problems) == len(BROKEN_CASES)
    assert [p.file for p in problems] == sorted(p.file for p in problems)  # file order
    with pytest.raises(AgreementInvalid) as raised:
        load_registry(BROKEN, POLICIES)
    assert raised.value.message.startswith(f"{len(BROKEN_CASES)} problem(s) in the agreement files")
    assert raised.value.details == [str(p) for p in problems]


def test_problem_renders_file_line_path_reason() -> None:
    problem = Problem("agreements/x.yaml", "datasets[1].stored_fields[3]", 12, "bad")
    assert str(problem) == "agreements/x.yaml:12: datasets[1].stored_fields[3]: bad"
    assert str(Problem("a.yaml", "", None, "empty")) == "a.yaml: empty"
    assert str(Problem("a.yaml", "", 4, "syntax")) == "a.yaml:4: syntax"


def test_one_problem_per_defect_all_reported_together(tmp_path: Path) -> None:
    path = variant(
        tmp_path,
        "many-defects",
        ("ends: 2029-06-30", "ends: 2020-01-01"),
        ("  profile: standard", "  profile: lenient"),
        ('      "Yrs Exp": years_experience', '      "Yrs Exp": experience'),
    )
    _, problems = check_agreements(path, POLICIES)
    assert [p.path for p in problems] == [
        "ends",
        'datasets[3].header_map["Yrs Exp"]',
        "disclosure.profile",
    ]


# --- more rules, on variants of the calibration example ---------------------------------


@pytest.mark.parametrize(
    ("replacements", "path", "reason"),
    [
        (
            [("measures: [score, evaluations.summative_rating]", "measures: [score, grades.x]")],
            "releases.lakeshore-u.measures[1]",
            "names dataset 'grades', which this agreement does not have",
        ),
        (
            [
                (
                    "measures: [score, evaluations.summative_rating]",
                    "measures: [score, completers.score]",
                )
            ],
            "releases.lakeshore-u.measures[1]",
            "'completers.score' is not a stored field of dataset 'completers'",
        ),
        (
            [("measures: [score, evaluations.summative_rating]", "measures: [score, school_year]")],
            "releases.lakeshore-u.measures[1]",
            "'school_year' is a quasi_identifier",
        ),
        (
            [("grade_band]\n", "grade_band, observation_date]\n")],
            "releases.lakeshore-u.dimensions[6]",
            "'observation_date' is a date column",
        ),
        (
            [("grade_band]\n", "grade_band, last_name]\n")],
            "releases.lakeshore-u.dimensions[6]",
            "'last_name' is a direct identifier: it is never stored, never released",
        ),
        (
            [("grade_band]\n", "grade_band, school_year]\n")],
            "releases.lakeshore-u.dimensions[6]",
            "field 'school_year' repeats releases.lakeshore-u.dimensions[2]",
        ),
        (
            [('      "Domain": rubric_domain', '      "score": rubric_domain')],
            "datasets[1].header_map.score",
            "is the schema's own column 'score'",
        ),
        (
            [("    privacy_budget: {epsilon: 4.0}", "    privacy_budget: {epsilon: 0.5}")],
            "disclosure.overrides.privacy_budget.epsilon",
            "exceeds the total privacy_budget epsilon 0.5",
        ),
        (
            [("    privacy_budget: {epsilon: 4.0}", "    privacy_budget: {delta: 1.5}")],
            "disclosure.overrides.privacy_budget.delta",
            "delta must be at least 0 and less than 1",
        ),
        (
            [("    privacy_budget: {epsilon: 4.0}", "    privacy_budget: {epsilon: 0}")],
            "disclosure.overrides.privacy_budget.epsilon",
            "epsilon must be greater than 0",
        ),
        (
            [("    privacy_budget: {epsilon: 4.0}", "    privacy_budget: {sigma: 4.0}")],
            "disclosure.overrides.privacy_budget.sigma",
            "'sigma' is not a field of privacy_budget (fields: epsilon, delta)",
        ),
        (
            [("    privacy_budget: {epsilon: 4.0}", "    name: strict")],
            "disclosure.overrides.name",
            "a profile's name cannot be overridden",
        ),
        (
            [("    privacy_budget: {epsilon: 4.0}", '    min_cell_students: "12"')],
            "disclosure.overrides.min_cell_students",
            "input should be a valid integer, got '12'",
        ),
        (
            [('version: "2026.1"', "version: 2026.1")],
            "version",
            "input should be a valid string, got 2026.1",
        ),
        (
            [("id: lakeshore-u, kind: epp", "id: Lakeshore_U, kind: epp")],
            "parties[0].id",
            "'Lakeshore_U' is not a lower-case slug",
        ),
        (
            [("  - {id: riverbend-sd, kind: district, name: Riverbend Community", "#")],
            "parties",
            "list should have at least 2 items",
        ),
    ],
)
def test_rule_variants(
    tmp_path: Path, replacements: list[tuple[str, str]], path: str, reason: str
) -> None:
    file = variant(tmp_path, "variant", *replacements)
    _, problems = check_agreements(file, POLICIES)
    # Removing a party also orphans what referred to it; the first problem is the point.
    problem = problems[0] if path == "parties" else only_problem(problems)
    assert problem.path == path
    assert reason in problem.reason, problem.reason
    assert problem.line is not None


def test_header_map_may_name_a_direct_identifier(tmp_path: Path) -> None:
    # Mapping "Last Name" onto last_name is how names are recognised and dropped.
    file = variant(tmp_path, "names-mapped", ('"DOB": birth_date', '"Date of Birth": birth_date'))
    assert check_agreements(file, POLICIES)[1] == []


def test_reports_are_open_for_later_fields(tmp_path: Path) -> None:
    file = variant(
        tmp_path,
        "with-report",
        (
            "\nreports:\n",
            "\nreports:\n"
            "  - name: rubric_alignment\n"
            "    description: Mean observation score by domain and observer role.\n"
            "    parameters: {school_year: {type: integer}}\n"
            "    query: {measure: {kind: mean, field: score}, group_by: [rubric_domain]}\n",
        ),
    )
    registry, problems = check_agreements(file, POLICIES)
    assert problems == []
    report = registry.agreement("with-report").reports[0]  # the loader keeps it whole
    assert report.name == "rubric_alignment"
    assert report.parameters == {"school_year": {"type": "integer"}}
    assert report.model_extra == {
        "query": {"measure": {"kind": "mean", "field": "score"}, "group_by": ["rubric_domain"]}
    }


def test_duplicate_ids_across_files_load_neither(tmp_path: Path) -> None:
    shutil.copy(CALIBRATION, tmp_path / "calibration-lakeshore-riverbend.yaml")
    shutil.copy(CALIBRATION, tmp_path / "calibration-lakeshore-riverbend.yml")
    registry, problems = check_agreements(tmp_path, POLICIES)
    assert registry.agreements == {}
    assert [(Path(p.file).suffix, p.path, p.line) for p in problems] == [
        (".yaml", "id", 2),
        (".yml", "id", 2),
    ]
    assert "is also used by" in problems[0].reason


@pytest.mark.parametrize(
    ("content", "reason", "line"),
    [
        (b"", "the file is empty", None),
        (b"- just\n- a list\n", "expected a mapping of fields, got a list", 1),
        (b"id: x\n---\nid: y\n", "expected a single document", 2),
        (b"id: caf\xe9\n", "not UTF-8 text", None),
        (b"id: x\n  title: y\n", "mapping values are not allowed here", 2),
    ],
)
def test_unreadable_files(tmp_path: Path, content: bytes, reason: str, line: int | None) -> None:
    path = tmp_path / "x.yaml"
    path.write_bytes(content)
    registry, problems = check_agreements(path, POLICIES)
    problem = only_problem(problems)
    assert (problem.path, problem.line) == ("", line)
    assert reason in problem.reason
    assert registry.agreements == {}


def test_missing_folders_are_problems_not_crashes(tmp_path: Path) -> None:
    registry, problems = check_agreements(tmp_path / "nowhere", tmp_path / "no-policies")
    assert registry.agreements == {}
    assert [p.reason for p in problems] == [
        "no such policy folder",
        "no such policy folder",
        "no such agreement file or folder",
    ]


# --- broken policies ----------------------------------------------------------------------


@pytest.fixture
def policies(tmp_path: Path) -> Path:
    """A private copy of policies/ to break."""
    target = tmp_path / "policies"
    shutil.copytree(POLICIES, target)
    return target


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("file", "old", "new", "path", "reason"),
    [
        (
            "datasets/value_added.yaml",
            "student_count_column: student_count",
            "student_count_column: students",
            "columns.growth_score.student_count_column",
            "student count column 'students' is not a column of this schema",
        ),
        (
            "datasets/student_surveys.yaml",
            "    student_count_column: respondent_count\n",
            "",
            "columns.mean_score.student_count_column",
            "a student_measure must name its student_count_column",
        ),
        (
            "datasets/evaluations.yaml",
            "      - {value: 4, label: exemplary}",
            '      - {value: "4", label: exemplary}',
            "columns.summative_rating.codes[3]",
            "code '4' is not a integer",
        ),
        (
            "datasets/evaluations.yaml",
            "    range: {min: 0, max: 50}",
            "    range: {min: 50, max: 0}",
            "columns.years_experience.range",
            "min 50 is greater than max 0",
        ),
        (
            "datasets/evaluations.yaml",
            "key: [educator_id, school_year]",
            "key: [educator_id, school_yr]",
            "key[1]",
            "key column 'school_yr' is not a column of this schema",
        ),
        (
            "datasets/evaluations.yaml",
            "pattern: '^(?=.*[0-9])[0-9A-Z]{1,15}$'",
            "pattern: '^[0-9A-Z]{1,15}$'",
            "columns.educator_id.pattern",
            "must require at least one digit",
        ),
        (
            "datasets/evaluations.yaml",
            "    role: direct_identifier\n    required: false",
            "    role: direct_identifier\n    required: true",
            "columns.first_name.required",
            "a direct identifier cannot be required",
        ),
        (
            "datasets/evaluations.yaml",
            "name: evaluations",
            "name: evaluation",
            "name",
            "name 'evaluation' must equal the file name without extension ('evaluations')",
        ),
        (
            "datasets/observations.yaml",
            "    type: date\n    role: quasi_identifier",
            "    type: dates\n    role: quasi_identifier",
            "columns.observation_date.type",
            "input should be 'string', 'integer', 'number', 'date' or 'boolean'",
        ),
        (
            "datasets/evaluations.yaml",
            "    range: {min: 0, max: 50}",
            "    range: {min: zero, max: 50}",
            "columns.years_experience.range.min",
            "input should be a valid integer or a valid number, got 'zero'",
        ),
        (
            "profiles/standard.yaml",
            "per_release_cap: {epsilon: 1.0, delta: 1.0e-7}",
            "per_release_cap: {epsilon: 1.0, delta: 1.0e-5}",
            "per_release_cap.delta",
            "per_release_cap delta 0.00001 exceeds the total privacy_budget delta 0.000001",
        ),
        (
            "profiles/strict.yaml",
            "min_cell_students: 20",
            "min_cell_students: 1",
            "min_cell_students",
            "PTAC's absolute floor",
        ),
    ],
)
def test_broken_policy_files(
    policies: Path, file: str, old: str, new: str, path: str, reason: str
) -> None:
    edit(policies / file, old, new)
    registry, problems = check_agreements(AGREEMENTS, policies)
    policy_problems = [p for p in problems if p.file == str(policies / file)]
    problem = only_problem(policy_problems)
    assert problem.path == path
    assert reason in problem.reason, problem.reason
    assert problem.line is not None
    # Agreements using the broken policy are refused, with a pointer to it.
    name = Path(file).stem
    assert name not in registry.schemas and name not in registry.profiles
    assert all("has problems of its own" in p.reason for p in problems if p not in policy_problems)


def test_datasets_of_one_agreement_must_normalise_ids_alike(policies: Path) -> None:
    edit(
        policies / "datasets" / "completers.yaml",
        "normalization: {trim: true, upper: true, strip_leading_zeros: true}",
        "normalization: {trim: true, upper: true, strip_leading_zeros: false}",
    )
    _, problems = check_agreements(CALIBRATION, policies)
    problem = only_problem(problems)
    # completers has no "schema:" key: the line is the dataset's own.
    assert (problem.path, problem.line) == ("datasets[2].schema", 46)
    assert "normalises educator IDs differently from schema 'observations'" in problem.reason
    assert "pseudonyms would not link" in problem.reason


# --- properties -------------------------------------------------------------------------

_keys = st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True)
_scalars = st.integers(-1000, 1000) | st.from_regex(r"[a-z ]{1,12}", fullmatch=True)
_trees = st.recursive(
    _scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_keys, children, max_size=4),
    max_leaves=25,
)


def _entries(data: Any, loc: tuple[Any, ...] = ()) -> list[tuple[tuple[Any, ...], Any]]:
    out = []
    if isinstance(data, dict):
        for key, value in data.items():
            out.append(((*loc, key), value))
            out += _entries(value, (*loc, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            out.append(((*loc, index), value))
            out += _entries(value, (*loc, index))
    return out


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_keys, _trees, min_size=1, max_size=5))
def test_every_yaml_path_maps_to_the_line_that_writes_it(data: dict[str, Any]) -> None:
    text = yaml.safe_dump(data, default_flow_style=False, sort_keys=False)
    document = parse_yaml(text)
    assert document.data == data
    lines = text.splitlines()
    for loc, _ in _entries(data):
        line = document.line_of(loc)
        assert line is not None
        written = lines[line - 1].lstrip(" -").lstrip("'\"")
        last = loc[-1]
        if isinstance(last, str):
            assert written.startswith(f"{last}"), (format_path(loc), lines[line - 1])
        else:
            assert "-" in lines[line - 1], (format_path(loc), lines[line - 1])


def _parsed_by_both(text: str, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """What parse_yaml makes of ``text`` with libyaml's parser and with the pure-Python
    one: the document, or the error's reason and line."""

    def outcome() -> Any:
        try:
            document = parse_yaml(text)
        except YamlSyntaxError as error:
            return ("error", error.reason, error.line)
        return (document.data, document.lines, document.duplicate_keys)

    assert yamldoc._FAST_LOADER is yaml.CSafeLoader  # this PyYAML has libyaml: both run
    fast = outcome()
    with monkeypatch.context() as patch:
        patch.setattr(yamldoc, "_FAST_LOADER", None)
        pure = outcome()
    return fast, pure


@pytest.mark.parametrize(
    "path",
    sorted([*AGREEMENTS.glob("*.yaml"), *POLICIES.rglob("*.yaml"), *BROKEN.glob("*.yaml")]),
    ids=lambda p: p.name,
)
def test_libyaml_reads_every_file_as_the_pure_parser_does(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same data, same line for every path, same repeated keys; and a broken file gets
    the pure parser's message and line (libyaml's refusal is not what is reported)."""
    fast, pure = _parsed_by_both(path.read_text(), monkeypatch)
    assert fast == pure


@pytest.mark.parametrize(
    ("text", "reason", "line"),
    [
        ("a: [1, 2\nb: 3\n", "expected ',' or ']'", 2),
        ("a: 1\n b: 2\n", "mapping values are not allowed here", 2),
        ("a: 1\n---\nb: 2\n", "expected a single document", 2),
        ("a: *missing\n", "found undefined alias 'missing'", 1),
        ("", "the file is empty", None),
        ("a: 'open\n", "found unexpected end of stream", 2),
    ],
)
def test_a_yaml_syntax_error_is_reported_in_the_pure_parsers_words(
    text: str, reason: str, line: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, pure = _parsed_by_both(text, monkeypatch)
    assert fast == pure
    assert fast[0] == "error" and reason in fast[1] and fast[2] == line


_budget_epsilons = st.decimals(min_value=Decimal("1"), max_value=Decimal("50"), places=2)
_overrides = st.fixed_dictionaries(
    {},
    optional={
        "min_cell_teachers": st.integers(3, 100),
        "min_cell_students": st.integers(3, 100),
        "on_bad_rows": st.sampled_from(["refuse", "reject_rows"]),
        "top_bottom_coding": st.booleans(),
        "privacy_budget": st.fixed_dictionaries(
            {}, optional={"epsilon": _budget_epsilons.map(str)}
        ),
    },
)


@functools.cache
def _standard_profile() -> DisclosureProfile:
    return load_registry(AGREEMENTS, POLICIES).profiles["standard"]


# No deadline: the first example loads the registry (cached for the rest), which takes
# longer than Hypothesis's default 200 ms on a busy machine.
@settings(deadline=None)
@given(_overrides)
def test_overrides_win_and_everything_else_is_inherited(overrides: dict[str, Any]) -> None:
    base = _standard_profile()
    resolved, findings = resolve_disclosure(base, overrides)
    assert findings == []
    assert resolved is not None
    expected = merge_overrides(base.model_dump(), overrides)
    dumped = resolved.model_dump()
    for name in DisclosureProfile.model_fields:
        if name == "privacy_budget":
            budget = overrides.get("privacy_budget", {})
            epsilon = Decimal(budget.get("epsilon", base.privacy_budget.epsilon))
            assert resolved.privacy_budget.epsilon == epsilon
            assert resolved.privacy_budget.delta == base.privacy_budget.delta
        else:
            assert dumped[name] == expected[name]


# --- docs -------------------------------------------------------------------------------


def _model_classes() -> list[type[BaseModel]]:
    return [
        obj
        for obj in vars(agreement_models).values()
        if isinstance(obj, type)
        and issubclass(obj, BaseModel)
        and obj.__module__ == agreement_models.__name__
    ]


def test_every_model_field_is_documented() -> None:
    # Backticked names outside code blocks: a field only shown in an example is not documented.
    prose = re.sub(r"^```.*?^```", "", DOCS.read_text(), flags=re.DOTALL | re.MULTILINE)
    documented = set(re.findall(r"`([^`\n]+)`", prose))
    missing = sorted(
        f"{model.__name__}.{name}"
        for model in _model_classes()
        for name, info in model.model_fields.items()
        if name not in documented or (info.alias and info.alias not in documented)
    )
    assert missing == []


def test_agreement_model_adds_only_loader_fields() -> None:
    added = set(Agreement.model_fields) - set(agreement_models.AgreementDocument.model_fields)
    assert added == {"resolved_disclosure", "content_hash", "source_path", "hierarchies"}


def test_terms_hash_follows_the_file_and_the_policies_it_uses(tmp_path: Path) -> None:
    import shutil

    agreements = tmp_path / "agreements"
    policies = tmp_path / "policies"
    shutil.copytree(AGREEMENTS, agreements)
    shutil.copytree(POLICIES, policies)

    def hashes() -> dict[str, str]:
        registry = load_registry(agreements, policies)
        return {a.id: a.content_hash for a in registry.agreements.values()}

    before = hashes()
    target = agreements / CALIBRATION.name
    target.write_text(target.read_text() + "# a comment is a new version too\n")
    after_comment = hashes()
    assert (
        after_comment["calibration-lakeshore-riverbend"]
        != before["calibration-lakeshore-riverbend"]
    )
    assert {k: v for k, v in after_comment.items() if k != "calibration-lakeshore-riverbend"} == {
        k: v for k, v in before.items() if k != "calibration-lakeshore-riverbend"
    }
    # Raising the standard profile's minimum cell size changes every agreement using it,
    # and only those.
    profile = policies / "profiles" / "standard.yaml"
    profile.write_text(
        profile.read_text().replace("min_cell_teachers: 10", "min_cell_teachers: 11")
    )
    after_profile = hashes()
    registry = load_registry(agreements, policies)
    for agreement_id, value in after_profile.items():
        uses_standard = registry.agreement(agreement_id).resolved_disclosure.name == "standard"
        assert (value != after_comment[agreement_id]) == uses_standard


def test_a_dataset_of_positions_may_not_carry_an_educator_id(tmp_path: Path) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(POLICIES, policies)
    schema = policies / "datasets" / "evaluations.yaml"
    schema.write_text(schema.read_text().replace("unit: teacher", "unit: position"))
    _, problems = check_agreements(AGREEMENTS, policies)
    found = [p for p in problems if p.path == "unit"]
    assert found and "carries no educator_id" in found[0].reason
    assert found[0].file.endswith("evaluations.yaml") and found[0].line == 8
