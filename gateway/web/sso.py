"""Signing in to the web pages through the identity provider (:mod:`gateway.oidc`).

``GET /web/sign-in/oidc`` sends the browser to the provider with a fresh ``state``,
``nonce`` and PKCE challenge; what the callback must see again travels in a cookie of
its own, encrypted under the master key, sent only to ``/web/sign-in/oidc`` and gone
after ten minutes. ``GET /web/sign-in/oidc/callback`` checks ``state`` (and the
provider's ``iss``, RFC 9207, against mix-ups), trades the code for tokens with the
PKCE verifier, validates the ID token and maps its claims. A person the mapping admits
gets a session (:func:`gateway.web.session.start_session`) that keeps only the claims
the mapping reads; anyone else gets a page that says so, and an ``access-refused``
event under their keyed id. A failed callback counts toward the client's lockout, as a
wrong token does.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from cryptography.hazmat.primitives.constant_time import bytes_eq
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway import audit, oidc
from gateway.api.auth import record_refusal
from gateway.api.deps import GatewayDep
from gateway.context import Gateway
from gateway.errors import TooManyAttempts, Unauthenticated
from gateway.lockout import FailureLimiter
from gateway.web.rendering import render, sign_in_page
from gateway.web.session import PREFIX, over_tls, start_session

router = APIRouter(include_in_schema=False)

STATE_COOKIE = "gateway_oidc"
START_PATH = f"{PREFIX}/sign-in/oidc"
CALLBACK_PATH = f"{PREFIX}/sign-in/oidc/callback"
_ERROR_CODE = re.compile(r"[a-z_]{1,40}")


class _CallbackQueryFilter(logging.Filter):
    """uvicorn's access log writes each request's path with its query string, and the
    callback's holds the provider's authorization code and the sign-in's state. Both
    are cut from the line: the code is single-use and bound to the PKCE verifier, but a
    log kept for months is no place for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn's access record: (client, method, path with query, HTTP version, status).
        if (
            isinstance(args, tuple)
            and len(args) == 5
            and isinstance(args[2], str)
            and args[2].startswith(CALLBACK_PATH + "?")
        ):
            record.args = (*args[:2], CALLBACK_PATH + "?(query not logged)", *args[3:])
        return True


def keep_codes_out_of_the_access_log() -> None:
    """Install :class:`_CallbackQueryFilter` on uvicorn's access logger, once per process
    (its logging set-up keeps a logger's filters)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, _CallbackQueryFilter) for f in logger.filters):
        logger.addFilter(_CallbackQueryFilter())


def _provider(request: Request) -> oidc.OidcProvider | None:
    return getattr(request.app.state, "oidc", None)


def _base(request: Request, provider: oidc.OidcProvider) -> str:
    if provider.redirect_base:
        return provider.redirect_base.rstrip("/")
    return str(request.base_url).rstrip("/")


def callback_url(request: Request, provider: oidc.OidcProvider) -> str:
    """The redirect URI registered at the provider: the gateway's public address and
    ``/web/sign-in/oidc/callback``."""
    return _base(request, provider) + CALLBACK_PATH


def signed_out_url(request: Request, provider: oidc.OidcProvider) -> str:
    """Where the provider sends the browser after its sign-out (register it too)."""
    return _base(request, provider) + f"{PREFIX}/sign-in?signed_out=1"


def sign_out_target(request: Request, *, kind: str, local: str) -> str:
    """After the gateway's session ends: the provider's own sign-out for a person who
    signed in there (when it offers RP-initiated logout), else ``local``."""
    provider = _provider(request)
    if kind != "oidc" or provider is None:
        return local
    return provider.logout_url(signed_out_url(request, provider)) or local


def _clear_state(response: Response, request: Request) -> None:
    response.delete_cookie(
        STATE_COOKIE, path=START_PATH, httponly=True, samesite="lax", secure=over_tls(request)
    )


@router.get(START_PATH)
def start(request: Request, gateway: GatewayDep) -> Response:
    provider = _provider(request)
    if provider is None:
        return sign_in_page(
            request, message="this gateway has no identity provider; use a token", status=404
        )
    state = oidc.SignInState.new()
    try:
        url = provider.authorization_url(callback_url(request, provider), state)
    except Unauthenticated as error:
        return sign_in_page(request, message=error.message, status=502)
    response = RedirectResponse(url, status_code=303)
    response.set_cookie(
        STATE_COOKIE,
        state.seal(gateway.master_key),
        max_age=oidc.SIGN_IN_SECONDS,
        path=START_PATH,
        httponly=True,
        # Lax: the provider's redirect back is a top-level GET from its site.
        samesite="lax",
        secure=over_tls(request),
    )
    return response


def _refuse(
    request: Request,
    gateway: Gateway,
    *,
    status: int,
    message: str,
    credential_id: str | None = None,
    count: bool = True,
) -> None:
    """Audit a refused sign-in (and count it toward the lockout, unless the person was
    authenticated and is only not mapped)."""
    if count:
        limiter: FailureLimiter = request.app.state.auth_failures
        client = request.client.host if request.client else "unknown"
        with gateway.sessions() as session, session.begin():
            limiter.record_failure(session, client)
    record_refusal(
        gateway,
        request,
        status=status,
        reason=message,
        actor=audit.Actor(role="anonymous", credential_id=credential_id),
    )


def _locked_out(request: Request, gateway: Gateway) -> int | None:
    limiter: FailureLimiter = request.app.state.auth_failures
    client = request.client.host if request.client else "unknown"
    with gateway.reads() as session:
        return limiter.retry_after(session, client)


def _callback(request: Request, gateway: Gateway) -> Response:
    provider = _provider(request)
    if provider is None:
        return sign_in_page(
            request, message="this gateway has no identity provider; use a token", status=404
        )
    wait = _locked_out(request, gateway)
    if wait is not None:
        error = TooManyAttempts(
            f"too many failed authentications from this client; try again in {wait} s"
        )
        return sign_in_page(request, message=error.message, status=error.status)
    params = request.query_params
    state = oidc.SignInState.open(gateway.master_key, request.cookies.get(STATE_COOKIE))
    sent_state = params.get("state", "")
    if state is None or not bytes_eq(state.state.encode(), sent_state.encode("utf-8", "replace")):
        # Not counted: a sign-in that took too long, or a second tab, is no attack; and
        # nothing is asked of the provider.
        response = sign_in_page(
            request,
            message="the sign-in took too long or did not start in this browser; try again",
            status=400,
        )
        _clear_state(response, request)
        return response
    refused: str | None = None
    claims: dict[str, Any] | None = None
    provider_error = params.get("error")
    if provider_error is not None:
        code = provider_error if _ERROR_CODE.fullmatch(provider_error) else "error"
        refused = f"the identity provider did not sign you in ({code})"
    elif "iss" in params and params["iss"] != provider.issuer:
        refused = "the sign-in came back from another identity provider than this gateway's"
    elif not params.get("code"):
        refused = "the identity provider sent no sign-in code"
    else:
        try:
            claims = provider.exchange(callback_url(request, provider), params["code"], state)
        except Unauthenticated as error:
            refused = error.message
    if claims is None:
        message = refused or "the sign-in failed"
        _refuse(request, gateway, status=401, message=message)
        response = sign_in_page(request, message=message, status=401)
        _clear_state(response, request)
        return response
    mapping = oidc.current_mapping(gateway)
    principal = oidc.principal_from_claims(gateway, claims)
    if principal is None:
        person = oidc.subject_id(gateway.master_key, str(claims["iss"]), str(claims["sub"]))
        _refuse(
            request,
            gateway,
            status=403,
            message="signed in at the identity provider, but no rule of the sign-in "
            "mapping admits this person",
            credential_id=person,
            count=False,
        )
        response = render(
            request,
            "sign_in_refused.html",
            {"title": "No access at this gateway", "provider": provider.name, "person": person},
            status=403,
        )
        _clear_state(response, request)
        return response
    response = RedirectResponse(PREFIX, status_code=303)
    # The session keeps what the mapping reads (issuer, subject, email domain, groups,
    # roles), never the ID token, the email address or the name.
    start_session(
        gateway,
        request,
        response,
        principal=principal,
        kind="oidc",
        oidc_claims=oidc.mapping_claims(claims, mapping),
    )
    _clear_state(response, request)
    return response


@router.get(CALLBACK_PATH, response_class=HTMLResponse)
async def callback(request: Request, gateway: GatewayDep) -> Response:
    # Everything here reads the database or calls the provider: one trip to the pool.
    return await run_in_threadpool(_callback, request, gateway)
