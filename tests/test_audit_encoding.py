"""RFC 8785 event bodies, and chains written before the switch still verifying."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from gateway import audit
from gateway.context import Gateway
from gateway.storage.tables import AuditEvent, AuditHead

#: Details whose legacy and RFC 8785 spellings differ: floats that Python and
#: ECMAScript print differently, and keys that sort differently by code point and by
#: UTF-16 code unit (U+FF5E against U+1F600).
AWKWARD = {"epsilon": 1.0, "tiny": 1e-05, "huge": 1e16, "\uff5e": 1, "\U0001f600": 2, "é": "ü"}


def append_like_before_rfc8785(
    session: Any, *, kind: str, details: dict[str, Any], actor: audit.Actor = audit.OPERATOR
) -> None:
    """The append of the code before the switch (52902a1's gateway/audit.py), kept here as
    the old code path: a body with no "encoding", written by sorted ``json.dumps``."""
    head = session.get(AuditHead, 1, with_for_update=True)
    occurred_at = datetime.now(UTC)
    seq = head.seq + 1
    body = {
        "seq": seq,
        "event_id": str(uuid.uuid4()),
        "occurred_at": occurred_at.isoformat(),
        "kind": kind,
        "actor": actor.to_dict(),
        "agreement": None,
        "details": dict(details),
        "prev_hash": head.hash,
    }
    body_text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    session.add(
        AuditEvent(
            seq=seq,
            event_id=body["event_id"],
            occurred_at=occurred_at,
            kind=kind,
            agreement_id=None,
            actor_party=actor.party,
            actor_role=actor.role,
            body=body_text,
            prev_hash=head.hash,
            hash=audit._sha256(body_text),
        )
    )
    head.seq, head.hash = seq, audit._sha256(body_text)
    session.flush()


def old_then_new_chain(gw: Gateway, *, old: int = 3, new: int = 3) -> list[AuditEvent]:
    """A chain whose first ``old`` events the old code wrote, then ``new`` by today's."""
    with gw.engine.begin() as connection:  # start from an empty chain, as before the switch
        connection.execute(text("DELETE FROM audit_checkpoints"))
        connection.execute(text("DELETE FROM audit_events"))
        connection.execute(text(f"UPDATE audit_head SET seq = 0, hash = '{audit.GENESIS_HASH}'"))
    with gw.sessions() as session, session.begin():
        for i in range(old):
            append_like_before_rfc8785(session, kind="key-created", details={**AWKWARD, "n": i})
    with gw.sessions() as session, session.begin():
        for i in range(new):
            audit.append_event(
                session, kind="key-created", actor=audit.OPERATOR, details={**AWKWARD, "n": i}
            )
    with gw.sessions() as session:
        return list(session.scalars(audit.query_events()).all())


def test_new_events_are_rfc8785_and_name_it(gateway: Gateway) -> None:
    events = old_then_new_chain(gateway, old=1, new=1)
    legacy, new = events
    assert "encoding" not in json.loads(legacy.body)
    body = json.loads(new.body)
    assert body["encoding"] == "rfc8785"
    # RFC 8785 reads every number as a double: 1e16 comes back as an int too big for it.
    assert new.body == rfc8785.dumps(json.loads(new.body, parse_int=float)).decode()
    # The two encodings really differ on these details, so the check below means something.
    assert new.body != audit.legacy_json(body)
    assert '"epsilon":1,' in new.body and '"tiny":0.00001' in new.body
    assert '"epsilon":1.0,' in legacy.body and '"tiny":1e-05' in legacy.body


def test_a_chain_written_before_the_switch_still_verifies(gateway: Gateway, tmp_path: Path) -> None:
    old_then_new_chain(gateway)
    with gateway.sessions() as session:
        result = audit.verify_chain(session)
    assert result.ok, result.problems
    assert result.events_checked == 6
    with gateway.sessions() as session:
        audit.export_bundle(session, tmp_path / "b", gateway.signing_key)
    bundled = audit.verify_bundle(tmp_path / "b")
    assert bundled.ok, bundled.problems


def test_a_body_respelled_under_the_same_hash_is_named(gateway: Gateway) -> None:
    # Whoever can rewrite a row can re-spell a body and fix its hash and every link after
    # it; the spelling check names the event even before the signature does.
    events = old_then_new_chain(gateway, old=2, new=2)
    for target, spelled in (
        (events[0], partial(json.dumps, sort_keys=True)),  # legacy, with spaces
        (events[3], audit.legacy_json),  # an RFC 8785 event in the old spelling
    ):
        body = json.loads(target.body)
        forged = spelled(body)
        with gateway.engine.begin() as connection:
            connection.execute(
                text("UPDATE audit_events SET body = :b, hash = :h WHERE seq = :s"),
                {"b": forged, "h": audit._sha256(forged), "s": target.seq},
            )
        with gateway.sessions() as session:
            found = [str(p) for p in audit.verify_chain(session).problems]
        encoding = "rfc8785" if "encoding" in body else "legacy"
        expected = f"event {target.seq}: its body is not written in the encoding it records"
        assert f"{expected} ({encoding})" in found, found
        with gateway.engine.begin() as connection:  # put it back for the next case
            connection.execute(
                text("UPDATE audit_events SET body = :b, hash = :h WHERE seq = :s"),
                {"b": target.body, "h": target.hash, "s": target.seq},
            )


def test_an_unknown_encoding_is_named() -> None:
    body = {"seq": 1, "encoding": "json5"}
    assert audit.encoding_problem(audit.canonical_json(body), body) == (
        "its body names an encoding other than rfc8785"
    )
    repeated = '{"encoding":"rfc8785","seq":1,"seq":2}'  # a repeated key has no one reading
    assert audit.encoding_problem(repeated, json.loads(repeated)) is not None


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(JSON_VALUES)
def test_the_json_dumps_shortcut_writes_what_the_rfc8785_package_writes(value: Any) -> None:
    try:
        expected = rfc8785.dumps(value).decode()
    except rfc8785.CanonicalizationError:  # integers beyond 2**53, lone surrogates
        with pytest.raises(ValueError):
            audit.canonical_json(value)
        return
    assert audit.canonical_json(value) == expected


@given(st.dictionaries(st.text(), JSON_VALUES, max_size=4))
def test_every_body_the_gateway_can_write_passes_the_spelling_check(details: Any) -> None:
    body = {"seq": 1, "encoding": "rfc8785", "details": details}
    try:
        text = audit.canonical_json(body)
    except ValueError:
        return  # refused when written, so never stored
    assert audit.encoding_problem(text, json.loads(text)) is None


# Ways a body might be spelled: RFC 8785's own, and json.dumps's variants (escapes,
# no sorting, spaces), which the spelling check must tell apart from it.
SPELLINGS = [
    lambda v: rfc8785.dumps(v).decode(),
    lambda v: json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False),
    lambda v: json.dumps(v, sort_keys=True, separators=(",", ":")),
    lambda v: json.dumps(v, separators=(",", ":"), ensure_ascii=False),
    lambda v: json.dumps(v, sort_keys=True),
]


def _rfc8785_reading(text: str) -> bool:
    """Whether ``text`` is the RFC 8785 spelling of what it says, read as the package
    reads numbers (an integer beyond 2**53 as a double), by the package alone."""
    for parsed in (json.loads(text), json.loads(text, parse_int=float)):
        try:
            if rfc8785.dumps(parsed).decode() == text:
                return True
        except rfc8785.CanonicalizationError:
            continue
    return False


@given(st.dictionaries(st.text(), JSON_VALUES, max_size=4), st.sampled_from(SPELLINGS))
def test_the_spelling_check_accepts_exactly_the_rfc8785_spelling(details: Any, spell: Any) -> None:
    """The check's shortcut (an ASCII text json.dumps spells back, with no number the two
    encoders spell apart, is taken without walking the body) agrees with the package."""
    body = {"seq": 1, "encoding": "rfc8785", "details": details}
    try:
        text = spell(body)
    except (ValueError, rfc8785.CanonicalizationError):
        return  # no spelling of this body in this way
    accepted = audit.encoding_problem(text, json.loads(text)) is None
    assert accepted == _rfc8785_reading(text)


@given(
    st.integers(min_value=1, max_value=2**53 - 1),
    st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
    st.datetimes(timezones=st.just(UTC)),
)
def test_checkpoints_signed_before_the_switch_sign_the_same_bytes(
    seq: int, head_hash: str, moment: datetime
) -> None:
    # Checkpoint messages moved to RFC 8785 with the bodies; for their three fields the
    # old sorted json.dumps gave the same bytes, so older signatures still verify.
    message = {"seq": seq, "hash": head_hash, "signed_at": moment.isoformat()}
    assert audit._checkpoint_message(seq, head_hash, moment.isoformat()) == (
        json.dumps(message, sort_keys=True, separators=(",", ":")).encode()
    )
