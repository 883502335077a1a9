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
    String,
    Text,
)
from sqlalchemy.orm import Mapped, mapped_column

from gateway.storage.tables import Base


class BudgetPool(Base):
    """An agreement's one privacy budget: its total over the agreement's life and what
    all releases spent; and, when the agreement declares one, its budget per school year
    (what a school year spent is summed from the ledger's entries of that year)."""

    __tablename__ = "budget_pools"

    agreement_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("agreements.id", ondelete="CASCADE"), primary_key=True
    )
    epsilon_total: Mapped[int] = mapped_column(BigInteger)
    delta_total: Mapped[int] = mapped_column(BigInteger)
    epsilon_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    delta_spent: Mapped[int] = mapped_column(BigInteger, default=0)
    #: The budget of one school year; both null: one period, the agreement's whole life.
    period_epsilon_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    period_delta_total: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class PrivacyBudget(Base):
    """One recipient party's spending limit within its agreement's pool, and what its
    own requests spent over the agreement's life. The limit applies to the period in
    force: the whole life, or each school year when the pool has a period budget."""

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
    #: The school year the reservation is charged to (2027 = July 2026 to June 2027,
    #: UTC), whether or not the agreement has a period budget.
    period: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_budget_entries_period", "agreement_id", "period"),)


class Release(Base):
    """A partnership release, with what it was computed from.

    ``party`` is the recipient whose request drew it; every recipient allowed its
    fields receives the same stored body. ``repeat_key`` (unique) is the hash of the
    agreement terms, canonical query and data version: at most one release per key.
    """

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
    repeat_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    #: pending (reserved, being computed), released, or failed.
    status: Mapped[str] = mapped_column(String(16), default="released", server_default="released")

    __table_args__ = (
        Index("ix_releases_repeat_key", "repeat_key", unique=True),
        Index("ix_releases_lookup", "agreement_id", "party", "query_hash"),
        Index("ix_releases_measure", "agreement_id", "party", "measure_signature"),
    )


class SuppressedCell(Base):
    """A cell suppressed in a table: suppressed again whenever the same table is released.

    Kept per agreement (``party`` is empty; rows from before partnership releases name
    the party that received them): which cells were suppressed was decided on noisy
    counts, so remembering it reveals nothing the releases did not.
    """

    __tablename__ = "suppressed_cells"

    agreement_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("agreements.id", ondelete="CASCADE"), primary_key=True
    )
    party: Mapped[str] = mapped_column(String(128), primary_key=True)
    table_signature: Mapped[str] = mapped_column(String(64), primary_key=True)
    group_key: Mapped[str] = mapped_column(String(512), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
