"""The pages for the daily work, in a real browser (issue 16 item 5): upload and release
histories per agreement, each dataset's data dictionary and templates, the Excel
download of a report, and upload errors in the uploader's words with the navigation
kept on every error page.

The server, the data and the sign-in are tests/test_web.py's (its fixtures, imported).
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from pathlib import Path

import openpyxl
from playwright.sync_api import BrowserContext, Page, expect

from gateway.api.uploads import _too_large
from tests import test_web
from tests.conftest import AGREEMENT, DISTRICT, EPP
from tests.test_web import Site, assert_accessible, sign_in

# tests/test_web.py's fixtures (its server and data, its browser), used by name.
site = test_web.site
browser = test_web.browser
context = test_web.context
page = test_web.page

EVALUATIONS_HEADERS = [
    "MEPID",
    "SY",
    "School Code",
    "Subject",
    "Grade Span",
    "Yrs Experience",
    "Summative Rating",
]
# What a regular expression looks like on a page: none may be shown to people.
REGEX = re.compile(r"\(\?=|\{1,\d+\}|\[0-9|\^\(|\$'")


def _navigation_kept(page: Page) -> None:
    """The page is a signed-in page: the main navigation and the sign-out button, and no
    offer to sign in again."""
    expect(page.get_by_role("navigation", name="Main")).to_be_visible()
    expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    expect(page.get_by_role("link", name="sign in again")).to_have_count(0)


def _upload(page: Page, dataset: str, name: str, mime: str, data: bytes) -> None:
    page.goto(f"/web/agreements/{AGREEMENT}/upload")
    page.get_by_label("Dataset").select_option(dataset)
    page.get_by_label("Extract file").set_input_files(
        {"name": name, "mimeType": mime, "buffer": data}
    )
    page.get_by_role("button", name="Upload").click()


# --- histories -------------------------------------------------------------------------------


def test_an_uploader_sees_its_own_partys_uploads(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["uploader"])
    page.get_by_role("link", name="Your party's uploads").first.click()
    expect(page.get_by_role("heading", name="Uploads", level=1)).to_be_visible()
    assert_accessible(page)
    table = page.get_by_role("table", name=f"Uploads of {AGREEMENT}")
    datasets = table.locator("tbody tr td:nth-child(2)").all_inner_texts()
    assert "evaluations" in datasets
    assert "completers" not in datasets  # the EPP's upload is not the district's to see
    row = table.locator("tbody tr").filter(has_text="evaluations").last
    expect(row).to_contain_text("Accepted")


def test_a_reviewer_sees_every_partys_uploads_and_releases(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["reviewer"])
    page.get_by_role("link", name="Uploads").first.click()
    assert_accessible(page)
    table = page.get_by_role("table", name=f"Uploads of {AGREEMENT}")
    parties = set(table.locator("tbody tr td:nth-child(3)").all_inner_texts())
    assert {DISTRICT, EPP} <= parties
    page.goto("/web")
    page.get_by_role("link", name="Releases").first.click()
    assert_accessible(page)
    releases = page.get_by_role("table", name=f"Releases of {AGREEMENT}")
    expect(releases.locator("tbody tr").filter(has_text="count")).not_to_have_count(0)
    # A reviewer reads the history; the cells are the recipients' to download.
    expect(releases.get_by_role("link", name="CSV")).to_have_count(0)


def test_an_analyst_sees_the_releases_its_party_received_and_downloads_them(
    page: Page, site: Site
) -> None:
    sign_in(page, site.tokens["epp-analyst"])
    page.get_by_role("link", name="Releases your party received").first.click()
    expect(page.get_by_role("heading", name="Releases", level=1)).to_be_visible()
    assert_accessible(page)
    table = page.get_by_role("table", name=f"Releases of {AGREEMENT}")
    row = table.locator("tbody tr").filter(has_text="grade_band").first
    expect(row).to_contain_text("count")
    expect(row).to_contain_text(EPP)
    expect(row).to_contain_text("0.25")
    with page.expect_download() as downloading:
        row.get_by_role("link", name="CSV").click()
    header = Path(downloading.value.path()).read_text().splitlines()[0]
    assert header.startswith("grade_band,") and "ci95_low" in header


# --- data dictionary and templates -------------------------------------------------------------


def test_the_data_dictionary_says_what_each_column_takes_and_what_is_dropped(
    page: Page, site: Site
) -> None:
    sign_in(page, site.tokens["uploader"])
    page.get_by_role("link", name="Data dictionary and templates: evaluations").click()
    expect(page.get_by_role("heading", name="Data dictionary: evaluations")).to_be_visible()
    assert_accessible(page)
    table = page.get_by_role("table", name=re.compile("^Columns of evaluations"))

    def row(header: str) -> str:
        return (
            table.locator("tbody tr")
            .filter(has=page.get_by_role("rowheader", name=re.compile(f"^{re.escape(header)}")))
            .inner_text()
        )

    educator = row("MEPID")
    assert "Replaced by a pseudonym" in educator and "never stored" in educator
    assert "1 to 15 letters and digits, at least one of them a digit" in educator
    assert "Dropped" in row("Last Name") and "never stored" in row("Last Name")
    rating = row("Summative Rating")
    # The label is the schema's description, the allowed values its codes with labels.
    assert "Summative evaluation rating on the four-level state scale." in rating
    assert "1 (ineffective)" in rating and "4 (exemplary)" in rating
    assert "Stored" in rating
    assert not REGEX.search(page.content())


def test_the_templates_carry_the_agreements_header_names(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["uploader"])
    page.goto(f"/web/agreements/{AGREEMENT}/upload")
    with page.expect_download() as downloading:
        page.get_by_role("link", name="CSV template (evaluations)").click()
    text = Path(downloading.value.path()).read_text(encoding="utf-8")
    assert text.splitlines() == [",".join(EVALUATIONS_HEADERS)]
    with page.expect_download() as downloading:
        page.get_by_role("link", name="Excel template (evaluations)").click()
    book = openpyxl.load_workbook(io.BytesIO(Path(downloading.value.path()).read_bytes()))
    assert book.sheetnames == ["Data", "Guide"]
    assert [c.value for c in book["Data"][1]] == EVALUATIONS_HEADERS
    guide = {row[0]: row for row in book["Guide"].iter_rows(min_row=3, values_only=True)}
    assert set(guide) == set(EVALUATIONS_HEADERS)
    assert guide["Summative Rating"][1] == (
        "Summative evaluation rating on the four-level state scale."
    )
    # The template, filled in, is accepted as it is.
    filled = text + "100001,2025,S-01,ELA,3-5,4,3\n"
    _upload(page, "evaluations", "filled.csv", "text/csv", filled.encode())
    expect(page.get_by_role("status")).to_contain_text("Accepted. 1 row(s) of evaluations")


# --- upload errors in the uploader's words ----------------------------------------------------


def test_a_picture_is_refused_without_rows_or_no_problem_beside_it(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["uploader"])
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    _upload(page, "evaluations", "chart.png", "image/png", png)
    expect(page.get_by_role("alert")).to_contain_text("Refused: nothing was stored.")
    expect(page.get_by_role("alert")).to_contain_text("the file is a PNG image, not a table")
    expect(page.get_by_role("heading", name="What to do")).to_be_visible()
    expect(page.get_by_role("table", name="Rows")).to_have_count(0)
    expect(page.get_by_text("No problem was found")).to_have_count(0)
    expect(page.get_by_role("link", name="data dictionary of evaluations")).to_be_visible()
    _navigation_kept(page)
    assert_accessible(page)


def test_an_empty_file_keeps_the_navigation(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["uploader"])
    _upload(page, "evaluations", "empty.csv", "text/csv", b"")
    expect(page.get_by_role("alert")).to_contain_text("empty")
    _navigation_kept(page)
    assert_accessible(page)


def test_every_error_page_of_a_signed_in_person_keeps_the_navigation(
    page: Page, site: Site
) -> None:
    sign_in(page, site.tokens["uploader"])
    for path, status in (
        (f"/web/agreements/{AGREEMENT}/reports", 403),
        ("/web/agreements/no-such-agreement/upload", 403),
        (f"/web/agreements/{AGREEMENT}/datasets/no-such-dataset", 404),
    ):
        response = page.goto(path)
        assert response is not None and response.status == status, path
        expect(page.get_by_role("alert")).to_be_visible()
        _navigation_kept(page)
        assert_accessible(page)


def test_a_bad_educator_id_is_explained_in_words(page: Page, site: Site) -> None:
    sign_in(page, site.tokens["uploader"])
    bad = ",".join(EVALUATIONS_HEADERS) + "\nABCDEF,2025,S-01,ELA,3-5,4,3\n"
    _upload(page, "evaluations", "ids.csv", "text/csv", bad.encode())
    problems = page.get_by_role("table", name=re.compile("^Problems"))
    expect(problems).to_contain_text("1 to 15 letters and digits, at least one of them a digit")
    expect(page.get_by_text(re.compile("^What to do:"))).to_be_visible()
    assert not REGEX.search(page.content())
    assert "ABCDEF" not in page.content()  # the value itself is never shown
    _navigation_kept(page)


def test_a_too_large_file_is_told_the_limit_not_a_setting() -> None:
    message = _too_large(25 * 1024 * 1024).message
    assert "25 MB" in message and "split it" in message
    assert "GATEWAY_" not in message


# --- the report as Excel ----------------------------------------------------------------------


def test_an_analyst_downloads_a_whole_report_as_excel(
    page: Page, site: Site, context: BrowserContext
) -> None:
    sign_in(page, site.tokens["analyst"])
    page.goto(f"/web/agreements/{AGREEMENT}/reports/performance_by_provider")
    page.get_by_label("Years").fill("2025")
    page.get_by_role("button", name="Run the report").click()
    expect(page.get_by_role("heading", name="Results")).to_be_visible()
    captions = page.get_by_role("table", name=re.compile(": one row per cell$"))
    titles = [
        t.removesuffix(": one row per cell") for t in captions.locator("caption").all_inner_texts()
    ]
    with page.expect_download() as downloading:
        page.get_by_role("link", name="Download the whole report as Excel").click()
    book = openpyxl.load_workbook(io.BytesIO(Path(downloading.value.path()).read_bytes()))
    assert book.sheetnames[0] == "About" and len(book.sheetnames) == 1 + len(titles)
    first = book[book.sheetnames[1]]
    assert first["A1"].value == titles[0]
    header = [c.value for c in first[2]]
    statuses = [row[header.index("status")] for row in first.iter_rows(min_row=3, values_only=True)]
    assert statuses and all(
        s == "published" or s.startswith(("suppressed", "rolled up", "coded")) for s in statuses
    )
    # The same tables as CSV files in a zip, one per table, each with its title.
    with page.expect_download() as downloading:
        page.get_by_role("link", name="Download every table as CSV (zip)").click()
    with zipfile.ZipFile(downloading.value.path()) as archive:
        names = archive.namelist()
        assert len(names) == len(titles)
        first_rows = list(csv.DictReader(io.StringIO(archive.read(names[0]).decode())))
    assert {row["table"] for row in first_rows} == {titles[0]}
    # Another party's analyst cannot read this party's releases through the link.
    link = page.get_by_role("link", name="Download the whole report as Excel").get_attribute("href")
    other = context.browser.new_context(base_url=site.base)  # type: ignore[union-attr]
    try:
        other_page = other.new_page()
        sign_in(other_page, site.tokens["uploader"])
        assert other_page.request.get(str(link)).status == 403
    finally:
        other.close()
