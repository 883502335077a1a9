"""The audit chain: appends link, and any change to a stored event is detected."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from sqlalchemy import text

from gateway import audit
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway
from gateway.errors import AuditChainBroken
from gateway.storage.tables import AuditEvent
from tests.conftest import settings_env


def add_events(gw: Gateway, count: int) -> None:
    with gw.sessions() as session, session.begin():
        for i in range(count):
            audit.append_event(session, kind="key-created", actor=audit.OPERATOR, details={"n": i})


def run_verify(settings: Settings) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["audit", "verify"], env=settings_env(settings))
    return result.exit_code, result.stdout, result.stderr


def test_fresh_chain_verifies_and_starts_with_init_and_agreements(
    gateway: Gateway, settings: Settings
) -> None:
    code, out, _ = run_verify(settings)
    assert code == 0 and out.startswith("ok:")
    with gateway.sessions() as session:
        kinds = [e.kind for e in session.scalars(audit.query_events())]
    assert kinds[0] == "gateway-initialised"
    assert kinds.count("agreement-loaded") == len(gateway.registry.agreements)
    assert kinds.count("key-created") == len(gateway.registry.agreements)


def test_each_event_links_to_the_one_before(gateway: Gateway) -> None:
    add_events(gateway, 5)
    with gateway.sessions() as session:
        events = session.scalars(audit.query_events()).all()
    previous = audit.GENESIS_HASH
    for event in events:
        body = json.loads(event.body)
        assert body["prev_hash"] == previous == event.prev_hash
        previous = event.hash


def tamper(gw: Gateway, *statements: str) -> None:
    with gw.engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))


def expect_broken(settings: Settings, seq: int | None, words: str) -> None:
    code, out, err = run_verify(settings)
    assert code == AuditChainBroken.exit_code
    where = f"event {seq}" if seq is not None else "chain head"
    assert any(line.startswith(where) and words in line for line in out.splitlines()), out
    assert err.startswith("gateway: error: audit log verification failed") and err.count("\n") == 1


def test_edited_event_is_detected(gateway: Gateway, settings: Settings) -> None:
    add_events(gateway, 6)
    with gateway.sessions() as session:
        target = next(e.seq for e in session.scalars(audit.query_events()) if '"n":3' in e.body)
    with gateway.engine.begin() as connection:
        connection.execute(
            text("UPDATE audit_events SET body = replace(body, :old, :new) WHERE seq = :seq"),
            {"old": '"n":3', "new": '"n":4', "seq": target},
        )
    expect_broken(settings, target, "content was changed")


def test_edited_filter_column_is_detected(gateway: Gateway, settings: Settings) -> None:
    add_events(gateway, 3)
    tamper(gateway, "UPDATE audit_events SET kind = 'key-rotated' WHERE seq = 7")
    expect_broken(settings, 7, "column kind was changed")


def test_deleted_event_is_detected(gateway: Gateway, settings: Settings) -> None:
    add_events(gateway, 6)
    tamper(gateway, "DELETE FROM audit_events WHERE seq = 8")
    expect_broken(settings, 9, "deleted")


def test_inserted_event_is_detected(gateway: Gateway, settings: Settings) -> None:
    add_events(gateway, 4)
    with gateway.sessions() as session:
        donor = session.get(AuditEvent, 5)
        assert donor is not None
        body = donor.body
    # Make room after event 5 and insert a forged event whose body and hash are
    # self-consistent (anyone can compute SHA-256); only its links can betray it.
    forged = json.loads(body)
    forged["seq"], forged["event_id"] = 6, "00000000-0000-0000-0000-000000000000"
    forged["prev_hash"] = "f" * 64
    forged_text = audit.canonical_json(forged)
    forged_hash = audit._sha256(forged_text)
    with gateway.engine.begin() as connection:
        count = connection.execute(text("SELECT max(seq) FROM audit_events")).scalar_one()
        for seq in range(count, 5, -1):
            connection.execute(text(f"UPDATE audit_events SET seq = {seq + 1} WHERE seq = {seq}"))
        connection.execute(
            text(
                "INSERT INTO audit_events (seq, event_id, occurred_at, kind, agreement_id, "
                "actor_party, actor_role, body, prev_hash, hash) SELECT 6, :eid, occurred_at, "
                "kind, agreement_id, actor_party, actor_role, :body, :prev, :hash "
                "FROM audit_events WHERE seq = 5"
            ),
            {"eid": forged["event_id"], "body": forged_text, "prev": "f" * 64, "hash": forged_hash},
        )
    expect_broken(settings, 6, "does not follow the event before it")
    _, out, _ = run_verify(settings)
    assert "event 7: stored at position 7 but written as event 6" in out


def test_reordered_events_are_detected(gateway: Gateway, settings: Settings) -> None:
    add_events(gateway, 5)
    tamper(
        gateway,
        "UPDATE audit_events SET seq = -1 WHERE seq = 7",
        "UPDATE audit_events SET seq = 7 WHERE seq = 8",
        "UPDATE audit_events SET seq = 8 WHERE seq = -1",
    )
    expect_broken(settings, 7, "reordered")


def test_truncated_log_is_detected(gateway: Gateway, settings: Settings) -> None:
    add_events(gateway, 3)
    with gateway.sessions() as session:
        last = session.scalars(audit.query_events()).all()[-1].seq
    tamper(gateway, f"DELETE FROM audit_events WHERE seq = {last}")
    expect_broken(settings, None, "removed from the end")


@hyp_settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_byte_change_in_any_body_is_detected(gateway: Gateway, data: st.DataObject) -> None:
    with gateway.sessions() as session:
        events = session.scalars(audit.query_events()).all()
    target = data.draw(st.sampled_from(events))
    position = data.draw(st.integers(0, len(target.body) - 1))
    original = target.body
    replacement = data.draw(st.characters(codec="ascii").filter(lambda c: c != original[position]))
    changed = original[:position] + replacement + original[position + 1 :]
    with gateway.engine.begin() as connection:
        connection.execute(
            text("UPDATE audit_events SET body = :b WHERE seq = :s"),
            {"b": changed, "s": target.seq},
        )
    try:
        with gateway.sessions() as session:
            result = audit.verify_chain(session)
        assert not result.ok
        assert result.problems[0].seq == target.seq
    finally:
        with gateway.engine.begin() as connection:
            connection.execute(
                text("UPDATE audit_events SET body = :b WHERE seq = :s"),
                {"b": original, "s": target.seq},
            )


def test_unknown_event_kind_is_refused(gateway: Gateway) -> None:
    with gateway.sessions() as session, session.begin(), pytest.raises(ValueError):
        audit.append_event(session, kind="made-up", actor=audit.OPERATOR, details={})


def test_verify_json_prints_one_document_when_broken(gateway: Gateway, settings: Settings) -> None:
    tamper(gateway, "DELETE FROM audit_events WHERE seq = 3")
    result = CliRunner().invoke(main, ["audit", "verify", "--json"], env=settings_env(settings))
    assert result.exit_code == AuditChainBroken.exit_code
    report = json.loads(result.stdout)  # exactly one JSON document
    assert report["ok"] is False and report["problems"][0]["seq"] == 4
