"""The master key, the per-agreement key versions and the audit signing key: the one
module that reads keys.

The master key is 32 random bytes, base64-encoded in a file readable by its
owner only (mode 0600). It never leaves this module except as input to HKDF
(:func:`gateway.pseudonym.derive_agreement_key`); it is never written to the
database, a log, an error message or a release. Each agreement has numbered
key versions; the database keeps only each version's random HKDF salt.

Where the master key and the signing key are kept is the key backend's business
(:func:`key_store`, chosen by ``GATEWAY_KEY_BACKEND``): files (the default, below) or
an HSM through PKCS#11 (:mod:`gateway.hsm`). Either way the rest of the gateway sees a
:class:`MasterKey` and a signer with ``sign``, ``public_pem`` and ``fingerprint``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import audit
from gateway.config import Settings
from gateway.errors import MasterKeyError, NotFound
from gateway.pseudonym import Normalisation, Pseudonymizer, derive_agreement_key, hkdf_sha256
from gateway.storage.tables import KeyVersion

MASTER_KEY_BYTES = 32
SALT_BYTES = 32
_HOW_TO_MAKE_ONE = "create one with `gateway keys init` (or `gateway init`)"


@dataclass(frozen=True)
class MasterKey:
    """The operator's master key, held in memory. Its repr shows nothing."""

    material: bytes

    def __repr__(self) -> str:
        return "MasterKey(<redacted>)"

    def check_value(self) -> str:
        """A one-way value identifying this key (to detect a wrong key at start-up)."""
        return hkdf_sha256(
            ikm=self.material, salt=None, info=b"teacher-gateway/key-check/v1", length=16
        ).hex()


def create_master_key(path: Path) -> bool:
    """Write a new random master key to ``path`` (mode 0600) unless one exists.

    Returns True if a key was created. The file is created with O_EXCL and
    mode 0600 in one step, so the key is never readable by others, not even
    for an instant, and an existing key is never overwritten.
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    encoded = base64.urlsafe_b64encode(secrets.token_bytes(MASTER_KEY_BYTES)) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, encoded)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def load_master_key(path: Path) -> MasterKey:
    """Read and check the master key file; refuse anything unsafe.

    Refuses: a missing file, a file readable or writable by group or others,
    content that is not base64, and a key shorter than 32 bytes. Messages
    name the file and the fix, never the content.
    """
    if not path.exists():
        raise MasterKeyError(f"no master key at {path}: {_HOW_TO_MAKE_ONE}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise MasterKeyError(
            f"master key file {path} is accessible by group or others (mode {mode:04o}); "
            f"run `chmod 600 {path}`, or {_HOW_TO_MAKE_ONE} in a private folder"
        )
    raw = path.read_bytes().strip()
    try:
        material = base64.urlsafe_b64decode(raw)
    except (binascii.Error, ValueError):
        raise MasterKeyError(
            f"master key file {path} is not base64 text; {_HOW_TO_MAKE_ONE}"
        ) from None
    if len(material) < MASTER_KEY_BYTES:
        raise MasterKeyError(
            f"master key in {path} is {len(material)} bytes, shorter than the "
            f"{MASTER_KEY_BYTES} required; {_HOW_TO_MAKE_ONE}"
        )
    return MasterKey(material)


def _now() -> datetime:
    return datetime.now(UTC)


def current_key_version(session: Session, agreement_id: str) -> KeyVersion | None:
    """The agreement's active (newest, not retired) key version, if any."""
    return session.scalars(
        select(KeyVersion)
        .where(KeyVersion.agreement_id == agreement_id, KeyVersion.retired_at.is_(None))
        .order_by(KeyVersion.version.desc())
        .limit(1)
    ).first()


def create_key_version(session: Session, agreement_id: str) -> KeyVersion:
    """Retire the agreement's current key version (if any) and add the next one."""
    previous = session.scalars(
        select(KeyVersion)
        .where(KeyVersion.agreement_id == agreement_id)
        .order_by(KeyVersion.version.desc())
        .limit(1)
    ).first()
    now = _now()
    if previous is not None and previous.retired_at is None:
        previous.retired_at = now
    record = KeyVersion(
        agreement_id=agreement_id,
        version=(previous.version + 1) if previous else 1,
        salt=secrets.token_bytes(SALT_BYTES),
        created_at=now,
    )
    session.add(record)
    session.flush()
    return record


def pseudonymizer_for(
    session: Session,
    master_key: MasterKey,
    *,
    agreement_id: str,
    normalisation: Normalisation,
    key_version: int | None = None,
) -> Pseudonymizer:
    """A pseudonymiser under the agreement's current (or a given) key version."""
    if key_version is None:
        record = current_key_version(session, agreement_id)
    else:
        record = session.scalars(
            select(KeyVersion).where(
                KeyVersion.agreement_id == agreement_id, KeyVersion.version == key_version
            )
        ).first()
    if record is None or record.salt is None:
        raise NotFound(
            f"agreement {agreement_id!r} has no usable pseudonym key; "
            f"run `gateway keys rotate --agreement {agreement_id}` to make a new key version"
        )
    key = derive_agreement_key(
        master_key.material,
        agreement_id=agreement_id,
        key_version=record.version,
        salt=record.salt,
    )
    return Pseudonymizer(key, key_version=record.version, normalisation=normalisation)


def rotate_key(
    session: Session,
    *,
    agreement: audit.AgreementRef,
    actor: audit.Actor,
) -> dict[str, int | None]:
    """Move an agreement to a new key version, recorded in the audit log.

    Stored pseudonyms keep the version they were made under; they cannot be
    re-keyed (the raw IDs are gone), so data under the old version no longer
    links with new uploads and must be uploaded again.
    """
    previous = current_key_version(session, agreement.id)
    record = create_key_version(session, agreement.id)
    outcome = {
        "previous_version": previous.version if previous else None,
        "key_version": record.version,
    }
    audit.append_event(
        session,
        kind="key-rotated",
        actor=actor,
        details=outcome,
        agreement=agreement,
    )
    return outcome


# --- the audit signing key ----------------------------------------------------------------


@dataclass(frozen=True)
class SigningKey:
    """The Ed25519 key that signs audit checkpoints. Its repr shows nothing secret."""

    private: Ed25519PrivateKey

    def __repr__(self) -> str:
        return f"SigningKey(public={self.fingerprint})"

    def sign(self, message: bytes) -> bytes:
        return self.private.sign(message)

    @property
    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the raw public key: what a reviewer compares out of band."""
        raw = self.private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return hashlib.sha256(raw).hexdigest()


def create_signing_key(path: Path) -> bool:
    """Write a new Ed25519 signing key (PEM, mode 0600) unless one exists; True if created."""
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    return True


def load_signing_key(path: Path) -> SigningKey:
    """Read the signing key, kept like the master key: refuse a missing or exposed file."""
    if not path.exists():
        raise MasterKeyError(f"no audit signing key at {path}: {_HOW_TO_MAKE_ONE}")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise MasterKeyError(
            f"audit signing key file {path} is accessible by group or others (mode "
            f"{mode:04o}); run `chmod 600 {path}`"
        )
    try:
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except ValueError:
        raise MasterKeyError(f"audit signing key file {path} is not a PEM private key") from None
    if not isinstance(private, Ed25519PrivateKey):
        raise MasterKeyError(f"audit signing key file {path} is not an Ed25519 key")
    return SigningKey(private)


# --- the key backends ---------------------------------------------------------------------


class KeyStore(Protocol):
    """Where the master key and the audit signing key are kept (``GATEWAY_KEY_BACKEND``)."""

    #: The master key file (with pkcs11: the wrapped master key).
    master_key_location: str
    #: The signing key file, or its PKCS#11 URI.
    signing_key_location: str

    def create_master_key(self) -> bool: ...
    def create_signing_key(self) -> bool: ...
    def load_master_key(self) -> MasterKey: ...
    def load_signing_key(self) -> audit.Signer: ...

    def discard(self, *, master_key: bool, signing_key: bool) -> None:
        """Destroy keys this run created (a first ``gateway init`` that failed)."""


class FileKeyStore:
    """The default: both keys in files of mode 0600."""

    def __init__(self, settings: Settings) -> None:
        self._master = settings.resolved_master_key_file
        self._signing = settings.resolved_signing_key_file
        self.master_key_location = str(self._master)
        self.signing_key_location = str(self._signing)

    def create_master_key(self) -> bool:
        return create_master_key(self._master)

    def create_signing_key(self) -> bool:
        return create_signing_key(self._signing)

    def load_master_key(self) -> MasterKey:
        return load_master_key(self._master)

    def load_signing_key(self) -> SigningKey:
        return load_signing_key(self._signing)

    def discard(self, *, master_key: bool, signing_key: bool) -> None:
        if master_key:
            self._master.unlink(missing_ok=True)
        if signing_key:
            self._signing.unlink(missing_ok=True)


class Pkcs11KeyStore:
    """An HSM through PKCS#11: the master key wrapped by a key inside it (the file holds
    only the wrapped blob), the signing key inside it (:mod:`gateway.hsm`)."""

    def __init__(self, settings: Settings) -> None:
        from gateway import hsm  # python-pkcs11 only when this backend is chosen

        hsm.require_settings(settings)
        self._hsm = hsm
        self._settings = settings
        self._master = settings.resolved_master_key_file
        self.master_key_location = str(self._master)
        self.signing_key_location = hsm.signing_key_uri(settings)

    def create_master_key(self) -> bool:
        return self._hsm.create_master_key(self._settings, self._master)

    def create_signing_key(self) -> bool:
        return self._hsm.create_signing_key(self._settings)

    def load_master_key(self) -> MasterKey:
        material = self._hsm.load_master_key_material(self._settings, self._master)
        if len(material) < MASTER_KEY_BYTES:
            raise MasterKeyError(
                f"the master key wrapped in {self._master} is {len(material)} bytes, shorter "
                f"than the {MASTER_KEY_BYTES} required"
            )
        return MasterKey(material)

    def load_signing_key(self) -> audit.Signer:
        return self._hsm.load_signing_key(self._settings)

    def rewrap_master_key(self) -> dict[str, str]:
        """Rotate the wrapping key (:func:`gateway.hsm.rewrap_master_key`)."""
        return self._hsm.rewrap_master_key(self._settings, self._master)

    def discard(self, *, master_key: bool, signing_key: bool) -> None:
        if master_key:
            self._hsm.discard_master_key(self._settings, self._master)
        if signing_key:
            self._hsm.discard_signing_key(self._settings)


def key_store(settings: Settings) -> FileKeyStore | Pkcs11KeyStore:
    """The key backend the settings choose (files unless ``GATEWAY_KEY_BACKEND=pkcs11``)."""
    if settings.key_backend == "pkcs11":
        return Pkcs11KeyStore(settings)
    return FileKeyStore(settings)
