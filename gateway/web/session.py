"""Signing in to the web pages: a session kept on the server, its cookie, CSRF tokens.

The person signs in (a pasted bearer token, checked by the API's own code, so a
failed sign-in counts toward the same lockout and writes the same ``access-refused``
event; or through the identity provider, :mod:`gateway.oidc`), and the gateway starts
a session (:mod:`gateway.web_sessions`): a row keyed by SHA-256 of a random 256-bit
id, with an idle timeout and an absolute lifetime. The cookie holds only that id; it
is ``HttpOnly``, ``SameSite=Lax`` (sent when another site links here, as the identity
provider's redirect back does, never with another site's POST), ``Path=/web``, and
``Secure`` whenever the request came over TLS: directly, or through a proxy the
server trusts (``gateway serve --trust-proxy``, whose ``X-Forwarded-Proto`` uvicorn
believes). Every request resolves the session again, its credential or its mapping
included; signing out ends it on the server.

For the sign-in routes (the OIDC callback among them), two functions do everything
a session needs; both touch the database, so an ``async`` route calls them with
``run_in_threadpool``::

    start_session(gateway, request, response, *, principal, kind, oidc_claims=None) -> None
        # kind "token" or "oidc"; an OIDC session passes the claims its mapping reads
        # again on every request (with "iss" and "sub"). Makes the row, writes the
        # session-started event, sets the cookie on ``response``; a session the
        # browser held before is ended ("replaced").
    end_session(gateway, request, response, *, reason="signed-out", actor=None) -> bool
        # Ends the browser's session (session-ended event) and clears the cookie.

Each form that changes something carries a CSRF token: HMAC-SHA-256 of the session
id under a key derived from the master key with its own HKDF label, so it is bound
to the sign-in and cannot be made without the master key. The sign-in form itself is
bound the same way to a random value in a short-lived cookie (no sign-in CSRF).
Every route that changes something is a POST that checks it; GETs change nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any

from cryptography.hazmat.primitives.constant_time import bytes_eq
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway import audit, web_sessions
from gateway.api.auth import deny, get_principal, require
from gateway.api.deps import GatewayDep
from gateway.context import Gateway
from gateway.credentials import Principal
from gateway.keys import MasterKey
from gateway.pseudonym import hkdf_sha256, hmac_sha256

#: Where the pages live; the cookies are sent nowhere else.
PREFIX = "/web"
SESSION_COOKIE = "gateway_session"
SIGN_IN_COOKIE = "gateway_sign_in"
#: The form field every POST form carries.
CSRF_FIELD = "csrf"

_CSRF_INFO = b"teacher-gateway/web-csrf/v1"
_SIGN_IN_SECONDS = 30 * 60
# The session cookie has no Max-Age: it ends with the browser (a shared computer closed
# is signed out), and the server ends the session itself at its idle timeout or lifetime.


def _csrf_key(master_key: MasterKey) -> bytes:
    return hkdf_sha256(ikm=master_key.material, salt=None, info=_CSRF_INFO, length=32)


def csrf_token(master_key: MasterKey, purpose: str, bound_to: str) -> str:
    """The form token for ``bound_to`` (a session id, or a sign-in nonce)."""
    message = purpose.encode("ascii") + b"\x00" + bound_to.encode("utf-8")
    return hmac_sha256(_csrf_key(master_key), message).hex()


def csrf_matches(master_key: MasterKey, purpose: str, bound_to: str, sent: str | None) -> bool:
    """Constant-time comparison of a submitted form token with the expected one."""
    if not sent or not bound_to:
        return False
    expected = csrf_token(master_key, purpose, bound_to)
    return bytes_eq(expected.encode("ascii"), sent.encode("utf-8", "replace"))


def over_tls(request: Request) -> bool:
    """The request came over TLS: to uvicorn directly, or to a proxy it trusts (its
    ``X-Forwarded-Proto`` is believed only with ``gateway serve --trust-proxy``)."""
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, session_id: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        session_id,
        path=PREFIX,
        httponly=True,
        # Lax, not Strict: the identity provider's redirect back (a top-level GET from
        # its site) must carry the sign-in cookies; no other site's POST ever does.
        samesite="lax",
        secure=over_tls(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path=PREFIX, httponly=True, samesite="lax", secure=over_tls(request)
    )


def sign_in_nonce(request: Request) -> tuple[str, bool]:
    """The sign-in form's nonce: the browser's own, or a new one (True) to set."""
    nonce = request.cookies.get(SIGN_IN_COOKIE)
    if nonce and 20 <= len(nonce) <= 64:
        return nonce, False
    return secrets.token_urlsafe(24), True


def set_sign_in_cookie(response: Response, request: Request, nonce: str) -> None:
    response.set_cookie(
        SIGN_IN_COOKIE,
        nonce,
        max_age=_SIGN_IN_SECONDS,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=over_tls(request),
    )


# --- sessions -----------------------------------------------------------------------------


def start_session(
    gateway: Gateway,
    request: Request,
    response: Response,
    *,
    principal: Principal,
    kind: str,
    oidc_claims: dict[str, Any] | None = None,
) -> None:
    """Start a session for ``principal`` and set its cookie on ``response``.

    ``kind`` is ``"token"`` (signed in with a bearer token: the session ends when the
    token is revoked or expires) or ``"oidc"`` (``oidc_claims``, with ``iss`` and
    ``sub``, are kept and mapped again on every request). The session the browser
    held before, if any, is ended as ``replaced``: a sign-in always gets a new id.
    """
    with gateway.sessions() as db, db.begin():
        started = web_sessions.start(
            db,
            loaded=gateway.registry.agreements,
            principal=principal,
            kind=kind,
            timeouts=web_sessions.Timeouts.of(gateway),
            oidc_claims=oidc_claims,
            replacing=request.cookies.get(SESSION_COOKIE),
        )
    set_session_cookie(response, request, started.session_id)


def end_session(
    gateway: Gateway,
    request: Request,
    response: Response,
    *,
    reason: str = "signed-out",
    actor: audit.Actor | None = None,
) -> bool:
    """End the browser's session on the server (audited) and clear its cookie; True
    if a live session was ended."""
    session_id = request.cookies.get(SESSION_COOKIE)
    ended = bool(session_id) and web_sessions.end(
        gateway, str(session_id), reason=reason, actor=actor
    )
    clear_session_cookie(response, request)
    return ended


class NotSignedIn(Exception):
    """No session (``message`` None), or a session that no longer works."""

    def __init__(self, message: str | None) -> None:
        super().__init__(message or "not signed in")
        self.message = message


@dataclass(frozen=True)
class SignedIn:
    """The person behind a request: the session's principal and the forms' CSRF token.

    The session id itself stays here, for CSRF checks; it is never given to a template.
    """

    principal: Principal
    kind: str
    csrf: str = field(repr=False)
    _session_id: str = field(repr=False)

    def form_is_genuine(self, master_key: MasterKey, sent: str | None) -> bool:
        return csrf_matches(master_key, "session", self._session_id, sent)


def authenticate_token(request: Request, gateway: GatewayDep, token: str) -> Principal:
    """Check a token exactly as the API checks a bearer token (lockout, audit, 401)."""
    return get_principal(
        request, gateway, HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
    )


def signed_in(request: Request, gateway: GatewayDep) -> SignedIn:
    """Every page's first dependency: the session, resolved again now."""
    session_id = request.cookies.get(SESSION_COOKIE)
    if not session_id:
        # A browser without a session is sent to the sign-in form: opening a bookmark
        # is not a failed authentication, and is neither counted nor audited.
        raise NotSignedIn(None)
    try:
        resolved = web_sessions.resolve(gateway, session_id)
    except web_sessions.SessionEnded as ended:
        raise NotSignedIn(ended.message) from None
    session = SignedIn(
        principal=resolved.principal,
        kind=resolved.kind,
        csrf=csrf_token(gateway.master_key, "session", session_id),
        _session_id=session_id,
    )
    # An error page of this request keeps the navigation of the one signed in.
    request.state.signed_in = session
    return session


SignedInDep = Annotated[SignedIn, Depends(signed_in)]


class PageAllow:
    """A page's dependency: signed in with one of ``roles``, covering the agreement the
    request names (its ``agreement_id`` path parameter, or a non-empty ``agreement``
    filter): the API's own check (:func:`gateway.api.auth.require`), audited alike.

    An empty ``agreement`` filter is "all my agreements": an HTML form sends its
    "any" choice as an empty value, which the API's check would read as an agreement.
    """

    def __init__(self, *roles: str) -> None:
        self.roles = roles

    def __call__(self, request: Request, gateway: GatewayDep, session: SignedInDep) -> SignedIn:
        agreement_id = (
            request.path_params.get("agreement_id") or request.query_params.get("agreement") or None
        )
        require(gateway, request, session.principal, roles=self.roles, agreement_id=agreement_id)
        return session


async def require_genuine_form(
    request: Request, gateway: GatewayDep, session: SignedIn, sent: str | None
) -> None:
    """Refuse (403, audited) a POST whose CSRF token is missing or not this session's."""
    if session.form_is_genuine(gateway.master_key, sent):
        return
    await run_in_threadpool(
        deny,
        gateway,
        request,
        session.principal,
        "the form's security token is missing or does not belong to this sign-in; "
        "reload the page and try again",
        agreement_id=request.path_params.get("agreement_id"),
    )
