"""Every main page, as a person sees it at desk and phone width: screenshots, layout and an
automated accessibility check (axe-core, in the same Chromium).

For each screen of :data:`SCREENS` and each width of :data:`WIDTHS` the test signs in as
the screen's person, opens the page (pressing the button the screen names: a report's
results are the answer to its form), saves a full-page screenshot under pytest's
temporary folder (never the repository), and checks:

- the screenshot is not blank (a page that failed to draw is one colour);
- nothing makes the page wider than the window (document scrollWidth <= window width),
  and every chart fits the width it is given (charts scale through their viewBox; only
  tables scroll, inside their own box);
- axe-core finds no serious or critical violation.

A new page joins by adding a :class:`Screen` to :data:`SCREENS`; every report of every
example agreement is added by :func:`report_screens`, so a new report is covered as soon
as an agreement names it.

axe-core comes from the npm registry, pinned to :data:`AXE_VERSION`, installed by npm once
into a cache folder outside the repository (:func:`axe_script`). Without npm or the
registry the test skips on a developer's machine and fails under CI=true, as the browser
tests do without chromium.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
import uvicorn

from gateway.agreements.loader import load_registry
from gateway.app import create_app
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.release.reports import list_reports
from tests.conftest import (
    AGREEMENT,
    AGREEMENTS_DIR,
    DISTRICT,
    POLICIES_DIR,
    issue_token,
    make_settings,
    roomy_agreements,
    upload_generated,
)

try:
    from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
except ImportError:  # pragma: no cover - reported by the browser fixture
    sync_playwright = None  # type: ignore[assignment]

CHROMIUM = shutil.which("chromium")

#: The widths every screen is checked at: a laptop, and a phone (an iPhone 12 to 15).
WIDTHS = {"desktop": (1280, 800), "phone": (390, 844)}

#: axe-core from the npm registry, pinned so a new rule never fails an unchanged page.
AXE_VERSION = "4.14.1"

#: The impacts that fail a page (axe's scale: minor, moderate, serious, critical).
FAILING_IMPACTS = ("serious", "critical")

#: The epsilon the report screens run at: the test agreements are roomy (conftest), so
#: enough cells publish for the charts to have bars, lines and a grid to draw.
REPORT_EPSILON = "4"


def _unavailable(reason: str) -> NoReturn:
    """Skip on a developer's machine; fail in CI, where everything must be there."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


# --- the screens ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Screen:
    """One page as a person reaches it: who is signed in (a key of the site's tokens, or
    None), where they go, what they type and the button they press there."""

    name: str
    path: str
    who: str | None
    fill: tuple[tuple[str, str], ...] = ()
    press: str | None = None
    status: int = 200


def report_screens() -> list[Screen]:
    """Every report of every example agreement, run by the first party that receives it
    (the form, then the results)."""
    registry = load_registry(AGREEMENTS_DIR, POLICIES_DIR)
    screens = []
    for agreement_id, agreement in sorted(registry.agreements.items()):
        seen: set[str] = set()
        for party in sorted(agreement.releases):
            for report in list_reports(agreement, party=party):
                if report["name"] in seen:
                    continue
                seen.add(report["name"])
                screens.append(
                    Screen(
                        name=f"report-{agreement_id}-{report['name']}",
                        path=f"/web/agreements/{agreement_id}/reports/{report['name']}",
                        who=f"analyst:{party}",
                        fill=(("Epsilon", REPORT_EPSILON),),
                        press="Run the report",
                    )
                )
    return screens


SCREENS: list[Screen] = [
    Screen("sign-in", "/web/sign-in", None),
    Screen("home-uploader", "/web", "uploader"),
    Screen("upload-form", f"/web/agreements/{AGREEMENT}/upload", "uploader"),
    Screen("home-analyst", "/web", f"analyst:{DISTRICT}"),
    Screen("reports", f"/web/agreements/{AGREEMENT}/reports", f"analyst:{DISTRICT}"),
    Screen(
        "report-preview",
        f"/web/agreements/{AGREEMENT}/reports/retention",
        f"analyst:{DISTRICT}",
        press="Preview accuracy and cost",
    ),
    Screen("budget-analyst", f"/web/agreements/{AGREEMENT}/budget", f"analyst:{DISTRICT}"),
    Screen("home-reviewer", "/web", "reviewer"),
    Screen("budget-reviewer", f"/web/agreements/{AGREEMENT}/budget", "reviewer"),
    Screen("audit", "/web/audit", "reviewer"),
    Screen("audit-verified", "/web/audit", "reviewer", press="Verify the log"),
    Screen("not-allowed", f"/web/agreements/{AGREEMENT}/reports", "uploader", status=403),
    *report_screens(),
    # The pages for the daily work (issue 16 item 5), after the reports: they have
    # releases to list.
    Screen("uploads-uploader", f"/web/agreements/{AGREEMENT}/uploads", "uploader"),
    Screen("uploads-reviewer", f"/web/agreements/{AGREEMENT}/uploads", "reviewer"),
    Screen("releases-analyst", f"/web/agreements/{AGREEMENT}/releases", f"analyst:{DISTRICT}"),
    Screen("releases-reviewer", f"/web/agreements/{AGREEMENT}/releases", "reviewer"),
    Screen("dictionary", f"/web/agreements/{AGREEMENT}/datasets/evaluations", "uploader"),
    Screen(
        "not-found-signed-in",
        f"/web/agreements/{AGREEMENT}/datasets/no-such-dataset",
        "uploader",
        status=404,
    ),
    # Record-level extracts (docs/extracts.md): the EPP's analyst asks for one, and reads
    # the request's page (what the approver will see: columns, generalisation, risk, sample).
    Screen("extracts-analyst", f"/web/agreements/{AGREEMENT}/extracts", "analyst:bayview-state"),
    Screen(
        "extract-asked",
        f"/web/agreements/{AGREEMENT}/extracts",
        "analyst:bayview-state",
        press="Ask for it",
    ),
]


# --- the site ---------------------------------------------------------------------------------


@dataclass
class Site:
    base: str
    settings: Settings
    tokens: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A gateway with every example agreement (roomy budgets) and every dataset of each
    uploaded from generated data, served by uvicorn in a thread."""
    folder = tmp_path_factory.mktemp("screens")
    settings = make_settings(
        folder,
        f"sqlite:///{folder / 'data' / 'gateway.db'}",
        agreements_dir=roomy_agreements(folder),
    )
    initialise(settings)
    tokens: dict[str, str] = {}
    with Gateway.open(settings) as gw:
        agreements = sorted(gw.registry.agreements)
        for agreement_id in agreements:
            upload_generated(gw, agreement_id, folder / "extracts" / agreement_id, seed=3)
            for party in gw.agreement(agreement_id).releases:
                tokens[f"analyst:{party}"] = issue_token(
                    settings, role="analyst", party=party, agreements=(agreement_id,)
                )
    tokens["uploader"] = issue_token(settings, role="uploader", party=DISTRICT)
    tokens["reviewer"] = issue_token(
        settings, role="reviewer", party=None, agreements=tuple(agreements)
    )
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
        yield Site(f"http://127.0.0.1:{port}", settings, tokens)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


# --- the browser and axe-core -----------------------------------------------------------------


def _cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gateway-tests" / f"axe-core-{AXE_VERSION}"


def axe_script() -> str:
    """axe.min.js at AXE_VERSION: from the cache folder, or installed there by npm (into
    a temporary folder first, then moved, so parallel workers never read half a file)."""
    target = _cache_folder() / "axe.min.js"
    if not target.exists():
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("npm is not installed: axe-core cannot be fetched")
        target.parent.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent.parent) as scratch:
            try:
                subprocess.run(
                    [npm, "install", "--no-save", "--no-audit", "--no-fund", "--ignore-scripts",
                     "--fetch-retry-maxtimeout=15000", "--prefix", scratch,
                     f"axe-core@{AXE_VERSION}"],
                    check=True, capture_output=True, timeout=300,
                )  # fmt: skip
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
                _unavailable(f"npm could not install axe-core@{AXE_VERSION}: {error}")
            installed = Path(scratch) / "node_modules" / "axe-core"
            target.parent.mkdir(exist_ok=True)
            staged = target.with_suffix(f".{os.getpid()}.tmp")
            shutil.copyfile(installed / "axe.min.js", staged)
            staged.replace(target)
    return target.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def axe() -> str:
    return axe_script()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    if CHROMIUM is None:
        _unavailable("chromium is not installed (make test installs it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def contexts(
    browser: Browser, site: Site
) -> Iterator[dict[tuple[str | None, str], BrowserContext]]:
    """One signed-in browser context per person and width, made when first needed."""
    made: dict[tuple[str | None, str], BrowserContext] = {}
    yield made
    for context in made.values():
        context.close()


def _context(
    contexts: dict[tuple[str | None, str], BrowserContext],
    browser: Browser,
    site: Site,
    who: str | None,
    width: str,
) -> BrowserContext:
    if (who, width) not in contexts:
        w, h = WIDTHS[width]
        context = browser.new_context(base_url=site.base, viewport={"width": w, "height": h})
        context.set_default_timeout(20_000)
        if who is not None:
            page = context.new_page()
            page.goto("/web/sign-in")
            page.get_by_label("Your token").fill(site.tokens[who])
            page.get_by_role("button", name="Sign in").click()
            page.get_by_role("heading", name="Your agreements").wait_for()
            page.close()
        contexts[(who, width)] = context
    return contexts[(who, width)]


# --- the checks -------------------------------------------------------------------------------


def painted_share(browser: Browser, png: bytes) -> float:
    """The share of a screenshot's pixels that differ from its top-left pixel, counted by
    the browser itself (a canvas, on a page of its own: no image library needed)."""
    page = browser.new_page()
    try:
        return float(
            page.evaluate(
                """async (data) => {
                const image = new Image();
                image.src = 'data:image/png;base64,' + data;
                await image.decode();
                const canvas = document.createElement('canvas');
                canvas.width = image.width; canvas.height = image.height;
                const context = canvas.getContext('2d');
                context.drawImage(image, 0, 0);
                const pixels = context.getImageData(0, 0, image.width, image.height).data;
                let differ = 0;
                for (let i = 0; i < pixels.length; i += 4) {
                    if (pixels[i] !== pixels[0] || pixels[i + 1] !== pixels[1]
                        || pixels[i + 2] !== pixels[2]) differ++;
                }
                return differ / (pixels.length / 4);
            }""",
                base64.b64encode(png).decode(),
            )
        )
    finally:
        page.close()


def layout_problems(page: Page) -> list[str]:
    """What sticks out: a page wider than the window, or a chart wider than its box."""
    found: list[str] = page.evaluate(
        """() => {
        const found = [];
        const width = window.innerWidth;
        const doc = document.documentElement;
        if (doc.scrollWidth > width) {
            // Name the outermost element that sticks out, to say where to look.
            // (text running out of its box counts: a long word in a heading)
            const out = [...document.querySelectorAll('main *, header *')].find(
                (e) => !e.parentElement.closest('.scroll') && (
                    e.getBoundingClientRect().right > width + 0.5
                    || (e.scrollWidth > e.clientWidth + 1 && e.clientWidth > 0
                        && getComputedStyle(e).overflowX === 'visible')));
            const where = out ? `${out.tagName.toLowerCase()}.${out.className}` : 'unknown';
            found.push(`the page is ${doc.scrollWidth}px wide in a ${width}px window (${where})`);
        }
        // A grid (a joint table) is a table: like any table, it may scroll in its box.
        for (const chart of document.querySelectorAll('svg.chart')) {
            const box = chart.getBoundingClientRect();
            const holder = chart.parentElement.getBoundingClientRect();
            if (box.right > width + 0.5 || box.width > holder.width + 0.5) {
                const name = chart.getAttribute('aria-labelledby') || chart.id || chart.tagName;
                found.push(`chart ${name} is ${Math.round(box.width)}px wide in a ` +
                           `${Math.round(holder.width)}px box`);
            }
        }
        return found;
    }"""
    )
    return found


def axe_violations(page: Page, axe: str) -> list[dict[str, Any]]:
    """axe-core's violations of the impacts that fail a page. The script is evaluated
    through the browser's debugging protocol, which the pages' Content-Security-Policy
    (no script at all) does not govern, so the page is checked exactly as served."""
    if not page.evaluate("() => typeof window.axe !== 'undefined'"):
        page.evaluate(axe + "\n;undefined")
    result: dict[str, Any] = page.evaluate(
        """async () => await axe.run(document, {
            resultTypes: ['violations'],
            runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa',
                                            'wcag22aa', 'best-practice']},
        })"""
    )
    return [v for v in result["violations"] if v.get("impact") in FAILING_IMPACTS]


def _describe(violations: list[dict[str, Any]]) -> str:
    lines = []
    for violation in violations:
        lines.append(f"{violation['impact']} {violation['id']}: {violation['help']}")
        for node in violation["nodes"][:5]:
            lines.append(f"    {node['target']}: {node.get('failureSummary', '')[:300]}")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pytest's temporary folder, or SCREENSHOTS_DIR (to look at them after)."""
    chosen = os.environ.get("SCREENSHOTS_DIR")
    if chosen:
        Path(chosen).mkdir(parents=True, exist_ok=True)
        return Path(chosen)
    return tmp_path_factory.mktemp("screenshots")


@pytest.mark.parametrize("width", sorted(WIDTHS))
@pytest.mark.parametrize("screen", SCREENS, ids=[s.name for s in SCREENS])
def test_the_page_reads_well_at_desk_and_phone_width(
    screen: Screen,
    width: str,
    axe: str,  # first: without axe-core the test skips before the site is built
    browser: Browser,
    site: Site,
    contexts: dict[tuple[str | None, str], BrowserContext],
    screenshots: Path,
) -> None:
    page = _context(contexts, browser, site, screen.who, width).new_page()
    try:
        response = page.goto(screen.path)
        assert response is not None
        for label, value in screen.fill:
            page.get_by_label(label, exact=True).fill(value)
        if screen.press:
            with page.expect_navigation() as navigation:
                page.get_by_role("button", name=screen.press).click()
            response = navigation.value
            assert response is not None
        assert response.status == screen.status, f"{screen.name}: {response.status}"
        assert page.locator("h1").count() == 1

        png = page.screenshot(full_page=True, path=screenshots / f"{screen.name}-{width}.png")
        assert painted_share(browser, png) > 0.01, f"{screen.name} at {width} looks blank"
        assert layout_problems(page) == []
        violations = axe_violations(page, axe)
        assert not violations, f"{screen.name} at {width}:\n{_describe(violations)}"
    finally:
        page.close()
