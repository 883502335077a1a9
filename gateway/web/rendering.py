"""Rendering pages, and turning every failure of a page into a page.

Templates are Jinja2 with autoescaping on, so nothing a user or a file sent can
become markup. Every route of :mod:`gateway.web.pages` uses :class:`PageRoute`: an
error the gateway raises on purpose is shown as its one-sentence message on an
error page with the error's own status; anything unexpected is a generic 500 page,
and the operator's log gets one line (type and place, never a message or a trace),
as for the API.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

import jinja2
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.api.hardening import log_unexpected
from gateway.context import Gateway
from gateway.errors import GatewayError, TooManyAttempts
from gateway.release import formatting
from gateway.web.session import (
    CSRF_FIELD,
    PREFIX,
    NotSignedIn,
    clear_session_cookie,
    csrf_token,
    set_sign_in_cookie,
    sign_in_nonce,
)

TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")


def format_number(value: Any) -> str:
    """A released number as people read it: whole numbers without decimals, others to
    at most four decimals, thousands separated."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if float(value).is_integer():
        return f"{int(value):,}"
    text = f"{value:,.4f}".rstrip("0").rstrip(".")
    return text


def sentence(text: Any) -> str:
    """A one-sentence message as a sentence: capital first letter, a full stop."""
    words = str(text).strip()
    if not words:
        return words
    words = words[0].upper() + words[1:]
    return words if words[-1] in ".!?" else words + "."


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["number"] = format_number
    # Released numbers, as everywhere else (gateway/release/formatting.py).
    environment.filters["count"] = formatting.count
    environment.filters["percent"] = formatting.percent
    environment.filters["figure"] = lambda value, kind: formatting.for_derived(kind).text(value)
    environment.filters["sentence"] = sentence
    environment.globals.update(prefix=PREFIX, csrf_field=CSRF_FIELD)
    return environment


templates = Jinja2Templates(env=_environment())

_TITLES = {
    400: "The request could not be read",
    401: "Not signed in",
    403: "Not allowed",
    404: "Not found",
    405: "Not allowed here",
    409: "Refused",
    413: "Too large",
    415: "Wrong kind of request",
    422: "That could not be done",
    429: "Too many attempts",
    500: "Something went wrong",
}


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    values = {"session": None, **context}
    response = templates.TemplateResponse(
        request, name, values, status_code=status, headers=dict(headers or {})
    )
    assert isinstance(response, HTMLResponse)
    return response


def error_page(
    request: Request, status: int, message: str, *, headers: Mapping[str, str] | None = None
) -> HTMLResponse:
    title = _TITLES.get(status, "That could not be done")
    # Signed in (the session was checked before the failure): the page keeps the
    # navigation and the sign-out button, and does not offer to sign in again.
    session = getattr(request.state, "signed_in", None)
    return render(
        request,
        "error.html",
        {
            "title": title,
            "message": message,
            "status": status,
            "session": session,
            # A refused form: back to the form (its GET), to try again.
            "back": request.url.path if request.method == "POST" and session else None,
        },
        status=status,
        headers=headers,
    )


def sign_in_page(request: Request, *, message: str | None = None, status: int = 200) -> Response:
    """The sign-in form, bound to a nonce cookie (set here when the browser has none)."""
    gateway: Gateway = request.app.state.gateway
    nonce, new = sign_in_nonce(request)
    response = render(
        request,
        "sign_in.html",
        {
            "title": "Sign in",
            "message": message,
            "sign_in_csrf": csrf_token(gateway.master_key, "sign-in", nonce),
        },
        status=status,
    )
    if new:
        set_sign_in_cookie(response, request, nonce)
    return response


def signed_out(request: Request, message: str | None) -> Response:
    """No session: to the sign-in form. A session that ended (signed out, idle, past
    its lifetime, its token revoked): the form with the reason, and the cookie removed."""
    if message is None:
        return RedirectResponse(f"{PREFIX}/sign-in", status_code=303)
    response = sign_in_page(request, message=message, status=401)
    clear_session_cookie(response, request)
    return response


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        location = [str(p) for p in item.get("loc", ()) if p not in ("query", "path", "body")]
        parts.append(f"{'.'.join(location) or 'request'}: {item.get('msg', 'not valid')}")
    return "the request is not valid (" + "; ".join(parts) + ")"


Handler = Callable[[Request], Coroutine[Any, Any, Response]]


class PageRoute(APIRoute):
    """A route whose failures are HTML pages, never JSON or a stack trace."""

    def get_route_handler(self) -> Handler:
        handler = super().get_route_handler()

        async def page(request: Request) -> Response:
            try:
                return await handler(request)
            except NotSignedIn as error:
                return signed_out(request, error.message)
            except TooManyAttempts as error:
                retry = str(error.details[0]["retry_after"]) if error.details else "60"
                return error_page(request, 429, error.message, headers={"Retry-After": retry})
            except GatewayError as error:
                return error_page(request, error.status, error.message)
            except RequestValidationError as error:
                return error_page(request, 422, _validation_message(error))
            except HTTPException as error:
                return error_page(request, error.status_code, str(error.detail))
            except Exception as error:
                log_unexpected(error, method=request.method, path=request.url.path)
                return error_page(request, 500, "internal error; the operator's log has details")

        return page
