"""The extract pages in a real browser (Debian's chromium through Playwright, as
tests/test_web.py): the EPP's analyst asks, the district's approver reads what would
leave and approves, the analyst downloads once."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import uvicorn

from gateway import audit, credentials
from gateway.app import create_app
from gateway.context import Gateway, initialise
from gateway.extracts import files
from tests.conftest import AGREEMENT, DISTRICT, EPP, make_settings, upload_generated
from tests.test_web import _free_port, assert_accessible, sign_in
from tests.test_web import browser as browser  # the fixture: chromium, or a skip

try:
    from playwright.sync_api import Browser, Page, expect
except ImportError:  # pragma: no cover - the browser fixture skips or fails
    Browser = Page = object  # type: ignore[misc,assignment]


@dataclass
class ExtractSite:
    base: str
    tokens: dict[str, str]
    folder: Path


@pytest.fixture(scope="module")
def extract_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ExtractSite]:
    folder = tmp_path_factory.mktemp("web-extracts")
    settings = make_settings(folder, f"sqlite:///{folder / 'data' / 'gateway.db'}")
    initialise(settings)
    tokens = {}
    with Gateway.open(settings) as gw:
        upload_generated(gw, AGREEMENT, folder / "generated", seed=23)
        with gw.sessions() as session, session.begin():
            for name, role, party, person in (
                ("analyst", "analyst", EPP, "bayview-researcher"),
                ("approver", "approver", DISTRICT, "eastport-privacy-officer"),
            ):
                tokens[name] = credentials.issue(
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
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield ExtractSite(f"http://127.0.0.1:{port}", tokens, folder)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _page(chromium: Browser, site: ExtractSite) -> Page:
    context = chromium.new_context(base_url=site.base, accept_downloads=True)
    context.set_default_timeout(15_000)
    return context.new_page()


def test_ask_approve_and_download_in_the_browser(
    browser: Browser,  # the fixture imported from tests/test_web.py
    extract_site: ExtractSite,
) -> None:
    analyst = _page(browser, extract_site)
    sign_in(analyst, extract_site.tokens["analyst"])
    analyst.get_by_role("link", name="Record-level extracts").click()
    assert_accessible(analyst)
    analyst.get_by_label("Extract", exact=True).select_option("completer_outcomes")
    analyst.get_by_role("button", name="Ask for it").click()
    expect(analyst.get_by_role("heading", level=1)).to_contain_text("Extract request")
    request_id = analyst.url.rsplit("/", 1)[-1]
    # The one who asked is offered no decision.
    expect(analyst.get_by_role("button", name="Approve this extract")).to_have_count(0)

    approver = _page(browser, extract_site)
    sign_in(approver, extract_site.tokens["approver"])
    approver.get_by_role("link", name="Extract requests to decide").click()
    approver.get_by_role("link", name=request_id).click()
    assert_accessible(approver)
    # What would leave: the columns, the risk table and a sample with no ID column.
    expect(approver.get_by_text("teacher_id", exact=True).first).to_be_visible()
    expect(approver.get_by_role("table", name="Re-identification risk")).to_be_visible()
    sample = approver.get_by_role("table", name="A sample of the generalised rows (no IDs)")
    headers = sample.get_by_role("columnheader").all_inner_texts()
    assert headers and not {"teacher_id", "record_id"} & set(headers)
    approver.get_by_role("button", name="Approve this extract").click()
    expect(approver.get_by_text("approved", exact=True)).to_be_visible()

    analyst.reload()
    with analyst.expect_download() as downloading:
        analyst.get_by_role("button", name="Download").click()
    saved = extract_site.folder / "downloaded.parquet"
    downloading.value.save_as(saved)
    record = json.loads(pq.read_schema(saved).metadata[files.METADATA_KEY])
    assert record["request_id"] == request_id and record["recipient"] == EPP
    # Once: the page no longer offers it.
    analyst.reload()
    expect(analyst.get_by_role("button", name="Download")).to_have_count(0)
