"""Budget by period: each school year has its own budget within a lifetime cap.

A school year runs July 1 to June 30 (UTC) and is named by the year it ends (2027 is
2026-27). The gateway's clock (``Gateway.clock``) says when a release is made, so these
tests make releases in whichever school year they need.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from gateway import audit
from gateway.agreements import check_agreements
from gateway.agreements.models import Agreement
from gateway.app import create_app
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.ingest import upload_extract
from gateway.release import budget
from gateway.release.budget import BudgetExhausted, budget_history, budget_report
from gateway.release.engine import request_release
from gateway.release.model import Preview, Release
from gateway.release.query import parse_query
from gateway.storage.releases import BudgetEntry
from gateway.storage.tables import AgreementRecord
from tests.conftest import (
    AGREEMENT,
    AGREEMENTS_DIR,
    DISTRICT,
    EPP,
    POLICIES_DIR,
    bearer,
    evaluations_csv,
    issue_token,
    make_settings,
    settings_env,
    web_sign_in,
)

#: The test agreement: epsilon 2.5 over its life, at most 1 in any school year (the
#: standard profile's per-release cap is 1, its lifetime delta 10^-6).
LIFETIME = "2.5"
PERIOD = {"epsilon": 1.0, "delta": 1.0e-7}


@dataclass
class FixedClock:
    """A clock that says what it is told."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


def at(
    year: int, month: int, day: int, hour: int = 12, minute: int = 0, second: int = 0
) -> FixedClock:
    return FixedClock(datetime(year, month, day, hour, minute, second, tzinfo=UTC))


def period_agreements(
    folder: Path,
    *,
    lifetime: str | None = LIFETIME,
    period: dict[str, Any] | None = PERIOD,
    limits: dict[str, Any] | None = None,
) -> Path:
    """The Bayview-Eastport agreement with a period budget (and in force 2020 to 2040,
    so that every school year the tests use lies within its life)."""
    folder.mkdir(parents=True, exist_ok=True)
    document = yaml.safe_load((AGREEMENTS_DIR / f"{AGREEMENT}.yaml").read_text())
    document["effective"], document["ends"] = date(2020, 9, 1), date(2040, 8, 31)
    overrides = document["disclosure"].setdefault("overrides", {})
    if lifetime is not None:
        overrides["privacy_budget"] = {"epsilon": float(lifetime)}
    if period is not None:
        overrides["period_budget"] = period
    if limits is not None:
        document["budget_limits"] = limits
    (folder / f"{AGREEMENT}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    return folder


def open_gateway(tmp_path: Path, database_url: str, agreements: Path) -> tuple[Gateway, Settings]:
    settings = make_settings(tmp_path, database_url, agreements_dir=agreements)
    initialise(settings)
    return Gateway.open(settings), settings


def upload_evaluations(gw: Gateway, folder: Path) -> None:
    path, _ = evaluations_csv(folder / "evaluations.csv")
    upload_extract(
        gw,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="evaluations",
        path=path,
        actor=audit.Actor(role="uploader", party=DISTRICT),
    )


@pytest.fixture
def periodic(tmp_path: Path, database_url: str) -> Iterator[tuple[Gateway, Settings]]:
    """A gateway whose agreement has a period budget, with the known extract uploaded."""
    gw, settings = open_gateway(tmp_path, database_url, period_agreements(tmp_path / "a"))
    with gw:
        upload_evaluations(gw, tmp_path)
        yield gw, settings


def query(i: int, epsilon: str) -> Any:
    # Distinct queries (a year that has no data each time), so none is a repeat.
    return parse_query(
        {
            "datasets": ["evaluations"],
            "measure": {"kind": "count"},
            "epsilon": epsilon,
            "filters": [{"field": "school_year", "op": "in", "value": [2025, 2000 + i]}],
        }
    )


def ask(gw: Gateway, party: str, i: int, epsilon: str, *, dry_run: bool = False) -> Any:
    return request_release(
        gw,
        agreement_id=AGREEMENT,
        party=party,
        query=query(i, epsilon),
        actor=audit.Actor(role="analyst", party=party),
        dry_run=dry_run,
    )


def report(gw: Gateway) -> dict[str, Any]:
    with gw.sessions() as session:
        return budget_report(session, gw.agreement(AGREEMENT), now=gw.clock())


# --- school years ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "year"),
    [
        (datetime(2027, 6, 30, 23, 59, 59, 999999, tzinfo=UTC), 2027),
        (datetime(2027, 7, 1, 0, 0, 0, tzinfo=UTC), 2028),
        (datetime(2027, 1, 1, tzinfo=UTC), 2027),
        (datetime(2026, 12, 31, 23, 59, tzinfo=UTC), 2027),
        # 8 pm on June 30 in New York is already July 1 in UTC: the school year is UTC's.
        (datetime(2027, 6, 30, 20, 0, tzinfo=timezone(timedelta(hours=-5))), 2028),
        (datetime(2027, 7, 1, 9, 0, tzinfo=timezone(timedelta(hours=10))), 2027),
        (datetime(2027, 7, 1, 0, 0), 2028),  # no zone: taken as UTC
    ],
)
def test_a_school_year_runs_july_to_june_in_utc_named_by_its_end(
    moment: datetime, year: int
) -> None:
    assert budget.school_year(moment) == year


def test_a_school_year_has_its_dates_and_its_usual_name() -> None:
    assert budget.school_year_dates(2027) == (date(2026, 7, 1), date(2027, 6, 30))
    assert budget.school_year_label(2027) == "2026-27"
    assert budget.school_year_label(2000) == "1999-00"


# --- releases across school years -------------------------------------------------------------


def test_a_release_in_each_school_year_gets_that_years_whole_budget(
    periodic: tuple[Gateway, Settings],
) -> None:
    gw, _ = periodic
    gw.clock = at(2027, 3, 1)
    first = ask(gw, EPP, 1, "1")  # all of 2026-27's budget in one release
    assert isinstance(first, Release) and first.epsilon_spent == 1.0
    assert first.budget_remaining == 0.0  # the year is spent, though the lifetime is not
    gw.clock = at(2027, 9, 15)
    second = ask(gw, EPP, 2, "1")  # and all of 2027-28's
    assert isinstance(second, Release) and second.epsilon_spent == 1.0
    budget_now = report(gw)
    assert budget_now["exact"]["spent"] == "2" and budget_now["remaining"] == 0.5
    period = budget_now["period"]
    assert (period["school_year"], period["label"]) == (2028, "2027-28")
    assert (period["starts"], period["ends"]) == ("2027-07-01", "2028-06-30")
    assert period["exact"]["spent"] == "1" and period["remaining"] == 0.0
    party = budget_now["parties"][EPP]
    assert party["period"] == 2028 and party["exact"]["spent"] == "1"
    assert party["exact"]["lifetime_spent"] == "2" and party["lifetime_remaining"] == 0.5
    with gw.sessions() as session:
        history = budget_history(session, AGREEMENT)
    assert [entry["period"] for entry in history] == [2027, 2028]


def test_a_spent_school_year_refuses_while_the_next_one_works(
    periodic: tuple[Gateway, Settings],
) -> None:
    gw, _ = periodic
    gw.clock = at(2027, 6, 30, 23, 59, 59)  # the last second of 2026-27
    ask(gw, EPP, 1, "0.6")
    with pytest.raises(BudgetExhausted) as refused:
        ask(gw, EPP, 2, "0.5")  # 0.6 + 0.5 > 1
    error = refused.value
    assert error.code == "budget_exhausted" and error.status == 409
    assert "school year 2026-27" in error.message
    assert "the school year's budget" in error.message
    assert "lifetime" not in error.message  # 1.9 of the lifetime cap is left
    state = error.details[0]
    assert state["period"] == 2027 and state["exact"]["remaining"] == "0.4"
    gw.clock = at(2027, 7, 1, 0, 0, 0)  # the first second of 2027-28
    again = ask(gw, EPP, 2, "0.5")
    assert isinstance(again, Release) and again.budget_remaining == 0.5
    with gw.sessions() as session:
        refusals = [
            audit.event_view(e) for e in session.scalars(audit.query_events(kind="release-refused"))
        ]
        reserved = [
            audit.event_view(e)["details"]
            for e in session.scalars(audit.query_events(kind="budget-reserved"))
        ]
    assert [r["details"]["code"] for r in refusals] == ["budget_exhausted"]
    assert [(r["period"], r["period_epsilon_spent"]) for r in reserved] == [
        (2027, "0.6"),
        (2028, "0.5"),
    ]


def test_the_lifetime_cap_stops_spending_when_the_school_year_has_room(
    periodic: tuple[Gateway, Settings],
) -> None:
    gw, _ = periodic
    for i, clock in enumerate([at(2027, 3, 1), at(2028, 3, 1)]):
        gw.clock = clock
        ask(gw, EPP, i, "1")
    gw.clock = at(2029, 3, 1)  # 2028-29 has all of its 1.0; the lifetime has 0.5 left
    with pytest.raises(BudgetExhausted) as refused:
        ask(gw, EPP, 10, "0.8")
    assert "the lifetime cap" in refused.value.message
    assert "the school year's budget" not in refused.value.message
    ask(gw, DISTRICT, 11, "0.5")  # the rest of the lifetime, by either party
    gw.clock = at(2030, 3, 1)  # a fresh school year, and nothing left for life
    with pytest.raises(BudgetExhausted, match="the lifetime cap"):
        ask(gw, EPP, 12, "0.01")
    budget_now = report(gw)
    assert budget_now["exact"]["spent"] == "2.5" and budget_now["remaining"] == 0
    assert budget_now["period"]["remaining"] == 1.0  # the year has room ...
    assert budget_now["parties"][EPP]["remaining"] == 0  # ... which nobody may spend
    assert budget_now["parties"][DISTRICT]["lifetime_remaining"] == 0


def test_threads_racing_for_the_last_of_a_school_year_never_overspend_it(
    periodic: tuple[Gateway, Settings],
) -> None:
    gw, _ = periodic
    gw.clock = at(2027, 5, 1)
    ask(gw, DISTRICT, 0, "0.4")

    def attempt(i: int) -> str:
        try:
            ask(gw, EPP if i % 2 else DISTRICT, i, "0.1")
            return "ok"
        except BudgetExhausted:
            return "refused"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(attempt, range(1, 17)))
    # 0.6 of 2026-27's 1.0 was left: six releases of 0.1, whoever asks.
    assert outcomes.count("ok") == 6 and outcomes.count("refused") == 10
    budget_now = report(gw)
    assert budget_now["period"]["exact"]["spent"] == "1"
    assert budget_now["exact"]["spent"] == "1"
    with gw.sessions() as session:
        charged = session.execute(
            select(func.sum(BudgetEntry.epsilon)).where(BudgetEntry.period == 2027)
        ).scalar_one()
        assert int(charged) == budget.epsilon_units(Decimal(1))
        assert audit.verify_chain(session).ok
    gw.clock = at(2027, 8, 1)
    assert isinstance(ask(gw, EPP, 40, "1"), Release)  # the next school year is whole


def test_party_limits_apply_to_each_school_year(tmp_path: Path, database_url: str) -> None:
    limits = {EPP: {"epsilon": 0.5, "delta": 1.0e-7}}
    gw, _ = open_gateway(tmp_path, database_url, period_agreements(tmp_path / "a", limits=limits))
    with gw:
        upload_evaluations(gw, tmp_path)
        gw.clock = at(2027, 2, 1)
        ask(gw, EPP, 1, "0.5")
        with pytest.raises(BudgetExhausted, match="the party's limit for the year"):
            ask(gw, EPP, 2, "0.1")
        ask(gw, DISTRICT, 3, "0.5")  # no limit: the rest of the year's budget
        with pytest.raises(BudgetExhausted, match="the school year's budget"):
            ask(gw, DISTRICT, 4, "0.1")
        gw.clock = at(2028, 2, 1)
        ask(gw, EPP, 5, "0.5")  # a new school year, a new limit
        budget_now = report(gw)
    epp = budget_now["parties"][EPP]
    assert (epp["total"], epp["spent"], epp["remaining"]) == (0.5, 0.5, 0.0)
    assert epp["exact"]["lifetime_spent"] == "1"
    assert budget_now["parties"][DISTRICT]["total"] == 1.0  # the whole year's budget


def test_a_preview_shows_what_the_school_year_leaves(periodic: tuple[Gateway, Settings]) -> None:
    gw, _ = periodic
    gw.clock = at(2027, 4, 1)
    ask(gw, EPP, 1, "0.7")
    preview = ask(gw, EPP, 2, "0.5", dry_run=True)
    assert isinstance(preview, Preview)
    assert preview.budget_remaining == pytest.approx(0.3) and preview.would_fit is False
    gw.clock = at(2027, 7, 2)
    preview = ask(gw, EPP, 2, "0.5", dry_run=True)
    assert isinstance(preview, Preview)
    assert preview.budget_remaining == 1.0 and preview.would_fit is True


def test_the_api_and_the_web_page_show_the_school_year_beside_the_lifetime(
    periodic: tuple[Gateway, Settings],
) -> None:
    gw, settings = periodic
    gw.clock = at(2027, 4, 1)
    ask(gw, EPP, 1, "0.7")
    token = issue_token(settings, role="reviewer", party=None)
    with TestClient(create_app(settings), headers=bearer(token)) as client:
        client.app.state.gateway.clock = at(2027, 4, 2)  # type: ignore[attr-defined]
        body = client.get(f"/v1/agreements/{AGREEMENT}/budget", params={"history": "true"}).json()
        web_sign_in(client, token)
        page = client.get(f"/web/agreements/{AGREEMENT}/budget").text
        client.app.state.gateway.clock = at(2027, 7, 2)  # type: ignore[attr-defined]
        next_year = client.get(f"/v1/agreements/{AGREEMENT}/budget").json()
    assert "The agreement, school year 2026-27" in page
    assert "The agreement, over its life" in page
    assert (body["total"], body["exact"]["spent"], body["remaining"]) == (2.5, "0.7", 1.8)
    assert body["period"]["school_year"] == 2027
    assert body["period"]["exact"]["remaining"] == "0.3"
    assert body["parties"][EPP]["remaining"] == pytest.approx(0.3)
    assert body["parties"][EPP]["lifetime_remaining"] == 1.8
    assert [entry["period"] for entry in body["history"]] == [2027]
    assert next_year["period"]["school_year"] == 2028 and next_year["period"]["remaining"] == 1.0
    assert next_year["parties"][EPP]["remaining"] == 1.0 and next_year["remaining"] == 1.8


def test_gateway_budget_shows_the_current_school_year(periodic: tuple[Gateway, Settings]) -> None:
    """The command reads the system clock: the school year shown is today's."""
    gw, settings = periodic
    gw.clock = FixedClock(datetime.now(UTC))
    ask(gw, EPP, 1, "0.3")
    env = settings_env(settings)
    shown = CliRunner().invoke(main, ["budget", "--agreement", AGREEMENT, "--json"], env=env)
    text = CliRunner().invoke(main, ["budget", "--agreement", AGREEMENT], env=env)
    assert shown.exit_code == 0 and text.exit_code == 0, shown.output + text.output
    body = json.loads(shown.stdout)
    this_year = budget.school_year(datetime.now(UTC))
    assert body["period"]["school_year"] == this_year and body["period"]["exact"]["spent"] == "0.3"
    assert body["parties"][EPP]["exact"]["remaining"] == "0.7"
    assert body["remaining"] == 2.2  # the lifetime's
    assert f"school year {budget.school_year_label(this_year)}" in text.stdout
    assert "(lifetime cap)" in text.stdout


def test_without_a_period_budget_the_whole_life_is_one_period(
    tmp_path: Path, database_url: str
) -> None:
    """No period_budget: today's single pool. Two releases of 1.0 in one school year,
    which a period budget of 1.0 would refuse, are both made."""
    folder = period_agreements(tmp_path / "a", lifetime=None, period=None)
    gw, _ = open_gateway(tmp_path, database_url, folder)
    with gw:
        upload_evaluations(gw, tmp_path)
        gw.clock = at(2027, 3, 1)
        ask(gw, EPP, 1, "1")
        ask(gw, EPP, 2, "1")
        gw.clock = at(2028, 3, 1)
        ask(gw, EPP, 3, "1")
        with pytest.raises(BudgetExhausted) as refused:
            ask(gw, EPP, 4, "0.5")
        budget_now = report(gw)
        with gw.sessions() as session:
            history = budget_history(session, AGREEMENT)
    assert refused.value.message.endswith(f"more in agreement {AGREEMENT!r}")
    assert budget_now["period"] is None and budget_now["parties"][EPP]["period"] is None
    assert budget_now["exact"]["spent"] == "3" and budget_now["parties"][EPP]["total"] == 3.0
    assert budget_now["parties"][EPP]["lifetime_spent"] == budget_now["parties"][EPP]["spent"]
    # The ledger still names the school year of each reservation.
    assert [entry["period"] for entry in history] == [2027, 2027, 2028]


def test_a_period_budget_declared_later_counts_the_years_earlier_spending(
    tmp_path: Path, database_url: str
) -> None:
    one_pool = make_settings(
        tmp_path, database_url, agreements_dir=period_agreements(tmp_path / "a", period=None)
    )
    initialise(one_pool)
    actor = audit.Actor(role="analyst", party=EPP)

    def reserve(gw: Gateway, epsilon: str, moment: FixedClock) -> budget.BudgetState:
        with gw.sessions() as session, session.begin():
            return budget.reserve(
                session,
                agreement=gw.agreement(AGREEMENT),
                party=EPP,
                epsilon=Decimal(epsilon),
                delta=Decimal("1e-9"),
                release_id=str(uuid.uuid4()),
                actor=actor,
                now=moment(),
            )

    with Gateway.open(one_pool) as gw:
        reserve(gw, "0.8", at(2027, 1, 10))
    periods = one_pool.model_copy(
        update={"agreements_dir": period_agreements(tmp_path / "b", period=PERIOD)}
    )
    with Gateway.open(periods) as gw:
        with pytest.raises(BudgetExhausted, match="school year 2026-27"):
            reserve(gw, "0.3", at(2027, 5, 1))  # 0.8 of 2026-27's 1.0 is spent already
        assert reserve(gw, "0.2", at(2027, 5, 1)).epsilon_remaining == 0
        assert reserve(gw, "1", at(2027, 8, 1)).period == 2028
        with gw.sessions() as session:
            changed = [
                audit.event_view(e)["details"]
                for e in session.scalars(audit.query_events(kind="budget-changed"))
            ]
    pool_changes = [c for c in changed if c["party"] is None]
    assert pool_changes[-1]["period_epsilon_total"] == "1"
    assert pool_changes[-1]["previous"]["period_epsilon_total"] is None
    assert "period_epsilon_total" not in pool_changes[0]  # the pool as first made: no periods
    epp_limits = [c["epsilon_total"] for c in changed if c["party"] == EPP]
    assert epp_limits[-1] == "1"  # the party's limit is now the year's budget


# --- the checks ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "limits", "path", "reason"),
    [
        (
            {"epsilon": 1.0, "delta": 0.0},
            None,
            "disclosure.overrides.period_budget.delta",
            "period_budget delta must be greater than 0",
        ),
        (
            {"epsilon": 0.0, "delta": 1.0e-7},
            None,
            "disclosure.overrides.period_budget.epsilon",
            "epsilon must be greater than 0",
        ),
        (
            {"epsilon": 3.0, "delta": 1.0e-7},
            None,
            "disclosure.overrides.period_budget.epsilon",
            "period_budget epsilon 3.0 exceeds the lifetime privacy_budget epsilon 2.5",
        ),
        (
            {"epsilon": 1.0, "delta": 1.0e-5},
            None,
            "disclosure.overrides.period_budget.delta",
            "period_budget delta 0.00001 exceeds the lifetime privacy_budget delta 0.000001",
        ),
        (
            {"epsilon": 0.5, "delta": 1.0e-7},
            None,
            "disclosure.overrides.period_budget.epsilon",
            "per_release_cap epsilon 1.0 exceeds the period_budget epsilon 0.5",
        ),
        (
            PERIOD,
            {EPP: {"epsilon": 1.5, "delta": 1.0e-7}},
            f"budget_limits.{EPP}.epsilon",
            "exceeds the agreement's period_budget epsilon 1.0 (limits apply per school year)",
        ),
    ],
)
def test_agreements_check_refuses_a_period_budget_that_cannot_work(
    tmp_path: Path,
    period: dict[str, Any],
    limits: dict[str, Any] | None,
    path: str,
    reason: str,
) -> None:
    folder = period_agreements(tmp_path, period=period, limits=limits)
    registry, problems = check_agreements(folder, POLICIES_DIR)
    assert [p.path for p in problems] == [path], problems
    assert reason in problems[0].reason, problems[0].reason
    assert problems[0].line is not None
    assert registry.agreements == {}


def test_a_period_budget_within_the_rules_loads(tmp_path: Path) -> None:
    registry, problems = check_agreements(period_agreements(tmp_path), POLICIES_DIR)
    assert problems == []
    disclosure = registry.agreement(AGREEMENT).resolved_disclosure
    assert disclosure.period_budget is not None
    assert disclosure.period_budget.epsilon == Decimal("1.0")
    assert disclosure.privacy_budget.epsilon == Decimal("2.5")
    assert budget.party_limit(registry.agreement(AGREEMENT), EPP) == budget.period_total(
        registry.agreement(AGREEMENT)
    )


def test_the_diversity_agreement_budgets_each_of_its_five_school_years() -> None:
    registry, problems = check_agreements(AGREEMENTS_DIR, POLICIES_DIR)
    assert problems == []
    diversity = registry.agreement("diversity-cedar-valley-harmon")
    disclosure = diversity.resolved_disclosure
    assert disclosure.period_budget is not None
    years = budget.school_year(
        datetime.combine(diversity.ends, datetime.min.time())
    ) - budget.school_year(datetime.combine(diversity.effective, datetime.min.time()))
    assert years + 1 == 5
    assert disclosure.period_budget.epsilon * 5 == disclosure.privacy_budget.epsilon


# --- the property ---------------------------------------------------------------------------

#: The property's agreement: lifetime (2.5, 2.5e-7), each school year (1, 1e-7), and the
#: EPP limited to (0.6, 1e-7) a year; the district may spend the whole year's budget.
PROPERTY_LIMIT = {"epsilon": 0.6, "delta": 1.0e-7}
UTC_MINUS_5 = timezone(timedelta(hours=-5))


@pytest.fixture
def ledger(tmp_path: Path, database_url: str) -> Iterator[Gateway]:
    folder = period_agreements(tmp_path / "a", limits={EPP: PROPERTY_LIMIT})
    document = yaml.safe_load((folder / f"{AGREEMENT}.yaml").read_text())
    document["disclosure"]["overrides"]["privacy_budget"] = {"epsilon": 2.5, "delta": 2.5e-7}
    (folder / f"{AGREEMENT}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    gw, _ = open_gateway(tmp_path, database_url, folder)
    with gw:
        yield gw


def fresh_agreement(gw: Gateway) -> Agreement:
    """The ledger's agreement under a new id, with its own empty pool."""
    agreement = gw.agreement(AGREEMENT).model_copy(update={"id": f"p-{uuid.uuid4().hex[:12]}"})
    now = datetime.now(UTC)
    with gw.sessions() as session, session.begin():
        session.add(
            AgreementRecord(
                id=agreement.id,
                version=agreement.version,
                content_hash=agreement.content_hash,
                title=agreement.title,
                status="active",
                loaded_at=now,
                changed_at=now,
            )
        )
        session.flush()
        budget.sync_budgets(session, agreement)
    return agreement


moments = st.one_of(
    st.datetimes(
        min_value=datetime(2025, 1, 1),
        max_value=datetime(2030, 12, 31),
        timezones=st.sampled_from([UTC, UTC_MINUS_5]),
    ),
    # The edges of a school year, in UTC and in a zone where they fall on another day.
    st.sampled_from(
        [
            datetime(2027, 6, 30, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2027, 7, 1, tzinfo=UTC),
            datetime(2027, 6, 30, 19, 30, tzinfo=UTC_MINUS_5),
            datetime(2028, 7, 1, tzinfo=UTC),
        ]
    ),
)
reservations = st.lists(
    st.tuples(
        moments,
        st.decimals(min_value=Decimal("0.01"), max_value=Decimal("1"), places=2),
        st.sampled_from([Decimal("1e-9"), Decimal("3e-8")]),
        st.sampled_from([EPP, DISTRICT]),
    ),
    max_size=24,
)


@hyp_settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=reservations)
def test_no_sequence_of_reservations_passes_a_school_year_or_the_lifetime_cap(
    ledger: Gateway, steps: list[tuple[datetime, Decimal, Decimal, str]]
) -> None:
    agreement = fresh_agreement(ledger)
    units = budget.epsilon_units, budget.delta_units
    lifetime = (units[0](Decimal("2.5")), units[1](Decimal("2.5e-7")))
    per_year = (units[0](Decimal(1)), units[1](Decimal("1e-7")))
    epp_limit = (units[0](Decimal("0.6")), units[1](Decimal("1e-7")))
    # A model of the rule: what each year, each party in each year, and the life spent.
    spent: dict[Any, list[int]] = {}

    def room(key: Any, limit: tuple[int, int], want: tuple[int, int]) -> bool:
        have = spent.get(key, [0, 0])
        return have[0] + want[0] <= limit[0] and have[1] + want[1] <= limit[1]

    for moment, epsilon, delta, party in steps:
        utc = moment.astimezone(UTC)
        year = utc.year + (1 if utc.month >= 7 else 0)
        want = (units[0](epsilon), units[1](delta))
        party_limit = epp_limit if party == EPP else per_year
        expected = (
            room("life", lifetime, want)
            and room(year, per_year, want)
            and room((party, year), party_limit, want)
        )
        try:
            with ledger.sessions() as session, session.begin():
                state = budget.reserve(
                    session,
                    agreement=agreement,
                    party=party,
                    epsilon=epsilon,
                    delta=delta,
                    release_id=str(uuid.uuid4()),
                    actor=audit.Actor(role="analyst", party=party),
                    now=moment,
                )
            accepted = True
        except BudgetExhausted:
            accepted = False
        # Refused only when it would pass a limit, and then always.
        assert accepted == expected, (moment, epsilon, delta, party)
        if accepted:
            for key in ("life", year, (party, year)):
                have = spent.setdefault(key, [0, 0])
                have[0] += want[0]
                have[1] += want[1]
            assert state.period == year
            assert budget.epsilon_units(state.epsilon_remaining) == min(
                lifetime[0] - spent["life"][0],
                per_year[0] - spent[year][0],
                party_limit[0] - spent[(party, year)][0],
            )
    # What the ledger holds, whatever the model says.
    with ledger.sessions() as session:
        rows = session.execute(
            select(
                BudgetEntry.period,
                BudgetEntry.party,
                func.sum(BudgetEntry.epsilon),
                func.sum(BudgetEntry.delta),
            )
            .where(BudgetEntry.agreement_id == agreement.id)
            .group_by(BudgetEntry.period, BudgetEntry.party)
        ).all()
    years: dict[int, list[int]] = {}
    for period, party, epsilon_sum, delta_sum in rows:
        limit = epp_limit if party == EPP else per_year
        assert int(epsilon_sum) <= limit[0] and int(delta_sum) <= limit[1]
        years.setdefault(period, [0, 0])
        years[period][0] += int(epsilon_sum)
        years[period][1] += int(delta_sum)
    for total_e, total_d in years.values():
        assert total_e <= per_year[0] and total_d <= per_year[1]
    assert sum(e for e, _ in years.values()) <= lifetime[0]
    assert sum(d for _, d in years.values()) <= lifetime[1]
