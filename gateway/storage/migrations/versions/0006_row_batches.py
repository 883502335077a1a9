"""stored rows as column batches: row_batches replaces the rows_<schema> tables

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 00:10:00

Existing rows are carried over, one upload at a time: each upload's rows of one
school (or cohort) year become one batch, an Arrow IPC stream of the columns the
upload kept (``gateway.storage.batches.decode`` reads any such stream, widening its
types); then the typed tables are dropped. The downgrade recreates them and writes
every batch's rows back. Both directions use only what is frozen in this file, so a
later change to the storable columns cannot change what this migration does.

On PostgreSQL the payload column is stored without TOAST compression (``STORAGE
EXTERNAL``), as on SQLite: a scan of the stored bytes must see every value as itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

import pyarrow as pa
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# The typed tables as revision 0002 created them, frozen here: later changes to the
# storable columns in code must not change what this migration reads or recreates.
OLD_TABLES: dict[str, dict[str, str]] = {
    "evaluations": {
        "school_year": "integer",
        "district_code": "string",
        "school_code": "string",
        "assignment_subject": "string",
        "grade_band": "string",
        "years_experience": "integer",
        "summative_rating": "integer",
        "gender": "string",
        "race_ethnicity": "string",
    },
    "value_added": {
        "school_year": "integer",
        "subject": "string",
        "growth_score": "number",
        "student_count": "integer",
    },
    "observations": {
        "school_year": "integer",
        "observer_role": "string",
        "rubric_domain": "string",
        "score": "integer",
        "observation_date": "date",
    },
    "student_surveys": {
        "school_year": "integer",
        "construct": "string",
        "mean_score": "number",
        "respondent_count": "integer",
    },
    "staffing": {
        "school_year": "integer",
        "district_code": "string",
        "school_code": "string",
        "position": "string",
        "licensure_area": "string",
        "fte": "number",
    },
    "vacancies": {
        "school_year": "integer",
        "school_code": "string",
        "subject": "string",
        "licensure_area": "string",
        "positions_posted": "integer",
        "positions_unfilled": "integer",
    },
    "completers": {
        "program_code": "string",
        "cohort_year": "integer",
        "completion_status": "string",
        "licensure_area": "string",
        "gender": "string",
        "race_ethnicity": "string",
    },
    "candidate_interest": {
        "cohort_year": "integer",
        "intended_subject": "string",
        "licensure_area": "string",
        "candidates": "integer",
    },
}
NO_EDUCATOR = {"vacancies", "candidate_interest"}
PERIOD_COLUMNS = ("school_year", "cohort_year")
SQL_TYPES: dict[str, Any] = {
    "integer": sa.Integer,
    "number": sa.Float,
    "string": sa.String,
    "date": sa.Date,
    "boolean": sa.Boolean,
}
ARROW_TYPES: dict[str, pa.DataType] = {
    "integer": pa.int64(),
    "number": pa.float64(),
    "string": pa.string(),
    "date": pa.date32(),
    "boolean": pa.bool_(),
}
ROWS_PER_BATCH = 100_000


def _encode(arrays: dict[str, pa.Array]) -> bytes:
    batch = pa.RecordBatch.from_pydict(arrays)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return bytes(sink.getvalue().to_pybytes())


def _decode(payload: bytes, columns: dict[str, str]) -> list[dict[str, Any]]:
    """A batch's rows with the frozen columns (those it lacks as nulls)."""
    with pa.ipc.open_stream(pa.py_buffer(payload)) as reader:
        stored = reader.read_all()
    names = ["educator_ref", *columns]
    types = {"educator_ref": pa.int64(), **{n: ARROW_TYPES[k] for n, k in columns.items()}}
    arrays = [
        stored.column(n).cast(types[n])
        if n in stored.column_names
        else pa.nulls(len(stored), types[n])
        for n in names
    ]
    rows: list[dict[str, Any]] = pa.Table.from_arrays(arrays, names=names).to_pylist()
    return rows


def _period_column(columns: dict[str, str]) -> str | None:
    return next((c for c in PERIOD_COLUMNS if c in columns), None)


def _create_row_batches() -> None:
    op.create_table(
        "row_batches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("upload_seq", sa.Integer(), nullable=False),
        sa.Column("period", sa.Integer(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["upload_seq"],
            ["uploads.seq"],
            name=op.f("fk_row_batches_upload_seq_uploads"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_row_batches")),
    )
    with op.batch_alter_table("row_batches", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_row_batches_upload_seq"), ["upload_seq"], unique=False)


def _old_table(schema: str, columns: dict[str, str]) -> sa.Table:
    return sa.Table(
        f"rows_{schema}",
        sa.MetaData(),
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("upload_seq", sa.Integer(), nullable=False),
        sa.Column("educator_ref", sa.Integer(), nullable=schema in NO_EDUCATOR),
        *(sa.Column(name, SQL_TYPES[kind](), nullable=True) for name, kind in columns.items()),
    )


def _pages(
    bind: Any, table: sa.Table, seq: int, period: str | None, year: Any
) -> Iterator[list[Any]]:
    """One upload's rows of one year, by id, ROWS_PER_BATCH at a time (bounded memory)."""
    condition = table.c.upload_seq == seq
    if period is not None:
        column = table.c[period]
        condition = condition & (column.is_(None) if year is None else column == year)
    last = 0
    while True:
        rows = bind.execute(
            sa.select(table)
            .where(condition, table.c.id > last)
            .order_by(table.c.id)
            .limit(ROWS_PER_BATCH)
        ).all()
        if not rows:
            return
        yield list(rows)
        last = rows[-1].id


def _arrays(schema: str, columns: dict[str, str], group: list[Any]) -> dict[str, pa.Array]:
    """A page of rows as the columns the upload kept (a column all null was not kept)."""
    arrays: dict[str, pa.Array] = {}
    if schema not in NO_EDUCATOR:
        arrays["educator_ref"] = pa.array([r.educator_ref for r in group], pa.int64())
    for name, kind in columns.items():
        values = [getattr(r, name) for r in group]
        if all(v is None for v in values):
            continue
        if kind == "date":
            values = [date.fromisoformat(v) if isinstance(v, str) else v for v in values]
        arrays[name] = pa.array(values, ARROW_TYPES[kind])
    return arrays


def upgrade() -> None:
    _create_row_batches()
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("ALTER TABLE row_batches ALTER COLUMN payload SET STORAGE EXTERNAL")
    batches = sa.table(
        "row_batches",
        sa.column("upload_seq", sa.Integer()),
        sa.column("period", sa.Integer()),
        sa.column("rows", sa.Integer()),
        sa.column("payload", sa.LargeBinary()),
    )
    for schema, columns in OLD_TABLES.items():
        table = _old_table(schema, columns)
        period = _period_column(columns)
        if period is not None:
            # Pages of one upload and year, in id order, straight from an index; dropped
            # with the table below.
            op.create_index(
                f"ix_rows_{schema}_copy", f"rows_{schema}", ["upload_seq", period, "id"]
            )
        uploads = bind.scalars(sa.select(table.c.upload_seq).distinct()).all()
        for seq in sorted(uploads):
            years: list[Any] = [None]
            if period is not None:
                years = list(
                    bind.scalars(
                        sa.select(table.c[period]).where(table.c.upload_seq == seq).distinct()
                    )
                )
            for year in years:
                for group in _pages(bind, table, seq, period, year):
                    bind.execute(
                        batches.insert().values(
                            upload_seq=seq,
                            period=0 if year is None else int(year),  # 0: the year was not kept
                            rows=len(group),
                            payload=_encode(_arrays(schema, columns, group)),
                        )
                    )
        with op.batch_alter_table(f"rows_{schema}", schema=None) as batch_op:
            batch_op.drop_index(batch_op.f(f"ix_rows_{schema}_upload_seq"))
        op.drop_table(f"rows_{schema}")


def downgrade() -> None:
    bind = op.get_bind()
    for schema, columns in OLD_TABLES.items():
        op.create_table(
            f"rows_{schema}",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("upload_seq", sa.Integer(), nullable=False),
            sa.Column("educator_ref", sa.Integer(), nullable=schema in NO_EDUCATOR),
            *(sa.Column(name, SQL_TYPES[kind](), nullable=True) for name, kind in columns.items()),
            sa.ForeignKeyConstraint(
                ["upload_seq"],
                ["uploads.seq"],
                name=op.f(f"fk_rows_{schema}_upload_seq_uploads"),
                ondelete="CASCADE",
            ),
            sa.PrimaryKeyConstraint("id", name=op.f(f"pk_rows_{schema}")),
        )
        with op.batch_alter_table(f"rows_{schema}", schema=None) as batch_op:
            batch_op.create_index(
                batch_op.f(f"ix_rows_{schema}_upload_seq"), ["upload_seq"], unique=False
            )
        table = _old_table(schema, columns)
        stored = bind.execute(
            sa.text(
                "SELECT b.id, b.upload_seq FROM row_batches b "
                "JOIN uploads u ON u.seq = b.upload_seq "
                "WHERE u.schema_name = :schema ORDER BY b.upload_seq, b.id"
            ),
            {"schema": schema},
        ).all()
        for batch_id, upload_seq in stored:  # one batch in memory at a time
            payload = bind.scalar(
                sa.text("SELECT payload FROM row_batches WHERE id = :id"), {"id": batch_id}
            )
            rows = _decode(bytes(payload), columns)
            for row in rows:
                row["upload_seq"] = upload_seq
            if rows:
                bind.execute(table.insert(), rows)
    with op.batch_alter_table("row_batches", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_row_batches_upload_seq"))
    op.drop_table("row_batches")
