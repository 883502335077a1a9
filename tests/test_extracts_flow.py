"""Record-level extracts, end to end (issue 17 items 4 to 6): asked by the EPP's analyst,
decided by the district's approvers, downloaded once, traced, listed at termination.

One gateway per backend is stocked once for the module (generated data of the example
agreement, uploaded as each party); each test makes its own requests. The termination
test runs last: it ends the agreement.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select

from gateway import audit, credentials
from gateway.app import create_app
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway, initialise, utc_now
from gateway.credentials import Principal
from gateway.errors import AccessDenied, PolicyViolation
from gateway.extracts import approval, files
from gateway.storage.datasets import Educator
from gateway.storage.extracts import ExtractRequest
from tests.conftest import (
    AGREEMENT,
    BACKENDS,
    DISTRICT,
    EPP,
    Databases,
    DatabaseTemplates,
    make_settings,
    settings_env,
    upload_generated,
)

pytestmark = pytest.mark.xdist_group("extracts-flow")

EXTRACT = "completer_outcomes"
APPROVER_PERSON = "eastport-privacy-officer"
SECOND_APPROVER = "eastport-research-director"
REQUESTER_PERSON = "bayview-researcher"


@dataclass
class Stocked:
    settings: Settings
    gateway: Gateway
    folder: Path
    tokens: dict[str, str]
    principals: dict[str, Principal]


def _issue(gw: Gateway, *, role: str, party: str | None, person: str | None = None) -> str:
    with gw.sessions() as session, session.begin():
        return credentials.issue(
            session,
            master_key=gw.master_key,
            registry=gw.registry,
            agreement_ids=[AGREEMENT],
            role=role,
            party=party,
            expires=None,
            actor=audit.OPERATOR,
            person=person,
        ).token


@pytest.fixture(scope="module", params=BACKENDS)
def stocked(
    request: pytest.FixtureRequest,
    database_templates: DatabaseTemplates,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stocked]:
    folder = tmp_path_factory.mktemp(f"extracts-{request.param}")
    databases = Databases(request.param, database_templates)
    settings = make_settings(folder, databases.new(folder))
    initialise(settings)
    gw = Gateway.open(settings)
    try:
        upload_generated(gw, AGREEMENT, folder / "generated", seed=17)
        tokens = {
            "analyst": _issue(gw, role="analyst", party=EPP, person=REQUESTER_PERSON),
            "approver": _issue(gw, role="approver", party=DISTRICT, person=APPROVER_PERSON),
            "second": _issue(gw, role="approver", party=DISTRICT, person=SECOND_APPROVER),
            # The requester's own person, holding a district credential too.
            "same_person": _issue(gw, role="approver", party=DISTRICT, person=REQUESTER_PERSON),
            "district_analyst": _issue(gw, role="analyst", party=DISTRICT),
            "reviewer": _issue(gw, role="reviewer", party=None),
        }
        with gw.reads() as session:
            principals = {
                name: credentials.authenticate(session, gw.master_key, token)
                for name, token in tokens.items()
            }
        yield Stocked(settings, gw, folder, tokens, principals)
    finally:
        gw.close()
        databases.close()


def _ask(stocked: Stocked) -> approval.RequestView:
    return approval.request_extract(
        stocked.gateway,
        agreement_id=AGREEMENT,
        extract=EXTRACT,
        principal=stocked.principals["analyst"],
    )


def _decide(stocked: Stocked, view: approval.RequestView, who: str, *, approve: bool = True) -> Any:
    return approval.decide(
        stocked.gateway, request_id=view.id, principal=stocked.principals[who], approve=approve
    )


def _download(stocked: Stocked, view: approval.RequestView, fmt: str = "parquet") -> Any:
    return approval.download_extract(
        stocked.gateway,
        request_id=view.id,
        principal=stocked.principals["analyst"],
        file_format=fmt,
    )


def _events(gw: Gateway, request_id: str) -> list[dict[str, Any]]:
    with gw.reads() as session:
        events = [
            audit.event_view(e) for e in session.scalars(audit.query_events(agreement_id=AGREEMENT))
        ]
    return [e for e in events if e["details"].get("request_id") == request_id]


def _row(gw: Gateway, request_id: str) -> ExtractRequest:
    with gw.reads() as session:
        row = session.get(ExtractRequest, request_id)
        assert row is not None
        session.expunge(row)
        return row


def _verifies(gw: Gateway) -> None:
    with gw.reads() as session:
        result = audit.verify_chain(session)
    assert result.ok, result.problems


def test_request_approve_download_over_the_api(stocked: Stocked) -> None:
    """The whole flow over HTTP: the approver sees the columns, generalisation, risk and
    a sample with no IDs; the recipient downloads once exactly those rows, with the
    record of where they came from in the file; every step is in the audit chain."""
    app = create_app(stocked.settings)
    bearer = {k: {"Authorization": f"Bearer {t}"} for k, t in stocked.tokens.items()}
    base = f"/v1/agreements/{AGREEMENT}/extracts"
    with TestClient(app) as client:
        asked = client.post(base, json={"extract": EXTRACT}, headers=bearer["analyst"])
        assert asked.status_code == 201, asked.text
        request_id = asked.json()["id"]
        assert asked.json()["status"] == "pending"
        # Until approved, the recipient learns nothing of the true rows: no generalisation,
        # counts, risk figures or sample (exact, unbudgeted facts), only the columns.
        for mine in (
            asked.json(),
            client.get(f"{base}/{request_id}", headers=bearer["analyst"]).json(),
        ):
            assert set(mine["summary"]) == {"columns"}
        # The district's approver finds it among the pending requests and reads it.
        pending = client.get(base, params={"status": "pending"}, headers=bearer["approver"])
        assert request_id in [r["id"] for r in pending.json()["requests"]]
        shown = client.get(f"{base}/{request_id}", headers=bearer["approver"]).json()
        summary = shown["summary"]
        assert summary["columns"][:2] == ["teacher_id", "record_id"]
        assert summary["generalisation"] and summary["risk_after"] and summary["sample"]
        for sample_row in summary["sample"]:
            assert not {"teacher_id", "record_id"} & set(sample_row)
        # Not downloadable before approval; the analyst cannot approve its own ask.
        early = client.post(f"{base}/{request_id}/download", headers=bearer["analyst"])
        assert early.status_code == 403 and early.json()["error"]["code"] == "policy_violation"
        own = client.post(f"{base}/{request_id}/approve", headers=bearer["analyst"])
        assert own.status_code == 403
        approved = client.post(f"{base}/{request_id}/approve", headers=bearer["approver"])
        assert approved.status_code == 200, approved.text
        assert approved.json()["status"] == "approved" and approved.json()["expires_at"]
        got = client.post(f"{base}/{request_id}/download", headers=bearer["analyst"])
        assert got.status_code == 200, got.text
        again = client.post(f"{base}/{request_id}/download", headers=bearer["analyst"])
        assert again.status_code == 403 and "already downloaded" in again.json()["error"]["message"]
    table = pq.read_table(io.BytesIO(got.content))
    record = json.loads(table.schema.metadata[files.METADATA_KEY])
    assert record["request_id"] == request_id
    assert record["recipient"] == EPP and record["agreement"]["id"] == AGREEMENT
    assert record["approved_by"][0]["credential"] == stocked.principals["approver"].credential_id
    assert record["download_expires_at"] == approved.json()["expires_at"]
    frame = table.to_pandas()
    assert list(frame.columns) == summary["columns"]
    assert len(frame) == summary["rows_released"]
    # The rows are those the approver was shown: every sample row is one of the file's,
    # and the file records the hash of the rows the request logged.
    as_text = frame.astype(str)
    for sample_row in summary["sample"]:
        matches = as_text
        for column, value in sample_row.items():
            matches = matches[matches[column] == str(value)]
        assert len(matches) >= 1, sample_row
    requested = _events(stocked.gateway, request_id)[0]
    assert record["content_sha256"] == requested["details"]["content_sha256"]
    row = _row(stocked.gateway, request_id)
    assert row.content is None and row.content_salt is None  # erased at download
    # The sample rows were never stored in the clear: sealed with the rows, erased with them.
    stored = json.loads(row.summary)
    assert "sample" not in stored and stored["sample_sealed"]
    kinds = [e["kind"] for e in _events(stocked.gateway, request_id)]
    assert kinds == [
        "extract-requested",
        "extract-download-refused",
        "extract-decision-refused",
        "extract-approved",
        "extract-downloaded",
        "extract-download-refused",
    ]
    downloaded = next(
        e for e in _events(stocked.gateway, request_id) if e["kind"] == "extract-downloaded"
    )
    assert downloaded["details"]["fingerprint"]["request_id"] == request_id
    _verifies(stocked.gateway)


def test_the_downloaded_file_holds_no_internal_pseudonym(stocked: Stocked) -> None:
    view = _ask(stocked)
    _decide(stocked, view, "approver")
    data = _download(stocked, view, "csv").data
    with stocked.gateway.reads() as session:
        internal = [p for p in session.scalars(select(Educator.pseudonym).limit(5000))]
    assert internal
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as bundle:
        content = b"".join(bundle.read(name) for name in bundle.namelist())
    assert not [p for p in internal if p.encode() in content or p.encode() in data]


def test_a_requester_never_approves_their_own_request(stocked: Stocked) -> None:
    """Not with the credential that asked, nor as the same person with another one."""
    view = _ask(stocked)
    with pytest.raises(AccessDenied, match="credential that asked"):
        _decide(stocked, view, "analyst")
    with pytest.raises(AccessDenied, match="person who asked"):
        _decide(stocked, view, "same_person")
    # A district credential naming no person is not one of the listed approvers.
    with pytest.raises(AccessDenied, match="names no person"):
        _decide(stocked, view, "district_analyst")
    assert _row(stocked.gateway, view.id).status == "pending"
    refused = [
        e for e in _events(stocked.gateway, view.id) if e["kind"] == "extract-decision-refused"
    ]
    assert len(refused) == 3
    assert refused[0]["actor"]["credential_id"] == stocked.principals["analyst"].credential_id

    # Of the district, only the people it lists as approvers see the request (and its sample).
    def seen_by(who: str) -> set[str]:
        listed = approval.list_requests(
            stocked.gateway, agreement_id=AGREEMENT, principal=stocked.principals[who]
        )
        return {v.id for v in listed}

    assert view.id in seen_by("second") and view.id in seen_by("reviewer")
    assert view.id not in seen_by("district_analyst")
    # Then a listed approver of the district decides.
    assert _decide(stocked, view, "second").status == "approved"


def test_a_refused_or_unapproved_request_cannot_be_downloaded(stocked: Stocked) -> None:
    pending = _ask(stocked)
    with pytest.raises(PolicyViolation, match="pending"):
        _download(stocked, pending)
    refused = _ask(stocked)
    _decide(stocked, refused, "approver", approve=False)
    row = _row(stocked.gateway, refused.id)
    assert row.status == "refused" and row.content is None and row.content_salt is None
    with pytest.raises(PolicyViolation, match="refused"):
        _download(stocked, refused)
    # A decision on a request already decided changes nothing and is audited too.
    with pytest.raises(PolicyViolation, match="is refused, not pending"):
        _decide(stocked, refused, "second")
    late = [e for e in _events(stocked.gateway, refused.id)][-1]
    assert late["kind"] == "extract-decision-refused"
    assert late["details"]["reason"].endswith("is refused, not pending")
    assert _row(stocked.gateway, refused.id).status == "refused"
    # Only the recipient's analyst downloads, even once approved.
    approved = _ask(stocked)
    _decide(stocked, approved, "approver")
    with pytest.raises(AccessDenied):
        approval.download_extract(
            stocked.gateway,
            request_id=approved.id,
            principal=stocked.principals["district_analyst"],
        )
    for view in (pending, refused, approved):
        kinds = [e["kind"] for e in _events(stocked.gateway, view.id)]
        assert "extract-download-refused" in kinds and "extract-downloaded" not in kinds
    _verifies(stocked.gateway)


def test_two_downloads_at_once_hand_out_one_file(stocked: Stocked) -> None:
    """Once means once under a race too: two downloads of one approved request started
    together (each in its own thread and transaction) give one file and one refusal."""
    import threading

    view = _ask(stocked)
    _decide(stocked, view, "approver")
    start = threading.Barrier(2)
    outcomes: list[object] = []

    def download() -> None:
        start.wait()
        try:
            outcomes.append(_download(stocked, view))
        except PolicyViolation as refusal:
            outcomes.append(refusal)

    threads = [threading.Thread(target=download) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(outcomes) == 2
    files_out = [o for o in outcomes if not isinstance(o, PolicyViolation)]
    refused = [o for o in outcomes if isinstance(o, PolicyViolation)]
    assert len(files_out) == 1 and len(refused) == 1
    assert "already downloaded" in str(refused[0])
    kinds = [e["kind"] for e in _events(stocked.gateway, view.id)]
    assert kinds.count("extract-downloaded") == 1


def test_an_extract_not_downloaded_in_time_expires(stocked: Stocked) -> None:
    view = _ask(stocked)
    _decide(stocked, view, "approver")
    hours = stocked.settings.extract_download_hours
    gw = stocked.gateway
    try:
        gw.clock = lambda: utc_now() + timedelta(hours=hours, minutes=1)
        with pytest.raises(PolicyViolation, match="window ended"):
            _download(stocked, view)
    finally:
        gw.clock = utc_now
    row = _row(gw, view.id)
    assert row.status == "expired" and row.content is None and row.content_salt is None
    kinds = [e["kind"] for e in _events(gw, view.id)]
    assert kinds[-2:] == ["extract-expired", "extract-download-refused"]


def test_identify_names_the_extract_of_a_reordered_shuffled_copy(stocked: Stocked) -> None:
    """Through the command line: approve and download as tokens, then a copy with its
    columns reordered, its rows shuffled and no metadata (a plain CSV) is named."""
    runner = CliRunner()
    env = settings_env(stocked.settings)
    asked = runner.invoke(
        main,
        ["extracts", "request", "--agreement", AGREEMENT, "--extract", EXTRACT, "--json"],
        env={**env, "GATEWAY_TOKEN": stocked.tokens["analyst"]},
    )
    assert asked.exit_code == 0, asked.output
    request_id = json.loads(asked.stdout)["id"]
    # Deciding is a person's act: without a token the command refuses (exit status 12).
    bare = runner.invoke(main, ["extracts", "approve", request_id], env=env)
    assert bare.exit_code == 12 and "GATEWAY_TOKEN" in bare.stderr
    shown = runner.invoke(main, ["extracts", "show", request_id], env=env)
    assert "sample (" in shown.stdout and "risk after:" in shown.stdout
    token_file = stocked.folder / "approver.token"
    token_file.write_text(stocked.tokens["approver"])
    approved = runner.invoke(
        main, ["extracts", "approve", request_id, "--token-file", str(token_file)], env=env
    )
    assert approved.exit_code == 0, approved.output
    out = stocked.folder / f"{request_id}.zip"
    got = runner.invoke(
        main,
        ["extracts", "download", request_id, "--format", "csv", "--out", str(out)],
        env={**env, "GATEWAY_TOKEN": stocked.tokens["analyst"]},
    )
    assert got.exit_code == 0, got.output
    frame, record = files.read_extract(out.read_bytes(), out.name)
    assert record is not None and record["request_id"] == request_id
    columns = list(frame.columns)
    random.Random(5).shuffle(columns)
    copy = frame[columns].sample(frac=1.0, random_state=11)
    leaked = stocked.folder / "found.csv"
    copy.to_csv(leaked, index=False)
    found = runner.invoke(main, ["extracts", "identify", str(leaked), "--json"], env=env)
    assert found.exit_code == 0, found.output
    result = json.loads(found.stdout)
    assert result["match"]["id"] == request_id and result["match"]["recipient"] == EPP
    # Half of the rows, in another order, still name it.
    part = stocked.folder / "part.csv"
    copy.iloc[: max(1, len(copy) // 2)].to_csv(part, index=False)
    partial = runner.invoke(main, ["extracts", "identify", str(part), "--json"], env=env)
    assert json.loads(partial.stdout)["match"]["id"] == request_id
    assert json.loads(partial.stdout)["basis"] == "record_id"
    # Stripped of its record IDs, a copy is judged by its teacher IDs, which every
    # extract of the recipient under the agreement shares: it names the recipient and
    # lists each such extract rather than pretending to know which one it was.
    earlier = _ask(stocked)
    _decide(stocked, earlier, "approver")
    _download(stocked, earlier)
    stripped = stocked.folder / "stripped.csv"
    copy.drop(columns=["record_id"]).to_csv(stripped, index=False)
    by_teachers = runner.invoke(main, ["extracts", "identify", str(stripped), "--json"], env=env)
    judged = json.loads(by_teachers.stdout)
    assert judged["basis"] == "teacher_id" and judged["match"]["recipient"] == EPP
    assert {request_id, earlier.id} <= set(judged["tied"])
    said = runner.invoke(main, ["extracts", "identify", str(stripped)], env=env).stdout
    assert "no record ID verified" in said and request_id in said and earlier.id in said
    # Each look is in the audit log: by the copy's hash, with what it matched.
    with stocked.gateway.reads() as session:
        looks = [
            audit.event_view(e)
            for e in session.scalars(audit.query_events(agreement_id=AGREEMENT))
            if e.kind == "extract-identified"
        ]
    assert len(looks) == 4
    assert looks[0]["details"]["request_id"] == request_id
    assert looks[0]["details"]["file_sha256"] == hashlib.sha256(leaked.read_bytes()).hexdigest()
    assert looks[-1]["details"]["basis"] == "teacher_id"
    assert {request_id, earlier.id} <= set(looks[-1]["details"]["tied"])


def test_the_approval_page_shows_the_summary_and_approves(stocked: Stocked) -> None:
    """The web page: an approver signs in, reads the request (columns, risk, sample with
    no IDs) and approves it with the page's CSRF-protected form; a forged form is
    refused."""
    import re

    view = _ask(stocked)
    app = create_app(stocked.settings)
    with TestClient(app) as client:
        form = client.get("/web/sign-in")
        csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert csrf is not None
        signed = client.post(
            "/web/sign-in",
            data={"csrf": csrf.group(1), "token": stocked.tokens["approver"]},
            follow_redirects=False,
        )
        assert signed.status_code == 303, signed.text
        page = client.get(f"/web/agreements/{AGREEMENT}/extracts/{view.id}")
        assert page.status_code == 200
        assert "A sample of the generalised rows (no IDs)" in page.text
        assert "Approve this extract" in page.text
        forged = client.post(
            f"/web/agreements/{AGREEMENT}/extracts/{view.id}/approve", data={"csrf": "forged"}
        )
        assert forged.status_code == 403
        assert _row(stocked.gateway, view.id).status == "pending"
        token = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert token is not None
        done = client.post(
            f"/web/agreements/{AGREEMENT}/extracts/{view.id}/approve",
            data={"csrf": token.group(1)},
        )
        assert done.status_code == 200 and "approved" in done.text
    assert _row(stocked.gateway, view.id).status == "approved"


def test_zz_termination_lists_extracts_and_records_certificates(stocked: Stocked) -> None:
    """Last: the agreement ends. The receipt lists every extract handed out; a pending
    one is withdrawn and its rows erased; a recipient's certificate is recorded (by the
    operator: the party's tokens ended with the agreement) and listed to reviewers."""
    gw = stocked.gateway
    handed = _ask(stocked)
    _decide(stocked, handed, "approver")
    _download(stocked, handed)
    waiting = _ask(stocked)
    receipt = gw.terminate(AGREEMENT, actor=audit.OPERATOR, reason="test")
    listed = {e["request_id"] for e in receipt["extracts_handed_out"]}
    with gw.reads() as session:
        downloaded = set(
            session.scalars(
                select(ExtractRequest.id).where(
                    ExtractRequest.agreement_id == AGREEMENT,
                    ExtractRequest.status == "downloaded",
                )
            )
        )
    assert handed.id in listed and listed == downloaded
    assert waiting.id in {e["request_id"] for e in receipt["extracts_withdrawn"]}
    row = _row(gw, waiting.id)
    assert row.status == "withdrawn" and row.content is None and row.content_salt is None
    statement = stocked.folder / "certificate.txt"
    statement.write_bytes(b"Bayview State destroyed every extract received. Signed, J. Doe\n")
    certified = CliRunner().invoke(
        main,
        ["extracts", "certify", "--agreement", AGREEMENT, "--party", EPP, str(statement),
         "--json"],
        env=settings_env(stocked.settings),
    )  # fmt: skip
    assert certified.exit_code == 0, certified.output
    import hashlib

    digest = hashlib.sha256(statement.read_bytes()).hexdigest()
    assert json.loads(certified.stdout)["sha256"] == digest
    app = create_app(stocked.settings)
    with TestClient(app) as client:
        seen = client.get(
            f"/v1/agreements/{AGREEMENT}/certificates",
            headers={"Authorization": f"Bearer {stocked.tokens['reviewer']}"},
        )
    assert seen.status_code == 200, seen.text
    body = seen.json()
    assert [c["sha256"] for c in body["certificates"]] == [digest]
    assert {e["id"] for e in body["extracts_handed_out"]} == downloaded
    with gw.reads() as session:
        events = [
            audit.event_view(e)
            for e in session.scalars(audit.query_events(kind="destruction-certified"))
        ]
    assert events[-1]["details"]["sha256"] == digest
    assert events[-1]["actor"]["role"] == "operator"
    _verifies(gw)
