"""Attacks on the release path by an authorised analyst: each failed on the code that
decided publication, refusals and labels on true data (the private-decisions issue).

- a binary search over refusals and suppression marks at a near-zero epsilon;
- neighbouring populations (one teacher either side of the minimum) released many
  times: what is published may differ only as much as (epsilon, delta) allows;
- concurrent overlapping and identical requests;
- rewordings of one query, to average fresh noise;
- extreme epsilon, delta, grouping and filters: a release or a documented refusal,
  never a 5xx, never a saturated count.
"""

from __future__ import annotations

import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from sqlalchemy import select

from gateway import audit
from gateway.app import create_app
from gateway.config import Settings
from gateway.context import Gateway
from gateway.errors import GatewayError
from gateway.ingest import upload_extract
from gateway.release.budget import budget_report
from gateway.release.engine import request_release
from gateway.release.model import Release
from gateway.release.query import parse_query
from gateway.storage.releases import BudgetEntry
from tests.conftest import AGREEMENT, DISTRICT, EPP, Databases, analyst

ACTOR = audit.Actor(role="analyst", party=EPP)
MINIMUM_EPSILON = "0.01"  # the standard profile's per_release_minimum


def _release(gw: Gateway, body: dict[str, Any], party: str = EPP) -> dict[str, Any]:
    result = request_release(
        gw, agreement_id=AGREEMENT, party=party, query=parse_query(body), actor=ACTOR
    )
    assert isinstance(result, Release)
    return result.to_json()


def _upload(gw: Gateway, path: Path, dataset: str) -> None:
    upload_extract(
        gw,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset=dataset,
        path=path,
        actor=audit.Actor(role="uploader", party=DISTRICT),
    )


def _visible(result: dict[str, Any]) -> tuple[Any, ...]:
    """Everything about a release's decisions that a recipient sees."""
    return tuple(
        (c["suppressed"], c.get("reason"), c.get("coded"), c["value"] is None)
        for c in result["cells"]
    )


# --- the refusal and threshold oracle ------------------------------------------------------


def test_a_binary_search_over_decisions_learns_nothing_at_minimum_epsilon(
    gateway: Gateway, tmp_path: Path
) -> None:
    # Forty teachers score 10 to 49; one planted teacher scores 97.
    lines = ["MEPID,SY,Test Subject,Median SGP,SGP N"]
    lines += [f"{400000 + i},2025,MATH,{10 + i},25" for i in range(40)]
    lines.append("499999,2025,MATH,97,25")
    (tmp_path / "va.csv").write_text("\n".join(lines) + "\n")
    _upload(gateway, tmp_path / "va.csv", "value_added")

    def probe(high: float) -> tuple[Any, ...]:
        body = {
            "datasets": ["value_added"],
            "measure": {"kind": "count"},
            "filters": [
                {"field": "school_year", "op": "eq", "value": 2025},
                {"field": "growth_score", "op": "between", "value": [1, high]},
            ],
            "epsilon": MINIMUM_EPSILON,
        }
        return _visible(_release(gateway, body))  # never refused: no exception here

    # The attacker's binary search for the planted score, on what each probe shows.
    low, high, seen = 50.0, 99.0, []
    for _ in range(12):
        middle = (low + high) / 2
        outcome = probe(middle)
        seen.append(outcome)
        if outcome == seen[0]:
            low = middle
        else:
            high = middle
    # Every probe looked the same, so the search walked to the top of the range,
    # wherever the planted score lies.
    assert len(set(seen)) == 1 and high == 99.0
    assert probe(96.5) == probe(97.5)
    with gateway.sessions() as session:
        refused = list(session.scalars(audit.query_events(kind="release-refused")))
    assert refused == []


def test_an_epsilon_below_the_minimum_is_refused_before_anything_is_read(
    loaded: Any,
) -> None:
    gw, _ = loaded
    body = {"datasets": ["evaluations"], "measure": {"kind": "count"}, "epsilon": "1e-12"}
    with pytest.raises(GatewayError) as refused:
        _release(gw, body)
    assert refused.value.code == "epsilon_out_of_bounds" and refused.value.status == 403
    assert "per_release_minimum" in refused.value.message
    with gw.sessions() as session:
        assert session.scalars(select(BudgetEntry)).first() is None  # nothing reserved


# --- neighbouring populations --------------------------------------------------------------


def _population(roomy: Gateway, tmp_path: Path, small: int) -> None:
    lines = ["MEPID,SY,Grade Span,Summative Rating"]
    counts = {"PK-2": small, "3-5": 60, "6-8": 60, "9-12": 60}
    teacher = 700000
    for band, count in counts.items():
        for _ in range(count):
            teacher += 1
            lines.append(f"{teacher},2025,{band},3")
    (tmp_path / f"pop{small}.csv").write_text("\n".join(lines) + "\n")
    _upload(roomy, tmp_path / f"pop{small}.csv", "evaluations")


def _outcomes(gw: Gateway, runs: int, epsilon: Decimal) -> list[tuple[Any, ...]]:
    out = []
    for i in range(runs):
        # Each release is another table (a year without data beside 2025), so none is
        # a stored repeat and none inherits the suppressions of another: every one is
        # an independent draw.
        others = [y for y in range(2000, 2101) if y != 2025]
        years = [2025, others[i % 100], *([others[(i + 1) % 100]] if i >= 100 else [])]
        body = {
            "datasets": ["evaluations"],
            "measure": {"kind": "count"},
            "group_by": ["grade_band"],
            "filters": [{"field": "school_year", "op": "in", "value": years}],
            "epsilon": str(epsilon),
        }
        result = _release(gw, body)
        assert "repeated" not in result  # a fresh draw each time
        out.append(_visible(result))
    return out


@pytest.mark.parametrize("epsilon", [Decimal(MINIMUM_EPSILON), Decimal("1")])
def test_neighbouring_populations_look_alike_within_epsilon_and_delta(
    tmp_path: Path, databases: Databases, epsilon: Decimal
) -> None:
    """One teacher below the minimum or at it: every visible decision has nearly the
    same frequency. OpenDP's samplers draw from the operating system's randomness and
    cannot be seeded, so the check allows for sampling error with a Hoeffding bound
    whose chance of a false failure is below one in a million."""
    from gateway.context import initialise
    from tests.conftest import make_settings, roomy_agreements

    runs = 80
    frequencies = []
    for small in (9, 10):  # min - 1 and min teachers in PK-2
        folder = tmp_path / f"n{small}"
        folder.mkdir()
        settings = make_settings(
            folder, databases.new(folder), agreements_dir=roomy_agreements(folder)
        )
        initialise(settings)
        with Gateway.open(settings) as gw:
            _population(gw, folder, small)
            frequencies.append(Counter(_outcomes(gw, runs, epsilon)))
    slack = math.sqrt(math.log(2 / 1e-6) / (2 * runs))
    bound = math.exp(float(epsilon))
    delta = 1e-9  # the profile's floor_delta
    for pattern in set(frequencies[0]) | set(frequencies[1]):
        a, b = (f[pattern] / runs for f in frequencies)
        assert b <= bound * (a + slack) + delta + slack
        assert a <= bound * (b + slack) + delta + slack
    published = [sum(n for p, n in f.items() if not p[0][0]) / runs for f in frequencies]
    # With a true-count rule the first would be 0 and the second 1.
    assert abs(published[0] - published[1]) <= 2 * slack


# --- concurrency ---------------------------------------------------------------------------


def test_concurrent_overlapping_and_identical_requests(loaded: Any) -> None:
    gw, _ = loaded

    def body(bands: list[str]) -> dict[str, Any]:
        return {
            "datasets": ["evaluations"],
            "measure": {"kind": "count"},
            "filters": [{"field": "grade_band", "op": "in", "value": bands}],
            "epsilon": "0.2",
        }

    # Nested teacher sets differing by the three teachers of 6-8: both are released
    # (differencing is covered by the budget), each charged in full, concurrently.
    wide, narrow = body(["PK-2", "3-5", "6-8"]), body(["PK-2", "3-5"])
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda b: _release(gw, b), [wide, narrow]))
    assert {r["release_id"] for r in results} and len({r["release_id"] for r in results}) == 2
    # The same query from both recipients, eight times at once: one release, one draw,
    # charged once; everyone sees the same numbers.
    same = body(["9-12"])
    parties = [EPP, DISTRICT] * 4
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda p: _release(gw, same, party=p), parties))
    assert len({a["release_id"] for a in answers}) == 1
    assert len({str(a["cells"]) for a in answers}) == 1
    assert sum(a["epsilon_spent"] for a in answers) == pytest.approx(0.2)
    with gw.sessions() as session:
        entries = list(session.scalars(select(BudgetEntry)))
        report = budget_report(session, gw.agreement(AGREEMENT))
    assert len(entries) == 3 and report["exact"]["spent"] == "0.6"


# --- rewording ------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "datasets": ["evaluations"],
    "measure": {"kind": "count"},
    "group_by": ["grade_band", "school_year"],
    "filters": [{"field": "school_year", "op": "eq", "value": 2025}],
    "epsilon": "0.5",
}

REWORDINGS: list[dict[str, Any]] = [
    {"filters": [{"field": "school_year", "op": "in", "value": [2025]}]},
    {"filters": [{"field": "school_year", "op": "in", "value": [2025, 2025, "2025"]}]},
    {"filters": [{"field": "school_year", "op": "between", "value": [2025, 2025]}]},
    {"filters": [{"field": "evaluations.school_year", "op": "eq", "value": 2025.0}]},
    {
        "filters": [
            {"field": "school_year", "op": "eq", "value": 2025},
            {"field": "summative_rating", "op": "in", "value": [1, 2, 3, 4]},
        ]
    },
    {
        "filters": [
            {"field": "school_year", "op": "eq", "value": 2025},
            {"field": "summative_rating", "op": "between", "value": [0, 9]},
        ]
    },
    {
        "filters": [
            {"field": "school_year", "op": "in", "value": [2024, 2025]},
            {"field": "school_year", "op": "in", "value": [2025, 2026]},
        ]
    },
    {"delta": "1e-8"},
    {"epsilon": "0.50"},
    {"epsilon": 0.5},
    {"epsilon": "0.500000000000"},
    {"group_by": ["school_year", "grade_band"]},
]


def test_every_rewording_is_served_as_the_stored_release_for_free(loaded: Any) -> None:
    gw, _ = loaded
    first = _release(gw, BASE)
    for change in REWORDINGS:
        again = _release(gw, {**BASE, **change}, party=DISTRICT)
        assert again["release_id"] == first["release_id"], change
        assert again["repeated"] is True and again["epsilon_spent"] == 0, change
        by_group = {tuple(sorted(c["group"].items())): c for c in again["cells"]}
        for cell in first["cells"]:
            assert by_group[tuple(sorted(cell["group"].items()))] == {
                **cell,
                "group": by_group[tuple(sorted(cell["group"].items()))]["group"],
            }
    # The answer keeps the asked order of the dimensions.
    swapped = _release(gw, {**BASE, "group_by": ["school_year", "grade_band"]})
    assert list(swapped["cells"][0]["group"]) == ["school_year", "grade_band"]
    assert list(first["cells"][0]["group"]) == ["grade_band", "school_year"]
    with gw.sessions() as session:
        assert len(list(session.scalars(select(BudgetEntry)))) == 1


def test_a_byte_identical_reupload_keeps_the_stored_release_free(
    loaded: Any, tmp_path: Path
) -> None:
    from tests.conftest import evaluations_csv

    gw, _ = loaded
    first = _release(gw, BASE)
    path, _ = evaluations_csv(tmp_path / "again.csv")  # the same rows, written again
    _upload(gw, path, "evaluations")
    again = _release(gw, BASE, party=DISTRICT)
    assert again["release_id"] == first["release_id"] and again["epsilon_spent"] == 0


def test_dataset_order_does_not_make_a_new_release(gateway: Gateway, tmp_path: Path) -> None:
    from tests.conftest import upload_generated

    upload_generated(gateway, AGREEMENT, tmp_path / "extracts", seed=3, scale=0.3)
    body = {
        "datasets": ["completers", "evaluations"],
        "measure": {"kind": "count"},
        "group_by": ["program_code"],
        "filters": [{"field": "evaluations.school_year", "op": "eq", "value": 2025}],
        "epsilon": "0.3",
    }
    first = _release(gateway, body)
    again = _release(gateway, {**body, "datasets": ["evaluations", "completers"]})
    assert again["release_id"] == first["release_id"] and again["epsilon_spent"] == 0


# --- extreme inputs --------------------------------------------------------------------------

DOCUMENTED = {
    "epsilon_out_of_bounds",
    "schema_error",
    "policy_violation",
    "budget_exhausted",
}


@hyp_settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    epsilon=st.one_of(
        st.sampled_from(["1e-12", "0.000001", "0.009999999999", "0.01", "1", "1.000000000001"]),
        st.decimals(min_value=Decimal("1e-12"), max_value=Decimal(100), places=12),
    ),
    delta=st.sampled_from(["0", "1e-18", "1e-12", "1e-9", "9.9e-8", "1e-7", "0.5"]),
    group_by=st.lists(
        st.sampled_from(
            ["grade_band", "school_code", "school_year", "summative_rating", "years_experience"]
        ),
        max_size=3,
        unique=True,
    ),
    filters=st.lists(
        st.fixed_dictionaries(
            {
                "field": st.sampled_from(["school_year", "grade_band", "years_experience"]),
                "op": st.sampled_from(["eq", "in", "between"]),
                "value": st.one_of(
                    st.integers(-(2**70), 2**70),
                    st.sampled_from([2025, "PK-2", "x", 3.5, True]),
                    st.lists(
                        st.sampled_from([2024, 2025, -1, 0, 50, 10**20, "9-12"]),
                        min_size=1,
                        max_size=3,
                    ),
                ),
            }
        ),
        max_size=3,
    ),
)
def test_any_epsilon_delta_grouping_or_filter_is_a_release_or_a_documented_refusal(
    loaded: Any, epsilon: Any, delta: str, group_by: list[str], filters: list[dict[str, Any]]
) -> None:
    gw, _ = loaded
    body = {
        "datasets": ["evaluations"],
        "measure": {"kind": "count"},
        "group_by": group_by,
        "filters": filters,
        "epsilon": str(epsilon),
        "delta": delta,
    }
    try:
        query = parse_query(body)
    except GatewayError as error:
        assert error.code == "schema_error"
        return
    try:
        result = request_release(
            gw, agreement_id=AGREEMENT, party=DISTRICT, query=query, actor=ACTOR
        )
    except GatewayError as error:
        assert error.code in DOCUMENTED and error.status < 500, error.code
        return
    assert isinstance(result, Release)
    for cell in result.cells:
        assert cell.value is None or abs(cell.value) < 2**31 - 1  # never a saturated count


def test_tiny_epsilon_over_http_is_a_403_never_a_500(loaded: Any, settings: Settings) -> None:
    body = {
        "datasets": ["evaluations"],
        "measure": {"kind": "count"},
        "group_by": ["school_code"],
        "epsilon": "0.000000000001",
        "delta": "1e-8",
    }
    with TestClient(create_app(settings), headers=analyst(settings, DISTRICT)) as client:
        url = f"/v1/agreements/{AGREEMENT}/releases"
        for params in ({"dry_run": True}, {}):
            answer = client.post(url, params=params, json=body)
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"]["code"] == "epsilon_out_of_bounds"


REVIEW_BODIES: list[dict[str, Any]] = [
    # The same column named twice in group_by, once qualified.
    {"group_by": ["grade_band", "evaluations.grade_band"]},
    # Years no stored period can hold.
    {"filters": [{"field": "school_year", "op": "eq", "value": 10**19}]},
    {"filters": [{"field": "school_year", "op": "in", "value": [-(10**20), 2025]}]},
    # Numbers JSON's strict grammar has no spelling for (Python's json reads them).
    {"filters": [{"field": "school_year", "op": "eq", "value": float("nan")}]},
    {"filters": [{"field": "school_year", "op": "between", "value": [2020, float("inf")]}]},
    # A number matched against a text column, with eq and with in.
    {"filters": [{"field": "school_code", "op": "eq", "value": 101}]},
    {"filters": [{"field": "school_code", "op": "in", "value": [101, "S-01"]}]},
]


@pytest.mark.parametrize("change", REVIEW_BODIES)
def test_bodies_that_once_failed_after_the_reservation_are_answered(
    loaded: Any, change: dict[str, Any]
) -> None:
    gw, _ = loaded
    body = {"datasets": ["evaluations"], "measure": {"kind": "count"}, "epsilon": "0.3"}
    try:
        result = _release(gw, {**body, **change}, party=DISTRICT)
    except GatewayError as error:
        assert error.code in DOCUMENTED and error.status < 500, error.message
        return
    assert result["cells"]


def test_a_retention_window_outside_the_declared_years_is_answered(loaded: Any) -> None:
    gw, _ = loaded
    body = {
        "datasets": ["evaluations"],
        "measure": {"kind": "retention", "field": "school_year", "years_after": 1},
        "filters": [{"field": "school_year", "op": "between", "value": [2101, 2120]}],
        "epsilon": "0.3",
    }
    result = _release(gw, body, party=DISTRICT)
    assert len(result["cells"]) == 1 and result["cells"][0]["suppressed"]
