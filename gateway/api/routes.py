"""Routes under ``/v1``. Each is a thin adapter over a domain function."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from starlette.concurrency import run_in_threadpool

from gateway import audit
from gateway.agreements.views import agreement_detail, agreement_summary
from gateway.api.deps import GatewayDep, SessionDep
from gateway.api.uploads import receive_file, upload_folder
from gateway.context import Gateway
from gateway.errors import GatewayError, SchemaError
from gateway.ingest import upload_extract
from gateway.ingest.upload import record_refused_request
from gateway.release.budget import budget_history, budget_report
from gateway.release.engine import request_release
from gateway.release.query import parse_query

router = APIRouter()


@router.get("/healthz", tags=["meta"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/v1/agreements", tags=["agreements"])
def list_agreements(gateway: GatewayDep) -> list[dict[str, Any]]:
    return [agreement_summary(a) for _, a in sorted(gateway.registry.agreements.items())]


@router.get("/v1/agreements/{agreement_id}", tags=["agreements"])
def show_agreement(agreement_id: str, gateway: GatewayDep) -> dict[str, Any]:
    return agreement_detail(gateway.agreement(agreement_id))


@router.get("/v1/audit/events", tags=["audit"])
def list_audit_events(
    session: SessionDep,
    agreement: str | None = None,
    kind: str | None = None,
    party: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    offset: int = Query(default=0, ge=0),
    format: Literal["json", "jsonl", "csv"] = Query(
        default="json", description="json (paged), or jsonl / csv for an export"
    ),
) -> Any:
    """Audit events, oldest first, filtered; as JSON pages or as a JSON Lines / CSV export."""
    if kind is not None and kind not in audit.EVENT_KINDS:
        raise SchemaError(
            f"unknown event kind {kind!r}; known kinds: {', '.join(sorted(audit.EVENT_KINDS))}"
        )
    statement = audit.query_events(
        agreement_id=agreement, kind=kind, party=party, since=since, until=until
    )
    events = [audit.event_view(e) for e in session.scalars(statement.offset(offset).limit(limit))]
    if format != "json":
        media = "application/x-ndjson" if format == "jsonl" else "text/csv"
        return PlainTextResponse(audit.events_as_text(events, format), media_type=media)
    return {"events": events, "offset": offset, "limit": limit}


@router.get("/v1/audit/verify", tags=["audit"])
def verify_audit(gateway: GatewayDep, session: SessionDep) -> dict[str, Any]:
    """Every hash, link and signed checkpoint of the live log."""
    result = audit.verify_chain(session)
    result.problems += audit.verify_checkpoints(session, gateway.signing_key)
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
)
async def upload_dataset(
    agreement_id: str,
    dataset: str,
    request: Request,
    gateway: GatewayDep,
    party: str | None = Query(
        default=None, description="Uploading party (default: the dataset's provider)."
    ),
    sheet: str | None = Query(default=None, description="Excel worksheet (default: the first)."),
) -> dict[str, Any]:
    """Upload one extract; returns its receipt. A refused file stores nothing."""
    acting_party = party or _provider(gateway, agreement_id, dataset) or "unknown"
    actor = audit.Actor(role="operator", party=acting_party)
    try:
        with upload_folder(gateway.settings.data_dir) as folder:
            received = await receive_file(
                headers=dict(request.headers),
                body=request.stream(),
                folder=folder,
                max_bytes=gateway.settings.max_upload_bytes,
            )
    except GatewayError as error:
        # Refused before the file could be read: still in the audit log.
        await run_in_threadpool(
            record_refused_request,
            gateway,
            agreement_id=agreement_id,
            dataset=dataset,
            party=acting_party,
            actor=actor,
            reason=error.message,
        )
        raise
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


def _provider(gateway: Gateway, agreement_id: str, dataset: str) -> str | None:
    """The dataset's provider, or None when the agreement or dataset is unknown."""
    try:
        return gateway.agreement(agreement_id).dataset(dataset).provided_by
    except GatewayError:
        return None


@router.post("/v1/agreements/{agreement_id}/releases", tags=["releases"])
async def create_release(
    agreement_id: str,
    body: dict[str, Any],
    gateway: GatewayDep,
    party: str = Query(description="Recipient party (until access tokens say who asks)."),
    dry_run: bool = Query(default=False, description="Preview accuracy and cost only."),
) -> dict[str, Any]:
    """Release an aggregate (a query, SPEC section 7), or preview it with dry_run."""
    query = parse_query(body)
    return await run_in_threadpool(
        request_release,
        gateway,
        agreement_id=agreement_id,
        party=party,
        query=query,
        actor=audit.Actor(role="operator", party=party),
        dry_run=dry_run,
    )


@router.get("/v1/agreements/{agreement_id}/budget", tags=["releases"])
def show_budget(
    agreement_id: str,
    gateway: GatewayDep,
    session: SessionDep,
    history: bool = Query(default=False, description="Add every reservation, oldest first."),
) -> dict[str, Any]:
    report = budget_report(session, gateway.agreement(agreement_id))
    if history:
        report["history"] = budget_history(session, agreement_id)
    return report
