"""Reading a release's rows: the current stored batches, filtered and linked.

Rows come from the column batches of accepted uploads (storage/batches.py). An
upload made under an earlier key version holds pseudonyms that no longer link, so
for datasets with educators only uploads under the current key version are read.
Filters are applied as each batch is decoded, with SQL's semantics (a null, or a
value the column cannot hold, never matches).

Before anything is reserved, :func:`require_uploaded` refuses a query over a dataset
with nothing to read: no accepted upload, or (after ``gateway keys rotate``) none under
the current key version. Whether a party has uploaded is a fact about the partnership
that every party sees in its receipts and the audit log, not about any teacher, so the
refusal does not depend on the data; it keeps budget from being spent on empty tables
(and their suppression from being remembered for later releases).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, bindparam, select
from sqlalchemy.orm import Session

from gateway import keys
from gateway.agreements.models import Agreement
from gateway.errors import GatewayError
from gateway.release.canonical import column_value
from gateway.release.query import FieldRef, Filter, ResolvedQuery
from gateway.storage import versions as data_versions
from gateway.storage.datasets import EDUCATOR_DATASETS, RowBatch, Upload
from gateway.storage.tables import KeyVersion

# Arrow (with storage/batches.py) loads when rows are read: a preview and a stored
# repeat need only the data version, from the stored digests (issue 14). Arrow makes
# the frames (to_pandas); a data version needs no pandas either.
if TYPE_CHECKING:
    import pandas as pd
    import pyarrow as pa


def _needed_columns(resolved: ResolvedQuery) -> dict[str, set[str]]:
    """The columns each dataset's rows need once filtered (filters read their own)."""
    needed: dict[str, set[str]] = {d: set() for d in resolved.query.datasets}
    refs = list(resolved.group_by)
    if resolved.measure_field is not None:
        refs.append(resolved.measure_field)
        spec = resolved.measure_field.spec
        if spec.role == "student_measure" and spec.student_count_column:
            needed[resolved.measure_field.dataset].add(spec.student_count_column)
    if resolved.condition is not None:
        refs.append(resolved.condition[0])
    if resolved.compare_field is not None:
        refs.append(resolved.compare_field)
    for ref in refs:
        needed[ref.dataset].add(ref.column)
    for column in resolved.link_on:
        for columns in needed.values():
            columns.add(column)
    return needed


def bounds_of(item: Filter) -> tuple[Any, Any]:
    assert isinstance(item.value, list) and len(item.value) == 2
    return item.value[0], item.value[1]


def _filter_value(ref: FieldRef, value: Any) -> pa.Scalar:
    """A filter value as an Arrow scalar of its own type: comparing it with the column
    promotes as SQL does (3.5 never equals an integer), rather than truncating it."""
    import pyarrow as pa

    value = column_value(ref.spec, value)
    if isinstance(value, bool) and ref.spec.type != "boolean":
        raise TypeError("a boolean matches only a boolean column")  # Arrow would cast it to 1
    if ref.spec.type == "string" and not isinstance(value, str):
        # 101 never equals the text "101" (as in SQL), whether asked with eq or in.
        raise TypeError("only text matches a text column")
    if ref.spec.type == "date" and isinstance(value, str):
        value = date.fromisoformat(value)
    return pa.scalar(value)


def filter_mask(column: pa.ChunkedArray, ref: FieldRef, item: Filter) -> pa.ChunkedArray:
    """Which rows a filter keeps; a null, or a value the column cannot hold, never
    matches, as in SQL."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    no_match = (pa.ArrowException, OverflowError, TypeError, ValueError)
    nothing = pa.chunked_array([pa.array(np.zeros(len(column), dtype=bool))])
    if item.op == "in":
        assert isinstance(item.value, list)
        values = []
        for value in item.value:
            try:  # only values the column holds exactly (2.0 is 2; 2.5 and "x" are none)
                values.append(_filter_value(ref, value).cast(column.type).as_py())
            except no_match:
                continue
        return pc.is_in(column, value_set=pa.array(values, type=column.type))
    try:
        if item.op == "eq":
            return pc.equal(column, _filter_value(ref, item.value))
        low, high = bounds_of(item)
        return pc.and_(
            pc.greater_equal(column, _filter_value(ref, low)),
            pc.less_equal(column, _filter_value(ref, high)),
        )
    except no_match:
        return nothing


def _period_range(resolved: ResolvedQuery, dataset: str) -> tuple[int, int] | None:
    """The years a dataset's filters allow, when they are whole years, to skip batches."""
    low, high = None, None
    for ref, item in resolved.filters:
        if ref.dataset != dataset or ref.column not in ("school_year", "cohort_year"):
            continue
        values = item.value if item.op != "eq" else [item.value]
        assert isinstance(values, list)
        years = [column_value(ref.spec, v) for v in values]
        whole = all(isinstance(y, int) and not isinstance(y, bool) for y in years)
        # Only years a stored period can hold narrow the read (a 64-bit overflow would
        # fail the query); the filter itself still drops the rest, as SQL would.
        if not years or not whole or not all(abs(y) < 2**31 for y in years):
            continue
        first, last = min(years), max(years)
        low = first if low is None else max(low, first)
        high = last if high is None else min(high, last)
    return None if low is None or high is None else (low, high)


def load_rows(
    connection: Connection, resolved: ResolvedQuery, agreement: Agreement, key_version: int | None
) -> pd.DataFrame:
    """The query's rows, filtered and linked on the pseudonym.

    Rows come from the stored column batches of the accepted uploads; an upload made
    under an earlier key version holds pseudonyms that no longer link, so it is read
    only for datasets without educators.
    """
    from gateway.storage import batches

    frames: list[pd.DataFrame] = []
    for name in resolved.query.datasets:
        schema = resolved.schemas[name]
        columns = sorted(_needed_columns(resolved)[name])
        uploads = _accepted_uploads(connection, agreement, name)
        readable = [
            seq
            for seq, version in uploads
            if schema.educator_id_column is None or version == key_version
        ]
        filters = [(ref, item) for ref, item in resolved.filters if ref.dataset == name]
        filtered = sorted({ref.column for ref, _ in filters} - set(columns))

        def keep(rows: pa.Table, filters: list[tuple[FieldRef, Filter]] = filters) -> pa.Table:
            for ref, item in filters:
                rows = rows.filter(filter_mask(rows.column(ref.column), ref, item))
            return rows

        table = batches.read_rows(
            connection,
            schema.name,
            readable,
            [*columns, *filtered],
            periods=_period_range(resolved, name),
            keep=keep if filters else None,
        ).select([batches.EDUCATOR_REF, *columns])
        frame = table.rename_columns(
            [batches.EDUCATOR_REF, *(f"{name}.{c}" for c in columns)]
        ).to_pandas()
        measured = any(
            ref is not None and ref.dataset == name
            for ref in (resolved.measure_field, resolved.compare_field)
        )
        if resolved.linked and not measured:
            # Only the measured dataset's rows count as rows. Elsewhere a teacher's
            # repeated rows add nothing but would repeat measured rows in the join (two
            # cohorts of one program, say: the students behind a score counted twice),
            # so only one row per teacher and grouping values is kept.
            frame = frame.drop_duplicates(ignore_index=True)
        for column in resolved.link_on:  # a shared name to link on, besides the pseudonym
            frame[f"_link.{column}"] = frame[f"{name}.{column}"]
        frames.append(frame)
    if not resolved.linked:
        return frames[0]
    keys = ["educator_ref", *(f"_link.{c}" for c in resolved.link_on)]
    linked = frames[0]
    for frame in frames[1:]:
        linked = linked.merge(frame, on=keys, how="inner")
    return linked.drop(columns=keys[1:])


def data_version(
    connection: Connection, resolved: ResolvedQuery, agreement: Agreement, key_version: int | None
) -> str:
    """What the query would read now: each dataset's content digest (storage/versions.py),
    a function of the stored rows, not of the uploads that stored them, so uploading
    the same rows again keeps it and a stored release is still a free repeat."""
    versions = {
        name: data_versions.data_version(
            connection, agreement_id=agreement.id, dataset=name, key_version=key_version
        )
        for name in sorted(resolved.query.datasets)
    }
    return json.dumps({"datasets": versions, "key_version": key_version}, sort_keys=True)


def _accepted_uploads(
    connection: Connection, agreement: Agreement, dataset: str
) -> list[tuple[int, int | None]]:
    """The accepted uploads of ``dataset``, in order, each with its key version."""
    uploads = (
        select(Upload.seq, Upload.key_version)
        .where(
            Upload.agreement_id == agreement.id,
            Upload.dataset == dataset,
            Upload.status == "accepted",
        )
        .order_by(Upload.seq)
    )
    return [(seq, version) for seq, version in connection.execute(uploads)]


class NotUploaded(GatewayError):
    """A dataset the query reads has no accepted upload: refused before anything is
    reserved (nothing spent), naming the dataset and the party that provides it."""

    code = "dataset_not_uploaded"
    status = 409
    exit_code = 11


class UploadedUnderOldKey(NotUploaded):
    """A dataset with educators has accepted uploads, but none under the agreement's
    current key version (its key was rotated since): its pseudonyms no longer link."""

    code = "data_under_old_key"


# Built once: every release, preview and stored repeat runs these first, and building a
# SQLAlchemy statement costs more than running it (issue 14, "cheaper requests").
_CURRENT_KEY = (
    select(KeyVersion.version)
    .where(KeyVersion.agreement_id == bindparam("agreement"), KeyVersion.retired_at.is_(None))
    .order_by(KeyVersion.version.desc())
    .limit(1)
)
_ACCEPTED_BATCHES = (
    select(
        Upload.dataset,
        Upload.key_version,
        Upload.schema_name,
        RowBatch.id,
        RowBatch.rows,
        RowBatch.content_digest,
    )
    .outerjoin(RowBatch, RowBatch.upload_seq == Upload.seq)
    .where(
        Upload.agreement_id == bindparam("agreement"),
        Upload.dataset.in_(bindparam("datasets", expanding=True)),
        Upload.status == "accepted",
    )
)


@dataclass(frozen=True)
class Stored:
    """What a query would read now, from two statements in the caller's read: the
    agreement's current key version, and each dataset's accepted uploads with their
    batches (id, rows, content digest; none for an upload of no rows)."""

    key_version: int | None
    uploads: dict[str, list[tuple[int | None, str, tuple[int, int, str | None] | None]]]

    def require_uploaded(self, resolved: ResolvedQuery, agreement: Agreement) -> None:
        """Refuse a query over a dataset with nothing a release could read."""
        missing: list[str] = []
        stale: list[str] = []
        for name in sorted(resolved.query.datasets):
            uploads = self.uploads.get(name, [])
            if not uploads:
                missing.append(name)
            elif resolved.schemas[name].educator_id_column is not None and all(
                version != self.key_version for version, _, _ in uploads
            ):
                stale.append(name)

        def named(names: list[str], joined: str) -> str:
            return f" {joined} ".join(
                f"{name!r} (provided by {agreement.dataset(name).provided_by})" for name in names
            )

        if missing:
            raise NotUploaded(
                f"no accepted upload of dataset {named(missing, 'or')} yet: a release over it "
                "would count nobody; upload it first (nothing was spent)",
                details=[{"dataset": name, "reason": "no accepted upload"} for name in missing],
            )
        if stale:
            raise UploadedUnderOldKey(
                f"dataset {named(stale, 'and')} is stored only under an earlier key version: "
                f"the agreement's key was rotated (now version {self.key_version}), so its "
                "rows no longer link; upload it again (keys/README.md) before asking "
                "(nothing was spent)",
                details=[
                    {"dataset": name, "reason": "stored under an earlier key"} for name in stale
                ],
            )

    def data_version(self, connection: Connection, resolved: ResolvedQuery) -> str:
        """The query's data version, as :func:`data_version` computes it with one
        statement per dataset: the batches a release would read now."""
        versions = {}
        for name in sorted(resolved.query.datasets):
            readable = [
                batch
                for version, schema, batch in self.uploads.get(name, [])
                if batch is not None
                and (
                    schema not in EDUCATOR_DATASETS
                    or (self.key_version is not None and version == self.key_version)
                )
            ]
            versions[name] = data_versions.version_of(connection, readable)
        return json.dumps({"datasets": versions, "key_version": self.key_version}, sort_keys=True)


def stored(session: Session, resolved: ResolvedQuery, agreement: Agreement) -> Stored:
    """What ``resolved`` would read now (see :class:`Stored`), in the caller's read."""
    connection = session.connection()
    key_version = connection.execute(_CURRENT_KEY, {"agreement": agreement.id}).scalar()
    uploads: dict[str, list[tuple[int | None, str, tuple[int, int, str | None] | None]]] = {}
    found = connection.execute(
        _ACCEPTED_BATCHES,
        {"agreement": agreement.id, "datasets": sorted(resolved.query.datasets)},
    )
    for dataset, version, schema, batch_id, count, digest in found:
        batch = (batch_id, count, digest) if batch_id is not None else None
        uploads.setdefault(dataset, []).append((version, schema, batch))
    return Stored(key_version=key_version, uploads=uploads)


def require_uploaded(session: Session, resolved: ResolvedQuery, agreement: Agreement) -> None:
    """Refuse a query over a dataset with nothing a release could read."""
    stored(session, resolved, agreement).require_uploaded(resolved, agreement)


def _key_version(session: Session, agreement: Agreement) -> int | None:
    key = keys.current_key_version(session, agreement.id)
    return key.version if key else None


def read(session: Session, resolved: ResolvedQuery, agreement: Agreement) -> pd.DataFrame:
    """The query's rows under the agreement's current key version."""
    return load_rows(session.connection(), resolved, agreement, _key_version(session, agreement))


def current_version(session: Session, resolved: ResolvedQuery, agreement: Agreement) -> str:
    """The data version the query would read now."""
    return stored(session, resolved, agreement).data_version(session.connection(), resolved)
