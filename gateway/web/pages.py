"""The web pages under ``/web``: thin adapters over the same functions as the API.

Each page depends on :class:`gateway.web.session.PageAllow` with the roles it admits:
the session is resolved again (its token or its mapping included), then its role and
agreement are checked exactly as the API checks a bearer token's, and refusals are
audited alike. Every POST form carries the session's CSRF token and is refused (403,
audited) without it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import func, select
from starlette.concurrency import run_in_threadpool

from gateway import audit
from gateway.agreements import dictionary
from gateway.agreements.models import Agreement
from gateway.api.auth import deny, require_provider
from gateway.api.deps import GatewayDep
from gateway.api.uploads import spool_upload
from gateway.context import Gateway
from gateway.credentials import Principal
from gateway.errors import (
    GatewayError,
    NotFound,
    SchemaError,
    TooManyAttempts,
    Unauthenticated,
)
from gateway.ingest import UploadRefused, upload_extract
from gateway.ingest.upload import PROBLEMS_LISTED
from gateway.release import export, formatting
from gateway.release.budget import (
    budget_history,
    budget_report,
    from_epsilon_units,
    party_limit,
)
from gateway.release.formatting import STATISTIC
from gateway.release.reports import list_reports, run_report
from gateway.storage import history
from gateway.storage.releases import Release
from gateway.web.cells import cell_rows, cells_csv, dimensions, group_label
from gateway.web.charts import budget_chart
from gateway.web.figures import report_charts
from gateway.web.forms import LeadingFields, checked_stream
from gateway.web.rendering import PageRoute, format_number, render, sign_in_page
from gateway.web.session import (
    CSRF_FIELD,
    PREFIX,
    SIGN_IN_COOKIE,
    PageAllow,
    SignedIn,
    SignedInDep,
    authenticate_token,
    csrf_matches,
    end_session,
    require_genuine_form,
    start_session,
)
from gateway.web.sso import sign_out_target

router = APIRouter(route_class=PageRoute, include_in_schema=False)

AnyRole = Annotated[SignedIn, Depends(PageAllow("uploader", "analyst", "reviewer", "approver"))]
Uploader = Annotated[SignedIn, Depends(PageAllow("uploader"))]
Analyst = Annotated[SignedIn, Depends(PageAllow("analyst"))]
Reviewer = Annotated[SignedIn, Depends(PageAllow("reviewer"))]
AnalystOrReviewer = Annotated[SignedIn, Depends(PageAllow("analyst", "reviewer"))]

#: Audit events per page.
PAGE_SIZE = 50


def _covered(gateway: Gateway, principal: Principal) -> list[Agreement]:
    """The loaded agreements a token covers, by id."""
    return [
        gateway.registry.agreements[a]
        for a in sorted(principal.agreements)
        if a in gateway.registry.agreements
    ]


def _party(principal: Principal) -> str:
    return principal.party or "unknown"


# --- signing in and out -------------------------------------------------------------------


@router.get(f"{PREFIX}/sign-in", response_class=HTMLResponse)
def sign_in_form(request: Request) -> Response:
    return sign_in_page(request)


@router.post(f"{PREFIX}/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request, gateway: GatewayDep) -> Response:
    form = await request.form()
    nonce = request.cookies.get(SIGN_IN_COOKIE, "")
    sent = form.get(CSRF_FIELD)
    if not csrf_matches(
        gateway.master_key, "sign-in", nonce, sent if isinstance(sent, str) else None
    ):
        return sign_in_page(
            request,
            message="the sign-in form had expired or did not come from this site; "
            "paste the token again",
            status=400,
        )
    pasted = form.get("token")
    token = pasted.strip() if isinstance(pasted, str) else ""
    if not token:
        return sign_in_page(request, message="paste your token into the box", status=422)
    try:
        principal = await run_in_threadpool(authenticate_token, request, gateway, token)
    except (Unauthenticated, TooManyAttempts) as error:
        return sign_in_page(request, message=error.message, status=error.status)
    response = RedirectResponse(PREFIX, status_code=303)
    # The cookie carries a new session's id, never the token.
    await run_in_threadpool(
        start_session, gateway, request, response, principal=principal, kind="token"
    )
    response.delete_cookie(SIGN_IN_COOKIE, path=PREFIX)
    return response


@router.post(f"{PREFIX}/sign-out")
async def sign_out(request: Request, gateway: GatewayDep, session: SignedInDep) -> Response:
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    await require_genuine_form(request, gateway, session, sent if isinstance(sent, str) else None)
    # After a sign-in through the identity provider, on to its own sign-out (when it
    # offers one) so the next sign-in asks again; it sends the browser back here.
    target = await run_in_threadpool(
        sign_out_target, request, kind=session.kind, local=f"{PREFIX}/sign-in?signed_out=1"
    )
    response = RedirectResponse(target, status_code=303)
    # Ended on the server (audited), not only forgotten by this browser.
    await run_in_threadpool(end_session, gateway, request, response, actor=session.principal.actor)
    return response


# --- home ---------------------------------------------------------------------------------


@router.get(PREFIX, response_class=HTMLResponse)
def home(request: Request, gateway: GatewayDep, session: AnyRole) -> Response:
    principal = session.principal
    agreements = []
    for agreement in _covered(gateway, principal):
        agreements.append(
            {
                "agreement": agreement,
                "datasets": [
                    d.name for d in agreement.datasets if d.provided_by == principal.party
                ],
            }
        )
    return render(
        request,
        "home.html",
        {"title": "Home", "session": session, "agreements": agreements},
    )


# --- uploads ------------------------------------------------------------------------------


def _upload_context(agreement: Agreement, principal: Principal) -> dict[str, Any]:
    return {
        "agreement": agreement,
        "datasets": [d for d in agreement.datasets if d.provided_by == principal.party],
    }


@router.get(f"{PREFIX}/agreements/{{agreement_id}}/upload", response_class=HTMLResponse)
def upload_form(
    agreement_id: str, request: Request, gateway: GatewayDep, session: Uploader
) -> Response:
    agreement = gateway.agreement(agreement_id)
    return render(
        request,
        "upload.html",
        {
            "title": "Upload an extract",
            "session": session,
            **_upload_context(agreement, session.principal),
        },
    )


@router.post(f"{PREFIX}/agreements/{{agreement_id}}/upload", response_class=HTMLResponse)
async def upload(
    agreement_id: str, request: Request, gateway: GatewayDep, session: Uploader
) -> Response:
    principal = session.principal
    party = _party(principal)
    agreement = gateway.agreement(agreement_id)
    fields = LeadingFields(
        request.headers.get("content-type", ""), (CSRF_FIELD, "dataset", "sheet")
    )

    async def check(sent: dict[str, str]) -> None:
        await require_genuine_form(request, gateway, session, sent.get(CSRF_FIELD))
        dataset = sent.get("dataset", "")
        if not dataset:
            raise SchemaError("choose the dataset the file holds")
        await run_in_threadpool(
            require_provider, gateway, request, principal, agreement_id, dataset
        )

    # Refused before the file could be read: in the audit log, as over the API.
    received = await spool_upload(
        gateway,
        headers=dict(request.headers),
        body=checked_stream(request.stream(), fields, check),
        agreement_id=agreement_id,
        party=party,
        actor=principal.actor,
        dataset=lambda: fields.fields.get("dataset") or "(none chosen)",
    )
    dataset = fields.fields.get("dataset", "")
    sheet = fields.fields.get("sheet", "").strip() or None
    try:
        receipt = await run_in_threadpool(
            upload_extract,
            gateway,
            agreement_id=agreement_id,
            party=party,
            dataset=dataset,
            path=received.path,
            display_name=received.display_name,
            sheet=sheet,
            actor=principal.actor,
        )
        status, message = 201, None
    except UploadRefused as error:
        receipt, status, message = error.receipt, error.status, error.message
    finally:
        received.discard()
    return render(
        request,
        "receipt.html",
        {
            "title": "Upload receipt",
            "session": session,
            "agreement": agreement,
            "receipt": receipt,
            "message": message,
            "file_name": received.display_name,
            "problems_listed": PROBLEMS_LISTED,
        },
        status=status,
    )


# --- reports ------------------------------------------------------------------------------


def _report(agreement: Agreement, party: str, name: str) -> dict[str, Any]:
    for report in list_reports(agreement, party=party):
        if report["name"] == name:
            return report
    raise NotFound(f"agreement {agreement.id!r} has no report {name!r} for {party!r}")


def _form_value(default: Any) -> str:
    if default is None:
        return ""
    if isinstance(default, list):
        return ", ".join(str(v) for v in default)
    return str(default)


def _fields(report: Mapping[str, Any], given: Mapping[str, str] | None) -> list[dict[str, Any]]:
    """The report's parameters as form fields, holding what was sent (or the defaults)."""
    fields = []
    for name, spec in report["parameters"].items():
        value = given[name] if given is not None and name in given else _form_value(spec["default"])
        is_list = str(spec.get("type", "")).endswith("_list")
        fields.append(
            {
                "name": name,
                "label": name.replace("_", " ").capitalize(),
                "description": spec.get("description") or "",
                "value": value,
                "choices": [str(c) for c in spec["choices"]] if spec.get("choices") else None,
                "chosen": {v.strip() for v in value.split(",")} if is_list else {value},
                "multiple": is_list,
            }
        )
    return fields


@router.get(f"{PREFIX}/agreements/{{agreement_id}}/reports", response_class=HTMLResponse)
def reports(agreement_id: str, request: Request, gateway: GatewayDep, session: Analyst) -> Response:
    agreement = gateway.agreement(agreement_id)
    return render(
        request,
        "reports.html",
        {
            "title": "Reports",
            "session": session,
            "agreement": agreement,
            "reports": list_reports(agreement, party=_party(session.principal)),
        },
    )


@router.get(f"{PREFIX}/agreements/{{agreement_id}}/reports/{{report}}", response_class=HTMLResponse)
def report_form(
    agreement_id: str, report: str, request: Request, gateway: GatewayDep, session: Analyst
) -> Response:
    agreement = gateway.agreement(agreement_id)
    chosen = _report(agreement, _party(session.principal), report)
    return render(
        request,
        "report.html",
        {
            "title": f"Report: {chosen['name']}",
            "session": session,
            "agreement": agreement,
            "report": chosen,
            "fields": _fields(chosen, None),
            "error": None,
            "preview": None,
            "result": None,
        },
    )


def _summaries(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A table's summary figures (such as a weighted kappa per group) as rows to show."""
    shown = []
    for name, value in summary.items():
        items = value if isinstance(value, list) else [{"group": {}, "value": value}]
        rows = []
        for item in items:
            entry = item if isinstance(item, Mapping) else {"group": {}, "value": item}
            ci = entry.get("ci95")
            interval = f" (95% interval {STATISTIC.interval(ci[0], ci[1])})" if ci else ""
            rows.append(
                {
                    "group": group_label(entry) if entry.get("group") else "all",
                    "value": (STATISTIC.text(entry.get("value")) or "not shown") + interval,
                    "note": str(entry.get("note") or ""),
                }
            )
        shown.append({"name": name.replace("_", " "), "rows": rows})
    return shown


def _result_tables(result: Mapping[str, Any], registry: Any) -> list[dict[str, Any]]:
    tables = []
    formats = formatting.for_report_tables(result, registry)
    for table, fmt in zip(result["tables"], formats, strict=True):
        if "skipped" in table:  # nothing spent on it: the page says why
            tables.append({"title": table["title"], "skipped": table["skipped"]})
            continue
        release = table["release"]
        cells = release.get("cells") or []
        tables.append(
            {
                "title": table["title"],
                "release": release,
                "dimensions": dimensions(cells),
                "rows": cell_rows(release, fmt),
                "summaries": _summaries(table.get("summary") or {}),
                "suppressed": sum(1 for c in cells if c.get("suppressed")),
            }
        )
    return tables


@router.post(
    f"{PREFIX}/agreements/{{agreement_id}}/reports/{{report}}", response_class=HTMLResponse
)
async def report_run(
    agreement_id: str, report: str, request: Request, gateway: GatewayDep, session: Analyst
) -> Response:
    principal = session.principal
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    await require_genuine_form(request, gateway, session, sent if isinstance(sent, str) else None)
    agreement = gateway.agreement(agreement_id)
    chosen = _report(agreement, _party(principal), report)
    given: dict[str, str] = {}
    for name in chosen["parameters"]:
        values = [v.strip() for v in form.getlist(name) if isinstance(v, str) and v.strip()]
        if values:
            given[name] = ", ".join(values)
    dry_run = form.get("action") != "run"
    context: dict[str, Any] = {
        "title": f"Report: {chosen['name']}",
        "session": session,
        "agreement": agreement,
        "report": chosen,
        "fields": _fields(chosen, given),
        "error": None,
        "preview": None,
        "result": None,
    }
    try:
        outcome = await run_in_threadpool(
            run_report,
            gateway,
            agreement_id=agreement_id,
            party=_party(principal),
            report=report,
            parameters=given,
            actor=principal.actor,
            dry_run=dry_run,
        )
    except GatewayError as error:
        context["error"] = error.message
        return render(request, "report.html", context, status=error.status)
    if dry_run:
        context["preview"] = outcome
        context["formats"] = formatting.for_report_tables(outcome, gateway.registry)
    else:
        context["result"] = outcome
        context["tables"] = _result_tables(outcome, gateway.registry)
        context["charts"] = report_charts(outcome, gateway.registry)
        context["xlsx_link"] = _xlsx_link(agreement_id, report, outcome)
        context["zip_link"] = _zip_link(context["xlsx_link"])
    return render(request, "report.html", context)


def _xlsx_link(agreement_id: str, report: str, result: Mapping[str, Any]) -> str:
    """The whole report as Excel: its released tables by position and release id (the
    download reads them back from storage, each checked as the CSV download is)."""
    tables = [
        ("t", f"{number}.{table['release']['release_id']}")
        for number, table in enumerate(result["tables"])
        if "release" in table
    ]
    tables += [
        ("p", f"{name}={', '.join(map(str, value)) if isinstance(value, list) else value}")
        for name, value in result["parameters"].items()
    ]
    return (
        f"{PREFIX}/agreements/{quote(agreement_id)}/reports/{quote(report)}/report.xlsx?"
        + urlencode(tables)
    )


def _zip_link(xlsx_link: str) -> str:
    """The same tables as one zip of CSV files."""
    path, _, query = xlsx_link.partition("?")
    return path.removesuffix(".xlsx") + ".zip?" + query


def _received_release(
    gateway: Gateway, request: Request, principal: Principal, agreement_id: str, release_id: str
) -> dict[str, Any]:
    """A stored release of ``agreement_id`` that the session's party receives (its body);
    a refusal, audited, for any other."""
    with gateway.sessions() as db:
        stored = db.get(Release, release_id[:64])
    if stored is None:
        raise NotFound("no such release")
    body: dict[str, Any] = json.loads(stored.body) if stored.status == "released" else {}
    agreement = gateway.agreement(agreement_id)
    gateway.require_active(agreement, refused="releases")
    # A partnership release goes to every recipient allowed its fields (its recipients),
    # while the party still receives releases under the agreement as it stands.
    receives = principal.party in body.get("recipients", [stored.party])
    receives = receives and principal.party in agreement.releases
    if stored.agreement_id != agreement_id or not receives:
        deny(
            gateway,
            request,
            principal,
            "this release was not made for this token's party and agreement",
            agreement_id=agreement_id,
        )
    if stored.status != "released":
        raise NotFound("this release has no table: it failed or is still being made")
    return body


@router.get(f"{PREFIX}/agreements/{{agreement_id}}/releases/{{release_id}}/cells.csv")
def release_csv(
    agreement_id: str, release_id: str, request: Request, gateway: GatewayDep, session: Analyst
) -> Response:
    body = _received_release(gateway, request, session.principal, agreement_id, release_id)
    return Response(
        cells_csv(body, gateway.registry),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="release-{body["release_id"]}.csv"'},
    )


XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


TablesQuery = Annotated[list[str], Query(max_length=8)]
ParametersQuery = Annotated[list[str] | None, Query(max_length=16)]


def _stored_report(
    gateway: Gateway,
    request: Request,
    principal: Principal,
    agreement_id: str,
    report: str,
    t: list[str],
    p: list[str] | None,
) -> dict[str, Any]:
    """A report run as the report page shows it, read back from its stored releases
    (``t``: "<position>.<release id>" of each table, as the page links them; ``p``: its
    parameters, shown), each release checked as the CSV download checks it."""
    agreement = gateway.agreement(agreement_id)
    chosen = _report(agreement, _party(principal), report)
    titles = list(chosen["tables"])
    tables = []
    for item in t:
        position, _, release_id = item.partition(".")
        if not position.isdigit() or int(position) >= len(titles):
            raise NotFound(f"report {report!r} has no table {position!r}")
        body = _received_release(gateway, request, principal, agreement_id, release_id)
        tables.append({"title": titles[int(position)], "release": body})
    return {
        "report": chosen["name"],
        "description": chosen["description"],
        "agreement": {"id": agreement.id, "version": agreement.version},
        "parameters": dict(item.partition("=")[::2] for item in p or []),
        "tables": tables,
    }


@router.get(f"{PREFIX}/agreements/{{agreement_id}}/reports/{{report}}/report.xlsx")
def report_xlsx(
    agreement_id: str,
    report: str,
    request: Request,
    gateway: GatewayDep,
    session: Analyst,
    t: TablesQuery,
    p: ParametersQuery = None,
) -> Response:
    """A report's released tables as one Excel workbook, a sheet per table."""
    result = _stored_report(gateway, request, session.principal, agreement_id, report, t, p)
    return Response(
        export.report_xlsx(result, gateway.registry),
        media_type=XLSX,
        headers={"Content-Disposition": f'attachment; filename="{_file_name(report)}.xlsx"'},
    )


@router.get(f"{PREFIX}/agreements/{{agreement_id}}/reports/{{report}}/report.zip")
def report_zip(
    agreement_id: str,
    report: str,
    request: Request,
    gateway: GatewayDep,
    session: Analyst,
    t: TablesQuery,
    p: ParametersQuery = None,
) -> Response:
    """A report's released tables as a zip of CSV files, one per table, each with a
    ``table`` column (the same files as ``gateway release --report --csv --out X.zip``)."""
    result = _stored_report(gateway, request, session.principal, agreement_id, report, t, p)
    return Response(
        export.report_zip(result, gateway.registry),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="{_file_name(report)}.zip"'},
    )


def _file_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)[:60] or "report"


# --- budgets ------------------------------------------------------------------------------


@router.get(f"{PREFIX}/agreements/{{agreement_id}}/budget", response_class=HTMLResponse)
def budget(
    agreement_id: str, request: Request, gateway: GatewayDep, session: AnalystOrReviewer
) -> Response:
    principal = session.principal
    agreement = gateway.agreement(agreement_id)
    with gateway.sessions() as db:
        report = budget_report(db, agreement, now=gateway.clock())
        history = budget_history(db, agreement_id)
    if principal.role == "analyst":  # its own party's share and history only, as in the API
        report["parties"] = {p: s for p, s in report["parties"].items() if p == principal.party}
        history = [e for e in history if e["party"] == principal.party]
    # The viewer's spending limit, drawn when the agreement declares one below the pool
    # (not with a period budget: the limit is then per school year, the lines lifelong).
    limited = principal.party if principal.party in agreement.budget_limits else None
    if report["period"] is not None:
        limited = None
    share = float(from_epsilon_units(party_limit(agreement, limited)[0])) if limited else None
    chart = budget_chart(
        f"Privacy budget of {agreement.id} over time",
        history,
        total=report["total"],
        share=share,
        now=datetime.now(UTC),
    )
    return render(
        request,
        "budget.html",
        {
            "title": "Privacy budget",
            "session": session,
            "agreement": agreement,
            "report": report,
            "history": history,
            "chart": chart,
        },
    )


# --- the audit log ------------------------------------------------------------------------


#: Details worth a glance, in this order, for an event's one-line summary.
_SUMMARY_KEYS = ("status", "reason", "dataset", "report", "release_id", "epsilon", "route", "id")


def _summary(details: Mapping[str, Any]) -> str:
    """An event's details in one short line (the full details are a click away)."""
    keys = [*_SUMMARY_KEYS, *sorted(set(details) - set(_SUMMARY_KEYS))]
    parts = [
        f"{key}: {details[key]}"
        for key in keys
        if isinstance(details.get(key), str | int | float) and details.get(key) != ""
    ]
    line = "; ".join(parts[:3])
    return line if len(line) <= 140 else line[:139] + "…"


def _day(text: str, name: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise SchemaError(f"{name}: expected a date such as 2026-09-01") from None


@router.get(f"{PREFIX}/audit", response_class=HTMLResponse)
def audit_log(
    request: Request,
    gateway: GatewayDep,
    session: Reviewer,
    agreement: str = "",
    kind: str = "",
    party: str = "",
    since: str = "",
    until: str = "",
    page: int = Query(default=1, ge=1, le=100_000),
) -> Response:
    principal = session.principal
    if kind and kind not in audit.EVENT_KINDS:
        raise SchemaError(f"unknown event kind {kind!r}")
    first, last = _day(since, "from"), _day(until, "to")
    statement = audit.query_events(
        agreement_id=agreement or None,
        within=principal.agreements,
        kind=kind or None,
        party=party or None,
        since=datetime.combine(first, time(0), tzinfo=UTC) if first else None,
        # "To" is a whole day, included: events before the next midnight (UTC).
        until=datetime.combine(last + timedelta(days=1), time(0), tzinfo=UTC) if last else None,
    )
    with gateway.sessions() as db:
        total = db.scalar(select(func.count()).select_from(statement.subquery())) or 0
        offset = (page - 1) * PAGE_SIZE
        views = [audit.event_view(e) for e in db.scalars(statement.offset(offset).limit(PAGE_SIZE))]
    events = [{**view, "summary": _summary(view.get("details") or {})} for view in views]
    filters = {"agreement": agreement, "kind": kind, "party": party, "since": since, "until": until}
    kept = {k: v for k, v in filters.items() if v}

    def link(to_page: int) -> str:
        return f"{PREFIX}/audit?" + urlencode({**kept, "page": to_page})

    covered = _covered(gateway, principal)
    return render(
        request,
        "audit.html",
        {
            "title": "Audit log",
            "session": session,
            "events": events,
            "filters": filters,
            "agreements": covered,
            "parties": sorted({p.id for a in covered for p in a.parties}),
            "kinds": sorted(audit.EVENT_KINDS),
            "total": total,
            "first_shown": offset + 1 if events else 0,
            "last_shown": offset + len(events),
            "previous": link(page - 1) if page > 1 else None,
            "next": link(page + 1) if offset + len(events) < total else None,
        },
    )


@router.post(f"{PREFIX}/audit/verify", response_class=HTMLResponse)
async def verify(request: Request, gateway: GatewayDep, session: Reviewer) -> Response:
    form = await request.form()
    sent = form.get(CSRF_FIELD)
    await require_genuine_form(request, gateway, session, sent if isinstance(sent, str) else None)

    def run() -> dict[str, Any]:
        with gateway.sessions() as db:
            result = audit.verify_chain(db)
            result.problems += audit.verify_checkpoints(db, gateway.signing_key)
        return result.to_dict()

    return render(
        request,
        "verification.html",
        {
            "title": "Audit log verification",
            "session": session,
            "result": await run_in_threadpool(run),
        },
    )


# --- the daily work: histories, data dictionaries, templates ---------------------------------

UploaderOrReviewer = Annotated[SignedIn, Depends(PageAllow("uploader", "reviewer"))]


def _own_party(principal: Principal) -> str | None:
    """The party whose rows a history shows: the token's own, except for a reviewer,
    who follows the whole agreement."""
    return None if principal.role == "reviewer" else _party(principal)


@router.get(f"{PREFIX}/agreements/{{agreement_id}}/uploads", response_class=HTMLResponse)
def upload_history_page(
    agreement_id: str, request: Request, gateway: GatewayDep, session: UploaderOrReviewer
) -> Response:
    """Past uploads of the agreement: an uploader's own party's, or all for a reviewer."""
    agreement = gateway.agreement(agreement_id)
    party = _own_party(session.principal)
    with gateway.reads() as db:
        entries = history.upload_history(db, agreement_id, party=party)
    return render(
        request,
        "uploads.html",
        {
            "title": f"Uploads: {agreement.title}",
            "session": session,
            "agreement": agreement,
            "party": party,
            "entries": entries,
            "limit": history.HISTORY_LIMIT,
        },
    )


@router.get(f"{PREFIX}/agreements/{{agreement_id}}/releases", response_class=HTMLResponse)
def release_history_page(
    agreement_id: str, request: Request, gateway: GatewayDep, session: AnalystOrReviewer
) -> Response:
    """Past releases of the agreement: those an analyst's party receives, or all for a
    reviewer (who reads them here, and downloads none)."""
    agreement = gateway.agreement(agreement_id)
    party = _own_party(session.principal)
    with gateway.reads() as db:
        entries = history.release_history(db, agreement_id, recipient=party)
    if party is not None and party not in agreement.releases:
        entries = []  # no longer a recipient under the agreement as it stands
    rows = []
    for entry in entries:
        measure = entry.query.get("measure") or {}
        what = str(measure.get("kind", "?"))
        if measure.get("field"):
            what += f" of {measure['field']}"
        by = ", ".join(str(g) for g in entry.query.get("group_by") or []) or "all teachers"
        rows.append(
            {
                "entry": entry,
                "what": what,
                "by": by,
                "datasets": ", ".join(entry.query.get("datasets") or []),
                "epsilon": format_number(float(from_epsilon_units(entry.epsilon_units))),
                "download": party is not None and entry.status == "released",
            }
        )
    return render(
        request,
        "releases.html",
        {
            "title": f"Releases: {agreement.title}",
            "session": session,
            "agreement": agreement,
            "party": party,
            "rows": rows,
            "limit": history.HISTORY_LIMIT,
        },
    )


def _dataset_entries(
    gateway: Gateway, agreement: Agreement, dataset_name: str
) -> tuple[Any, list[dictionary.DictionaryEntry]]:
    dataset = agreement.dataset(dataset_name)
    schema = gateway.registry.schema_for(dataset)
    return dataset, dictionary.dictionary(agreement, dataset, schema)


@router.get(
    f"{PREFIX}/agreements/{{agreement_id}}/datasets/{{dataset}}", response_class=HTMLResponse
)
def data_dictionary(
    agreement_id: str, dataset: str, request: Request, gateway: GatewayDep, session: AnyRole
) -> Response:
    """A dataset's columns under the agreement: headers, meaning, type, allowed values,
    and what is kept or dropped and why (from the policies)."""
    agreement = gateway.agreement(agreement_id)
    found, entries = _dataset_entries(gateway, agreement, dataset)
    schema = gateway.registry.schema_for(found)
    return render(
        request,
        "dictionary.html",
        {
            "title": f"Data dictionary: {found.name}",
            "session": session,
            "agreement": agreement,
            "dataset": found,
            "schema": schema,
            "entries": entries,
            "provider": agreement.party(found.provided_by).name,
            "templates": session.principal.role == "uploader"
            and session.principal.party == found.provided_by,
        },
    )


def _template_entries(
    gateway: Gateway, request: Request, session: SignedIn, agreement_id: str, dataset: str
) -> tuple[Agreement, Any, list[dictionary.DictionaryEntry]]:
    """The dataset's entries, for the party that provides it (others are refused, audited,
    as an upload of it would be)."""
    agreement = gateway.agreement(agreement_id)
    require_provider(gateway, request, session.principal, agreement_id, dataset)
    found, entries = _dataset_entries(gateway, agreement, dataset)
    return agreement, found, entries


@router.get(f"{PREFIX}/agreements/{{agreement_id}}/datasets/{{dataset}}/template.csv")
def template_csv(
    agreement_id: str, dataset: str, request: Request, gateway: GatewayDep, session: Uploader
) -> Response:
    _, found, entries = _template_entries(gateway, request, session, agreement_id, dataset)
    return Response(
        dictionary.template_csv(entries),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{_file_name(found.name)}-template.csv"'
        },
    )


@router.get(f"{PREFIX}/agreements/{{agreement_id}}/datasets/{{dataset}}/template.xlsx")
def template_xlsx(
    agreement_id: str, dataset: str, request: Request, gateway: GatewayDep, session: Uploader
) -> Response:
    agreement, found, entries = _template_entries(gateway, request, session, agreement_id, dataset)
    title = f"{found.name}, for {agreement.title} ({agreement.id})"
    return Response(
        dictionary.template_xlsx(title, entries),
        media_type=XLSX,
        headers={
            "Content-Disposition": f'attachment; filename="{_file_name(found.name)}-template.xlsx"'
        },
    )
