"""Web sessions seen from a real browser (Debian's chromium through Playwright): the
cookie's attributes over plain HTTP, over TLS and through a trusted proxy; signing out,
revocation, the idle timeout and the absolute lifetime, each ending the session on the
server; and a database that holds only the hash of the id the cookie carries.

Three servers share one initialised data folder (SQLite, or PostgreSQL when
GATEWAY_TEST_DATABASE_URL is set):

- ``proxied``: ``gateway serve --trust-proxy 127.0.0.1``, the real command in its own
  process, with the default timeouts; it believes ``X-Forwarded-Proto`` from 127.0.0.1;
- ``tls``: uvicorn serving HTTPS itself (a certificate made here with ``cryptography``),
  with a 3-second idle timeout;
- ``short``: plain HTTP with a 3-second lifetime, trusting no proxy (as ``gateway
  serve`` without ``--trust-proxy``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from gateway import audit
from gateway.app import create_app
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.storage.tables import WebSession
from tests.conftest import (
    AGREEMENT,
    BACKENDS,
    DISTRICT,
    Databases,
    DatabaseTemplates,
    issue_token,
    make_settings,
    settings_env,
)
from tests.test_web import _free_port, browser, sign_in  # noqa: F401 (the browser fixture)

with contextlib.suppress(ImportError):  # without it, the browser fixture skips or fails
    from playwright.sync_api import Browser, BrowserContext, Page, expect

# The servers and the browser are module fixtures: keep the module on one xdist worker.
pytestmark = pytest.mark.xdist_group("web-sessions")

GATEWAY = str(Path(sys.executable).with_name("gateway"))
SHORT = 3  # seconds: the tls server's idle timeout, the short server's lifetime


@dataclass
class Server:
    base: str
    settings: Settings


@dataclass
class Folder:
    settings: Settings
    backend: str
    folder: Path


@pytest.fixture(scope="module", params=BACKENDS)
def folder(
    request: pytest.FixtureRequest,
    database_templates: DatabaseTemplates,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Folder]:
    path = tmp_path_factory.mktemp("sessions")
    databases = Databases(request.param, database_templates)
    settings = make_settings(path, databases.new(path))
    initialise(settings)
    try:
        yield Folder(settings, request.param, path)
    finally:
        databases.close()


def _wait_started(server: uvicorn.Server, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def in_thread() -> Iterator[Any]:
    """Starts uvicorn servers in threads; stops them all at the end of the module."""
    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(settings: Settings, **options: Any) -> str:
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(settings),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                server_header=False,
                **options,
            )
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        running.append((server, thread))
        _wait_started(server, thread)
        scheme = "https" if "ssl_certfile" in options else "http"
        return f"{scheme}://127.0.0.1:{port}"

    yield start
    for server, thread in running:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def proxied(folder: Folder) -> Iterator[Server]:
    port = _free_port()
    log = (folder.folder / "serve.log").open("w")
    process = subprocess.Popen(
        [GATEWAY, "serve", "--port", str(port), "--trust-proxy", "127.0.0.1"],
        env={**os.environ, **settings_env(folder.settings)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, (folder.folder / "serve.log").read_text()
            assert time.monotonic() < deadline, "gateway serve did not start within 60 s"
            time.sleep(0.2)
        yield Server(base, folder.settings)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_file, certificate_file = folder / "tls.key", folder / "tls.crt"
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    certificate_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key_file, certificate_file


@pytest.fixture(scope="module")
def tls(folder: Folder, in_thread: Any) -> Server:
    settings = folder.settings.model_copy(update={"session_idle_seconds": SHORT})
    key_file, certificate_file = _certificate(folder.folder)
    base = in_thread(
        settings,
        ssl_keyfile=str(key_file),
        ssl_certfile=str(certificate_file),
        proxy_headers=False,
    )
    return Server(base, settings)


@pytest.fixture(scope="module")
def short(folder: Folder, in_thread: Any) -> Server:
    settings = folder.settings.model_copy(update={"session_lifetime_seconds": SHORT})
    return Server(in_thread(settings, proxy_headers=False), settings)


@pytest.fixture
def contexts(browser: Browser) -> Iterator[Any]:  # noqa: F811 (the imported fixture)
    made: list[BrowserContext] = []

    def new(server: Server, **options: Any) -> Page:
        context = browser.new_context(base_url=server.base, **options)
        context.set_default_timeout(10_000)
        made.append(context)
        return context.new_page()

    yield new
    for context in made:
        context.close()


# --- helpers ----------------------------------------------------------------------------------


def session_cookie(page: Page) -> dict[str, Any]:
    (cookie,) = [c for c in page.context.cookies() if c["name"] == "gateway_session"]
    return dict(cookie)


def stored_sessions(settings: Settings) -> list[dict[str, Any]]:
    with Gateway.open(settings, checkpoint=False) as gw, gw.reads() as db:
        return [dict(r._mapping) for r in db.execute(select(WebSession.__table__))]


def stored_session(settings: Settings, value: str) -> dict[str, Any]:
    (found,) = [
        r
        for r in stored_sessions(settings)
        if r["id_hash"] == hashlib.sha256(value.encode()).hexdigest()
    ]
    return found


def events(settings: Settings, kind: str) -> list[dict[str, Any]]:
    with Gateway.open(settings, checkpoint=False) as gw, gw.reads() as db:
        return [audit.event_view(e) for e in db.scalars(audit.query_events(kind=kind))]


def fetch(url: str, cookie: str) -> tuple[int, str]:
    """A plain HTTP client (no browser) sending one cookie."""
    request = urllib.request.Request(url, headers={"Cookie": f"gateway_session={cookie}"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def signed_out_with(page: Page, words: str) -> None:
    expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text(words)
    assert not [c for c in page.context.cookies() if c["name"] == "gateway_session"]


# --- the cookie ---------------------------------------------------------------------------------


def test_the_cookie_is_an_opaque_id_whose_hash_alone_is_stored(
    contexts: Any, proxied: Server, folder: Folder
) -> None:
    token = issue_token(proxied.settings, role="reviewer", party=None)
    page = contexts(proxied)
    sign_in(page, token)
    cookie = session_cookie(page)
    # HttpOnly, SameSite=Lax, only for /web, and not Secure over plain HTTP.
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/web"
    assert cookie["secure"] is False
    assert cookie["expires"] == -1  # a browser-session cookie: gone when the browser closes
    value = str(cookie["value"])
    assert len(value) >= 43 and token.split("_", 2)[2] not in value
    # The database holds the id's SHA-256 and never the id: in no column of any row...
    rows = stored_sessions(proxied.settings)
    assert stored_session(proxied.settings, value)["ended_at"] is None
    assert not [r for r in rows if value in repr(r)]
    # ...in no event, and, on SQLite, nowhere in the database's files.
    assert value not in repr(events(proxied.settings, "session-started"))
    if folder.backend == "sqlite":
        files = sorted(proxied.settings.data_dir.glob("gateway.db*"))
        assert files and not [f for f in files if value.encode() in f.read_bytes()]
    assert value not in (folder.folder / "serve.log").read_text()


def test_behind_a_trusted_proxy_the_cookie_is_secure(contexts: Any, proxied: Server) -> None:
    token = issue_token(proxied.settings, role="reviewer", party=None)
    # The TLS proxy in front of the gateway says the browser came over HTTPS.
    page = contexts(proxied, extra_http_headers={"X-Forwarded-Proto": "https"})
    page.goto("/web/sign-in")
    page.get_by_label("Your token").fill(token)
    with page.expect_response(lambda r: r.request.method == "POST") as answer:
        page.get_by_role("button", name="Sign in").click()
    (set_cookie,) = [
        h["value"]
        for h in answer.value.headers_array()
        if h["name"].lower() == "set-cookie" and h["value"].startswith("gateway_session=")
    ]
    attributes = [a.strip().lower() for a in set_cookie.split(";")]
    assert "secure" in attributes and "httponly" in attributes and "samesite=lax" in attributes


def test_a_proxy_header_from_an_untrusted_address_changes_nothing(
    contexts: Any, short: Server
) -> None:
    token = issue_token(short.settings, role="reviewer", party=None)
    page = contexts(short, extra_http_headers={"X-Forwarded-Proto": "https"})
    sign_in(page, token)
    assert session_cookie(page)["secure"] is False


def test_over_tls_the_cookie_is_secure(contexts: Any, tls: Server) -> None:
    token = issue_token(tls.settings, role="reviewer", party=None)
    page = contexts(tls, ignore_https_errors=True)
    sign_in(page, token)
    cookie = session_cookie(page)
    assert cookie["secure"] is True and cookie["httpOnly"] and cookie["sameSite"] == "Lax"


def test_another_sites_form_carries_no_session_but_its_link_does(
    contexts: Any, proxied: Server
) -> None:
    """SameSite=Lax: a link from another site (the identity provider's redirect back is
    one) arrives signed in; a form another site posts arrives without the session."""
    token = issue_token(proxied.settings, role="reviewer", party=None)
    page = contexts(proxied)
    sign_in(page, token)
    verifications = len(events(proxied.settings, "access-refused"))
    # Another site's page (served here by Playwright at an address of its own).
    elsewhere = page.context.new_page()
    elsewhere.route(
        "http://elsewhere.example/",
        lambda route: route.fulfill(
            content_type="text/html",
            body=f'<a href="{proxied.base}/web">gateway</a>'
            f'<form method="post" action="{proxied.base}/web/audit/verify">'
            '<input name="csrf" value="x"><button>go</button></form>',
        ),
    )
    elsewhere.goto("http://elsewhere.example/")
    elsewhere.get_by_role("link", name="gateway").click()
    expect(elsewhere.get_by_role("heading", name="Your agreements")).to_be_visible()
    elsewhere.goto("http://elsewhere.example/")
    elsewhere.get_by_role("button", name="go").click()
    # No session came with the POST: the sign-in form, not a refused form (403).
    expect(elsewhere.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
    assert len(events(proxied.settings, "access-refused")) == verifications


# --- ending a session -----------------------------------------------------------------------


def test_signing_out_ends_the_session_on_the_server(
    contexts: Any, proxied: Server, short: Server
) -> None:
    token = issue_token(proxied.settings, role="uploader", party=DISTRICT)
    page = contexts(proxied)
    sign_in(page, token)
    value = str(session_cookie(page)["value"])
    path = f"/web/agreements/{AGREEMENT}/upload"
    # The cookie alone works, before; on another server over the same database too.
    assert fetch(proxied.base + path, value)[0] == 200
    assert fetch(short.base + path, value)[0] == 200
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    assert not [c for c in page.context.cookies() if c["name"] == "gateway_session"]
    # ...and not after: a copy of the old cookie is refused, by every server.
    for server in (proxied, short):
        status, body = fetch(server.base + path, value)
        assert status == 401 and "This session was signed out; sign in again." in body
    stored = stored_session(proxied.settings, value)
    assert stored["end_reason"] == "signed-out" and stored["ended_at"] is not None
    (ended,) = [
        e
        for e in events(proxied.settings, "session-ended")
        if e["details"]["session"] == stored["id_hash"][:16]
    ]
    assert ended["details"]["reason"] == "signed-out"
    assert ended["actor"]["credential_id"] == token.split("_")[1]


def test_a_revoked_token_is_signed_out_at_once(contexts: Any, proxied: Server) -> None:
    token = issue_token(proxied.settings, role="reviewer", party=None)
    credential_id = token.split("_")[1]
    page = contexts(proxied)
    sign_in(page, token)
    value = str(session_cookie(page)["value"])
    revoked = CliRunner().invoke(
        main, ["tokens", "revoke", credential_id], env=settings_env(proxied.settings)
    )
    assert revoked.exit_code == 0, revoked.output
    # Ended by the revocation itself, before the browser asks for anything.
    assert stored_session(proxied.settings, value)["end_reason"] == "credential-revoked"
    page.get_by_role("link", name="Audit log", exact=True).click()
    signed_out_with(page, f"Credential {credential_id} is revoked; ask the operator")


def test_an_idle_session_ends_and_an_active_one_does_not(contexts: Any, tls: Server) -> None:
    token = issue_token(tls.settings, role="reviewer", party=None)
    page = contexts(tls, ignore_https_errors=True)
    sign_in(page, token)
    value = str(session_cookie(page)["value"])
    # Clicks every half second for longer than the idle timeout keep the session.
    busy_until = time.monotonic() + SHORT + 1
    while time.monotonic() < busy_until:
        page.get_by_role("link", name="Audit log", exact=True).click()
        expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
        time.sleep(0.5)
    time.sleep(SHORT + 0.5)
    page.get_by_role("link", name="Audit log", exact=True).click()
    signed_out_with(page, f"Your session ended after {SHORT} seconds without activity")
    assert stored_session(tls.settings, value)["end_reason"] == "idle"


def test_a_session_ends_at_its_lifetime_however_active(contexts: Any, short: Server) -> None:
    token = issue_token(short.settings, role="reviewer", party=None)
    page = contexts(short)
    sign_in(page, token)
    started = time.monotonic()  # the session started before this
    value = str(session_cookie(page)["value"])
    while time.monotonic() < started + SHORT - 1:
        page.get_by_role("link", name="Audit log", exact=True).click()
        expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
        time.sleep(0.3)
    time.sleep(max(0.0, started + SHORT + 0.5 - time.monotonic()))
    page.get_by_role("link", name="Audit log", exact=True).click()
    signed_out_with(page, f"Your session reached its limit of {SHORT} seconds")
    assert stored_session(short.settings, value)["end_reason"] == "expired"
