"""HTTP hardening around the app: body limits, content types, security headers.

Pure ASGI middleware, so limits hold before any route code runs:

- a request body larger than ``GATEWAY_MAX_REQUEST_BYTES`` is refused with 413, by
  its ``Content-Length`` before a byte is read, or as soon as a chunked body passes
  it; uploads are left to their route, which authenticates the uploader first,
  then streams the file to disk under ``GATEWAY_MAX_UPLOAD_BYTES`` and audits
  every refusal (:mod:`gateway.api.uploads`);
- a release request must be ``application/json``, or 415;
- an unexpected exception becomes a 500 in the one error shape, and the log gets
  its type and where it was raised, never its message (which might hold a value);
- every response carries headers that stop browsers sniffing, framing, caching
  or leaking referrers; HTML pages (:mod:`gateway.web`) get a Content-Security-Policy
  that admits only the gateway's own stylesheet and forms, and no script at all.
"""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Mapping, Sequence

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("gateway.api")

UPLOAD_PATH = re.compile(r"/v1/agreements/[^/]+/datasets/[^/]+/uploads")
# The web page's upload form: streamed and limited by its route, like the API's.
WEB_UPLOAD_PATH = re.compile(r"/web/agreements/[^/]+/upload")
RELEASE_PATH = re.compile(r"/v1/agreements/[^/]+/releases")

SECURITY_HEADERS: Mapping[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Strict-Transport-Security": "max-age=31536000",
}

#: The policy of HTML pages: their own stylesheet and forms, nothing else. No script
#: source at all (the pages have none), no inline styles, no frames, no plugins.
PAGE_CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(
        status_code=status, content={"error": {"code": code, "message": message, "details": []}}
    )


class SecurityHeadersMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        headers: Mapping[str, str] = SECURITY_HEADERS,
        *,
        form_actions: Sequence[str] = (),
    ) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        policy = PAGE_CONTENT_SECURITY_POLICY
        if form_actions:
            # Browsers hold a form's redirects to form-action too: signing out sends the
            # browser on to the identity provider's own sign-out (gateway/web/sso.py).
            policy = policy.replace(
                "form-action 'self'", "form-action 'self' " + " ".join(form_actions)
            )
        page = {**headers, "Content-Security-Policy": policy}
        self.page_headers = [(k.lower().encode(), v.encode()) for k, v in page.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = message.get("headers", [])
                present = {name.lower() for name, _ in headers}
                html = any(
                    name.lower() == b"content-type" and value.startswith(b"text/html")
                    for name, value in headers
                )
                wanted = self.page_headers if html else self.headers
                extra = [(k, v) for k, v in wanted if k not in present]
                message["headers"] = [*headers, *extra]
            await send(message)

        await self.app(scope, receive, with_headers)


class RequestLimitsMiddleware:
    def __init__(self, app: ASGIApp, *, max_request_bytes: int) -> None:
        self.app = app
        self.limit = max_request_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        is_post = scope["method"] == "POST"
        if is_post and (UPLOAD_PATH.fullmatch(path) or WEB_UPLOAD_PATH.fullmatch(path)):
            await self.app(scope, receive, send)
            return
        limit = self.limit
        headers = Headers(scope=scope)
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.isdigit():
                await error_response(400, "bad_request", "Content-Length is not a number")(
                    scope, receive, send
                )
                return
            if int(declared) > limit:
                await self._too_large()(scope, receive, send)
                return
        media_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if is_post and RELEASE_PATH.fullmatch(path) and media_type != "application/json":
            await error_response(
                415, "unsupported_media_type", "send this request as application/json"
            )(scope, receive, send)
            return
        body: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._too_large()(scope, receive, send)
                return
            body.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large(self) -> JSONResponse:
        return error_response(
            413,
            "request_too_large",
            f"the request body is larger than the {self.limit:,} bytes allowed "
            "(GATEWAY_MAX_REQUEST_BYTES)",
        )


def log_unexpected(exc: BaseException, *, method: str, path: str) -> None:
    """One line for the operator: the exception's type and where it was raised, never
    its message or a traceback (either might hold a value from the data)."""
    where = traceback.extract_tb(exc.__traceback__)[-1]
    logger.error(
        "internal error: %s at %s:%s during %s %s",
        type(exc).__name__,
        where.filename,
        where.lineno,
        method,
        path,
    )


class UnexpectedErrorMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            log_unexpected(exc, method=scope["method"], path=scope["path"])
            if not started:
                await error_response(
                    500, "internal_error", "internal error; the operator's log has details"
                )(scope, receive, send)
