"""The audit chain: the one module that writes the audit log.

Every event is a row whose ``body`` is canonical JSON (sorted keys, no
spaces, UTF-8) holding its sequence number, kind, time, actor, agreement,
details and the hash of the event before it; its ``hash`` is the SHA-256 of
that body. Editing, deleting, inserting or reordering a stored event breaks
a hash or a link, and :func:`verify_chain` says which event. Appends lock the
one-row chain head (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises
writers with ``BEGIN IMMEDIATE``), so concurrent writers never fork the chain.

A chain alone cannot stop someone who rewrites *every* event after an edit
and the head; signed checkpoints (a later issue) close that gap.

Details must never hold a raw identifier, a name or key material: callers
pass counts, ids of gateway objects, hashes and reasons.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from gateway.errors import NotInitialised
from gateway.storage.tables import AuditEvent, AuditHead

GENESIS_HASH = "0" * 64

#: Every kind of event, with what it records. Kinds are stable kebab-case names.
EVENT_KINDS: Mapping[str, str] = {
    "gateway-initialised": "the data folder and database were set up",
    "key-created": "a pseudonym key version was created for an agreement",
    "key-rotated": "an agreement's pseudonym key moved to a new version",
    "agreement-loaded": "an agreement file was loaded for the first time",
    "agreement-changed": "an agreement file changed since it was last loaded",
    "upload-accepted": "an extract was validated, pseudonymised and stored",
    "upload-refused": "an extract, or an upload request, was refused; nothing was stored",
    "budget-reserved": "privacy budget was reserved for a release, before any noise was drawn",
    "budget-changed": "a recipient's budget was set up or changed with its agreement",
    "release": "an aggregate was released to a recipient",
    "release-repeated": "an identical earlier release was returned again, at no budget cost",
    "release-refused": "a release request was refused; nothing was released",
}


@dataclass(frozen=True, kw_only=True)
class Actor:
    """Who acted: a party in a role, through a credential; or the operator."""

    role: str
    party: str | None = None
    credential_id: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"role": self.role, "party": self.party, "credential_id": self.credential_id}


OPERATOR = Actor(role="operator")


def canonical_json(value: Any) -> str:
    """The one JSON encoding hashes are computed over."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _utc(moment: datetime) -> datetime:
    # SQLite returns naive datetimes; everything the gateway stores is UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def initialise_chain(session: Session) -> None:
    """Create the chain head if absent (part of ``gateway init``)."""
    if session.get(AuditHead, 1) is None:
        session.add(AuditHead(id=1, seq=0, hash=GENESIS_HASH))
        session.flush()


def append_event(
    session: Session,
    *,
    kind: str,
    actor: Actor,
    details: Mapping[str, Any],
    agreement_id: str | None = None,
    agreement_version: str | None = None,
    agreement_hash: str | None = None,
) -> AuditEvent:
    """Append one event in the caller's transaction; it commits with the action.

    The caller's transaction commits the event together with what it records,
    so an action is never acknowledged without its event.
    """
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown audit event kind {kind!r}")
    head = session.get(AuditHead, 1, with_for_update=True)
    if head is None:
        raise NotInitialised("the audit log is not initialised: run `gateway init` first")
    occurred_at = datetime.now(UTC)
    seq = head.seq + 1
    body = {
        "seq": seq,
        "event_id": str(uuid.uuid4()),
        "occurred_at": occurred_at.isoformat(),
        "kind": kind,
        "actor": actor.to_dict(),
        "agreement": (
            None
            if agreement_id is None
            else {"id": agreement_id, "version": agreement_version, "content_hash": agreement_hash}
        ),
        "details": dict(details),
        "prev_hash": head.hash,
    }
    text = canonical_json(body)
    digest = _sha256(text)
    event = AuditEvent(
        seq=seq,
        event_id=body["event_id"],
        occurred_at=occurred_at,
        kind=kind,
        agreement_id=agreement_id,
        actor_party=actor.party,
        actor_role=actor.role,
        body=text,
        prev_hash=head.hash,
        hash=digest,
    )
    session.add(event)
    head.seq = seq
    head.hash = digest
    session.flush()
    return event


def event_view(event: AuditEvent) -> dict[str, Any]:
    """The event as reviewers see it: its body plus its hash."""
    view: dict[str, Any] = json.loads(event.body)
    view["hash"] = event.hash
    return view


def query_events(
    *,
    agreement_id: str | None = None,
    kind: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Select[AuditEvent]:
    """A filtered, ordered selection of events."""
    statement = select(AuditEvent).order_by(AuditEvent.seq)
    if agreement_id is not None:
        statement = statement.where(AuditEvent.agreement_id == agreement_id)
    if kind is not None:
        statement = statement.where(AuditEvent.kind == kind)
    if since is not None:
        statement = statement.where(AuditEvent.occurred_at >= since)
    if until is not None:
        statement = statement.where(AuditEvent.occurred_at < until)
    return statement


@dataclass(frozen=True)
class ChainProblem:
    seq: int | None
    reason: str

    def __str__(self) -> str:
        where = f"event {self.seq}" if self.seq is not None else "chain head"
        return f"{where}: {self.reason}"


@dataclass
class Verification:
    events_checked: int = 0
    head_hash: str = GENESIS_HASH
    problems: list[ChainProblem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "head_hash": self.head_hash,
            "problems": [{"seq": p.seq, "reason": p.reason} for p in self.problems],
        }


def _check_event(event: AuditEvent, expected_seq: int, expected_prev: str) -> Iterator[str]:
    if _sha256(event.body) != event.hash:
        yield "content was changed: its hash no longer matches its body"
        return
    body = json.loads(event.body)
    if body.get("seq") != event.seq:
        yield f"stored at position {event.seq} but written as event {body.get('seq')} (reordered)"
    if event.seq != expected_seq:
        if event.seq > expected_seq:
            yield f"expected event {expected_seq} here: event(s) before it were deleted"
        else:
            yield "sequence number repeats or goes backwards (inserted or reordered)"
    if body.get("prev_hash") != event.prev_hash:
        yield "its link to the previous event was changed"
    elif event.prev_hash != expected_prev:
        yield "does not follow the event before it (an event was deleted, inserted or reordered)"
    columns = {
        "kind": event.kind,
        "event_id": event.event_id,
        "agreement_id": event.agreement_id,
        "actor_party": event.actor_party,
        "actor_role": event.actor_role,
    }
    written = {
        "kind": body.get("kind"),
        "event_id": body.get("event_id"),
        "agreement_id": (body.get("agreement") or {}).get("id"),
        "actor_party": (body.get("actor") or {}).get("party"),
        "actor_role": (body.get("actor") or {}).get("role"),
    }
    for name, value in columns.items():
        if value != written[name]:
            yield f"column {name} was changed"
    if _utc(event.occurred_at) != datetime.fromisoformat(body["occurred_at"]):
        yield "column occurred_at was changed"


def verify_chain(session: Session) -> Verification:
    """Check every stored event and the head; list every problem found."""
    result = Verification()
    expected_prev = GENESIS_HASH
    expected_seq = 1
    for event in session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).yield_per(1000):
        for reason in _check_event(event, expected_seq, expected_prev):
            result.problems.append(ChainProblem(event.seq, reason))
        result.events_checked += 1
        expected_prev = event.hash
        expected_seq = event.seq + 1
    head = session.get(AuditHead, 1)
    if head is None:
        result.problems.append(ChainProblem(None, "missing: the log was not initialised"))
    elif head.seq != expected_seq - 1 or head.hash != expected_prev:
        result.problems.append(
            ChainProblem(
                None,
                f"the head records {head.seq} event(s) but the log ends at event "
                f"{expected_seq - 1}: events were removed from the end or the head was changed",
            )
        )
    result.head_hash = expected_prev
    return result
