"""What an agreement has received and released, newest first: the web pages' upload
and release histories.

Read-only. Who may see which rows is the caller's decision (the pages filter by the
signed-in party); this module only reads what it is asked for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.storage import staging
from gateway.storage.datasets import Upload
from gateway.storage.releases import Release

#: Rows shown at most (newest first); the audit log keeps every event.
HISTORY_LIMIT = 200


@dataclass(frozen=True, kw_only=True)
class UploadEntry:
    upload_id: str
    created_at: datetime
    dataset: str
    party: str
    status: str
    file_format: str | None
    rows_read: int
    rows_accepted: int
    rows_rejected: int


@dataclass(frozen=True, kw_only=True)
class ReleaseEntry:
    release_id: str
    created_at: datetime
    #: The recipient whose request drew the release.
    party: str
    #: Every recipient of the stored table (the party itself for an older release).
    recipients: tuple[str, ...]
    status: str
    query: dict[str, Any]
    #: The epsilon charged, in the ledger's units (10^-12).
    epsilon_units: int


def upload_history(
    session: Session, agreement_id: str, *, party: str | None = None
) -> list[UploadEntry]:
    """The agreement's uploads (of ``party`` only, when given), newest first."""
    # An upload still being stored (or abandoned) is not part of the history yet.
    statement = select(Upload).where(
        Upload.agreement_id == agreement_id, Upload.status != staging.PENDING
    )
    if party is not None:
        statement = statement.where(Upload.party == party)
    statement = statement.order_by(Upload.seq.desc()).limit(HISTORY_LIMIT)
    return [
        UploadEntry(
            upload_id=row.upload_id,
            created_at=row.created_at,
            dataset=row.dataset,
            party=row.party,
            status=row.status,
            file_format=row.file_format,
            rows_read=row.rows_read,
            rows_accepted=row.rows_accepted,
            rows_rejected=row.rows_rejected,
        )
        for row in session.scalars(statement)
    ]


def release_history(
    session: Session, agreement_id: str, *, recipient: str | None = None
) -> list[ReleaseEntry]:
    """The agreement's releases (those ``recipient`` receives, when given), newest first."""
    statement = (
        select(Release)
        .where(Release.agreement_id == agreement_id)
        .order_by(Release.created_at.desc(), Release.release_id)
    )
    out: list[ReleaseEntry] = []
    for row in session.scalars(statement):
        body = json.loads(row.body) if row.status == "released" and row.body else {}
        recipients = tuple(body.get("recipients") or [row.party])
        if recipient is not None and recipient not in recipients:
            continue
        out.append(
            ReleaseEntry(
                release_id=row.release_id,
                created_at=row.created_at,
                party=row.party,
                recipients=recipients,
                status=row.status,
                query=json.loads(row.query) if row.query else {},
                epsilon_units=row.epsilon,
            )
        )
        if len(out) >= HISTORY_LIMIT:
            break
    return out
