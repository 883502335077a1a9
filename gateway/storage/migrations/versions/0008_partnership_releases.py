"""partnership releases: one budget pool per agreement, one release per query and data

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01 23:30:00

- ``budget_pools``: the agreement's one budget. Each agreement's pool is carried over
  from its recipients' ledgers: its total is the sum of their shares and its spend the
  sum of what they spent, so nothing spent is forgotten. At the next start the total is
  set from the agreement file (logged as ``budget-changed``), and each recipient's row
  becomes its spending limit (the agreement's ``budget_limits``, else the whole pool).
- ``releases.repeat_key`` (unique): one release per agreement, canonical query, data
  version and agreement terms; a concurrent second request finds the first's key
  taken and is answered with its release. ``releases.status``: ``pending`` from the
  reservation until the release is recorded, then ``released`` (or ``failed``).
  Releases made before this revision keep no key: their data version was spelled by
  upload numbers, which the gateway no longer uses.
- ``release_cells`` (the teachers behind every published cell, kept only for the
  exact differencing refusal, which is withdrawn) is dropped: it held teacher sets
  the gateway no longer needs.
- ``suppressed_cells`` remembered before this revision are deleted: they were decided
  on true counts, and suppression memory is now agreement-wide, so keeping them would
  show one recipient what was decided on true data for another.

The downgrade returns to per-party shares: each party keeps what it spent and the
older code gives it an equal share again, so a party that had spent more than its old
share has nothing left, but the agreement's parties together may then spend past the
total by that excess. Downgrade only to recover from a failed upgrade.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "budget_pools",
        sa.Column("agreement_id", sa.String(length=128), nullable=False),
        sa.Column("epsilon_total", sa.BigInteger(), nullable=False),
        sa.Column("delta_total", sa.BigInteger(), nullable=False),
        sa.Column("epsilon_spent", sa.BigInteger(), nullable=False),
        sa.Column("delta_spent", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["agreement_id"],
            ["agreements.id"],
            name=op.f("fk_budget_pools_agreement_id_agreements"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("agreement_id", name=op.f("pk_budget_pools")),
    )
    op.execute(
        "INSERT INTO budget_pools (agreement_id, epsilon_total, delta_total, epsilon_spent, "
        "delta_spent, updated_at) SELECT agreement_id, SUM(epsilon_total), SUM(delta_total), "
        "SUM(epsilon_spent), SUM(delta_spent), MAX(updated_at) FROM privacy_budgets "
        "GROUP BY agreement_id"
    )
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("repeat_key", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("status", sa.String(length=16), nullable=False, server_default="released")
        )
        batch_op.create_index("ix_releases_repeat_key", ["repeat_key"], unique=True)
    with op.batch_alter_table("release_cells", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_release_cells_release_id"))
    op.drop_table("release_cells")
    op.execute("DELETE FROM suppressed_cells")


def downgrade() -> None:
    op.create_table(
        "release_cells",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("release_id", sa.String(length=36), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("teachers", sa.Integer(), nullable=False),
        sa.Column("members", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["release_id"],
            ["releases.release_id"],
            name=op.f("fk_release_cells_release_id_releases"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_release_cells")),
    )
    with op.batch_alter_table("release_cells", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_release_cells_release_id"), ["release_id"], unique=False
        )
    op.execute("DELETE FROM releases WHERE status <> 'released'")
    with op.batch_alter_table("releases", schema=None) as batch_op:
        batch_op.drop_index("ix_releases_repeat_key")
        batch_op.drop_column("status")
        batch_op.drop_column("repeat_key")
    op.drop_table("budget_pools")
