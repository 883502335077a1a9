"""Routes of record-level extracts under ``/v1`` (docs/extracts.md): thin adapters over
:mod:`gateway.extracts.approval`.

Who may call what: a recipient's ``analyst`` asks and downloads; the providing party's
approvers (the roles its agreement declares) approve and refuse; ``reviewer`` tokens
read requests and certificates of destruction. The role and agreement are checked
first (:class:`gateway.api.auth.Allow`, audited); the rest (the providing party, the
declared roles, never the credential that asked) by the domain, which audits its own
refusals.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gateway.api.auth import Allow, deny
from gateway.api.deps import GatewayDep
from gateway.api.routes import _errors
from gateway.credentials import Principal
from gateway.errors import SchemaError
from gateway.extracts import approval

router = APIRouter(tags=["extracts"])

Requester = Annotated[Principal, Depends(Allow("analyst"))]
Decider = Annotated[Principal, Depends(Allow("approver", "uploader", "analyst"))]
Reader = Annotated[Principal, Depends(Allow("approver", "uploader", "analyst", "reviewer"))]
Reviewer = Annotated[Principal, Depends(Allow("reviewer"))]
Certifier = Annotated[Principal, Depends(Allow("approver", "uploader", "analyst"))]

_PATH = "/v1/agreements/{agreement_id}/extracts"


class ExtractAsk(BaseModel):
    """Which of the agreement's declared extracts to ask for."""

    model_config = ConfigDict(extra="forbid")

    extract: str = Field(max_length=128)


class Refusal(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str | None = Field(default=None, max_length=500)


def _in(agreement_id: str, view: approval.RequestView, request_id: str) -> None:
    if view.agreement_id != agreement_id:
        from gateway.errors import NotFound

        raise NotFound(f"no extract request {request_id!r} under agreement {agreement_id!r}")


@router.post(_PATH, status_code=201, responses=_errors(400, 404, 409, 413))
def ask_for_extract(
    agreement_id: str,
    body: ExtractAsk,
    request: Request,
    gateway: GatewayDep,
    principal: Requester,
) -> dict[str, Any]:
    """Ask for one of the agreement's declared extracts, for the token's party. It is
    built and checked now and waits, pending, for the providing party's approvers."""
    spec = gateway.agreement(agreement_id).extract(body.extract)
    if principal.party not in spec.recipients:
        # As an upload of another party's dataset: refused and audited before any work.
        deny(
            gateway,
            request,
            principal,
            f"extract {body.extract!r} is for {', '.join(spec.recipients)}, not for "
            f"{principal.party!r}",
            agreement_id=agreement_id,
        )
    view = approval.request_extract(
        gateway, agreement_id=agreement_id, extract=body.extract, principal=principal
    )
    return view.to_dict()


@router.get(_PATH, responses=_errors(400, 404))
def list_extract_requests(
    agreement_id: str,
    gateway: GatewayDep,
    principal: Reader,
    status: str | None = Query(default=None, max_length=16),
) -> dict[str, Any]:
    """Requests the token may see, newest first: its party's own asks, the requests its
    party approves, or all of them (reviewer). Without the sample rows."""
    views = approval.list_requests(
        gateway, agreement_id=agreement_id, principal=principal, status=status
    )
    return {"requests": [v.to_dict(with_sample=False) for v in views]}


@router.get(_PATH + "/{request_id}", responses=_errors(404))
def show_extract_request(
    agreement_id: str, request_id: str, gateway: GatewayDep, principal: Reader
) -> dict[str, Any]:
    """One request: what the approver sees (columns, generalisation, risk figures, a
    sample of generalised rows with no IDs) and its status."""
    view = approval.show_request(gateway, request_id=request_id, principal=principal)
    _in(agreement_id, view, request_id)
    return view.to_dict()


@router.post(_PATH + "/{request_id}/approve", responses=_errors(404, 409))
def approve_extract(
    agreement_id: str, request_id: str, gateway: GatewayDep, principal: Decider
) -> dict[str, Any]:
    """Approve a pending request, as an approver of the providing party; never the
    credential (or person) that asked."""
    _in(agreement_id, approval.show_request(gateway, request_id=request_id, principal=None),
        request_id)  # fmt: skip
    return approval.decide(
        gateway, request_id=request_id, principal=principal, approve=True
    ).to_dict()


@router.post(_PATH + "/{request_id}/refuse", responses=_errors(400, 404, 409, 413))
def refuse_extract(
    agreement_id: str,
    request_id: str,
    gateway: GatewayDep,
    principal: Decider,
    body: Refusal | None = None,
) -> dict[str, Any]:
    """Refuse a pending request, as an approver of the providing party; its rows are
    erased."""
    _in(agreement_id, approval.show_request(gateway, request_id=request_id, principal=None),
        request_id)  # fmt: skip
    return approval.decide(
        gateway,
        request_id=request_id,
        principal=principal,
        approve=False,
        reason=body.reason if body else None,
    ).to_dict()


_FILE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The extract: Parquet (its record in the key-value metadata), or a "
        "zip of the CSV and its record.",
        "content": {
            "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
            "application/zip": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post(_PATH + "/{request_id}/download", responses={**_FILE, **_errors(404, 409)})
def download_extract(
    agreement_id: str,
    request_id: str,
    gateway: GatewayDep,
    principal: Requester,
    format: Literal["parquet", "csv"] = Query(default="parquet"),
) -> Response:
    """The one download of an approved extract, by its recipient party's analyst, within
    its window (``GATEWAY_EXTRACT_DOWNLOAD_HOURS``). A POST: it changes the request."""
    _in(agreement_id, approval.show_request(gateway, request_id=request_id, principal=None),
        request_id)  # fmt: skip
    downloaded = approval.download_extract(
        gateway, request_id=request_id, principal=principal, file_format=format
    )
    return Response(
        downloaded.data,
        media_type=downloaded.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{downloaded.file_name}"',
            "Cache-Control": "no-store",
        },
    )


@router.get("/v1/agreements/{agreement_id}/certificates", responses=_errors(404))
def list_certificates(
    agreement_id: str, gateway: GatewayDep, principal: Reviewer
) -> dict[str, Any]:
    """The extracts handed out under the agreement and the recipients' certificates of
    destruction recorded against it (each file's SHA-256 and uploader)."""
    return {
        "agreement": agreement_id,
        "extracts_handed_out": [
            v.to_dict(with_sample=False)
            for v in approval.handed_out(gateway, agreement_id=agreement_id)
        ],
        "certificates": [
            c.to_dict() for c in approval.list_certificates(gateway, agreement_id=agreement_id)
        ],
    }


@router.post(
    "/v1/agreements/{agreement_id}/certificates",
    status_code=201,
    responses=_errors(400, 404, 413),
)
async def certify_destruction(
    agreement_id: str,
    gateway: GatewayDep,
    principal: Certifier,
    file: Annotated[UploadFile, File(description="The signed statement (PDF, text...).")],
) -> dict[str, Any]:
    """Record the token's party's signed certificate of destruction; its SHA-256 and the
    uploading credential go to the audit log."""
    data = await file.read(approval.MAX_CERTIFICATE_BYTES + 1)
    if principal.party is None:
        raise SchemaError("a certificate is recorded for a party: this token has none")
    view = await run_in_threadpool(
        approval.record_certificate,
        gateway,
        agreement_id=agreement_id,
        party=principal.party,
        file_name=file.filename or "certificate",
        media_type=file.content_type or "application/octet-stream",
        data=data,
        actor=principal.actor,
    )
    return view.to_dict()
