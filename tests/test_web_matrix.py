"""The authorization matrix of the web pages: every page that shows an agreement's data x
every kind of caller x own or other agreement, with the outcome docs/web.md promises.
(The browser tests in tests/test_web.py check what a person sees; this checks who may
see what, for every page, without a browser.)"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from gateway.app import create_app
from gateway.config import Settings
from gateway.context import initialise
from gateway.storage import db
from gateway.storage.tables import AuditEvent
from gateway.web.session import SESSION_COOKIE
from tests.conftest import AGREEMENT, DISTRICT, EPP, issue_token, make_settings, web_sign_in

OTHER_AGREEMENT = "calibration-lakeshore-riverbend"
CALLERS = ["none", "uploader", "analyst", "reviewer"]
PAGES = [
    "/web",
    "/web/agreements/{id}/upload",
    "/web/agreements/{id}/reports",
    "/web/agreements/{id}/reports/impact",
    "/web/agreements/{id}/budget",
    "/web/audit?agreement={id}",
    "/web/agreements/{id}/uploads",
    "/web/agreements/{id}/releases",
    "/web/agreements/{id}/datasets/evaluations",
    # evaluations is the uploader's (DISTRICT's) to provide; completers the EPP's.
    "/web/agreements/{id}/datasets/evaluations/template.csv",
    "/web/agreements/{id}/datasets/completers/template.xlsx",
    "/web/agreements/{id}/reports/impact/report.xlsx?t=0.no-such-release",
    "/web/agreements/{id}/reports/impact/report.zip?t=0.no-such-release",
]
#: Pages that answer with a file, not HTML.
DOWNLOADS = (".csv", ".xlsx", ".zip")


@dataclass(frozen=True)
class Case:
    page: str
    caller: str
    agreement: str  # "own" or "other"


def expected_status(case: Case) -> int:
    """From the roles of docs/access.md, as the pages apply them."""
    if case.caller == "none":
        return 303  # to the sign-in form
    own = case.agreement == "own"
    page, role = case.page, case.caller
    if page == "/web":
        return 200
    if page.endswith("/uploads"):
        return 200 if own and role in ("uploader", "reviewer") else 403
    if page.endswith("/releases"):
        return 200 if own and role in ("analyst", "reviewer") else 403
    if "/template." in page:  # only the party that provides the dataset
        return 200 if own and role == "uploader" and "/evaluations/" in page else 403
    if "/datasets/" in page:
        return 200 if own else 403
    if page.split("?")[0].endswith(("/report.xlsx", "/report.zip")):  # of releases received
        return 404 if own and role == "analyst" else 403
    if page.endswith("/upload"):
        return 200 if own and role == "uploader" else 403
    if "/reports" in page:
        return 200 if own and role == "analyst" else 403
    if page.endswith("/budget"):
        return 200 if own and role in ("analyst", "reviewer") else 403
    if page.startswith("/web/audit"):
        return 200 if own and role == "reviewer" else 403
    raise AssertionError(page)


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[TestClient, Settings, dict[str, str], dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("web-matrix")
    settings = make_settings(tmp, f"sqlite:///{tmp / 'data' / 'gateway.db'}")
    initialise(settings)
    tokens = {
        "uploader": issue_token(settings, role="uploader", party=DISTRICT),
        "analyst": issue_token(settings, role="analyst", party=EPP),
        "reviewer": issue_token(settings, role="reviewer", party=None),
    }
    with TestClient(create_app(settings), follow_redirects=False) as client:
        # Each token signs in once through the form; the pages then see its session.
        sessions = {caller: web_sign_in(client, token) for caller, token in tokens.items()}
        yield client, settings, tokens, sessions


def _refusals(settings: Settings) -> int:
    # Read straight from the database: opening a whole gateway (keys, agreement files)
    # per read was most of the matrix's time.
    engine = db.make_engine(settings.resolved_database_url)
    try:
        with engine.connect() as connection:
            count = connection.scalar(
                select(func.count())
                .select_from(AuditEvent)
                .where(AuditEvent.kind == "access-refused")
            )
    finally:
        engine.dispose()
    return int(count or 0)


@pytest.mark.parametrize(
    "case",
    [Case(p, c, a) for p in PAGES for c in CALLERS for a in ("own", "other")],
    ids=lambda c: f"{c.page}|{c.caller}|{c.agreement}",
)
def test_web_authorization_matrix(
    site: tuple[TestClient, Settings, dict[str, str], dict[str, str]], case: Case
) -> None:
    client, settings, tokens, sessions = site
    agreement = AGREEMENT if case.agreement == "own" else OTHER_AGREEMENT
    cookies = {SESSION_COOKIE: sessions[case.caller]} if case.caller in sessions else {}
    before = _refusals(settings)
    client.cookies.clear()
    for name, value in cookies.items():
        client.cookies.set(name, value, path="/web")
    response = client.get(case.page.format(id=agreement))
    expected = expected_status(case)
    assert response.status_code == expected, response.text[:300]
    if expected == 303:
        assert response.headers["location"].endswith("/web/sign-in")
    if expected in (403, 404):
        assert "text/html" in response.headers["content-type"]
    if expected == 403:
        assert _refusals(settings) == before + 1  # every refusal is in the audit log
    if expected == 200 and case.page.split("?")[0].endswith(DOWNLOADS):
        assert "attachment" in response.headers["content-disposition"]
    elif expected == 200:
        assert "text/html" in response.headers["content-type"]
        # A page never shows another agreement's id to a token that does not cover it.
        if case.page == "/web":
            assert OTHER_AGREEMENT not in response.text
    assert tokens.get(case.caller, "x_x_none").split("_", 2)[2] not in response.text


def test_the_matrix_covers_every_page_that_names_an_agreement() -> None:
    from gateway.web.pages import router

    pages = {
        getattr(route, "path", "")
        for route in router.routes
        if "GET" in getattr(route, "methods", set())
    }
    covered = {p.split("?")[0].replace("{id}", "{agreement_id}") for p in PAGES}
    covered.add("/web/agreements/{agreement_id}/reports/{report}")
    covered.add("/web/agreements/{agreement_id}/reports/{report}/report.xlsx")
    covered.add("/web/agreements/{agreement_id}/reports/{report}/report.zip")
    covered.add("/web/agreements/{agreement_id}/datasets/{dataset}")
    covered.add("/web/agreements/{agreement_id}/datasets/{dataset}/template.csv")
    covered.add("/web/agreements/{agreement_id}/datasets/{dataset}/template.xlsx")
    uncovered = {
        p
        for p in pages
        if p not in covered
        and p not in {"/web/sign-in", "/web/agreements/{agreement_id}/reports/impact"}
        and not p.endswith("/cells.csv")  # checked against the release's owner in test_web
    }
    assert uncovered == set(), uncovered
