"""Web sessions kept on the server (gateway/web_sessions.py): what is stored, when a
session ends, and that revoking a token ends its sessions in the revoking transaction.

These run on SQLite and on PostgreSQL. The browser's side (the cookie's attributes over
HTTP, TLS and a trusted proxy; signing out; timeouts and revocation seen from a page)
is tests/test_web_session_browser.py.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from sqlalchemy import select

from gateway import audit, credentials, web_sessions
from gateway.context import Gateway, initialise
from gateway.credentials import Principal
from gateway.storage.tables import WebSession
from tests.conftest import AGREEMENT, DISTRICT, make_settings

IDLE = 60
LIFETIME = 300
#: The documented write interval of last_seen_at: a minute, or a quarter of the idle
#: timeout when that is shorter.
WRITE_INTERVAL = min(60, IDLE / 4)


@pytest.fixture
def gw(tmp_path: Path, database_url: str) -> Iterator[Gateway]:
    settings = make_settings(
        tmp_path,
        database_url,
        session_idle_seconds=IDLE,
        session_lifetime_seconds=LIFETIME,
    )
    initialise(settings)
    with Gateway.open(settings) as opened:
        yield opened


def issue(gw: Gateway, *, role: str, party: str | None) -> str:
    """A token made as `gateway tokens create` makes one, on this open gateway."""
    with gw.sessions() as db, db.begin():
        return credentials.issue(
            db,
            master_key=gw.master_key,
            registry=gw.registry,
            agreement_ids=[AGREEMENT],
            role=role,
            party=party,
            expires=None,
            actor=audit.OPERATOR,
        ).token


def principal_of(gw: Gateway, token: str) -> Principal:
    with gw.reads() as db:
        return credentials.authenticate(db, gw.master_key, token)


def start(
    gw: Gateway, principal: Principal, *, now: datetime | None = None, replacing: str | None = None
) -> web_sessions.Started:
    with gw.sessions() as db, db.begin():
        return web_sessions.start(
            db,
            loaded=gw.registry.agreements,
            principal=principal,
            kind="token",
            timeouts=web_sessions.Timeouts.of(gw),
            replacing=replacing,
            now=now,
        )


def row(gw: Gateway, hashed: str) -> WebSession:
    with gw.reads() as db:
        found = db.get(WebSession, hashed)
        assert found is not None
        db.expunge(found)
        return found


def events(gw: Gateway, kind: str) -> list[dict[str, Any]]:
    with gw.reads() as db:
        return [audit.event_view(e) for e in db.scalars(audit.query_events(kind=kind))]


def test_only_the_hash_of_the_session_id_is_stored(gw: Gateway) -> None:
    token = issue(gw, role="uploader", party=DISTRICT)
    started = start(gw, principal_of(gw, token))
    assert len(started.session_id) == 43  # 32 random bytes, URL-safe base64
    stored = row(gw, hashlib.sha256(started.session_id.encode()).hexdigest())
    values = [str(getattr(stored, c.key)) for c in WebSession.__table__.columns]
    assert not [v for v in values if started.session_id in v]
    (event,) = events(gw, "session-started")
    assert event["details"]["session"] == stored.id_hash[:16]
    assert started.session_id not in str(event)
    assert event["agreement"]["id"] == AGREEMENT
    assert event["actor"]["credential_id"] == token.split("_")[1]
    resolved = web_sessions.resolve(gw, started.session_id)
    assert resolved.principal == principal_of(gw, token)


def test_unknown_and_malformed_ids_are_signed_out(gw: Gateway) -> None:
    for sent in ("x" * 43, "not an id", "", "a" * 200):
        with pytest.raises(web_sessions.SessionEnded) as ended:
            web_sessions.resolve(gw, sent)
        assert ended.value.reason == "unknown"
        assert "not known" in ended.value.message


# Request gaps in seconds: around the idle timeout, and the quarter of it under which a
# request does not write last_seen_at again.
# Whole milliseconds: the stored times keep microseconds, so the model's comparisons and
# the gateway's see the same instants.
gaps = st.lists(
    st.one_of(
        st.floats(0, IDLE * 1.5).map(lambda gap: round(gap, 3)),
        st.sampled_from([WRITE_INTERVAL, IDLE - WRITE_INTERVAL, IDLE, IDLE + 0.001]),
    ),
    min_size=1,
    max_size=8,
)


@hyp_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(gaps=gaps)
# Activity past the idle timeout that only the writes of last_seen_at keep alive; then on
# past the lifetime; one gap past the idle timeout.
@example(gaps=[WRITE_INTERVAL] * 4 + [IDLE - WRITE_INTERVAL] * 3)
@example(gaps=[40.0] * 8)
@example(gaps=[IDLE + 0.001, 1.0])
def test_a_session_lives_while_active_and_never_past_its_lifetime(
    gw: Gateway, gaps: list[float]
) -> None:
    """Each request comes ``gap`` seconds after the one before. A gap longer than the
    idle timeout, or a request at or past the lifetime, ends the session for good; gaps
    within the idle timeout less the write interval (a quarter of it here) keep it; the
    recorded last request moves in steps of at least that interval."""
    timeouts = web_sessions.Timeouts.of(gw)
    token = issue(gw, role="reviewer", party=None)
    signed_in_at = datetime.now(UTC)
    started = start(gw, principal_of(gw, token), now=signed_in_at)
    now, state, reason = signed_in_at, "live", None
    writes = [signed_in_at]
    for gap in gaps:
        now += timedelta(seconds=gap)
        if state != "ended":
            if now >= signed_in_at + timeouts.lifetime:
                state, reason = "ended", "expired"
            elif gap > IDLE:
                state, reason = "ended", "idle"
            elif gap > IDLE - WRITE_INTERVAL:
                state = "unknown"  # the idle timeout holds to within the write interval
        try:
            web_sessions.resolve(gw, started.session_id, now=now)
            outcome = "live"
        except web_sessions.SessionEnded as ended:
            outcome, ended_reason = "ended", ended.reason
        if state == "unknown":
            state = outcome
            reason = ended_reason if outcome == "ended" else None
        assert outcome == state, (gaps, now - signed_in_at)
        if outcome == "ended":
            assert ended_reason == reason
        else:
            seen = row(gw, started.id_hash).last_seen_at.replace(tzinfo=UTC)
            if seen != writes[-1]:
                assert seen - writes[-1] >= timedelta(seconds=WRITE_INTERVAL)
                writes.append(seen)
    stored = row(gw, started.id_hash)
    assert (stored.ended_at is not None) == (state == "ended")
    assert stored.end_reason == reason


def test_revoking_a_token_ends_its_sessions_in_the_same_transaction(gw: Gateway) -> None:
    revoked = issue(gw, role="uploader", party=DISTRICT)
    kept = issue(gw, role="reviewer", party=None)
    two = [start(gw, principal_of(gw, revoked)) for _ in range(2)]
    other = start(gw, principal_of(gw, kept))
    credential_id = revoked.split("_")[1]
    with gw.sessions() as db, db.begin():
        credentials.revoke(
            db, registry=gw.registry, credential_id=credential_id, actor=audit.OPERATOR
        )
    for started in two:
        stored = row(gw, started.id_hash)
        assert stored.ended_at is not None and stored.end_reason == "credential-revoked"
        with pytest.raises(web_sessions.SessionEnded) as ended:
            web_sessions.resolve(gw, started.session_id)
        assert ended.value.message == (
            f"credential {credential_id} is revoked; ask the operator for a new token"
        )
    assert row(gw, other.id_hash).ended_at is None
    web_sessions.resolve(gw, other.session_id)
    ended_events = events(gw, "session-ended")
    assert sorted(e["details"]["session"] for e in ended_events) == sorted(
        s.id_hash[:16] for s in two
    )
    assert {e["actor"]["role"] for e in ended_events} == {"operator"}
    assert {e["details"]["reason"] for e in ended_events} == {"credential-revoked"}


def test_terminating_an_agreement_ends_its_parties_sessions(gw: Gateway) -> None:
    uploader = start(gw, principal_of(gw, issue(gw, role="uploader", party=DISTRICT)))
    reviewer = start(gw, principal_of(gw, issue(gw, role="reviewer", party=None)))
    gw.terminate(AGREEMENT, actor=audit.OPERATOR, reason="test")
    assert row(gw, uploader.id_hash).end_reason == "credential-revoked"
    # A reviewer's token outlives the agreement (reviewing its log is the job): so does
    # the session.
    assert row(gw, reviewer.id_hash).ended_at is None


def test_a_session_ends_once_and_a_new_sign_in_replaces_the_old(gw: Gateway) -> None:
    principal = principal_of(gw, issue(gw, role="reviewer", party=None))
    first = start(gw, principal)
    assert web_sessions.end(gw, first.session_id, reason="signed-out")
    assert not web_sessions.end(gw, first.session_id, reason="signed-out")
    assert [e["details"]["reason"] for e in events(gw, "session-ended")] == ["signed-out"]
    with pytest.raises(web_sessions.SessionEnded) as ended:
        web_sessions.resolve(gw, first.session_id)
    assert ended.value.reason == "signed-out"

    second = start(gw, principal)
    third = start(gw, principal, replacing=second.session_id)
    assert row(gw, second.id_hash).end_reason == "replaced"
    assert row(gw, third.id_hash).ended_at is None


def test_rows_a_day_past_their_end_are_deleted_at_the_next_sign_in(gw: Gateway) -> None:
    principal = principal_of(gw, issue(gw, role="reviewer", party=None))
    long_ago = datetime.now(UTC) - timedelta(days=2)
    old = start(gw, principal, now=long_ago)
    start(gw, principal)
    with gw.reads() as db:
        hashes = db.scalars(select(WebSession.id_hash)).all()
    assert old.id_hash not in hashes and len(hashes) == 1


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (1800, "30 minutes"),
        (43200, "12 hours"),
        (3600, "1 hour"),
        (90, "90 seconds"),
        (1, "1 second"),
    ],
)
def test_durations_are_said_in_words(seconds: int, words: str) -> None:
    assert web_sessions.duration(seconds) == words


def test_an_oidc_session_without_a_sign_in_mapping_ends(gw: Gateway) -> None:
    """An OIDC session's claims go through gateway.oidc's mapping on every request; with
    no mapping configured (single sign-on turned off since), it fails closed."""
    principal = Principal(
        credential_id="oidc_" + "0" * 24, role="reviewer", party=None, agreements=frozenset()
    )
    with gw.sessions() as db, db.begin(), pytest.raises(ValueError, match="'iss' and 'sub'"):
        web_sessions.start(
            db,
            loaded=gw.registry.agreements,
            principal=principal,
            kind="oidc",
            timeouts=web_sessions.Timeouts.of(gw),
            oidc_claims={"sub": "someone"},
        )
    with gw.sessions() as db, db.begin():
        started = web_sessions.start(
            db,
            loaded=gw.registry.agreements,
            principal=principal,
            kind="oidc",
            timeouts=web_sessions.Timeouts.of(gw),
            oidc_claims={"iss": "https://idp.example.org", "sub": "someone", "groups": []},
        )
    stored = row(gw, started.id_hash)
    assert (stored.issuer, stored.subject) == ("https://idp.example.org", "someone")
    with pytest.raises(web_sessions.SessionEnded) as ended:
        web_sessions.resolve(gw, started.session_id)
    assert ended.value.reason == "mapping-removed"
    assert row(gw, started.id_hash).end_reason == "mapping-removed"


def test_a_form_token_belongs_to_one_session_not_to_the_token(gw: Gateway) -> None:
    """Two sign-ins with one token are two sessions: a form of one cannot act in the
    other (CSRF tokens are bound to the session id)."""
    from fastapi.testclient import TestClient

    from gateway.app import create_app
    from tests.conftest import web_sign_in

    token = issue(gw, role="reviewer", party=None)
    app = create_app(gw.settings)
    with (
        TestClient(app, follow_redirects=False) as first,
        TestClient(app, follow_redirects=False) as second,
    ):
        web_sign_in(first, token)
        kept = web_sign_in(second, token)

        def csrf(client: TestClient) -> str:
            found = re.search(r'name="csrf" value="([0-9a-f]+)"', client.get("/web").text)
            assert found
            return found[1]

        refused = second.post("/web/sign-out", data={"csrf": csrf(first)})
        assert refused.status_code == 403 and "security token" in refused.text
        assert row(gw, hashlib.sha256(kept.encode()).hexdigest()).ended_at is None
        signed_out = second.post("/web/sign-out", data={"csrf": csrf(second)})
        assert signed_out.status_code == 303
        assert row(gw, hashlib.sha256(kept.encode()).hexdigest()).end_reason == "signed-out"
