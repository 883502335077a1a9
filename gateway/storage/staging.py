"""An upload in progress: stored in bounded steps, seen by no release until it is switched on.

A statewide extract is too large for one transaction (on SQLite the write-ahead log
would hold the whole file until a commit that takes minutes). So an upload is an
``uploads`` row in status ``pending``, committed first; each chunk's educators and
row batches are committed in their own transaction; and one last transaction
replaces earlier years, writes the receipt and the audit event, and flips the status
to ``accepted``. Releases and data versions read only accepted uploads, so until
that flip the rows are invisible, and after it they are all there at once.

A refused upload deletes its pending rows. A process killed part-way leaves a
pending upload behind; the next upload of the same agreement deletes it
(:func:`discard_abandoned`), and termination deletes it with the rest.

Uploads of one agreement take turns (:func:`upload_lock`): on PostgreSQL a session
advisory lock, on SQLite a lock on a file beside the database. Both are released by
the operating system or the server if the process dies, so a pending upload whose
agreement's lock can be taken belongs to no live process.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, delete, func, select

from gateway.storage.datasets import Educator, RowBatch, Upload

PENDING = "pending"
ACCEPTED = "accepted"


def _lock_key(agreement_id: str) -> int:
    digest = hashlib.sha256(b"gateway-upload\x00" + agreement_id.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def upload_lock(engine: Engine, agreement_id: str, *, lock_dir: Path) -> Iterator[None]:
    """Hold the agreement's upload lock for the ``with`` block (waiting for it if held).

    Two uploads adding the same new educators in different orders would otherwise
    deadlock on the pseudonym index, two replacing the same year would each miss the
    other's rows, and a pending upload could not be told from an abandoned one.
    """
    if engine.dialect.name == "postgresql":
        key = _lock_key(agreement_id)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql("SELECT pg_advisory_lock(%s)", (key,))
            try:
                yield
            finally:
                connection.exec_driver_sql("SELECT pg_advisory_unlock(%s)", (key,))
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"upload-{_lock_key(agreement_id) & 0xFFFFFFFFFFFF:012x}.lock"
    with path.open("a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def discard(connection: Connection, upload_seq: int) -> None:
    """Delete a pending upload and every row batch it stored (caller's transaction)."""
    connection.execute(delete(RowBatch).where(RowBatch.upload_seq == upload_seq))
    connection.execute(delete(Upload).where(Upload.seq == upload_seq, Upload.status == PENDING))


def educator_mark(connection: Connection, agreement_id: str) -> int:
    """The newest stored educator of the agreement (0 if none), taken under the upload
    lock before an upload stores any: what it adds is above the mark."""
    newest = connection.scalar(
        select(func.max(Educator.id)).where(Educator.agreement_id == agreement_id)
    )
    return int(newest or 0)


def discard_educators_after(connection: Connection, agreement_id: str, mark: int) -> None:
    """Delete the pseudonyms a failed upload stored (those above its :func:`educator_mark`;
    the upload lock keeps any other upload of the agreement from adding some meanwhile).
    Its steps committed them; no accepted upload refers to them."""
    connection.execute(
        delete(Educator).where(Educator.agreement_id == agreement_id, Educator.id > mark)
    )


def discard_abandoned(connection: Connection, agreement_id: str) -> int:
    """Delete the agreement's pending uploads; call holding its :func:`upload_lock`.

    Returns how many there were."""
    pending = connection.scalars(
        select(Upload.seq).where(Upload.agreement_id == agreement_id, Upload.status == PENDING)
    ).all()
    for seq in pending:
        discard(connection, seq)
    return len(pending)
