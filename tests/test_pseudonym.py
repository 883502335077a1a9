"""Keyed pseudonyms: RFC vectors through the project's own functions, and invariants."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from gateway.pseudonym import (
    PSEUDONYM_PATTERN,
    InvalidEducatorId,
    Normalisation,
    Pseudonymizer,
    derivation_info,
    derive_agreement_key,
    hkdf_sha256,
    hmac_sha256,
)

# RFC 4231 section 4: HMAC-SHA-256 test cases 1-7 (key, data, expected MAC, bytes compared).
RFC4231 = [
    (
        b"\x0b" * 20,
        b"Hi There",
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        32,
    ),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        32,
    ),
    (
        b"\xaa" * 20,
        b"\xdd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        32,
    ),
    (
        bytes(range(1, 26)),
        b"\xcd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        32,
    ),
    (b"\x0c" * 20, b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b", 16),
    (
        b"\xaa" * 131,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        32,
    ),
    (
        b"\xaa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size "
        b"data. The key needs to be hashed before being used by the HMAC algorithm.",
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        32,
    ),
]

# RFC 5869 appendix A, test cases 1-3 (SHA-256): ikm, salt, info, length, OKM.
RFC5869 = [
    (
        b"\x0b" * 22,
        bytes(range(0x0D)),
        bytes(range(0xF0, 0xFA)),
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x50)),
        bytes(range(0x60, 0xB0)),
        bytes(range(0xB0, 0x100)),
        82,
        "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
        "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
        "cc30c58179ec3e87c14c01d5c1f3434f1d87",
    ),
    (
        b"\x0b" * 22,
        b"",
        b"",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize(("key", "data", "expected", "length"), RFC4231)
def test_hmac_sha256_matches_rfc4231(key: bytes, data: bytes, expected: str, length: int) -> None:
    assert hmac_sha256(key, data)[:length].hex() == expected


@pytest.mark.parametrize(("ikm", "salt", "info", "length", "expected"), RFC5869)
def test_hkdf_sha256_matches_rfc5869(
    ikm: bytes, salt: bytes, info: bytes, length: int, expected: str
) -> None:
    # RFC 5869 test 3 uses an empty salt, which HKDF treats as HashLen zero bytes.
    assert hkdf_sha256(ikm=ikm, salt=salt or None, info=info, length=length).hex() == expected


MASTER = bytes(range(32))
SALT = b"s" * 32
NORMALISATION = Normalisation()

# Raw IDs as they come in extracts: digits with stray spaces, zeros and case.
raw_ids = st.from_regex(r"\A ?0{0,3}[0-9A-Za-z]{0,6}[1-9][0-9A-Za-z]{0,6} ?\Z")
agreement_ids = st.from_regex(r"\A[a-z][a-z0-9-]{0,30}\Z")


def pseudonymizer(agreement_id: str = "a-1", version: int = 1) -> Pseudonymizer:
    key = derive_agreement_key(MASTER, agreement_id=agreement_id, key_version=version, salt=SALT)
    return Pseudonymizer(key, key_version=version, normalisation=NORMALISATION)


def test_pseudonym_is_hmac_of_normalised_id_under_hkdf_key() -> None:
    key = hkdf_sha256(ikm=MASTER, salt=SALT, info=derivation_info("a-1", 1), length=32)
    expected = (
        hmac_sha256(key, b"12345")
        .hex()
        .translate(str.maketrans("0123456789abcdef", "abcdefghijklmnop"))
    )
    assert pseudonymizer().pseudonymize(" 0012345 ") == expected


@given(raw_ids)
def test_deterministic(raw: str) -> None:
    assert pseudonymizer().pseudonymize(raw) == pseudonymizer().pseudonymize(raw)


@given(raw_ids, agreement_ids, agreement_ids)
def test_different_across_agreements(raw: str, first: str, second: str) -> None:
    assume(first != second)
    assert pseudonymizer(first).pseudonymize(raw) != pseudonymizer(second).pseudonymize(raw)


@given(raw_ids, st.integers(1, 50), st.integers(1, 50))
def test_different_across_key_versions(raw: str, v1: int, v2: int) -> None:
    assume(v1 != v2)
    assert pseudonymizer(version=v1).pseudonymize(raw) != pseudonymizer(version=v2).pseudonymize(
        raw
    )


@given(st.from_regex(r"\A[1-9][0-9A-Z]{0,8}\Z"), st.integers(0, 4), st.booleans(), st.booleans())
def test_equal_for_ids_that_normalise_equal(
    core: str, zeros: int, lower: bool, spaces: bool
) -> None:
    variant = "0" * zeros + (core.lower() if lower else core)
    if spaces:
        variant = f"  {variant[:2]} {variant[2:]}  "
    assume(any(ch.isdigit() for ch in core))
    p = pseudonymizer()
    assert p.pseudonymize(variant) == p.pseudonymize(core)


@given(raw_ids)
def test_never_equal_to_or_containing_the_raw_id(raw: str) -> None:
    pseudonym = pseudonymizer().pseudonymize(raw)
    assert PSEUDONYM_PATTERN.fullmatch(pseudonym)
    normalised = NORMALISATION.normalise(raw)
    for form in {raw, raw.strip(), normalised, normalised.lower()}:
        assert form != pseudonym
        assert form.lower() not in pseudonym.lower()


@pytest.mark.parametrize("raw", ["", "   ", "ABC", "12-34", "1234567890123456", "000"])
def test_invalid_ids_are_refused_without_echoing_them(raw: str) -> None:
    with pytest.raises(InvalidEducatorId) as info:
        pseudonymizer().pseudonymize(raw)
    if raw.strip():
        assert raw.strip() not in str(info.value)


@given(st.lists(st.one_of(st.none(), raw_ids, st.just("not-an-id")), max_size=40))
def test_many_matches_one_by_one(column: list[str | None]) -> None:
    p = pseudonymizer()
    expected = []
    for raw in column:
        try:
            expected.append(None if raw is None else p.pseudonymize(raw))
        except InvalidEducatorId:
            expected.append(None)
    assert p.pseudonymize_many(column) == expected


def test_repr_shows_no_key_material() -> None:
    key = derive_agreement_key(MASTER, agreement_id="a-1", key_version=1, salt=SALT)
    text = repr(Pseudonymizer(key, key_version=1, normalisation=NORMALISATION))
    assert key.hex() not in text and re.search(r"key_version=1", text)


def test_key_versions_start_at_one() -> None:
    with pytest.raises(ValueError, match="start at 1"):
        derivation_info("a-1", 0)
