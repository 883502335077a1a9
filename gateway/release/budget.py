"""The privacy budget: an exact-decimal ledger, reserved before any noise is drawn.

An agreement's releases are partnership releases: one table, one noise draw, seen
by every recipient allowed its fields and charged once. So the agreement's total
``privacy_budget`` is one pool (``budget_pools``), and everything released under
the agreement, to every party together, stays within it. Each recipient party also
has a row (``privacy_budgets``) recording what its own requests spent, with the
spending limit the agreement declares for it (``budget_limits``), or the whole pool.

A reservation locks the pool row and the party's row (``SELECT ... FOR UPDATE`` on
PostgreSQL; SQLite transactions begin ``IMMEDIATE``, so writers are serialised),
checks both, adds a ledger entry and commits, all in one transaction, before the
release computes anything noisy. Reservations are never refunded: a release that
fails or a process that dies afterwards leaves its reservation counted. So the
budget can never be overspent, not under concurrent requests and not across
restarts. All arithmetic is on integers (units of 10^-12 epsilon, 10^-18 delta):
this module is the only place that adds, compares or splits budgets.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_DOWN, Decimal
from typing import Any

from sqlalchemy import select
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


@dataclass(frozen=True)
class BudgetState:
    """One recipient's spending: its limit and spend, and what the pool has left."""

    party: str
    epsilon_total: Decimal  # the party's limit (the whole pool when none is declared)
    epsilon_spent: Decimal  # what the party's own requests spent
    delta_total: Decimal
    delta_spent: Decimal
    pool_epsilon_remaining: Decimal
    pool_delta_remaining: Decimal

    @property
    def epsilon_remaining(self) -> Decimal:
        # Never below zero, even after an agreement lowered its budget below the spend.
        own = max(self.epsilon_total - self.epsilon_spent, Decimal(0))
        return min(own, self.pool_epsilon_remaining)

    @property
    def delta_remaining(self) -> Decimal:
        own = max(self.delta_total - self.delta_spent, Decimal(0))
        return min(own, self.pool_delta_remaining)

    def fits(self, epsilon: Decimal, delta: Decimal) -> bool:
        return epsilon <= self.epsilon_remaining and delta <= self.delta_remaining

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": float(self.epsilon_total),
            "spent": float(self.epsilon_spent),
            "remaining": float(self.epsilon_remaining),
            "delta_total": float(self.delta_total),
            "delta_spent": float(self.delta_spent),
            "delta_remaining": float(self.delta_remaining),
            "exact": {
                "total": decimal_text(self.epsilon_total),
                "spent": decimal_text(self.epsilon_spent),
                "remaining": decimal_text(self.epsilon_remaining),
                "delta_total": decimal_text(self.delta_total),
                "delta_spent": decimal_text(self.delta_spent),
            },
        }


def _state(row: PrivacyBudget, pool: BudgetPool | None) -> BudgetState:
    pool_e = pool_d = Decimal(0)
    if pool is not None:
        pool_e = max(from_epsilon_units(pool.epsilon_total - pool.epsilon_spent), Decimal(0))
        pool_d = max(from_delta_units(pool.delta_total - pool.delta_spent), Decimal(0))
    return BudgetState(
        party=row.party,
        epsilon_total=from_epsilon_units(row.epsilon_total),
        epsilon_spent=from_epsilon_units(row.epsilon_spent),
        delta_total=from_delta_units(row.delta_total),
        delta_spent=from_delta_units(row.delta_spent),
        pool_epsilon_remaining=pool_e,
        pool_delta_remaining=pool_d,
    )


def recipients(agreement: Agreement) -> list[str]:
    """The parties that receive releases: those with a release allowlist."""
    return sorted(agreement.releases)


def pool_total(agreement: Agreement) -> tuple[int, int]:
    """The agreement's (epsilon, delta) in ledger units."""
    budget = agreement.resolved_disclosure.privacy_budget
    return epsilon_units(budget.epsilon), delta_units(budget.delta)


def party_limit(agreement: Agreement, party: str) -> tuple[int, int]:
    """A recipient's spending limit in ledger units: the one the agreement declares in
    ``budget_limits``, else the whole pool."""
    declared = agreement.budget_limits.get(party)
    if declared is None:
        return pool_total(agreement)
    return epsilon_units(declared.epsilon), delta_units(declared.delta)


def sync_budgets(session: Session, agreement: Agreement) -> None:
    """Create the agreement's pool and each recipient's row, or update their totals
    when the agreement changed. Every creation or change is in the audit log."""
    now = datetime.now(UTC)
    total_e, total_d = pool_total(agreement)
    pool = session.get(BudgetPool, agreement.id, with_for_update=True)
    pool_before = None if pool is None else (pool.epsilon_total, pool.delta_total)
    if pool is None:
        session.add(
            BudgetPool(
                agreement_id=agreement.id,
                epsilon_total=total_e,
                delta_total=total_d,
                epsilon_spent=0,
                delta_spent=0,
                updated_at=now,
            )
        )
    elif pool_before != (total_e, total_d):
        pool.epsilon_total, pool.delta_total, pool.updated_at = total_e, total_d, now
    if pool_before != (total_e, total_d):
        _log_change(session, agreement, None, (total_e, total_d), pool_before)
    current = set(recipients(agreement))
    for former in session.scalars(
        select(PrivacyBudget).where(PrivacyBudget.agreement_id == agreement.id)
    ):
        if former.party not in current and former.epsilon_total != former.epsilon_spent:
            # No longer a recipient: its spending is closed at what it spent (logged).
            was = (former.epsilon_total, former.delta_total)
            former.epsilon_total, former.delta_total = former.epsilon_spent, former.delta_spent
            former.updated_at = now
            closed = (former.epsilon_total, former.delta_total)
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


def _log_change(
    session: Session,
    agreement: Agreement,
    party: str | None,
    total: tuple[int, int],
    before: tuple[int, int] | None,
) -> None:
    previous = None
    if before is not None:
        previous = {
            "epsilon_total": decimal_text(from_epsilon_units(before[0])),
            "delta_total": decimal_text(from_delta_units(before[1])),
        }
    audit.append_event(
        session,
        kind="budget-changed",
        actor=audit.OPERATOR,
        details={
            # party None: the agreement's pool; a party: its spending limit.
            "party": party,
            "epsilon_total": decimal_text(from_epsilon_units(total[0])),
            "delta_total": decimal_text(from_delta_units(total[1])),
            "previous": previous,
        },
        agreement=agreement,
    )


def budget_states(session: Session, agreement_id: str) -> list[BudgetState]:
    pool = session.get(BudgetPool, agreement_id)
    rows = session.scalars(
        select(PrivacyBudget)
        .where(PrivacyBudget.agreement_id == agreement_id)
        .order_by(PrivacyBudget.party)
    )
    return [_state(row, pool) for row in rows]


def budget_state(session: Session, agreement_id: str, party: str) -> BudgetState | None:
    """One recipient's state, or None when the party has no release budget."""
    for state in budget_states(session, agreement_id):
        if state.party == party:
            return state
    return None


def budget_report(session: Session, agreement: Agreement) -> dict[str, Any]:
    """Total, spent and remaining of the agreement's pool, and for each recipient its
    limit, its own spending and what it may still spend."""
    pool = session.get(BudgetPool, agreement.id)
    total_e, total_d = pool_total(agreement)
    spent_e = pool.epsilon_spent if pool is not None else 0
    spent_d = pool.delta_spent if pool is not None else 0
    return {
        "agreement": agreement.id,
        "total": float(from_epsilon_units(total_e)),
        "spent": float(from_epsilon_units(spent_e)),
        "remaining": float(from_epsilon_units(max(total_e - spent_e, 0))),
        "delta_total": float(from_delta_units(total_d)),
        "delta_spent": float(from_delta_units(spent_d)),
        "delta_remaining": float(from_delta_units(max(total_d - spent_d, 0))),
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
        "parties": {s.party: s.to_dict() for s in budget_states(session, agreement.id)},
    }


def reserve(
    session: Session,
    *,
    agreement: Agreement,
    party: str,
    epsilon: Decimal,
    delta: Decimal,
    release_id: str,
    actor: audit.Actor,
) -> BudgetState:
    """Reserve (epsilon, delta) for one release in the caller's transaction, or refuse.

    The caller commits right away, before drawing any noise.
    """
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
    pool_full = (
        pool.epsilon_spent + want_e > pool.epsilon_total
        or pool.delta_spent + want_d > pool.delta_total
    )
    if (
        pool_full
        or row.epsilon_spent + want_e > row.epsilon_total
        or row.delta_spent + want_d > row.delta_total
    ):
        state = _state(row, pool)
        raise BudgetExhausted(
            f"the release needs epsilon {epsilon} and delta {delta}, but {party!r} may "
            f"spend epsilon {state.epsilon_remaining} and delta {state.delta_remaining} "
            f"more in agreement {agreement.id!r}",
            details=[state.to_dict()],
        )
    now = datetime.now(UTC)
    for charged in (row, pool):
        charged.epsilon_spent += want_e
        charged.delta_spent += want_d
        charged.updated_at = now
    session.add(
        BudgetEntry(
            agreement_id=agreement.id,
            party=party,
            release_id=release_id,
            epsilon=want_e,
            delta=want_d,
            created_at=now,
        )
    )
    state = _state(row, pool)
    audit.append_event(
        session,
        kind="budget-reserved",
        actor=actor,
        details={
            "release_id": release_id,
            "party": party,
            "epsilon": decimal_text(epsilon),
            "delta": decimal_text(delta),
            "epsilon_spent": decimal_text(from_epsilon_units(pool.epsilon_spent)),
            "epsilon_remaining": decimal_text(state.epsilon_remaining),
        },
        agreement=agreement,
    )
    return state


def budget_history(session: Session, agreement_id: str) -> list[dict[str, Any]]:
    """Every reservation of the agreement, oldest first, with each party's running total."""
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
            }
        )
    return history
