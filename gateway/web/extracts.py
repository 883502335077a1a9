"""The pages of record-level extracts (docs/extracts.md): a list of requests and one
request's page, where an analyst asks and downloads and the providing party's approvers
approve or refuse; thin adapters over :mod:`gateway.extracts.approval`.

Every POST form carries the session's CSRF token (refused, audited, without it). The
request page shows the approver exactly what the API and ``gateway extracts show`` do:
the columns, the generalisation, the risk figures and a sample of generalised rows with
no IDs.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

from gateway.api.deps import GatewayDep
from gateway.extracts import approval
from gateway.web.rendering import PageRoute, render
from gateway.web.session import CSRF_FIELD, PREFIX, PageAllow, SignedIn, require_genuine_form

router = APIRouter(route_class=PageRoute, include_in_schema=False)

Reader = Annotated[SignedIn, Depends(PageAllow("analyst", "approver", "uploader", "reviewer"))]
Asker = Annotated[SignedIn, Depends(PageAllow("analyst"))]
Decider = Annotated[SignedIn, Depends(PageAllow("approver", "uploader", "analyst"))]

_PAGES = f"{PREFIX}/agreements/{{agreement_id}}/extracts"


async def _form(request: Request, gateway: GatewayDep, session: SignedIn) -> dict[str, str]:
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    await require_genuine_form(request, gateway, session, sent if isinstance(sent, str) else None)
    return {k: v for k, v in form.items() if isinstance(v, str)}


def _request_page(agreement_id: str, request_id: str) -> str:
    return f"{PREFIX}/agreements/{quote(agreement_id)}/extracts/{quote(request_id)}"


@router.get(_PAGES, response_class=HTMLResponse)
def extracts_page(
    agreement_id: str, request: Request, gateway: GatewayDep, session: Reader
) -> Response:
    """The agreement's extract requests this person may see; for an analyst, the
    extracts its party may ask for; for a reviewer, certificates of destruction."""
    agreement = gateway.agreement(agreement_id)
    principal = session.principal
    views = approval.list_requests(gateway, agreement_id=agreement_id, principal=principal)
    context: dict[str, Any] = {
        "title": f"Record-level extracts: {agreement.title}",
        "session": session,
        "agreement": agreement,
        "pending": [v for v in views if v.status == "pending"],
        "others": [v for v in views if v.status != "pending"],
        "askable": (
            agreement.extracts_for(principal.party)
            if principal.role == "analyst" and principal.party
            else ()
        ),
        "certificates": (
            approval.list_certificates(gateway, agreement_id=agreement_id)
            if principal.role == "reviewer"
            else []
        ),
    }
    return render(request, "extracts.html", context)


@router.post(_PAGES, response_class=HTMLResponse)
async def ask(agreement_id: str, request: Request, gateway: GatewayDep, session: Asker) -> Response:
    form = await _form(request, gateway, session)
    view = await run_in_threadpool(
        approval.request_extract,
        gateway,
        agreement_id=agreement_id,
        extract=form.get("extract", ""),
        principal=session.principal,
    )
    return RedirectResponse(_request_page(agreement_id, view.id), status_code=303)


def _own(gateway: GatewayDep, agreement_id: str, request_id: str, session: SignedIn) -> Any:
    view = approval.show_request(gateway, request_id=request_id, principal=session.principal)
    if view.agreement_id != agreement_id:
        from gateway.errors import NotFound

        raise NotFound(f"no extract request {request_id!r} under agreement {agreement_id!r}")
    return view


@router.get(_PAGES + "/{request_id}", response_class=HTMLResponse)
def request_page(
    agreement_id: str, request_id: str, request: Request, gateway: GatewayDep, session: Reader
) -> Response:
    """One request: what the approver decides on, and the buttons this person may use."""
    agreement = gateway.agreement(agreement_id)
    view = _own(gateway, agreement_id, request_id, session)
    principal = session.principal
    return render(
        request,
        "extract.html",
        {
            "title": f"Extract request {view.id}",
            "session": session,
            "agreement": agreement,
            "view": view,
            "summary": view.summary,
            "may_decide": approval.may_decide(gateway, view, principal),
            "asked_by_you": principal.credential_id == view.requested_by,
            "may_download": (
                view.status == "approved"
                and principal.role == "analyst"
                and principal.party == view.recipient
            ),
        },
    )


@router.post(_PAGES + "/{request_id}/approve", response_class=HTMLResponse)
async def approve(
    agreement_id: str, request_id: str, request: Request, gateway: GatewayDep, session: Decider
) -> Response:
    await _form(request, gateway, session)
    await run_in_threadpool(_own, gateway, agreement_id, request_id, session)
    await run_in_threadpool(
        approval.decide, gateway, request_id=request_id, principal=session.principal, approve=True
    )
    return RedirectResponse(_request_page(agreement_id, request_id), status_code=303)


@router.post(_PAGES + "/{request_id}/refuse", response_class=HTMLResponse)
async def refuse(
    agreement_id: str, request_id: str, request: Request, gateway: GatewayDep, session: Decider
) -> Response:
    form = await _form(request, gateway, session)
    await run_in_threadpool(_own, gateway, agreement_id, request_id, session)
    await run_in_threadpool(
        approval.decide,
        gateway,
        request_id=request_id,
        principal=session.principal,
        approve=False,
        reason=form.get("reason"),
    )
    return RedirectResponse(_request_page(agreement_id, request_id), status_code=303)


@router.post(_PAGES + "/{request_id}/download")
async def download(
    agreement_id: str, request_id: str, request: Request, gateway: GatewayDep, session: Asker
) -> Response:
    form = await _form(request, gateway, session)
    await run_in_threadpool(_own, gateway, agreement_id, request_id, session)
    file_format = form.get("format", "parquet")
    downloaded = await run_in_threadpool(
        approval.download_extract,
        gateway,
        request_id=request_id,
        principal=session.principal,
        file_format=file_format,
    )
    return Response(
        downloaded.data,
        media_type=downloaded.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{downloaded.file_name}"',
            "Cache-Control": "no-store",
        },
    )
