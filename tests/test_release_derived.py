"""Measures derived per teacher: retention (still there N years after the first year),
agreement of two raters' scores and their joint distribution (with rows linked on
more than the pseudonym), and the weighted kappa computed from a joint table.

The exact aggregates are checked before noise (``true_cells``) against counts worked
out by hand from the files written here; the released tables are then checked for
the guarantees (intervals, suppression marks)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import audit
from gateway.context import Gateway
from gateway.errors import SchemaError
from gateway.ingest import upload_extract
from gateway.release.aggregate import true_cells
from gateway.release.canonical import normalise
from gateway.release.engine import request_release
from gateway.release.plan import plan_query
from gateway.release.query import parse_query, resolve
from gateway.release.reports import weighted_kappa
from gateway.release.rows import load_rows
from tests.conftest import AGREEMENT, DISTRICT, EPP, count_plan, upload_generated

ACTOR = audit.Actor(role="analyst", party=EPP)
CALIBRATION = "calibration-lakeshore-riverbend"
COMPLETERS = (
    "MEPID,Last Name,First Name,Email Address,Program,Program Completion Year,"
    "Completer Status,License Field"
)
STAFFING = "MEPID,Last Name,First Name,SY,District Code,School Code,Job Class,License Field,FTE"


def upload(gw: Gateway, agreement: str, party: str, dataset: str, path: Path) -> None:
    upload_extract(
        gw,
        agreement_id=agreement,
        party=party,
        dataset=dataset,
        path=path,
        actor=audit.Actor(role="uploader", party=party),
    )


def exact(gw: Gateway, agreement: str, party: str, body: dict[str, Any]) -> dict[Any, Any]:
    """The true cells of a query (before suppression and noise), by group key."""
    query = parse_query({"epsilon": "0.5", **body})
    agreement_ = gw.agreement(agreement)
    asked = resolve(query, agreement=agreement_, registry=gw.registry, party=party)
    resolved = normalise(asked, agreement_)
    plan = plan_query(resolved, agreement_)
    with gw.sessions() as session:
        frame = load_rows(session.connection(), resolved, agreement_, 1)
    return true_cells(frame, resolved, plan)


# --- retention ---------------------------------------------------------------------------

# Teachers by first year in the 2021-2025 window, and the years they stayed.
SPELLS = {
    # 20 ELEM completers first there in 2022: 12 still there in 2023 (1 year after);
    # of those, 6 stay to 2025 (3 years after).
    "ELEM": [(2022, 2022)] * 8 + [(2022, 2024)] * 6 + [(2022, 2025)] * 6,
    # 15 SPED completers there since 2021 (hired before the window: left out), and
    # 12 first there in 2024 (too late for 3 years; all there in 2025).
    "SPED": [(2021, 2025)] * 15 + [(2024, 2025)] * 12,
}


@pytest.fixture
def retention_data(gateway: Gateway, tmp_path: Path) -> Gateway:
    completers = [COMPLETERS]
    staffing = [STAFFING]
    teacher = 700000
    for program, spells in SPELLS.items():
        for first, last in spells:
            teacher += 1
            completers.append(f"{teacher},A,B,a@example.org,{program},2020,completed,ELEM")
            for year in range(first, last + 1):
                staffing.append(f"{teacher},A,B,{year},D-1,S-01,teacher,ELEM,1")
    (tmp_path / "c.csv").write_text("\n".join(completers) + "\n")
    (tmp_path / "s.csv").write_text("\n".join(staffing) + "\n")
    upload(gateway, AGREEMENT, EPP, "completers", tmp_path / "c.csv")
    upload(gateway, AGREEMENT, DISTRICT, "staffing", tmp_path / "s.csv")
    return gateway


def retention_query(years_after: int) -> dict[str, Any]:
    return {
        "datasets": ["completers", "staffing"],
        "measure": {
            "kind": "retention", "field": "staffing.school_year", "years_after": years_after
        },
        "group_by": ["program_code"],
        "filters": [
            {"field": "staffing.school_year", "op": "in", "value": [2021, 2022, 2023, 2024, 2025]},
            {"field": "program_code", "op": "in", "value": ["ELEM", "SPED"]},
        ],
        "max_groups_per_teacher": 1,
    }  # fmt: skip


def test_retention_counts_who_stayed_among_those_hired_in_the_window(
    retention_data: Gateway,
) -> None:
    one = exact(retention_data, AGREEMENT, EPP, retention_query(1))
    assert (one[("ELEM",)].teachers, one[("ELEM",)].meeting) == (20, 12)
    # SPED: the 2021 teachers were there at the window's start (left out); the 2024
    # hires count for one year (2025 is inside the window) and all stayed.
    assert (one[("SPED",)].teachers, one[("SPED",)].meeting) == (12, 12)
    three = exact(retention_data, AGREEMENT, EPP, retention_query(3))
    assert (three[("ELEM",)].teachers, three[("ELEM",)].meeting) == (20, 6)
    assert ("SPED",) not in three or three[("SPED",)].teachers == 0  # hired too late
    released = request_release(
        retention_data,
        agreement_id=AGREEMENT,
        party=EPP,
        query=parse_query({"epsilon": "0.5", **retention_query(3)}),
        actor=ACTOR,
    ).to_json()
    cells = {c["group"]["program_code"]: c for c in released["cells"]}
    assert cells["SPED"]["suppressed"] and cells["SPED"]["value"] is None
    # ELEM's 20 teachers are above the minimum but below the publish threshold at this
    # epsilon (the noisy count must clear it): published only if the noise says so.
    assert released["decisions"]["publish_threshold"] > 20
    assert cells["ELEM"]["suppressed"] == (cells["ELEM"]["value"] is None)


@pytest.mark.parametrize("years_after", [4, 5, 9])
def test_a_retention_whose_window_cannot_hold_anyone_is_refused_before_spending(
    gateway: Gateway, years_after: int
) -> None:
    """Five school years hold a teacher hired after the first and followed k years only
    for k <= 3 (aggregate._retention_rows): a longer retention is refused from the
    query alone, logged, and nothing is charged."""
    from gateway.release.budget import budget_report
    from gateway.release.query import WindowTooShort

    with pytest.raises(WindowTooShort, match=f"at least {years_after + 2} school years"):
        request_release(
            gateway,
            agreement_id=AGREEMENT,
            party=EPP,
            query=parse_query({"epsilon": "0.5", **retention_query(years_after)}),
            actor=ACTOR,
        )
    with gateway.sessions() as session:
        assert budget_report(session, gateway.agreement(AGREEMENT))["spent"] == 0
        refused = list(session.scalars(audit.query_events(kind="release-refused")))
    assert [audit.event_view(e)["details"]["code"] for e in refused] == ["window_too_short"]


def test_a_report_leaves_out_a_table_its_window_cannot_fill_and_shares_its_epsilon(
    gateway: Gateway, tmp_path: Path
) -> None:
    """The retention report's 5-year table over five school years: not run, nothing
    spent on it, and its share of epsilon goes to the 1- and 3-year tables."""
    from gateway.release.reports import run_report

    # Its tables read completers and staffing: a dataset with no upload is left out too.
    upload_generated(gateway, AGREEMENT, tmp_path, seed=5, scale=0.2)

    analyst = audit.Actor(role="analyst", party=EPP)
    preview = run_report(
        gateway, agreement_id=AGREEMENT, party=EPP, report="retention",
        parameters={"epsilon": "0.3"}, actor=analyst, dry_run=True,
    )  # fmt: skip
    tables = preview["tables"]
    assert "at least 7 school years" in tables[2]["skipped"] and "preview" not in tables[2]
    spent = [float(t["preview"]["exact"]["epsilon_cost"]) for t in tables[:2]]
    assert sum(spent) == pytest.approx(0.3, abs=1e-9)  # the whole report's epsilon
    result = run_report(
        gateway, agreement_id=AGREEMENT, party=EPP, report="retention",
        parameters={"epsilon": "0.3"}, actor=analyst,
    )  # fmt: skip
    assert [("release" in t, "skipped" in t) for t in result["tables"]] == [
        (True, False),
        (True, False),
        (False, True),
    ]
    assert result["epsilon_spent"] == pytest.approx(0.3, abs=1e-9)


def test_retention_needs_a_public_window(gateway: Gateway) -> None:
    body = retention_query(1)
    body["filters"] = body["filters"][1:]
    with pytest.raises(SchemaError, match="window of years"):
        exact(gateway, AGREEMENT, EPP, body)
    with pytest.raises(SchemaError, match="years_after"):
        parse_query({"epsilon": "0.5", **{**body, "measure": {"kind": "count", "years_after": 1}}})


# --- two raters: agreement and the joint table -------------------------------------------

OBSERVATIONS = "IEIN,Academic Year,Supervisor Type,Rubric Domain,Domain Score,Visit Date"
DISTRICT_OBS = "IEIN,Eval Yr,Evaluator Role,Domain,Rating,Obs Date"


@pytest.fixture
def paired_scores(gateway: Gateway, tmp_path: Path) -> Gateway:
    """60 teachers observed by both sides in 'planning' 2025, and in 'instruction' by the
    district only in another year (must not pair with the EPP's planning scores)."""
    epp = [OBSERVATIONS]
    district = [DISTRICT_OBS]
    for n in range(60):
        teacher = 800000 + n
        supervisor = 3 if n < 40 else 2
        # 40 with a supervisor's 3: 30 of them get 3 from the district too, 10 get 4;
        # 20 with a supervisor's 2: all get 2 from the district.
        evaluator = 2 if n >= 40 else (3 if n < 30 else 4)
        epp.append(f"{teacher},2025,epp_supervisor,planning,{supervisor},2025-03-01")
        district.append(f"{teacher},2025,district_evaluator,planning,{evaluator},2025-03-02")
        district.append(f"{teacher},2024,district_evaluator,instruction,1,2024-03-02")
    (tmp_path / "e.csv").write_text("\n".join(epp) + "\n")
    (tmp_path / "d.csv").write_text("\n".join(district) + "\n")
    upload(gateway, CALIBRATION, "lakeshore-u", "epp_observations", tmp_path / "e.csv")
    upload(gateway, CALIBRATION, "riverbend-sd", "district_observations", tmp_path / "d.csv")
    return gateway


def paired_query(kind: str, **extra: Any) -> dict[str, Any]:
    return {
        "datasets": ["epp_observations", "district_observations"],
        "link_on": ["school_year", "rubric_domain"],
        "measure": {
            "kind": kind,
            "field": "epp_observations.score",
            "compare_to": "district_observations.score",
        },
        "max_groups_per_teacher": 1,
        **extra,
    }


def test_agreement_pairs_scores_of_the_same_domain_and_year(paired_scores: Gateway) -> None:
    cells = exact(paired_scores, CALIBRATION, "lakeshore-u", paired_query("agreement"))
    # 30 + 20 of 60 teachers got the same score from both sides; the district's 2024
    # 'instruction' rows (score 1) never pair with the EPP's 2025 'planning' rows.
    assert (cells[()].teachers, cells[()].meeting) == (60, 50)
    unlinked = exact(
        paired_scores, CALIBRATION, "lakeshore-u", {**paired_query("agreement"), "link_on": []}
    )
    assert unlinked[()].meeting < 50  # without link_on, the 1s pair with everything


def test_joint_table_and_its_weighted_kappa(paired_scores: Gateway) -> None:
    cells = exact(paired_scores, CALIBRATION, "lakeshore-u", paired_query("joint"))
    counts = {k: c.teachers for k, c in cells.items() if c.teachers}
    assert counts == {(3, 3): 30, (3, 4): 10, (2, 2): 20}
    released = request_release(
        paired_scores,
        agreement_id=CALIBRATION,
        party="lakeshore-u",
        query=parse_query({"epsilon": "1.0", **paired_query("joint")}),
        actor=ACTOR,
    ).to_json()
    assert len(released["cells"]) == 16  # every pair of codes, empty ones included
    names = list(released["cells"][0]["group"])
    assert names == ["epp_observations.score", "district_observations.score"]
    # The release derives the two raters' kappa from every noisy cell, published or
    # not (60 teachers: whether it clears the threshold of 16 merged cells depends on
    # the noise): either a kappa with its interval, or a note saying why not.
    (entry,) = released["statistics"]
    assert entry["group"] == {}
    if "weighted_kappa" in entry:
        kappa = entry["weighted_kappa"]
        low, high = kappa["ci95"]
        assert -1 <= low <= kappa["value"] <= high <= 1
        assert 0 <= entry["exact_agreement"]["value"] <= 1
        (summary,) = weighted_kappa(released)
        assert summary["value"] == kappa["value"] and summary["ci95"] == kappa["ci95"]
    else:
        assert "too few" in entry["note"]


def _joint_plan(epsilon: str = "20") -> Any:
    return count_plan(epsilon, ["first", "second"], summarised=True)


def test_weighted_kappa_matches_hand_computed_values() -> None:
    """The release's statistics, from a table of (here noise-free) counts."""
    from gateway.release.measure import Measurements
    from gateway.release.postprocess import statistics

    def kappa(counts: dict[tuple[int, int], float]) -> float:
        measured = Measurements(keys=list(counts), counts=dict(counts))  # type: ignore[arg-type]
        (entry,) = statistics(measured, _joint_plan(), lambda keys: 1000)
        return float(entry["weighted_kappa"]["value"])

    assert kappa({(1, 1): 20.0, (1, 2): 0.0, (2, 1): 0.0, (2, 2): 30.0}) == 1.0
    # Two categories: quadratic weights give Cohen's kappa. p_o = 35/50 = 0.7,
    # p_e = (25*30 + 25*20) / 50**2 = 0.5, kappa = (0.7 - 0.5) / 0.5 = 0.4.
    assert kappa({(1, 1): 20.0, (1, 2): 5.0, (2, 1): 10.0, (2, 2): 15.0}) == pytest.approx(0.4)
    assert kappa({(1, 1): 25.0, (1, 2): 25.0, (2, 1): 25.0, (2, 2): 25.0}) == pytest.approx(0.0)
    # Rows are the first rater's scores whatever order the cells come in.
    assert kappa({(2, 2): 15.0, (1, 2): 5.0, (2, 1): 10.0, (1, 1): 20.0}) == pytest.approx(0.4)


def test_a_groups_kappa_is_not_shown_when_its_teachers_are_too_few() -> None:
    from gateway.release.measure import Measurements
    from gateway.release.postprocess import statistics

    counts = {(1, 1): 20.0, (1, 2): 5.0, (2, 1): 10.0, (2, 2): 15.0}
    measured = Measurements(keys=list(counts), counts=dict(counts))  # type: ignore[arg-type]
    (entry,) = statistics(measured, _joint_plan(), lambda keys: 9)  # the floor: 9 < 10
    assert "weighted_kappa" not in entry and "too few" in entry["note"]


# --- refusals found in review ----------------------------------------------------------


def test_a_retention_window_must_be_whole_years_and_is_refused_in_the_log(
    gateway: Gateway,
) -> None:
    body = retention_query(1)
    body["filters"] = [{"field": "staffing.school_year", "op": "between", "value": [2021, "x"]}]
    with pytest.raises(SchemaError, match="whole years"):
        request_release(
            gateway,
            agreement_id=AGREEMENT,
            party=EPP,
            query=parse_query({"epsilon": "0.5", **body}),
            actor=ACTOR,
        )
    with gateway.sessions() as session:
        refused = list(session.scalars(audit.query_events(kind="release-refused")))
    assert len(refused) == 1 and "whole years" in audit.event_view(refused[0])["details"]["reason"]


def test_paired_measures_refuse_student_derived_fields(gateway: Gateway) -> None:
    body = {
        "datasets": ["value_added", "student_surveys"],
        "measure": {
            "kind": "agreement",
            "field": "value_added.growth_score",
            "compare_to": "student_surveys.mean_score",
        },
    }
    with pytest.raises(SchemaError, match="derived from students"):
        exact(gateway, AGREEMENT, EPP, body)


def test_a_kappa_summary_needs_a_joint_table() -> None:
    from gateway.agreements.models import ReportSpec
    from gateway.release.reports import definition

    spec = ReportSpec.model_validate(
        {
            "name": "odd",
            "description": "kappa of a count",
            "tables": [
                {"title": "t", "summary": "weighted_kappa", "query": {"measure": {"kind": "count"}}}
            ],
        }
    )
    with pytest.raises(SchemaError, match="needs a joint measure"):
        definition(spec)
    assert weighted_kappa({"cells": [{"group": {"a": 1}, "value": 3.0, "suppressed": False}]}) == []
