"""The authorization matrix: every route x every kind of caller x own or other agreement
x own or other party, each with the outcome the roles in docs/access.md promise.

The expected outcome of each cell is written out below from the role descriptions,
not computed by the gateway's own access code.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway import audit, credentials
from gateway.app import create_app
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.ingest import upload_extract
from gateway.storage import db
from gateway.storage.tables import AuditEvent
from tests.conftest import AGREEMENT, DISTRICT, EPP, evaluations_csv, issue_token, make_settings

OTHER_AGREEMENT = "calibration-lakeshore-riverbend"
COMPLETERS = (
    "MEPID,Last Name,First Name,Email Address,Program,Program Completion Year,"
    "Completer Status,License Field\n"
    "482913,Okafor,Adaeze,a@example.org,ELEM,2023,completed,ELEM\n"
)
# Who provides which dataset of AGREEMENT, and a valid file for it.
DATASET_OF = {DISTRICT: "evaluations", EPP: "completers"}

# Callers: (role, party). None role = no token; "invalid" = a well-formed but unknown token.
CALLERS = [
    ("none", None),
    ("invalid", None),
    ("revoked", DISTRICT),
    ("uploader", DISTRICT),
    ("uploader", EPP),
    ("analyst", DISTRICT),
    ("analyst", EPP),
    ("reviewer", None),
    # A person of the district who approves extracts (docs/extracts.md): nothing else.
    ("approver", DISTRICT),
]


@dataclass(frozen=True)
class Case:
    route: str
    role: str
    party: str | None
    agreement: str  # "own" or "other"
    target_party: str | None  # whose dataset / budget row the request is about

    @property
    def id(self) -> str:
        who = f"{self.role}:{self.party or '-'}"
        return f"{self.route}|{who}|{self.agreement}-agreement|target={self.target_party or '-'}"


ROUTES = [
    "GET /v1/agreements",
    "GET /v1/agreements/{id}",
    "GET /v1/agreements/{id}/budget",
    "POST /v1/agreements/{id}/releases",
    "POST /v1/agreements/{id}/datasets/{dataset}/uploads",
    "GET /v1/audit/events",
    "GET /v1/audit/verify",
    # Record-level extracts (docs/extracts.md). The request routes name a request that
    # does not exist: a caller the route admits reaches it and gets 404.
    "POST /v1/agreements/{id}/extracts",
    "GET /v1/agreements/{id}/extracts",
    "GET /v1/agreements/{id}/extracts/{request_id}",
    "POST /v1/agreements/{id}/extracts/{request_id}/approve",
    "POST /v1/agreements/{id}/extracts/{request_id}/refuse",
    "POST /v1/agreements/{id}/extracts/{request_id}/download",
    "GET /v1/agreements/{id}/certificates",
    "POST /v1/agreements/{id}/certificates",
]
#: An extract request id no test made.
NO_REQUEST = "0000000000000000"


def _cases() -> list[Case]:
    cases = []
    for route in ROUTES:
        for role, party in CALLERS:
            for agreement in ("own", "other"):
                for target in (DISTRICT, EPP):
                    cases.append(Case(route, role, party, agreement, target))
    return cases


def expected_status(case: Case) -> int:
    """The promised outcome, from the role table of docs/access.md."""
    if case.role in ("none", "invalid", "revoked"):
        return 401
    own = case.agreement == "own"
    route, role = case.route, case.role
    if route == "GET /v1/agreements":
        return 200  # every role; the list holds only its own agreements
    if route == "GET /v1/agreements/{id}":
        return 200 if own else 403
    if route == "GET /v1/agreements/{id}/budget":
        return 200 if own and role in ("analyst", "reviewer") else 403
    if route == "POST /v1/agreements/{id}/releases":
        return 200 if own and role == "analyst" else 403
    if route == "POST /v1/agreements/{id}/datasets/{dataset}/uploads":
        # Only an uploader, of its own agreement, for a dataset its own party provides.
        return 201 if own and role == "uploader" and case.target_party == case.party else 403
    if route in ("GET /v1/audit/events", "GET /v1/audit/verify"):
        return 200 if role == "reviewer" and own else 403
    if route == "POST /v1/agreements/{id}/extracts":
        # An analyst of the extract's recipient (the EPP); reached, the extract's datasets
        # are not all uploaded here: 409 dataset_not_uploaded, nothing made.
        return 409 if own and role == "analyst" and case.party == EPP else 403
    if route == "GET /v1/agreements/{id}/extracts":
        return 200 if own and role in ("analyst", "uploader", "reviewer", "approver") else 403
    if route == "GET /v1/agreements/{id}/extracts/{request_id}":
        return 404 if own and role in ("analyst", "uploader", "reviewer", "approver") else 403
    if route in (
        "POST /v1/agreements/{id}/extracts/{request_id}/approve",
        "POST /v1/agreements/{id}/extracts/{request_id}/refuse",
    ):
        return 404 if own and role in ("analyst", "uploader", "approver") else 403
    if route == "POST /v1/agreements/{id}/extracts/{request_id}/download":
        return 404 if own and role == "analyst" else 403
    if route == "GET /v1/agreements/{id}/certificates":
        return 200 if own and role == "reviewer" else 403
    if route == "POST /v1/agreements/{id}/certificates":
        # A party's own certificate: any token of a party of the agreement.
        return 201 if own and role in ("analyst", "uploader", "approver") else 403
    raise AssertionError(route)


@dataclass
class World:
    settings: Settings
    client: TestClient
    tokens: dict[tuple[str, str | None], str]
    files: dict[str, bytes]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("matrix")
    # Rate limiting has its own tests; here every refusal must be the role's own.
    settings = make_settings(
        tmp, f"sqlite:///{tmp / 'data' / 'gateway.db'}", auth_failure_limit=10_000
    )
    initialise(settings)
    tokens: dict[tuple[str, str | None], str] = {}
    for role, party in CALLERS:
        if role in ("uploader", "analyst"):
            tokens[(role, party)] = issue_token(settings, role=role, party=party)
    tokens[("reviewer", None)] = issue_token(settings, role="reviewer", party=None)
    with (
        Gateway.open(settings, checkpoint=False) as gw,
        gw.sessions() as session,
        session.begin(),
    ):
        tokens[("approver", DISTRICT)] = credentials.issue(
            session,
            master_key=gw.master_key,
            registry=gw.registry,
            agreement_ids=[AGREEMENT],
            role="approver",
            party=DISTRICT,
            expires=None,
            actor=audit.OPERATOR,
            person="eastport-privacy-officer",
        ).token
    revoked = issue_token(settings, role="uploader", party=DISTRICT)

    with (
        Gateway.open(settings, checkpoint=False) as gw,
        gw.sessions() as session,
        session.begin(),
    ):
        credentials.revoke(
            session,
            registry=gw.registry,
            credential_id=revoked.split("_")[1],
            actor=audit.OPERATOR,
        )
    tokens[("revoked", DISTRICT)] = revoked
    # Well formed, never issued: a random id and secret.
    tokens[("invalid", None)] = "gw_0123456789abcdef_" + "A" * 43
    evaluations, _ = evaluations_csv(tmp / "evaluations.csv")
    files = {"evaluations": evaluations.read_bytes(), "completers": COMPLETERS.encode()}
    # Releases over evaluations need an accepted upload, whichever case runs first.
    with Gateway.open(settings, checkpoint=False) as gw:
        upload_extract(
            gw,
            agreement_id=AGREEMENT,
            party=DISTRICT,
            dataset="evaluations",
            path=evaluations,
            actor=audit.Actor(role="uploader", party=DISTRICT),
        )
    with TestClient(create_app(settings)) as client:
        yield World(settings, client, tokens, files)


def _request(world: World, case: Case) -> Any:
    agreement = AGREEMENT if case.agreement == "own" else OTHER_AGREEMENT
    token = world.tokens.get((case.role, case.party))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = world.client
    if case.route == "GET /v1/agreements":
        return client.get("/v1/agreements", headers=headers)
    if case.route == "GET /v1/agreements/{id}":
        return client.get(f"/v1/agreements/{agreement}", headers=headers)
    if case.route == "GET /v1/agreements/{id}/budget":
        return client.get(
            f"/v1/agreements/{agreement}/budget", params={"history": True}, headers=headers
        )
    if case.route == "POST /v1/agreements/{id}/releases":
        body = {"datasets": ["evaluations"], "measure": {"kind": "count"}, "epsilon": 0.01}
        return client.post(f"/v1/agreements/{agreement}/releases", json=body, headers=headers)
    if case.route == "POST /v1/agreements/{id}/datasets/{dataset}/uploads":
        assert case.target_party is not None
        dataset = DATASET_OF[case.target_party]
        return client.post(
            f"/v1/agreements/{agreement}/datasets/{dataset}/uploads",
            files={"file": (f"{dataset}.csv", world.files[dataset], "text/csv")},
            headers=headers,
        )
    if case.route == "GET /v1/audit/events":
        return client.get("/v1/audit/events", params={"agreement": agreement}, headers=headers)
    method, _, template = case.route.partition(" ")
    if "/extracts" in template or "/certificates" in template:
        path = template.replace("{id}", agreement).replace("{request_id}", NO_REQUEST)
        if case.route == "POST /v1/agreements/{id}/extracts":
            return client.post(path, json={"extract": "completer_outcomes"}, headers=headers)
        if case.route == "POST /v1/agreements/{id}/certificates":
            letter = ("destruction.txt", b"We destroyed every extract. Signed.", "text/plain")
            return client.post(path, files={"file": letter}, headers=headers)
        return client.request(method, path, headers=headers)
    if case.route == "GET /v1/audit/verify":
        # Verification is of the whole chain; "other agreement" is a reviewer of another one.
        if case.agreement == "other" and case.role == "reviewer":
            other = issue_token(
                world.settings, role="reviewer", party=None, agreements=(OTHER_AGREEMENT,)
            )
            headers = {"Authorization": f"Bearer {other}"}
            return client.get("/v1/audit/verify", headers=headers)
        return client.get("/v1/audit/verify", headers=headers)
    raise AssertionError(case.route)


def _expected_verify_status(case: Case) -> int:
    # A reviewer of any agreement may verify the chain; only reviewers may.
    if case.role in ("none", "invalid", "revoked"):
        return 401
    return 200 if case.role == "reviewer" else 403


@pytest.mark.parametrize("case", _cases(), ids=lambda c: c.id)
def test_authorization_matrix(world: World, case: Case) -> None:
    before = _refusals(world)
    response = _request(world, case)
    expected = (
        _expected_verify_status(case)
        if case.route == "GET /v1/audit/verify"
        else expected_status(case)
    )
    assert response.status_code == expected, response.text
    if expected in (404, 409):
        # Admitted by the route, refused by what it found: not an access refusal.
        code = response.json()["error"]["code"]
        assert code == ("not_found" if expected == 404 else "dataset_not_uploaded")
        assert len(_refusals(world)) == len(before)
    elif expected >= 400:
        error = response.json()["error"]
        assert set(error) == {"code", "message", "details"}
        assert error["code"] == ("unauthenticated" if expected == 401 else "access_denied")
        if expected == 401:
            assert response.headers["www-authenticate"] == "Bearer"
        # Every refusal is in the audit log, naming the credential when there is one.
        after = _refusals(world)
        assert len(after) == len(before) + 1
        event = after[-1]
        assert event["details"]["status"] == expected
        if expected == 403:
            assert event["actor"]["role"] == case.role
            assert event["actor"]["credential_id"]
        token = world.tokens.get((case.role, case.party))
        if token:
            assert token.split("_", 2)[2] not in str(event)
    else:
        _check_visible_scope(response.json(), case)


def _refusals(world: World) -> list[dict[str, Any]]:
    # The log read straight from the database: opening a whole gateway (keys, agreement
    # files) twice per case was most of the matrix's time.
    engine = db.make_engine(world.settings.resolved_database_url)
    try:
        with Session(engine) as session:
            return [
                audit.event_view(e)
                for e in session.scalars(
                    select(AuditEvent)
                    .where(AuditEvent.kind == "access-refused")
                    .order_by(AuditEvent.seq)
                )
            ]
    finally:
        engine.dispose()


def _check_visible_scope(body: Any, case: Case) -> None:
    """What a permitted caller sees is limited to its own agreement and party."""
    if case.route == "GET /v1/agreements":
        assert [a["id"] for a in body] == [AGREEMENT]
    elif case.route == "GET /v1/agreements/{id}/budget":
        if case.role == "analyst":
            assert set(body["parties"]) <= {case.party}
            assert {e["party"] for e in body["history"]} <= {case.party}
        else:
            assert set(body["parties"]) == {EPP, DISTRICT}
    elif case.route == "GET /v1/audit/events":
        assert body["events"] and {e["agreement"]["id"] for e in body["events"]} == {AGREEMENT}
    elif case.route == "POST /v1/agreements/{id}/releases":
        assert body["audit_event"]
    elif case.route == "POST /v1/agreements/{id}/datasets/{dataset}/uploads":
        assert body["party"] == case.party and body["status"] == "accepted"
    elif case.route == "GET /v1/agreements/{id}/extracts":
        assert body == {"requests": []}
    elif case.route == "GET /v1/agreements/{id}/certificates":
        assert body["agreement"] == AGREEMENT and body["extracts_handed_out"] == []
    elif case.route == "POST /v1/agreements/{id}/certificates":
        # Recorded for the token's own party, never another.
        assert body["party"] == case.party and len(body["sha256"]) == 64


def test_every_api_route_is_in_the_matrix() -> None:
    document = create_app(make_settings(Path("/nonexistent"), "sqlite://")).openapi()
    routes = {
        f"{method.upper()} {path.replace('{agreement_id}', '{id}')}"
        for path, operations in document["paths"].items()
        if path.startswith("/v1")
        for method in operations
    }
    assert routes == set(ROUTES)
