"""Credentials and API hardening: tokens are stored as keyed hashes, refused when they
should be, audited; the API limits bodies, checks content types, rate-limits failed
sign-ins, adds security headers, keeps CORS off and never shows a stack trace."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from sqlalchemy import select, text, update

from gateway import audit, credentials
from gateway.api.hardening import SECURITY_HEADERS
from gateway.app import create_app
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway
from gateway.errors import NotFound, PolicyViolation, SchemaError, Unauthenticated
from gateway.lockout import FailureLimiter
from gateway.storage.tables import AuditEvent, AuthFailure, Credential
from tests.conftest import (
    AGREEMENT,
    DISTRICT,
    EPP,
    analyst,
    bearer,
    evaluations_csv,
    issue_token,
    reviewer,
    settings_env,
    uploader,
)

OTHER = "calibration-lakeshore-riverbend"


def cli(settings: Settings, *args: str) -> Any:
    result = CliRunner().invoke(main, list(args), env=settings_env(settings))
    return result


def events(gateway: Gateway, kind: str) -> list[dict[str, Any]]:
    with gateway.sessions() as session:
        return [audit.event_view(e) for e in session.scalars(audit.query_events(kind=kind))]


def secret_of(token: str) -> str:
    return token.split("_", 2)[2]


# --- issuing, listing, revoking ---------------------------------------------------------


def test_cli_token_lifecycle_stores_only_a_keyed_hash(gateway: Gateway, settings: Settings) -> None:
    made = cli(
        settings, "tokens", "create", "--agreement", AGREEMENT, "--party", EPP,
        "--role", "analyst", "--json",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    issued = json.loads(made.stdout)
    token, token_id = issued["token"], issued["id"]
    assert token.startswith(f"gw_{token_id}_") and len(secret_of(token)) >= 43
    # Valid through the agreement's last day by default.
    assert issued["expires_at"].startswith("2029-09-01")

    # The secret is nowhere in the database: not in the credentials table, not in the log.
    with gateway.sessions() as session:
        stored = session.get(Credential, token_id)
        assert stored is not None and stored.role == "analyst" and stored.party == EPP
        assert secret_of(token) not in stored.secret_hash and len(stored.secret_hash) == 64
        dump = "\n".join(
            str(row) for table in ("credentials", "credential_agreements", "audit_events")
            for row in session.execute(text(f"SELECT * FROM {table}"))
        )  # fmt: skip
    assert token_id in dump and secret_of(token) not in dump

    listed = cli(settings, "tokens", "list", "--json")
    assert listed.exit_code == 0
    rows = json.loads(listed.stdout)
    assert [(r["id"], r["status"], r["agreements"]) for r in rows] == [
        (token_id, "active", [AGREEMENT])
    ]
    assert secret_of(token) not in listed.stdout and "hash" not in listed.stdout

    with TestClient(create_app(settings), headers=bearer(token)) as client:
        assert client.get("/v1/agreements").status_code == 200
        revoked = cli(settings, "tokens", "revoke", token_id, "--json")
        assert revoked.exit_code == 0 and json.loads(revoked.stdout)["status"] == "revoked"
        after = client.get("/v1/agreements")
        assert after.status_code == 401 and "revoked" in after.json()["error"]["message"]
    again = cli(settings, "tokens", "revoke", token_id)
    assert again.exit_code != 0 and "already revoked" in again.stderr
    unknown = cli(settings, "tokens", "revoke", "0000000000000000")
    assert unknown.exit_code == NotFound.exit_code and "no credential" in unknown.stderr

    issued_events = events(gateway, "credential-issued")
    revoked_events = events(gateway, "credential-revoked")
    assert [e["details"]["id"] for e in issued_events] == [token_id]
    assert issued_events[0]["agreement"]["id"] == AGREEMENT
    assert [e["details"]["id"] for e in revoked_events] == [token_id]
    assert all(e["actor"]["role"] == "operator" for e in issued_events + revoked_events)


def test_a_reviewer_token_may_cover_several_agreements_and_is_logged_under_each(
    gateway: Gateway, settings: Settings
) -> None:
    made = cli(
        settings, "tokens", "create", "--agreement", AGREEMENT, "--agreement", OTHER,
        "--role", "reviewer", "--json",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    issued = json.loads(made.stdout)
    assert issued["agreements"] == [AGREEMENT, OTHER] and issued["expires_at"] is None
    logged = events(gateway, "credential-issued")
    assert sorted(e["agreement"]["id"] for e in logged) == sorted([AGREEMENT, OTHER])
    only_other = cli(settings, "tokens", "list", "--agreement", OTHER, "--json")
    assert [r["id"] for r in json.loads(only_other.stdout)] == [issued["id"]]


@pytest.mark.parametrize(
    ("args", "error", "words"),
    [
        (["--agreement", AGREEMENT, "--agreement", OTHER, "--party", EPP, "--role", "analyst"],
         SchemaError, "only reviewers"),
        (["--agreement", AGREEMENT, "--role", "uploader"], SchemaError, "needs --party"),
        (["--agreement", AGREEMENT, "--party", "nobody", "--role", "analyst"],
         NotFound, "has no party"),
        (["--agreement", "no-such-agreement", "--party", EPP, "--role", "analyst"],
         NotFound, "no agreement"),
        (["--agreement", AGREEMENT, "--party", EPP, "--role", "analyst",
          "--expires", "2020-01-01"], SchemaError, "already passed"),
    ],
)  # fmt: skip
def test_tokens_that_would_be_wrong_are_not_made(
    gateway: Gateway, settings: Settings, args: list[str], error: type, words: str
) -> None:
    result = cli(settings, "tokens", "create", *args)
    assert result.exit_code == error.exit_code, result.output
    assert words in result.stderr
    with gateway.sessions() as session:
        assert session.scalars(select(Credential)).all() == []


def test_an_uploader_token_needs_a_party_that_provides_data(
    gateway: Gateway, settings: Settings
) -> None:
    # With the EPP's dataset taken out of the agreement, an EPP uploader token would
    # allow nothing, so it is not made.
    agreement = gateway.agreement(AGREEMENT)
    stripped = agreement.model_copy(
        update={"datasets": [d for d in agreement.datasets if d.provided_by != EPP]}
    )
    gateway.registry.agreements[AGREEMENT] = stripped
    with gateway.sessions() as session, pytest.raises(PolicyViolation, match="provides no"):
        credentials.issue(
            session,
            master_key=gateway.master_key,
            registry=gateway.registry,
            agreement_ids=[AGREEMENT],
            role="uploader",
            party=EPP,
            expires=None,
            actor=audit.OPERATOR,
        )


def test_no_token_for_a_terminated_agreement(gateway: Gateway, settings: Settings) -> None:
    gateway.terminate(AGREEMENT, actor=audit.OPERATOR, reason="test")
    result = cli(settings, "tokens", "create", "--agreement", AGREEMENT, "--party", EPP,
                 "--role", "analyst")  # fmt: skip
    assert result.exit_code == PolicyViolation.exit_code and "terminated" in result.stderr


# --- authenticating ------------------------------------------------------------------------


def _authenticate(gateway: Gateway, token: str | None) -> credentials.Principal:
    with gateway.sessions() as session:
        return credentials.authenticate(session, gateway.master_key, token)


def test_authentication_checks_the_secret_expiry_and_revocation(
    gateway: Gateway, settings: Settings
) -> None:
    token = issue_token(settings, role="analyst", party=EPP)
    principal = _authenticate(gateway, token)
    assert (principal.role, principal.party, principal.agreements) == (
        "analyst",
        EPP,
        frozenset({AGREEMENT}),
    )
    token_id = token.split("_")[1]
    tampered = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (None, "", tampered, token + "x", token.replace("gw_", "xx_"), "gw_" + token_id):
        with pytest.raises(Unauthenticated) as refused:
            _authenticate(gateway, bad)
        if bad:
            assert secret_of(token) not in refused.value.message
    with gateway.sessions() as session, session.begin():
        session.execute(
            update(Credential)
            .where(Credential.id == token_id)
            .values(expires_at=datetime.now(UTC) - timedelta(seconds=1))
        )
    with pytest.raises(Unauthenticated, match="expired"):
        _authenticate(gateway, token)


def test_a_token_is_only_valid_with_the_master_key_it_was_made_under(
    gateway: Gateway, settings: Settings
) -> None:
    """The stored hash is keyed: the same table under another master key checks nothing."""
    token = issue_token(settings, role="reviewer", party=None)
    other_key = type(gateway.master_key)(material=bytes(32))
    with gateway.sessions() as session, pytest.raises(Unauthenticated):
        credentials.authenticate(session, other_key, token)


@hyp_settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.text(max_size=200))
def test_no_string_but_an_issued_token_authenticates(gateway: Gateway, garbage: str) -> None:
    with pytest.raises(Unauthenticated):
        _authenticate(gateway, garbage)
    with pytest.raises(Unauthenticated):
        _authenticate(gateway, "gw_0123456789abcdef_" + garbage)


# --- refusals over HTTP --------------------------------------------------------------------


def test_refusals_are_audited_with_who_and_which_route(
    gateway: Gateway, settings: Settings
) -> None:
    headers = uploader(settings)
    with TestClient(create_app(settings)) as client:
        missing = client.get(f"/v1/agreements/{AGREEMENT}/budget")
        denied = client.get(f"/v1/agreements/{AGREEMENT}/budget", headers=headers)
    assert missing.status_code == 401 and denied.status_code == 403
    refused = events(gateway, "access-refused")
    assert [e["details"]["status"] for e in refused] == [401, 403]
    assert {e["details"]["route"] for e in refused} == {"/v1/agreements/{agreement_id}/budget"}
    assert (
        refused[0]["actor"]["role"] == "anonymous" and refused[0]["actor"]["credential_id"] is None
    )
    assert refused[1]["actor"]["role"] == "uploader" and refused[1]["actor"]["party"] == DISTRICT
    assert refused[1]["actor"]["credential_id"] == headers["Authorization"].split("_")[1]
    assert all(e["agreement"]["id"] == AGREEMENT for e in refused)


def test_reviewers_see_only_their_agreements_events(gateway: Gateway, settings: Settings) -> None:
    with gateway.sessions() as session, session.begin():
        for agreement_id in (AGREEMENT, OTHER):
            audit.append_event(
                session,
                kind="key-rotated",
                actor=audit.OPERATOR,
                details={"marker": agreement_id},
                agreement_id=agreement_id,
            )
    own = reviewer(settings)
    both = reviewer(settings, agreements=(AGREEMENT, OTHER))
    with TestClient(create_app(settings)) as client:
        mine = client.get("/v1/audit/events", params={"kind": "key-rotated"}, headers=own)
        theirs = client.get("/v1/audit/events", params={"agreement": OTHER}, headers=own)
        every = client.get("/v1/audit/events", params={"kind": "key-rotated"}, headers=both)
        csv_export = client.get("/v1/audit/events", params={"format": "csv"}, headers=own)
    assert [e["details"]["marker"] for e in mine.json()["events"]] == [AGREEMENT]
    assert theirs.status_code == 403
    assert [e["details"]["marker"] for e in every.json()["events"]] == [AGREEMENT, OTHER]
    assert OTHER not in csv_export.text and AGREEMENT in csv_export.text


def test_an_uploader_cannot_upload_another_partys_dataset_and_nothing_is_spooled(
    gateway: Gateway, settings: Settings, tmp_path: Path
) -> None:
    path, _ = evaluations_csv(tmp_path / "e.csv")
    with TestClient(create_app(settings), headers=uploader(settings, party=EPP)) as client:
        response = client.post(
            f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads",
            files={"file": ("e.csv", path.read_bytes(), "text/csv")},
        )
    assert response.status_code == 403 and "provided by" in response.json()["error"]["message"]
    tmp = settings.data_dir / "tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
    assert events(gateway, "upload-accepted") == []


def test_an_analyst_releases_only_as_its_own_party(
    loaded: tuple[Gateway, list[dict[str, Any]]], settings: Settings
) -> None:
    gateway, _ = loaded  # evaluations uploaded: a release over nothing is refused
    body = {"datasets": ["evaluations"], "measure": {"kind": "count"}, "epsilon": 0.1}
    with TestClient(create_app(settings), headers=analyst(settings, party=DISTRICT)) as client:
        done = client.post(f"/v1/agreements/{AGREEMENT}/releases", json=body)
        budget = client.get(f"/v1/agreements/{AGREEMENT}/budget").json()
    assert done.status_code == 200, done.text
    assert budget["parties"][DISTRICT]["spent"] == 0.1 and set(budget["parties"]) == {DISTRICT}
    released = events(gateway, "release")
    assert [e["actor"]["party"] for e in released] == [DISTRICT]
    assert released[0]["actor"]["credential_id"]


# --- failed-authentication limit ------------------------------------------------------------


def test_failed_authentications_lock_the_client_out(gateway: Gateway, settings: Settings) -> None:
    limited = settings.model_copy(update={"auth_failure_limit": 3})
    good = analyst(settings)
    with TestClient(create_app(limited)) as client:
        bad = {"Authorization": "Bearer gw_0123456789abcdef_guess"}
        statuses = [client.get("/v1/agreements", headers=bad).status_code for _ in range(3)]
        locked = client.get("/v1/agreements", headers=good)
        still = client.get("/v1/agreements", headers=bad)
    assert statuses == [401, 401, 401]
    assert locked.status_code == 429 and still.status_code == 429
    assert locked.json()["error"]["code"] == "too_many_attempts"
    assert int(locked.headers["retry-after"]) >= 1
    refused = events(gateway, "access-refused")
    # Three failures are logged, the third says the lockout began; locked requests are not.
    assert len(refused) == 3 and "locked out" in refused[-1]["details"]["reason"]


def test_the_lockout_ends_when_the_window_passes(gateway: Gateway) -> None:
    start = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
    limiter = FailureLimiter(limit=2, window_seconds=60)

    def fail(client: str, at: float) -> bool:
        with gateway.sessions() as session, session.begin():
            return limiter.record_failure(session, client, now=start + timedelta(seconds=at))

    def wait(client: str, at: float) -> int | None:
        with gateway.sessions() as session:
            return limiter.retry_after(session, client, now=start + timedelta(seconds=at))

    assert fail("a", 0) is False
    assert fail("a", 30) is True
    assert wait("a", 30) == 31  # until the first failure leaves the window
    assert wait("b", 30) is None  # per client
    assert wait("a", 61) is None
    assert fail("a", 200) is False  # the old failures are gone: a fresh count
    with gateway.sessions() as session:
        kept = session.scalars(select(AuthFailure.client)).all()
    assert kept == ["a"]  # rows that left the window are deleted
    # Another client's old failures go too: no address stays once its window passed.
    assert fail("b", 400) is False
    with gateway.sessions() as session:
        kept = session.scalars(select(AuthFailure.client)).all()
    assert kept == ["b"]


# --- request limits, content types, headers, CORS, errors ----------------------------------


@pytest.fixture
def small_client(gateway: Gateway, settings: Settings) -> Iterator[tuple[TestClient, Settings]]:
    small = settings.model_copy(update={"max_request_bytes": 2_000, "max_upload_bytes": 1_000})
    with TestClient(create_app(small)) as client:
        yield client, small


def test_request_bodies_over_the_limit_are_refused(
    small_client: tuple[TestClient, Settings], gateway: Gateway
) -> None:
    client, small = small_client
    headers = analyst(small)
    url = f"/v1/agreements/{AGREEMENT}/releases"
    padded = {
        "datasets": ["evaluations"],
        "measure": {"kind": "count"},
        "epsilon": 0.1,
        "filters": [{"field": "school_year", "op": "in", "value": list(range(1000))}],
    }
    declared = client.post(url, json=padded, headers=headers)
    assert declared.status_code == 413
    assert declared.json()["error"]["code"] == "request_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield json.dumps(padded).encode()

    streamed = client.post(
        url, content=chunks(), headers={**headers, "Content-Type": "application/json"}
    )
    assert streamed.status_code == 413
    assert events(gateway, "release") == []

    upload_headers = uploader(small)
    big = b"MEPID,SY\n" + b"1234567,2025\n" * 6000
    too_big = client.post(
        f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads",
        files={"file": ("big.csv", big, "text/csv")},
        headers=upload_headers,
    )
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "upload_too_large"
    reason = events(gateway, "upload-refused")[-1]["details"]["reason"]
    assert "file is larger than the" in reason and "split it" in reason
    assert "GATEWAY_" not in too_big.json()["error"]["message"]  # the uploader's words
    assert list((small.data_dir / "tmp").iterdir()) == []


def test_wrong_content_types_are_refused(small_client: tuple[TestClient, Settings]) -> None:
    client, small = small_client
    text_body = client.post(
        f"/v1/agreements/{AGREEMENT}/releases",
        content=b'{"datasets": ["evaluations"]}',
        headers={**analyst(small), "Content-Type": "text/plain"},
    )
    assert text_body.status_code == 415
    assert text_body.json()["error"]["code"] == "unsupported_media_type"
    upload_url = f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads"
    headers = uploader(small)
    as_csv = client.post(
        upload_url, content=b"a,b\n", headers={**headers, "Content-Type": "text/csv"}
    )
    assert as_csv.status_code == 415
    # Found by the fuzz run: multipart without a boundary was a 500.
    no_boundary = client.post(
        upload_url, content=b"a,b\n", headers={**headers, "Content-Type": "multipart/form-data"}
    )
    assert no_boundary.status_code == 400
    assert no_boundary.json()["error"]["code"] == "bad_upload_request"


def test_every_response_carries_the_security_headers(
    small_client: tuple[TestClient, Settings],
) -> None:
    client, small = small_client
    responses = [
        client.get("/healthz"),
        client.get("/v1/agreements", headers=reviewer(small)),
        client.get("/v1/agreements"),  # 401
        client.get("/no/such/page"),  # 404
        client.post(f"/v1/agreements/{AGREEMENT}/releases", content=b"x" * 3000),  # 413
    ]
    assert [r.status_code for r in responses] == [200, 200, 401, 404, 413]
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers[name] == value, (response.request.url, name)
        assert "server" not in response.headers or "uvicorn" not in response.headers["server"]
    assert "error" in responses[3].json()


def test_cors_is_off_unless_origins_are_configured(gateway: Gateway, settings: Settings) -> None:
    preflight = {
        "Origin": "https://portal.example.org",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    with TestClient(create_app(settings)) as client:
        closed = client.options("/v1/agreements", headers=preflight)
        simple = client.get("/healthz", headers={"Origin": "https://portal.example.org"})
    assert "access-control-allow-origin" not in closed.headers
    assert "access-control-allow-origin" not in simple.headers
    opened = settings.model_copy(update={"cors_origins": ["https://portal.example.org"]})
    with TestClient(create_app(opened)) as client:
        allowed = client.options("/v1/agreements", headers=preflight)
        other = client.options(
            "/v1/agreements", headers={**preflight, "Origin": "https://evil.example.com"}
        )
    assert allowed.headers["access-control-allow-origin"] == "https://portal.example.org"
    assert "access-control-allow-origin" not in other.headers


def test_an_unexpected_error_shows_no_trace_and_logs_no_message(
    gateway: Gateway, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(settings)
    secret_value = "482913-raw-identifier"

    def broken() -> None:
        raise RuntimeError(f"failed on {secret_value} in {settings.data_dir}")

    app.add_api_route("/v1/broken", broken)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/broken")
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    for leak in (secret_value, str(settings.data_dir), "Traceback", "RuntimeError"):
        assert leak not in response.text
    logged = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert "RuntimeError" in logged and secret_value not in logged


def test_expiry_is_inclusive_of_the_given_day(gateway: Gateway) -> None:
    today = datetime.now(UTC).date()
    with gateway.sessions() as session, session.begin():
        issued = credentials.issue(
            session,
            master_key=gateway.master_key,
            registry=gateway.registry,
            agreement_ids=[AGREEMENT],
            role="analyst",
            party=EPP,
            expires=today,
            actor=audit.OPERATOR,
        )
    assert issued.expires_at == datetime.combine(
        today + timedelta(days=1), datetime.min.time(), tzinfo=UTC
    )
    assert _authenticate(gateway, issued.token).credential_id == issued.id
    with gateway.sessions() as session:
        row = session.scalars(select(AuditEvent).where(AuditEvent.kind == "credential-issued"))
        assert secret_of(issued.token) not in "".join(e.body for e in row)


def test_termination_revokes_the_parties_tokens_but_not_the_reviewers(
    gateway: Gateway, settings: Settings
) -> None:
    party_token = issue_token(settings, role="analyst", party=EPP)
    review_token = issue_token(settings, role="reviewer", party=None)
    receipt = gateway.terminate(AGREEMENT, actor=audit.OPERATOR, reason="test")
    assert receipt["credentials_revoked"] == [party_token.split("_")[1]]
    with pytest.raises(Unauthenticated, match="revoked"):
        _authenticate(gateway, party_token)
    assert _authenticate(gateway, review_token).role == "reviewer"
    with TestClient(create_app(settings), headers=bearer(review_token)) as client:
        log = client.get("/v1/audit/events", params={"kind": "data-destroyed"})
    assert log.status_code == 200 and len(log.json()["events"]) == 1
    revoked = events(gateway, "credential-revoked")
    assert [e["details"]["reason"] for e in revoked] == ["agreement terminated"]


def test_a_party_token_cannot_outlive_its_agreement(gateway: Gateway, settings: Settings) -> None:
    ends = gateway.agreement(AGREEMENT).ends
    later = (ends + timedelta(days=1)).isoformat()
    result = cli(settings, "tokens", "create", "--agreement", AGREEMENT, "--party", EPP,
                 "--role", "analyst", "--expires", later)  # fmt: skip
    assert result.exit_code == SchemaError.exit_code and "after the agreement ends" in result.stderr


def test_guessing_against_a_real_credential_is_traced_to_it(
    gateway: Gateway, settings: Settings
) -> None:
    token = issue_token(settings, role="reviewer", party=None)
    token_id = token.split("_")[1]
    with TestClient(create_app(settings)) as client:
        guess = client.get("/v1/agreements", headers=bearer(f"gw_{token_id}_wrongsecret"))
    assert guess.status_code == 401 and token_id not in guess.text  # the caller learns nothing
    refused = events(gateway, "access-refused")
    assert refused[-1]["actor"]["credential_id"] == token_id


def test_a_list_setting_that_is_not_json_is_a_one_line_configuration_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from gateway.config import load_settings
    from gateway.errors import ConfigurationError

    monkeypatch.setenv("GATEWAY_CORS_ORIGINS", "https://portal.example.org")
    with pytest.raises(ConfigurationError, match="cors_origins") as refused:
        load_settings()
    assert "\n" not in refused.value.message


def test_a_huge_audit_offset_is_refused_not_a_server_error(
    gateway: Gateway, settings: Settings
) -> None:
    # Found by the fuzz run: an offset past 64 bits was a 500 (OverflowError).
    with TestClient(create_app(settings), headers=reviewer(settings)) as client:
        response = client.get("/v1/audit/events", params={"offset": 10**21})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "invalid_request"


def test_a_large_text_part_is_refused_and_nothing_is_left(
    gateway: Gateway, settings: Settings
) -> None:
    """Found in review: text parts were held in memory up to the upload limit."""
    from gateway.api.uploads import MAX_TEXT_PART_BYTES

    boundary = "b0undary"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\n'.encode()
        + b"x" * (MAX_TEXT_PART_BYTES + 1)
        + f'\r\n--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        'filename="e.csv"\r\nContent-Type: text/csv\r\n\r\nMEPID,SY\r\n'.encode()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    with TestClient(create_app(settings), headers=uploader(settings)) as client:
        response = client.post(
            f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads",
            content=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    assert response.status_code == 400
    assert "text part" in response.json()["error"]["message"]
    assert list((settings.data_dir / "tmp").iterdir()) == []
    assert "text part" in events(gateway, "upload-refused")[-1]["details"]["reason"]
