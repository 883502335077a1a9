"""Extract requests: asked by a recipient, decided by the providing party, downloaded
once; every step an audit event.

Invariants, and why:

- A request builds the extract at once (:func:`gateway.extracts.build_extract`: the
  recipient's pseudonyms, generalisation until k-anonymous and l-diverse, the risk
  figures, the fingerprint) and keeps its generalised rows **encrypted** (AES-GCM, a
  key derived from the master key and a random salt of the request's own), never in the
  clear. The approver is shown a summary made from those rows, and the download
  decrypts the very same rows (their SHA-256 is checked): what was approved is exactly
  what leaves. Rebuilding at download instead could differ (a new upload, a new
  generalisation); storing the rows encrypted and erasing them afterwards cannot.
- Only a credential of the providing party issued to a person the extract lists among
  its approvers decides (``tokens create --person``); never the credential that asked
  (checked first), nor the same person with another credential; each person's approval
  counts once toward ``approvers.required``. Every refused decision is audited.
- The sample rows the approver reads are sealed with the rows, under the same key.
- Only an approved request is downloaded, once (a conditional update: two concurrent
  downloads cannot both win), before its window ends (``GATEWAY_EXTRACT_DOWNLOAD_HOURS``)
  and by its recipient party. Every refused download is an audit event.
- The encrypted rows and their salt are erased at download, refusal, expiry and
  termination: afterwards not even the master key recovers them.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from gateway import audit
from gateway.errors import AccessDenied, NotFound, PolicyViolation, SchemaError
from gateway.keys import MasterKey
from gateway.pseudonym import hkdf_sha256
from gateway.storage.extracts import DestructionCertificate, ExtractRequest

if TYPE_CHECKING:
    from gateway.agreements.models import Agreement, ExtractSpec
    from gateway.context import Gateway
    from gateway.credentials import Principal

_CONTENT_INFO = b"teacher-gateway/extract-content/v1"
_NONCE_BYTES = 12

#: Statuses in which a request still holds its encrypted rows.
HOLDS_ROWS = ("pending", "approved")
STATUSES = ("pending", "approved", "refused", "downloaded", "expired", "withdrawn")


#: Later than any time compared with it (a request without an expiry never expires).
_NEVER = datetime.max.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _stamp(moment: datetime | None) -> str | None:
    utc = _utc(moment)
    return utc.isoformat() if utc is not None else None


# --- the rows, encrypted ----------------------------------------------------------------------


def _content_key(master_key: MasterKey, salt: bytes) -> bytes:
    # One key per request (its own random salt): erasing the salt is crypto-shredding.
    return hkdf_sha256(ikm=master_key.material, salt=salt, info=_CONTENT_INFO, length=32)


def seal(
    master_key: MasterKey,
    request_id: str,
    plaintext: bytes,
    *,
    salt: bytes | None = None,
    part: str = "rows",
) -> tuple[bytes, bytes]:
    """``(salt, nonce + ciphertext)`` of ``plaintext``, bound to the request id and the
    part it is (``rows``, ``sample``); a new salt unless one is given."""
    salt = salt if salt is not None else secrets.token_bytes(32)
    nonce = secrets.token_bytes(_NONCE_BYTES)
    sealed = AESGCM(_content_key(master_key, salt)).encrypt(
        nonce, plaintext, _bound(request_id, part)
    )
    return salt, nonce + sealed


def unseal(
    master_key: MasterKey, request_id: str, salt: bytes, sealed: bytes, *, part: str = "rows"
) -> bytes:
    nonce, body = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
    return AESGCM(_content_key(master_key, salt)).decrypt(nonce, body, _bound(request_id, part))


def _bound(request_id: str, part: str) -> bytes:
    return request_id.encode("ascii") + b"\x00" + part.encode("ascii")


# --- what callers receive ---------------------------------------------------------------------


@dataclass(frozen=True)
class RequestView:
    """One extract request as people see it (never its rows, key or salt)."""

    id: str
    agreement_id: str
    extract: str
    recipient: str
    status: str
    requested_by: str | None
    requested_at: str | None
    decided_by: str | None
    decided_by_party: str | None
    decided_at: str | None
    reason: str | None
    expires_at: str | None
    downloaded_at: str | None
    summary: dict[str, Any]
    requester_person: str | None = None
    approvals: tuple[dict[str, Any], ...] = ()

    def to_dict(self, *, with_sample: bool = True) -> dict[str, Any]:
        summary = dict(self.summary)
        if not with_sample:
            summary.pop("sample", None)
        return {
            "id": self.id,
            "agreement": self.agreement_id,
            "extract": self.extract,
            "recipient": self.recipient,
            "status": self.status,
            "requested_by": self.requested_by,
            "requested_at": self.requested_at,
            "decided_by": self.decided_by,
            "decided_by_party": self.decided_by_party,
            "decided_at": self.decided_at,
            "reason": self.reason,
            "expires_at": self.expires_at,
            "downloaded_at": self.downloaded_at,
            "requester_person": self.requester_person,
            "approvals": list(self.approvals),
            "summary": summary,
        }


def _view(row: ExtractRequest, master_key: MasterKey | None = None) -> RequestView:
    """The request as people see it; with ``master_key``, its sample rows too while the
    request still holds its rows (the sample is sealed with them, and erased with them)."""
    summary = json.loads(row.summary)
    sealed_sample = summary.pop("sample_sealed", None)
    if master_key is not None and sealed_sample and row.content_salt is not None:
        summary["sample"] = json.loads(
            unseal(
                master_key, row.id, row.content_salt, base64.b64decode(sealed_sample),
                part="sample",
            )
        )  # fmt: skip
    return RequestView(
        id=row.id,
        agreement_id=row.agreement_id,
        extract=row.extract_name,
        recipient=row.recipient_party,
        status=row.status,
        requested_by=row.requester_credential_id,
        requested_at=_stamp(row.created_at),
        decided_by=row.decided_by,
        decided_by_party=row.decided_by_party,
        decided_at=_stamp(row.decided_at),
        reason=row.decision_reason,
        expires_at=_stamp(row.expires_at),
        downloaded_at=_stamp(row.downloaded_at),
        summary=summary,
        requester_person=row.requester_person,
        approvals=tuple(json.loads(row.approvals or "[]")),
    )


@dataclass(frozen=True)
class DownloadedExtract:
    """The one download of an approved extract: the file and what it records."""

    file_name: str
    media_type: str
    data: bytes
    request: RequestView
    metadata: dict[str, Any]


# --- who may do what --------------------------------------------------------------------------

#: Roles whose credentials are a party's own people (a reviewer's is not).
PARTY_ROLES = ("approver", "uploader", "analyst")


def _spec(agreement: Agreement, name: str) -> ExtractSpec:
    return agreement.extract(name)  # NotFound, naming the agreement's extracts


def _person(principal: Principal) -> str | None:
    return principal.person


def _end_if_overdue(gateway: Gateway, request_id: str) -> None:
    """Terminate the request's agreement first if its end date has passed (as uploads and
    releases do): its extracts not yet downloaded are then withdrawn, and a decision or
    download on one is refused for that."""
    with gateway.reads() as session:
        row = session.get(ExtractRequest, request_id)
        agreement_id = row.agreement_id if row is not None else None
    agreement = gateway.registry.agreements.get(agreement_id) if agreement_id else None
    if agreement is not None and agreement.ends < gateway.clock().date():
        gateway.terminate_overdue()


def _may_decide(
    spec: ExtractSpec, principal: Principal, requester_person: str | None
) -> str | None:
    """Why ``principal`` may not approve or refuse a request for ``spec``, or None."""
    approvers = spec.approvers
    if principal.party != approvers.party or principal.role not in PARTY_ROLES:
        return (
            f"only people of the providing party ({approvers.party}) approve or refuse "
            f"extract {spec.name!r}"
        )
    person = _person(principal)
    if person is None:
        return (
            "this credential names no person; extract approvers are people the agreement "
            "lists (the operator issues their tokens with --person)"
        )
    if requester_person is not None and person == requester_person:
        return "the person who asked for an extract may not approve or refuse it"
    if not spec.may_approve(person, requester_id=requester_person or ""):
        return f"person {person!r} is not an approver of extract {spec.name!r}"
    return None


def _covering(principal: Principal, agreement_id: str) -> None:
    if not principal.covers(agreement_id):
        raise AccessDenied(f"this credential does not cover agreement {agreement_id!r}")


def _row(session: Session, request_id: str, *, lock: bool = False) -> ExtractRequest:
    row = session.get(ExtractRequest, request_id, with_for_update=lock)
    if row is None:
        raise NotFound(f"no extract request {request_id!r} (see `gateway extracts list`)")
    return row


def _may_see(gateway: Gateway, row: ExtractRequest, principal: Principal | None) -> bool:
    """The operator, reviewers of the agreement, its recipient party, and the people of
    the providing party it names as approvers (the sample is theirs to judge, not every
    credential of that party's)."""
    if principal is None:
        return True
    if not principal.covers(row.agreement_id):
        return False
    if principal.role == "reviewer" or principal.party == row.recipient_party:
        return True
    return _is_approver(gateway, row, principal)


def _is_approver(gateway: Gateway, row: ExtractRequest, principal: Principal) -> bool:
    """Whether ``principal`` is one of the people the extract names as its approvers."""
    agreement = gateway.registry.agreements.get(row.agreement_id)
    if agreement is None:
        return False
    try:
        spec = _spec(agreement, row.extract_name)
    except NotFound:
        return False
    return principal.party == spec.approvers.party and principal.person in spec.approvers.people


def _view_for(gateway: Gateway, row: ExtractRequest, principal: Principal | None) -> RequestView:
    """What ``principal`` may see of a request. Those who judge it (the operator, the
    agreement's reviewers, the listed approvers) see it all, sample included. The
    recipient party sees what its rows are like only once the providing party has
    approved them: before that, the generalisation chosen, the row counts, the risk
    figures and the sample are exact facts about the true data, paid from no budget,
    that a refused request would still have told it. Until then it sees the columns."""
    judges = (
        principal is None or principal.role == "reviewer" or _is_approver(gateway, row, principal)
    )
    view = _view(row, gateway.master_key if judges else None)
    if judges:
        return view
    if row.status in ("approved", "downloaded"):
        shown = {k: v for k, v in view.summary.items() if k != "sample"}
    else:
        shown = {"columns": view.summary.get("columns", [])}
    return dataclasses.replace(view, summary=shown)


# --- the steps --------------------------------------------------------------------------------


def request_extract(
    gateway: Gateway, *, agreement_id: str, extract: str, principal: Principal
) -> RequestView:
    """A recipient's analyst asks for one of the agreement's declared extracts.

    The extract is built and checked now; it waits, encrypted, for the providing party.
    """
    from gateway.extracts import build_extract

    agreement = gateway.agreement(agreement_id)
    _covering(principal, agreement_id)
    gateway.require_active(agreement, refused="extract requests")
    spec = _spec(agreement, extract)
    recipient = principal.party
    if (
        principal.role != "analyst"
        or recipient is None
        or spec not in agreement.extracts_for(recipient)
    ):
        raise AccessDenied(
            f"extract {extract!r} is asked for by an analyst of a party it is declared for, "
            f"not by {_article(principal.role)} {principal.role} of {principal.party!r}"
        )
    request_id = secrets.token_hex(8)
    with gateway.reads() as session:
        built = build_extract(
            session,
            agreement=agreement,
            spec=spec,
            recipient=recipient,
            request_id=request_id,
            master_key=gateway.master_key,
        )
    parquet = _parquet_bytes(built.frame)
    summary = _plain(built.summary())
    summary["rows"] = len(built.frame)
    salt, sealed = seal(gateway.master_key, request_id, parquet)
    # The sample is rows too: sealed under the same key, so it is erased with them.
    sample = json.dumps(summary.pop("sample", [])).encode("utf-8")
    _, sealed_sample = seal(gateway.master_key, request_id, sample, salt=salt, part="sample")
    summary["sample_sealed"] = base64.b64encode(sealed_sample).decode("ascii")
    with gateway.sessions() as session, session.begin():
        row = ExtractRequest(
            id=request_id,
            agreement_id=agreement.id,
            extract_name=extract,
            recipient_party=principal.party,
            requester_credential_id=principal.credential_id,
            requester_role=principal.role,
            requester_person=_person(principal),
            status="pending",
            created_at=gateway.clock(),
            approvals="[]",
            summary=json.dumps(summary, sort_keys=True),
            fingerprint=json.dumps(_plain(built.fingerprint.to_dict()), sort_keys=True),
            content_sha256=hashlib.sha256(parquet).hexdigest(),
            content=sealed,
            content_salt=salt,
        )
        session.add(row)
        session.flush()
        audit.append_event(
            session,
            kind="extract-requested",
            actor=principal.actor,
            details={
                "request_id": request_id,
                "extract": extract,
                "recipient": principal.party,
                # What the approver will see, but the sample rows.
                "summary": {k: v for k, v in summary.items() if k != "sample_sealed"},
                "content_sha256": row.content_sha256,
            },
            agreement=agreement,
        )
        return _view_for(gateway, row, principal)


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def decide(
    gateway: Gateway,
    *,
    request_id: str,
    principal: Principal,
    approve: bool,
    reason: str | None = None,
) -> RequestView:
    """Approve or refuse a pending request, as one of the providing party's approvers.

    A request the agreement wants approved by several people stays pending until that
    many distinct approvers have approved it; one refusal refuses it.
    """
    reason = (reason or "").strip() or None
    if reason is not None and len(reason) > 500:
        raise SchemaError("a refusal's reason is at most 500 characters")
    _end_if_overdue(gateway, request_id)
    with gateway.sessions() as session, session.begin():
        expire_overdue(gateway, session)
        row = _row(session, request_id, lock=True)
        agreement = gateway.agreement(row.agreement_id)
        approvals: list[dict[str, Any]] = json.loads(row.approvals or "[]")
        why = None
        if principal.credential_id == row.requester_credential_id:
            # First: whatever else the credential may do, it never decides its own ask.
            why = "the credential that asked for an extract may not approve or refuse it"
        elif not principal.covers(row.agreement_id):
            why = f"this credential does not cover agreement {row.agreement_id!r}"
        else:
            why = _may_decide(_spec(agreement, row.extract_name), principal, row.requester_person)
        if why is None and any(a.get("person") == _person(principal) for a in approvals):
            why = f"person {_person(principal)!r} already approved this request"
        # Who is deciding first (access_denied), then the request's state
        # (policy_violation); either refusal is audited, as a download's is.
        late = None
        if why is None and row.status != "pending":
            late = f"extract request {row.id} is {row.status}, not pending"
        if why is not None or late is not None:
            audit.append_event(
                session,
                kind="extract-decision-refused",
                actor=principal.actor,
                details={"request_id": row.id, "approve": approve, "reason": why or late},
                agreement=agreement,
            )
            session.commit()
            if why is not None:
                raise AccessDenied(why)
            raise PolicyViolation(late or "")
        now = gateway.clock()
        spec = _spec(agreement, row.extract_name)
        details: dict[str, Any] = {
            "request_id": row.id,
            "extract": row.extract_name,
            "recipient": row.recipient_party,
            "requester": row.requester_credential_id,
            "person": _person(principal),
        }
        row.decided_by = principal.credential_id
        row.decided_by_role = principal.role
        row.decided_by_party = principal.party
        if approve:
            approvals.append(
                {"person": _person(principal), "credential": principal.credential_id,
                 "at": now.isoformat()}
            )  # fmt: skip
            row.approvals = json.dumps(approvals)
            details["approvals"] = len(approvals)
            details["required"] = spec.approvers.required
            if len(approvals) >= spec.approvers.required:
                row.status = "approved"
                row.decided_at = now
                row.expires_at = now + timedelta(hours=gateway.settings.extract_download_hours)
                details["expires_at"] = _stamp(row.expires_at)
            details["status"] = row.status
            kind = "extract-approved"
        else:
            row.status = "refused"
            row.decided_at = now
            row.decision_reason = reason
            _erase(row, now)
            details["reason"] = reason
            kind = "extract-refused"
        audit.append_event(
            session, kind=kind, actor=principal.actor, details=details, agreement=agreement
        )
        return _view_for(gateway, row, principal)


def download_extract(
    gateway: Gateway, *, request_id: str, principal: Principal, file_format: str = "parquet"
) -> DownloadedExtract:
    """The one download of an approved extract, by its recipient party, in its window."""
    from gateway.extracts import files

    if file_format not in files.FORMATS:
        raise SchemaError(f"unknown format {file_format!r}; formats: {', '.join(files.FORMATS)}")
    _end_if_overdue(gateway, request_id)
    with gateway.sessions() as session, session.begin():
        expire_overdue(gateway, session)
        row = _row(session, request_id, lock=True)
        agreement = gateway.agreement(row.agreement_id)
        why = None
        # Who is asking first (403 access_denied), then the request's state (403
        # policy_violation): a stranger learns nothing of its state.
        who = None
        if not principal.covers(row.agreement_id) or principal.party != row.recipient_party:
            who = f"only the recipient ({row.recipient_party}) downloads this extract"
        elif principal.role != "analyst":
            who = f"a {principal.role} credential may not download extracts (an analyst's may)"
        if who is not None:
            why = who
        elif row.status == "downloaded":
            why = "this extract was already downloaded; an approved extract is downloaded once"
        elif row.status == "expired":
            why = "this extract's download window ended; ask for it again"
        elif row.status != "approved":
            why = f"this extract request is {row.status}: only an approved extract is downloaded"
        if why is not None:
            audit.append_event(
                session,
                kind="extract-download-refused",
                actor=principal.actor,
                details={"request_id": row.id, "status": row.status, "reason": why},
                agreement=agreement,
            )
            session.commit()
            if who is not None:
                raise AccessDenied(why)
            raise PolicyViolation(why)
        assert row.content is not None and row.content_salt is not None
        parquet = unseal(gateway.master_key, row.id, row.content_salt, row.content)
        if hashlib.sha256(parquet).hexdigest() != row.content_sha256:
            raise PolicyViolation(f"extract request {row.id}'s stored rows fail their check")
        now = gateway.clock()
        # Once: only the transaction that moves it from approved wins.
        moved = session.execute(
            update(ExtractRequest)
            .where(ExtractRequest.id == row.id, ExtractRequest.status == "approved")
            .values(
                status="downloaded",
                downloaded_at=now,
                downloaded_by=principal.credential_id,
                content=None,
                content_salt=None,
                content_destroyed_at=now,
            )
            .execution_options(synchronize_session="fetch")
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise PolicyViolation("this extract was already downloaded")
        session.refresh(row)
        metadata = files.extract_metadata(row, agreement)
        written = files.write_extract(parquet, metadata, file_format)
        audit.append_event(
            session,
            kind="extract-downloaded",
            actor=principal.actor,
            details={
                "request_id": row.id,
                "extract": row.extract_name,
                "recipient": row.recipient_party,
                "format": file_format,
                "file_sha256": hashlib.sha256(written.data).hexdigest(),
                "content_sha256": row.content_sha256,
                "fingerprint": json.loads(row.fingerprint),
            },
            agreement=agreement,
        )
        return DownloadedExtract(
            file_name=written.file_name,
            media_type=written.media_type,
            data=written.data,
            request=_view(row),
            metadata=metadata,
        )


def _erase(row: ExtractRequest, now: datetime) -> None:
    row.content = None
    row.content_salt = None
    row.content_destroyed_at = now


def expire_overdue(gateway: Gateway, session: Session) -> list[str]:
    """Approved extracts past their window: erase their rows, log ``extract-expired``."""
    now = gateway.clock()
    # Compared here, not in SQL: SQLite keeps times as text, without their zone. Few
    # requests are approved and not yet downloaded at any time.
    approved = session.scalars(
        select(ExtractRequest)
        .where(ExtractRequest.status == "approved")
        .order_by(ExtractRequest.id)
    ).all()
    overdue = [row for row in approved if (_utc(row.expires_at) or _NEVER) <= now]
    if overdue:
        session.scalars(
            select(ExtractRequest)
            .where(ExtractRequest.id.in_([row.id for row in overdue]))
            .with_for_update()
        ).all()
    for row in overdue:
        row.status = "expired"
        _erase(row, now)
        agreement = gateway.registry.agreements.get(row.agreement_id)
        audit.append_event(
            session,
            kind="extract-expired",
            actor=audit.OPERATOR,
            details={
                "request_id": row.id,
                "extract": row.extract_name,
                "recipient": row.recipient_party,
                "expires_at": _stamp(row.expires_at),
            },
            agreement=agreement,
            agreement_id=row.agreement_id,
        )
    session.flush()
    return [row.id for row in overdue]


def list_requests(
    gateway: Gateway,
    *,
    agreement_id: str | None = None,
    principal: Principal | None = None,
    status: str | None = None,
) -> list[RequestView]:
    """Requests the caller may see (all of them for the operator), newest first."""
    if status is not None and status not in STATUSES:
        raise SchemaError(f"unknown status {status!r}; statuses: {', '.join(STATUSES)}")
    if agreement_id is not None:
        gateway.agreement(agreement_id)
        if principal is not None:
            _covering(principal, agreement_id)
    with gateway.sessions() as session, session.begin():
        expire_overdue(gateway, session)
        statement = select(ExtractRequest).order_by(
            ExtractRequest.created_at.desc(), ExtractRequest.id
        )
        if agreement_id is not None:
            statement = statement.where(ExtractRequest.agreement_id == agreement_id)
        if status is not None:
            statement = statement.where(ExtractRequest.status == status)
        return [
            _view_for(gateway, row, principal)
            for row in session.scalars(statement)
            if _may_see(gateway, row, principal)
        ]


def show_request(gateway: Gateway, *, request_id: str, principal: Principal | None) -> RequestView:
    with gateway.sessions() as session, session.begin():
        expire_overdue(gateway, session)
        row = _row(session, request_id)
        if not _may_see(gateway, row, principal):
            # As for an unknown id: a request of another agreement is not confirmed.
            raise NotFound(f"no extract request {request_id!r} (see `gateway extracts list`)")
        return _view_for(gateway, row, principal)


def may_decide(gateway: Gateway, view: RequestView, principal: Principal) -> bool:
    """Whether a page should offer ``principal`` the approve and refuse buttons."""
    if view.status != "pending" or principal.credential_id == view.requested_by:
        return False
    agreement = gateway.registry.agreements.get(view.agreement_id)
    if agreement is None or not principal.covers(view.agreement_id):
        return False
    if any(a.get("person") == _person(principal) for a in view.approvals):
        return False
    return _may_decide(_spec(agreement, view.extract), principal, view.requester_person) is None


# --- termination and certificates ---------------------------------------------------------


def at_termination(
    session: Session, *, agreement: Agreement, actor: audit.Actor
) -> dict[str, list[dict[str, Any]]]:
    """In the termination's transaction: withdraw every request not yet downloaded
    (erasing its rows) and list every extract handed out, for the destruction receipt."""
    now = _now()
    rows = session.scalars(
        select(ExtractRequest)
        .where(ExtractRequest.agreement_id == agreement.id)
        .order_by(ExtractRequest.created_at, ExtractRequest.id)
        .with_for_update()
    ).all()
    withdrawn = []
    for row in rows:
        if row.status in HOLDS_ROWS:
            previous = row.status
            row.status = "withdrawn"
            _erase(row, now)
            withdrawn.append({"request_id": row.id, "extract": row.extract_name})
            audit.append_event(
                session,
                kind="extract-withdrawn",
                actor=actor,
                details={
                    "request_id": row.id,
                    "extract": row.extract_name,
                    "recipient": row.recipient_party,
                    "status": previous,
                },
                agreement=agreement,
            )
    handed_out = [
        {
            "request_id": row.id,
            "extract": row.extract_name,
            "recipient": row.recipient_party,
            "approved_by": row.decided_by,
            "downloaded_at": _stamp(row.downloaded_at),
            "content_sha256": row.content_sha256,
        }
        for row in rows
        if row.status == "downloaded"
    ]
    session.flush()
    return {"extracts_handed_out": handed_out, "extracts_withdrawn": withdrawn}


#: Largest certificate of destruction accepted (a signed letter, not a data file).
MAX_CERTIFICATE_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class CertificateView:
    id: str
    agreement_id: str
    party: str
    uploaded_at: str | None
    uploaded_by: str | None
    uploaded_by_role: str
    file_name: str
    media_type: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "agreement": self.agreement_id,
            "party": self.party,
            "uploaded_at": self.uploaded_at,
            "uploaded_by": self.uploaded_by,
            "uploaded_by_role": self.uploaded_by_role,
            "file_name": self.file_name,
            "media_type": self.media_type,
            "size": self.size,
            "sha256": self.sha256,
        }


def _certificate_view(row: DestructionCertificate) -> CertificateView:
    return CertificateView(
        id=row.id,
        agreement_id=row.agreement_id,
        party=row.party,
        uploaded_at=_stamp(row.uploaded_at),
        uploaded_by=row.uploaded_by,
        uploaded_by_role=row.uploaded_by_role,
        file_name=row.file_name,
        media_type=row.media_type,
        size=row.size,
        sha256=row.sha256,
    )


def record_certificate(
    gateway: Gateway,
    *,
    agreement_id: str,
    party: str,
    file_name: str,
    media_type: str,
    data: bytes,
    actor: audit.Actor,
) -> CertificateView:
    """Record a recipient's signed statement of destruction against the agreement.

    ``actor`` is the recipient party's own credential (while its tokens are valid), or
    the operator on the host recording a statement the party sent (a terminated
    agreement's party tokens are revoked). Its SHA-256 and uploader are audited.
    """
    agreement = gateway.agreement(agreement_id)
    agreement.party(party)  # NotFound, naming the parties
    if actor.role != "operator" and actor.party != party:
        raise AccessDenied(f"a credential of {actor.party!r} may not certify for {party!r}")
    if not data:
        raise SchemaError(f"{file_name}: the certificate file is empty")
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise SchemaError(
            f"{file_name}: a certificate of destruction is at most "
            f"{MAX_CERTIFICATE_BYTES // (1024 * 1024)} MiB"
        )
    name = (file_name.replace("\\", "/").rsplit("/", 1)[-1] or "certificate")[:255]
    digest = hashlib.sha256(data).hexdigest()
    with gateway.sessions() as session, session.begin():
        row = DestructionCertificate(
            id=secrets.token_hex(8),
            agreement_id=agreement.id,
            party=party,
            uploaded_at=gateway.clock(),
            uploaded_by=actor.credential_id,
            uploaded_by_role=actor.role,
            file_name=name,
            media_type=media_type[:128] or "application/octet-stream",
            size=len(data),
            sha256=digest,
            content=data,
        )
        session.add(row)
        session.flush()
        audit.append_event(
            session,
            kind="destruction-certified",
            actor=actor,
            details={
                "certificate_id": row.id,
                "party": party,
                "file_name": name,
                "media_type": row.media_type,
                "size": row.size,
                "sha256": digest,
            },
            agreement=agreement,
        )
        return _certificate_view(row)


def list_certificates(gateway: Gateway, *, agreement_id: str) -> list[CertificateView]:
    gateway.agreement(agreement_id)
    with gateway.reads() as session:
        rows = session.scalars(
            select(DestructionCertificate)
            .where(DestructionCertificate.agreement_id == agreement_id)
            .order_by(DestructionCertificate.uploaded_at, DestructionCertificate.id)
        )
        return [_certificate_view(row) for row in rows]


def certificate_content(gateway: Gateway, *, certificate_id: str) -> tuple[CertificateView, bytes]:
    with gateway.reads() as session:
        row = session.get(DestructionCertificate, certificate_id)
        if row is None:
            raise NotFound(f"no certificate {certificate_id!r}")
        return _certificate_view(row), bytes(row.content)


def handed_out(gateway: Gateway, *, agreement_id: str) -> list[RequestView]:
    """Every extract downloaded under the agreement (what the recipients must destroy)."""
    return [
        view
        for view in list_requests(gateway, agreement_id=agreement_id)
        if view.status == "downloaded"
    ]


# --- identify -----------------------------------------------------------------------------


def identify_file(
    gateway: Gateway, data: bytes, file_name: str, *, actor: audit.Actor = audit.OPERATOR
) -> dict[str, Any]:
    """Which recorded extract a found copy came from: the copy's rows are matched by
    :func:`gateway.extracts.identify` against the fingerprint of every extract ever
    downloaded (its metadata, easily stripped or forged, is only reported beside)."""
    from gateway.extracts import FingerprintRecord, files, identify

    frame, metadata = files.read_extract(data, file_name)
    with gateway.reads() as session:
        rows = {
            row.id: row
            for row in session.scalars(
                select(ExtractRequest)
                .where(ExtractRequest.status == "downloaded")
                .order_by(ExtractRequest.id)
            )
        }
        views = {request_id: _view(row) for request_id, row in rows.items()}
        records = [
            FingerprintRecord.from_dict(json.loads(row.fingerprint)) for row in rows.values()
        ]
    found = identify(frame, records, master_key=gateway.master_key)
    match = None
    tied: list[str] = []
    if found.record is not None:
        match = views[found.record.request_id].to_dict(with_sample=False)
        match.pop("summary", None)
        # Judged by teacher IDs alone, every extract of that recipient under that
        # agreement scores alike (its IDs are stable across them): name them all.
        tied = sorted(rid for rid, score in found.scores.items() if score == found.score)
    said = metadata.get("request_id") if isinstance(metadata, dict) else None
    # Looking for the source of a found copy is itself recorded: who looked, at which
    # file (by its hash: a name is whatever the finder called it) and what was found.
    named = views[found.record.request_id] if found.record is not None else None
    with gateway.sessions() as session, session.begin():
        audit.append_event(
            session,
            kind="extract-identified",
            actor=actor,
            details={
                "file_sha256": hashlib.sha256(data).hexdigest(),
                "rows": len(frame),
                "request_id": named.id if named is not None else None,
                "tied": tied,
                "score": found.score,
                "basis": found.basis,
                "candidates": len(records),
            },
            agreement=gateway.registry.agreements.get(named.agreement_id) if named else None,
        )
    return {
        "file": file_name,
        "rows": len(frame),
        "rows_checked": found.rows_checked,
        "match": match,
        "score": found.score,
        "basis": found.basis,
        "tied": tied,
        "candidates": len(records),
        "metadata_request_id": said,
        "metadata_agrees": None if said is None or match is None else said == match["id"],
    }


# --- helpers ------------------------------------------------------------------------------


def _parquet_bytes(frame: Any) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


def _plain(value: Any) -> Any:
    """JSON-ready: dataclasses, numpy scalars and frames as plain values."""
    return json.loads(json.dumps(value, default=_default))


def _default(value: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a DataFrame
        return value.to_dict(orient="records")
    if hasattr(value, "item"):  # a numpy scalar
        return value.item()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
