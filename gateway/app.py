"""The application factory: ``create_app(settings)`` builds the HTTP API and the web
pages (:mod:`gateway.web`).

Nothing connects or reads a key until the app starts (its lifespan opens the
:class:`gateway.context.Gateway`), so tests build their own app with their own
settings, and a missing or unsafe master key stops the server at start-up.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway import __version__, oidc
from gateway.api import extracts as extract_routes
from gateway.api import routes
from gateway.api.hardening import (
    RequestLimitsMiddleware,
    SecurityHeadersMiddleware,
    UnexpectedErrorMiddleware,
)
from gateway.config import Settings
from gateway.context import Gateway
from gateway.errors import GatewayError, TooManyAttempts, Unauthenticated
from gateway.lockout import FailureLimiter
from gateway.web import STATIC_DIR
from gateway.web import router as web_router
from gateway.web.extracts import router as extract_pages
from gateway.web.session import PREFIX as WEB_PREFIX
from gateway.web.sso import keep_codes_out_of_the_access_log
from gateway.web.sso import router as sso_router


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway = Gateway.open(settings)
        try:
            # Single sign-on (gateway/oidc.py): None when off; a broken mapping stops here.
            app.state.oidc = oidc.start(settings, gateway.registry)
        except BaseException:
            gateway.close()
            raise
        app.state.gateway = gateway
        try:
            yield
        finally:
            gateway.close()

    app = FastAPI(
        title="Teacher-data sharing gateway",
        version=__version__,
        lifespan=lifespan,
        openapi_url="/openapi.json",
        # The interactive pages load scripts from a CDN: off, the document is enough.
        docs_url=None,
        redoc_url=None,
    )
    app.state.oidc = None
    app.state.auth_failures = FailureLimiter(
        settings.auth_failure_limit, settings.auth_failure_window_seconds
    )
    app.include_router(routes.router)
    app.include_router(extract_routes.router)  # record-level extracts (docs/extracts.md)
    # The web pages (docs/web.md): HTML over the same functions, under /web.
    app.include_router(web_router)
    app.include_router(extract_pages)  # the extract pages (docs/extracts.md)
    app.include_router(sso_router)  # signing in through the identity provider
    keep_codes_out_of_the_access_log()  # the callback's code and state
    app.mount("/web/static", StaticFiles(directory=STATIC_DIR), name="web-static")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        """Whoever opens the gateway's address in a browser lands on the web pages."""
        return RedirectResponse(WEB_PREFIX, status_code=303)

    _install_error_handlers(app)
    # Added innermost first: the security headers wrap everything, then unexpected
    # errors become a bare 500, CORS answers preflights (only when origins are
    # configured), then the body limits.
    app.add_middleware(RequestLimitsMiddleware, max_request_bytes=settings.max_request_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(UnexpectedErrorMiddleware)
    app.add_middleware(SecurityHeadersMiddleware, form_actions=oidc.form_action_origins(settings))
    return app


def app_from_environment() -> FastAPI:
    """The app with settings read from ``GATEWAY_*`` variables: the factory each worker
    process of ``gateway serve --workers N`` imports (uvicorn starts workers afresh, so
    they cannot be handed an app object)."""
    from gateway.config import load_settings

    return create_app(load_settings())


def _error(
    status: int, code: str, message: str, details: list[object] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "details": details or []}},
    )


def _install_error_handlers(app: FastAPI) -> None:
    """One JSON error shape for every failure, never a stack trace."""

    @app.exception_handler(GatewayError)
    async def gateway_error(_request: Request, exc: GatewayError) -> JSONResponse:
        # The error's own body: some errors add to it (a refused upload's receipt).
        response = JSONResponse(status_code=exc.status, content=exc.to_dict())
        if isinstance(exc, Unauthenticated):
            response.headers["WWW-Authenticate"] = "Bearer"
        elif isinstance(exc, TooManyAttempts) and exc.details:
            response.headers["Retry-After"] = str(exc.details[0]["retry_after"])
        return response

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        details: list[object] = [
            {"location": list(err.get("loc", ())), "message": err.get("msg", "")}
            for err in exc.errors()
        ]
        return _error(422, "invalid_request", "the request is not valid", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(_request: Request, _exc: Exception) -> JSONResponse:
        return _error(500, "internal_error", "internal error; the operator's log has details")
