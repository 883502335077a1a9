"""Credentials: bearer tokens for the parties of an agreement, each with one role.

A token is ``gw_<id>_<secret>``. The id is public (it names the credential in the
audit log and in ``gateway tokens list``); the secret is 32 random bytes, printed
once when the token is made and never stored. The database keeps only
HMAC-SHA-256 of the secret under a key derived from the master key, so a copy of
the database alone can neither check a guessed token nor make one, and
comparisons run in constant time.

Roles (the operator, who runs the CLI on the gateway host, needs no token):

``uploader``
    a party's data office: uploads the datasets its party provides.
``analyst``
    requests releases (and previews) within its party's release allowlist, and
    reads its own party's budget.
``reviewer``
    reads the audit log, its verification and the budgets of the agreements it
    reviews; may cover several agreements, and need not be a party to them.
``approver``
    approves or refuses requests for the record-level extracts its party provides;
    issued to a person (``--person``) the agreement lists among the extract's
    approvers (docs/extracts.md); never a request that person made.

A token of an uploader or analyst covers one party of one agreement and, unless
told otherwise, expires with the agreement. Issuing and revoking are audit events,
written once for each agreement the credential covers.
"""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Protocol

from cryptography.hazmat.primitives.constant_time import bytes_eq
from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from gateway import audit, web_sessions
from gateway.agreements import Agreement, Registry
from gateway.errors import NotFound, PolicyViolation, SchemaError, Unauthenticated
from gateway.keys import MasterKey
from gateway.pseudonym import hkdf_sha256, hmac_sha256
from gateway.storage.tables import AgreementRecord, Credential, CredentialScope

#: Every role a token can carry, with what it may do.
ROLES: Mapping[str, str] = {
    "uploader": "uploads the datasets its party provides under the agreement",
    "analyst": "requests releases within its party's release allowlist; reads its budget",
    "reviewer": "reads the audit log, its verification and budgets of its agreements",
    "approver": "approves or refuses requests for the record-level extracts its party provides",
}

TOKEN_PREFIX = "gw"  # noqa: S105 (a label, not a secret)
#: A person's id, as agreements list people (extract approvers): a slug, never a name.
PERSON_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SECRET_BYTES = 32
_HASH_INFO = b"teacher-gateway/credential-hash/v1"
# Compared against when the id is unknown, so a miss costs the same as a wrong secret.
_NO_SUCH_HASH = "0" * 64


@dataclass(frozen=True)
class Principal:
    """Who a request acts as: one credential, its role, party and agreements."""

    credential_id: str
    role: str
    party: str | None
    agreements: frozenset[str]
    #: The person the credential was issued to (``tokens create --person``), when named:
    #: the agreement's extract approvers are people, and a person never approves an
    #: extract they asked for, whichever of their credentials they use.
    person: str | None = None

    @property
    def actor(self) -> audit.Actor:
        return audit.Actor(role=self.role, party=self.party, credential_id=self.credential_id)

    def covers(self, agreement_id: str) -> bool:
        return agreement_id in self.agreements


@dataclass(frozen=True)
class IssuedCredential:
    """A newly made credential; ``token`` exists only here, never in the database."""

    id: str
    token: str
    role: str
    party: str | None
    agreements: tuple[str, ...]
    expires_at: datetime | None
    person: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "token": self.token,
            "role": self.role,
            "party": self.party,
            "person": self.person,
            "agreements": list(self.agreements),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
        }


@functools.lru_cache(maxsize=4)
def _hash_key(master_key: MasterKey) -> bytes:
    # Derived once per master key, not on every request (the key is already in memory).
    return hkdf_sha256(ikm=master_key.material, salt=None, info=_HASH_INFO, length=32)


def _secret_hash(master_key: MasterKey, secret: str) -> str:
    return hmac_sha256(_hash_key(master_key), secret.encode("utf-8")).hex()


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _end_of(day: date) -> datetime:
    """Valid through ``day``: the credential expires at the next midnight, UTC."""
    return datetime.combine(day + timedelta(days=1), time(0), tzinfo=UTC)


def _check_party(
    agreement: Agreement, role: str, party: str | None, person: str | None = None
) -> None:
    if party is None:
        if role != "reviewer":
            raise SchemaError(f"a {role} token needs --party: the party it acts for")
        return
    agreement.party(party)  # NotFound, naming the agreement's parties
    if role == "uploader" and not any(d.provided_by == party for d in agreement.datasets):
        raise PolicyViolation(
            f"party {party!r} provides no dataset under agreement {agreement.id!r}; "
            "an uploader token would allow nothing"
        )
    if role == "approver":
        if not any(spec.approvers.party == party for spec in agreement.extracts):
            raise PolicyViolation(
                f"party {party!r} approves no extract under agreement {agreement.id!r}; "
                "an approver token would allow nothing"
            )
        if person is None:
            raise SchemaError(
                "an approver token needs --person: the agreement names its extract "
                "approvers as people"
            )
    if role == "analyst":
        allowed = agreement.recipient_fields(party)
        if not (allowed.dimensions or allowed.measures):
            raise PolicyViolation(
                f"party {party!r} receives no releases under agreement {agreement.id!r}; "
                "an analyst token would allow nothing"
            )


def issue(
    session: Session,
    *,
    master_key: MasterKey,
    registry: Registry,
    agreement_ids: Sequence[str],
    role: str,
    party: str | None,
    expires: date | None,
    actor: audit.Actor,
    today: date | None = None,
    person: str | None = None,
) -> IssuedCredential:
    """Make a credential in the caller's transaction; the token is returned only here."""
    if role not in ROLES:
        raise SchemaError(f"unknown role {role!r}; roles: {', '.join(ROLES)}")
    if person is not None and not PERSON_PATTERN.fullmatch(person):
        raise SchemaError(
            "--person is the person's id as the agreement lists its people (lower-case "
            "letters, digits and - . _, up to 64), not a name or an email"
        )
    unique_ids = tuple(dict.fromkeys(agreement_ids))
    if not unique_ids:
        raise SchemaError("a token covers at least one agreement (--agreement)")
    if len(unique_ids) > 1 and role != "reviewer":
        raise SchemaError(f"a {role} token covers one agreement; only reviewers may cover more")
    today = today or _now().date()
    agreements = [registry.agreement(agreement_id) for agreement_id in unique_ids]
    for agreement in agreements:
        record = session.get(AgreementRecord, agreement.id)
        if record is not None and record.status == "terminated":
            raise PolicyViolation(f"agreement {agreement.id!r} is terminated; no new tokens")
        _check_party(agreement, role, party, person)
    if expires is None and role != "reviewer":
        expires = agreements[0].ends  # a party's token ends with its agreement
    if expires is not None and expires < today:
        raise SchemaError(f"the expiry date {expires} has already passed")
    if role != "reviewer" and expires is not None and expires > agreements[0].ends:
        raise SchemaError(
            f"the expiry date {expires} is after the agreement ends ({agreements[0].ends}); "
            "a party's token cannot outlive its agreement"
        )
    credential_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    expires_at = _end_of(expires) if expires is not None else None
    session.add(
        Credential(
            id=credential_id,
            secret_hash=_secret_hash(master_key, secret),
            role=role,
            party=party,
            person=person,
            created_at=_now(),
            expires_at=expires_at,
        )
    )
    for agreement in agreements:
        session.add(CredentialScope(credential_id=credential_id, agreement_id=agreement.id))
    session.flush()
    issued = IssuedCredential(
        id=credential_id,
        token=f"{TOKEN_PREFIX}_{credential_id}_{secret}",
        role=role,
        party=party,
        agreements=unique_ids,
        expires_at=expires_at,
        person=person,
    )
    for agreement in agreements:
        # Each agreement's event names only that agreement: its reviewers see its log.
        details = {
            "id": credential_id,
            "role": role,
            "party": party,
            "person": person,
            "expires_at": issued.to_dict()["expires_at"],
            "agreements_covered": len(agreements),
        }
        audit.append_event(
            session,
            kind="credential-issued",
            actor=actor,
            details=details,
            agreement=agreement,
        )
    return issued


def _scopes(session: Session, credential_ids: Sequence[str]) -> dict[str, list[str]]:
    rows = session.execute(
        select(CredentialScope.credential_id, CredentialScope.agreement_id)
        .where(CredentialScope.credential_id.in_(credential_ids))
        .order_by(CredentialScope.agreement_id)
    )
    scopes: dict[str, list[str]] = {}
    for credential_id, agreement_id in rows:
        scopes.setdefault(credential_id, []).append(agreement_id)
    return scopes


class _Validity(Protocol):
    @property
    def revoked_at(self) -> datetime | None: ...
    @property
    def expires_at(self) -> datetime | None: ...


def _status(credential: _Validity, now: datetime) -> str:
    if credential.revoked_at is not None:
        return "revoked"
    if credential.expires_at is not None and _utc(credential.expires_at) <= now:
        return "expired"
    return "active"


def _view(credential: Credential, agreements: list[str], now: datetime) -> dict[str, Any]:
    def stamp(moment: datetime | None) -> str | None:
        return _utc(moment).isoformat() if moment is not None else None

    return {
        "id": credential.id,
        "role": credential.role,
        "party": credential.party,
        "person": credential.person,
        "agreements": agreements,
        "status": _status(credential, now),
        "created_at": stamp(credential.created_at),
        "expires_at": stamp(credential.expires_at),
        "revoked_at": stamp(credential.revoked_at),
    }


def list_credentials(session: Session, *, agreement_id: str | None = None) -> list[dict[str, Any]]:
    """Every credential (never a secret or its hash), oldest first."""
    statement = select(Credential).order_by(Credential.created_at, Credential.id)
    if agreement_id is not None:
        covered = select(CredentialScope.credential_id).where(
            CredentialScope.agreement_id == agreement_id
        )
        statement = statement.where(Credential.id.in_(covered))
    credentials = list(session.scalars(statement))
    scopes = _scopes(session, [c.id for c in credentials])
    now = _now()
    return [_view(c, scopes.get(c.id, []), now) for c in credentials]


def revoke(
    session: Session, *, registry: Registry, credential_id: str, actor: audit.Actor
) -> dict[str, Any]:
    """Revoke a credential at once, in the caller's transaction; return its new state."""
    credential = session.get(Credential, credential_id, with_for_update=True)
    if credential is None:
        raise NotFound(f"no credential {credential_id!r} (see `gateway tokens list`)")
    if credential.revoked_at is not None:
        raise PolicyViolation(f"credential {credential_id!r} is already revoked")
    credential.revoked_at = _now()
    agreement_ids = _scopes(session, [credential_id]).get(credential_id, [])
    for agreement_id in agreement_ids:
        agreement = registry.agreements.get(agreement_id)
        audit.append_event(
            session,
            kind="credential-revoked",
            actor=actor,
            details={"id": credential_id, "role": credential.role, "party": credential.party},
            agreement=agreement,
            agreement_id=agreement_id,  # when its file is no longer loaded
        )
    session.flush()
    # Its web sessions end in this transaction: a browser signed in with the token is
    # signed out at once, not merely refused at its next click.
    web_sessions.end_sessions_of_credentials(
        session,
        [credential_id],
        reason="credential-revoked",
        actor=actor,
        loaded=registry.agreements,
    )
    return _view(credential, agreement_ids, _now())


def revoke_party_credentials(
    session: Session, *, agreement: Agreement, actor: audit.Actor
) -> list[str]:
    """Revoke every uploader and analyst token of ``agreement`` (at its termination).

    Reviewers' tokens stay: reviewing a terminated agreement's log is their job.
    Returns the ids revoked, each with its ``credential-revoked`` event.
    """
    covered = select(CredentialScope.credential_id).where(
        CredentialScope.agreement_id == agreement.id
    )
    live = session.scalars(
        select(Credential)
        .where(
            Credential.id.in_(covered),
            Credential.role != "reviewer",
            Credential.revoked_at.is_(None),
        )
        .order_by(Credential.id)
        .with_for_update()
    ).all()
    now = _now()
    for credential in live:
        credential.revoked_at = now
        audit.append_event(
            session,
            kind="credential-revoked",
            actor=actor,
            details={
                "id": credential.id,
                "role": credential.role,
                "party": credential.party,
                "reason": "agreement terminated",
            },
            agreement=agreement,
        )
    session.flush()
    web_sessions.end_sessions_of_credentials(
        session,
        [c.id for c in live],
        reason="credential-revoked",
        actor=actor,
        loaded={agreement.id: agreement},
    )
    return [c.id for c in live]


def principal_of(session: Session, credential_id: str) -> Principal:
    """The principal of a credential already proven (a web session signed in with its
    token): :class:`Unauthenticated` once it is revoked, expired or gone, with the
    words and details :func:`authenticate` gives."""
    rows = session.connection().execute(_CREDENTIAL_AND_SCOPES, {"id": credential_id}).all()
    if not rows:
        raise Unauthenticated(
            f"credential {credential_id} no longer exists; ask the operator for a new token",
            details=[{"credential_id": credential_id, "status": "unknown"}],
            credential_id=credential_id,
        )
    return _active_principal(rows)


def parse_token(token: str) -> tuple[str, str] | None:
    """``(id, secret)`` of a well-formed token, else None."""
    prefix, _, rest = token.partition("_")
    credential_id, _, secret = rest.partition("_")
    if prefix != TOKEN_PREFIX or len(credential_id) != 16 or not secret or len(secret) > 128:
        return None
    if any(ch not in "0123456789abcdef" for ch in credential_id):
        return None
    return credential_id, secret


def authenticate(session: Session, master_key: MasterKey, token: str | None) -> Principal:
    """The principal a bearer token stands for; :class:`Unauthenticated` otherwise.

    The message says only which of missing / not valid / expired / revoked applies;
    it never repeats the token.
    """
    if not token:
        raise Unauthenticated("send a bearer token: Authorization: Bearer <token>")
    parsed = parse_token(token)
    credential_id, secret = parsed if parsed is not None else ("", "")
    # One statement for the credential and the agreements it covers, on the session's
    # connection: it runs on every request.
    rows = (
        session.connection().execute(_CREDENTIAL_AND_SCOPES, {"id": credential_id}).all()
        if parsed is not None
        else []
    )
    credential = rows[0] if rows else None
    expected = credential.secret_hash if credential is not None else _NO_SUCH_HASH
    matches = bytes_eq(_secret_hash(master_key, secret).encode("ascii"), expected.encode("ascii"))
    if credential is None or not matches:
        raise Unauthenticated(
            "the bearer token is not valid",
            credential_id=credential.id if credential is not None else None,
        )
    return _active_principal(rows)


def _active_principal(rows: Sequence[Any]) -> Principal:
    """The principal of a credential's rows (one per agreement), if it is active."""
    credential = rows[0]
    status = _status(credential, _now())
    if status != "active":
        raise Unauthenticated(
            f"credential {credential.id} is {status}; ask the operator for a new token",
            details=[{"credential_id": credential.id, "status": status}],
            credential_id=credential.id,
        )
    return Principal(
        credential_id=credential.id,
        role=credential.role,
        party=credential.party,
        agreements=frozenset(row.agreement_id for row in rows if row.agreement_id is not None),
        person=credential.person,
    )


_CREDENTIAL_AND_SCOPES = (
    select(
        Credential.id,
        Credential.secret_hash,
        Credential.role,
        Credential.party,
        Credential.person,
        Credential.expires_at,
        Credential.revoked_at,
        CredentialScope.agreement_id,
    )
    .outerjoin(CredentialScope, CredentialScope.credential_id == Credential.id)
    .where(Credential.id == bindparam("id"))
)
