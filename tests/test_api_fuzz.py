"""Schemathesis against the gateway's own OpenAPI document, with valid tokens.

Every operation gets generated requests (valid and invalid ones) from the document;
no response may be a 5xx, use a status the document does not list, or break its
documented schema or content type. Bounded: a fixed number of examples per
operation, and a time budget per operation after which further examples are skipped.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck
from hypothesis import settings as hyp_settings
from schemathesis import checks

from gateway import audit
from gateway.app import create_app
from gateway.context import Gateway, initialise
from gateway.ingest import upload_extract
from tests.conftest import AGREEMENT, DISTRICT, EPP, evaluations_csv, issue_token, make_settings

MAX_EXAMPLES = 100
SECONDS_PER_OPERATION = 45.0
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_target(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FastAPI, dict[str, str]]]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    settings = make_settings(
        tmp, f"sqlite:///{tmp / 'data' / 'gateway.db'}", auth_failure_limit=1_000_000
    )
    initialise(settings)
    with Gateway.open(settings) as gw:
        path, _ = evaluations_csv(tmp / "evaluations.csv")
        upload_extract(
            gw,
            agreement_id=AGREEMENT,
            party=DISTRICT,
            dataset="evaluations",
            path=path,
            actor=audit.Actor(role="uploader", party=DISTRICT),
        )
    tokens = {
        "uploader": issue_token(settings, role="uploader", party=DISTRICT),
        "analyst": issue_token(settings, role="analyst", party=EPP),
        "reviewer": issue_token(settings, role="reviewer", party=None),
    }
    yield create_app(settings), tokens


# The document is the same for every settings; it is read at collection from an app that
# is never started, and each call goes in-process to the started app of the fixture.
_document_app = create_app(make_settings(Path("/nonexistent"), "sqlite://"))
schema = schemathesis.openapi.from_dict(_document_app.openapi())
schema.app = _document_app  # in-process (ASGI) calls; the app itself is given per call
_started: dict[str, float] = {}


def _role_for(path: str, method: str) -> str:
    if path.endswith("/uploads"):
        return "uploader"
    if path.endswith("/releases") or path.endswith("/budget"):
        return "analyst"
    return "reviewer"


@schema.parametrize()
@hyp_settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_api_holds_up_against_generated_requests(
    case: Any, fuzz_target: tuple[FastAPI, dict[str, str]]
) -> None:
    app, tokens = fuzz_target
    key = f"{case.method} {case.path}"
    started = _started.setdefault(key, time.monotonic())
    if time.monotonic() - started > SECONDS_PER_OPERATION:
        return  # this operation's time budget is spent: the rest of its examples are skipped
    if case.path_parameters and "agreement_id" in case.path_parameters:
        # Mostly the real agreement, so requests reach the domain code behind the checks.
        case.path_parameters["agreement_id"] = AGREEMENT
    if case.path_parameters and "dataset" in case.path_parameters:
        case.path_parameters["dataset"] = "evaluations"
    token = tokens[_role_for(case.path, case.method)]
    response = case.call_and_validate(
        app=app, headers={"Authorization": f"Bearer {token}"}, checks=CHECKS
    )
    assert response.status_code < 500
