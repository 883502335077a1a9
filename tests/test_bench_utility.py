"""The utility benchmark's measures (bench/utility.py), on hand-made releases whose every
figure is worked out here by hand; and the small partnership it runs, kept in step with
the demo's reports."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from bench.tumult_utility import reduce_teacher
from bench.utility import (
    Leaf,
    budget_left,
    decimal_text,
    diversity_groups,
    half_width,
    is_useful,
    kappa_entries,
    key_text,
    met_at,
    scale_agreement,
    side_by_side,
    table_metrics,
    targets_met,
    tumult_errors,
    write_scaled_agreements,
)
from gateway.agreements.loader import load_registry
from gateway.agreements.models import Hierarchy

REPO = Path(__file__).resolve().parent.parent

PROGRAMS = Hierarchy.model_validate(
    {
        "levels": [
            {
                "name": "program area",
                "groups": {"elementary": ["ELEM"], "special": ["SPED"], "other": ["ESL", "ART"]},
            }
        ],
        "top": "all programs",
    }
)
YEARS = Hierarchy.model_validate({"levels": [{"name": "3-year window", "pool": 3}]})


def _leaves(counts: dict[Any, int]) -> dict[str, Leaf]:
    return {key_text([k]): Leaf(key=(k,), teachers=n) for k, n in counts.items()}


def _cell(
    group: dict[str, Any], value: float | None, ci: list[float] | None, **extra: Any
) -> dict[str, Any]:
    return {"group": group, "value": value, "ci95": ci, "suppressed": value is None, **extra}


# ELEM 45 teachers, SPED 12, ESL 3, ART 0: 60 in all.
LEAVES = _leaves({"ELEM": 45, "SPED": 12, "ESL": 3, "ART": 0})


def test_half_width_and_usefulness_of_counts_and_shares() -> None:
    # A count is useful when half its interval is at most 25% of it: 10.4 <= 11 for 44.
    assert half_width(_cell({}, 44.0, [33.6, 54.4])) == pytest.approx(10.4)
    assert is_useful(_cell({}, 44.0, [33.6, 54.4]), "count")
    assert not is_useful(_cell({}, 40.0, [29.6, 50.4]), "count")  # 10.4 > 10
    assert not is_useful(_cell({}, 0.0, [0.0, 10.4]), "count")  # nothing is 25% of 0
    # A share is useful within +-0.10, whatever its size.
    assert is_useful(_cell({}, 0.6, [0.5, 0.7]), "retention")
    assert not is_useful(_cell({}, 0.6, [0.5, 0.72]), "agreement")
    assert half_width(_cell({}, None, None)) is None
    assert not is_useful(_cell({}, None, None), "count")


def test_metrics_of_a_table_published_as_asked() -> None:
    cells = [
        _cell({"program_code": "ELEM"}, 44.0, [33.6, 54.4]),  # useful, error 1
        _cell({"program_code": "SPED"}, 12.0, [1.6, 22.4]),  # not useful, error 0
        _cell({"program_code": "ESL"}, None, None, reason="primary"),  # error |3|
        _cell({"program_code": "ART"}, None, None, reason="complementary"),  # error |0|
    ]
    m = table_metrics(cells, kind="count", dimensions=["program_code"], leaves=LEAVES)
    assert (m.cells, m.suppressed, m.values, m.useful) == (4, 2, 2, 1)
    assert m.published_by_step == {0: 2}
    assert (m.teachers, m.represented, m.represented_as_asked) == (60, 57, 57)
    assert m.mae == pytest.approx((1 + 0 + 3 + 0) / 4)
    assert m.published_mae == pytest.approx(0.5)


def test_coarse_cells_count_their_teachers_one_step_up_only() -> None:
    cells = [
        _cell({"program_code": "ELEM"}, 44.0, [33.6, 54.4], level={"program_code": "as asked"}),
        # The top (two steps up) covers every program: SPED is published only there.
        _cell(
            {"program_code": "all programs"},
            59.0,
            [48.6, 69.4],
            level={"program_code": "all programs"},
            steps=2,
        ),
        # ESL and ART one step up, as "other": 3 teachers, published as 4.
        _cell(
            {"program_code": "other"},
            4.0,
            [0.0, 14.4],
            level={"program_code": "program area"},
            steps=1,
        ),
    ]
    m = table_metrics(
        cells,
        kind="count",
        dimensions=["program_code"],
        leaves=LEAVES,
        hierarchy_of=lambda dimension: PROGRAMS,
    )
    assert (m.cells, m.released, m.suppressed) == (4, 3, 0)  # each one is in a published cell
    assert m.published_by_step == {0: 1, 1: 1, 2: 1}
    # ELEM (45) as asked; ESL (3) and ART (0) one step up; SPED (12) only two steps up.
    assert (m.represented, m.represented_as_asked) == (48, 45)
    # Errors: ELEM |44 - 45|, the top |59 - 60|, "other" |4 - 3|.
    assert m.mae == pytest.approx(1.0)


def test_pooled_years_cover_the_years_of_their_window() -> None:
    leaves = _leaves({2021: 4, 2022: 5, 2023: 6, 2024: 20, 2025: 30})
    cells = [
        _cell(
            {"school_year": "2021\u20132023"},
            14.0,
            [3.6, 24.4],
            level={"school_year": "3-year window"},
            steps=1,
        ),
        _cell({"school_year": 2024}, 21.0, [10.6, 31.4]),
        _cell({"school_year": 2025}, 30.0, [19.6, 40.4]),
    ]
    m = table_metrics(
        cells,
        kind="count",
        dimensions=["school_year"],
        leaves=leaves,
        hierarchy_of=lambda dimension: YEARS,
    )
    assert (m.teachers, m.represented, m.represented_as_asked) == (65, 65, 50)
    assert m.mae == pytest.approx((1 + 1 + 0) / 3)  # the window: |14 - 15|


def test_shares_take_their_truth_from_teachers_meeting_the_measure() -> None:
    leaves = {
        key_text(["ELEM"]): Leaf(key=("ELEM",), teachers=40, meeting=30),  # 0.75
        key_text(["SPED"]): Leaf(key=("SPED",), teachers=0),  # no share to compare
    }
    cells = [
        _cell({"program_code": "ELEM"}, 0.7, [0.62, 0.78]),
        _cell({"program_code": "SPED"}, None, None, reason="primary"),
    ]
    m = table_metrics(cells, kind="retention", dimensions=["program_code"], leaves=leaves)
    assert (m.values, m.useful) == (1, 1)
    assert m.errors == [pytest.approx(0.05)]  # the empty cell has no true share
    # Tumult answers an average with a count and a sum centred on the clamp's middle
    # (0.5 here): 40 teachers and a centred sum of 12 read 0.5 + 12/40 = 0.8.
    answer = {
        "counts": {'["ELEM"]': 40.0, '["SPED"]': 3.0},
        "sums": {'["ELEM"]': 12.0, '["SPED"]': 9.0},
    }
    assert tumult_errors(answer, kind="retention", leaves=leaves, clamp=(0.0, 1.0)) == [
        pytest.approx(0.05)
    ]  # SPED has no true share to compare with
    # A value beyond the clamp is clamped: 0.5 + 30/40 reads 1.0, 0.25 from the truth.
    answer["sums"]['["ELEM"]'] = 30.0
    assert tumult_errors(answer, kind="retention", leaves=leaves, clamp=(0.0, 1.0)) == [
        pytest.approx(0.25)
    ]


def test_tumult_is_compared_on_the_cells_the_gateway_released() -> None:
    counts = {'["ELEM"]': 47.0, '["SPED"]': -2.0, '["ESL"]': 5.0, '["ART"]': 1.0}
    answer = {"counts": counts}
    # Over its own cells, negative counts clipped at 0: |47-45| + |0-12| + |5-3| + |1-0|.
    errors = tumult_errors(answer, kind="count", leaves=LEAVES, clamp=(0.0, 1.0))
    assert sum(errors) / len(errors) == pytest.approx(17 / 4)
    cells = [
        _cell({"program_code": "ELEM"}, 44.0, [33.6, 54.4]),
        _cell({"program_code": "SPED"}, None, None, reason="primary"),
        _cell(
            {"program_code": "other"},
            4.0,
            [0.0, 14.4],
            level={"program_code": "program area"},
            steps=1,
        ),
    ]
    both = side_by_side(
        cells,
        answer,
        kind="count",
        dimensions=["program_code"],
        leaves=LEAVES,
        clamp=(0.0, 1.0),
        hierarchy_of=lambda dimension: PROGRAMS,
    )
    # ELEM: gateway |44-45|, Tumult |47-45|; SPED, hidden: gateway |12|, Tumult |0-12|;
    # "other" (ESL and ART): gateway |4-3|, Tumult's cells added |5+1-3|.
    assert both.gateway == [1.0, 12.0, 1.0]
    assert both.tumult == [2.0, 12.0, 3.0]
    assert (both.gateway_published, both.tumult_published) == ([1.0, 1.0], [2.0, 3.0])


def test_tumult_averages_pool_into_a_coarse_cell() -> None:
    leaves = {
        '["ELEM"]': Leaf(key=("ELEM",), teachers=30, total=1500.0),  # mean 50
        '["SPED"]': Leaf(key=("SPED",), teachers=10, total=300.0),  # mean 30
    }
    # Centred on 50 (clamp 1 to 99): ELEM 30 teachers, sum 0; SPED 10, sum -200.
    answer = {
        "counts": {'["ELEM"]': 30.0, '["SPED"]': 10.0},
        "sums": {'["ELEM"]': 0.0, '["SPED"]': -200.0},
    }
    top = _cell(
        {"program_code": "all programs"},
        44.0,
        [40.0, 48.0],
        level={"program_code": "all programs"},
        steps=1,
    )
    both = side_by_side(
        [top],
        answer,
        kind="mean",
        dimensions=["program_code"],
        leaves=leaves,
        clamp=(1.0, 99.0),
        hierarchy_of=lambda dimension: PROGRAMS,
    )
    # Truth 1800/40 = 45; gateway |44-45|; Tumult 50 + (0 - 200)/40 = 45.
    assert both.gateway == [1.0]
    assert both.tumult == [pytest.approx(0.0)]


def test_kappa_entries_read_today_s_summary_and_one_with_an_interval() -> None:
    today = {"weighted_kappa": [{"group": {}, "value": None, "note": "not computed"}]}
    assert kappa_entries(today) == [
        {"group": {}, "published": False, "value": None, "half_width": None, "note": "not computed"}
    ]
    later = {"weighted_kappa": [{"group": {}, "value": 0.61, "ci95": [0.5, 0.72], "note": ""}]}
    (entry,) = kappa_entries(later)
    assert entry["published"] and entry["half_width"] == pytest.approx(0.11)
    assert kappa_entries(None) == []


def test_diversity_groups_by_stage() -> None:
    by_status = [
        _cell({"completion_status": "completed", "race_ethnicity": "WHITE"}, 300.0, [290, 310]),
        _cell(
            {"completion_status": "completed", "race_ethnicity": "teachers of colour"},
            90.0,
            [80, 100],
            level={"race_ethnicity": "partnership grouping"},
            steps=1,
        ),
        _cell({"completion_status": "in_progress", "race_ethnicity": "WHITE"}, None, None),
        _cell(
            {"completion_status": "in_progress", "race_ethnicity": "all races and ethnicities"},
            60.0,
            [50, 70],
            steps=2,
        ),
    ]
    hired = [_cell({"race_ethnicity": "WHITE", "gender": "F"}, 100.0, [90, 110])]
    retained = [_cell({"race_ethnicity": "WHITE"}, None, None)]
    stages = diversity_groups(
        [("count", by_status), ("count", hired), ("retention", retained)],
        tops=["all races and ethnicities"],
    )
    assert stages == {
        "completers": {"race_ethnicity": ["WHITE", "teachers of colour"], "gender": []},
        "candidates": {"race_ethnicity": [], "gender": []},  # only the top: no group
        "hired": {"race_ethnicity": ["WHITE"], "gender": ["F"]},
        "retained": {"race_ethnicity": [], "gender": []},
    }


def test_budget_left_of_the_period_in_force_or_of_the_whole_agreement() -> None:
    whole = {"agreement": "a", "total": 3.0, "remaining": 1.35, "period": None}
    assert budget_left(whole) == ("a", "its whole life", 1.35, 3.0)
    yearly = {
        "agreement": "a",
        "total": 9.0,
        "remaining": 7.0,
        "period": {"label": "2026-27", "total": 3.0, "remaining": 1.0},
    }
    assert budget_left(yearly) == ("a", "school year 2026-27", 1.0, 3.0)


def test_reduce_teacher_as_the_gateway_reduces() -> None:
    rows = [{"_group": '["ELEM"]', "_a": r} for r in (2, 3, 4, 3)]
    # A distribution counts a teacher once, at the lower median of their ratings (3).
    assert reduce_teacher(rows, {"kind": "distribution"}) == [{"_cell": '["ELEM",3]', "_x": 0.0}]
    # Retention in the window 2021-2025, one year after the first: hired 2022, there 2023.
    spec = {"kind": "retention", "window": [2021, 2025], "years_after": 1}
    stayed = [{"_group": '["SPED"]', "_y": y} for y in (2022, 2023)]
    assert reduce_teacher(stayed, spec) == [{"_cell": '["SPED"]', "_x": 1.0}]
    left = [{"_group": '["SPED"]', "_y": 2022}]
    assert reduce_teacher(left, spec) == [{"_cell": '["SPED"]', "_x": 0.0}]
    already_there = [{"_group": '["SPED"]', "_y": y} for y in (2021, 2022)]
    assert reduce_teacher(already_there, spec) == []
    # A mean: a teacher with too few students in a cell is left out of it.
    mean = {"kind": "mean", "clamp": [1, 99], "students_min": 2}
    scores = [{"_group": '["ELEM"]', "_a": 40, "_s": 1}, {"_group": '["ELEM"]', "_a": 60, "_s": 1}]
    assert reduce_teacher(scores, mean) == [{"_cell": '["ELEM"]', "_x": 50.0}]
    assert reduce_teacher(scores[:1], mean) == []


# Each report of the small partnership and the demo agreement it was taken from.
SOURCES = {
    "pipeline": "student-teaching-bayview-eastport",
    "performance": "student-teaching-bayview-eastport",
    "performance_by_provider": "student-teaching-bayview-eastport",
    "impact": "student-teaching-bayview-eastport",
    "retention": "student-teaching-bayview-eastport",
    "calibration": "calibration-lakeshore-riverbend",
    "diversity": "diversity-cedar-valley-harmon",
}


def test_the_small_partnership_asks_what_the_demo_asks() -> None:
    """bench/agreements/small-partnership.yaml copies the demo's reports: when a demo
    report's queries change (coarsening asked for, say), copy the change there too."""
    small = yaml.safe_load((REPO / "bench/agreements/small-partnership.yaml").read_text())
    assert sorted(r["name"] for r in small["reports"]) == sorted(SOURCES)
    for report in small["reports"]:
        source = yaml.safe_load((REPO / f"agreements/{SOURCES[report['name']]}.yaml").read_text())
        (theirs,) = [r for r in source["reports"] if r["name"] == report["name"]]
        assert [t["query"] for t in report["tables"]] == [t["query"] for t in theirs["tables"]]
        assert report.get("epsilon") == theirs.get("epsilon")
        assert report.get("parameters") == theirs.get("parameters")
        untitled = [
            [{k: v for k, v in d.items() if k != "title"} for d in r.get("derived", [])]
            for r in (report, theirs)
        ]
        assert untitled[0] == untitled[1]


# --- the budget sweep ---------------------------------------------------------------------


def _document(name: str) -> dict[str, Any]:
    return yaml.safe_load((REPO / f"agreements/{name}.yaml").read_text())


def test_scaling_an_agreement_raises_only_the_budgets_its_pass_needs() -> None:
    # Bayview-Eastport, standard profile (budget 3, cap 1), overrides min_cell_students:
    # pipeline, performance, performance_by_provider, impact and retention at 0.3.
    document = _document("student-teaching-bayview-eastport")
    budgets = {"privacy_budget": Decimal(3), "period_budget": None, "per_release_cap": Decimal(1)}
    same = scale_agreement(document, Decimal(1), **budgets)
    assert same.document == document  # 1.5 fits in 3, 0.3 under the cap: nothing raised
    assert same.pass_epsilon == Decimal("1.5")
    assert same.epsilons["retention"] == Decimal("0.3")
    four = scale_agreement(document, Decimal(4), **budgets)
    assert four.epsilons == {
        "pipeline": Decimal("1.2"),
        "performance": Decimal("1.2"),
        "performance_by_provider": Decimal("1.2"),
        "impact": Decimal("1.2"),
        "retention": Decimal("1.2"),
    }
    assert four.pass_epsilon == Decimal("6")
    assert four.document["disclosure"] == {
        "profile": "standard",
        "overrides": {
            "min_cell_students": 20,
            "per_release_cap": {"epsilon": "1.2"},
            "privacy_budget": {"epsilon": "6"},
        },
    }
    assert document["disclosure"]["overrides"] == {"min_cell_students": 20}  # not changed
    assert {k: v for k, v in four.document.items() if k != "disclosure"} == {
        k: v for k, v in document.items() if k != "disclosure"
    }


def test_scaling_keeps_a_period_budget_s_delta_and_raises_it_only_past_the_year() -> None:
    # Cedar Valley-Harmon, strict (cap 0.25): 2.5 over its life, 0.5 a school year.
    document = _document("diversity-cedar-valley-harmon")
    budgets = {
        "privacy_budget": Decimal("2.5"),
        "period_budget": Decimal("0.5"),
        "per_release_cap": Decimal("0.25"),
    }
    two = scale_agreement(document, Decimal(2), **budgets)
    assert two.epsilons == {"diversity": Decimal("0.5")}
    overrides = two.document["disclosure"]["overrides"]
    assert overrides["per_release_cap"] == {"epsilon": "0.5"}
    assert overrides["period_budget"] == {"epsilon": 0.5, "delta": 2e-08}  # 0.5 fits
    assert overrides["privacy_budget"] == {"epsilon": 2.5}
    sixteen = scale_agreement(document, Decimal(16), **budgets).document
    assert sixteen["disclosure"]["overrides"] == {
        "privacy_budget": {"epsilon": "4"},
        "period_budget": {"epsilon": "4", "delta": 2e-08},
        "per_release_cap": {"epsilon": "4"},
    }


def test_a_report_without_epsilon_scales_the_cap_and_limits_rise_to_the_pass() -> None:
    document = {
        "disclosure": {"profile": "standard"},
        "budget_limits": {"p": {"epsilon": 0.5, "delta": 1e-7}, "q": {"epsilon": 5, "delta": 0}},
        "reports": [{"name": "a"}, {"name": "b", "epsilon": "0.2"}],
    }
    scaled = scale_agreement(
        document,
        Decimal(2),
        privacy_budget=Decimal(3),
        period_budget=None,
        per_release_cap=Decimal(1),
    )
    # "a" asks the cap by default (1), "b" its own 0.2: twice each, 2.4 in all.
    assert scaled.epsilons == {"a": Decimal(2), "b": Decimal("0.4")}
    assert scaled.pass_epsilon == Decimal("2.4")
    assert scaled.document["disclosure"]["overrides"] == {"per_release_cap": {"epsilon": "2"}}
    assert scaled.document["budget_limits"] == {
        "p": {"epsilon": "2.4", "delta": 1e-7},  # raised to the pass
        "q": {"epsilon": 5, "delta": 0},  # already enough
    }
    assert decimal_text(Decimal("1.6E+1")) == "16" and decimal_text(Decimal("7.20")) == "7.2"


def test_the_scaled_copies_load_and_the_repo_s_agreements_stay_as_they_are(
    tmp_path: Path,
) -> None:
    before = {p.name: p.read_bytes() for p in (REPO / "agreements").glob("*.yaml")}
    epsilons, signed = write_scaled_agreements(REPO / "agreements", tmp_path, Decimal(16))
    assert {p.name: p.read_bytes() for p in (REPO / "agreements").glob("*.yaml")} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)
    assert signed == {
        "calibration-lakeshore-riverbend": Decimal(4),
        "diversity-cedar-valley-harmon": Decimal("0.5"),  # its school year's budget
        "sped-pipeline-northfield-tricounty": Decimal(3),
        "student-teaching-bayview-eastport": Decimal(3),
    }
    assert epsilons[("calibration-lakeshore-riverbend", "calibration")] == Decimal("9.6")
    registry = load_registry(tmp_path, REPO / "policies")
    bayview = registry.agreement("student-teaching-bayview-eastport").resolved_disclosure
    assert (bayview.privacy_budget.epsilon, bayview.per_release_cap.epsilon) == (
        Decimal("24"),  # 16 x its pass of 1.5
        Decimal("4.8"),  # 16 x its largest report (0.3)
    )
    assert bayview.min_cell_students == 20  # its own override kept
    harmon = registry.agreement("diversity-cedar-valley-harmon").resolved_disclosure
    assert harmon.period_budget is not None
    assert (harmon.period_budget.epsilon, harmon.period_budget.delta) == (
        Decimal(4),
        Decimal("2E-8"),
    )
    assert harmon.privacy_budget.epsilon == Decimal(4)
    assert harmon.min_cell_teachers == 20  # still the strict profile


def test_targets_met_and_the_scales_that_meet_them() -> None:
    stages = {
        stage: {"race_ethnicity": ["WHITE", "teachers of colour"], "gender": []}
        for stage in ("candidates", "completers", "hired", "retained")
    }
    figures = {
        "represented": 0.95,
        "suppressed": 0.06,
        "useful": None,  # no value published: not met
        "kappa": True,
        "groups": stages,
    }
    assert targets_met(figures) == {
        "represented": True,
        "suppressed": False,
        "useful": False,
        "kappa": True,
        "groups": True,
    }
    stages["retained"]["race_ethnicity"] = ["WHITE"]
    assert not targets_met(figures)["groups"]
    assert not targets_met({**figures, "kappa": None})["kappa"]
    scales = [Decimal(s) for s in (1, 2, 4, 8)]
    assert met_at(list(zip(scales, [False, True, False, True], strict=True))) == (
        "from x2 (missed again at x4)"
    )
    assert met_at(list(zip(scales, [False, False, True, True], strict=True))) == "from x4"
    assert met_at(list(zip(scales, [False] * 4, strict=True))) == "at none (up to x8)"
