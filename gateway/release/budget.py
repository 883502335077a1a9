"""The privacy budget: an exact-decimal ledger, reserved before any noise is drawn.

An agreement's releases are partnership releases: one table, one noise draw, seen
by every recipient allowed its fields and charged once. So the agreement's total
``privacy_budget`` is one pool (``budget_pools``), and everything released under
the agreement, to every party together, stays within it. Each recipient party also
has a row (``privacy_budgets``) recording what its own requests spent, with the
spending limit the agreement declares for it (``budget_limits``), or the whole pool.

An agreement may also give each school year its own budget (``period_budget``; a
school year runs July 1 to June 30, UTC, and is named by the year it ends, as the
data names it). The pool's total is then a lifetime cap, a release is charged to the
school year it is made in and must fit that year's budget as well as the lifetime
cap, and a party's limit applies to each school year. What a school year spent is
the sum of the ledger's entries charged to it. Without a period budget the whole
life of the agreement is one period.

A reservation locks the pool row and the party's row (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite transactions begin ``IMMEDIATE``, so writers are serialised),
checks every limit, adds a ledger entry and commits, all in one transaction, before
the release computes anything noisy. Every ledger entry of an agreement is written
under its pool's lock, so the sums of a school year read under that lock are
exact. Reservations are never refunded: a release that fails or a process that dies
afterwards leaves its reservation counted. So the budget can never be overspent, not
under concurrent requests and not across restarts. All arithmetic is on integers
(units of 10^-12 epsilon, 10^-18 delta): this module is the only place that adds,
compares or splits budgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any, Literal

from sqlalchemy import bindparam, func, select
from sqlalchemy.orm import Session

from gateway import audit
from gateway.agreements.models import Agreement
from gateway.errors import GatewayError
from gateway.storage.releases import BudgetEntry, BudgetPool, PrivacyBudget

EPSILON_UNIT = Decimal("1e-12")
DELTA_UNIT = Decimal("1e-18")


class BudgetExhausted(GatewayError):
    """The request would spend more than the recipient's remaining budget."""

    code = "budget_exhausted"
    status = 409
    exit_code = 9


def epsilon_units(value: Decimal) -> int:
    return int((value / EPSILON_UNIT).to_integral_exact())


def delta_units(value: Decimal) -> int:
    return int((value / DELTA_UNIT).to_integral_exact())


def decimal_text(value: Decimal) -> str:
    """An exact decimal in one spelling, without an exponent: "10", "0.5", "0.000000001"."""
    return format(value.normalize(), "f")


def from_epsilon_units(units: int) -> Decimal:
    return (Decimal(units) * EPSILON_UNIT).normalize()


def from_delta_units(units: int) -> Decimal:
    return (Decimal(units) * DELTA_UNIT).normalize()


def split(total: Decimal, parts: int) -> Decimal:
    """``total`` shared over ``parts``, rounded down to the ledger's unit, so the
    parts never add up to more than the total."""
    return (total / parts).quantize(EPSILON_UNIT, rounding=ROUND_DOWN).normalize()


# --- school years ----------------------------------------------------------------------


def school_year(moment: datetime) -> int:
    """The school year of ``moment`` (UTC; a moment without a zone is taken as UTC),
    named by the year it ends: July 1 2026 to June 30 2027 is 2027."""
    day = (moment.astimezone(UTC) if moment.tzinfo is not None else moment).date()
    return day.year + 1 if day.month >= 7 else day.year


def school_year_dates(year: int) -> tuple[date, date]:
    """The first and last day of school year ``year``: July 1 and June 30."""
    return date(year - 1, 7, 1), date(year, 6, 30)


def school_year_label(year: int) -> str:
    """How people write school year ``year``: 2027 is "2026-27"."""
    return f"{year - 1}-{year % 100:02d}"


# --- states -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Allowance:
    """A limit and what was spent against it, in ledger units."""

    epsilon_total: int
    epsilon_spent: int
    delta_total: int
    delta_spent: int

    @property
    def epsilon_left(self) -> int:
        # Never below zero, even after an agreement lowered its budget below the spend.
        return max(self.epsilon_total - self.epsilon_spent, 0)

    @property
    def delta_left(self) -> int:
        return max(self.delta_total - self.delta_spent, 0)

    def admits(self, epsilon: int, delta: int) -> bool:
        return (
            self.epsilon_spent + epsilon <= self.epsilon_total
            and self.delta_spent + delta <= self.delta_total
        )


NOTHING = Allowance(0, 0, 0, 0)


@dataclass(frozen=True)
class BudgetState:
    """One recipient's spending in the period in force (the school year when the
    agreement has a period budget, else its whole life), and what the agreement has
    left in that period and over its life."""

    party: str
    #: The party's limit and what its own requests spent, in the period in force.
    own: Allowance
    #: The agreement's pool over its whole life (its lifetime cap when periods are on).
    lifetime: Allowance
    #: The agreement's budget and spending in the school year in force; None when the
    #: agreement has no period budget.
    period_pool: Allowance | None
    #: That school year (2027 = 2026-27); None when the whole life is one period.
    period: int | None
    #: What the party's own requests spent over the agreement's life, in ledger units.
    own_lifetime_spent: tuple[int, int]

    @property
    def limits(self) -> tuple[Allowance, ...]:
        return (self.own, *self.pools)

    @property
    def epsilon_total(self) -> Decimal:
        return from_epsilon_units(self.own.epsilon_total)

    @property
    def epsilon_spent(self) -> Decimal:
        return from_epsilon_units(self.own.epsilon_spent)

    @property
    def delta_total(self) -> Decimal:
        return from_delta_units(self.own.delta_total)

    @property
    def delta_spent(self) -> Decimal:
        return from_delta_units(self.own.delta_spent)

    @property
    def pools(self) -> tuple[Allowance, ...]:
        """The agreement's limits in force: its lifetime, and the period's when it has one."""
        return (self.lifetime, *((self.period_pool,) if self.period_pool is not None else ()))

    @property
    def pool_epsilon_remaining(self) -> Decimal:
        """What the agreement may still spend now: in the period in force, for its life."""
        return from_epsilon_units(min(p.epsilon_left for p in self.pools))

    @property
    def pool_delta_remaining(self) -> Decimal:
        return from_delta_units(min(p.delta_left for p in self.pools))

    @property
    def epsilon_remaining(self) -> Decimal:
        """What the party may still spend now: every limit taken into account."""
        return from_epsilon_units(min(limit.epsilon_left for limit in self.limits))

    @property
    def delta_remaining(self) -> Decimal:
        return from_delta_units(min(limit.delta_left for limit in self.limits))

    def fits(self, epsilon: Decimal, delta: Decimal) -> bool:
        return epsilon <= self.epsilon_remaining and delta <= self.delta_remaining

    def admits(self, epsilon: int, delta: int) -> bool:
        """Whether (epsilon, delta), in ledger units, fits every limit: the rule a
        reservation applies."""
        return all(limit.admits(epsilon, delta) for limit in self.limits)

    def passed(self, epsilon: int, delta: int) -> list[str]:
        """The limits (epsilon, delta) would pass, in words."""
        names = []
        if not self.own.admits(epsilon, delta):
            names.append(
                "the party's limit" + (" for the year" if self.period_pool is not None else "")
            )
        if self.period_pool is not None and not self.period_pool.admits(epsilon, delta):
            names.append("the school year's budget")
        if not self.lifetime.admits(epsilon, delta):
            names.append(
                "the lifetime cap" if self.period_pool is not None else "the agreement's budget"
            )
        return names

    def to_dict(self) -> dict[str, Any]:
        lifetime_e, lifetime_d = self.own_lifetime_spent
        return {
            "total": float(self.epsilon_total),
            "spent": float(self.epsilon_spent),
            "remaining": float(self.epsilon_remaining),
            "delta_total": float(self.delta_total),
            "delta_spent": float(self.delta_spent),
            "delta_remaining": float(self.delta_remaining),
            "period": self.period,
            "lifetime_spent": float(from_epsilon_units(lifetime_e)),
            "lifetime_delta_spent": float(from_delta_units(lifetime_d)),
            "lifetime_remaining": float(from_epsilon_units(self.lifetime.epsilon_left)),
            "lifetime_delta_remaining": float(from_delta_units(self.lifetime.delta_left)),
            "exact": {
                "total": decimal_text(self.epsilon_total),
                "spent": decimal_text(self.epsilon_spent),
                "remaining": decimal_text(self.epsilon_remaining),
                "delta_total": decimal_text(self.delta_total),
                "delta_spent": decimal_text(self.delta_spent),
                "lifetime_spent": decimal_text(from_epsilon_units(lifetime_e)),
                "lifetime_remaining": decimal_text(from_epsilon_units(self.lifetime.epsilon_left)),
            },
        }


# Built once: every release, preview and budget read runs these (issue 14, "cheaper
# requests"); building a statement (or ``session.get``'s) costs more than running it.
_POOL = select(BudgetPool).where(BudgetPool.agreement_id == bindparam("agreement"))
_RECIPIENTS = (
    select(PrivacyBudget)
    .where(PrivacyBudget.agreement_id == bindparam("agreement"))
    .order_by(PrivacyBudget.party)
)
_SPENT_IN_YEAR = (
    select(BudgetEntry.party, func.sum(BudgetEntry.epsilon), func.sum(BudgetEntry.delta))
    .where(
        BudgetEntry.agreement_id == bindparam("agreement"), BudgetEntry.period == bindparam("year")
    )
    .group_by(BudgetEntry.party)
)


def _pool(session: Session, agreement_id: str) -> BudgetPool | None:
    return session.scalars(_POOL, {"agreement": agreement_id}).first()


def _period_budget(pool: BudgetPool | None) -> tuple[int, int] | None:
    """The pool's budget per school year in ledger units; None: one period, its life."""
    if pool is None or pool.period_epsilon_total is None or pool.period_delta_total is None:
        return None
    return pool.period_epsilon_total, pool.period_delta_total


def _spent_in_year(session: Session, agreement_id: str, year: int) -> dict[str | None, Allowance]:
    """What the agreement's releases spent in school year ``year``: by party, and in
    all (key None), as allowances with no total (the caller knows the totals)."""
    by_party = session.execute(_SPENT_IN_YEAR, {"agreement": agreement_id, "year": year}).all()
    # SUM of a BIGINT is NUMERIC on PostgreSQL: back to exact integers.
    spent: dict[str | None, Allowance] = {
        party: Allowance(0, int(e), 0, int(d)) for party, e, d in by_party
    }
    spent[None] = Allowance(
        0,
        sum(a.epsilon_spent for a in spent.values()),
        0,
        sum(a.delta_spent for a in spent.values()),
    )
    return spent


def _states(
    session: Session,
    agreement_id: str,
    rows: list[PrivacyBudget],
    now: datetime,
    pool: BudgetPool | Literal[False] | None = False,
) -> list[BudgetState]:
    """The recipients' states; ``pool`` when the caller has just read it."""
    if pool is False:
        pool = _pool(session, agreement_id)
    lifetime = NOTHING
    if pool is not None:
        lifetime = Allowance(
            pool.epsilon_total, pool.epsilon_spent, pool.delta_total, pool.delta_spent
        )
    period_pool: Allowance | None = None
    period: int | None = None
    spent: dict[str | None, Allowance] = {}
    per_year = _period_budget(pool)
    if per_year is not None:
        period = school_year(now)
        spent = _spent_in_year(session, agreement_id, period)
        in_all = spent[None]
        period_pool = Allowance(per_year[0], in_all.epsilon_spent, per_year[1], in_all.delta_spent)
    states = []
    for row in rows:
        if period_pool is None:
            own = Allowance(row.epsilon_total, row.epsilon_spent, row.delta_total, row.delta_spent)
        else:
            in_year = spent.get(row.party, NOTHING)
            own = Allowance(
                row.epsilon_total, in_year.epsilon_spent, row.delta_total, in_year.delta_spent
            )
        states.append(
            BudgetState(
                party=row.party,
                own=own,
                lifetime=lifetime,
                period_pool=period_pool,
                period=period,
                own_lifetime_spent=(row.epsilon_spent, row.delta_spent),
            )
        )
    return states


# --- what the agreement declares -----------------------------------------------------------


def recipients(agreement: Agreement) -> list[str]:
    """The parties that receive releases: those with a release allowlist."""
    return sorted(agreement.releases)


def pool_total(agreement: Agreement) -> tuple[int, int]:
    """The agreement's (epsilon, delta) over its whole life, in ledger units."""
    budget = agreement.resolved_disclosure.privacy_budget
    return epsilon_units(budget.epsilon), delta_units(budget.delta)


def period_total(agreement: Agreement) -> tuple[int, int] | None:
    """The agreement's (epsilon, delta) per school year in ledger units; None when it
    declares no period budget."""
    budget = agreement.resolved_disclosure.period_budget
    if budget is None:
        return None
    return epsilon_units(budget.epsilon), delta_units(budget.delta)


def party_limit(agreement: Agreement, party: str) -> tuple[int, int]:
    """A recipient's spending limit in ledger units, in the period in force (each school
    year when the agreement has a period budget, else its whole life): the one the
    agreement declares in ``budget_limits``, else all the period's budget."""
    declared = agreement.budget_limits.get(party)
    if declared is None:
        return period_total(agreement) or pool_total(agreement)
    return epsilon_units(declared.epsilon), delta_units(declared.delta)


# --- keeping the rows in step with the agreement -----------------------------------------


def sync_budgets(session: Session, agreement: Agreement) -> None:
    """Create the agreement's pool and each recipient's row, or update their totals
    when the agreement changed. Every creation or change is in the audit log."""
    now = datetime.now(UTC)
    total_e, total_d = pool_total(agreement)
    per_year = period_total(agreement)
    year_e, year_d = per_year if per_year is not None else (None, None)
    wanted = (total_e, total_d, year_e, year_d)
    pool = session.get(BudgetPool, agreement.id, with_for_update=True)
    pool_before = (
        None
        if pool is None
        else (
            pool.epsilon_total,
            pool.delta_total,
            pool.period_epsilon_total,
            pool.period_delta_total,
        )
    )
    if pool is None:
        session.add(
            BudgetPool(
                agreement_id=agreement.id,
                epsilon_total=total_e,
                delta_total=total_d,
                epsilon_spent=0,
                delta_spent=0,
                period_epsilon_total=year_e,
                period_delta_total=year_d,
                updated_at=now,
            )
        )
    elif pool_before != wanted:
        pool.epsilon_total, pool.delta_total = total_e, total_d
        pool.period_epsilon_total, pool.period_delta_total = year_e, year_d
        pool.updated_at = now
    if pool_before != wanted:
        _log_pool_change(session, agreement, wanted, pool_before)
    current = set(recipients(agreement))
    for former in session.scalars(
        select(PrivacyBudget).where(PrivacyBudget.agreement_id == agreement.id)
    ):
        if former.party in current:
            continue
        # No longer a recipient: its spending is closed (logged). Over the whole life,
        # at what it spent; with a period budget, at nothing in any school year.
        closed = (0, 0) if per_year is not None else (former.epsilon_spent, former.delta_spent)
        is_open = (
            (former.epsilon_total, former.delta_total) != closed
            if per_year is not None
            else former.epsilon_total != former.epsilon_spent
        )
        if is_open:
            was = (former.epsilon_total, former.delta_total)
            former.epsilon_total, former.delta_total = closed
            former.updated_at = now
            _log_change(session, agreement, former.party, closed, was)
    for party in sorted(current):
        limit_e, limit_d = party_limit(agreement, party)
        row = session.get(PrivacyBudget, (agreement.id, party), with_for_update=True)
        before = None if row is None else (row.epsilon_total, row.delta_total)
        if row is None:
            session.add(
                PrivacyBudget(
                    agreement_id=agreement.id,
                    party=party,
                    epsilon_total=limit_e,
                    delta_total=limit_d,
                    epsilon_spent=0,
                    delta_spent=0,
                    updated_at=now,
                )
            )
        elif before != (limit_e, limit_d):
            row.epsilon_total, row.delta_total, row.updated_at = limit_e, limit_d, now
        else:
            continue
        _log_change(session, agreement, party, (limit_e, limit_d), before)
    session.flush()


def _totals(epsilon: int, delta: int) -> dict[str, str]:
    return {
        "epsilon_total": decimal_text(from_epsilon_units(epsilon)),
        "delta_total": decimal_text(from_delta_units(delta)),
    }


def _period_totals(epsilon: int | None, delta: int | None) -> dict[str, str | None]:
    if epsilon is None or delta is None:
        return {"period_epsilon_total": None, "period_delta_total": None}
    return {
        "period_epsilon_total": decimal_text(from_epsilon_units(epsilon)),
        "period_delta_total": decimal_text(from_delta_units(delta)),
    }


def _log_pool_change(
    session: Session,
    agreement: Agreement,
    total: tuple[int, int, int | None, int | None],
    before: tuple[int, int, int | None, int | None] | None,
) -> None:
    # The period totals are named only when the agreement has, or had, a period budget,
    # so an agreement without one logs exactly what it always did.
    periods = total[2] is not None or (before is not None and before[2] is not None)
    previous: dict[str, Any] | None = None
    if before is not None:
        previous = {**_totals(before[0], before[1])}
        if periods:
            previous.update(_period_totals(before[2], before[3]))
    details: dict[str, Any] = {"party": None, **_totals(total[0], total[1])}
    if periods:
        details.update(_period_totals(total[2], total[3]))
    details["previous"] = previous
    audit.append_event(
        session,
        kind="budget-changed",
        actor=audit.OPERATOR,
        details=details,
        agreement=agreement,
    )


def _log_change(
    session: Session,
    agreement: Agreement,
    party: str,
    total: tuple[int, int],
    before: tuple[int, int] | None,
) -> None:
    audit.append_event(
        session,
        kind="budget-changed",
        actor=audit.OPERATOR,
        details={
            # A party: its spending limit (the pool's events are _log_pool_change's).
            "party": party,
            **_totals(*total),
            "previous": None if before is None else _totals(*before),
        },
        agreement=agreement,
    )


# --- reading ----------------------------------------------------------------------------


def budget_states(
    session: Session,
    agreement_id: str,
    *,
    now: datetime | None = None,
    pool: BudgetPool | Literal[False] | None = False,
) -> list[BudgetState]:
    """Every recipient's state at ``now`` (default: the present), by party; ``pool``
    when the caller has just read the agreement's pool in this session."""
    rows = list(session.scalars(_RECIPIENTS, {"agreement": agreement_id}))
    return _states(session, agreement_id, rows, now or datetime.now(UTC), pool)


def budget_state(
    session: Session, agreement_id: str, party: str, *, now: datetime | None = None
) -> BudgetState | None:
    """One recipient's state at ``now`` (default: the present), or None when the party
    has no release budget."""
    for state in budget_states(session, agreement_id, now=now):
        if state.party == party:
            return state
    return None


def _period_view(year: int, total: tuple[int, int], spent: Allowance) -> dict[str, Any]:
    starts, ends = school_year_dates(year)
    left_e, left_d = max(total[0] - spent.epsilon_spent, 0), max(total[1] - spent.delta_spent, 0)
    return {
        "school_year": year,
        "label": school_year_label(year),
        "starts": starts.isoformat(),
        "ends": ends.isoformat(),
        "total": float(from_epsilon_units(total[0])),
        "spent": float(from_epsilon_units(spent.epsilon_spent)),
        "remaining": float(from_epsilon_units(left_e)),
        "delta_total": float(from_delta_units(total[1])),
        "delta_spent": float(from_delta_units(spent.delta_spent)),
        "delta_remaining": float(from_delta_units(left_d)),
        "exact": {
            "total": decimal_text(from_epsilon_units(total[0])),
            "spent": decimal_text(from_epsilon_units(spent.epsilon_spent)),
            "remaining": decimal_text(from_epsilon_units(left_e)),
            "delta_total": decimal_text(from_delta_units(total[1])),
            "delta_spent": decimal_text(from_delta_units(spent.delta_spent)),
        },
    }


def budget_report(
    session: Session, agreement: Agreement, *, now: datetime | None = None
) -> dict[str, Any]:
    """Total, spent and remaining of the agreement's pool over its life, and of the
    school year in force at ``now`` (default: the present) when it has a period
    budget; and for each recipient its limit, its own spending and what it may still
    spend."""
    moment = now or datetime.now(UTC)
    pool = _pool(session, agreement.id)
    total_e, total_d = pool_total(agreement)
    spent_e = pool.epsilon_spent if pool is not None else 0
    spent_d = pool.delta_spent if pool is not None else 0
    per_year = period_total(agreement)
    period = None
    if per_year is not None:
        year = school_year(moment)
        period = _period_view(year, per_year, _spent_in_year(session, agreement.id, year)[None])
    return {
        "agreement": agreement.id,
        "total": float(from_epsilon_units(total_e)),
        "spent": float(from_epsilon_units(spent_e)),
        "remaining": float(from_epsilon_units(max(total_e - spent_e, 0))),
        "delta_total": float(from_delta_units(total_d)),
        "delta_spent": float(from_delta_units(spent_d)),
        "delta_remaining": float(from_delta_units(max(total_d - spent_d, 0))),
        "period": period,
        "per_release_cap": {
            "epsilon": float(agreement.resolved_disclosure.per_release_cap.epsilon),
            "delta": float(agreement.resolved_disclosure.per_release_cap.delta),
        },
        "per_release_minimum": {
            "epsilon": float(agreement.resolved_disclosure.per_release_minimum.epsilon),
            "delta": float(agreement.resolved_disclosure.per_release_minimum.delta),
        },
        "exact": {
            "total": decimal_text(from_epsilon_units(total_e)),
            "spent": decimal_text(from_epsilon_units(spent_e)),
            "remaining": decimal_text(from_epsilon_units(max(total_e - spent_e, 0))),
        },
        "parties": {
            s.party: s.to_dict()
            for s in budget_states(session, agreement.id, now=moment, pool=pool)
        },
    }


# --- spending ---------------------------------------------------------------------------


def reserve(
    session: Session,
    *,
    agreement: Agreement,
    party: str,
    epsilon: Decimal,
    delta: Decimal,
    release_id: str,
    actor: audit.Actor,
    now: datetime | None = None,
) -> BudgetState:
    """Reserve (epsilon, delta) for one release in the caller's transaction, or refuse.

    The release is charged at ``now`` (default: the present), to its school year. The
    caller commits right away, before drawing any noise.
    """
    moment = now or datetime.now(UTC)
    # The pool first, always: every reservation of the agreement queues on this lock,
    # so the school year's sums read below include every committed entry.
    pool = session.scalars(
        select(BudgetPool).where(BudgetPool.agreement_id == agreement.id).with_for_update()
    ).first()
    row = session.scalars(
        select(PrivacyBudget)
        .where(PrivacyBudget.agreement_id == agreement.id, PrivacyBudget.party == party)
        .with_for_update()
    ).first()
    if row is None or pool is None:
        raise BudgetExhausted(
            f"party {party!r} has no release budget in agreement {agreement.id!r}"
        )
    want_e, want_d = epsilon_units(epsilon), delta_units(delta)
    (state,) = _states(session, agreement.id, [row], moment)
    if not state.admits(want_e, want_d):
        where = f"in agreement {agreement.id!r}"
        if state.period is not None:
            where = (
                f"in school year {school_year_label(state.period)} of agreement "
                f"{agreement.id!r} (it would pass {' and '.join(state.passed(want_e, want_d))})"
            )
        raise BudgetExhausted(
            f"the release needs epsilon {epsilon} and delta {delta}, but {party!r} may "
            f"spend epsilon {state.epsilon_remaining} and delta {state.delta_remaining} "
            f"more {where}",
            details=[state.to_dict()],
        )
    for charged in (row, pool):
        charged.epsilon_spent += want_e
        charged.delta_spent += want_d
        charged.updated_at = moment
    session.add(
        BudgetEntry(
            agreement_id=agreement.id,
            party=party,
            release_id=release_id,
            epsilon=want_e,
            delta=want_d,
            created_at=moment,
            period=school_year(moment),
        )
    )
    session.flush()
    (state,) = _states(session, agreement.id, [row], moment)
    details: dict[str, Any] = {
        "release_id": release_id,
        "party": party,
        "epsilon": decimal_text(epsilon),
        "delta": decimal_text(delta),
        "epsilon_spent": decimal_text(from_epsilon_units(pool.epsilon_spent)),
        "epsilon_remaining": decimal_text(state.epsilon_remaining),
    }
    if state.period_pool is not None:
        details["period"] = state.period
        details["period_epsilon_spent"] = decimal_text(
            from_epsilon_units(state.period_pool.epsilon_spent)
        )
    audit.append_event(
        session, kind="budget-reserved", actor=actor, details=details, agreement=agreement
    )
    return state


def budget_history(session: Session, agreement_id: str) -> list[dict[str, Any]]:
    """Every reservation of the agreement, oldest first, with each party's running total
    and the school year it was charged to."""
    running: dict[str, int] = {}
    history: list[dict[str, Any]] = []
    for entry in session.scalars(
        select(BudgetEntry).where(BudgetEntry.agreement_id == agreement_id).order_by(BudgetEntry.id)
    ):
        running[entry.party] = running.get(entry.party, 0) + entry.epsilon
        history.append(
            {
                "at": entry.created_at.isoformat(),
                "party": entry.party,
                "release_id": entry.release_id,
                "epsilon": decimal_text(from_epsilon_units(entry.epsilon)),
                "delta": decimal_text(from_delta_units(entry.delta)),
                "party_spent": decimal_text(from_epsilon_units(running[entry.party])),
                "period": entry.period,
            }
        )
    return history
