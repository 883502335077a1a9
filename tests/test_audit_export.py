"""Signed checkpoints and offline bundles: every kind of tampering is found, and named."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import text

from gateway import audit, keys
from gateway.app import create_app
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway
from gateway.errors import MasterKeyError
from tests.conftest import reviewer, settings_env


def export(gw: Gateway, out: Path) -> Path:
    with gw.sessions() as session:
        audit.export_bundle(session, out, gw.signing_key)
    return out


def add_events(gw: Gateway, count: int) -> None:
    with gw.sessions() as session, session.begin():
        for i in range(count):
            audit.append_event(session, kind="key-created", actor=audit.OPERATOR, details={"n": i})


def lines(bundle: Path) -> list[str]:
    return (bundle / "events.jsonl").read_text().splitlines()


def write_lines(bundle: Path, rows: list[str]) -> None:
    (bundle / "events.jsonl").write_text("\n".join(rows) + "\n")


def problems(bundle: Path) -> list[str]:
    return [str(p) for p in audit.verify_bundle(bundle).problems]


def test_signing_key_is_made_and_kept_like_the_master_key(gateway: Gateway) -> None:
    path = gateway.settings.resolved_signing_key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(gateway.signing_key.fingerprint) == 64
    assert "PRIVATE" not in repr(gateway.signing_key)
    os.chmod(path, 0o644)
    with pytest.raises(MasterKeyError, match="group or others"):
        keys.load_signing_key(path)


def test_a_fresh_export_verifies_offline(gateway: Gateway, tmp_path: Path) -> None:
    add_events(gateway, 3)
    bundle = export(gateway, tmp_path / "bundle")
    assert sorted(p.name for p in bundle.iterdir()) == sorted(audit.BUNDLE_FILES)
    result = audit.verify_bundle(bundle)
    assert result.ok, result.problems
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["events"] == result.events_checked == len(lines(bundle))
    checkpoints = json.loads((bundle / "checkpoints.json").read_text())
    assert checkpoints[-1]["seq"] == manifest["events"]  # the export signed its last event


def test_edited_event_in_a_bundle_is_named(gateway: Gateway, tmp_path: Path) -> None:
    add_events(gateway, 4)
    bundle = export(gateway, tmp_path / "b")
    rows = lines(bundle)
    record = json.loads(rows[5])
    record["body"] = record["body"].replace('"role":"operator"', '"role":"reviewer"')
    rows[5] = json.dumps(record)
    write_lines(bundle, rows)
    assert any(
        p.startswith(f"event {record['seq']}: content was changed") for p in problems(bundle)
    )


def test_rewritten_chain_is_caught_by_the_signature(gateway: Gateway, tmp_path: Path) -> None:
    # An attacker edits an event and recomputes every hash after it: links all hold,
    # but the signed checkpoint no longer matches.
    add_events(gateway, 3)
    bundle = export(gateway, tmp_path / "b")
    rows = [json.loads(r) for r in lines(bundle)]
    previous = audit.GENESIS_HASH
    for index, record in enumerate(rows):
        body = json.loads(record["body"])
        if index == 2:
            body["details"] = {"forged": True}
        body["prev_hash"] = previous
        record["body"] = audit.canonical_json(body)
        record["hash"] = audit._sha256(record["body"])
        previous = record["hash"]
    write_lines(bundle, [json.dumps(r) for r in rows])
    found = problems(bundle)
    assert any("differs from the signed checkpoint" in p for p in found), found


def test_deleted_inserted_reordered_and_truncated_events_are_named(
    gateway: Gateway, tmp_path: Path
) -> None:
    add_events(gateway, 6)
    bundle = export(gateway, tmp_path / "b")
    original = lines(bundle)

    write_lines(bundle, original[:3] + original[4:])  # delete event 4
    assert any(p.startswith("event 5:") and "deleted" in p for p in problems(bundle))

    write_lines(bundle, [*original[:3], original[2], *original[3:]])  # insert a copy
    assert any(p.startswith("event 3:") for p in problems(bundle))

    swapped = [*original[:2], original[3], original[2], *original[4:]]  # reorder 3 and 4
    write_lines(bundle, swapped)
    assert any(p.startswith("event 4:") for p in problems(bundle))

    write_lines(bundle, original[:-2])  # truncate
    assert any("truncated" in p for p in problems(bundle))


def test_a_forged_signature_is_refused(gateway: Gateway, tmp_path: Path) -> None:
    bundle = export(gateway, tmp_path / "b")
    checkpoints = json.loads((bundle / "checkpoints.json").read_text())
    checkpoints[-1]["signature"] = "00" * 64
    (bundle / "checkpoints.json").write_text(json.dumps(checkpoints))
    assert any("signature is not valid" in p for p in problems(bundle))


def test_live_chain_rewritten_after_a_checkpoint_is_detected(gateway: Gateway) -> None:
    add_events(gateway, 3)
    with gateway.sessions() as session, session.begin():
        audit.sign_checkpoint(session, gateway.signing_key)
    with gateway.sessions() as session:
        events = session.scalars(audit.query_events()).all()
        target = events[-1]
        body = json.loads(target.body)
        body["details"] = {"forged": True}
        forged = audit.canonical_json(body)
        digest = audit._sha256(forged)
    with gateway.engine.begin() as connection:
        connection.execute(
            text("UPDATE audit_events SET body = :b, hash = :h WHERE seq = :s"),
            {"b": forged, "h": digest, "s": target.seq},
        )
        connection.execute(text("UPDATE audit_head SET hash = :h"), {"h": digest})
    with gateway.sessions() as session:
        assert audit.verify_chain(session).ok  # the links alone cannot see it...
        found = [str(p) for p in audit.verify_checkpoints(session, gateway.signing_key)]
    assert any("differs from the signed checkpoint" in p for p in found)  # ...the signature can


def test_cli_export_and_offline_verify(
    gateway: Gateway, settings: Settings, tmp_path: Path
) -> None:
    env = settings_env(settings)
    out = tmp_path / "bundle"
    exported = CliRunner().invoke(main, ["audit", "export", "--out", str(out), "--json"], env=env)
    assert exported.exit_code == 0, exported.output
    # Offline: no settings, no database, no key at all.
    ok = CliRunner().invoke(main, ["audit", "verify", "--bundle", str(out)], env={})
    assert ok.exit_code == 0 and ok.stdout.startswith("ok:")
    rows = lines(out)
    write_lines(out, rows[:1] + rows[2:])
    broken = CliRunner().invoke(main, ["audit", "verify", "--bundle", str(out), "--json"], env={})
    assert broken.exit_code != 0
    assert json.loads(broken.stdout)["problems"][0]["seq"] == 3
    again = CliRunner().invoke(main, ["audit", "export", "--out", str(out)], env=env)
    assert again.exit_code != 0 and "not empty" in again.stderr


def test_events_filter_by_party_and_export_as_csv_and_jsonl(
    gateway: Gateway, settings: Settings
) -> None:
    import csv
    import io

    from fastapi.testclient import TestClient

    from gateway.app import create_app

    with gateway.sessions() as session, session.begin():
        audit.append_event(
            session,
            kind="key-created",
            details={"n": 1},
            actor=audit.Actor(role="uploader", party="eastport-ps"),
            agreement_id="student-teaching-bayview-eastport",
        )
    env = settings_env(settings)
    out = CliRunner().invoke(
        main, ["audit", "list", "--party", "eastport-ps", "--format", "csv"], env=env
    )
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [r["actor_party"] for r in rows] == ["eastport-ps"]
    assert json.loads(rows[0]["details"]) == {"n": 1} and len(rows[0]["hash"]) == 64
    with TestClient(create_app(settings), headers=reviewer(settings)) as client:
        jsonl = client.get("/v1/audit/events", params={"party": "eastport-ps", "format": "jsonl"})
        assert jsonl.headers["content-type"].startswith("application/x-ndjson")
        records = [json.loads(line) for line in jsonl.text.splitlines()]
        assert [r["details"] for r in records] == [{"n": 1}]
        every = client.get("/v1/audit/events").json()["events"]
        paged = client.get("/v1/audit/events", params={"limit": 2, "offset": 1}).json()
        assert len(every) > 3
        assert [e["seq"] for e in paged["events"]] == [e["seq"] for e in every[1:3]]


def test_budget_history_lists_every_reservation(loaded: object, settings: Settings) -> None:
    from gateway.release.engine import request_release
    from gateway.release.query import parse_query
    from tests.conftest import AGREEMENT, EPP

    gw, _ = loaded  # type: ignore[misc]
    for epsilon in ("0.2", "0.3"):
        query = parse_query(
            {"datasets": ["evaluations"], "measure": {"kind": "count"}, "epsilon": epsilon}
        )
        request_release(
            gw,
            agreement_id=AGREEMENT,
            party=EPP,
            query=query,
            actor=audit.Actor(role="analyst", party=EPP),
        )
    out = CliRunner().invoke(
        main,
        ["budget", "--agreement", AGREEMENT, "--history", "--json"],
        env=settings_env(settings),
    )
    history = json.loads(out.stdout)["history"]
    assert [(h["party"], h["epsilon"], h["party_spent"]) for h in history] == [
        (EPP, "0.2", "0.2"),
        (EPP, "0.3", "0.5"),
    ]


def test_a_substituted_public_key_is_noticed(gateway: Gateway, tmp_path: Path) -> None:
    bundle = export(gateway, tmp_path / "b")
    keys.create_signing_key(tmp_path / "other.key")
    other = keys.load_signing_key(tmp_path / "other.key")
    (bundle / "public_key.pem").write_bytes(other.public_pem)
    found = problems(bundle)
    assert any("signed by another key" in p for p in found)
    assert any("not the one the manifest names" in p for p in found)
    assert audit.verify_bundle(bundle).public_key_fingerprint == other.fingerprint


def _roll_back_live_log(gw: Gateway, keep: int) -> None:
    """The attack signatures alone miss: cut the log back to event ``keep`` and remove
    every checkpoint after it, with the head set to match, so the shorter log verifies."""
    with gw.engine.begin() as connection:
        kept_hash = connection.execute(
            text("SELECT hash FROM audit_events WHERE seq = :s"), {"s": keep}
        ).scalar_one()
        connection.execute(text("DELETE FROM audit_events WHERE seq > :s"), {"s": keep})
        connection.execute(text("DELETE FROM audit_checkpoints WHERE seq > :s"), {"s": keep})
        connection.execute(
            text("UPDATE audit_head SET seq = :s, hash = :h"), {"s": keep, "h": kept_hash}
        )


def test_a_live_log_rolled_back_past_its_checkpoints_is_caught_by_an_anchor(
    gateway: Gateway, settings: Settings
) -> None:
    add_events(gateway, 3)
    with gateway.sessions() as session, session.begin():
        audit.sign_checkpoint(session, gateway.signing_key)
    keep = 3
    env = settings_env(settings)
    first = CliRunner().invoke(main, ["audit", "verify"], env=env)
    assert first.exit_code == 0, first.output
    anchor = first.stdout.split("anchor: ")[1].split()[0]  # the reviewer notes it
    add_events(gateway, 2)
    with gateway.sessions() as session, session.begin():
        audit.sign_checkpoint(session, gateway.signing_key)
    before_rollback = CliRunner().invoke(main, ["audit", "verify", "--anchor", anchor], env=env)
    assert before_rollback.exit_code == 0  # the log grew: the anchor still holds

    later = CliRunner().invoke(main, ["audit", "verify", "--json"], env=env)
    later_anchor = "{events_checked}:{head_hash}".format(**json.loads(later.stdout))
    _roll_back_live_log(gateway, keep)
    plain = CliRunner().invoke(main, ["audit", "verify"], env=env)
    assert plain.exit_code == 0  # without an anchor the shorter log looks sound...
    caught = CliRunner().invoke(main, ["audit", "verify", "--anchor", later_anchor], env=env)
    assert caught.exit_code == 8  # ...with the later anchor it does not
    assert "is missing: the log was cut back" in caught.stdout
    with TestClient(create_app(settings), headers=reviewer(settings)) as client:
        response = client.get("/v1/audit/verify", params={"anchor": later_anchor})
        malformed = client.get("/v1/audit/verify", params={"anchor": "12:not-a-hash"})
    assert response.status_code == 200 and response.json()["ok"] is False
    assert "cut back" in response.json()["problems"][0]["reason"]
    assert malformed.status_code == 422


def test_a_bundle_rolled_back_or_rewritten_since_an_earlier_one_is_caught(
    gateway: Gateway, tmp_path: Path
) -> None:
    add_events(gateway, 4)
    earlier = export(gateway, tmp_path / "earlier")
    add_events(gateway, 2)
    later = export(gateway, tmp_path / "later")
    assert audit.verify_bundle(later, anchors=[audit.Anchor.of_bundle(earlier)]).ok
    # Cut the later bundle back to before the earlier one ended, and drop the later
    # checkpoints and fix the manifest: on its own it verifies.
    manifest = json.loads((earlier / "manifest.json").read_text())
    # Back to a checkpoint older than the earlier bundle's end (the one signed at start).
    keep = max(
        c["seq"]
        for c in json.loads((earlier / "checkpoints.json").read_text())
        if c["seq"] < manifest["events"]
    )
    rows = lines(later)[:keep]
    write_lines(later, rows)
    checkpoints = [
        c for c in json.loads((later / "checkpoints.json").read_text()) if c["seq"] <= keep
    ]
    (later / "checkpoints.json").write_text(json.dumps(checkpoints))
    later_manifest = json.loads((later / "manifest.json").read_text())
    later_manifest.update(events=keep, head_hash=json.loads(rows[-1])["hash"])
    (later / "manifest.json").write_text(json.dumps(later_manifest))
    assert checkpoints and audit.verify_bundle(later).ok
    caught = CliRunner().invoke(
        main, ["audit", "verify", "--bundle", str(later), "--previous", str(earlier)], env={}
    )
    assert caught.exit_code == 8 and "cut back" in caught.stdout
    # A rewritten event the earlier bundle saw is caught too.
    forged = audit.Anchor(keep, "ab" * 32)
    found = [str(p) for p in audit.verify_bundle(later, anchors=[forged]).problems]
    assert found == [
        f"event {keep}: differs from the head hash noted earlier: the log was rewritten since"
    ]
