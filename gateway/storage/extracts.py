"""Tables for record-level extracts: their requests and the recipients' certificates
of destruction (docs/extracts.md).

An extract's rows are never stored in the clear. The generalised rows the approver
is shown are kept, from the request until the download (or a refusal, the download
window's end or the agreement's termination), as Parquet encrypted with AES-GCM under a
key derived from the master key and a random salt of the request's own
(:mod:`gateway.extracts.approval`); erasing the salt and the ciphertext destroys them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from gateway.storage.tables import Base


class ExtractRequest(Base):
    """One request for one of an agreement's declared extracts, by one recipient.

    ``status`` moves ``pending`` -> ``approved`` -> ``downloaded``, or ``pending`` ->
    ``refused``; an approved extract not downloaded in time becomes ``expired``, and
    anything not yet downloaded when the agreement ends becomes ``withdrawn``.
    """

    __tablename__ = "extract_requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # No cascade: the termination receipt lists every extract handed out, and the
    # requests outlive the agreement's data (they hold none in the clear).
    agreement_id: Mapped[str] = mapped_column(String(128), ForeignKey("agreements.id"), index=True)
    extract_name: Mapped[str] = mapped_column(String(128))
    recipient_party: Mapped[str] = mapped_column(String(128))
    #: The credential that asked (null when the operator asked on the host).
    requester_credential_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    requester_role: Mapped[str] = mapped_column(String(16))
    #: The person the requesting credential was issued to (``tokens create --person``).
    requester_person: Mapped[str | None] = mapped_column(String(128), nullable=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    decided_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    decided_by_role: Mapped[str | None] = mapped_column(String(16), nullable=True)
    decided_by_party: Mapped[str | None] = mapped_column(String(128), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    decision_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    #: Approvals given so far (JSON list of person, credential, time): the agreement may
    #: require several distinct people; the request is approved when enough have.
    approvals: Mapped[str] = mapped_column(Text, default="[]")
    #: The end of the download window, set at approval.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    downloaded_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    downloaded_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    #: What the approver is shown (JSON): columns, generalisation levels, risk figures,
    #: suppressed share, row count and a sample of generalised rows with no ID column.
    summary: Mapped[str] = mapped_column(Text)
    #: The per-recipient fingerprint record (JSON), for ``gateway extracts identify``.
    fingerprint: Mapped[str] = mapped_column(Text)
    #: SHA-256 of the plaintext Parquet the approver's summary was made from.
    content_sha256: Mapped[str] = mapped_column(String(64))
    #: AES-GCM nonce + ciphertext of the generalised rows; null once destroyed.
    content: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    #: The HKDF salt of the content's key; erased with the content.
    content_salt: Mapped[bytes | None] = mapped_column(LargeBinary(32), nullable=True)
    content_destroyed_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )


class DestructionCertificate(Base):
    """A recipient's signed statement that it destroyed what it received under an
    agreement: the file as uploaded (no personal data: a letter), its SHA-256 and who
    uploaded it."""

    __tablename__ = "destruction_certificates"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    agreement_id: Mapped[str] = mapped_column(String(128), ForeignKey("agreements.id"), index=True)
    party: Mapped[str] = mapped_column(String(128))
    uploaded_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    uploaded_by: Mapped[str | None] = mapped_column(String(32), nullable=True)
    uploaded_by_role: Mapped[str] = mapped_column(String(16))
    file_name: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    content: Mapped[bytes] = mapped_column(LargeBinary)
