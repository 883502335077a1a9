"""The web pages, driven in a real browser: Debian's chromium through Playwright.

The real server (uvicorn, in a thread) runs against a gateway initialised in a
temporary folder, with the district's evaluations and the EPP's completers uploaded.
Each test signs in as a person would, with a token made like `gateway tokens create`
makes one, and checks what the page shows: headings, alerts, table cells, the chart,
the downloaded CSV. Locators are accessible ones (role and name, label), so a page
that loses a label or a caption fails here.

chromium comes from the machine (`apt-get install chromium`, which `make test` does
when it is missing); Playwright's own browser download is never used. Without
chromium these tests skip locally and fail in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from gateway import audit, credentials
from gateway.app import create_app
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.ingest import upload_extract
from gateway.release.engine import request_release
from gateway.release.query import parse_query
from tests.conftest import (
    AGREEMENT,
    BANDS,
    DISTRICT,
    EPP,
    issue_token,
    make_settings,
)

try:
    from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright
except ImportError:  # pragma: no cover - reported by the browser fixture
    sync_playwright = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium")
# The conftest's grade bands: one under the minimum cell size of 10 keeps its few
# teachers; the others get 12 teachers at each rating, so a table of ratings by band
# has cells to publish as well as cells to suppress.
SMALL_BAND = next(band for band, n in BANDS.items() if n < 10)
RATINGS = (1, 2, 3, 4)


def _no_browser(reason: str) -> None:
    """Skip on a developer's machine; fail loudly in CI, where the set-up installs it."""
    message = f"{reason}: the web pages cannot be tested (make test installs chromium)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


# --- the server -----------------------------------------------------------------------------


@dataclass
class Site:
    base: str
    settings: Settings
    tokens: dict[str, str]

    def url(self, path: str) -> str:
        return self.base + path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _evaluations_csv(path: Path) -> tuple[Path, int]:
    """The district's 2025 evaluations (the conftest's columns), and how many teachers."""
    lines = ["MEPID,SY,Grade Span,Summative Rating,School Code,Yrs Experience"]
    teacher = 100000
    for band, n in BANDS.items():
        # The other bands hold 250 teachers per rating: enough for a noisy count at the
        # report's epsilon (0.3, each teacher in up to 3 years) to clear the publish
        # threshold (about 220), so cells are released.
        ratings = [RATINGS[i % 4] for i in range(n)] if band == SMALL_BAND else RATINGS * 250
        for rating in ratings:
            teacher += 1
            lines.append(f"{teacher},2025,{band},{rating},S-01,{teacher % 7}")
    path.write_text("\n".join(lines) + "\n")
    return path, teacher - 100000


def _completers_csv(path: Path, teachers: int) -> Path:
    """Every teacher of the evaluations extract is a Bayview completer."""
    lines = ["MEPID,Program,Program Completion Year,Completer Status,License Field"]
    lines += [f"{100001 + i},ELEM,2020,completed,ELEM" for i in range(teachers)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _load(settings: Settings, folder: Path) -> None:
    """The district's evaluations, the EPP's completers, and one release (so the budget
    has a history to draw)."""
    with Gateway.open(settings) as gw:
        evaluations, teachers = _evaluations_csv(folder / "evaluations.csv")
        for party, dataset, path in (
            (DISTRICT, "evaluations", evaluations),
            (EPP, "completers", _completers_csv(folder / "completers.csv", teachers)),
        ):
            upload_extract(
                gw,
                agreement_id=AGREEMENT,
                party=party,
                dataset=dataset,
                path=path,
                actor=audit.Actor(role="uploader", party=party),
            )
        request_release(
            gw,
            agreement_id=AGREEMENT,
            party=EPP,
            query=parse_query(
                {
                    "datasets": ["evaluations"],
                    "measure": {"kind": "count"},
                    "group_by": ["grade_band"],
                    "epsilon": "0.25",
                }
            ),
            actor=audit.Actor(role="analyst", party=EPP),
        )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("web")
    settings = make_settings(folder, f"sqlite:///{folder / 'data' / 'gateway.db'}")
    initialise(settings)
    _load(settings, folder)
    tokens = {
        "uploader": issue_token(settings, role="uploader", party=DISTRICT),
        "analyst": issue_token(settings, role="analyst", party=DISTRICT),
        "epp-analyst": issue_token(settings, role="analyst", party=EPP),
        "reviewer": issue_token(settings, role="reviewer", party=None),
    }
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            server_header=False,
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield Site(f"http://127.0.0.1:{port}", settings, tokens)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        _no_browser("the playwright package is not installed (pip install -e '.[dev]')")
    if CHROMIUM is None:
        _no_browser("chromium is not installed")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def context(browser: Browser, site: Site) -> Iterator[BrowserContext]:
    made = browser.new_context(base_url=site.base, accept_downloads=True)
    made.set_default_timeout(10_000)
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


# --- what every page must have ------------------------------------------------------------


def assert_accessible(page: Page) -> None:
    """Every field has a label, every table a caption and header cells with a scope, the
    page one h1, and no script at all."""
    problems = page.evaluate(
        """() => {
        const found = [];
        for (const field of document.querySelectorAll(
            'input:not([type=hidden]), select, textarea')) {
            if (!field.labels || field.labels.length === 0) found.push('unlabelled ' + field.name);
        }
        for (const table of document.querySelectorAll('table')) {
            if (!table.caption || !table.caption.textContent.trim()) {
                found.push('table without caption');
            }
            for (const th of table.querySelectorAll('th')) {
                if (!th.getAttribute('scope')) found.push('th without scope: ' + th.textContent);
            }
        }
        if (document.querySelectorAll('h1').length !== 1) found.push('not exactly one h1');
        if (document.querySelectorAll('script').length) found.push('a script');
        if (!document.documentElement.lang) found.push('no lang');
        return found;
    }"""
    )
    assert problems == [], f"{page.url}: {problems}"


def sign_in(page: Page, token: str) -> None:
    page.goto("/web")
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
    assert_accessible(page)
    page.get_by_label("Your token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Your agreements")).to_be_visible()
    assert_accessible(page)


def audit_events(site: Site, kind: str) -> list[dict[str, Any]]:
    with Gateway.open(site.settings, checkpoint=False) as gw, gw.sessions() as session:
        return [audit.event_view(e) for e in session.scalars(audit.query_events(kind=kind))]


# --- signing in ---------------------------------------------------------------------------


def test_a_wrong_token_is_refused_with_a_message_and_audited(page: Page, site: Site) -> None:
    before = len(audit_events(site, "access-refused"))
    page.goto("/web")
    assert page.url.endswith("/web/sign-in")  # no session: to the sign-in form
    page.get_by_label("Your token").fill("gw_0123456789abcdef_not-the-secret")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("The bearer token is not valid.")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert not [c for c in page.context.cookies() if c["name"] == "gateway_session"]
    refused = audit_events(site, "access-refused")[before:]
    assert [e["details"]["reason"] for e in refused] == ["the bearer token is not valid"]
    assert refused[0]["details"]["route"] == "/web/sign-in"
    assert "not-the-secret" not in str(refused)


def test_the_session_cookie_is_http_only_lax_and_pages_run_no_script(
    page: Page, site: Site
) -> None:
    token = site.tokens["reviewer"]
    response = page.goto("/web/sign-in")
    assert response is not None
    policy = response.headers["content-security-policy"]
    assert "script-src" not in policy and "default-src 'none'" in policy
    assert "style-src 'self'" in policy and "form-action 'self'" in policy
    sign_in(page, token)
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "gateway_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/web"
    assert token.split("_", 2)[2] not in cookie["value"]  # a session id, not the token
    assert token.split("_", 2)[2] not in page.content()  # the token is never shown


def test_a_revoked_token_is_signed_out_at_the_next_click(page: Page, site: Site) -> None:
    token = issue_token(site.settings, role="reviewer", party=None)
    sign_in(page, token)
    with (
        Gateway.open(site.settings, checkpoint=False) as gw,
        gw.sessions() as session,
        session.begin(),
    ):
        credentials.revoke(
            session, registry=gw.registry, credential_id=token.split("_")[1], actor=audit.OPERATOR
        )
    page.get_by_role("link", name="Audit log", exact=True).click()
    expect(page.get_by_role("alert")).to_contain_text(
        "is revoked; ask the operator for a new token"
    )
    assert not [c for c in page.context.cookies() if c["name"] == "gateway_session"]
    page.goto("/web")
    assert page.url.endswith("/web/sign-in")


def test_signing_out_ends_the_session(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["uploader"])
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    page.goto("/web")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()


# --- roles --------------------------------------------------------------------------------


def test_a_page_of_another_role_is_refused_and_audited(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["uploader"])
    before = len(audit_events(site, "access-refused"))
    response = page.goto(f"/web/agreements/{AGREEMENT}/reports")
    assert response is not None and response.status == 403
    expect(page.get_by_role("heading", name="Not allowed")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_text(
        "An uploader token may not do this (needs an analyst)."
    )
    response = page.goto("/web/audit")
    assert response is not None and response.status == 403
    refused = audit_events(site, "access-refused")[before:]
    assert [e["details"]["status"] for e in refused] == [403, 403]
    assert refused[0]["actor"]["role"] == "uploader"
    assert refused[0]["agreement"]["id"] == AGREEMENT  # its reviewers see it


def test_a_form_without_its_csrf_token_is_refused(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["reviewer"])
    # The browser's own cookie, a form posted without the page's token (as another
    # site's form would be, were the cookie sent at all).
    before = len(audit_events(site, "access-refused"))
    response = page.request.post(site.url("/web/audit/verify"), form={"csrf": "forged"})
    assert response.status == 403
    assert "security token" in response.text()
    (refused,) = audit_events(site, "access-refused")[before:]
    assert refused["details"]["route"] == "/web/audit/verify"
    assert refused["actor"]["role"] == "reviewer"


def test_a_dataset_of_another_party_is_refused_before_the_file_is_read(
    page: Page, site: Site
) -> None:
    sign_in(page, site.tokens["uploader"])
    page.goto(f"/web/agreements/{AGREEMENT}/upload")
    csrf = page.locator("main input[name=csrf]").get_attribute("value")
    before = len(audit_events(site, "access-refused"))
    response = page.request.post(
        site.url(f"/web/agreements/{AGREEMENT}/upload"),
        multipart={
            "csrf": str(csrf),
            "dataset": "completers",
            "file": {"name": "c.csv", "mimeType": "text/csv", "buffer": b"MEPID\n1\n"},
        },
    )
    assert response.status == 403
    assert "provided by" in response.text()
    (refused,) = audit_events(site, "access-refused")[before:]
    assert refused["details"]["reason"] == (
        f"dataset 'completers' is provided by '{EPP}', not by '{DISTRICT}'"
    )
    assert list((site.settings.data_dir / "tmp").iterdir()) == []


# --- uploads ------------------------------------------------------------------------------


def test_an_uploaders_refused_upload_lists_every_problem(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["uploader"])
    page.get_by_role("link", name="Upload an extract").click()
    expect(page.get_by_role("heading", name="Upload an extract")).to_be_visible()
    assert_accessible(page)
    # Only the datasets the district provides.
    choices = page.get_by_label("Dataset").locator("option").all_inner_texts()
    with Gateway.open(site.settings, checkpoint=False) as gw:
        provided = [d.name for d in gw.agreement(AGREEMENT).datasets if d.provided_by == DISTRICT]
    assert choices == provided and "completers" not in choices
    page.get_by_label("Dataset").select_option("evaluations")
    bad = (
        "MEPID,Last Name,SY,Grade Span,Summative Rating\n"
        "200001,Zebulonova,2025,PK-2,3\n"
        "200002,Zebulonova,2025,PK-2,7\n"  # rating out of range
        "200003,Zebulonova,20x5,3-5,3\n"  # not a year
        "200004,Zebulonova,2025,K-99,2\n"  # not a grade band
    )
    page.get_by_label("Extract file").set_input_files(
        {"name": "evaluations.csv", "mimeType": "text/csv", "buffer": bad.encode()}
    )
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("heading", name="Upload receipt")).to_be_visible()
    assert_accessible(page)
    expect(page.get_by_role("alert")).to_contain_text("Refused: nothing was stored.")
    problems = page.get_by_role("table", name=re.compile("^Problems"))
    rows = problems.locator("tbody tr")
    expect(rows).to_have_count(3)
    found = [
        (row.get_by_role("rowheader").inner_text(), row.locator("td").first.inner_text())
        for row in rows.all()
    ]
    assert found == [
        ("3", "Summative Rating (summative_rating)"),
        ("4", "SY (school_year)"),
        ("5", "Grade Span (grade_band)"),
    ]
    expect(rows.nth(0).locator("td").nth(1)).to_contain_text("expected")
    rows_table = page.get_by_role("table", name="Rows")
    expect(rows_table.locator("tbody td").nth(1)).to_have_text("0")  # accepted: none
    dropped = page.get_by_role("table", name=re.compile("^Columns dropped"))
    expect(dropped.get_by_role("row", name=re.compile("Last Name"))).to_contain_text(
        "direct identifier"
    )
    assert "Zebulonova" not in page.content() and "200002" not in page.content()
    # The temporary file is gone.
    assert list((site.settings.data_dir / "tmp").iterdir()) == []


def test_an_accepted_upload_shows_its_receipt(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["uploader"])
    page.goto(f"/web/agreements/{AGREEMENT}/upload")
    page.get_by_label("Dataset").select_option("staffing")
    good = "MEPID,SY,District Code,School Code,Job Class,License Field,FTE\n" + "".join(
        f"{100001 + i},2025,D-01,S-01,teacher,ELEM,1.0\n" for i in range(12)
    )
    page.get_by_label("Extract file").set_input_files(
        {"name": "staffing.csv", "mimeType": "text/csv", "buffer": good.encode()}
    )
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("status")).to_contain_text("Accepted. 12 row(s) of staffing stored.")
    kept = page.get_by_role("table", name="Columns kept")
    expect(kept.get_by_role("rowheader", name="school_year")).to_be_visible()
    assert list((site.settings.data_dir / "tmp").iterdir()) == []


# --- reports ------------------------------------------------------------------------------


def test_an_analyst_previews_and_runs_a_report(
    page: Page, site: Site, context: BrowserContext
) -> None:
    sign_in(page, site.tokens["analyst"])
    page.get_by_role("link", name="Reports").click()
    assert_accessible(page)
    page.get_by_role("link", name="performance_by_provider").click()
    assert_accessible(page)
    page.get_by_label("Years").fill("2025")

    page.get_by_role("button", name="Preview accuracy and cost").click()
    preview = page.get_by_role("status")
    expect(preview).to_contain_text("would spend ε 0.3")
    expect(preview).to_contain_text("Nothing was spent by this preview.")
    expect(page.get_by_text(re.compile(r"within ± [\d.]+ teachers")).first).to_be_visible()
    assert_accessible(page)

    page.get_by_role("button", name="Run the report").click()
    expect(page.get_by_role("heading", name="Results")).to_be_visible()
    assert_accessible(page)
    expect(page.get_by_role("status")).to_contain_text("This run spent ε 0.3")
    table = page.get_by_role("table", name=re.compile(": one row per cell$")).first
    title = table.locator("caption").inner_text().removesuffix(": one row per cell")
    rows = table.locator("tbody tr")
    # The small band's cells are suppressed, marked in words with the reason.
    exactly_small = re.compile(rf"^{re.escape(SMALL_BAND)}$")
    small = rows.filter(has=page.locator("th, td").filter(has_text=exactly_small))
    assert small.count() >= 1
    for row in small.all():
        expect(row.locator("td").filter(has_text=re.compile("^Suppressed$"))).to_have_count(1)
        expect(row.locator("td").last).to_contain_text("Suppressed: its noisy count did not")
    # Released cells carry a value and a 95% interval.
    released = rows.filter(
        has=page.locator("td").filter(has_text=re.compile("^Released(, rolled up \\(.+\\))?$"))
    )
    assert released.count() >= 1
    interval = re.compile(r"^-?[\d,.]+ to [\d,.]+$")
    for row in released.all():
        expect(row.locator("td").filter(has_text=interval)).to_have_count(1)
    # The chart: bars, whiskers, suppressed cells labelled in words, a title.
    chart = page.get_by_role("img", name=title)
    expect(chart).to_be_visible()
    assert chart.locator("rect.value").count() == released.count()
    assert chart.locator("line.whisker").count() == 3 * released.count()
    expect(chart.locator("text.note").first).to_have_text("suppressed")

    with page.expect_download() as downloading:
        page.get_by_role("link", name=re.compile("^Download the cells")).first.click()
    download = downloading.value
    text = Path(download.path()).read_text()
    header, *lines = text.splitlines()
    assert header.endswith("value,ci95_low,ci95_high,suppressed,reason,share")
    assert len(lines) == rows.count()
    assert any(line.startswith(f"{SMALL_BAND},") and ",True,primary," in line for line in lines)
    csv_url = page.get_by_role("link", name=re.compile("^Download the cells")).first.get_attribute(
        "href"
    )

    # A partnership release: the EPP's analyst, allowed every field of the table, gets
    # the same cells; a party of another agreement would be refused.
    other = context.browser.new_context(base_url=site.base)  # type: ignore[union-attr]
    try:
        other_page = other.new_page()
        sign_in(other_page, site.tokens["epp-analyst"])
        response = other_page.request.get(str(csv_url))
        assert response.status == 200 and response.text() == text
        foreign = other_page.request.get(
            str(csv_url).replace(AGREEMENT, "calibration-lakeshore-riverbend")
        )
        assert foreign.status == 403
    finally:
        other.close()


def test_a_refused_report_says_why_and_spends_nothing(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["analyst"])
    page.goto(f"/web/agreements/{AGREEMENT}/budget")
    spent = page.get_by_role("row", name=re.compile(f"^{DISTRICT}")).inner_text()
    page.goto(f"/web/agreements/{AGREEMENT}/reports/performance_by_provider")
    page.get_by_label("Epsilon").fill("50")
    page.get_by_role("button", name="Run the report").click()
    expect(page.get_by_role("alert")).to_contain_text("Not run:")
    expect(page.get_by_role("heading", name="Results")).to_have_count(0)
    expect(page.get_by_label("Epsilon")).to_have_value("50")  # the form keeps what was typed
    page.goto(f"/web/agreements/{AGREEMENT}/budget")
    assert page.get_by_role("row", name=re.compile(f"^{DISTRICT}")).inner_text() == spent


# --- reviewers ----------------------------------------------------------------------------


def test_a_reviewer_filters_the_audit_log_and_verifies_it(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["reviewer"])
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    assert_accessible(page)
    page.get_by_label("Kind of event").select_option("upload-accepted")
    page.get_by_label("Acting party").select_option(EPP)
    page.get_by_role("button", name="Show events").click()
    expect(page.get_by_role("status")).to_have_text("Events 1 to 1 of 1.")
    table = page.get_by_role("table", name=re.compile("^Audit events"))
    expect(table.locator("tbody tr")).to_have_count(1)
    expect(table.locator("tbody tr td").nth(1)).to_have_text("upload-accepted")
    expect(table.locator("tbody tr td").nth(3)).to_contain_text(f"uploader, {EPP}")
    assert "kind=upload-accepted" in page.url and f"party={EPP}" in page.url
    # The filters stay chosen on the page that shows them.
    expect(page.get_by_label("Kind of event")).to_have_value("upload-accepted")

    page.get_by_role("button", name="Verify the log").click()
    expect(page.get_by_role("heading", name="Audit log verification")).to_be_visible()
    expect(page.get_by_role("status")).to_contain_text("The log verifies.")
    checked = page.locator("dt:text-is('Events checked') + dd")
    assert int(checked.inner_text().replace(",", "")) > 10
    assert_accessible(page)


def test_a_reviewer_sees_the_budget_over_time(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["reviewer"])
    page.get_by_role("link", name="Privacy budget over time").click()
    assert_accessible(page)
    chart = page.get_by_role("img", name=f"Privacy budget of {AGREEMENT} over time")
    expect(chart).to_be_visible()
    expect(chart.locator("polyline").first).to_be_attached()
    expect(chart).to_contain_text(f"{EPP}: ε 0.25")
    expect(chart).to_contain_text("agreement total ε")
    reservations = page.get_by_role("table", name="Every reservation, oldest first")
    expect(reservations.locator("tbody tr").first).to_contain_text(EPP)
    # An agreement the token does not cover is refused, in the audit log too.
    response = page.goto("/web/audit?agreement=calibration-lakeshore-riverbend")
    assert response is not None and response.status == 403
    expect(page.get_by_role("alert")).to_contain_text("does not cover agreement")


# --- the upload form's fields, read from the stream -----------------------------------------


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str) -> bytes:
    body = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode()


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_the_fields_before_the_file_are_checked_before_any_of_it_passes(chunk: int) -> None:
    import asyncio

    from gateway.web.forms import LeadingFields, checked_stream

    boundary = "b0undary"
    body = _multipart(
        [("csrf", None, b"abc"), ("dataset", None, b"evaluations"), ("file", "e.csv", b"X" * 300)],
        boundary,
    )
    fields = LeadingFields(f"multipart/form-data; boundary={boundary}", ("csrf", "dataset"))
    passed: list[bytes] = []
    seen: list[dict[str, str]] = []

    async def check(sent: dict[str, str]) -> None:
        seen.append(dict(sent))
        assert b"X" * 20 not in b"".join(passed)  # no file content passed on yet

    async def run() -> None:
        async def chunks() -> Any:
            for start in range(0, len(body), chunk):
                yield body[start : start + chunk]

        async for piece in checked_stream(chunks(), fields, check):
            passed.append(piece)

    # In a thread of its own: Playwright's sync API keeps an event loop in this one.
    failures: list[BaseException] = []

    def in_thread() -> None:
        try:
            asyncio.run(run())
        except BaseException as error:
            failures.append(error)

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join()
    assert failures == []
    assert seen == [{"csrf": "abc", "dataset": "evaluations"}]
    assert b"".join(passed) == body


def test_fields_after_the_file_do_not_count() -> None:
    from gateway.web.forms import LeadingFields

    boundary = "b0undary"
    body = _multipart([("file", "e.csv", b"data"), ("csrf", None, b"abc")], boundary)
    fields = LeadingFields(f"multipart/form-data; boundary={boundary}", ("csrf",))
    fields.feed(body)
    assert fields.done and fields.fields == {}
    assert LeadingFields("text/plain", ("csrf",)).done
