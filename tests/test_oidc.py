"""Single sign-on against a real OpenID provider started by the tests (gateway/oidc.py,
gateway/web/sso.py, the API's access tokens in gateway/api/auth.py).

The provider is the certified ``oidc-provider`` package from the npm registry, pinned by
tests/oidc/package-lock.json and installed by ``npm ci`` once into a cache folder outside
the repository, run with the machine's Node.js (tests/oidc/provider.mjs). Nothing of the
protocol is imitated: tokens are the provider's own, signed by its keys, fetched through
its own login form and token endpoint. Key rotation restarts it with another key set.
Without node or npm (or the registry) the tests skip on a developer's machine and fail
under CI=true, as the browser tests do.

One provider serves the module; one gateway server per database backend.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import secrets
import select
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx2 as httpx
import pytest
import uvicorn
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc.jwk import RSAKey

from gateway import audit, oidc
from gateway.agreements.loader import load_registry
from gateway.app import create_app
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.errors import ConfigurationError
from gateway.keys import MasterKey
from tests.conftest import (
    AGREEMENT,
    AGREEMENTS_DIR,
    BACKENDS,
    DISTRICT,
    EPP,
    POLICIES_DIR,
    Databases,
    DatabaseTemplates,
    issue_token,
    make_settings,
)

try:
    from playwright.sync_api import Browser, expect, sync_playwright
except ImportError:  # pragma: no cover - reported by the browser fixture
    sync_playwright = None  # type: ignore[assignment]

# One provider and one gateway per backend serve the module: keep it on one xdist worker.
pytestmark = pytest.mark.xdist_group("oidc")

OIDC_DIR = Path(__file__).parent / "oidc"
CHROMIUM = shutil.which("chromium")
API = "https://gateway.test/api"
OTHER_API = "https://other.test/api"
WEB_CLIENT = "gateway-web"
CLI_CLIENT = "gateway-cli"
SHORT_CLIENT = "gateway-cli-short"  # its access tokens live SHORT_TTL seconds
OTHER_CLIENT = "other-app"
SHORT_TTL = 2
LEEWAY = 1
CLI_REDIRECT = "http://127.0.0.1/callback"
PROVIDER_NAME = "Test IdP"
MIN_NODE = 20  # the oldest Node.js whose oidc-provider 9 issues tokens (see provider_folder)

#: The provider's people: a district uploader and an EPP analyst by group, a state
#: reviewer by email domain, and one whom no rule admits.
USERS: dict[str, dict[str, Any]] = {
    "dana": {"email": "dana.d@eastport.example", "groups": ["eastport-data-office"]},
    "ana": {"email": "ana.a@bayview.example", "groups": ["bayview-analysts", "staff"]},
    "rev": {"email": "rev.r@auditor.state.example", "groups": []},
    "stranger": {"email": "someone.s@elsewhere.example", "groups": ["unknown-group"]},
    "unverified": {
        "email": "rev2.u@auditor.state.example",
        "email_verified": False,
        "groups": [],
    },
}

MAPPING = {
    "claims": {"groups": "groups"},
    "rules": [
        {
            "when": {"group": "eastport-data-office"},
            "grant": {"role": "uploader", "party": DISTRICT, "agreements": [AGREEMENT]},
        },
        {
            "when": {"group": "bayview-analysts", "email_domain": "bayview.example"},
            "grant": {"role": "analyst", "party": EPP, "agreements": [AGREEMENT]},
        },
        {
            "when": {"email_domain": "auditor.state.example"},
            "grant": {"role": "reviewer", "agreements": [AGREEMENT]},
        },
    ],
}


def _unavailable(reason: str) -> NoReturn:
    """Skip on a developer's machine; fail in CI, where everything must be there."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the provider ---------------------------------------------------------------------------


def provider_folder() -> Path:
    """oidc-provider installed by ``npm ci`` from tests/oidc's lock file into a cache
    folder named by the lock file's hash (into a temporary folder first, then moved, so
    parallel workers never see half an install); provider.mjs copied beside it."""
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed: the OpenID provider cannot run")
    # oidc-provider 9 signs through jose 6, which needs WebCrypto as a global
    # (globalThis.crypto, unflagged from Node.js 19). Older nodes start the provider but
    # its token endpoint fails, which the tests would only see as a refused sign-in.
    version = subprocess.run(
        [node, "--version"], capture_output=True, text=True, timeout=30, check=False
    ).stdout.strip()
    found = re.match(r"v(\d+)\.", version)
    if found is None or int(found.group(1)) < MIN_NODE:
        _unavailable(
            f"node {version or '(no version)'} is too old for oidc-provider 9: Node.js "
            f"{MIN_NODE} or later is needed (Debian 12 ships 18; use Debian 13's nodejs "
            "or NodeSource's packages)"
        )
    lock = (OIDC_DIR / "package-lock.json").read_bytes()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gateway-tests"
    target = base / f"oidc-provider-{hashlib.sha256(lock).hexdigest()[:12]}"
    if not (target / "node_modules" / "oidc-provider" / "package.json").exists():
        npm = shutil.which("npm")
        if npm is None:
            _unavailable("npm is not installed: oidc-provider cannot be fetched")
        base.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=base))
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(OIDC_DIR / name, scratch / name)
        try:
            subprocess.run(
                [npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts",
                 "--fetch-retry-maxtimeout=15000", "--prefix", str(scratch)],
                check=True, capture_output=True, timeout=300,
            )  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
            shutil.rmtree(scratch, ignore_errors=True)
            _unavailable(f"npm could not install oidc-provider: {error}")
        try:
            scratch.rename(target)
        except OSError:  # another worker installed it first
            shutil.rmtree(scratch, ignore_errors=True)
    script = target / f"provider.{os.getpid()}.mjs"
    shutil.copyfile(OIDC_DIR / "provider.mjs", script)
    return script.parent


def new_key() -> RSAKey:
    kid = "k-" + secrets.token_hex(4)
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


@dataclass
class Provider:
    """The running provider: its address, keys, and how to restart it with others."""

    folder: Path
    config_file: Path
    port: int
    gateway_base: str
    keys: list[RSAKey] = field(default_factory=list)
    process: subprocess.Popen[str] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "issuer": self.issuer,
            "jwks": {"keys": [key.as_dict(private=True) for key in self.keys]},
            "clients": [
                {
                    "client_id": WEB_CLIENT,
                    "client_secret": "web-secret-" + "x" * 32,
                    "redirect_uris": [self.gateway_base + "/web/sign-in/oidc/callback"],
                    "post_logout_redirect_uris": [self.gateway_base + "/web/sign-in?signed_out=1"],
                },
                *(
                    {
                        "client_id": client,
                        "token_endpoint_auth_method": "none",
                        "redirect_uris": [CLI_REDIRECT],
                    }
                    for client in (CLI_CLIENT, SHORT_CLIENT, OTHER_CLIENT)
                ),
            ],
            "users": USERS,
            "resources": {API: 120, OTHER_API: 120},
            "access_ttl_by_client": {SHORT_CLIENT: SHORT_TTL},
            "ttl": {"IdToken": 120},
        }

    def start(self) -> None:
        self.config_file.write_text(json.dumps(self.config()))
        script = next(self.folder.glob(f"provider.{os.getpid()}.mjs"))
        self.process = subprocess.Popen(
            ["node", str(script), str(self.config_file)],
            cwd=self.folder,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        # "listening <port>" once it accepts connections ("" if it died); 30 s at most.
        ready, _, _ = select.select([self.process.stdout], [], [], 30)
        line = self.process.stdout.readline() if ready else "(nothing within 30 s)"
        if not line.startswith("listening"):
            self.stop()
            raise AssertionError(f"the OpenID provider did not start: {line!r}")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            if self.process.stdout is not None:
                self.process.stdout.close()
            self.process = None

    def rotate(self, keys: list[RSAKey]) -> None:
        """Restart with another key set (the first key signs), on the same address."""
        self.stop()
        self.keys = keys
        self.start()


@pytest.fixture(scope="module")
def gateway_port() -> int:
    return _free_port()


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory, gateway_port: int) -> Iterator[Provider]:
    folder = provider_folder()
    running = Provider(
        folder=folder,
        config_file=tmp_path_factory.mktemp("oidc") / "provider.json",
        port=_free_port(),
        gateway_base=f"http://127.0.0.1:{gateway_port}",
        keys=[new_key()],
    )
    running.start()
    try:
        yield running
    finally:
        running.stop()
        (folder / f"provider.{os.getpid()}.mjs").unlink(missing_ok=True)


def _pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _login(client: httpx.Client, base: str, response: httpx.Response, user: str) -> str:
    """Follow the provider's pages, filling its login form as ``user``, until it
    redirects away from itself; return that address."""
    for _ in range(10):
        location = response.headers.get("location")
        if location is not None:
            target = urljoin(str(response.url), location)
            if not target.startswith(base):
                return target
            response = client.get(target)
            continue
        assert response.status_code == 200, response.text[:500]
        action = re.search(r'<form[^>]*action="([^"]+)"', response.text)
        assert action is not None, "the provider showed no form"
        hidden = dict(
            re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', response.text)
        )
        response = client.post(
            urljoin(str(response.url), action.group(1)),
            data={**hidden, "login": user, "password": "any"},
        )
    raise AssertionError("the provider's sign-in did not finish")


def provider_tokens(
    provider: Provider,
    user: str,
    *,
    client_id: str = CLI_CLIENT,
    resource: str | None = API,
    nonce: str = "n-0",
) -> dict[str, Any]:
    """Tokens for ``user`` through the provider's own authorization code flow (PKCE),
    as an API client (a command-line tool, say) gets them."""
    verifier, challenge = _pkce()
    query = {
        "client_id": client_id,
        "response_type": "code",
        "scope": "openid email profile groups" + (" api" if resource else ""),
        "redirect_uri": CLI_REDIRECT,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "state": "s-0",
        "nonce": nonce,
    }
    if resource:
        query["resource"] = resource
    with httpx.Client(follow_redirects=False, timeout=10) as client:
        first = client.get(f"{provider.issuer}/auth?{urlencode(query)}")
        back = _login(client, provider.issuer, first, user)
        code = parse_qs(urlsplit(back).query)["code"][0]
        answer = client.post(
            f"{provider.issuer}/token",
            data={
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": CLI_REDIRECT,
                "client_id": client_id,
                "code_verifier": verifier,
            },
        )
    assert answer.status_code == 200, answer.text
    tokens: dict[str, Any] = answer.json()
    return tokens


def _segments(token: str) -> list[str]:
    return token.split(".")


def _header(token: str) -> dict[str, Any]:
    first = _segments(token)[0]
    value: dict[str, Any] = json.loads(base64.urlsafe_b64decode(first + "=" * (-len(first) % 4)))
    return value


# --- the gateway ----------------------------------------------------------------------------


@dataclass
class Site:
    base: str
    settings: Settings
    operator_token: str
    mapping_file: Path

    def url(self, path: str) -> str:
        return self.base + path


def oidc_settings(folder: Path, database_url: str, provider: Provider, mapping: Path) -> Settings:
    return make_settings(
        folder,
        database_url,
        oidc_issuer=provider.issuer,
        oidc_client_id=WEB_CLIENT,
        oidc_client_secret="web-secret-" + "x" * 32,
        oidc_provider_name=PROVIDER_NAME,
        oidc_scopes="openid email profile groups",
        oidc_mapping_file=mapping,
        oidc_api_audience=API,
        oidc_clock_leeway_seconds=LEEWAY,
    )


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    database_templates: DatabaseTemplates,
    provider: Provider,
    gateway_port: int,
) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("sso")
    databases = Databases(request.param, database_templates)
    mapping = folder / "sign-in.yaml"
    mapping.write_text(yaml.safe_dump(MAPPING, sort_keys=False))
    settings = oidc_settings(folder, databases.new(folder), provider, mapping)
    initialise(settings)
    operator_token = issue_token(settings, role="uploader", party=DISTRICT)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=gateway_port,
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
        yield Site(f"http://127.0.0.1:{gateway_port}", settings, operator_token, mapping)
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        databases.close()


def events(site: Site, kind: str) -> list[dict[str, Any]]:
    with Gateway.open(site.settings, checkpoint=False) as gw, gw.sessions() as session:
        return [audit.event_view(e) for e in session.scalars(audit.query_events(kind=kind))]


def audit_text(site: Site) -> str:
    with Gateway.open(site.settings, checkpoint=False) as gw, gw.sessions() as session:
        return json.dumps([audit.event_view(e) for e in session.scalars(audit.query_events())])


def web_sign_in(site: Site, provider: Provider, user: str) -> tuple[httpx.Client, httpx.Response]:
    """Sign in to the web pages over HTTP as ``user``: the gateway's redirect, the
    provider's login form, the callback. Returns the client (with its cookies) and the
    callback's answer."""
    client = httpx.Client(follow_redirects=False, timeout=15)
    start = client.get(site.url("/web/sign-in/oidc"))
    assert start.status_code == 303, start.text
    assert start.headers["location"].startswith(provider.issuer + "/auth?")
    callback = _login(client, provider.issuer, start, user)
    assert callback.startswith(site.url("/web/sign-in/oidc/callback?"))
    return client, client.get(callback)


# --- signing in to the web pages ------------------------------------------------------------


def test_a_mapped_person_signs_in_and_acts_under_a_keyed_id(site: Site, provider: Provider) -> None:
    client, answer = web_sign_in(site, provider, "dana")
    with closing(client):
        assert answer.status_code == 303 and answer.headers["location"] == "/web"
        home = client.get(site.url("/web"))
        assert home.status_code == 200
        assert "Your agreements" in home.text and AGREEMENT in home.text
        # The uploader's pages open; an analyst's do not (the mapping's role holds).
        assert client.get(site.url(f"/web/agreements/{AGREEMENT}/upload")).status_code == 200
        assert client.get(site.url(f"/web/agreements/{AGREEMENT}/reports")).status_code == 403
    started = [e for e in events(site, "session-started") if e["details"]["kind"] == "oidc"]
    assert started, "no session-started event for the OIDC sign-in"
    actor = started[-1]["actor"]
    assert actor["role"] == "uploader" and actor["party"] == DISTRICT
    assert re.fullmatch(r"oidc_[0-9a-f]{24}", actor["credential_id"])
    # The keyed id, not a name or an email, anywhere in the log.
    log = audit_text(site)
    for user in USERS.values():
        assert user["email"] not in log and user["email"].split("@")[0] not in log


def test_the_sign_in_page_offers_the_provider_and_the_cookie_is_sealed(
    site: Site, provider: Provider
) -> None:
    with httpx.Client(follow_redirects=False, timeout=15) as client:
        page = client.get(site.url("/web/sign-in"))
        assert f"Sign in with {PROVIDER_NAME}" in page.text
        start = client.get(site.url("/web/sign-in/oidc"))
        query = parse_qs(urlsplit(start.headers["location"]).query)
        assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
        assert query["client_id"] == [WEB_CLIENT] and query["nonce"][0] and query["state"][0]
        cookie = start.headers["set-cookie"]
        assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
        assert "Path=/web/sign-in/oidc" in cookie
        # The verifier, nonce and state are not readable in the cookie.
        sealed = client.cookies["gateway_oidc"]
        for value in (query["state"][0], query["nonce"][0]):
            assert value not in sealed
        # A callback with another state is refused, and asks nothing of the provider.
        wrong = client.get(site.url("/web/sign-in/oidc/callback?code=abc&state=forged"))
        assert wrong.status_code == 400 and "did not start in this browser" in wrong.text


def test_the_access_log_never_holds_the_callbacks_code(site: Site, provider: Provider) -> None:
    """uvicorn's access log (on in ``gateway serve``) writes paths with their query; the
    callback's code and state are cut from it, whatever the callback's outcome."""
    logger = logging.getLogger("uvicorn.access")
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)  # the fixture's server runs at "warning"
    try:
        client, answer = web_sign_in(site, provider, "dana")  # a real code, used
        client.close()
        with httpx.Client(timeout=15) as other:
            other.get(site.url("/web/sign-in/oidc/callback?code=code-xyz&state=state-xyz"))
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    assert answer.status_code == 303
    callbacks = [line for line in lines if "/web/sign-in/oidc/callback" in line]
    assert len(callbacks) == 2, lines
    assert not [line for line in callbacks if "code" in line or "state" in line]


def test_a_person_no_rule_admits_gets_a_clear_page_and_an_audited_refusal(
    site: Site, provider: Provider
) -> None:
    before = len(events(site, "access-refused"))
    client, answer = web_sign_in(site, provider, "stranger")
    with closing(client):
        assert answer.status_code == 403
        assert "No access at this gateway" in answer.text
        assert "no role for your account" in answer.text
        # No session: the home page sends the browser to sign in.
        assert client.get(site.url("/web")).status_code == 303
    refused = events(site, "access-refused")[before:]
    assert len(refused) == 1
    event = refused[0]
    assert event["details"]["status"] == 403
    assert "no rule of the sign-in mapping" in event["details"]["reason"]
    assert event["actor"]["role"] == "anonymous"
    assert re.fullmatch(r"oidc_[0-9a-f]{24}", event["actor"]["credential_id"])
    assert event["actor"]["credential_id"] in answer.text  # the reference to give the operator
    assert USERS["stranger"]["email"] not in json.dumps(event)


def test_an_unverified_email_matches_no_email_domain_rule(site: Site, provider: Provider) -> None:
    client, answer = web_sign_in(site, provider, "unverified")
    client.close()
    assert answer.status_code == 403


def test_removing_a_rule_ends_the_session_at_the_next_click(site: Site, provider: Provider) -> None:
    client, answer = web_sign_in(site, provider, "rev")
    original = site.mapping_file.read_text()
    try:
        with closing(client):
            assert answer.status_code == 303
            assert client.get(site.url("/web")).status_code == 200
            reduced = {**MAPPING, "rules": MAPPING["rules"][:2]}
            site.mapping_file.write_text(yaml.safe_dump(reduced, sort_keys=False))
            after = client.get(site.url("/web"))
            assert after.status_code == 401
            assert "no longer has a role" in after.text
    finally:
        site.mapping_file.write_text(original)


def _browser_available() -> None:
    if sync_playwright is None:
        _unavailable("the playwright package is not installed (pip install -e '.[dev]')")
    if CHROMIUM is None:
        _unavailable("chromium is not installed (make test installs it)")


def test_removing_a_rule_signs_the_browser_out(site: Site, provider: Provider) -> None:
    """The same as above in a real browser: the next page after the rule goes is the
    sign-in page saying why, and the session cookie is gone."""
    _browser_available()
    original = site.mapping_file.read_text()
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            context = browser.new_context(base_url=site.base)
            context.set_default_timeout(15_000)
            page = context.new_page()
            page.goto("/web/sign-in")
            page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
            page.locator("input[name=login]").fill("rev")
            page.locator("input[name=password]").fill("any")
            page.locator("button[type=submit]").click()
            expect(page.get_by_role("heading", name="Your agreements")).to_be_visible()
            (cookie,) = [c for c in context.cookies() if c["name"] == "gateway_session"]
            reduced = {**MAPPING, "rules": MAPPING["rules"][:2]}
            site.mapping_file.write_text(yaml.safe_dump(reduced, sort_keys=False))
            page.goto("/web")
            expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
            expect(page.get_by_text("no longer has a role at this gateway")).to_be_visible()
            assert not [c for c in context.cookies() if c["name"] == "gateway_session"]
            # Putting the rule back does not revive the ended session, even for a
            # browser that kept a copy of its cookie.
            site.mapping_file.write_text(original)
            context.add_cookies([cookie])  # type: ignore[list-item]
            page.goto("/web")
            expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
        finally:
            site.mapping_file.write_text(original)
            browser.close()
    ended = events(site, "session-ended")
    assert any(e["details"].get("reason") == "mapping-removed" for e in ended)


def test_signing_out_in_a_browser_ends_both_sessions(site: Site, provider: Provider) -> None:
    _browser_available()
    with sync_playwright() as playwright:
        browser: Browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            context = browser.new_context(base_url=site.base)
            context.set_default_timeout(15_000)
            page = context.new_page()
            page.goto("/web")
            page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
            # The provider's own login form.
            page.locator("input[name=login]").fill("ana")
            page.locator("input[name=password]").fill("any")
            page.locator("button[type=submit]").click()
            expect(page.get_by_role("heading", name="Your agreements")).to_be_visible()
            assert page.url == site.url("/web")
            cookies = {c["name"]: c for c in context.cookies()}
            session = cookies["gateway_session"]
            assert session["httpOnly"] and session["sameSite"] == "Lax"
            page.get_by_role("button", name="Sign out").click()
            # The provider asks whether to sign out there too (RP-initiated logout).
            page.get_by_role("button", name="Yes, sign me out").click()
            expect(page.get_by_text("You are signed out.")).to_be_visible()
            assert page.url.startswith(site.url("/web/sign-in"))
            # The gateway's session is over on the server...
            page.goto("/web")
            expect(page.get_by_role("heading", name="Sign in", level=1)).to_be_visible()
            # ...and so is the provider's: signing in again asks for the login.
            page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
            expect(page.locator("input[name=login]")).to_be_visible()
        finally:
            browser.close()
    ended = events(site, "session-ended")
    assert any(e["details"].get("reason") == "signed-out" for e in ended)


# --- the API with the provider's access tokens ----------------------------------------------


def test_the_api_takes_the_providers_access_token_and_the_operators_token(
    site: Site, provider: Provider
) -> None:
    access = provider_tokens(provider, "ana")["access_token"]
    with httpx.Client(timeout=15) as client:
        mine = client.get(site.url("/v1/agreements"), headers={"Authorization": f"Bearer {access}"})
        assert mine.status_code == 200 and [a["id"] for a in mine.json()] == [AGREEMENT]
        # The mapping's role holds: an analyst may not upload.
        upload = client.post(
            site.url(f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads"),
            headers={"Authorization": f"Bearer {access}"},
            content=b"x",
        )
        assert upload.status_code == 403
        operator = client.get(
            site.url("/v1/agreements"), headers={"Authorization": f"Bearer {site.operator_token}"}
        )
        assert operator.status_code == 200


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _refused(site: Site, token: str) -> tuple[httpx.Response, dict[str, Any]]:
    before = len(events(site, "access-refused"))
    with httpx.Client(timeout=15) as client:
        answer = client.get(
            site.url("/v1/agreements"), headers={"Authorization": f"Bearer {token}"}
        )
    refused = events(site, "access-refused")[before:]
    assert len(refused) == 1, refused
    return answer, refused[0]


def test_a_token_for_another_audience_is_refused(site: Site, provider: Provider) -> None:
    tokens = provider_tokens(provider, "ana", resource=OTHER_API)
    answer, event = _refused(site, tokens["access_token"])
    assert answer.status_code == 401
    assert "access token is not valid" in answer.json()["error"]["message"]
    assert "aud" in event["details"]["reason"]
    # An ID token (audience: the client) is no access token either.
    answer, _ = _refused(site, tokens["id_token"])
    assert answer.status_code == 401


def test_an_expired_access_token_is_refused(site: Site, provider: Provider) -> None:
    access = provider_tokens(provider, "ana", client_id=SHORT_CLIENT)["access_token"]
    with httpx.Client(timeout=15) as client:
        fresh = client.get(
            site.url("/v1/agreements"), headers={"Authorization": f"Bearer {access}"}
        )
    assert fresh.status_code == 200
    payload = _segments(access)[1]
    expires = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["exp"]
    time.sleep(max(0.0, expires + LEEWAY + 0.5 - time.time()))
    answer, event = _refused(site, access)
    assert answer.status_code == 401
    assert answer.json()["error"]["message"] == "the access token has expired"
    assert event["details"]["reason"] == "the access token has expired"


def test_a_tampered_token_is_refused(site: Site, provider: Provider) -> None:
    access = provider_tokens(provider, "ana")["access_token"]
    header, payload, signature = _segments(access)
    # One character in the middle of the signature changed.
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    forged_signature = signature[:middle] + flipped + signature[middle + 1 :]
    answer, event = _refused(site, f"{header}.{payload}.{forged_signature}")
    assert answer.status_code == 401 and "signature" in event["details"]["reason"]
    # Claims changed under the provider's signature: a reviewer's email domain.
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["email"] = "x@auditor.state.example"
    claims["groups"] = ["eastport-data-office"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    answer, event = _refused(site, f"{header}.{forged}.{signature}")
    assert answer.status_code == 401 and "signature" in event["details"]["reason"]


def test_an_access_token_no_rule_admits_is_refused_and_audited(
    site: Site, provider: Provider
) -> None:
    access = provider_tokens(provider, "stranger")["access_token"]
    answer, event = _refused(site, access)
    assert answer.status_code == 403
    assert event["details"]["status"] == 403
    assert re.fullmatch(r"oidc_[0-9a-f]{24}", event["actor"]["credential_id"])
    assert USERS["stranger"]["email"] not in json.dumps(event)


def test_provider_key_rotation(site: Site, provider: Provider) -> None:
    """A new signing key is accepted once the provider publishes it (the gateway fetches
    the JWKS again on an unknown key id); a key the provider removed is refused."""
    old_token = provider_tokens(provider, "ana")["access_token"]
    old_kid = _header(old_token)["kid"]

    def call(token: str) -> httpx.Response:
        with httpx.Client(timeout=15) as client:
            return client.get(
                site.url("/v1/agreements"), headers={"Authorization": f"Bearer {token}"}
            )

    assert call(old_token).status_code == 200
    # Rotation, step 1: a new key signs; the old one is still published.
    second = new_key()
    provider.rotate([second, *provider.keys[:1]])
    time.sleep(1.1)  # the gateway fetches the JWKS at most once a second
    rotated = provider_tokens(provider, "ana")["access_token"]
    assert _header(rotated)["kid"] == second.kid != old_kid
    assert call(rotated).status_code == 200
    assert call(old_token).status_code == 200
    # Step 2: another new key, and the first one is gone.
    third = new_key()
    provider.rotate([third, second])
    time.sleep(1.1)
    newest = provider_tokens(provider, "ana")["access_token"]
    assert call(newest).status_code == 200
    answer, event = _refused(site, old_token)
    assert answer.status_code == 401
    assert "key the identity provider does not publish" in event["details"]["reason"]
    # The web sign-in goes on with the new keys.
    client, signed_in = web_sign_in(site, provider, "dana")
    client.close()
    assert signed_in.status_code == 303


# --- ID tokens, checked directly ------------------------------------------------------------


@pytest.fixture(scope="module")
def checker(provider: Provider, tmp_path_factory: pytest.TempPathFactory) -> oidc.OidcProvider:
    """The gateway's token checks configured as the command-line client, whose ID tokens
    the tests can ask for with any nonce."""
    folder = tmp_path_factory.mktemp("checker")
    settings = make_settings(
        folder,
        f"sqlite:///{folder / 'unused.db'}",
        oidc_issuer=provider.issuer,
        oidc_client_id=CLI_CLIENT,
        oidc_mapping_file=folder / "unused.yaml",
        oidc_api_audience=API,
        oidc_clock_leeway_seconds=LEEWAY,
    )
    return oidc.OidcProvider(settings)


def test_id_tokens_are_checked_for_audience_nonce_and_signature(
    checker: oidc.OidcProvider, provider: Provider
) -> None:
    tokens = provider_tokens(provider, "dana", nonce="nonce-1")
    claims = checker.validate_id_token(
        tokens["id_token"], nonce="nonce-1", access_token=tokens["access_token"]
    )
    assert claims["sub"] == "dana" and claims["iss"] == provider.issuer
    with pytest.raises(oidc.OidcError, match="nonce"):
        checker.validate_id_token(tokens["id_token"], nonce="another")
    other = provider_tokens(provider, "dana", client_id=OTHER_CLIENT, nonce="nonce-1")
    with pytest.raises(oidc.OidcError, match="aud"):
        checker.validate_id_token(other["id_token"], nonce="nonce-1")
    header, payload, signature = _segments(tokens["id_token"])
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    with pytest.raises(oidc.OidcError, match="signature"):
        checker.validate_id_token(
            f"{header}.{payload}.{signature[:middle]}{flipped}{signature[middle + 1 :]}",
            nonce="nonce-1",
        )
    # alg "none" is refused before any key is looked at.
    unsigned = base64.urlsafe_b64encode(b'{"alg":"none"}').rstrip(b"=").decode()
    with pytest.raises(oidc.OidcError, match="algorithm"):
        checker.validate_id_token(f"{unsigned}.{payload}.", nonce="nonce-1")


def test_a_token_of_another_issuer_is_refused_even_with_the_same_keys(
    checker: oidc.OidcProvider, provider: Provider, tmp_path: Path
) -> None:
    """A second provider (another issuer) signing with the very keys of the first: its
    tokens verify, so only the issuer check can refuse them."""
    impostor = Provider(
        folder=provider.folder,
        config_file=tmp_path / "impostor.json",
        port=_free_port(),
        gateway_base=provider.gateway_base,
        keys=list(provider.keys),
    )
    impostor.start()
    try:
        tokens = provider_tokens(impostor, "rev", nonce="nonce-2")
    finally:
        impostor.stop()
    with pytest.raises(oidc.OidcError, match="iss"):
        checker.validate_access_token(tokens["access_token"])
    with pytest.raises(oidc.OidcError, match="iss"):
        checker.validate_id_token(tokens["id_token"], nonce="nonce-2")


# --- the mapping and the keyed id, without a provider ---------------------------------------


@pytest.fixture(scope="module")
def registry() -> Any:
    return load_registry(AGREEMENTS_DIR, POLICIES_DIR)


@pytest.mark.parametrize(
    ("rule", "where", "expected"),
    [
        ({"when": {"group": "g"}, "grant": {"role": "admin", "agreements": [AGREEMENT]}},
         "rules[0].grant.role", "unknown role"),
        ({"when": {"group": "g"}, "grant": {"role": "uploader", "party": "nobody",
                                            "agreements": [AGREEMENT]}},
         "rules[0].grant.party", "not a party"),
        ({"when": {"group": "g"}, "grant": {"role": "analyst", "party": EPP,
                                            "agreements": ["no-such-agreement"]}},
         "rules[0].grant.agreements", "no loaded agreement"),
        ({"when": {"group": "g"}, "grant": {"role": "reviewer", "party": EPP,
                                            "agreements": [AGREEMENT]}},
         "rules[0].grant.party", "a reviewer acts for no party"),
        ({"when": {"colour": "g"}, "grant": {"role": "reviewer", "agreements": [AGREEMENT]}},
         "rules[0].when", "expected one or more of"),
        ({"when": {"group": "g"}, "grant": {"role": "analyst", "agreements": [AGREEMENT]}},
         "rules[0].grant.party", "needs the party"),
    ],
)  # fmt: skip
def test_a_mapping_that_cannot_be_honoured_stops_the_start(
    tmp_path: Path, registry: Any, rule: dict[str, Any], where: str, expected: str
) -> None:
    path = tmp_path / "sign-in.yaml"
    path.write_text(yaml.safe_dump({"rules": [rule]}))
    settings = make_settings(
        tmp_path,
        f"sqlite:///{tmp_path / 'unused.db'}",
        oidc_issuer="https://login.example.org",
        oidc_client_id="gateway",
        oidc_mapping_file=path,
    )
    with pytest.raises(ConfigurationError) as raised:
        oidc.start(settings, registry)
    assert str(path) in raised.value.message and where in raised.value.message
    assert expected in raised.value.message


def test_agreements_check_holds_the_mapping_to_the_agreements(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from gateway.cli import main

    path = tmp_path / "sign-in.yaml"
    rules = [{"when": {"group": "g"}, "grant": {"role": "analyst", "party": "nobody",
                                                "agreements": [AGREEMENT]}}]  # fmt: skip
    path.write_text(yaml.safe_dump({"rules": rules}))
    env = {
        "GATEWAY_AGREEMENTS_DIR": str(AGREEMENTS_DIR),
        "GATEWAY_POLICIES_DIR": str(POLICIES_DIR),
        "GATEWAY_OIDC_ISSUER": "https://login.example.org",
        "GATEWAY_OIDC_CLIENT_ID": "gateway",
        "GATEWAY_OIDC_MAPPING_FILE": str(path),
    }
    refused = CliRunner().invoke(main, ["agreements", "check"], env=env)
    assert refused.exit_code != 0
    assert f"{path}: rules[0].grant.party: 'nobody' is not a party of" in refused.output
    path.write_text(yaml.safe_dump(MAPPING))
    passed = CliRunner().invoke(main, ["agreements", "check"], env=env)
    assert passed.exit_code == 0, passed.output


def test_settings_that_would_be_unsafe_are_refused(tmp_path: Path, registry: Any) -> None:
    base = {"oidc_client_id": "gateway", "oidc_mapping_file": tmp_path / "m.yaml"}
    cases = {
        "GATEWAY_OIDC_ISSUER": {"oidc_issuer": "http://login.example.org", **base},
        "GATEWAY_OIDC_API_AUDIENCE": {
            "oidc_issuer": "https://login.example.org",
            "oidc_api_audience": "gateway",
            **base,
        },
        "GATEWAY_OIDC_MAPPING_FILE": {
            "oidc_issuer": "https://login.example.org",
            "oidc_client_id": "gateway",
        },
    }
    for variable, overrides in cases.items():
        settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'x.db'}", **overrides)
        with pytest.raises(ConfigurationError, match=variable):
            oidc.start(settings, registry)


MASTER = MasterKey(b"\x07" * 32)


@given(
    issuer=st.text(min_size=1, max_size=40),
    subject=st.text(min_size=1, max_size=40),
    other=st.text(min_size=1, max_size=40),
)
@settings(max_examples=60, deadline=None)
def test_the_keyed_id_is_stable_separates_people_and_hides_the_subject(
    issuer: str, subject: str, other: str
) -> None:
    first = oidc.subject_id(MASTER, issuer, subject)
    assert first == oidc.subject_id(MASTER, issuer, subject)
    assert re.fullmatch(r"oidc_[0-9a-f]{24}", first)
    if other != subject:
        assert oidc.subject_id(MASTER, issuer, other) != first
        assert oidc.subject_id(MASTER, other, subject) != first or other == issuer
    # Another master key, another id: the id cannot be computed without the key.
    assert oidc.subject_id(MasterKey(b"\x08" * 32), issuer, subject) != first


@given(position=st.integers(min_value=0), replacement=st.sampled_from("AbZ09-_"))
@settings(max_examples=60, deadline=None)
def test_a_changed_sign_in_cookie_is_never_accepted(position: int, replacement: str) -> None:
    state = oidc.SignInState.new()
    sealed = state.seal(MASTER)
    assert oidc.SignInState.open(MASTER, sealed) == state
    index = position % len(sealed)
    changed = sealed[:index] + replacement + sealed[index + 1 :]
    if changed != sealed:
        opened = oidc.SignInState.open(MASTER, changed)
        # base64url's last character may carry unused bits: only then may it still open.
        assert opened is None or (index == len(sealed) - 1 and opened == state)
    assert oidc.SignInState.open(MasterKey(b"\x08" * 32), sealed) is None


@dataclass
class _MappedGateway:
    """What principal_from_claims reads of a gateway: its settings, agreements and key."""

    settings: Settings
    registry: Any
    master_key: MasterKey


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory, registry: Any) -> _MappedGateway:
    folder = tmp_path_factory.mktemp("mapping")
    path = folder / "sign-in.yaml"
    path.write_text(yaml.safe_dump(MAPPING))
    settings = make_settings(
        folder, "sqlite://", oidc_issuer="https://i.example", oidc_mapping_file=path
    )
    return _MappedGateway(settings, registry, MASTER)


@given(
    groups=st.lists(st.sampled_from(["eastport-data-office", "bayview-analysts", "x"]), max_size=3),
    domain=st.sampled_from(["bayview.example", "auditor.state.example", "other.example"]),
    verified=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_the_first_rule_that_matches_decides_and_nothing_else_gets_in(
    mapped: _MappedGateway,
    groups: list[str],
    domain: str,
    verified: bool,
) -> None:
    gateway: Any = mapped
    claims = {
        "iss": "https://i.example",
        "sub": "s",
        "email": f"p@{domain}",
        "email_verified": verified,
        "groups": groups,
    }
    principal = oidc.principal_from_claims(gateway, claims)
    email_domain = domain if verified else None
    if "eastport-data-office" in groups:
        expected: tuple[str, str | None] | None = ("uploader", DISTRICT)
    elif "bayview-analysts" in groups and email_domain == "bayview.example":
        expected = ("analyst", EPP)
    elif email_domain == "auditor.state.example":
        expected = ("reviewer", None)
    else:
        expected = None
    got = None if principal is None else (principal.role, principal.party)
    assert got == expected
    # What a session keeps maps the same way, and holds no email address.
    kept = oidc.mapping_claims(claims, oidc.current_mapping(gateway))
    assert "@" not in json.dumps(kept)
    again = oidc.principal_from_claims(gateway, kept)
    assert again == principal
