"""Sessions of the web pages, kept on the server: the one place that makes, checks and
ends them (HTTP, the cookie and CSRF are :mod:`gateway.web.session`'s).

A session id is 256 random bits, given to the browser once (its cookie) and never
stored: the ``web_sessions`` row is keyed by its SHA-256, so neither the database
nor a log nor an audit event can be replayed as a session. (A plain hash suffices:
an id of 256 random bits cannot be found from its hash by guessing.) Audit events
name a session by a 16-hex prefix of that hash.

Every request resolves its session again (:func:`resolve`), in this order:

1. unknown, or ended (signed out, revoked, replaced...): signed out, with the reason;
2. past its absolute lifetime (``GATEWAY_SESSION_LIFETIME_SECONDS`` after sign-in),
   or idle longer than ``GATEWAY_SESSION_IDLE_SECONDS``: ended now (audited);
3. its principal made again by the resolver of its kind: a token session reads its
   credential (revoked or expired: ended now); an OIDC session's claims go through the
   mapping again (:func:`gateway.oidc.principal_from_claims`; no mapping: ended now).

State lives only in the database, so every worker of every server agrees. The last
request's time is written at most once a minute (a quarter of the idle timeout when
that is shorter), so the idle timeout holds to within that, and a click is a read.
Revoking a token ends its sessions in the revoking transaction
(:func:`end_sessions_of_credentials`); the per-request check would catch it anyway.
"""

from __future__ import annotations

import hashlib
import importlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from gateway import audit
from gateway.errors import ConfigurationError
from gateway.storage.tables import WebSession

if TYPE_CHECKING:
    # Types only: gateway.credentials ends a revoked token's sessions through this module.
    from gateway.context import Gateway
    from gateway.credentials import Principal

#: The kinds of session: how the person signed in.
KINDS = ("token", "oidc")
_ID_BYTES = 32
#: How long an ended or expired row is kept (for the reason shown to a returning browser).
_KEEP_AFTER_END = timedelta(days=1)
_TOUCH_AT_MOST_EVERY = timedelta(minutes=1)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    # SQLite gives stored times back without a zone; everything stored is UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def id_hash(session_id: str) -> str:
    """What the database keeps of a session id: its SHA-256, in hex."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def reference(hashed: str) -> str:
    """How audit events name a session: the first 16 hex digits of its id's hash."""
    return hashed[:16]


def well_formed(session_id: str) -> bool:
    """An id the gateway could have made (43 URL-safe characters): anything else is
    not looked up at all."""
    return len(session_id) == 43 and all(c.isalnum() or c in "-_" for c in session_id)


def duration(seconds: float) -> str:
    """A setting's length in words: "30 minutes", "12 hours", "5 seconds"."""
    whole = int(seconds)
    for unit, size in (("hour", 3600), ("minute", 60)):
        if whole >= size and whole % size == 0:
            count = whole // size
            return f"{count} {unit}{'s' if count != 1 else ''}"
    return f"{whole} second{'s' if whole != 1 else ''}"


class SessionEnded(Exception):
    """The session no longer works: ``reason`` is its stable code, ``message`` the
    sentence the sign-in form shows."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Timeouts:
    """A session's idle timeout and absolute lifetime (the two settings)."""

    idle: timedelta
    lifetime: timedelta

    @classmethod
    def of(cls, gateway: Gateway) -> Timeouts:
        settings = gateway.settings
        return cls(
            idle=timedelta(seconds=settings.session_idle_seconds),
            lifetime=timedelta(seconds=settings.session_lifetime_seconds),
        )

    @property
    def touch_every(self) -> timedelta:
        """How stale ``last_seen_at`` may get before a request writes it again."""
        return min(_TOUCH_AT_MOST_EVERY, self.idle / 4)


def expiry(
    *, last_seen_at: datetime, ends_at: datetime, now: datetime, timeouts: Timeouts
) -> str | None:
    """``expired`` (past the absolute lifetime), ``idle`` (no request for longer than
    the idle timeout), or None while the session may go on. The lifetime wins a tie:
    it is the limit no activity extends."""
    if now >= _utc(ends_at):
        return "expired"
    if now - _utc(last_seen_at) > timeouts.idle:
        return "idle"
    return None


# --- the messages a signed-out browser is shown ---------------------------------------


def message(reason: str, *, credential_id: str | None, timeouts: Timeouts) -> str:
    """The sign-in form's sentence for a session ended with ``reason``."""
    if reason in ("credential-revoked", "credential-expired"):
        status = reason.removeprefix("credential-")
        # The words a bearer token gets from the API (gateway.credentials.authenticate).
        return f"credential {credential_id} is {status}; ask the operator for a new token"
    messages = {
        "signed-out": "this session was signed out; sign in again",
        "replaced": "this browser signed in again since; sign in again",
        "idle": f"your session ended after {duration(timeouts.idle.total_seconds())} "
        "without activity; sign in again",
        "expired": "your session reached its limit of "
        f"{duration(timeouts.lifetime.total_seconds())}; sign in again",
        "mapping-removed": "your account no longer has a role at this gateway; ask the operator",
        "unknown": "your session is not known to the gateway (it may have ended); sign in again",
    }
    return messages.get(reason, "your session has ended; sign in again")


# --- resolvers: a session's principal, made again on every request ---------------------

#: Makes a session's principal again from its row, or raises :class:`SessionEnded`.
Resolver = Callable[["Gateway", Session, WebSession], "Principal"]


def _token_principal(gateway: Gateway, db: Session, row: WebSession) -> Principal:
    from gateway import credentials
    from gateway.errors import Unauthenticated

    try:
        return credentials.principal_of(db, row.credential_id)
    except Unauthenticated as error:
        status = error.details[0]["status"] if error.details else "revoked"
        raise SessionEnded(f"credential-{status}", error.message) from None


def _oidc_principal(gateway: Gateway, db: Session, row: WebSession) -> Principal:
    # The mapping of claims to role, party and agreements is gateway/oidc.py's; it is
    # imported here, when an OIDC session is first resolved, and reads only the claims.
    try:
        mapping = importlib.import_module("gateway.oidc").principal_from_claims
    except (ImportError, AttributeError):
        raise SessionEnded(
            "mapping-removed", "sign-in through the identity provider is not available here"
        ) from None
    try:
        principal: Principal | None = mapping(gateway, dict(row.claims or {}))
    except ConfigurationError:
        # The mapping is gone or unreadable (single sign-on turned off, a broken edit):
        # fail closed, as for a rule removed.
        principal = None
    if principal is None:
        raise SessionEnded(
            "mapping-removed",
            message("mapping-removed", credential_id=None, timeouts=Timeouts.of(gateway)),
        )
    return principal


RESOLVERS: dict[str, Resolver] = {"token": _token_principal, "oidc": _oidc_principal}


# --- making, resolving and ending ------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """A session just made: ``session_id`` goes into the cookie and nowhere else."""

    session_id: str
    id_hash: str
    ends_at: datetime


def start(
    db: Session,
    *,
    loaded: Mapping[str, audit.AgreementRef],
    principal: Principal,
    kind: str,
    timeouts: Timeouts,
    oidc_claims: Mapping[str, Any] | None = None,
    replacing: str | None = None,
    now: datetime | None = None,
) -> Started:
    """Make a session in the caller's transaction, with its ``session-started`` event.

    ``loaded`` are the loaded agreements by id (``registry.agreements``): events are
    tied to those the principal covers. ``replacing``: the id of a session this browser
    held, ended as ``replaced``.
    An OIDC session keeps ``oidc_claims`` (with ``iss`` and ``sub``) for its mapping.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown session kind {kind!r}; kinds: {', '.join(KINDS)}")
    if kind == "oidc" and (not oidc_claims or "iss" not in oidc_claims or "sub" not in oidc_claims):
        raise ValueError("an OIDC session needs its claims, with 'iss' and 'sub'")
    now = now or _now()
    if replacing is not None and well_formed(replacing):
        _end(
            db, id_hash(replacing), reason="replaced", actor=principal.actor, loaded=loaded, now=now
        )
    # Rows a day past their end are of no more use: their browsers are long signed out.
    db.execute(delete(WebSession).where(WebSession.ends_at < now - _KEEP_AFTER_END))
    session_id = secrets.token_urlsafe(_ID_BYTES)
    hashed = id_hash(session_id)
    ends_at = now + timeouts.lifetime
    claims = dict(oidc_claims) if oidc_claims is not None else None
    db.add(
        WebSession(
            id_hash=hashed,
            kind=kind,
            credential_id=principal.credential_id,
            role=principal.role,
            party=principal.party,
            agreements=sorted(principal.agreements),
            issuer=str(claims["iss"]) if claims else None,
            subject=str(claims["sub"]) if claims else None,
            claims=claims,
            created_at=now,
            last_seen_at=now,
            ends_at=ends_at,
        )
    )
    db.flush()
    _record(
        db,
        kind="session-started",
        actor=principal.actor,
        details={
            "session": reference(hashed),
            "kind": kind,
            "ends_at": ends_at.isoformat(),
            "idle_timeout_seconds": int(timeouts.idle.total_seconds()),
        },
        agreements=[loaded[a] for a in sorted(principal.agreements) if a in loaded],
    )
    return Started(session_id=session_id, id_hash=hashed, ends_at=ends_at)


@dataclass(frozen=True)
class Resolved:
    """A live session: who it acts as, and its row's hash (for ending it)."""

    principal: Principal
    kind: str
    id_hash: str


def resolve(gateway: Gateway, session_id: str, *, now: datetime | None = None) -> Resolved:
    """The principal of a live session, or :class:`SessionEnded` with why it is not.

    One read in the common case; a write only to end the session or, at most once a
    minute, to move its ``last_seen_at``.
    """
    now = now or _now()
    timeouts = Timeouts.of(gateway)
    if not well_formed(session_id):
        raise SessionEnded("unknown", message("unknown", credential_id=None, timeouts=timeouts))
    hashed = id_hash(session_id)
    ended: SessionEnded | None = None
    with gateway.reads() as db:
        row = db.get(WebSession, hashed)
        if row is None:
            raise SessionEnded("unknown", message("unknown", credential_id=None, timeouts=timeouts))
        if row.ended_at is not None:
            reason = row.end_reason or "signed-out"
            raise SessionEnded(
                reason, message(reason, credential_id=row.credential_id, timeouts=timeouts)
            )
        late = expiry(
            last_seen_at=row.last_seen_at, ends_at=row.ends_at, now=now, timeouts=timeouts
        )
        principal: Principal | None = None
        if late is not None:
            ended = SessionEnded(late, message(late, credential_id=None, timeouts=timeouts))
        else:
            try:
                principal = RESOLVERS[row.kind](gateway, db, row)
            except SessionEnded as error:
                ended = error
        kind, last_seen_at = row.kind, _utc(row.last_seen_at)
    if ended is not None:
        end(gateway, session_id, reason=ended.reason, now=now)
        raise ended
    assert principal is not None
    if now - last_seen_at >= timeouts.touch_every:
        with gateway.sessions() as db, db.begin():
            db.execute(
                update(WebSession)
                .where(WebSession.id_hash == hashed, WebSession.ended_at.is_(None))
                .values(last_seen_at=now)
            )
    return Resolved(principal=principal, kind=kind, id_hash=hashed)


def end(
    gateway: Gateway,
    session_id: str,
    *,
    reason: str,
    actor: audit.Actor | None = None,
    now: datetime | None = None,
) -> bool:
    """End one session (its own transaction); True if this call ended it. A session
    already ended stays as it was, so two workers ending it at once write one event."""
    if not well_formed(session_id):
        return False
    with gateway.sessions() as db, db.begin():
        return _end(
            db,
            id_hash(session_id),
            reason=reason,
            actor=actor,
            loaded=gateway.registry.agreements,
            now=now or _now(),
        )


def end_sessions_of_credentials(
    db: Session,
    credential_ids: Sequence[str],
    *,
    reason: str,
    actor: audit.Actor,
    loaded: Mapping[str, audit.AgreementRef],
    now: datetime | None = None,
) -> list[str]:
    """End every live token session of these credentials in the caller's transaction
    (a token revoked: its browsers are signed out at once). Returns their references."""
    if not credential_ids:
        return []
    hashes = db.scalars(
        select(WebSession.id_hash)
        .where(
            WebSession.kind == "token",
            WebSession.credential_id.in_(credential_ids),
            WebSession.ended_at.is_(None),
        )
        .order_by(WebSession.id_hash)
    ).all()
    now = now or _now()
    return [
        reference(hashed)
        for hashed in hashes
        if _end(db, hashed, reason=reason, actor=actor, loaded=loaded, now=now)
    ]


def _end(
    db: Session,
    hashed: str,
    *,
    reason: str,
    actor: audit.Actor | None,
    loaded: Mapping[str, audit.AgreementRef],
    now: datetime,
) -> bool:
    # Conditional: only a live row is ended, so a race between workers ends it once.
    ended = db.execute(
        update(WebSession)
        .where(WebSession.id_hash == hashed, WebSession.ended_at.is_(None))
        .values(ended_at=now, end_reason=reason)
        .returning(
            WebSession.kind,
            WebSession.credential_id,
            WebSession.role,
            WebSession.party,
            WebSession.agreements,
        )
    ).first()
    if ended is None:
        return False
    own = audit.Actor(role=ended.role, party=ended.party, credential_id=ended.credential_id)
    _record(
        db,
        kind="session-ended",
        actor=actor or own,
        details={"session": reference(hashed), "kind": ended.kind, "reason": reason},
        agreements=[loaded[a] for a in ended.agreements if a in loaded],
    )
    return True


def _record(
    db: Session,
    *,
    kind: str,
    actor: audit.Actor,
    details: Mapping[str, Any],
    agreements: Sequence[audit.AgreementRef],
) -> None:
    """One event per loaded agreement the session's principal covers (each agreement's
    reviewers see their log), or one tied to none."""
    tied: Sequence[audit.AgreementRef | None] = agreements or [None]
    for agreement in tied:
        audit.append_event(db, kind=kind, actor=actor, details=details, agreement=agreement)
