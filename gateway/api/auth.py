"""Who is asking, and may they: bearer tokens, roles and refusals for the API.

Every ``/v1`` route depends on :func:`get_principal` (a valid bearer token) and
then calls :func:`require` with the roles it admits and the agreement it touches.
A refusal is written to the audit log (``access-refused``) before the 401 or 403
goes out. Failed authentications are counted per client, in the database so every
worker and server shares the count (:mod:`gateway.lockout`): past
``GATEWAY_AUTH_FAILURE_LIMIT`` within the window, that client gets 429 until the
window has passed, without its tokens being checked at all.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, NoReturn

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from gateway import audit, credentials, oidc
from gateway.api.deps import GatewayDep
from gateway.context import Gateway
from gateway.credentials import Principal
from gateway.errors import AccessDenied, GatewayError, TooManyAttempts, Unauthenticated
from gateway.lockout import FailureLimiter

bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="gw_<id>_<secret>",
    description="A token from `gateway tokens create`.",
)


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "path", "")) or "(unmatched)"


def record_refusal(
    gateway: Gateway,
    request: Request,
    *,
    status: int,
    reason: str,
    actor: audit.Actor,
    agreement_id: str | None = None,
) -> None:
    """An ``access-refused`` event; tied to the agreement only if it is a loaded one."""
    agreement = gateway.registry.agreements.get(agreement_id) if agreement_id else None
    with gateway.sessions() as session, session.begin():
        audit.append_event(
            session,
            kind="access-refused",
            actor=actor,
            details={
                "method": request.method,
                "route": _route(request),
                "status": status,
                "reason": reason,
            },
            agreement=agreement,
        )


def get_principal(
    request: Request,
    gateway: GatewayDep,
    token: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    limiter: FailureLimiter = request.app.state.auth_failures
    client = _client(request)
    try:
        # One read-only session for both: the lockout is read before the token is.
        with gateway.reads() as session:
            wait = limiter.retry_after(session, client)
            if wait is not None:
                raise TooManyAttempts(
                    f"too many failed authentications from this client; try again in {wait} s",
                    details=[{"retry_after": wait}],
                )
            sent = token.credentials if token else None
            if sent is None or sent.startswith("gw_") or not _sso(request):
                return credentials.authenticate(session, gateway.master_key, sent)
        # Not an operator token, and single sign-on is on: the provider's access token
        # (gateway/oidc.py), checked outside the read session (it may fetch the JWKS).
        return _provider_principal(request, gateway, sent)
    except Unauthenticated as error:
        with gateway.sessions() as session, session.begin():
            locked = limiter.record_failure(session, client)
        known = error.credential_id
        reason = error.message
        if locked:
            reason += "; too many failed authentications: this client is locked out for a while"
        record_refusal(
            gateway,
            request,
            status=401,
            reason=reason,
            actor=audit.Actor(role="anonymous", credential_id=known),
            agreement_id=request.path_params.get("agreement_id"),
        )
        raise


def _sso(request: Request) -> bool:
    return getattr(request.app.state, "oidc", None) is not None


def _provider_principal(request: Request, gateway: Gateway, sent: str) -> Principal:
    """The principal of an identity provider's access token, by the sign-in mapping; a
    valid token that no rule admits is refused (403, audited) under the person's
    keyed id, never their email or name."""
    provider: oidc.OidcProvider = request.app.state.oidc
    claims = provider.validate_access_token(sent)
    principal = oidc.principal_from_claims(gateway, claims)
    if principal is None:
        reason = "no rule of the gateway's sign-in mapping admits this person (ask the operator)"
        actor = audit.Actor(
            role="anonymous",
            credential_id=oidc.subject_id(
                gateway.master_key, str(claims.get("iss")), str(claims.get("sub"))
            ),
        )
        record_refusal(
            gateway,
            request,
            status=403,
            reason=reason,
            actor=actor,
            agreement_id=request.path_params.get("agreement_id"),
        )
        raise AccessDenied(reason)
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def require(
    gateway: Gateway,
    request: Request,
    principal: Principal,
    *,
    roles: Iterable[str],
    agreement_id: str | None = None,
) -> None:
    """Refuse (403, audited) unless the principal has one of ``roles`` and covers the agreement."""
    reason = refusal(gateway, principal, roles=roles, agreement_id=agreement_id)
    if reason is not None:
        deny(gateway, request, principal, reason, agreement_id=agreement_id)


def refusal(
    gateway: Gateway,
    principal: Principal,
    *,
    roles: Iterable[str],
    agreement_id: str | None = None,
) -> str | None:
    """Why the principal may not do this (its role, or an agreement it does not cover),
    or None when it may. Reads nothing but the principal and the loaded agreements."""
    allowed = tuple(roles)
    if principal.role not in allowed:
        needs = " or ".join(f"{_article(r)} {r}" for r in allowed)
        return f"{_article(principal.role)} {principal.role} token may not do this (needs {needs})"
    if agreement_id is not None and not principal.covers(agreement_id):
        # Name the agreement only when it is a loaded one: a path is whatever was sent.
        if agreement_id in gateway.registry.agreements:
            return f"this token does not cover agreement {agreement_id!r}"
        return "this token does not cover the agreement named in the request"
    return None


def require_provider(
    gateway: Gateway, request: Request, principal: Principal, agreement_id: str, dataset: str
) -> None:
    """Refuse (403, audited) an upload of a dataset another party provides, before any of
    the file is read. An unknown dataset passes: the upload refuses it by name."""
    try:
        provider = gateway.agreement(agreement_id).dataset(dataset).provided_by
    except GatewayError:
        return
    if provider != principal.party:
        deny(
            gateway,
            request,
            principal,
            f"dataset {dataset!r} is provided by {provider!r}, not by {principal.party!r}",
            agreement_id=agreement_id,
        )


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


class Allow:
    """A route's dependency: a principal with one of ``roles``, covering the agreement the
    request names (its ``agreement_id`` path parameter, or an ``agreement`` filter).

    As a dependency it runs before the request's parameters and body are validated, so
    a caller who may not use a route learns nothing from how its request was malformed.
    """

    def __init__(self, *roles: str) -> None:
        self.roles = roles

    async def __call__(
        self, request: Request, gateway: GatewayDep, principal: PrincipalDep
    ) -> Principal:
        # async: the check reads only the principal and the agreements; only a refusal
        # (an audit event) goes to the thread pool.
        agreement_id = request.path_params.get("agreement_id") or request.query_params.get(
            "agreement"
        )
        reason = refusal(gateway, principal, roles=self.roles, agreement_id=agreement_id)
        if reason is not None:
            await run_in_threadpool(
                deny, gateway, request, principal, reason, agreement_id=agreement_id
            )
        return principal


def deny(
    gateway: Gateway,
    request: Request,
    principal: Principal,
    reason: str,
    *,
    agreement_id: str | None = None,
) -> NoReturn:
    record_refusal(
        gateway,
        request,
        status=403,
        reason=reason,
        actor=principal.actor,
        agreement_id=agreement_id,
    )
    raise AccessDenied(reason)
