"""record-level extracts: their requests and certificates of destruction

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 08:30:00

- ``extract_requests``: one row per request for an agreement's declared extract (issue
  17): who asked, its status, who decided and when, the download window, what the
  approver was shown (JSON), the approvals given so far (JSON: person, credential, time;
  an agreement may require several distinct people), the per-recipient fingerprint record (JSON), and the
  generalised rows encrypted (AES-GCM; nonce and ciphertext, the key's HKDF salt),
  erased once downloaded, refused, expired or the agreement ends.
- ``credentials.person``: the person a token was issued to (``tokens create --person``),
  by the id the agreement lists its extract approvers under.
- ``destruction_certificates``: the recipients' signed statements of destruction, with
  their SHA-256 and uploader.

Neither table nor the column existed before: the downgrade drops them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("credentials") as batch:
        batch.add_column(sa.Column("person", sa.String(length=64), nullable=True))
    op.create_table(
        "extract_requests",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("agreement_id", sa.String(length=128), nullable=False),
        sa.Column("extract_name", sa.String(length=128), nullable=False),
        sa.Column("recipient_party", sa.String(length=128), nullable=False),
        sa.Column("requester_credential_id", sa.String(length=32), nullable=True),
        sa.Column("requester_role", sa.String(length=16), nullable=False),
        sa.Column("requester_person", sa.String(length=128), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=32), nullable=True),
        sa.Column("decided_by_role", sa.String(length=16), nullable=True),
        sa.Column("decided_by_party", sa.String(length=128), nullable=True),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decision_reason", sa.Text(), nullable=True),
        sa.Column("approvals", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("downloaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("downloaded_by", sa.String(length=32), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.Text(), nullable=False),
        sa.Column("content_sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("content_salt", sa.LargeBinary(length=32), nullable=True),
        sa.Column("content_destroyed_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["agreement_id"],
            ["agreements.id"],
            name=op.f("fk_extract_requests_agreement_id_agreements"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_extract_requests")),
    )
    op.create_index(op.f("ix_extract_requests_agreement_id"), "extract_requests", ["agreement_id"])
    op.create_index(op.f("ix_extract_requests_status"), "extract_requests", ["status"])
    op.create_table(
        "destruction_certificates",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("agreement_id", sa.String(length=128), nullable=False),
        sa.Column("party", sa.String(length=128), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uploaded_by", sa.String(length=32), nullable=True),
        sa.Column("uploaded_by_role", sa.String(length=16), nullable=False),
        sa.Column("file_name", sa.String(length=255), nullable=False),
        sa.Column("media_type", sa.String(length=128), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["agreement_id"],
            ["agreements.id"],
            name=op.f("fk_destruction_certificates_agreement_id_agreements"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_destruction_certificates")),
    )
    op.create_index(
        op.f("ix_destruction_certificates_agreement_id"),
        "destruction_certificates",
        ["agreement_id"],
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_destruction_certificates_agreement_id"), table_name="destruction_certificates"
    )
    op.drop_table("destruction_certificates")
    op.drop_index(op.f("ix_extract_requests_status"), table_name="extract_requests")
    op.drop_index(op.f("ix_extract_requests_agreement_id"), table_name="extract_requests")
    op.drop_table("extract_requests")
    with op.batch_alter_table("credentials") as batch:
        batch.drop_column("person")
