"""zCDP accounting: Gaussian noise through OpenDP, rho composed over a report's tables and
converted to the agreement's (epsilon, delta), charged so the ledger stays exact however
far a report gets, and never cheaper than the conversion for a query asked alone."""

from __future__ import annotations

import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import audit
from gateway.context import Gateway, initialise
from gateway.release import budget, decide, noise
from gateway.release.engine import request_release
from gateway.release.model import Preview, Release
from gateway.release.plan import (
    Composed,
    EpsilonOutOfBounds,
    Plan,
    conversion_delta,
    zcdp_charge,
)
from gateway.release.query import parse_query
from gateway.release.reports import run_report
from tests.conftest import AGREEMENT, AGREEMENTS_DIR, EPP, make_settings, upload_generated

ANALYST = audit.Actor(role="analyst", party=EPP)
DELTA = Decimal("1e-8")


# --- the conversion ------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    rho=st.decimals(min_value=Decimal("1e-5"), max_value=Decimal("2"), places=6),
    exponent=st.integers(min_value=5, max_value=12),
)
def test_opendp_conversion_is_never_looser_than_the_classic_bound(
    rho: Decimal, exponent: int
) -> None:
    delta = Decimal(f"1e-{exponent}")
    epsilon = noise.zcdp_epsilon(rho, delta)
    classic = float(rho) + 2 * math.sqrt(float(rho) * math.log(1 / float(delta)))
    assert 0 < epsilon <= classic * (1 + 1e-9)
    assert noise.zcdp_epsilon(rho * 2, delta) > epsilon  # more rho, more epsilon


@pytest.mark.parametrize("epsilon", ["0.05", "0.3", "1", "3"])
def test_the_rho_of_an_epsilon_is_the_largest_that_fits(epsilon: str) -> None:
    rho = noise.zcdp_rho(Decimal(epsilon), DELTA)
    assert noise.zcdp_epsilon(rho, DELTA) <= float(epsilon)
    assert noise.zcdp_epsilon(rho * Decimal("1.0001"), DELTA) > float(epsilon)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.decimals(min_value=Decimal("1e-5"), max_value=Decimal("0.05"), places=9),
        min_size=1,
        max_size=6,
    )
)
def test_charges_telescope_to_the_converted_epsilon_of_every_prefix(rhos: list[Decimal]) -> None:
    """Wherever a report stops, its tables have paid the conversion of what they measured."""
    before, paid = Decimal(0), Decimal(0)
    for rho in rhos:
        charge = zcdp_charge(rho, before, DELTA)
        assert charge > 0
        before += rho
        paid += charge
        assert paid >= Decimal(repr(noise.zcdp_epsilon(before, DELTA)))
        assert paid - Decimal(repr(noise.zcdp_epsilon(before, DELTA))) < Decimal("1e-12")
    # Composing is cheaper than charging each table alone (rho adds, epsilon would not).
    if len(rhos) > 1:
        alone = sum(zcdp_charge(rho, Decimal(0), DELTA) for rho in rhos)
        assert paid < alone


# --- the noise -----------------------------------------------------------------------------


@pytest.mark.parametrize("sensitivity", [1.0, math.sqrt(3), 2.0])
@pytest.mark.parametrize("integer", [True, False])
def test_gaussian_noise_costs_at_most_its_rho_by_opendps_map(
    sensitivity: float, integer: bool
) -> None:
    rho = Decimal("0.01")
    gaussian = noise.gaussian_noise(sensitivity, rho, integer=integer)
    d_in: Any = math.ceil(sensitivity - 1e-12) if integer else sensitivity
    assert gaussian._measurement.map(d_in) <= 0.01
    assert gaussian.scale == pytest.approx(float(d_in) / math.sqrt(0.02), rel=1e-9)
    drawn = gaussian.release([5] * 4)
    assert all(isinstance(v, int if integer else float) for v in drawn)


def _discrete_gaussian_pmf(sigma: float, terms: int) -> tuple[np.ndarray, int]:
    """The exact law of a sum of ``terms`` discrete Gaussians (by convolution), and the
    offset of 0 in the returned array."""
    width = int(12 * sigma * math.sqrt(terms)) + 10
    support = np.arange(-width, width + 1)
    one = np.exp(-(support.astype(float) ** 2) / (2 * sigma * sigma))
    one /= one.sum()
    law = one
    for _ in range(terms - 1):
        law = np.convolve(law, one)
    return law, (len(law) - 1) // 2


@pytest.mark.parametrize("sigma", [1.5, 4.0, 12.0])
@pytest.mark.parametrize("terms", [1, 2, 5])
def test_the_sub_gaussian_tail_bounds_the_exact_discrete_gaussian_tail(
    sigma: float, terms: int
) -> None:
    gaussian = noise.GaussianNoise(1.0, 1.0, sigma, True, None)
    law, zero = _discrete_gaussian_pmf(sigma, terms)
    for k in range(1, int(8 * sigma * math.sqrt(terms))):
        exact = float(law[zero + k :].sum())
        assert exact <= gaussian.sum_tail(terms, k) + 1e-15


def test_gaussian_intervals_cover_opendp_draws() -> None:
    gaussian = noise.gaussian_noise(1.0, Decimal("0.005"), integer=True)
    draws = np.array(gaussian.release([0] * 12_000)).reshape(-1, 3).sum(axis=1)
    inside = np.mean(np.abs(draws) <= gaussian.sum_half_width(3))
    assert 0.93 <= inside <= 0.97
    assert np.var(draws) <= 3 * gaussian.variance * 1.1


def test_the_publish_threshold_under_gaussian_noise_is_the_smallest_that_meets_the_floor() -> None:
    counts = noise.gaussian_noise(1.0, Decimal("0.005"), integer=True)
    plan = Plan(
        epsilon=Decimal("0.3"),
        selection_delta=Decimal(0),
        floor_delta=Decimal("1e-9"),
        groups_per_teacher=1,
        dimensions=["x"],
        public_positions=[0],
        private_positions=[],
        public_combinations=[],
        minimum=10,
        students_per_teacher=1,
        counts=counts,
        rho=Decimal("0.005"),
        coupling_epsilon=0.6,
    )
    tau = decide.publish_threshold(plan, None)
    p = decide.floor_tail(plan)
    assert p == pytest.approx(1e-9 / (1 + math.exp(0.6)))
    margin = tau - (plan.minimum - 1)
    assert counts.tail(margin) <= p < counts.tail(margin - 1)
    for leaves in (2, 3, 7):
        merged = decide.node_threshold(plan, leaves)
        k = merged - (plan.minimum - 1)
        assert counts.sum_tail(leaves, k) <= p < counts.sum_tail(leaves, k - 1)


# --- releases and reports ------------------------------------------------------------------

COUNT = {
    "datasets": ["evaluations"],
    "measure": {"kind": "count"},
    "group_by": ["school_year"],
    "filters": [{"field": "school_year", "op": "in", "value": [2023, 2024, 2025]}],
}


def _query(**extra: Any) -> Any:
    return parse_query({**COUNT, **extra})


@pytest.fixture
def stocked(tmp_path: Path, database_url: str) -> Iterator[Gateway]:
    """The example agreements, the student-teaching one with a four-table report by
    school year (accounted in zCDP, and the same left to choose), and every party's
    generated extracts uploaded."""
    folder = tmp_path / "agreements"
    folder.mkdir()
    for source in sorted(AGREEMENTS_DIR.glob("*.yaml")):
        document = yaml.safe_load(source.read_text())
        if document["id"] == AGREEMENT:
            # A teacher is in a cell of each of four school years (g = 4): Gaussian noise
            # is calibrated to sqrt(4) = 2 in L2 where Laplace noise needs 4 in L1.
            tables = [
                {
                    "title": f"Teachers by school year and {', '.join(dimensions) or 'nothing'}",
                    "query": {
                        "datasets": ["completers", "staffing"],
                        "measure": {"kind": "count"},
                        "group_by": ["school_year", *dimensions],
                        "max_groups_per_teacher": 4,
                        "filters": [
                            {"field": "school_year", "op": "in", "value": [2022, 2023, 2024, 2025]},
                            {"field": "cohort_year", "op": "in", "value": [2021, 2022, 2023]},
                        ],
                    },
                }
                for dimensions in (
                    [],
                    ["program_code"],
                    ["cohort_year"],
                    ["completers.licensure_area"],
                )
            ]
            document["reports"].append(
                {
                    "name": "overview",
                    "description": "Four views of the completers employed in 2025",
                    "epsilon": "1.0",
                    "accounting": "zcdp",
                    "tables": tables,
                }
            )
            document["reports"].append(
                {**document["reports"][-1], "name": "overview_auto", "accounting": "auto"}
            )
        (folder / source.name).write_text(yaml.safe_dump(document, sort_keys=False))
    settings_ = make_settings(tmp_path, database_url, agreements_dir=folder)
    initialise(settings_)
    with Gateway.open(settings_) as gw:  # closed after the test: no connection left open
        upload_generated(gw, AGREEMENT, tmp_path / "extracts", seed=11)
        yield gw


def _spent(gw: Gateway) -> tuple[Decimal, Decimal]:
    """The recipient's epsilon and delta spent, exactly, from the ledger."""
    with gw.sessions() as session:
        state = budget.budget_state(session, AGREEMENT, EPP, now=gw.clock())
    assert state is not None
    return state.epsilon_spent, state.delta_spent


def test_a_query_alone_pays_at_least_its_conversion(stocked: Gateway) -> None:
    """rho is not free: asked through the API, a Gaussian release must offer the
    epsilon its rho converts to, or it is refused before anything is spent."""
    rho = Decimal("0.004")
    delta = conversion_delta(stocked.agreement(AGREEMENT))
    needed = zcdp_charge(rho, Decimal(0), delta)
    before = _spent(stocked)
    with pytest.raises(EpsilonOutOfBounds, match="converts to epsilon"):
        request_release(
            stocked,
            agreement_id=AGREEMENT,
            party=EPP,
            query=_query(rho=str(rho), epsilon=str(needed - Decimal("0.001"))),
            actor=ANALYST,
        )
    assert _spent(stocked) == before
    released = request_release(
        stocked,
        agreement_id=AGREEMENT,
        party=EPP,
        query=_query(rho=str(rho), epsilon=str(needed)),
        actor=ANALYST,
    )
    assert isinstance(released, Release)
    assert Decimal(str(released.epsilon_spent)) == needed
    profile = stocked.agreement(AGREEMENT).resolved_disclosure
    assert Decimal(str(released.delta_spent)) == delta + profile.floor_delta
    assert any("make_gaussian" in m for m in released.noise["mechanisms"])


def test_a_later_table_is_charged_its_increment_only_inside_its_report(stocked: Gateway) -> None:
    """The increment a report's second table pays is refused for the same query asked
    alone: only the report's own run places a table after others."""
    delta = conversion_delta(stocked.agreement(AGREEMENT))
    first, second = Decimal("0.003"), Decimal("0.003")
    increment = zcdp_charge(second, first, delta)
    assert increment < zcdp_charge(second, Decimal(0), delta)
    query = _query(rho=str(second), epsilon=str(increment))
    with pytest.raises(EpsilonOutOfBounds):
        request_release(
            stocked, agreement_id=AGREEMENT, party=EPP, query=query, actor=ANALYST, dry_run=True
        )
    preview = request_release(
        stocked,
        agreement_id=AGREEMENT,
        party=EPP,
        query=query,
        actor=ANALYST,
        dry_run=True,
        composed=Composed(rho_before=first, report_epsilon=Decimal("1")),
    )
    assert isinstance(preview, Preview)
    assert Decimal(preview.exact["epsilon_cost"]) == increment
    # An earlier table paid the conversion's delta: this one pays only its floor's.
    profile = stocked.agreement(AGREEMENT).resolved_disclosure
    assert Decimal(preview.exact["delta_cost"]) == profile.floor_delta


def test_a_report_accounted_in_zcdp_composes_rho_and_charges_the_conversion(
    stocked: Gateway,
) -> None:
    before_epsilon, before_delta = _spent(stocked)
    out = run_report(
        stocked,
        agreement_id=AGREEMENT,
        party=EPP,
        report="overview",
        parameters={},
        actor=ANALYST,
    )
    accounting = out["accounting"]
    assert accounting["kind"] == "zcdp"
    delta = Decimal(accounting["conversion_delta"])
    rho = Decimal(accounting["rho"])
    charges = [Decimal(str(t["release"]["epsilon_spent"])) for t in out["tables"]]
    # The tables together paid the converted epsilon of the rho they measured, within
    # the report's epsilon, and the conversion's delta once.
    assert sum(charges) == Decimal(accounting["epsilon"]) <= Decimal("1.0")
    assert sum(charges) >= Decimal(repr(noise.zcdp_epsilon(rho, delta)))
    # The first table pays its conversion alone; each later one less than alone.
    rhos = [Decimal(str(t["release"]["query"]["rho"])) for t in out["tables"]]
    assert sum(rhos) == rho
    alone = [zcdp_charge(r, Decimal(0), delta) for r in rhos]
    assert charges[0] == alone[0]
    assert all(c < a for c, a in zip(charges[1:], alone[1:], strict=True))
    # Each release says where it stood in the composition (and the audit event with it).
    places = [t["release"]["noise"]["zcdp"] for t in out["tables"]]
    assert [Decimal(p["rho_before"]) for p in places] == [sum(rhos[:i]) for i in range(4)]
    assert [Decimal(p["conversion_delta_paid"]) for p in places] == [delta, 0, 0, 0]
    with stocked.sessions() as session:
        events = [audit.event_view(e) for e in session.scalars(audit.query_events(kind="release"))]
    logged = {e["details"]["release_id"]: e["details"].get("zcdp") for e in events}
    assert [logged[t["release"]["release_id"]] for t in out["tables"]] == places
    spent_epsilon, spent_delta = _spent(stocked)
    assert spent_epsilon - before_epsilon == sum(charges)
    floors = 4 * stocked.agreement(AGREEMENT).resolved_disclosure.floor_delta
    assert spent_delta - before_delta == delta + floors
    # Four tables, four cells a teacher: Gaussian noise gives lower thresholds and
    # narrower intervals than Laplace noise would.
    assert accounting["scores"]["zcdp"] < accounting["scores"]["laplace"]
    # Asked again on the same data, the whole report comes back stored, free.
    again = run_report(
        stocked,
        agreement_id=AGREEMENT,
        party=EPP,
        report="overview",
        parameters={},
        actor=ANALYST,
    )
    assert all(t["release"].get("repeated") for t in again["tables"])
    assert _spent(stocked) == (spent_epsilon, spent_delta)


def test_auto_accounting_keeps_laplace_for_one_table_at_a_small_epsilon(
    stocked: Gateway,
) -> None:
    """One table at epsilon 0.3, a teacher in one cell: Laplace noise's thresholds are
    lower, so it is kept; four tables at epsilon 1, a teacher in four cells of each:
    zCDP's are, at every level of every table, so it is chosen."""
    single = run_report(
        stocked,
        agreement_id=AGREEMENT,
        party=EPP,
        report="pipeline",
        parameters={},
        actor=ANALYST,
        dry_run=True,
    )
    assert single["accounting"] == {"kind": "laplace"}
    several = run_report(
        stocked,
        agreement_id=AGREEMENT,
        party=EPP,
        report="overview_auto",
        parameters={},
        actor=ANALYST,
        dry_run=True,
    )
    assert several["accounting"]["kind"] == "zcdp"
    assert several["epsilon"] <= 1.0
