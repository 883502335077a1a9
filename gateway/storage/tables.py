"""The gateway's tables. Changing one means writing an Alembic migration."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class GatewayState(Base):
    """One row: facts about this installation."""

    __tablename__ = "gateway_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # A one-way check value derived from the master key (HKDF, own label), so a
    # gateway started with the wrong master key refuses instead of silently
    # producing pseudonyms that never link with the stored ones.
    master_key_check: Mapped[str] = mapped_column(String(64))


class AgreementRecord(Base):
    """An agreement as last loaded from its YAML file."""

    __tablename__ = "agreements"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    version: Mapped[str] = mapped_column(String(64))
    content_hash: Mapped[str] = mapped_column(String(64))
    title: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="active")
    loaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    changed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    terminated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class KeyVersion(Base):
    """One pseudonym key version of one agreement.

    Only the HKDF salt is kept; the key itself is derived in memory when needed.
    Destroying a version erases its salt, after which its pseudonyms can no
    longer be recomputed, even with the master key.
    """

    __tablename__ = "key_versions"
    __table_args__ = (UniqueConstraint("agreement_id", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agreement_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("agreements.id", ondelete="CASCADE"), index=True
    )
    version: Mapped[int] = mapped_column(Integer)
    salt: Mapped[bytes | None] = mapped_column(LargeBinary(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    retired_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    destroyed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuditEvent(Base):
    """One entry of the tamper-evident audit chain.

    ``body`` is the canonical JSON the hash covers; the other columns repeat
    parts of it so reviewers can filter, and verification checks they agree.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    agreement_id: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    actor_party: Mapped[str | None] = mapped_column(String(128), nullable=True)
    actor_role: Mapped[str | None] = mapped_column(String(32), nullable=True)
    body: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64), unique=True)
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditHead(Base):
    """One row: the chain head. Appends lock it, so the chain never forks."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


class AuditCheckpoint(Base):
    """A signed statement of the chain head: which event was last, and its hash.

    Signed with the gateway's Ed25519 key, so a reviewer holding the public key can
    tell a genuine chain from one rewritten after the checkpoint.
    """

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(Integer)
    head_hash: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[str] = mapped_column(String(40))
    public_key_fingerprint: Mapped[str] = mapped_column(String(64))
    signature: Mapped[str] = mapped_column(String(128))


class Credential(Base):
    """A bearer token issued to one party of one agreement (a reviewer's: several).

    Only a keyed hash of the token's secret is kept (HMAC-SHA-256 under a key
    derived from the master key), so the database alone cannot be used to make
    or check tokens. The id is public: it names the credential in the audit log.
    """

    __tablename__ = "credentials"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))
    party: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: The person it was issued to (a slug the agreement's extract approvers use), if named.
    person: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class AuthFailure(Base):
    """One failed authentication from one client address, for the shared lockout.

    Kept in the database, not in a process, so every worker of every server counts
    the same failures (gateway/lockout.py); rows older than the window are deleted.
    """

    __tablename__ = "auth_failures"
    __table_args__ = (Index("ix_auth_failures_client_failed_at", "client", "failed_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client: Mapped[str] = mapped_column(String(64))
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CredentialScope(Base):
    """One agreement a credential covers."""

    __tablename__ = "credential_agreements"

    credential_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("credentials.id", ondelete="CASCADE"), primary_key=True
    )
    agreement_id: Mapped[str] = mapped_column(String(128), primary_key=True, index=True)


class WebSession(Base):
    """One sign-in to the web pages (gateway/web_sessions.py).

    The row is keyed by SHA-256 of the session id; the id itself (256 random bits)
    lives only in the browser's cookie, so a copy of this table cannot be replayed as
    a session. Ending a session (sign-out, revocation, idle or absolute timeout) sets
    ``ended_at`` and ``end_reason``; the row stays until a day after ``ends_at``.
    """

    __tablename__ = "web_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: ``token`` (signed in with a bearer token) or ``oidc`` (through the identity provider).
    kind: Mapped[str] = mapped_column(String(8))
    #: The principal at sign-in: a token's credential id (revoking it ends the session),
    #: or the id an OIDC principal acts under.
    credential_id: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(16))
    party: Mapped[str | None] = mapped_column(String(128), nullable=True)
    agreements: Mapped[list[str]] = mapped_column(JSON)
    #: OIDC sessions: who the provider said signed in, and the claims the mapping reads
    #: again on every request (a mapping removed ends the session at its next click).
    issuer: Mapped[str | None] = mapped_column(String(512), nullable=True)
    subject: Mapped[str | None] = mapped_column(String(255), nullable=True)
    claims: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)
