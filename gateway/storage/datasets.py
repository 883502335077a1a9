"""Tables for uploads and the rows they store.

Each dataset schema of SPEC section 6 has a typed table ``rows_<schema>``
holding every column that may be stored, except the raw educator ID and the
direct identifiers, which never reach the database. The educator is a
reference to :class:`Educator`, which holds the pseudonym and its key version.
Which columns an agreement actually keeps is decided at upload time by its
allowlist: the others stay NULL.

The column lists below are declared in code (and migrated by Alembic) rather
than built from policies/ at run time, so the database schema only changes
through a reviewed migration; :func:`storage_mismatches` reports any schema
column that has no storage column, and the gateway refuses to start on one.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import TypeEngine

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


_TYPES: Mapping[str, type[TypeEngine[Any]]] = {
    "integer": Integer,
    "number": Float,
    "string": String,
    "date": Date,
    "boolean": Boolean,
}

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


def _build_table(schema_name: str, columns: Mapping[str, str]) -> Table:
    table_name = f"rows_{schema_name}"
    return Table(
        table_name,
        Base.metadata,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column(
            "upload_seq",
            Integer,
            ForeignKey("uploads.seq", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        # No index and no foreign key on purpose: each would roughly double the
        # cost of storing a million-row upload, releases join in memory, and
        # educators are only ever deleted after the rows of their agreement.
        Column("educator_ref", Integer, nullable=schema_name not in EDUCATOR_DATASETS),
        *(Column(name, _TYPES[kind](), nullable=True) for name, kind in columns.items()),
    )


DATASET_TABLES: Mapping[str, Table] = {
    name: _build_table(name, columns) for name, columns in DATASET_COLUMNS.items()
}


def storage_mismatches(schemas: Mapping[str, DatasetSchema]) -> list[str]:
    """Schema columns the database cannot store; empty when policies/ and tables agree."""
    problems: list[str] = []
    for name, schema in schemas.items():
        stored = DATASET_COLUMNS.get(name)
        if stored is None:
            problems.append(f"dataset schema {name!r} has no storage table (rows_{name})")
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
