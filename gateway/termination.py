"""Termination: when an agreement ends, its data and derived key material are destroyed.

The sample agreement says every party returns or destroys the other's data when the
agreement ends. Here that is one transaction that deletes the agreement's stored rows,
its pseudonymised educators, its cached releases and its remembered suppressions, and
erases the HKDF salt of every key version, so its pseudonyms can no longer be
recomputed, not even with the master key.
Upload receipts, the budget ledger and the audit log stay: they hold no personal data
and are what reviewers check.

Record-level extracts (docs/extracts.md) are the one thing the gateway cannot destroy
itself once handed out: the receipt lists every extract downloaded under the agreement
(request, extract, recipient, approver, time, the SHA-256 of its rows), so each
recipient can be held to return or destroy it; their certificates of destruction are
recorded against the agreement afterwards (``gateway extracts certify``). Requests not
yet downloaded are withdrawn and their encrypted rows erased here.

Then the bytes really leave: SQLite overwrites deleted content (``secure_delete``) and
is vacuumed with its write-ahead log truncated; PostgreSQL tables are vacuumed. A
destruction receipt is written to the audit log and to a file. Afterwards every upload
or release for the agreement is refused.

Termination happens by operator action (``gateway agreements terminate ID``) or, once
the end date has passed, automatically at start-up and on the next request.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, bindparam, delete, func, select, update
from sqlalchemy.orm import Session

from gateway import audit
from gateway.agreements.models import Agreement
from gateway.credentials import revoke_party_credentials
from gateway.errors import NotFound, PolicyViolation
from gateway.storage.datasets import Educator, RowBatch, Upload
from gateway.storage.releases import Release, SuppressedCell
from gateway.storage.tables import AgreementRecord, KeyVersion


def _count(session: Session, statement: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(statement.subquery())) or 0)


# Built once: every release, preview and upload checks it (issue 14, "cheaper requests").
_STATUS = select(AgreementRecord.status, AgreementRecord.terminated_at).where(
    AgreementRecord.id == bindparam("agreement")
)


def require_active(session: Session, agreement: Agreement, *, refused: str) -> None:
    """Refuse ``refused`` (uploads, releases) for a terminated agreement."""
    record = session.connection().execute(_STATUS, {"agreement": agreement.id}).first()
    if record is not None and record.status == "terminated":
        when = record.terminated_at.date().isoformat() if record.terminated_at else "earlier"
        raise PolicyViolation(
            f"agreement {agreement.id!r} was terminated ({when}) and its data destroyed; "
            f"{refused} are refused"
        )


def is_active(session: Session, agreement_id: str) -> bool:
    record = session.get(AgreementRecord, agreement_id)
    return record is not None and record.status != "terminated"


def terminate(
    session: Session,
    *,
    agreement: Agreement,
    actor: audit.Actor,
    reason: str,
    receipts_dir: Path,
) -> dict[str, Any]:
    """Destroy the agreement's data and key material in the caller's transaction.

    Returns the destruction receipt (also written to ``receipts_dir`` and the audit log).
    The caller commits, then calls :func:`release_bytes` so freed pages are overwritten.
    """
    # The chain head first, as a start recording agreement changes takes it before the
    # agreement's row (context.sync_agreements): the same order, no deadlock.
    audit.lock_head(session)
    record = session.get(AgreementRecord, agreement.id, with_for_update=True)
    if record is None:
        raise NotFound(f"agreement {agreement.id!r} was never loaded")
    if record.status == "terminated":
        raise PolicyViolation(f"agreement {agreement.id!r} is already terminated")
    from gateway.storage import batches  # imported here: Arrow and numpy, for this only

    uploads = select(Upload.seq).where(Upload.agreement_id == agreement.id)
    connection = session.connection()
    destroyed: dict[str, int] = {
        f"rows_{name}": rows
        for name, rows in sorted(batches.rows_by_schema(connection, uploads).items())
    }
    destroyed["row_batches"] = int(
        session.execute(delete(RowBatch).where(RowBatch.upload_seq.in_(uploads))).rowcount  # type: ignore[attr-defined]
    )
    destroyed["releases"] = int(
        session.execute(delete(Release).where(Release.agreement_id == agreement.id)).rowcount  # type: ignore[attr-defined]
    )
    destroyed["suppression_memory"] = int(
        session.execute(
            delete(SuppressedCell).where(SuppressedCell.agreement_id == agreement.id)
        ).rowcount  # type: ignore[attr-defined]
    )
    destroyed["educators"] = int(
        session.execute(delete(Educator).where(Educator.agreement_id == agreement.id)).rowcount  # type: ignore[attr-defined]
    )
    from gateway.extracts.approval import at_termination

    extracts = at_termination(session, agreement=agreement, actor=actor)
    now = datetime.now(UTC)
    key_versions = [
        v.version
        for v in session.scalars(
            select(KeyVersion).where(
                KeyVersion.agreement_id == agreement.id, KeyVersion.salt.is_not(None)
            )
        )
    ]
    session.execute(
        update(KeyVersion)
        .where(KeyVersion.agreement_id == agreement.id)
        .values(salt=None, destroyed_at=now, retired_at=func.coalesce(KeyVersion.retired_at, now))
    )
    record.status = "terminated"
    record.terminated_at = now
    audit.append_event(
        session,
        kind="agreement-terminated",
        actor=actor,
        details={"reason": reason},
        agreement=agreement,
    )
    audit.append_event(
        session,
        kind="key-destroyed",
        actor=actor,
        details={"key_versions": key_versions},
        agreement=agreement,
    )
    # The parties' tokens end with the agreement; reviewers' stay, to review its log.
    revoked = revoke_party_credentials(session, agreement=agreement, actor=actor)
    receipt = {
        "agreement": {"id": agreement.id, "version": agreement.version},
        "terminated_at": now.isoformat(),
        "by": actor.to_dict(),
        "reason": reason,
        "destroyed": destroyed,
        "key_versions_destroyed": key_versions,
        "credentials_revoked": revoked,
        # What left the gateway before the end: the recipients must return or destroy
        # these and certify it (`gateway extracts certify`).
        "extracts_handed_out": extracts["extracts_handed_out"],
        "extracts_withdrawn": extracts["extracts_withdrawn"],
        "kept": "upload receipts, budget ledger, audit log (no personal data) and the "
        "record of extracts handed out (no rows)",
    }
    event = audit.append_event(
        session, kind="data-destroyed", actor=actor, details=receipt, agreement=agreement
    )
    receipt["audit_event"] = event.event_id
    receipts_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = receipts_dir / f"destruction-{agreement.id}-{now.strftime('%Y%m%dT%H%M%SZ')}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(receipt, handle, indent=2)
    receipt["receipt_file"] = str(path)
    return receipt


def release_bytes(engine: Engine) -> None:
    """After the destruction committed: make the database give the freed pages back.

    SQLite already overwrote deleted content (``secure_delete``); VACUUM rebuilds the
    file and the write-ahead log is checkpointed and truncated, so no old page
    survives in either. PostgreSQL's VACUUM makes the dead rows' space reusable.
    """
    # A connection of its own, outside any transaction: VACUUM cannot run inside one.
    connection = engine.raw_connection()
    try:
        if engine.dialect.name == "sqlite":
            cursor = connection.cursor()
            cursor.execute("VACUUM")
            cursor.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            cursor.close()
        else:
            connection.driver_connection.autocommit = True  # type: ignore[union-attr]
            cursor = connection.cursor()
            for table in [
                "row_batches",
                "educators",
                "releases",
                "suppressed_cells",
                "key_versions",
                "extract_requests",
            ]:
                cursor.execute(f"VACUUM {table}")
            cursor.close()
    finally:
        connection.close()


def overdue(agreements: dict[str, Agreement], session: Session, today: date) -> list[Agreement]:
    """Agreements past their end date that are still active."""
    return [a for a in agreements.values() if a.ends < today and is_active(session, a.id)]


__all__ = ["is_active", "overdue", "release_bytes", "require_active", "terminate"]
