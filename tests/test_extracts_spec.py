"""The ``extracts:`` declaration of an agreement, and what `gateway agreements check` says
about a broken one (docs/agreements.md#extracts-extracts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.agreements import check_agreements, load_registry
from gateway.agreements.extract_checks import resolve_field
from gateway.errors import NotFound

ROOT = Path(__file__).resolve().parents[1]
AGREEMENTS = ROOT / "agreements"
POLICIES = ROOT / "policies"
BROKEN = Path(__file__).resolve().parent / "fixtures" / "broken_extracts"

#: fixture stem -> (YAML path of the one problem, what its reason says)
BROKEN_CASES = {
    "extract-approver-is-recipient": ("extracts[0].approvers.party", "is also a recipient"),
    "extract-approver-not-a-party": ("extracts[0].approvers.party", "is not a party"),
    "extract-approvers-too-few": (
        "extracts[0].approvers.required",
        "3 approvals are required but only 2 people may approve",
    ),
    "extract-bands-not-rising": ("extracts[0].bands.growth_score", "must rise strictly"),
    "extract-educator-id-field": ("extracts[0].fields[0]", "is the educator ID"),
    "extract-field-not-stored": (
        "extracts[0].fields[8]",
        "'gender' is not a stored field of any dataset of this extract",
    ),
    "extract-k-below-floor": ("extracts[0].k", "greater than or equal to 3"),
    "extract-l-above-categories": (
        "extracts[0].l",
        "l 4 exceeds the 3 values 'growth_score' can take",
    ),
    "extract-l-missing": ("extracts[0].sensitive", "sensitive fields need l"),
    "extract-link-on-one-dataset": ("extracts[0].link_on[1]", "'cohort_year' is stored by 1"),
    "extract-qi-not-declared": (
        "extracts[0].fields[4]",
        "'years_experience' is a quasi_identifier column: list it under quasi_identifiers",
    ),
    "extract-sensitive-number-without-bands": (
        "extracts[0].sensitive[1]",
        "'growth_score' is a number: declare its bands",
    ),
    "extract-unknown-dataset": (
        "extracts[0].datasets[2]",
        "'value_add' is not a dataset of this agreement",
    ),
}


def test_every_broken_fixture_is_listed() -> None:
    assert {path.stem for path in BROKEN.glob("*.yaml")} == set(BROKEN_CASES)


@pytest.mark.parametrize("stem", sorted(BROKEN_CASES))
def test_a_broken_extract_reports_exactly_its_defect(stem: str) -> None:
    path, reason = BROKEN_CASES[stem]
    file = BROKEN / f"{stem}.yaml"
    registry, problems = check_agreements(file, POLICIES)
    assert [(p.path, reason in p.reason) for p in problems] == [(path, True)], problems
    assert problems[0].line is not None and problems[0].file == str(file)
    assert registry.agreements == {}  # a broken extract keeps the whole agreement out


def test_the_example_extract_is_valid_and_resolves_to_dataset_columns() -> None:
    registry = load_registry(AGREEMENTS, POLICIES)
    agreement = registry.agreement("student-teaching-bayview-eastport")
    spec = agreement.extract("completer_outcomes")
    assert agreement.extracts_for("bayview-state") == (spec,)
    assert agreement.extracts_for("eastport-ps") == ()
    with pytest.raises(NotFound, match="declares no extract 'nope'"):
        agreement.extract("nope")
    resolved = {
        ref: resolve_field(agreement, registry.schemas, spec, ref).dataset for ref in spec.fields
    }
    assert resolved["years_experience"] == "evaluations"
    assert resolved["growth_score"] == "value_added"
    assert resolved["program_code"] == "completers"
    # The agreement's grouping of experience is the hierarchy the extract coarsens along.
    hierarchy = agreement.hierarchy("evaluations", "years_experience")
    assert hierarchy is not None
    assert hierarchy.parents(4) == ("3 to 5 years", "early career (0 to 5 years)", "all experience")


def test_only_a_listed_person_other_than_the_requester_approves() -> None:
    agreement = load_registry(AGREEMENTS, POLICIES).agreement("student-teaching-bayview-eastport")
    spec = agreement.extract("completer_outcomes")
    assert spec.approvers.party == "eastport-ps"
    officer, director = spec.approvers.people
    assert spec.may_approve(officer, requester_id="bayview-analyst")
    assert spec.may_approve(officer, requester_id=director)
    assert not spec.may_approve(officer, requester_id=officer)  # their own request
    assert not spec.may_approve("someone-else", requester_id="bayview-analyst")  # not listed


def test_gateway_agreements_check_names_the_file_line_and_defect(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gateway.cli import main

    file = BROKEN / "extract-qi-not-declared.yaml"
    env = {
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
        "GATEWAY_AGREEMENTS_DIR": str(AGREEMENTS),
        "GATEWAY_POLICIES_DIR": str(POLICIES),
    }
    result = CliRunner().invoke(main, ["agreements", "check", str(file)], env=env)
    assert result.exit_code == 4, result.output
    line = next(text for text in result.stdout.splitlines() if "extracts[0]" in text)
    assert line.startswith(f"{file}:") and "fields[4]: 'years_experience'" in line
    ok = CliRunner().invoke(main, ["agreements", "check"], env=env)
    assert ok.exit_code == 0 and "4 agreement(s) valid" in ok.stdout
