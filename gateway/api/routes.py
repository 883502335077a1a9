"""Routes under ``/v1``. Each is a thin adapter over a domain function.

Every ``/v1`` route needs a bearer token (:mod:`gateway.api.auth`) and checks the
token's role, agreement and party before doing anything; ``responses`` lists
every error status a route can answer with, in the one error shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gateway import audit
from gateway.agreements.views import agreement_detail, agreement_summary
from gateway.api.auth import Allow, require_provider
from gateway.api.deps import GatewayDep, SessionDep
from gateway.api.uploads import spool_upload
from gateway.credentials import Principal
from gateway.errors import SchemaError
from gateway.ingest import upload_extract
from gateway.release.budget import budget_history, budget_report
from gateway.release.engine import request_release
from gateway.release.model import Preview, Release
from gateway.release.query import Query as ReleaseQuery
from gateway.release.reports import run_report

router = APIRouter()

# Each route's principal: a valid token whose role and agreement the route admits.
AnyRole = Annotated[Principal, Depends(Allow("uploader", "analyst", "reviewer", "approver"))]
Uploader = Annotated[Principal, Depends(Allow("uploader"))]
Analyst = Annotated[Principal, Depends(Allow("analyst"))]
Reviewer = Annotated[Principal, Depends(Allow("reviewer"))]
AnalystOrReviewer = Annotated[Principal, Depends(Allow("analyst", "reviewer"))]


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: list[Any]


class ErrorBody(BaseModel):
    """The one error shape of every failure."""

    error: ErrorDetail


_MEANINGS = {
    400: "The request could not be read.",
    401: "No bearer token, or one that is not valid, expired or revoked.",
    403: "The token's role, agreement or party does not allow this, or the agreement refuses it.",
    404: "No such agreement, dataset or party.",
    409: "The audit log or data is in a state that refuses this.",
    413: "The request body is too large.",
    415: "The request body has the wrong content type.",
    422: "The request is not valid.",
    429: "Too many failed authentications from this client; try later.",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error responses a route documents: the auth ones, and ``statuses``."""
    every = sorted({401, 403, 422, 429, *statuses})
    return {s: {"model": ErrorBody, "description": _MEANINGS[s]} for s in every}


@router.get("/healthz", tags=["meta"])
def healthz() -> dict[str, str]:
    """Liveness; needs no token."""
    return {"status": "ok"}


@router.get("/v1/agreements", tags=["agreements"], responses=_errors())
def list_agreements(gateway: GatewayDep, principal: AnyRole) -> list[dict[str, Any]]:
    """The agreements this token covers."""
    return [
        agreement_summary(a)
        for agreement_id, a in sorted(gateway.registry.agreements.items())
        if principal.covers(agreement_id)
    ]


@router.get("/v1/agreements/{agreement_id}", tags=["agreements"], responses=_errors(404))
def show_agreement(agreement_id: str, gateway: GatewayDep, principal: AnyRole) -> dict[str, Any]:
    """One agreement this token covers, with its datasets, allowlists and reports."""
    return agreement_detail(gateway.agreement(agreement_id))


_EXPORTS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A page of events (json), or every matching event (jsonl, csv).",
        "content": {
            "application/x-ndjson": {"schema": {"type": "string"}},
            "text/csv": {"schema": {"type": "string"}},
        },
    }
}


@router.get("/v1/audit/events", tags=["audit"], responses={**_EXPORTS, **_errors(400)})
def list_audit_events(
    principal: Reviewer,
    session: SessionDep,
    agreement: str | None = None,
    kind: str | None = None,
    party: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    offset: int = Query(default=0, ge=0, le=2**31 - 1),
    format: Literal["json", "jsonl", "csv"] = Query(
        default="json", description="json (paged), or jsonl / csv for an export"
    ),
) -> Any:
    """Audit events of the agreements this reviewer token covers, oldest first, filtered;
    as JSON pages or as a JSON Lines / CSV export."""
    if kind is not None and kind not in audit.EVENT_KINDS:
        raise SchemaError(
            f"unknown event kind {kind!r}; known kinds: {', '.join(sorted(audit.EVENT_KINDS))}"
        )
    statement = audit.query_events(
        agreement_id=agreement,
        within=principal.agreements,
        kind=kind,
        party=party,
        since=since,
        until=until,
    )
    events = [audit.event_view(e) for e in session.scalars(statement.offset(offset).limit(limit))]
    if format != "json":
        media = "application/x-ndjson" if format == "jsonl" else "text/csv"
        return PlainTextResponse(audit.events_as_text(events, format), media_type=media)
    return {"events": events, "offset": offset, "limit": limit}


@router.get("/v1/audit/verify", tags=["audit"], responses=_errors())
def verify_audit(
    gateway: GatewayDep,
    principal: Reviewer,
    session: SessionDep,
    anchor: str | None = Query(
        default=None,
        description=(
            "EVENTS:HEAD_HASH noted from an earlier verification: the log must still "
            "hold that event with that hash (detects a log cut back or rewritten since)."
        ),
        max_length=90,
    ),
) -> dict[str, Any]:
    """Every hash, link and signed checkpoint of the live log (the whole chain: a chain
    verifies only whole; problems name event numbers, never their contents)."""
    result = audit.verify_chain(session)
    result.problems += audit.verify_checkpoints(session, gateway.signing_key)
    if anchor is not None:
        result.problems += audit.verify_anchor(session, audit.Anchor.parse(anchor))
    return result.to_dict()


_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "The extract: CSV (UTF-8), Excel .xlsx or Parquet.",
                        }
                    },
                }
            }
        },
    }
}


@router.post(
    "/v1/agreements/{agreement_id}/datasets/{dataset}/uploads",
    tags=["uploads"],
    status_code=201,
    openapi_extra=_UPLOAD_BODY,
    responses=_errors(400, 404, 409, 413, 415),
)
async def upload_dataset(
    agreement_id: str,
    dataset: str,
    request: Request,
    gateway: GatewayDep,
    principal: Uploader,
    sheet: str | None = Query(default=None, description="Excel worksheet (default: the first)."),
) -> dict[str, Any]:
    """Upload one extract of a dataset the token's party provides; returns its receipt.
    A refused file stores nothing. Needs an uploader token of the agreement."""
    acting_party = principal.party or "unknown"
    actor = principal.actor
    await run_in_threadpool(require_provider, gateway, request, principal, agreement_id, dataset)
    received = await spool_upload(
        gateway,
        headers=dict(request.headers),
        body=request.stream(),
        agreement_id=agreement_id,
        party=acting_party,
        actor=actor,
        dataset=lambda: dataset,
    )
    try:
        return await run_in_threadpool(
            upload_extract,
            gateway,
            agreement_id=agreement_id,
            party=acting_party,
            dataset=dataset,
            path=received.path,
            display_name=received.display_name,
            sheet=sheet,
            actor=actor,
        )
    finally:
        received.discard()


class ReportRequest(BaseModel):
    """A named report of the agreement, with its parameters (docs/reports.md)."""

    model_config = ConfigDict(extra="forbid")

    report: str = Field(max_length=64)
    parameters: dict[str, str | int | float | list[str | int]] = Field(default_factory=dict)


def _json(body: BaseModel | dict[str, Any]) -> Response:
    """``body`` as JSON, serialised once. A route that returns a Response skips FastAPI's
    validation of its own return value against the declared model (which the domain
    types already are): a third of a stored repeat's time (issue 14, cheaper requests).
    The declared ``response_model`` still documents the shape."""
    if isinstance(body, BaseModel):
        return Response(body.model_dump_json(by_alias=True), media_type="application/json")
    return JSONResponse(body)


@router.post(
    "/v1/agreements/{agreement_id}/releases",
    tags=["releases"],
    responses=_errors(400, 404, 409, 413, 415),
    response_model=Release | Preview | dict[str, Any],
)
def create_release(
    agreement_id: str,
    query: Annotated[
        ReleaseQuery | ReportRequest,
        Body(description="A query (SPEC section 7), or a named report with its parameters."),
    ],
    gateway: GatewayDep,
    principal: Analyst,
    dry_run: bool = Query(default=False, description="Preview accuracy and cost only."),
) -> Response:
    """Release an aggregate to the token's party, or preview it with dry_run.
    Needs an analyst token of the agreement. The release is the agreement's: every
    recipient allowed its fields receives the same numbers."""
    if isinstance(query, ReportRequest):
        report = run_report(
            gateway,
            agreement_id=agreement_id,
            party=principal.party or "unknown",
            report=query.report,
            parameters=query.parameters,
            actor=principal.actor,
            dry_run=dry_run,
        )
        return _json(report)
    release = request_release(
        gateway,
        agreement_id=agreement_id,
        party=principal.party or "unknown",
        query=query,
        actor=principal.actor,
        dry_run=dry_run,
    )
    return _json(release)


@router.get(
    "/v1/agreements/{agreement_id}/budget",
    tags=["releases"],
    responses=_errors(404),
    response_model=dict[str, Any],
)
def show_budget(
    agreement_id: str,
    gateway: GatewayDep,
    principal: AnalystOrReviewer,
    history: bool = Query(default=False, description="Add every reservation, oldest first."),
) -> Response:
    """Total, spent and remaining epsilon, over the agreement's life and, when it has a
    period budget, in the current school year. A reviewer sees every recipient; an
    analyst sees the agreement's totals and its own party's share and history only."""
    agreement = gateway.agreement(agreement_id)
    # Its own read, not a session dependency: a generator dependency costs two hops to
    # the thread pool (issue 14, cheaper requests).
    with gateway.reads() as session:
        report = budget_report(session, agreement, now=gateway.clock())
        entries = budget_history(session, agreement_id) if history else []
    if principal.role == "analyst":
        report["parties"] = {
            p: state for p, state in report["parties"].items() if p == principal.party
        }
        entries = [e for e in entries if e["party"] == principal.party]
    if history:
        report["history"] = entries
    return _json(report)
