"""Tables for uploads and the rows they store.

An upload's accepted rows are stored column by column: one :class:`RowBatch` per
chunk of the file and school (or cohort) year, holding an Arrow IPC stream of the
columns the agreement keeps (see :mod:`gateway.storage.batches`). The raw educator
ID and the direct identifiers never reach it: each row refers to an
:class:`Educator`, which holds the pseudonym and its key version.

Why columns in one blob rather than one database row per extract row: a release
reads whole columns of a million rows, and an upload writes them, and both were
dominated by building and storing a million tuples; a batch is written and read in
one piece, on SQLite and PostgreSQL alike, inside the upload's transaction, so an
upload is still atomic and a termination still deletes (and overwrites) it.

The storable columns and their types are declared in code (:data:`DATASET_COLUMNS`)
rather than built from policies/ at run time, so what the gateway can store only
changes through a reviewed change; :func:`storage_mismatches` reports any schema
column that has no storage column, and the gateway refuses to start on one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.storage.tables import Base

if TYPE_CHECKING:
    from gateway.agreements.models import DatasetSchema


class Upload(Base):
    """One upload attempt, accepted or refused, with its stored receipt."""

    __tablename__ = "uploads"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    upload_id: Mapped[str] = mapped_column(String(36), unique=True)
    agreement_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("agreements.id", ondelete="CASCADE"), index=True
    )
    dataset: Mapped[str] = mapped_column(String(64))
    schema_name: Mapped[str] = mapped_column(String(64))
    party: Mapped[str] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16))  # accepted | refused
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    key_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    file_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    file_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    rows_read: Mapped[int] = mapped_column(Integer, default=0)
    rows_accepted: Mapped[int] = mapped_column(Integer, default=0)
    rows_rejected: Mapped[int] = mapped_column(Integer, default=0)
    receipt: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_uploads_agreement_dataset", "agreement_id", "dataset"),)


class UploadPeriod(Base):
    """The school (or cohort) years one upload covers, and what replaced them."""

    __tablename__ = "upload_periods"

    upload_seq: Mapped[int] = mapped_column(
        Integer, ForeignKey("uploads.seq", ondelete="CASCADE"), primary_key=True
    )
    period: Mapped[int] = mapped_column(Integer, primary_key=True)
    rows: Mapped[int] = mapped_column(Integer)
    replaced_by_seq: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("uploads.seq", ondelete="SET NULL"), nullable=True
    )


class Educator(Base):
    """A pseudonymised educator of one agreement under one key version."""

    __tablename__ = "educators"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agreement_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("agreements.id", ondelete="CASCADE"), index=True
    )
    key_version: Mapped[int] = mapped_column(Integer)
    pseudonym: Mapped[str] = mapped_column(String(64), unique=True)


#: The storable columns of each dataset schema, with their schema types.
DATASET_COLUMNS: Mapping[str, Mapping[str, str]] = {
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

#: Datasets whose rows are about one educator (they carry an educator reference).
EDUCATOR_DATASETS = frozenset(DATASET_COLUMNS) - {"vacancies", "candidate_interest"}


class RowBatch(Base):
    """Accepted rows of one upload and one period, as an Arrow IPC stream."""

    __tablename__ = "row_batches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    upload_seq: Mapped[int] = mapped_column(
        Integer, ForeignKey("uploads.seq", ondelete="CASCADE"), index=True
    )
    # The school or cohort year of every row in the batch; 0 for a dataset without one.
    # Replacing an upload's year deletes that year's batches, so a batch never spans two.
    period: Mapped[int] = mapped_column(Integer)
    rows: Mapped[int] = mapped_column(Integer)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    # An order-independent digest of the batch's rows (gateway.storage.batches.
    # content_digest), written with the batch; data versions add these up instead of
    # reading rows. Nullable only so migration 0007 could add it without rewriting the
    # table; it filled every batch stored before, and a missing one is computed on read.
    content_digest: Mapped[str | None] = mapped_column(String(32), nullable=True)


def storage_mismatches(schemas: Mapping[str, DatasetSchema]) -> list[str]:
    """Schema columns the database cannot store; empty when policies/ and tables agree."""
    problems: list[str] = []
    for name, schema in schemas.items():
        stored = DATASET_COLUMNS.get(name)
        if stored is None:
            problems.append(f"dataset schema {name!r} has no storage columns")
            continue
        for column, spec in schema.columns.items():
            if spec.role in ("educator_id", "direct_identifier"):
                continue
            if column not in stored:
                problems.append(f"schema {name!r} column {column!r} has no storage column")
            elif stored[column] != spec.type:
                problems.append(
                    f"schema {name!r} column {column!r} is {spec.type} but stored as "
                    f"{stored[column]}"
                )
        if (schema.educator_id_column is not None) != (name in EDUCATOR_DATASETS):
            problems.append(f"schema {name!r} and its table disagree about the educator ID")
    return problems
