"""Keyed pseudonyms: the one module that turns an educator ID into a pseudonym.

A pseudonym is HMAC-SHA-256 of the *normalised* educator ID under a key
derived for one agreement and one key version:

    agreement_key = HKDF-SHA-256(ikm=master key, salt=per-version random salt,
                                 info="teacher-gateway/pseudonym/v1" | agreement id | version)
    pseudonym     = HMAC-SHA-256(agreement_key, normalised ID)

Why a keyed hash and not a plain one: there are few enough educator IDs that
a plain SHA-256 of every possible ID can be computed in minutes, which would
make any table of plain hashes a "key file". Why HKDF with the agreement id:
pseudonyms of two agreements never match, so data cannot be linked across
agreements. Why a stored random salt per key version: destroying it at
termination makes the agreement's pseudonyms impossible to recompute even by
someone who holds the master key.

Pseudonyms are written with a sixteen-letter lower-case alphabet (``a``..``p``,
one letter per four bits). Every valid educator ID contains a digit (the
dataset schemas' patterns require one), so no pseudonym can ever contain a raw
ID, in any case.

Only HMAC and HKDF from the ``cryptography`` package are used.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: Domain-separation label of the derivation; bump it only with a migration.
DERIVATION_LABEL = b"teacher-gateway/pseudonym/v1"
AGREEMENT_KEY_BYTES = 32
PSEUDONYM_LENGTH = 64

_NIBBLE_ALPHABET = "abcdefghijklmnop"
# bytes.translate on the hex digits is several times faster than str.translate.
_HEX_TO_LETTER = bytes.maketrans(b"0123456789abcdef", _NIBBLE_ALPHABET.encode("ascii"))
PSEUDONYM_PATTERN = re.compile(r"^[a-p]{64}$")


def hmac_sha256(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA-256 (RFC 2104) of ``message`` under ``key``, via ``cryptography``."""
    mac = crypto_hmac.HMAC(key, hashes.SHA256())
    mac.update(message)
    return mac.finalize()


def hkdf_sha256(*, ikm: bytes, salt: bytes | None, info: bytes, length: int) -> bytes:
    """HKDF-SHA-256 (RFC 5869) extract-and-expand, via ``cryptography``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def derivation_info(agreement_id: str, key_version: int) -> bytes:
    """The HKDF ``info`` binding a derived key to one agreement and key version."""
    if key_version < 1:
        raise ValueError("key versions start at 1")
    # NUL separators: an agreement id can never contain one, so no two
    # (agreement, version) pairs share an info string.
    return b"\x00".join(
        (DERIVATION_LABEL, agreement_id.encode("utf-8"), str(key_version).encode("ascii"))
    )


def derive_agreement_key(
    master_key: bytes, *, agreement_id: str, key_version: int, salt: bytes
) -> bytes:
    """The per-agreement, per-version pseudonym key (never stored anywhere)."""
    return hkdf_sha256(
        ikm=master_key,
        salt=salt,
        info=derivation_info(agreement_id, key_version),
        length=AGREEMENT_KEY_BYTES,
    )


@dataclass(frozen=True, kw_only=True)
class Normalisation:
    """How a dataset's educator IDs are normalised before hashing.

    Two files link only if their IDs normalise to the same string, so every
    dataset of one agreement must use the same normalisation (the agreement
    checker enforces it).
    """

    trim: bool = True
    upper: bool = True
    strip_leading_zeros: bool = True
    pattern: str = r"^(?=.*[0-9])[0-9A-Z]{1,15}$"
    _compiled: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_compiled", re.compile(self.pattern))

    def normalise(self, raw: str) -> str:
        """The canonical form of ``raw``; may be invalid (see :meth:`is_valid`)."""
        value = raw
        if self.trim:
            # Inner spaces too: extracts often print IDs as "000 123 456".
            value = "".join(value.split())
        if self.upper:
            value = value.upper()
        if self.strip_leading_zeros:
            # An all-zero ID strips to "" and is refused: no real ID is zero.
            value = value.lstrip("0")
        return value

    def is_valid(self, normalised: str) -> bool:
        return self._compiled.fullmatch(normalised) is not None


class InvalidEducatorId(ValueError):
    """An ID that does not match the schema's pattern after normalisation.

    Carries no value: the raw ID must never reach an error message.
    """


class Pseudonymizer:
    """Pseudonymises educator IDs for one agreement under one key version.

    Holds the derived key in memory only. ``pseudonymize_distinct`` (which
    ``pseudonymize_many`` and uploads use) hashes each distinct spelling once, which
    is what makes a million-row column fast: a teacher appears on many rows, and an
    HMAC context is copied from a pre-keyed one rather than rebuilt.
    """

    def __init__(self, agreement_key: bytes, *, key_version: int, normalisation: Normalisation):
        if len(agreement_key) < AGREEMENT_KEY_BYTES:
            raise ValueError("agreement key too short")
        self._keyed = crypto_hmac.HMAC(agreement_key, hashes.SHA256())
        self.key_version = key_version
        self.normalisation = normalisation

    def __repr__(self) -> str:  # never show key material
        return f"Pseudonymizer(key_version={self.key_version})"

    def _mac(self, normalised: str) -> str:
        mac = self._keyed.copy()
        mac.update(normalised.encode("utf-8"))
        return binascii.hexlify(mac.finalize()).translate(_HEX_TO_LETTER).decode("ascii")

    def pseudonymize(self, raw_id: str) -> str:
        """The pseudonym of one raw ID; raises :class:`InvalidEducatorId` if invalid."""
        normalised = self.normalisation.normalise(raw_id)
        if not self.normalisation.is_valid(normalised):
            raise InvalidEducatorId("educator ID does not match the expected pattern")
        return self._mac(normalised)

    def pseudonymize_distinct(
        self, raw_ids: Sequence[str], cache: dict[str, str | None]
    ) -> list[str | None]:
        """Pseudonyms of distinct raw IDs (``None`` if invalid), memoised in ``cache``.

        Uploads dictionary-encode an ID column and pass its distinct values here,
        so each spelling of an ID is normalised and hashed once per upload.
        """
        normalise = self.normalisation.normalise
        is_valid = self.normalisation.is_valid
        out: list[str | None] = []
        for raw in raw_ids:
            if raw not in cache:
                normalised = normalise(raw)
                cache[raw] = self._mac(normalised) if is_valid(normalised) else None
            out.append(cache[raw])
        return out

    def pseudonymize_many(self, raw_ids: Iterable[str | None]) -> list[str | None]:
        """Pseudonyms for a column, ``None`` where the ID is missing or invalid.

        Callers report invalid positions (by row number, never by value).
        """
        column = list(raw_ids)
        cache: dict[str, str | None] = {}
        present = [raw for raw in column if raw is not None]
        self.pseudonymize_distinct(present, cache)  # the one hashing loop
        return [None if raw is None else cache[raw] for raw in column]
