"""Recipient pseudonyms of extracts (gateway/extracts/pseudonyms.py): stable for one
recipient of one agreement, unlinkable across recipients, agreements and key versions,
never the internal pseudonym."""

from __future__ import annotations

import secrets

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.extracts.pseudonyms import (
    TEACHER_ID_PATTERN,
    RecipientPseudonymizer,
    derive_recipient_key,
)
from gateway.pseudonym import (
    PSEUDONYM_PATTERN,
    Normalisation,
    Pseudonymizer,
    derive_agreement_key,
)

slugs = st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
raw_ids = st.from_regex(r"[1-9][0-9]{5,9}", fullmatch=True)
MASTER = secrets.token_bytes(32)
SALT = secrets.token_bytes(32)


def internal_pseudonym(raw: str, agreement: str, version: int = 1) -> str:
    key = derive_agreement_key(MASTER, agreement_id=agreement, key_version=version, salt=SALT)
    return Pseudonymizer(key, key_version=version, normalisation=Normalisation()).pseudonymize(raw)


def recipient(
    agreement: str, party: str, *, version: int = 1, salt: bytes = SALT
) -> RecipientPseudonymizer:
    key = derive_recipient_key(
        MASTER, agreement_id=agreement, recipient=party, key_version=version, salt=salt
    )
    return RecipientPseudonymizer(key, key_version=version)


@settings(max_examples=50, deadline=None)
@given(raw=raw_ids, agreement=slugs, party=slugs)
def test_stable_for_one_recipient_of_one_agreement(raw: str, agreement: str, party: str) -> None:
    internal = internal_pseudonym(raw, agreement)
    first = recipient(agreement, party).pseudonym(internal)
    # A later extract derives the key again from the same master key and salt.
    assert recipient(agreement, party).pseudonym(internal) == first
    assert TEACHER_ID_PATTERN.fullmatch(first)


@settings(max_examples=50, deadline=None)
@given(raw=raw_ids, agreement=slugs, party=slugs)
def test_never_the_internal_pseudonym_nor_a_raw_id(raw: str, agreement: str, party: str) -> None:
    internal = internal_pseudonym(raw, agreement)
    teacher_id = recipient(agreement, party).pseudonym(internal)
    assert PSEUDONYM_PATTERN.fullmatch(internal) and not PSEUDONYM_PATTERN.fullmatch(teacher_id)
    assert teacher_id not in internal and raw not in teacher_id
    assert not any(character.isdigit() for character in teacher_id)


@settings(max_examples=30, deadline=None)
@given(
    raws=st.lists(raw_ids, min_size=1, max_size=20, unique=True),
    agreement=slugs,
    parties=st.lists(slugs, min_size=2, max_size=2, unique=True),
)
def test_two_recipients_share_no_teacher_id(
    raws: list[str], agreement: str, parties: list[str]
) -> None:
    internals = [internal_pseudonym(raw, agreement) for raw in raws]
    first = set(recipient(agreement, parties[0]).pseudonyms(internals).values())
    second = set(recipient(agreement, parties[1]).pseudonyms(internals).values())
    assert len(first) == len(second) == len(raws)
    assert first.isdisjoint(second)


@settings(max_examples=30, deadline=None)
@given(
    raws=st.lists(raw_ids, min_size=1, max_size=20, unique=True),
    agreements=st.lists(slugs, min_size=2, max_size=2, unique=True),
    party=slugs,
)
def test_two_agreements_share_no_teacher_id(
    raws: list[str], agreements: list[str], party: str
) -> None:
    # Even were the internal pseudonyms equal, the recipient keys differ by agreement.
    internals = [internal_pseudonym(raw, agreements[0]) for raw in raws]
    first = set(recipient(agreements[0], party).pseudonyms(internals).values())
    second = set(recipient(agreements[1], party).pseudonyms(internals).values())
    assert first.isdisjoint(second)


@settings(max_examples=30, deadline=None)
@given(raw=raw_ids, agreement=slugs, party=slugs)
def test_a_new_key_version_or_a_destroyed_salt_gives_other_ids(
    raw: str, agreement: str, party: str
) -> None:
    internal = internal_pseudonym(raw, agreement)
    first = recipient(agreement, party).pseudonym(internal)
    assert recipient(agreement, party, version=2).pseudonym(internal) != first
    assert recipient(agreement, party, salt=secrets.token_bytes(32)).pseudonym(internal) != first


def test_the_key_never_shows() -> None:
    key = derive_recipient_key(MASTER, agreement_id="a", recipient="b", key_version=1, salt=SALT)
    assert key.hex() not in repr(RecipientPseudonymizer(key, key_version=1))
    # The label separates it from the internal pseudonym key of the same agreement.
    assert key != derive_agreement_key(MASTER, agreement_id="a", key_version=1, salt=SALT)
