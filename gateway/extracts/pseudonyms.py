"""Recipient pseudonyms: the one place an extract's teacher ID is made.

An extract never carries the gateway's internal pseudonym (it links every dataset of
the agreement, and a recipient holding it could link two parties' files) nor, of
course, a raw ID. Each carries a teacher ID derived for one recipient of one
agreement, keyed over the internal pseudonym (the raw IDs are gone after upload):

    recipient_key = HKDF-SHA-256(ikm=master key, salt=the agreement key version's salt,
                                 info="teacher-gateway/extract-pseudonym/v1" | agreement
                                      | recipient | key version)
    teacher_id    = HMAC-SHA-256(recipient_key, internal pseudonym), first 96 bits

Why: the same teacher gets the same ID in every extract the recipient receives under
the agreement (they can follow teachers over years), a different ID for every other
recipient and agreement (two recipients' files never link on it), and no recipient
can compute either the internal pseudonym or another recipient's ID from theirs.
The key version's salt is in the derivation so that destroying it at termination
makes these IDs as impossible to recompute as the internal ones.

IDs are 24 letters from ``a`` to ``p`` (four bits a letter), never a digit, so a raw
ID (which has a digit) never appears inside one, and never 64 letters long, so one
is never mistaken for an internal pseudonym.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from sqlalchemy.orm import Session

from gateway.errors import NotFound
from gateway.keys import MasterKey, current_key_version
from gateway.pseudonym import hkdf_sha256

#: Domain-separation label of the derivation; never equal to the internal one.
DERIVATION_LABEL = b"teacher-gateway/extract-pseudonym/v1"
RECIPIENT_KEY_BYTES = 32
#: Letters in a recipient teacher ID (4 bits each: 96 bits).
TEACHER_ID_LENGTH = 24
TEACHER_ID_PATTERN = re.compile(r"^[a-p]{24}$")

_HEX_TO_LETTER = bytes.maketrans(b"0123456789abcdef", b"abcdefghijklmnop")


def derivation_info(agreement_id: str, recipient: str, key_version: int) -> bytes:
    """The HKDF ``info`` binding a recipient key to one agreement, recipient and version."""
    if key_version < 1:
        raise ValueError("key versions start at 1")
    # NUL separators: neither an agreement id nor a party id (slugs) contains one.
    return b"\x00".join(
        (
            DERIVATION_LABEL,
            agreement_id.encode("utf-8"),
            recipient.encode("utf-8"),
            str(key_version).encode("ascii"),
        )
    )


def derive_recipient_key(
    master_key: bytes, *, agreement_id: str, recipient: str, key_version: int, salt: bytes
) -> bytes:
    """The recipient's pseudonym key under one agreement key version (never stored)."""
    return hkdf_sha256(
        ikm=master_key,
        salt=salt,
        info=derivation_info(agreement_id, recipient, key_version),
        length=RECIPIENT_KEY_BYTES,
    )


class RecipientPseudonymizer:
    """Turns internal pseudonyms into one recipient's teacher IDs. Holds its key in
    memory only; its repr shows none of it."""

    def __init__(self, recipient_key: bytes, *, key_version: int) -> None:
        if len(recipient_key) < RECIPIENT_KEY_BYTES:
            raise ValueError("recipient key too short")
        self._keyed = crypto_hmac.HMAC(recipient_key, hashes.SHA256())
        self.key_version = key_version

    def __repr__(self) -> str:
        return f"RecipientPseudonymizer(key_version={self.key_version})"

    def pseudonym(self, internal: str) -> str:
        """The recipient's teacher ID for the teacher with this internal pseudonym."""
        mac = self._keyed.copy()
        mac.update(internal.encode("ascii"))
        digest = mac.finalize()[: TEACHER_ID_LENGTH // 2]
        return binascii.hexlify(digest).translate(_HEX_TO_LETTER).decode("ascii")

    def pseudonyms(self, internal: Iterable[str]) -> dict[str, str]:
        """Internal pseudonym -> teacher ID, for each distinct one given."""
        return {value: self.pseudonym(value) for value in dict.fromkeys(internal)}


def recipient_pseudonymizer(
    session: Session, master_key: MasterKey, *, agreement_id: str, recipient: str
) -> RecipientPseudonymizer:
    """The recipient's pseudonymiser under the agreement's current key version.

    :class:`NotFound` when the agreement has no usable key version (destroyed at
    termination, or never made).
    """
    record = current_key_version(session, agreement_id)
    if record is None or record.salt is None:
        raise NotFound(
            f"agreement {agreement_id!r} has no usable pseudonym key; an extract needs "
            "the key its data was uploaded under"
        )
    key = derive_recipient_key(
        master_key.material,
        agreement_id=agreement_id,
        recipient=recipient,
        key_version=record.version,
        salt=record.salt,
    )
    return RecipientPseudonymizer(key, key_version=record.version)
