"""web sessions kept on the server

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 08:10:00

- ``web_sessions``: one row per sign-in to the web pages, keyed by SHA-256 of the
  session id (the id itself is only in the browser's cookie), with the principal at
  sign-in, the OIDC issuer, subject and mapped claims, and its times: created, last
  seen (idle timeout), ends (absolute lifetime), ended and why. Indexed on the
  credential (revoking a token ends its sessions in the same transaction) and on
  ``ends_at`` (rows a day past it are deleted).

The downgrade drops the table: the older code keeps the bearer token itself in the
cookie, so every browser signs in again.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "web_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("credential_id", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("party", sa.String(length=128), nullable=True),
        sa.Column("agreements", sa.JSON(), nullable=False),
        sa.Column("issuer", sa.String(length=512), nullable=True),
        sa.Column("subject", sa.String(length=255), nullable=True),
        sa.Column("claims", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_web_sessions")),
    )
    op.create_index(
        op.f("ix_web_sessions_credential_id"), "web_sessions", ["credential_id"], unique=False
    )
    op.create_index(op.f("ix_web_sessions_ends_at"), "web_sessions", ["ends_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_web_sessions_ends_at"), table_name="web_sessions")
    op.drop_index(op.f("ix_web_sessions_credential_id"), table_name="web_sessions")
    op.drop_table("web_sessions")
