"""Every transaction of a release: reserve, record, repeat, refuse.

One release per agreement, canonical query, data version and agreement terms (its
``repeat_key``). The reservation inserts the release as ``pending`` with its key,
in the same transaction that reserves the budget, so of two concurrent identical
requests (from one recipient or two) exactly one reserves and draws noise; the other
finds the key taken, waits for the first to be recorded and is answered with it,
free. A release is recorded, with its ``release`` audit event, in one transaction
before it is returned. Reservations are never refunded (budget.py).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway import audit
from gateway.agreements.models import Agreement
from gateway.context import Gateway
from gateway.errors import GatewayError
from gateway.release import budget
from gateway.release.groupkeys import named_key
from gateway.release.model import AgreementRef, Preview, Release
from gateway.release.plan import Plan
from gateway.release.query import Query
from gateway.release.suppression import SuppressionResult
from gateway.storage.releases import Release as ReleaseRow
from gateway.storage.releases import SuppressedCell

#: How long a request waits for an identical one being computed, and when a pending
#: release is taken for dead (its process stopped after reserving).
WAIT_SECONDS = 120.0
STALE_AFTER = timedelta(hours=1)
AGREEMENT_WIDE = ""  # the party of a suppression remembered for the whole agreement


class ReleaseFailed(GatewayError):
    """The release failed after its budget was reserved; the reservation stays spent."""

    code = "release_failed"
    status = 500
    exit_code = 10


class ReleaseBusy(GatewayError):
    """An identical release is still being computed; asking again returns it, free."""

    code = "release_in_progress"
    status = 409
    exit_code = 9


@dataclass(frozen=True)
class Asked:
    """The identity of a release: its canonical query on one version of the data."""

    canonical: str
    data_version: str
    agreement_hash: str

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.canonical.encode()).hexdigest()

    @property
    def repeat_key(self) -> str:
        text = json.dumps([self.agreement_hash, self.fingerprint, self.data_version])
        return hashlib.sha256(text.encode()).hexdigest()

    @property
    def measure_signature(self) -> str:
        measure = json.loads(self.canonical)["measure"]
        return hashlib.sha256(json.dumps(measure, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Reservation:
    release_id: str
    state: budget.BudgetState


# Built once: every release and preview looks its key up (issue 14, "cheaper requests").
_BY_KEY = select(ReleaseRow).where(ReleaseRow.repeat_key == bindparam("key"))


def _stored(session: Session, key: str) -> ReleaseRow | None:
    return session.scalars(_BY_KEY, {"key": key}).first()


def stored_release(session: Session, asked: Asked) -> ReleaseRow | None:
    """The recorded release of ``asked``, if there is one (in the caller's read)."""
    row = _stored(session, asked.repeat_key)
    return row if row is not None and row.status == "released" else None


def preview(
    session: Session, gateway: Gateway, agreement: Agreement, party: str, plan: Plan, asked: Asked
) -> Preview:
    """Cost and accuracy; whether the query would come back stored (free); spends nothing.
    Reads in the caller's session (the request's one read)."""
    state = budget.budget_state(session, agreement.id, party, now=gateway.clock())
    repeat = stored_release(session, asked) is not None
    return Preview(
        agreement=AgreementRef(id=agreement.id, version=agreement.version),
        epsilon=float(plan.epsilon),
        delta=float(plan.delta_used),
        repeat=repeat,
        epsilon_cost=0.0 if repeat else float(plan.epsilon),
        delta_cost=0.0 if repeat else float(plan.delta_used),
        groups_per_teacher=plan.groups_per_teacher,
        accuracy_95=plan.accuracy(),
        cells=len(plan.public_combinations) if not plan.private_positions else None,
        budget_remaining=float(state.epsilon_remaining) if state else 0.0,
        delta_remaining=float(state.delta_remaining) if state else 0.0,
        would_fit=repeat or bool(state and state.fits(plan.epsilon, plan.delta_used)),
        budget_period=(budget.school_year_label(state.period) if state and state.period else None),
        lifetime_remaining=(
            float(budget.from_epsilon_units(state.lifetime.epsilon_left))
            if state and state.period
            else None
        ),
        exact={
            "epsilon_cost": "0" if repeat else budget.decimal_text(plan.epsilon),
            "delta_cost": "0" if repeat else budget.decimal_text(plan.delta_used),
        },
    )


def reserve(
    gateway: Gateway,
    *,
    agreement: Agreement,
    party: str,
    plan: Plan,
    asked: Asked,
    actor: audit.Actor,
) -> Reservation | ReleaseRow:
    """Reserve the budget and claim the release's key, committed, before any noise is
    drawn; or, when an identical release holds the key, that release once recorded."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        release_id = str(uuid.uuid4())
        now = gateway.clock()  # the moment charged: its school year pays
        try:
            with gateway.sessions() as session, session.begin():
                # The key first: a second identical request fails here, spending nothing.
                session.add(
                    ReleaseRow(
                        release_id=release_id,
                        agreement_id=agreement.id,
                        agreement_hash=agreement.content_hash,
                        party=party,
                        query_hash=asked.fingerprint,
                        query=asked.canonical,
                        data_versions=asked.data_version,
                        measure_signature=asked.measure_signature,
                        epsilon=budget.epsilon_units(plan.epsilon),
                        delta=budget.delta_units(plan.delta_used),
                        body="",
                        table_sha256="",
                        created_at=now,
                        repeat_key=asked.repeat_key,
                        status="pending",
                    )
                )
                session.flush()
                state = budget.reserve(
                    session,
                    agreement=agreement,
                    party=party,
                    epsilon=plan.epsilon,
                    delta=plan.delta_used,
                    release_id=release_id,
                    actor=actor,
                    now=now,
                )
            return Reservation(release_id=release_id, state=state)
        except IntegrityError:
            pass  # the key is taken: an identical release is recorded or on its way
        with gateway.sessions() as session, session.begin():
            other = _stored(session, asked.repeat_key)
            if other is not None and other.status == "released":
                return other
            if other is not None and gateway.clock() - _aware(other.created_at) > STALE_AFTER:
                _release_key(session, other.release_id)  # its process died: take over
                continue
        if time.monotonic() > deadline:
            raise ReleaseBusy(
                "an identical release is still being computed; ask again shortly (it "
                "will then come back stored, at no cost)"
            )
        time.sleep(0.05)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _release_key(session: Session, release_id: str) -> None:
    session.execute(
        update(ReleaseRow)
        .where(ReleaseRow.release_id == release_id)
        .values(status="failed", repeat_key=None)
    )


def fail(gateway: Gateway, reservation: Reservation) -> None:
    """Mark a reserved release failed: its key is free again, its budget stays spent."""
    with gateway.sessions() as session, session.begin():
        _release_key(session, reservation.release_id)


def remembered(gateway: Gateway, agreement: Agreement, signature: str) -> set[str]:
    """Cells suppressed in earlier releases of the same table (named keys)."""
    with gateway.sessions() as session:
        return set(
            session.scalars(
                select(SuppressedCell.group_key).where(
                    SuppressedCell.agreement_id == agreement.id,
                    SuppressedCell.table_signature == signature,
                )
            )
        )


def table_hash(release: Release) -> str:
    """SHA-256 of the cells, whatever order they are shown in (each recipient sees them
    in the order it asked): each cell as JSON with sorted keys, the texts sorted, then
    the list as JSON."""
    texts = sorted(
        json.dumps(cell, sort_keys=True, separators=(",", ":"))
        for cell in release.to_json()["cells"]
    )
    return hashlib.sha256(
        json.dumps([json.loads(t) for t in texts], sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def record(
    gateway: Gateway,
    *,
    agreement: Agreement,
    release: Release,
    asked: Asked,
    plan: Plan,
    pattern: SuppressionResult,
    actor: audit.Actor,
    signature: str,
    report: str | None,
) -> Release:
    """Record the release, its audit event and its suppressions (remembered for the
    table) in one transaction; return it as recorded."""
    sha = table_hash(release)
    hidden = pattern.suppressed
    with gateway.sessions() as session, session.begin():
        claimed = session.execute(
            update(ReleaseRow)
            .where(ReleaseRow.release_id == release.release_id, ReleaseRow.status == "pending")
            .values(status="recording")
        ).rowcount  # type: ignore[attr-defined]
        if claimed != 1:
            # Taken for dead and drawn again by another request: this draw is never
            # shown, so one release stays one table (its reservation stays spent).
            raise ReleaseFailed(
                "the release took too long and another request made it; ask again to "
                "receive that one, at no cost"
            )
        event = audit.append_event(
            session,
            kind="release",
            actor=actor,
            details={
                "release_id": release.release_id,
                "requester": release.party,
                "recipients": release.recipients,
                "query": json.loads(asked.canonical),
                "data_version": asked.data_version,
                "epsilon": budget.decimal_text(plan.epsilon),
                "delta": budget.decimal_text(plan.delta_used),
                "floor_delta": budget.decimal_text(plan.floor_delta),
                "publish_threshold": plan.threshold,
                "cells_released": len(release.cells) - len(hidden),
                "cells_suppressed": len(hidden),
                "cells_unprotectable": len(pattern.unprotectable),
                "table_sha256": sha,
                **({"report": report} if report else {}),
                **({"zcdp": plan.zcdp()} if plan.rho is not None else {}),
            },
            agreement=agreement,
        )
        recorded = release.model_copy(update={"audit_event": event.event_id})
        session.execute(
            update(ReleaseRow)
            .where(ReleaseRow.release_id == release.release_id)
            .values(body=json.dumps(recorded.to_json()), table_sha256=sha, status="released")
        )
        now = datetime.now(UTC)
        for key in sorted(named_key(plan.dimensions, k) for k in hidden):
            session.merge(
                SuppressedCell(
                    agreement_id=agreement.id,
                    party=AGREEMENT_WIDE,
                    table_signature=signature,
                    group_key=key,
                    created_at=now,
                )
            )
    return recorded


def repeat(
    gateway: Gateway,
    *,
    agreement: Agreement,
    party: str,
    row: ReleaseRow,
    actor: audit.Actor,
    report: str | None,
) -> Release:
    """The recorded release again, to ``party``: same numbers, no new noise, no cost."""
    stored = Release.from_json(json.loads(row.body))
    with gateway.sessions() as session, session.begin():
        event = audit.append_event(
            session,
            kind="release-repeated",
            actor=actor,
            details={
                "release_id": row.release_id,
                "requester": party,
                "first_requester": row.party,
                "query": json.loads(row.query),
                "table_sha256": row.table_sha256,
                "epsilon": "0",
                "delta": "0",
                **({"report": report} if report else {}),
            },
            agreement=agreement,
        )
        state = budget.budget_state(session, agreement.id, party, now=gateway.clock())
    return stored.model_copy(
        update={
            "repeated": True,
            "epsilon_spent": 0.0,
            "delta_spent": 0.0,
            "audit_event": event.event_id,
            "budget_remaining": float(state.epsilon_remaining) if state else 0.0,
        }
    )


def _redacted(query: Query) -> dict[str, Any]:
    """The query as a refusal event keeps it: field names and operators, no values.

    A refused query may name fields it may not see (an educator ID, say); its values
    are not needed to review the refusal and must not enter the permanent log.
    """
    body: dict[str, Any] = json.loads(query.canonical())
    body["filters"] = [{"field": f["field"], "op": f["op"]} for f in body["filters"]]
    if body["measure"].get("condition"):
        condition = body["measure"]["condition"]
        body["measure"]["condition"] = {"field": condition["field"], "op": condition["op"]}
    return body


def refuse(
    gateway: Gateway,
    *,
    agreement: Agreement | None,
    party: str,
    query: Query,
    actor: audit.Actor,
    error: GatewayError,
) -> None:
    """Write a refusal to the audit log (refusals depend on the query, the agreement,
    the role and the budget only: never on the data)."""
    with gateway.sessions() as session, session.begin():
        audit.append_event(
            session,
            kind="release-refused",
            actor=actor,
            details={
                "requester": party[:128],
                "query": _redacted(query),
                "code": error.code,
                "reason": error.message,
            },
            agreement=agreement,
        )
