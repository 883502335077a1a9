"""shared lockout: failed authentications kept in the database

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 05:10:00

- ``auth_failures``: one row per failed authentication (client address, time), so the
  lockout after ``GATEWAY_AUTH_FAILURE_LIMIT`` failures holds across every worker and
  server sharing the database, where it used to count in each process's memory.
  Indexed on (client, failed_at): each request reads its client's failures within the
  window.

The downgrade drops the table: the older code counts in memory again (a lockout in
progress is forgotten, as at any restart of that code).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_failures",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("client", sa.String(length=64), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_failures")),
    )
    op.create_index("ix_auth_failures_client_failed_at", "auth_failures", ["client", "failed_at"])


def downgrade() -> None:
    op.drop_index("ix_auth_failures_client_failed_at", table_name="auth_failures")
    op.drop_table("auth_failures")
