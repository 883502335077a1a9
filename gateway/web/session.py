"""Signing in to the web pages: the token in a cookie, checked on every request.

The person pastes a bearer token (from ``gateway tokens create``); it is checked by
the API's own code (:func:`gateway.api.auth.get_principal`), so a failed sign-in counts
toward the same lockout and writes the same ``access-refused`` event. The token is then
kept in a cookie the page's scripts cannot read (there are none, but ``HttpOnly`` all
the same), sent only to ``/web`` and never by another site (``SameSite=Strict``), and
``Secure`` over HTTPS. Every request checks it again, so a revoked or expired token is
signed out at its next click.

Each form that changes something carries a CSRF token: HMAC-SHA-256 of the session's
token under a key derived from the master key with its own HKDF label, so it is bound
to the sign-in and cannot be made without the master key. The sign-in form itself is
bound the same way to a random value in a short-lived cookie (no sign-in CSRF).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Annotated

from cryptography.hazmat.primitives.constant_time import bytes_eq
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway.api.auth import deny, get_principal, require
from gateway.api.deps import GatewayDep
from gateway.credentials import Principal
from gateway.errors import Unauthenticated
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
# A session cookie (no Max-Age): it ends with the browser; the token's own expiry and
# revocation are checked on every request anyway.


def _csrf_key(master_key: MasterKey) -> bytes:
    return hkdf_sha256(ikm=master_key.material, salt=None, info=_CSRF_INFO, length=32)


def csrf_token(master_key: MasterKey, purpose: str, bound_to: str) -> str:
    """The form token for ``bound_to`` (a session token, or a sign-in nonce)."""
    message = purpose.encode("ascii") + b"\x00" + bound_to.encode("utf-8")
    return hmac_sha256(_csrf_key(master_key), message).hex()


def csrf_matches(master_key: MasterKey, purpose: str, bound_to: str, sent: str | None) -> bool:
    """Constant-time comparison of a submitted form token with the expected one."""
    if not sent or not bound_to:
        return False
    expected = csrf_token(master_key, purpose, bound_to)
    return bytes_eq(expected.encode("ascii"), sent.encode("utf-8", "replace"))


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def set_session_cookie(response: Response, request: Request, token: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def clear_session_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path=PREFIX, httponly=True, samesite="strict", secure=_secure(request)
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
        secure=_secure(request),
    )


class NotSignedIn(Exception):
    """No session (``message`` None), or a session whose token no longer works."""

    def __init__(self, message: str | None) -> None:
        super().__init__(message or "not signed in")
        self.message = message


@dataclass(frozen=True)
class SignedIn:
    """The person behind a request: the token's principal and the forms' CSRF token.

    The token itself stays here, for CSRF checks; it is never given to a template.
    """

    principal: Principal
    csrf: str = field(repr=False)
    _token: str = field(repr=False)

    def form_is_genuine(self, master_key: MasterKey, sent: str | None) -> bool:
        return csrf_matches(master_key, "session", self._token, sent)


def authenticate_token(request: Request, gateway: GatewayDep, token: str) -> Principal:
    """Check a token exactly as the API checks a bearer token (lockout, audit, 401)."""
    return get_principal(
        request, gateway, HTTPAuthorizationCredentials(scheme="Bearer", credentials=token)
    )


def signed_in(request: Request, gateway: GatewayDep) -> SignedIn:
    """Every page's first dependency: the session's token, checked again now."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        # A browser without a session is sent to the sign-in form: opening a bookmark
        # is not a failed authentication, and is neither counted nor audited.
        raise NotSignedIn(None)
    try:
        principal = authenticate_token(request, gateway, token)
    except Unauthenticated as error:
        raise NotSignedIn(error.message) from None
    session = SignedIn(
        principal=principal,
        csrf=csrf_token(gateway.master_key, "session", token),
        _token=token,
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
