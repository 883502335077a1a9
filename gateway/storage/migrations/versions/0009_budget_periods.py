"""budget by period: a pool may have a budget per school year within its lifetime total

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 02:30:00

- ``budget_pools.period_epsilon_total`` and ``period_delta_total`` (nullable): the budget
  of one school year when the agreement declares a ``period_budget``; the pool's own
  ``epsilon_total`` and ``delta_total`` are then its lifetime cap. Existing pools get
  null: one period, the agreement's whole life, as before. The next start sets them
  from the agreement (a ``budget-changed`` event when it declares a period budget).
- ``budget_entries.period``: the school year each reservation is charged to (July 1 to
  June 30, UTC, named by the year it ends: 2027 is 2026-27). Existing entries are given
  the school year of their ``created_at``, the moment they were reserved, so an
  agreement that declares a period budget later has its current year's earlier
  spending counted against that year. Indexed with ``agreement_id``: a reservation
  sums its school year's entries under the pool's lock.

The downgrade drops both: nothing spent is lost (the pool keeps its lifetime spend),
but the older code knows no period budget, and an agreement file declaring one no
longer loads under it.
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def _school_year(moment: datetime) -> int:
    # Stored UTC; SQLite gives it back without a zone.
    day = (moment.astimezone(UTC) if moment.tzinfo is not None else moment).date()
    return day.year + 1 if day.month >= 7 else day.year


def upgrade() -> None:
    with op.batch_alter_table("budget_pools", schema=None) as batch_op:
        batch_op.add_column(sa.Column("period_epsilon_total", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("period_delta_total", sa.BigInteger(), nullable=True))
    with op.batch_alter_table("budget_entries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("period", sa.Integer(), nullable=True))
    entries = sa.table(
        "budget_entries",
        sa.column("id", sa.Integer()),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("period", sa.Integer()),
    )
    bind = op.get_bind()
    years = [
        {"entry_id": entry_id, "year": _school_year(created_at)}
        for entry_id, created_at in bind.execute(sa.select(entries.c.id, entries.c.created_at))
    ]
    if years:
        bind.execute(
            sa.update(entries)
            .where(entries.c.id == sa.bindparam("entry_id"))
            .values(period=sa.bindparam("year")),
            years,
        )
    with op.batch_alter_table("budget_entries", schema=None) as batch_op:
        batch_op.alter_column("period", existing_type=sa.Integer(), nullable=False)
        batch_op.create_index("ix_budget_entries_period", ["agreement_id", "period"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("budget_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_budget_entries_period")
        batch_op.drop_column("period")
    with op.batch_alter_table("budget_pools", schema=None) as batch_op:
        batch_op.drop_column("period_delta_total")
        batch_op.drop_column("period_epsilon_total")
