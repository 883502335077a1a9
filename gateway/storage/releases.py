"""Tables for the privacy-budget ledger, releases and their cells.

Budgets are an exact ledger: epsilon is stored as an integer number of
10^-12 units and delta of 10^-18 units (``BigInteger``), so sums are exact
on SQLite and PostgreSQL alike and no float rounding can ever let a budget be
overspent.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from gateway.storage.tables import Base


class PrivacyBudget(Base):
    """What one recipient party of one agreement may spend, and has spent."""

    __tablename__ = "privacy_budgets"

    agreement_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("agreements.id", ondelete="CASCADE"), primary_key=True
    )
    party: Mapped[str] = mapped_column(String(128), primary_key=True)
    epsilon_total: Mapped[int] = mapped_column(BigInteger)
    delta_total: Mapped[int] = mapped_column(BigInteger)
    epsilon_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    delta_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class BudgetEntry(Base):
    """One reservation in the ledger. Never deleted, never refunded."""

    __tablename__ = "budget_entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agreement_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("agreements.id", ondelete="CASCADE"), index=True
    )
    party: Mapped[str] = mapped_column(String(128))
    release_id: Mapped[str] = mapped_column(String(36), unique=True)
    epsilon: Mapped[int] = mapped_column(BigInteger)
    delta: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Release(Base):
    """A release as returned to its recipient, with what it was computed from."""

    __tablename__ = "releases"

    release_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    agreement_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("agreements.id", ondelete="CASCADE")
    )
    agreement_hash: Mapped[str] = mapped_column(String(64))
    party: Mapped[str] = mapped_column(String(128))
    query_hash: Mapped[str] = mapped_column(String(64))
    query: Mapped[str] = mapped_column(Text)
    data_versions: Mapped[str] = mapped_column(Text)
    measure_signature: Mapped[str] = mapped_column(String(64))
    epsilon: Mapped[int] = mapped_column(BigInteger)
    delta: Mapped[int] = mapped_column(BigInteger)
    body: Mapped[str] = mapped_column(Text)
    table_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("ix_releases_lookup", "agreement_id", "party", "query_hash"),
        Index("ix_releases_measure", "agreement_id", "party", "measure_signature"),
    )


class ReleaseCell(Base):
    """The teachers behind one published cell, kept to refuse differencing queries."""

    __tablename__ = "release_cells"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    release_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("releases.release_id", ondelete="CASCADE"), index=True
    )
    group_key: Mapped[str] = mapped_column(Text)
    teachers: Mapped[int] = mapped_column(Integer)
    members: Mapped[bytes] = mapped_column(LargeBinary)


class SuppressedCell(Base):
    """A cell suppressed in a table: suppressed again whenever the same table is released."""

    __tablename__ = "suppressed_cells"

    agreement_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("agreements.id", ondelete="CASCADE"), primary_key=True
    )
    party: Mapped[str] = mapped_column(String(128), primary_key=True)
    table_signature: Mapped[str] = mapped_column(String(64), primary_key=True)
    group_key: Mapped[str] = mapped_column(String(512), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
