"""Accepted rows, stored column by column: one Arrow IPC stream per :class:`RowBatch`.

A batch holds the columns an upload kept plus ``educator_ref`` (the stored
educator, never a raw ID), typed as :data:`~gateway.storage.datasets.DATASET_COLUMNS`
says. Text columns are dictionary-encoded (codes repeat on every row) and integers
are stored in the narrowest type that holds the batch's values; reading widens them
back, so readers always see :func:`storage_schema`'s types.

The streams are not compressed, on purpose: the leak and destruction tests search
every stored byte for raw IDs, names and pseudonyms, and compression would hide
them from such a scan instead of keeping them out. For the same reason migration
0006 stores the column ``STORAGE EXTERNAL`` on PostgreSQL (out of line, never
TOAST-compressed).

Writing happens inside the caller's transaction (an upload's, with its receipt and
audit event), and so does deleting: an upload or a termination is still atomic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import Connection, delete, func, insert, select

from gateway.storage.datasets import DATASET_COLUMNS, EDUCATOR_DATASETS, RowBatch, Upload

#: The Arrow type each schema type is read back as.
ARROW_TYPES: Mapping[str, pa.DataType] = {
    "integer": pa.int64(),
    "number": pa.float64(),
    "string": pa.string(),
    "date": pa.date32(),
    "boolean": pa.bool_(),
}

EDUCATOR_REF = "educator_ref"

_NARROW_INTEGERS = (pa.int8(), pa.int16(), pa.int32())
_LIMITS = {t: (-(2 ** (t.bit_width - 1)), 2 ** (t.bit_width - 1) - 1) for t in _NARROW_INTEGERS}


def storage_schema(schema_name: str) -> pa.Schema:
    """Every storable column of a dataset schema, as readers get them."""
    columns = DATASET_COLUMNS[schema_name]
    return pa.schema(
        [
            pa.field(EDUCATOR_REF, pa.int64(), nullable=schema_name not in EDUCATOR_DATASETS),
            *(pa.field(name, ARROW_TYPES[kind]) for name, kind in columns.items()),
        ]
    )


def _compact(array: pa.Array, target: pa.DataType) -> pa.Array:
    """The array in the smallest exact form it can be stored in."""
    if array.type != target:
        array = array.cast(target)  # safe cast: raises rather than lose a value
    if pa.types.is_string(target):
        return pc.dictionary_encode(array)
    if pa.types.is_int64(target) and len(array) and array.null_count < len(array):
        low, high = pc.min_max(array).values()
        for narrow in _NARROW_INTEGERS:
            floor, ceiling = _LIMITS[narrow]
            if floor <= low.as_py() and high.as_py() <= ceiling:
                return array.cast(narrow)
    return array


def encode(schema_name: str, columns: Mapping[str, pa.Array]) -> bytes:
    """One batch's bytes: ``columns`` (storable names, equal lengths) as an IPC stream."""
    schema = storage_schema(schema_name)
    unknown = sorted(set(columns) - set(schema.names))
    if unknown:
        raise ValueError(f"rows_{schema_name} has no column(s) {', '.join(unknown)}")
    names = [name for name in schema.names if name in columns]  # the schema's order
    arrays = [_compact(columns[name], schema.field(name).type) for name in names]
    batch = pa.RecordBatch.from_arrays(arrays, names=names)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def decode(payload: bytes, schema_name: str, columns: Sequence[str] | None = None) -> pa.Table:
    """A batch's rows with ``columns`` (default: all), in the storage schema's types.

    A column the upload did not keep reads as nulls, as an absent value should.
    """
    schema = storage_schema(schema_name)
    wanted = list(schema.names if columns is None else columns)
    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        stored = reader.read_all()
    arrays: list[pa.ChunkedArray | pa.Array] = []
    for name in wanted:
        target = schema.field(name).type
        if name in stored.column_names:
            arrays.append(stored.column(name).cast(target))
        else:
            arrays.append(pa.nulls(stored.num_rows, target))
    return pa.Table.from_arrays(arrays, schema=pa.schema([schema.field(n) for n in wanted]))


def write_batch(
    connection: Connection,
    *,
    upload_seq: int,
    schema_name: str,
    period: int,
    columns: Mapping[str, pa.Array],
) -> None:
    """Store one batch of an upload's rows, all of one period, in the caller's transaction."""
    sizes = {len(array) for array in columns.values()}
    if len(sizes) != 1:
        raise ValueError("a batch's columns must all have the same length")
    connection.execute(
        insert(RowBatch).values(
            upload_seq=upload_seq,
            period=period,
            rows=sizes.pop(),
            payload=encode(schema_name, columns),
        )
    )


def read_rows(
    connection: Connection,
    schema_name: str,
    upload_seqs: Sequence[int],
    columns: Sequence[str],
    *,
    periods: tuple[int, int] | None = None,
    keep: Callable[[pa.Table], pa.Table] | None = None,
) -> pa.Table:
    """The stored rows of these uploads: ``educator_ref`` and ``columns``, in upload order.

    ``periods`` (first and last year) skips the batches of other years unread; ``keep``
    filters each batch as it is decoded, so only the rows kept are held at once.
    """
    wanted = [EDUCATOR_REF, *(c for c in columns if c != EDUCATOR_REF)]
    statement = select(RowBatch.payload).where(RowBatch.upload_seq.in_(list(upload_seqs)))
    if periods is not None:
        statement = statement.where(RowBatch.period.between(*periods))
    tables = []
    for payload in connection.scalars(statement.order_by(RowBatch.upload_seq, RowBatch.id)):
        table = decode(payload, schema_name, wanted)
        tables.append(keep(table) if keep is not None else table)
    if not tables:
        schema = storage_schema(schema_name)
        return pa.schema([schema.field(n) for n in wanted]).empty_table()
    return pa.concat_tables(tables)


def delete_rows(connection: Connection, *, upload_seq: int, period: int | None = None) -> None:
    """Delete an upload's batches (of one period, if given), in the caller's transaction."""
    condition = RowBatch.upload_seq == upload_seq
    if period is not None:
        condition = condition & (RowBatch.period == period)
    connection.execute(delete(RowBatch).where(condition))


def rows_by_schema(connection: Connection, upload_seqs: Any) -> dict[str, int]:
    """How many rows the given uploads (a list or a subquery of seqs) store, per schema."""
    counts = connection.execute(
        select(Upload.schema_name, func.sum(RowBatch.rows))
        .join(Upload, Upload.seq == RowBatch.upload_seq)
        .where(RowBatch.upload_seq.in_(upload_seqs))
        .group_by(Upload.schema_name)
    )
    return {name: int(total) for name, total in counts if total}


__all__ = [
    "ARROW_TYPES",
    "EDUCATOR_REF",
    "decode",
    "delete_rows",
    "encode",
    "read_rows",
    "rows_by_schema",
    "storage_schema",
    "write_batch",
]
