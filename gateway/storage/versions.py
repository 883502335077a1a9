"""Data versions: what a dataset holds now, from its batches' stored digests.

A release records the data version of every dataset it read, and a query asked again
over the same version is answered with the stored release. The version is computed
from the digests :mod:`gateway.storage.batches` stored with each batch (how a batch's
digest is made is described there), so it reads no row and loads no Arrow: a preview
and a stored repeat need it before, or instead of, any rows (issue 14).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from sqlalchemy import ColumnElement, Connection, or_, select

from gateway.storage.datasets import EDUCATOR_DATASETS, RowBatch, Upload

#: A digest is this many 64-bit lanes, each a sum modulo 2**64.
LANES = 2
_VERSION_LABEL = b"gateway data version v1\x00"
_WORD = 2**64


def add_digests(digests: Iterable[str]) -> str:
    """The digest of the rows of several batches together (lane by lane, modulo 2**64)."""
    sums = [0] * LANES
    for digest in digests:
        for lane in range(LANES):
            sums[lane] += int(digest[16 * lane : 16 * (lane + 1)], 16)
    return "".join(f"{total % _WORD:016x}" for total in sums)


def data_version(
    connection: Connection, *, agreement_id: str, dataset: str, key_version: int | None
) -> str:
    """A dataset's data version: 64 hex digits that change exactly when what a release
    of the agreement would read from it now changes.

    It is a function of the rows stored, never of which upload stored them: the batches
    of the dataset's accepted uploads (a replaced year's batches are deleted), for a
    dataset with educators only those of uploads made under ``key_version`` (the
    pseudonyms of other versions do not link; none when it is None), as a release reads
    them. Uploading the same rows again, in any order or format, keeps it; changing,
    adding or removing a row changes it. Only the stored digests are read.
    """
    readable: ColumnElement[bool] = Upload.schema_name.not_in(sorted(EDUCATOR_DATASETS))
    if key_version is not None:
        readable = or_(readable, Upload.key_version == key_version)
    stored = connection.execute(
        select(RowBatch.id, RowBatch.rows, RowBatch.content_digest)
        .join(Upload, Upload.seq == RowBatch.upload_seq)
        .where(
            Upload.agreement_id == agreement_id,
            Upload.dataset == dataset,
            Upload.status == "accepted",
            readable,
        )
    ).all()
    return version_of(connection, [(batch_id, rows, digest) for batch_id, rows, digest in stored])


def version_of(connection: Connection, batches: Iterable[tuple[int, int, str | None]]) -> str:
    """The data version of these stored batches (id, rows, content digest), in any order:
    what :func:`data_version` computes once it has found a dataset's readable batches."""
    digests = []
    rows = 0
    for batch_id, count, digest in batches:
        if digest is None:  # never after migration 0007; computed rather than trusted absent
            from gateway.storage.batches import payload_digest  # Arrow, for this only

            payload = connection.execute(
                select(RowBatch.payload).where(RowBatch.id == batch_id)
            ).scalar_one()
            digest = payload_digest(bytes(payload))
        digests.append(digest)
        rows += count
    material = _VERSION_LABEL + rows.to_bytes(8, "big") + bytes.fromhex(add_digests(digests))
    return hashlib.sha256(material).hexdigest()
