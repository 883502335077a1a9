"""Coarsening instead of suppressing (release/coarsen.py): the ladder, the tree, the
top-down decisions with remainders, consistent values, the thresholds of merged cells
and whole releases that roll small cells up into their groups."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from gateway import audit
from gateway.agreements.models import Hierarchy
from gateway.context import Gateway, initialise
from gateway.ingest import upload_extract
from gateway.release import coarsen, decide, noise
from gateway.release.engine import request_release
from gateway.release.model import Preview, Release
from gateway.release.plan import Plan
from gateway.release.query import parse_query
from tests.conftest import (
    AGREEMENT,
    DISTRICT,
    EPP,
    ROOMY_EPSILON,
    count_plan,
    make_settings,
    roomy_agreements,
)

ACTOR = audit.Actor(role="analyst", party=EPP)

RATINGS = Hierarchy.model_validate(
    {
        "levels": [
            {
                "name": "rating band",
                "groups": {"below proficient": [1, 2], "proficient": [3], "exemplary": [4]},
            }
        ],
        "top": "all ratings",
    }
)
YEARS = Hierarchy.model_validate(
    {"levels": [{"name": "3-year window", "pool": 3}], "top": "all years"}
)


# --- the ladder and the tree ---------------------------------------------------------------


def test_pooled_windows_partition_the_years_asked_aligned_on_the_latest() -> None:
    axis = coarsen.axis(
        0, "school_year", YEARS, [2019, 2020, 2021, 2022, 2023, 2024, 2025], kind="codes"
    )
    assert axis is not None and axis.kind == "years"
    windows: dict[Any, list[int]] = {}
    for year in range(2019, 2026):
        windows.setdefault(axis.label(year, 1), []).append(year)
    assert windows == {
        "2023\u20132025": [2023, 2024, 2025],
        "2020\u20132022": [2020, 2021, 2022],
        "2019": [2019],  # the oldest window, cut to the years asked, named for them
    }
    assert {axis.label(year, 2) for year in range(2019, 2026)} == {"all years"}


def test_the_ladder_coarsens_codes_then_years_then_values_and_never_values_to_the_top() -> None:
    years = coarsen.axis(1, "school_year", YEARS, [2023, 2024, 2025], kind="codes")
    ratings = coarsen.axis(2, "summative_rating", RATINGS, [1, 2, 3, 4], kind="values")
    assert years is not None and ratings is not None
    ladder = coarsen.ladder([ratings, years])
    assert ladder is not None
    assert ladder.describe() == [
        {"school_year": "as asked", "summative_rating": "as asked"},
        {"school_year": "3-year window", "summative_rating": "as asked"},
        {"school_year": "3-year window", "summative_rating": "rating band"},
        {"school_year": "all years", "summative_rating": "rating band"},
    ]
    assert [ladder.stepped(s) for s in range(1, 4)] == [1, 2, 1]


@given(
    st.lists(st.integers(2000, 2030), min_size=1, max_size=12, unique=True),
    st.lists(st.sampled_from([1, 2, 3, 4]), min_size=1, max_size=4, unique=True),
)
def test_every_step_partitions_the_leaves_and_nests_in_the_next(
    years: list[int], ratings: list[int]
) -> None:
    axes = [
        coarsen.axis(0, "school_year", YEARS, years, kind="codes"),
        coarsen.axis(1, "summative_rating", RATINGS, ratings, kind="values"),
    ]
    ladder = coarsen.ladder([a for a in axes if a is not None])
    if ladder is None:
        return
    leaves = [(y, r) for y in years for r in ratings]
    roots = coarsen.tree(leaves, ladder)
    seen: list[Any] = []
    stack = list(roots)
    while stack:
        node = stack.pop()
        if node.children:
            # Children partition their node, one step below it.
            assert sorted(leaf for c in node.children for leaf in c.leaves) == sorted(node.leaves)
            assert all(c.step == node.step - 1 for c in node.children)
            stack += node.children
        else:
            assert node.step == 0 and node.leaves == [node.key]
            seen.append(node.key)
        assert all(ladder.node(leaf, node.step) == node.key for leaf in node.leaves)
    assert sorted(seen) == sorted(leaves)
    assert all(root.step == ladder.top for root in roots)


# --- consistent values ---------------------------------------------------------------------


@given(
    st.lists(
        st.tuples(st.floats(-50, 50, allow_nan=False), st.integers(1, 6)), min_size=1, max_size=8
    ),
    st.floats(0, 200, allow_nan=False),
)
def test_projection_is_the_weighted_least_squares_point_non_negative_and_adding_up(
    items: list[tuple[float, int]], total: float
) -> None:
    values = [v for v, _ in items]
    weights = [float(w) for _, w in items]
    x = coarsen.project(values, weights, total)
    assert all(v >= 0 for v in x)
    assert math.isclose(sum(x), total, rel_tol=1e-9, abs_tol=1e-9)
    # Optimality (KKT): one multiplier lambda with x_i = max(0, v_i - lambda w_i).
    positive = [i for i, v in enumerate(x) if v > 1e-9]
    if positive and total > 0:
        lam = (values[positive[0]] - x[positive[0]]) / weights[positive[0]]
        for i in range(len(values)):
            assert math.isclose(
                x[i], max(0.0, values[i] - lam * weights[i]), rel_tol=1e-6, abs_tol=1e-6
            )


def test_projection_leaves_values_that_already_fit_alone() -> None:
    assert coarsen.project([3.0, 4.0, 5.0], [1.0, 2.0, 1.0], 12.0) == [3.0, 4.0, 5.0]


@given(st.lists(st.integers(-20, 60), min_size=8, max_size=8))
def test_consistent_values_are_non_negative_and_children_add_up_to_parents(
    noisy: list[int],
) -> None:
    ratings = coarsen.axis(1, "summative_rating", RATINGS, [1, 2, 3, 4], kind="codes")
    assert ratings is not None
    ladder = coarsen.ladder([ratings])
    assert ladder is not None
    leaves = [(band, r) for band in ("a", "b") for r in (1, 2, 3, 4)]
    measured = dict(zip(leaves, map(float, noisy), strict=True))
    roots = coarsen.tree(leaves, ladder)
    values = coarsen.consistent(roots, measured, non_negative=True)
    stack = list(roots)
    while stack:
        node = stack.pop()
        value = values[(node.step, node.key)]
        assert value >= 0
        if node.children:
            assert math.isclose(
                sum(values[(c.step, c.key)] for c in node.children), value, abs_tol=1e-9
            )
            stack += node.children
    for root in roots:  # a root is its noisy total, clipped at 0
        assert values[(root.step, root.key)] == max(0.0, sum(measured[k] for k in root.leaves))


# --- decisions -----------------------------------------------------------------------------


def _decide(counts: dict[Any, int], true: dict[Any, int], plan: Plan) -> decide.Coarsened:
    return decide.decide_coarsened(
        list(counts),
        {k: float(v) for k, v in counts.items()},
        lambda keys: sum(true[k] for k in keys),
        plan=plan,
        remembered=lambda key: False,
    )


def _plan(epsilon: str = "1", minimum: int = 10) -> Plan:
    ratings = coarsen.axis(1, "summative_rating", RATINGS, [1, 2, 3, 4], kind="codes")
    assert ratings is not None
    return count_plan(
        epsilon,
        ["grade_band", "summative_rating"],
        minimum=minimum,
        ladder=coarsen.ladder([ratings]),
    )


def test_a_family_that_clears_is_published_as_asked_and_a_small_rest_is_suppressed() -> None:
    plan = _plan()
    tau = plan.threshold
    big, small = tau + 40, 2
    counts = {
        ("a", 1): big, ("a", 2): big, ("a", 3): big, ("a", 4): big,  # all clear: as asked
        ("b", 1): small, ("b", 2): small, ("b", 3): big, ("b", 4): big,  # 1 and 2 do not
        ("c", 1): small, ("c", 2): small, ("c", 3): small, ("c", 4): tau + 1,
    }  # fmt: skip
    result = _decide(counts, counts, plan)
    published = {(node.key, node.step) for node in result.published}
    assert published == {
        (("a", 1), 0), (("a", 2), 0), (("a", 3), 0), (("a", 4), 0),
        (("b", 3), 0), (("b", 4), 0),
        # c: only exemplary clears, and the rest does not: one part beside a hidden
        # rest says less than the whole, so c is published whole.
        (("c", "all ratings"), 2),
    }  # fmt: skip
    # b's 1 and 2 (4 teachers) do not clear even together: suppressed as b's rest
    # beside two bands that clear, and b's total is not published, so they cannot be
    # worked out from it.
    hidden = {node.key: node for node in result.hidden}
    assert set(hidden) == {("b", "all ratings: below proficient")}
    assert hidden[("b", "all ratings: below proficient")].leaves == [("b", 1), ("b", 2)]
    assert result.pattern.primary == set(hidden)


def test_a_node_none_of_whose_children_clears_is_published_whole() -> None:
    plan = _plan()
    part = plan.threshold // 3 + 1  # each too small; all four together clear
    counts = {("a", r): part for r in (1, 2, 3, 4)}
    result = _decide(counts, counts, plan)
    assert [(n.key, n.step) for n in result.published] == [(("a", "all ratings"), 2)]
    assert not result.hidden


def test_a_remainder_that_clears_is_published_named_for_what_it_holds() -> None:
    plan = _plan()
    threshold_two = decide.node_threshold(plan, 2)
    # 3 and 4 are too small alone; together they clear the threshold of two cells.
    part = threshold_two // 2 + 3
    counts = {("a", 1): 200, ("a", 2): 200, ("a", 3): part, ("a", 4): part}
    assert part < plan.threshold
    result = _decide(counts, counts, plan)
    by_key = {node.key: node for node in result.published}
    assert set(by_key) == {("a", 1), ("a", 2), ("a", "all ratings: proficient, exemplary")}
    rest = by_key[("a", "all ratings: proficient, exemplary")]
    assert rest.covers == ["proficient", "exemplary"]
    assert sorted(rest.leaves) == [("a", 3), ("a", 4)]


def test_the_floor_holds_however_high_the_noisy_count() -> None:
    plan = _plan()
    noisy = {("a", r): 10_000 for r in (1, 2, 3, 4)}
    true = {("a", 1): 50, ("a", 2): 50, ("a", 3): 50, ("a", 4): 9}  # 4: below the minimum
    result = _decide(noisy, true, plan)
    keys = {node.key for node in result.published}
    assert ("a", 4) not in keys
    assert all(sum(true[leaf] for leaf in node.leaves) >= plan.minimum for node in result.published)


@hyp_settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 40), min_size=8, max_size=8),
    st.lists(st.integers(-30, 30), min_size=8, max_size=8),
)
def test_published_and_hidden_cells_are_disjoint_cover_each_cleared_root_and_rest_on_minimum(
    true: list[int], noise_: list[int]
) -> None:
    plan = _plan()
    leaves = [(band, r) for band in ("a", "b") for r in (1, 2, 3, 4)]
    truth = dict(zip(leaves, true, strict=True))
    noisy = {k: truth[k] + n for k, n in zip(leaves, noise_, strict=True)}
    result = _decide(noisy, truth, plan)
    covered = [leaf for node in result.published + result.hidden for leaf in node.leaves]
    assert len(covered) == len(set(covered))  # disjoint
    shown_roots = [r for r in result.roots if r.key not in result.pattern.suppressed]
    assert sorted(covered) == sorted(leaf for r in shown_roots for leaf in r.leaves)
    # No published cell's leaves hold a hidden one's: nothing hidden can be subtracted.
    hidden = {leaf for node in result.hidden for leaf in node.leaves}
    assert not any(hidden & set(node.leaves) for node in result.published)
    for node in result.published:
        assert sum(truth[leaf] for leaf in node.leaves) >= plan.minimum
        assert sum(noisy[leaf] for leaf in node.leaves) >= decide.node_threshold(
            plan, len(node.leaves)
        )


@pytest.mark.parametrize("epsilon", ["0.3", "1", "4"])
@pytest.mark.parametrize("leaves", [2, 3, 6])
def test_a_merged_cells_threshold_bounds_the_tail_of_its_summed_noise(
    epsilon: str, leaves: int
) -> None:
    """Checked against the sum's exact distribution, by convolving the discrete
    Laplace distribution with itself, independently of noise.py's formula."""
    plan = _plan(epsilon)
    threshold = decide.node_threshold(plan, leaves)
    margin = threshold - (plan.minimum - 1)  # g = 1: a cell below the minimum sums to <= 9
    scale = plan.counts.scale  # type: ignore[union-attr]
    a = math.exp(-1.0 / scale)
    support = np.arange(-4000, 4001)
    one = (1 - a) / (1 + a) * a ** np.abs(support)
    total = one
    for _ in range(leaves - 1):
        total = np.convolve(total, one)
    values = np.arange(len(total)) - (len(total) - 1) // 2
    tail = float(total[values >= margin].sum())
    assert tail <= decide.floor_tail(plan)
    # ... and it is the smallest such margin, as tight as the floor's delta allows.
    assert float(total[values >= margin - 1].sum()) > decide.floor_tail(plan)
    assert threshold >= decide.node_threshold(plan, leaves - 1)


# --- whole releases ------------------------------------------------------------------------

#: Teachers per grade band in 2025: PK-2 clears alone; 3-5 and 6-8 only together.
COUNTS = {"PK-2": 30, "3-5": 8, "6-8": 7, "9-12": 25}
GROUPING = {
    "grade_band": {
        "levels": [
            {"name": "school level", "groups": {"lower": ["PK-2", "3-5", "6-8"], "upper": ["9-12"]}}
        ],
        "top": "all grades",
    }
}


@pytest.fixture
def grouped(tmp_path: Path, database_url: str) -> Iterator[Gateway]:
    """The roomy example agreements, Bayview's grouping its grade bands in two levels,
    with the district's evaluations of ``COUNTS`` teachers uploaded."""
    folder = roomy_agreements(tmp_path)
    for other in folder.glob("*.yaml"):  # the roomy cap, whatever a year may spend
        document = yaml.safe_load(other.read_text())
        document["disclosure"].get("overrides", {}).pop("period_budget", None)
        other.write_text(yaml.safe_dump(document, sort_keys=False))
    path = folder / f"{AGREEMENT}.yaml"
    document = yaml.safe_load(path.read_text())
    document["groupings"] = GROUPING
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    settings = make_settings(tmp_path, database_url, agreements_dir=folder)
    initialise(settings)
    lines = ["MEPID,SY,Grade Span,Summative Rating,School Code,Yrs Experience"]
    teacher = 200000
    for band, n in COUNTS.items():
        for i in range(n):
            teacher += 1
            lines.append(f"{teacher},2025,{band},{3 if i % 4 else 4},S-01,{i % 9}")
    extract = tmp_path / "evaluations.csv"
    extract.write_text("\n".join(lines) + "\n")
    with Gateway.open(settings) as gw:
        upload_extract(
            gw,
            agreement_id=AGREEMENT,
            party=DISTRICT,
            dataset="evaluations",
            path=extract,
            actor=audit.Actor(role="uploader", party=DISTRICT),
        )
        yield gw


def _ask(gw: Gateway, body: dict[str, Any], *, dry_run: bool = False) -> Any:
    return request_release(
        gw, agreement_id=AGREEMENT, party=EPP, query=parse_query(body), actor=ACTOR, dry_run=dry_run
    )


QUERY = {
    "datasets": ["evaluations"],
    "measure": {"kind": "count"},
    "group_by": ["grade_band"],
    "filters": [{"field": "school_year", "op": "eq", "value": 2025}],
    "epsilon": ROOMY_EPSILON,
    "coarsen": True,
}


def test_a_coarsened_release_rolls_small_cells_into_their_group(grouped: Gateway) -> None:
    released = _ask(grouped, QUERY)
    assert isinstance(released, Release)
    body = released.to_json()
    cells = {c["group"]["grade_band"]: c for c in body["cells"]}
    assert set(cells) == {"PK-2", "lower: 3-5, 6-8", "9-12"}
    assert cells["PK-2"]["steps"] == 0 and cells["PK-2"]["level"] == {"grade_band": "as asked"}
    rest = cells["lower: 3-5, 6-8"]
    assert rest["steps"] == 1 and rest["level"] == {"grade_band": "school level"}
    assert rest["covers"] == {"grade_band": ["3-5", "6-8"]}
    # At epsilon 10 the noise is below 1 with probability 0.9999 a cell.
    assert abs(rest["value"] - (COUNTS["3-5"] + COUNTS["6-8"])) < 1.5
    assert abs(cells["PK-2"]["value"] - COUNTS["PK-2"]) < 1.5
    assert not any(c["suppressed"] for c in body["cells"])
    assert body["decisions"]["coarsening"] == [
        {"grade_band": "as asked"},
        {"grade_band": "school level"},
        {"grade_band": "all grades"},
    ]
    # The same table without coarsening suppresses both small bands.
    flat = _ask(grouped, {**QUERY, "coarsen": False}).to_json()
    hidden = {c["group"]["grade_band"] for c in flat["cells"] if c["suppressed"]}
    assert {"3-5", "6-8"} <= hidden


def test_coarsening_is_part_of_the_query_asked_and_comes_back_stored(grouped: Gateway) -> None:
    first = _ask(grouped, QUERY)
    again = _ask(grouped, {**QUERY, "group_by": ["grade_band"]})
    assert isinstance(first, Release) and isinstance(again, Release)
    assert again.repeated and again.cells == first.cells
    preview = _ask(grouped, {**QUERY, "coarsen": False}, dry_run=True)
    assert isinstance(preview, Preview) and not preview.repeat  # another table: not free


def test_a_distribution_coarsens_its_values_into_bands(grouped: Gateway) -> None:
    """Ratings 3 and 4 of the bands (1 and 2: none). At epsilon 10 the noise is below a
    teacher: the 'below proficient' root (0 teachers) is suppressed, and 'exemplary'
    (19) with it, to protect it within the line of roots; under 'proficient' (51),
    9-12 (18) is published as asked; in 'lower' only PK-2 (22) clears, 3-5 and 6-8 (6
    and 5, 11 together) do not even together, so 'lower' (33) is published whole."""
    body = _ask(
        grouped, {**QUERY, "measure": {"kind": "distribution", "field": "summative_rating"}}
    ).to_json()
    cells = {(c["group"]["grade_band"], c["group"]["summative_rating"]): c for c in body["cells"]}
    assert set(cells) == {
        ("lower", 3),
        ("9-12", 3),
        ("all grades", "below proficient"),
        ("all grades", "exemplary"),
    }
    lower = cells[("lower", 3)]
    assert lower["value"] == pytest.approx(33, abs=1.5) and lower["steps"] == 1
    assert lower["level"] == {"grade_band": "school level", "summative_rating": "as asked"}
    assert cells[("9-12", 3)]["steps"] == 0 and not cells[("9-12", 3)]["suppressed"]
    assert cells[("all grades", "below proficient")]["reason"] == "primary"
    assert cells[("all grades", "exemplary")]["reason"] == "complementary"


def test_a_distributions_shares_are_given_within_groups_published_whole() -> None:
    """Shares of a coarsened distribution, from consistent counts, where a group's
    cells are all published (postprocess.coarsened_table)."""
    from gateway.release.measure import Measurements
    from gateway.release.postprocess import coarsened_table

    plan = _plan("20")
    counts = {("a", 1): 30, ("a", 2): 20, ("a", 3): 35, ("a", 4): 15}
    measured = Measurements(keys=list(counts), counts=dict(counts))
    coarse = _decide(counts, counts, plan)
    table = coarsened_table(coarse, measured, plan, kind="distribution", coding=False)
    shares = {c.group["summative_rating"]: c.share for c in table}
    assert shares == pytest.approx({1: 0.3, 2: 0.2, 3: 0.35, 4: 0.15}, abs=1e-4)
    assert all(c.share_ci95 and c.share_ci95[0] <= c.share <= c.share_ci95[1] for c in table)


def _plan_of(gw: Gateway) -> Plan:
    """The plan of ``QUERY`` under the grouped agreement (what the preview shows)."""
    from gateway.release.canonical import normalise
    from gateway.release.plan import plan_query
    from gateway.release.query import resolve

    agreement = gw.agreement(AGREEMENT)
    asked = resolve(parse_query(QUERY), agreement=agreement, registry=gw.registry, party=EPP)
    return plan_query(normalise(asked, agreement), agreement)


def _span(values: list[int]) -> int | list[int]:
    return values[0] if min(values) == max(values) else [min(values), max(values)]


def test_the_preview_shows_each_steps_thresholds_and_half_widths(grouped: Gateway) -> None:
    preview = _ask(grouped, QUERY, dry_run=True)
    assert isinstance(preview, Preview)
    steps = preview.accuracy_95["coarsening"]
    assert [s["level"] for s in steps] == [
        {"grade_band": "as asked"},
        {"grade_band": "school level"},
        {"grade_band": "all grades"},
    ]
    assert [s["cells"] for s in steps] == [4, 2, 1]
    # A merged cell's threshold is never below one cell's: it sums more draws (at
    # epsilon 10 the draws are so small that four need no more margin than one).
    assert steps[0]["publish_threshold"] == preview.accuracy_95["publish_threshold"]
    assert steps[2]["publish_threshold"] >= steps[0]["publish_threshold"]
    # Each step's thresholds are those of its cells' sizes (lower: 3 bands, upper: 1).
    assert steps[1]["publish_threshold"] == _span(
        [decide.node_threshold(_plan_of(grouped), k) for k in (1, 3)]
    )


def test_the_csv_names_each_cells_level_and_steps(grouped: Gateway) -> None:
    from gateway.release.export import cells_csv

    body = _ask(grouped, QUERY).to_json()
    header, *lines = list(csv.reader(io.StringIO(cells_csv(body))))
    assert header[:3] == ["grade_band", "grade_band_level", "steps"]
    rows = {line[0]: line for line in lines}
    assert rows["PK-2"][1:3] == ["as asked", "0"]
    assert rows["lower: 3-5, 6-8"][1:3] == ["school level", "1"]


def test_a_rate_too_uncertain_to_use_says_so_and_what_would_help() -> None:
    from gateway.release.postprocess import _rate_cell

    plan = _plan("0.05")
    plan.numerators = noise.integer_noise(1, Decimal("0.05"))
    wide = _rate_cell({"g": 1}, 20.0, 40.0, plan, coding=False)
    assert wide.ci95 is not None and wide.ci95[1] - wide.ci95[0] > 0.5
    assert wide.note is not None and "too uncertain to use" in wide.note
    assert "pool more years" in wide.note and "spend more budget" in wide.note
    plan = _plan("20")
    plan.numerators = noise.integer_noise(1, Decimal("20"))
    narrow = _rate_cell({"g": 1}, 200.0, 400.0, plan, coding=False)
    assert narrow.note is None


def test_a_reports_gap_and_conversion_are_computed_from_two_tables_published_cells() -> None:
    from gateway.release.reports import DerivedSpec, derived_rows

    def cell(group: dict[str, Any], value: float, sd: float) -> dict[str, Any]:
        return {
            "group": group,
            "value": value,
            "ci95": [value - 2 * sd, value + 2 * sd],
            "suppressed": False,
            "noise_sd": sd,
        }

    stages = {
        "release": {
            "cells": [
                cell({"status": "completed", "race": "white"}, 80.0, 3.0),
                cell({"status": "completed", "race": "teachers of colour"}, 40.0, 3.0),
                cell({"status": "withdrawn", "race": "white"}, 10.0, 3.0),
                {"group": {"status": "withdrawn", "race": "teachers of colour"}, "value": None,
                 "ci95": None, "suppressed": True},
            ]
        }
    }  # fmt: skip
    hired = {
        "release": {
            "cells": [
                cell({"race": "white", "gender": "F"}, 30.0, 2.0),
                cell({"race": "white", "gender": "M"}, 10.0, 2.0),
                cell({"race": "teachers of colour", "gender": "F"}, 20.0, 2.0),
                cell({"race": "teachers of colour", "gender": "M"}, 4.0, 2.0),
            ]
        }
    }
    spec = DerivedSpec(
        title="Hired, of completers", kind="conversion", tables=[0, 1],
        where={"status": "completed"},
    )  # fmt: skip
    rows = {r["group"]["race"]: r for r in derived_rows(spec, [stages, hired])}
    assert rows["white"]["value"] == pytest.approx(40 / 80, abs=1e-4)
    assert rows["teachers of colour"]["value"] == pytest.approx(24 / 40, abs=1e-4)
    low, high = rows["white"]["ci95"]
    assert low < 0.5 < high and high - low < 0.5
    gap = DerivedSpec(title="gap", kind="gap", tables=[0, 1], where={"status": "completed"})
    gaps = {r["group"]["race"]: r for r in derived_rows(gap, [stages, hired])}
    assert gaps["white"]["value"] == pytest.approx(80 - 40)
    # The gap's interval: the two tables' noise together (sd 3 beside sd 2 and 2).
    half = (gaps["white"]["ci95"][1] - gaps["white"]["ci95"][0]) / 2
    assert half == pytest.approx(2.118 * math.sqrt(9 + 4 + 4), rel=1e-3)


def test_a_joint_table_is_drawn_as_a_grid_with_every_number_written() -> None:
    from gateway.web.charts import heat_map
    from gateway.web.rendering import _environment

    cells = [
        {"group": {"first": 3, "second": 3}, "value": 120.0, "suppressed": False},
        {"group": {"first": 3, "second": 4}, "value": 30.0, "suppressed": False},
        {"group": {"first": 4, "second": 3}, "value": None, "suppressed": True},
        {"group": {"first": 4, "second": 4}, "value": 60.0, "suppressed": False},
    ]
    grid = heat_map("Pairs", cells)
    assert grid is not None and grid.rows == ["3", "4"] and grid.columns == ["3", "4"]
    assert [[c.text if c else None for c in row] for row in grid.grid] == [
        ["120", "30"],
        ["suppressed", "60"],
    ]
    assert grid.grid[0][0].shade == 1.0 and grid.grid[1][1].shade == 0.5  # type: ignore[union-attr]
    html = str(_environment().get_template("_charts.html").module.heat_map(grid, "h"))
    assert html.count("<td") == 4 and "suppressed" in html and ">120<" in html


def test_a_gap_sums_the_finer_tables_cells_into_the_coarser_tables_groups() -> None:
    """Unfilled positions (exact, by licensure area) against candidates (noisy, rolled
    up into fields): each field's gap is its areas' positions minus its candidates."""
    from gateway.agreements.loader import load_registry
    from gateway.release.reports import DerivedSpec, derived_rows
    from tests.conftest import AGREEMENTS_DIR, POLICIES_DIR

    agreement = load_registry(AGREEMENTS_DIR, POLICIES_DIR).agreement(
        "sped-pipeline-northfield-tricounty"
    )
    hierarchy = agreement.field_hierarchy("licensure_area")
    assert hierarchy is not None
    level = hierarchy.levels[0]
    assert level.groups is not None
    field, areas = next((f, a) for f, a in level.groups.items() if len(a) >= 2)
    exact = [
        {"group": {"licensure_area": area}, "value": float(10 + i), "ci95": [10.0 + i] * 2,
         "suppressed": False, "noise_sd": 0.0}
        for i, area in enumerate(areas)
    ]  # fmt: skip
    noisy = [
        {"group": {"licensure_area": field}, "value": 7.0, "ci95": [1.0, 13.0],
         "suppressed": False, "noise_sd": 2.0, "level": {"licensure_area": level.name}, "steps": 1}
    ]  # fmt: skip
    spec = DerivedSpec(title="gap", kind="gap", tables=[0, 1])
    rows = derived_rows(
        spec, [{"release": {"cells": exact}}, {"release": {"cells": noisy}}], agreement
    )
    assert len(rows) == 1 and rows[0]["group"] == {"licensure_area": field}
    assert rows[0]["value"] == pytest.approx(sum(10 + i for i in range(len(areas))) - 7.0)
    # With one area of the field missing, the two sides stand for different positions.
    rows = derived_rows(
        spec, [{"release": {"cells": exact[1:]}}, {"release": {"cells": noisy}}], agreement
    )
    assert rows == []


@pytest.mark.parametrize(("groups", "leaves"), [(3, 2), (3, 5), (2, 4)])
def test_with_several_groups_per_teacher_a_merged_cells_floor_is_min_g_k_below_the_minimum(
    groups: int, leaves: int
) -> None:
    """A teacher is in at most min(g, k) of k merged cells: a merged cell with 9 distinct
    teachers sums to at most min(g, k) * 9 before noise."""
    plan = count_plan("1", ["band"], groups_per_teacher=groups)
    plan.counts = noise.integer_noise(groups, Decimal("1"))
    plan.threshold = decide.publish_threshold(plan, None)
    threshold = decide.node_threshold(plan, leaves)
    margin = threshold - min(groups, leaves) * (plan.minimum - 1)
    assert plan.counts.sum_tail(leaves, margin) <= decide.floor_tail(plan)
    assert plan.counts.sum_tail(leaves, margin - 1) > decide.floor_tail(plan)


def test_the_floor_counts_distinct_teachers_of_merged_cells() -> None:
    """Two bands whose counts add to 12 but share 4 teachers: 8 distinct, below 10."""
    import numpy as np

    from gateway.release.aggregate import TrueCell, distinct_teachers

    cells = {
        ("a", 1): TrueCell(teachers=6, members=np.arange(0, 6)),
        ("a", 2): TrueCell(teachers=6, members=np.arange(2, 8)),
    }
    count = distinct_teachers(cells, linked=True)
    assert count([("a", 1), ("a", 2)]) == 8 and count([("a", 1)]) == 6
    rows_of_counts = {("a", 1): TrueCell(total=4.6), ("a", 2): TrueCell(total=5.3)}
    # Rows of counts: the merged sum, below the minimum only when it is (9.9 < 10).
    assert distinct_teachers(rows_of_counts, linked=False)([("a", 1), ("a", 2)]) == 9


def test_the_floors_delta_counts_a_node_and_a_remainder_per_step_and_group() -> None:
    plan = _plan("1")
    assert plan.ladder is not None and plan.steps == 3
    expected = 1e-9 / (2 * 3 * (1 + math.e))
    assert decide.floor_tail(plan) == pytest.approx(expected, rel=1e-12)
    plan.summarised = True  # a joint table's statistics: one more cell per group
    assert decide.floor_tail(plan) == pytest.approx(1e-9 / (7 * (1 + math.e)), rel=1e-12)


def test_a_reports_shares_stay_within_the_per_release_bounds() -> None:
    from gateway.release.reports import _fill

    weights = [Decimal(100), Decimal(1), Decimal(1)]
    shares = _fill(weights, Decimal(2), Decimal("0.2"), Decimal(1))
    # The big table would get 1.96: capped at 1, the rest shared; the small ones would
    # get 0.5 each, within bounds.
    assert shares == [Decimal(1), Decimal("0.5"), Decimal("0.5")]
    shares = _fill([Decimal(50), Decimal(1)], Decimal(1), Decimal("0.1"), Decimal(1))
    assert shares[1] == Decimal("0.1") and shares[0] == Decimal("0.9")  # lifted to the minimum
    assert sum(_fill(weights, Decimal("0.7"), Decimal("0.01"), Decimal(1))) == Decimal("0.7")


def test_coarsen_on_a_table_with_no_hierarchy_is_the_flat_table(grouped: Gateway) -> None:
    """A table with no dimension (nothing to roll up) asked with coarsen is the same
    canonical query, one release, as without."""
    body = {**QUERY, "group_by": []}
    first = _ask(grouped, {**body, "coarsen": False})
    again = _ask(grouped, {**body, "coarsen": True})
    assert isinstance(again, Release) and again.repeated
    assert again.release_id == first.release_id


def test_a_remainder_at_the_top_stands_for_its_groups_only_in_a_derived_figure() -> None:
    from gateway.agreements.loader import load_registry
    from gateway.release.reports import DerivedSpec, derived_rows
    from tests.conftest import AGREEMENTS_DIR, POLICIES_DIR

    agreement = load_registry(AGREEMENTS_DIR, POLICIES_DIR).agreement(
        "sped-pipeline-northfield-tricounty"
    )
    hierarchy = agreement.field_hierarchy("licensure_area")
    assert hierarchy is not None and hierarchy.levels[0].groups is not None
    fields = list(hierarchy.levels[0].groups.items())
    (big, big_areas), (small, small_areas) = fields[0], fields[1]
    positions = [
        {"group": {"licensure_area": a}, "value": 5.0, "ci95": [5.0, 5.0],
         "suppressed": False, "noise_sd": 0.0}
        for a in big_areas + small_areas
    ]  # fmt: skip
    top = hierarchy.top
    candidates = [
        {"group": {"licensure_area": big}, "value": 7.0, "ci95": [1.0, 13.0], "suppressed": False,
         "noise_sd": 2.0, "level": {"licensure_area": hierarchy.levels[0].name}, "steps": 1},
        {"group": {"licensure_area": f"{top}: {small}"}, "value": 3.0, "ci95": [0.0, 9.0],
         "suppressed": False, "noise_sd": 2.0, "level": {"licensure_area": top}, "steps": 2,
         "covers": {"licensure_area": [small]}},
    ]  # fmt: skip
    query = {"filters": [{"field": "licensure_area", "op": "in", "value": big_areas + small_areas}]}
    spec = DerivedSpec(title="gap", kind="gap", tables=[0, 1])
    rows = derived_rows(
        spec,
        [{"release": {"cells": positions, "query": query}},
         {"release": {"cells": candidates, "query": query}}],
        agreement,
    )  # fmt: skip
    by_group = {r["group"]["licensure_area"]: r["value"] for r in rows}
    # Two rows, one per field: the remainder is its own field's, not everything.
    assert by_group == {
        big: pytest.approx(5.0 * len(big_areas) - 7.0),
        f"{top}: {small}": pytest.approx(5.0 * len(small_areas) - 3.0),
    }
