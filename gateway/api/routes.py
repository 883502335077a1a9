"""Routes under ``/v1``. Each is a thin adapter over a domain function."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query

from gateway import audit
from gateway.agreements.views import agreement_detail, agreement_summary
from gateway.api.deps import GatewayDep, SessionDep

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
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = Query(default=100, ge=1, le=1000),
    offset: int = Query(default=0, ge=0),
) -> dict[str, Any]:
    statement = audit.query_events(agreement_id=agreement, kind=kind, since=since, until=until)
    events = [audit.event_view(e) for e in session.scalars(statement.offset(offset).limit(limit))]
    return {"events": events, "offset": offset, "limit": limit}


@router.get("/v1/audit/verify", tags=["audit"])
def verify_audit(session: SessionDep) -> dict[str, Any]:
    return audit.verify_chain(session).to_dict()
