"""The audit chain: the one module that writes the audit log.

Every event is a row whose ``body`` is canonical JSON (RFC 8785, UTF-8)
holding its sequence number, kind, time, actor, agreement, details and the
hash of the event before it; its ``hash`` is the SHA-256 of that body. Events
written before RFC 8785 name no encoding and stay in theirs (Python's sorted
``json.dumps``); docs/audit-bundle.md specifies both. Editing, deleting,
inserting or reordering a stored event breaks
a hash or a link, and :func:`verify_chain` says which event. Appends lock the
one-row chain head (``SELECT ... FOR UPDATE`` on PostgreSQL; SQLite serialises
writers with ``BEGIN IMMEDIATE``), so concurrent writers never fork the chain.

A chain alone cannot stop someone who rewrites *every* event after an edit
and the head; signed checkpoints close that gap: the chain head is signed with
the gateway's Ed25519 key (at start-up and at every export), and an exported
bundle (events as JSON Lines, checkpoints, public key) is verified offline.

Details must never hold a raw identifier, a name or key material: callers
pass counts, ids of gateway objects, hashes and reasons.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import tempfile
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.errors import ConfigurationError, NotInitialised, SchemaError

if TYPE_CHECKING:
    from sqlalchemy import Insert, Select, Update
    from sqlalchemy.orm import Session

    from gateway.storage.tables import AuditCheckpoint, AuditEvent

# SQLAlchemy and the tables are imported by the functions that touch the database, not
# here: verifying an exported bundle offline (`gateway audit verify --bundle`) needs
# neither, and importing them costs more CPU than checking a large bundle's hashes.

GENESIS_HASH = "0" * 64

#: Every kind of event, with what it records. Kinds are stable kebab-case names.
EVENT_KINDS: Mapping[str, str] = {
    "gateway-initialised": "the data folder and database were set up",
    "key-created": "a pseudonym key version was created for an agreement",
    "key-rotated": "an agreement's pseudonym key moved to a new version",
    "wrapping-key-rotated": "the master key was wrapped under a new HSM wrapping key",
    "agreement-loaded": "an agreement file was loaded for the first time",
    "agreement-changed": "an agreement file changed since it was last loaded",
    "upload-accepted": "an extract was validated, pseudonymised and stored",
    "upload-refused": "an extract, or an upload request, was refused; nothing was stored",
    "budget-reserved": "privacy budget was reserved for a release, before any noise was drawn",
    "budget-changed": "a recipient's budget was set up or changed with its agreement",
    "release": "an aggregate was released to a recipient",
    "release-repeated": "an identical earlier release was returned again, at no budget cost",
    "release-refused": "a release request was refused; nothing was released",
    "agreement-terminated": "an agreement was terminated (operator action or end date)",
    "key-destroyed": "an agreement's key versions were destroyed: pseudonyms can't be remade",
    "data-destroyed": "an agreement's stored data was destroyed; details are the receipt",
    "credential-issued": "a bearer token was issued (its id, role, party and agreements)",
    "credential-revoked": "a bearer token was revoked",
    "access-refused": "an API request was refused: no valid token (401; the one that starts "
    "a lockout says so) or not allowed (403)",
    "session-started": "someone signed in to the web pages: the session's reference (never "
    "its id), how they signed in, and when it ends at the latest",
    "session-ended": "a web session ended: signed out, idle, past its lifetime, its token "
    "revoked or expired, its sign-in mapping removed, or replaced by a new sign-in",
    "extract-requested": "a recipient asked for a record-level extract; it awaits approval",
    "extract-approved": "the providing party approved an extract request (its download window)",
    "extract-refused": "the providing party refused an extract request",
    "extract-decision-refused": "an approval or refusal of an extract request was itself "
    "refused: the credential or person that asked, or not an approver of the providing party",
    "extract-downloaded": "an approved extract was downloaded (once), with its fingerprint",
    "extract-download-refused": "a download of an extract was refused (not approved, taken, "
    "expired or not the recipient's)",
    "extract-expired": "an approved extract was not downloaded in time; its rows were erased",
    "extract-withdrawn": "an extract not yet downloaded was withdrawn as its agreement ended",
    "extract-identified": "a found copy of an extract was matched against the fingerprints "
    "of the extracts handed out (gateway extracts identify)",
    "destruction-certified": "a recipient's certificate of destruction was recorded (its "
    "SHA-256 and uploader)",
    "audit-anchored": "the signed chain head was written to destinations outside the gateway "
    "(an anchor: a file elsewhere, an email, an RFC 3161 timestamp)",
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


#: The encoding every new event body is written in, named in the body itself. A body
#: that names none was written before the switch, in :func:`legacy_json`: old chains
#: keep verifying, and the first event naming RFC 8785 is where a chain switched.
ENCODING = "rfc8785"


def canonical_json(value: Any) -> str:
    """The one JSON encoding hashes and signatures are computed over: RFC 8785 (JCS),
    which other languages reproduce byte for byte (docs/audit-bundle.md)."""
    # The rfc8785 package is pure Python, five times the C json.dumps; the two agree on
    # a value with no float, no integer beyond 2**53, no non-ASCII name (RFC 8785 sorts
    # by UTF-16 unit) and no surrogate (same escapes), which is every body the gateway
    # writes today. tests/test_audit_encoding.py holds the shortcut to the package.
    if _same_in_both(value):
        return _SORTED_COMPACT(value)
    return rfc8785.dumps(value).decode("utf-8")


_SAFE_INTEGER = 2**53 - 1
# ``json.dumps`` with options builds a new encoder at each call, and a verifier
# re-encodes every event (issue 14: bundle verification within 1.5x a plain check).
_SORTED_COMPACT = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
# In a compact JSON text, a number RFC 8785 may spell otherwise than json.dumps: one with
# a fraction or exponent, of sixteen digits or more (maybe beyond 2**53), or no number.
# Numbers follow ':', ',' or '['; a string spelled like one only costs the exact path.
_UNLIKE_NUMBER = re.compile(r"[:,\[]-?(?:[0-9]+[.eE]|[0-9]{16}|Infinity|NaN)")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _same_in_both(value: Any) -> bool:
    if isinstance(value, str):
        return value.isascii() or _SURROGATE.search(value) is None
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -_SAFE_INTEGER <= value <= _SAFE_INTEGER
    if isinstance(value, dict):
        return all(
            isinstance(name, str) and name.isascii() and _same_in_both(item)
            for name, item in value.items()
        )
    if isinstance(value, (list, tuple)):
        return all(_same_in_both(item) for item in value)
    return False  # floats, and whatever else, go to the package


def legacy_json(value: Any) -> str:
    """The encoding of events written before RFC 8785 (bodies naming no encoding)."""
    return _SORTED_COMPACT(value)


def encoding_problem(text: str, body: Mapping[str, Any]) -> str | None:
    """Why ``text`` is not its parsed ``body`` re-encoded in the encoding it names.

    Each body has one spelling: a verifier in any language re-encodes what it parsed
    and must get the hashed text back, so no parser quirk (a repeated key, a number's
    spelling, an escape) can make two verifiers read one hashed body differently.
    """
    if "encoding" not in body:
        if legacy_json(body) == text:
            return None
        return "its body is not written in the encoding it records (legacy)"
    if body["encoding"] != ENCODING:
        return f"its body names an encoding other than {ENCODING}"
    # The verifiers' hot path, without walking the body: an ASCII text that json.dumps
    # spells back, with no number the two encoders spell apart, is its RFC 8785 spelling
    # (ASCII: every name and string is, so none sorts differently or holds a surrogate).
    if text.isascii() and _UNLIKE_NUMBER.search(text) is None and _SORTED_COMPACT(body) == text:
        return None
    try:
        if canonical_json(body) == text:
            return None
    except ValueError:
        # RFC 8785 reads every number as an IEEE double (1e16 is written 10000000000000000,
        # and 2**53 + 1 has no spelling), so a body with an integer beyond 2**53 is read
        # again that way; NaN and the infinities have no spelling at all.
        try:
            if canonical_json(json.loads(text, parse_int=float)) == text:
                return None
        except ValueError:
            pass
    return f"its body is not written in the encoding it records ({ENCODING})"


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _utc(moment: datetime) -> datetime:
    # SQLite returns naive datetimes; everything the gateway stores is UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def initialise_chain(session: Session) -> None:
    """Create the chain head if absent (part of ``gateway init``)."""
    from gateway.storage.tables import AuditHead

    if session.get(AuditHead, 1) is None:
        session.add(AuditHead(id=1, seq=0, hash=GENESIS_HASH))
        session.flush()


@dataclass(frozen=True)
class Appended:
    """An event just appended: where it sits in the chain and the id that names it."""

    seq: int
    event_id: str
    hash: str


class AgreementRef(Protocol):
    """What an event records of the agreement it is about."""

    @property
    def id(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def content_hash(self) -> str: ...


def lock_head(session: Session) -> None:
    """Hold the chain head's lock until the caller's transaction ends: work that must not
    run twice at once on several servers (recording agreement changes at start) takes
    turns on it, and then sees what the one before it committed."""
    lock, _, _ = _append_statements()
    session.connection().execute(lock)


def append_event(
    session: Session,
    *,
    kind: str,
    actor: Actor,
    details: Mapping[str, Any],
    agreement: AgreementRef | None = None,
    agreement_id: str | None = None,
    agreement_version: str | None = None,
    agreement_hash: str | None = None,
) -> Appended:
    """Append one event in the caller's transaction; it commits with the action.

    The caller's transaction commits the event together with what it records,
    so an action is never acknowledged without its event. ``agreement`` gives its
    id, version and file hash at once; the separate fields are for an agreement
    known only by id.
    """
    if agreement is not None:
        agreement_id = agreement.id
        agreement_version = agreement.version
        agreement_hash = agreement.content_hash
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown audit event kind {kind!r}")
    # Core statements, not the ORM's unit of work: an append is two statements and one
    # row lock, and every action pays for it. The head row is locked first (FOR UPDATE;
    # SQLite's BEGIN IMMEDIATE already holds the write lock), so appends never fork.
    lock_head, insert_event, move_head = _append_statements()
    # The session's own connection and transaction, without the ORM's per-statement work.
    connection = session.connection()
    head = connection.execute(lock_head).first()
    if head is None:
        raise NotInitialised("the audit log is not initialised: run `gateway init` first")
    occurred_at = datetime.now(UTC)
    seq = head.seq + 1
    body = {
        "seq": seq,
        "event_id": str(uuid.uuid4()),
        "occurred_at": occurred_at.isoformat(),
        "kind": kind,
        "encoding": ENCODING,
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
    row = {
        "seq": seq,
        "event_id": body["event_id"],
        "occurred_at": occurred_at,
        "kind": kind,
        "agreement_id": agreement_id,
        "actor_party": actor.party,
        "actor_role": actor.role,
        "body": text,
        "prev_hash": head.hash,
        "hash": digest,
    }
    connection.execute(insert_event, row)
    connection.execute(move_head, {"new_seq": seq, "new_hash": digest})
    return Appended(seq=seq, event_id=body["event_id"], hash=digest)


@cache
def _append_statements() -> tuple[Select[int, str], Insert, Update]:
    """Table-level statements, made once: no ORM bookkeeping per append. An AuditHead
    loaded in the same session (initialise_chain, sign_checkpoint) is read again FOR
    UPDATE before use, never trusted."""
    from sqlalchemy import Table, bindparam, select

    from gateway.storage.tables import AuditEvent, AuditHead

    lock_head = select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1).with_for_update()
    events, heads = AuditEvent.__table__, AuditHead.__table__
    assert isinstance(events, Table) and isinstance(heads, Table)
    move_head = (
        heads.update()
        .where(heads.c.id == 1)
        .values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
    )
    return lock_head, events.insert(), move_head


def event_view(event: AuditEvent) -> dict[str, Any]:
    """The event as reviewers see it: its body plus its hash."""
    view: dict[str, Any] = json.loads(event.body)
    view["hash"] = event.hash
    return view


def query_events(
    *,
    agreement_id: str | None = None,
    within: Collection[str] | None = None,
    kind: str | None = None,
    party: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Select[AuditEvent]:
    """A filtered, ordered selection of events; ``within`` limits it to those agreements'."""
    from sqlalchemy import select

    from gateway.storage.tables import AuditEvent

    statement = select(AuditEvent).order_by(AuditEvent.seq)
    if within is not None:
        statement = statement.where(AuditEvent.agreement_id.in_(sorted(within)))
    if party is not None:
        statement = statement.where(AuditEvent.actor_party == party)
    if agreement_id is not None:
        statement = statement.where(AuditEvent.agreement_id == agreement_id)
    if kind is not None:
        statement = statement.where(AuditEvent.kind == kind)
    if since is not None:
        statement = statement.where(AuditEvent.occurred_at >= since)
    if until is not None:
        statement = statement.where(AuditEvent.occurred_at < until)
    return statement


EXPORT_COLUMNS = (
    "seq",
    "occurred_at",
    "kind",
    "agreement",
    "agreement_version",
    "actor_role",
    "actor_party",
    "credential_id",
    "details",
    "hash",
)


def events_as_text(views: Sequence[Mapping[str, Any]], fmt: str) -> str:
    """Events as JSON Lines (each event's body and hash) or CSV (one row per event,
    details as canonical JSON), for reviewers' own tools."""
    if fmt == "jsonl":
        return "".join(canonical_json(view) + "\n" for view in views)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(EXPORT_COLUMNS)
    for view in views:
        agreement = view.get("agreement") or {}
        actor = view.get("actor") or {}
        writer.writerow(
            [
                view["seq"],
                view["occurred_at"],
                view["kind"],
                agreement.get("id") or "",
                agreement.get("version") or "",
                actor.get("role") or "",
                actor.get("party") or "",
                actor.get("credential_id") or "",
                canonical_json(view.get("details") or {}),
                view["hash"],
            ]
        )
    return buffer.getvalue()


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
    #: Of the key that signed a verified bundle: compare it with the one published.
    public_key_fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "head_hash": self.head_hash,
            "public_key_fingerprint": self.public_key_fingerprint,
            "problems": [{"seq": p.seq, "reason": p.reason} for p in self.problems],
        }


class StoredEvent(Protocol):
    """What verification reads of an event: a table row, or a bundle's line."""

    @property
    def seq(self) -> int: ...
    @property
    def event_id(self) -> str | None: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def kind(self) -> str | None: ...
    @property
    def agreement_id(self) -> str | None: ...
    @property
    def actor_party(self) -> str | None: ...
    @property
    def actor_role(self) -> str | None: ...
    @property
    def body(self) -> str: ...
    @property
    def prev_hash(self) -> str: ...
    @property
    def hash(self) -> str: ...


def _check_event(event: StoredEvent, expected_seq: int, expected_prev: str) -> Iterator[str]:
    if _sha256(event.body) != event.hash:
        yield "content was changed: its hash no longer matches its body"
        return
    try:
        body = json.loads(event.body)
    except ValueError:
        body = None
    if not isinstance(body, dict):  # hashed as it is, but no event
        yield "its body is not an event record"
        return
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
    if (problem := encoding_problem(event.body, body)) is not None:
        yield problem


def _pages(session: Session, statement: Any, seq: Any, size: int = 5000) -> Iterator[Any]:
    """The rows of ``statement`` in ``seq`` order, read ``size`` at a time by key (no
    server-side cursor, which some connections cannot hold open, and bounded memory)."""
    last = 0
    while True:
        page = session.execute(statement.where(seq > last).order_by(seq).limit(size)).all()
        yield from page
        if len(page) < size:
            return
        last = page[-1].seq


def verify_chain(session: Session) -> Verification:
    """Check every stored event and the head; list every problem found."""
    from sqlalchemy import select

    from gateway.storage.tables import AuditEvent, AuditHead

    result = Verification()
    expected_prev = GENESIS_HASH
    expected_seq = 1
    # Plain rows, no ORM objects: a live log may hold millions of events.
    columns = (
        AuditEvent.seq,
        AuditEvent.event_id,
        AuditEvent.occurred_at,
        AuditEvent.kind,
        AuditEvent.agreement_id,
        AuditEvent.actor_party,
        AuditEvent.actor_role,
        AuditEvent.body,
        AuditEvent.prev_hash,
        AuditEvent.hash,
    )
    for event in _pages(session, select(*columns), AuditEvent.seq):
        for reason in _check_event(event, expected_seq, expected_prev):
            result.problems.append(ChainProblem(event.seq, reason))
        result.events_checked += 1
        expected_prev = event.hash
        expected_seq = event.seq + 1
    head = session.execute(select(AuditHead.seq, AuditHead.hash).where(AuditHead.id == 1)).first()
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


# --- signed checkpoints, export and offline verification -------------------------------


class Signer(Protocol):
    """What the audit log needs of a signing key (``gateway.keys.SigningKey``)."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def public_pem(self) -> bytes: ...

    def sign(self, message: bytes) -> bytes: ...


def _checkpoint_message(seq: int, head_hash: str, signed_at: str) -> bytes:
    return canonical_json({"seq": seq, "hash": head_hash, "signed_at": signed_at}).encode()


def sign_checkpoint(session: Session, signer: Signer) -> AuditCheckpoint | None:
    """Sign the current chain head (in the caller's transaction), unless already signed."""
    from sqlalchemy import select

    from gateway.storage.tables import AuditCheckpoint, AuditHead

    head = session.get(AuditHead, 1, with_for_update=True, populate_existing=True)
    if head is None or head.seq == 0:
        return None
    latest = session.scalars(
        select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1)
    ).first()
    if (
        latest is not None
        and (latest.seq, latest.head_hash) == (head.seq, head.hash)
        and latest.public_key_fingerprint == signer.fingerprint
    ):
        return latest
    signed_at = datetime.now(UTC).isoformat()
    checkpoint = AuditCheckpoint(
        seq=head.seq,
        head_hash=head.hash,
        signed_at=signed_at,
        public_key_fingerprint=signer.fingerprint,
        signature=signer.sign(_checkpoint_message(head.seq, head.hash, signed_at)).hex(),
    )
    session.add(checkpoint)
    session.flush()
    return checkpoint


def _checkpoint_view(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    return {
        "seq": checkpoint.seq,
        "hash": checkpoint.head_hash,
        "signed_at": checkpoint.signed_at,
        "public_key_fingerprint": checkpoint.public_key_fingerprint,
        "signature": checkpoint.signature,
    }


BUNDLE_FILES = ("events.jsonl", "checkpoints.json", "public_key.pem", "manifest.json")


def export_bundle(session: Session, out: Path, signer: Signer) -> dict[str, Any]:
    """Write every event, every checkpoint and the public key to the folder ``out``.

    The head is signed first, so the newest checkpoint covers the last exported
    event. Files are written to a temporary folder and renamed into place: a reviewer
    never sees half a bundle.
    """
    from sqlalchemy import select

    from gateway.storage.tables import AuditCheckpoint, AuditEvent

    if out.exists() and any(out.iterdir()):
        raise ConfigurationError(f"{out} exists and is not empty; choose a new folder")
    sign_checkpoint(session, signer)
    session.commit()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    count = 0
    head = GENESIS_HASH
    with (staging / "events.jsonl").open("w", encoding="utf-8") as handle:
        for event in session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).yield_per(1000):
            handle.write(canonical_json({"seq": event.seq, "hash": event.hash, "body": event.body}))
            handle.write("\n")
            count += 1
            head = event.hash
    checkpoints = [
        _checkpoint_view(c)
        for c in session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id))
    ]
    (staging / "checkpoints.json").write_text(json.dumps(checkpoints, indent=1))
    (staging / "public_key.pem").write_bytes(signer.public_pem)
    manifest = {
        "format": "teacher-gateway audit bundle v1",
        "events": count,
        "head_hash": head,
        "public_key_fingerprint": signer.fingerprint,
        "exported_at": datetime.now(UTC).isoformat(),
    }
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
    if out.exists():
        out.rmdir()
    staging.rename(out)
    return manifest


def _check_bundled(
    seq: int, digest: str, text: str, expected_seq: int, expected_prev: str
) -> Iterator[str]:
    """The checks of :func:`_check_event` that an exported event needs: its hash over its
    body, its place, and its link. (A bundle has no columns apart from the body, so
    there is nothing else for the body to disagree with.)"""
    if _sha256(text) != digest:
        yield "content was changed: its hash no longer matches its body"
        return
    try:
        body = json.loads(text)
        written_seq, prev_hash = body.get("seq"), body.get("prev_hash")
    except (ValueError, AttributeError):
        yield "its body is not an event record"
        return
    if written_seq != seq:
        yield f"stored at position {seq} but written as event {written_seq} (reordered)"
    if seq != expected_seq:
        if seq > expected_seq:
            yield f"expected event {expected_seq} here: event(s) before it were deleted"
        else:
            yield "sequence number repeats or goes backwards (inserted or reordered)"
    if prev_hash != expected_prev:
        yield "does not follow the event before it (an event was deleted, inserted or reordered)"
    if (problem := encoding_problem(text, body)) is not None:
        yield problem


def _fingerprint(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _verify_checkpoints(
    result: Verification,
    checkpoints: Sequence[Mapping[str, Any]],
    hashes: Mapping[int, str],
    public_key: Ed25519PublicKey,
) -> None:
    last_seq = max(hashes, default=0)
    signed_up_to = 0
    fingerprint = _fingerprint(public_key)
    for checkpoint in checkpoints:
        seq, head_hash = int(checkpoint["seq"]), str(checkpoint["hash"])
        if checkpoint.get("public_key_fingerprint") != fingerprint:
            result.problems.append(
                ChainProblem(
                    None,
                    f"checkpoint at event {seq}: signed by another key "
                    f"({checkpoint.get('public_key_fingerprint')}); it cannot be "
                    "checked with this public key",
                )
            )
            continue
        message = _checkpoint_message(seq, head_hash, str(checkpoint["signed_at"]))
        try:
            public_key.verify(bytes.fromhex(str(checkpoint["signature"])), message)
        except (InvalidSignature, ValueError):
            result.problems.append(
                ChainProblem(None, f"checkpoint at event {seq}: the signature is not valid")
            )
            continue
        if seq not in hashes:
            result.problems.append(
                ChainProblem(
                    None,
                    f"checkpoint at event {seq}: that event is missing "
                    f"(the log ends at event {last_seq}: it was truncated)",
                )
            )
        elif hashes[seq] != head_hash:
            result.problems.append(
                ChainProblem(seq, "differs from the signed checkpoint (the chain was rewritten)")
            )
        signed_up_to = max(signed_up_to, seq)
    if last_seq > signed_up_to:
        result.problems.append(
            ChainProblem(
                None,
                f"events {signed_up_to + 1} to {last_seq} are not covered by any signed "
                "checkpoint (added after the export was signed)",
            )
        )


@dataclass(frozen=True)
class Anchor:
    """An event count and head hash a reviewer noted earlier (an ``ok:`` line, or an
    earlier bundle's manifest). The log only grows, so a later log must still hold
    that event with that hash: otherwise it was cut back or rewritten since, which
    signatures alone cannot show (the checkpoints may have been removed or re-signed).
    """

    seq: int
    head_hash: str

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """``SEQ:HASH``, as in ``42:9f86d0...``."""
        seq, _, head_hash = text.partition(":")
        if not seq.isdigit() or len(head_hash) != 64 or not _is_hex(head_hash):
            raise SchemaError(
                "an anchor is EVENTS:HEAD_HASH, the count and 64-hex-digit head hash "
                "printed by an earlier verification (for example 42:9f86d081...)"
            )
        return cls(int(seq), head_hash.lower())

    @classmethod
    def of_bundle(cls, path: Path) -> Anchor:
        """The anchor an earlier bundle's manifest states."""
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
            return cls(int(manifest["events"]), str(manifest["head_hash"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise ConfigurationError(f"{path} holds no readable manifest.json") from None

    def check(
        self, hash_at: Callable[[int], str | None], public_key: Ed25519PublicKey | None = None
    ) -> list[ChainProblem]:
        if self.seq == 0:
            return []
        found = hash_at(self.seq)
        if found is None:
            return [
                ChainProblem(
                    None,
                    f"event {self.seq}, the head noted earlier, is missing: the log was cut "
                    "back (truncated or rolled back) since",
                )
            ]
        if found != self.head_hash:
            return [
                ChainProblem(
                    self.seq,
                    "differs from the head hash noted earlier: the log was rewritten since",
                )
            ]
        return []


ANCHOR_FORMAT = "teacher-gateway audit anchor v1"
_ANCHOR_FIELDS = ("seq", "hash", "signed_at", "public_key_fingerprint", "signature")


def anchor_document(checkpoint: AuditCheckpoint) -> dict[str, Any]:
    """The anchor of a signed checkpoint: the document ``gateway audit anchor`` writes
    outside the gateway (docs/audit.md#anchors). Its signature is the checkpoint's, over
    the same message, so any verifier of checkpoints checks it."""
    return {"format": ANCHOR_FORMAT, **_checkpoint_view(checkpoint)}


def anchor_text(document: Mapping[str, Any]) -> str:
    """An anchor file's text: its RFC 8785 JSON and a newline."""
    return canonical_json(dict(document)) + "\n"


def anchor_imprint(document: Mapping[str, Any]) -> bytes:
    """The bytes an RFC 3161 timestamp of an anchor covers: its RFC 8785 text without
    the ``timestamp`` member (which holds the token, and so cannot be inside it)."""
    return canonical_json({k: v for k, v in document.items() if k != "timestamp"}).encode()


@dataclass(frozen=True)
class SignedAnchor:
    """A signed chain head written outside the gateway by ``gateway audit anchor``: a log
    that no longer holds that event with that hash was cut back or rewritten since.
    Unlike an :class:`Anchor` a reviewer noted, it needs no reviewer to have noted
    anything: its Ed25519 signature shows the gateway's key signed that head."""

    name: str
    seq: int
    head_hash: str
    signed_at: str
    public_key_fingerprint: str
    signature: str
    document: Mapping[str, Any]

    @classmethod
    def load(cls, path: Path) -> SignedAnchor:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict) or document.get("format") != ANCHOR_FORMAT:
                raise ValueError
            values = [document[name] for name in _ANCHOR_FIELDS]
            if type(values[0]) is not int or not 1 <= values[0] <= _SAFE_INTEGER:
                raise ValueError
            if not all(isinstance(v, str) for v in values[1:]):
                raise ValueError
        except (OSError, ValueError, KeyError):
            raise SchemaError(
                f"{path} is not an audit anchor: expected the JSON document `gateway audit "
                f'anchor` writes ("format": "{ANCHOR_FORMAT}", seq, hash, signed_at, '
                "public_key_fingerprint, signature)"
            ) from None
        seq, head_hash, signed_at, fingerprint, signature = values
        return cls(str(path), seq, head_hash, signed_at, fingerprint, signature, document)

    def signature_problem(self, public_key: Ed25519PublicKey) -> str | None:
        """Why this anchor was not signed by ``public_key``'s owner, if it was not."""
        if self.public_key_fingerprint != _fingerprint(public_key):
            return (
                f"signed by another key ({self.public_key_fingerprint}), not the one this "
                "log is checked with: it is not an anchor of this log (forged, or another "
                "gateway's)"
            )
        message = _checkpoint_message(self.seq, self.head_hash, self.signed_at)
        try:
            public_key.verify(bytes.fromhex(self.signature), message)
        except (InvalidSignature, ValueError):
            return "the signature is not valid (the anchor was forged or altered)"
        return None

    def check(
        self, hash_at: Callable[[int], str | None], public_key: Ed25519PublicKey | None = None
    ) -> list[ChainProblem]:
        assert public_key is not None, "a signed anchor is checked against a public key"
        if (problem := self.signature_problem(public_key)) is not None:
            return [ChainProblem(None, f"anchor {self.name}: {problem}")]
        found = hash_at(self.seq)
        if found is None:
            return [
                ChainProblem(
                    None,
                    f"anchor {self.name}: event {self.seq}, the head it anchors, is missing: "
                    "the log was cut back (truncated or rolled back) since it was anchored",
                )
            ]
        if found != self.head_hash:
            return [
                ChainProblem(
                    self.seq,
                    f"differs from the head signed in anchor {self.name}: the log was "
                    "rewritten since it was anchored",
                )
            ]
        return []


def parse_anchor(text: str) -> Anchor | SignedAnchor:
    """``--anchor``'s value: an anchor file written by ``gateway audit anchor``, or the
    ``EVENTS:HEAD_HASH`` an earlier verification printed."""
    path = Path(text)
    if path.is_file():
        return SignedAnchor.load(path)
    return Anchor.parse(text)


def _is_hex(text: str) -> bool:
    return all(ch in "0123456789abcdefABCDEF" for ch in text)


def verify_anchor(
    session: Session, anchor: Anchor | SignedAnchor, signer: Signer | None = None
) -> list[ChainProblem]:
    """Check the live log still holds the event and hash of ``anchor`` (and, for a
    signed anchor, that ``signer``'s key signed it)."""
    from sqlalchemy import select

    from gateway.storage.tables import AuditEvent

    public_key: Ed25519PublicKey | None = None
    if signer is not None:
        loaded = serialization.load_pem_public_key(signer.public_pem)
        assert isinstance(loaded, Ed25519PublicKey)
        public_key = loaded
    return anchor.check(
        lambda seq: session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == seq)),
        public_key,
    )


def verify_bundle(path: Path, *, anchors: Sequence[Anchor | SignedAnchor] = ()) -> Verification:
    """Verify an exported bundle offline: no database, only the files and the public key;
    with ``anchors``, also that it still holds what earlier verifications saw."""
    missing = [name for name in BUNDLE_FILES if not (path / name).is_file()]
    if missing:
        raise ConfigurationError(f"{path} is not an audit bundle: missing {', '.join(missing)}")
    result = Verification()
    expected_prev, expected_seq = GENESIS_HASH, 1
    hashes: dict[int, str] = {}
    with (path / "events.jsonl").open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
                seq, digest, text = int(record["seq"]), str(record["hash"]), str(record["body"])
            except (ValueError, KeyError, TypeError):
                result.problems.append(ChainProblem(None, f"line {number} is not an event record"))
                continue
            for reason in _check_bundled(seq, digest, text, expected_seq, expected_prev):
                result.problems.append(ChainProblem(seq, reason))
            hashes[seq] = digest
            result.events_checked += 1
            expected_prev, expected_seq = digest, seq + 1
    result.head_hash = expected_prev
    try:
        public_key = serialization.load_pem_public_key((path / "public_key.pem").read_bytes())
    except ValueError:
        raise ConfigurationError(f"{path / 'public_key.pem'} is not a public key") from None
    if not isinstance(public_key, Ed25519PublicKey):
        raise ConfigurationError(f"{path / 'public_key.pem'} is not an Ed25519 public key")
    try:
        checkpoints = json.loads((path / "checkpoints.json").read_text(encoding="utf-8"))
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        _verify_checkpoints(result, checkpoints, hashes, public_key)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigurationError(
            f"{path}: checkpoints.json or manifest.json is not in the bundle format"
        ) from None
    result.public_key_fingerprint = _fingerprint(public_key)
    if manifest.get("public_key_fingerprint") != result.public_key_fingerprint:
        result.problems.append(
            ChainProblem(None, "the public key is not the one the manifest names")
        )
    if manifest.get("events") != result.events_checked or manifest.get("head_hash") != (
        result.head_hash
    ):
        result.problems.append(
            ChainProblem(None, "the events do not match the manifest's count and head")
        )
    for anchor in anchors:
        result.problems += anchor.check(hashes.get, public_key)
    return result


def verify_checkpoints(session: Session, signer: Signer) -> list[ChainProblem]:
    """Check the stored checkpoints against the live chain (detects a rewritten chain)."""
    from sqlalchemy import select

    from gateway.storage.tables import AuditCheckpoint, AuditEvent

    result = Verification()
    hashes = {
        seq: digest for seq, digest in session.execute(select(AuditEvent.seq, AuditEvent.hash))
    }
    public_key = serialization.load_pem_public_key(signer.public_pem)
    assert isinstance(public_key, Ed25519PublicKey)
    checkpoints = [_checkpoint_view(c) for c in session.scalars(select(AuditCheckpoint))]
    _verify_checkpoints(result, checkpoints, hashes, public_key)
    # On the live log, events after the newest checkpoint are normal (not yet signed).
    return [p for p in result.problems if "not covered by any signed checkpoint" not in p.reason]
