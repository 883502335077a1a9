"""The privacy budget: an exact-decimal ledger, reserved before any noise is drawn.

The agreement's disclosure profile sets its total ``privacy_budget``; each
recipient party (a party with a release allowlist) gets an equal share of it, so
everything released under the agreement, to every party together, stays within
the agreement's total even if the recipients pool what they receive. A reservation locks the party's
budget row (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite transactions begin
``IMMEDIATE``, so writers are serialised), checks what remains, adds a ledger
entry and commits, all in one transaction, before the release computes
anything noisy. Reservations are never refunded: a release that fails or a
process that dies afterwards leaves its reservation counted. So the budget can
never be overspent, not under concurrent requests and not across restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import audit
from gateway.agreements.models import Agreement
from gateway.errors import GatewayError
from gateway.storage.releases import BudgetEntry, PrivacyBudget

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


def from_epsilon_units(units: int) -> Decimal:
    return (Decimal(units) * EPSILON_UNIT).normalize()


def from_delta_units(units: int) -> Decimal:
    return (Decimal(units) * DELTA_UNIT).normalize()


@dataclass(frozen=True)
class BudgetState:
    party: str
    epsilon_total: Decimal
    epsilon_spent: Decimal
    delta_total: Decimal
    delta_spent: Decimal

    @property
    def epsilon_remaining(self) -> Decimal:
        # Never below zero, even after an agreement lowered its budget below the spend.
        return max(self.epsilon_total - self.epsilon_spent, Decimal(0))

    @property
    def delta_remaining(self) -> Decimal:
        return max(self.delta_total - self.delta_spent, Decimal(0))

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": float(self.epsilon_total),
            "spent": float(self.epsilon_spent),
            "remaining": float(self.epsilon_remaining),
            "delta_total": float(self.delta_total),
            "delta_spent": float(self.delta_spent),
            "delta_remaining": float(self.delta_remaining),
            "exact": {
                "total": str(self.epsilon_total),
                "spent": str(self.epsilon_spent),
                "remaining": str(self.epsilon_remaining),
                "delta_total": str(self.delta_total),
                "delta_spent": str(self.delta_spent),
            },
        }


def _state(row: PrivacyBudget) -> BudgetState:
    return BudgetState(
        party=row.party,
        epsilon_total=from_epsilon_units(row.epsilon_total),
        epsilon_spent=from_epsilon_units(row.epsilon_spent),
        delta_total=from_delta_units(row.delta_total),
        delta_spent=from_delta_units(row.delta_spent),
    )


def recipients(agreement: Agreement) -> list[str]:
    """The parties that receive releases: those with a release allowlist."""
    return sorted(agreement.releases)


def party_share(agreement: Agreement) -> tuple[int, int]:
    """Each recipient's (epsilon, delta) in ledger units: an equal share of the total,
    rounded down, so the shares never add up to more than the agreement's budget."""
    budget = agreement.resolved_disclosure.privacy_budget
    parties = max(len(recipients(agreement)), 1)
    return epsilon_units(budget.epsilon) // parties, delta_units(budget.delta) // parties


def sync_budgets(session: Session, agreement: Agreement) -> None:
    """Create each recipient's budget row, or update its total when the agreement changed.

    Every creation or change is in the audit log.
    """
    total_e, total_d = party_share(agreement)
    now = datetime.now(UTC)
    current = set(recipients(agreement))
    for former in session.scalars(
        select(PrivacyBudget).where(PrivacyBudget.agreement_id == agreement.id)
    ):
        if former.party not in current and former.epsilon_total != former.epsilon_spent:
            # No longer a recipient: its budget is closed at what it spent.
            former.epsilon_total, former.delta_total = former.epsilon_spent, former.delta_spent
            former.updated_at = now
    for party in sorted(current):
        row = session.get(PrivacyBudget, (agreement.id, party), with_for_update=True)
        before = None if row is None else (row.epsilon_total, row.delta_total)
        if row is None:
            session.add(
                PrivacyBudget(
                    agreement_id=agreement.id,
                    party=party,
                    epsilon_total=total_e,
                    delta_total=total_d,
                    epsilon_spent=0,
                    delta_spent=0,
                    updated_at=now,
                )
            )
        elif before != (total_e, total_d):
            row.epsilon_total, row.delta_total, row.updated_at = total_e, total_d, now
        else:
            continue
        previous = None
        if before is not None:
            previous = {
                "epsilon_total": str(from_epsilon_units(before[0])),
                "delta_total": str(from_delta_units(before[1])),
            }
        audit.append_event(
            session,
            kind="budget-changed",
            actor=audit.OPERATOR,
            details={
                "party": party,
                "epsilon_total": str(from_epsilon_units(total_e)),
                "delta_total": str(from_delta_units(total_d)),
                "previous": previous,
            },
            agreement=agreement,
        )
    session.flush()


def budget_states(session: Session, agreement_id: str) -> list[BudgetState]:
    rows = session.scalars(
        select(PrivacyBudget)
        .where(PrivacyBudget.agreement_id == agreement_id)
        .order_by(PrivacyBudget.party)
    )
    return [_state(row) for row in rows]


def budget_report(session: Session, agreement: Agreement) -> dict[str, Any]:
    """Total, spent and remaining, for the agreement and for each recipient party."""
    states = budget_states(session, agreement.id)
    total = agreement.resolved_disclosure.privacy_budget.epsilon
    spent = sum((s.epsilon_spent for s in states), Decimal(0))
    return {
        "agreement": agreement.id,
        "total": float(total),
        "spent": float(spent),
        "remaining": float(max(total - spent, Decimal(0))),
        "delta_total": float(agreement.resolved_disclosure.privacy_budget.delta),
        "per_release_cap": {
            "epsilon": float(agreement.resolved_disclosure.per_release_cap.epsilon),
            "delta": float(agreement.resolved_disclosure.per_release_cap.delta),
        },
        "parties": {s.party: s.to_dict() for s in states},
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
    # Lock every recipient's row of the agreement: the agreement-wide total is checked
    # too, so no change in the list of recipients can let them overspend it together.
    rows = {
        r.party: r
        for r in session.scalars(
            select(PrivacyBudget)
            .where(PrivacyBudget.agreement_id == agreement.id)
            .with_for_update()
        )
    }
    row = rows.get(party)
    if row is None:
        raise BudgetExhausted(
            f"party {party!r} has no release budget in agreement {agreement.id!r}"
        )
    want_e, want_d = epsilon_units(epsilon), delta_units(delta)
    budget = agreement.resolved_disclosure.privacy_budget
    agreement_full = sum(r.epsilon_spent for r in rows.values()) + want_e > epsilon_units(
        budget.epsilon
    ) or sum(r.delta_spent for r in rows.values()) + want_d > delta_units(budget.delta)
    if (
        agreement_full
        or row.epsilon_spent + want_e > row.epsilon_total
        or row.delta_spent + want_d > row.delta_total
    ):
        state = _state(row)
        raise BudgetExhausted(
            f"the release needs epsilon {epsilon} and delta {delta}, but {party!r} has "
            f"epsilon {state.epsilon_remaining} and delta {state.delta_remaining} left "
            f"in agreement {agreement.id!r}",
            details=[state.to_dict()],
        )
    row.epsilon_spent += want_e
    row.delta_spent += want_d
    row.updated_at = datetime.now(UTC)
    session.add(
        BudgetEntry(
            agreement_id=agreement.id,
            party=party,
            release_id=release_id,
            epsilon=want_e,
            delta=want_d,
            created_at=row.updated_at,
        )
    )
    state = _state(row)
    audit.append_event(
        session,
        kind="budget-reserved",
        actor=actor,
        details={
            "release_id": release_id,
            "party": party,
            "epsilon": str(epsilon),
            "delta": str(delta),
            "epsilon_spent": str(state.epsilon_spent),
            "epsilon_remaining": str(state.epsilon_remaining),
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
                "epsilon": str(from_epsilon_units(entry.epsilon)),
                "delta": str(from_delta_units(entry.delta)),
                "party_spent": str(from_epsilon_units(running[entry.party])),
            }
        )
    return history
