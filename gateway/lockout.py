"""The failed-authentication lockout, shared by every worker of every server.

Failed authentications are counted per client address over a sliding window. The
count lives in the database (``auth_failures``), not in a process: behind several
workers or servers a client that guesses tokens meets the same limit whichever one
answers, and the lockout survives a restart. Past ``limit`` failures within the
window, the client is refused until the oldest of them leaves the window, without
its tokens being checked at all.

Times are the servers' clocks (UTC): servers sharing a database keep them in step
(NTP), as they must for token expiry too. Rows older than the window are deleted
when the client fails again, so the table holds at most the failures in play.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import bindparam, delete, func, select
from sqlalchemy.orm import Session

from gateway.storage.tables import AuthFailure


def _utc(moment: datetime) -> datetime:
    # SQLite gives stored times back without a zone; everything stored is UTC.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


# Built once: it runs on every authenticated request (issue 14, "cheaper requests").
_RECENT = (
    select(AuthFailure.failed_at)
    .where(AuthFailure.client == bindparam("client"), AuthFailure.failed_at > bindparam("since"))
    .order_by(AuthFailure.failed_at.desc())
    .limit(bindparam("limit"))
)


@dataclass(frozen=True)
class FailureLimiter:
    """At most ``limit`` failed authentications per client within ``window_seconds``."""

    limit: int
    window_seconds: float

    @property
    def window(self) -> timedelta:
        return timedelta(seconds=self.window_seconds)

    def retry_after(
        self, session: Session, client: str, *, now: datetime | None = None
    ) -> int | None:
        """Seconds until ``client`` may try again, or None if it is not locked out."""
        now, client = now or datetime.now(UTC), client[:64]
        # On the session's connection: a plain read on every request, no ORM work.
        recent = (
            session.connection()
            .execute(_RECENT, {"client": client, "since": now - self.window, "limit": self.limit})
            .scalars()
            .all()
        )
        if len(recent) < self.limit:
            return None
        # Locked until the oldest of the last ``limit`` failures leaves the window.
        until = _utc(recent[-1]) + self.window
        return max(1, int((until - now).total_seconds()) + 1)

    def record_failure(self, session: Session, client: str, *, now: datetime | None = None) -> bool:
        """Count one failure in the caller's transaction; True when this one reached the
        limit (the lockout starts)."""
        now, client = now or datetime.now(UTC), client[:64]
        since = now - self.window
        session.execute(
            # Every client's failures that left the window: no address is kept longer.
            delete(AuthFailure).where(AuthFailure.failed_at <= since)
        )
        session.add(AuthFailure(client=client, failed_at=now))
        session.flush()
        count = session.scalar(
            select(func.count())
            .select_from(AuthFailure)
            .where(AuthFailure.client == client, AuthFailure.failed_at > since)
        )
        return count == self.limit
