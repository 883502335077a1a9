"""``gateway extracts``: record-level extracts on the command line (docs/extracts.md).

Asking, approving, refusing and downloading are what a party's people do, so these
commands act as a credential, never as the operator: the token is read from the file
``--token-file`` names, or from the ``GATEWAY_TOKEN`` environment variable (never from
the command line, where other users of the host could read it), and checked exactly
as the API checks a bearer token. Listing, showing, ``identify`` and ``certify`` also
run as the operator on the host, without a token.

Like the rest of :mod:`gateway.cli`, nothing heavy is imported until a command runs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from gateway.cli import GatewayGroup, _emit, _open, json_option, main

if TYPE_CHECKING:
    from gateway.context import Gateway
    from gateway.credentials import Principal

TOKEN_VARIABLE = "GATEWAY_TOKEN"  # noqa: S105 (a variable name, not a secret)


def _token_option(function: Any) -> Any:
    return click.option(
        "--token-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help=f"File holding the bearer token to act as (default: ${TOKEN_VARIABLE}).",
    )(function)


def _token(token_file: Path | None) -> str | None:
    if token_file is not None:
        return token_file.read_text(encoding="utf-8").strip() or None
    return os.environ.get(TOKEN_VARIABLE, "").strip() or None


def _principal(gw: Gateway, token_file: Path | None, *, required: bool) -> Principal | None:
    """The credential the command acts as; None (the operator) when none was given and
    the command allows that."""
    from gateway import credentials
    from gateway.errors import Unauthenticated

    token = _token(token_file)
    if token is None:
        if required:
            raise Unauthenticated(
                f"this command acts as a party's credential: put its token in a file for "
                f"--token-file, or in ${TOKEN_VARIABLE}"
            )
        return None
    with gw.reads() as session:
        return credentials.authenticate(session, gw.master_key, token)


@click.group(cls=GatewayGroup)
def extracts() -> None:
    """Record-level de-identified extracts: request, approve, download, trace, certify."""


def _print_request(r: dict[str, Any]) -> None:
    click.echo(f"extract request {r['id']}: {r['extract']} for {r['recipient']} ({r['status']})")
    click.echo(f"  agreement:    {r['agreement']}")
    click.echo(f"  requested:    {r['requested_at']} by credential {r['requested_by']}")
    for approval in r.get("approvals") or []:
        click.echo(f"  approved:     {approval['at']} by credential {approval['credential']}")
    if r["status"] == "refused":
        click.echo(f"  refused:      {r['decided_at']} by credential {r['decided_by']}")
        if r["reason"]:
            click.echo(f"  reason:       {r['reason']}")
    if r["expires_at"]:
        click.echo(f"  download by:  {r['expires_at']}")
    if r["downloaded_at"]:
        click.echo(f"  downloaded:   {r['downloaded_at']}")
    summary = r.get("summary") or {}
    if summary:
        for line in summary_lines(summary):
            click.echo(f"  {line}")


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """What the approver sees, as lines: columns, generalisation, loss, risk, sample."""
    lines = [f"columns:      {', '.join(summary.get('columns', []))}"]
    for level in summary.get("generalisation", []):
        shown = (
            "as recorded" if not level.get("level") else f"generalised to {level.get('level_name')}"
        )
        lines.append(
            f"{str(level.get('column')) + ':':<13} {shown} (level {level.get('level')} of "
            f"{level.get('levels')})"
        )
    if summary.get("rows_released") is not None:
        lines.append(
            f"rows:         {summary.get('rows_released')} released of "
            f"{summary.get('rows_before')}; suppressed {_share(summary.get('suppressed_share'))}"
        )
    for when in ("before", "after"):
        figures = summary.get(f"risk_{when}")
        if figures:
            lines.append(
                f"risk {when + ':':<8}unique on the quasi-identifiers "
                f"{_share(figures.get('unique_share'))}, expected re-identification rate "
                f"(prosecutor) {_share(figures.get('prosecutor_rate'))}, highest "
                f"{_share(figures.get('max_risk'))}"
            )
    for name in ("k", "l"):
        if summary.get(name) is not None:
            lines.append(
                f"{name}:            asked {summary.get(name)}, achieved "
                f"{summary.get(name + '_achieved')}"
            )
    sample = summary.get("sample") or []
    if sample:
        lines.append(f"sample ({len(sample)} rows, no IDs):")
        columns = list(sample[0])
        lines.append("  " + " | ".join(columns))
        for row in sample:
            lines.append("  " + " | ".join(str(row.get(c, "")) for c in columns))
    return lines


def _share(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.1%}"


@extracts.command("request")
@click.option("--agreement", "agreement_id", required=True, help="Agreement id.")
@click.option("--extract", "extract", required=True, help="The agreement's extract name.")
@_token_option
@json_option
@click.pass_context
def extracts_request(
    ctx: click.Context, agreement_id: str, extract: str, token_file: Path | None, as_json: bool
) -> None:
    """Ask for one of the agreement's declared extracts, as a recipient's analyst; it is
    built, generalised and checked now, and waits for the providing party's approval."""
    from gateway.extracts.approval import request_extract

    with _open(ctx) as gw:
        principal = _principal(gw, token_file, required=True)
        assert principal is not None
        view = request_extract(gw, agreement_id=agreement_id, extract=extract, principal=principal)
    _emit(view.to_dict(), as_json, _print_request)


@extracts.command("list")
@click.option("--agreement", "agreement_id", default=None, help="Only this agreement's.")
@click.option("--status", default=None, help="Only requests in this status (pending, ...).")
@click.option(
    "--certificates",
    is_flag=True,
    help="List the agreement's certificates of destruction instead (needs --agreement).",
)
@_token_option
@json_option
@click.pass_context
def extracts_list(
    ctx: click.Context,
    agreement_id: str | None,
    status: str | None,
    certificates: bool,
    token_file: Path | None,
    as_json: bool,
) -> None:
    """Extract requests, newest first: all of them for the operator; with a token, those
    its party asked for, those its party approves, or all of its agreements' (reviewer)."""
    from gateway.extracts import approval

    if certificates and agreement_id is None:
        raise click.UsageError("--certificates goes with --agreement")
    with _open(ctx) as gw:
        principal = _principal(gw, token_file, required=False)
        if certificates:
            assert agreement_id is not None
            if principal is not None and principal.role != "reviewer":
                from gateway.errors import AccessDenied

                raise AccessDenied("certificates of destruction are listed to reviewers")
            if principal is not None and not principal.covers(agreement_id):
                from gateway.errors import AccessDenied

                raise AccessDenied(f"this credential does not cover agreement {agreement_id!r}")
            listed = [
                c.to_dict() for c in approval.list_certificates(gw, agreement_id=agreement_id)
            ]
            handed = [
                v.to_dict(with_sample=False)
                for v in approval.handed_out(gw, agreement_id=agreement_id)
            ]
            _emit(
                {"agreement": agreement_id, "extracts_handed_out": handed, "certificates": listed},
                as_json,
                _print_certificates,
            )
            return
        views = approval.list_requests(
            gw, agreement_id=agreement_id, principal=principal, status=status
        )
    rows = [v.to_dict(with_sample=False) for v in views]

    def human(items: list[dict[str, Any]]) -> None:
        if not items:
            click.echo("no extract requests")
        for r in items:
            click.echo(
                f"{r['id']}  {r['status']:<10} {r['agreement']}  {r['extract']}  for "
                f"{r['recipient']}  asked {r['requested_at']}"
            )

    _emit(rows, as_json, human)


def _print_certificates(data: dict[str, Any]) -> None:
    click.echo(f"extracts handed out under {data['agreement']}:")
    for r in data["extracts_handed_out"]:
        click.echo(
            f"  {r['id']}  {r['extract']} to {r['recipient']}, downloaded {r['downloaded_at']}"
        )
    if not data["extracts_handed_out"]:
        click.echo("  none")
    click.echo("certificates of destruction:")
    for c in data["certificates"]:
        by = c["uploaded_by"] or "the operator"
        click.echo(
            f"  {c['id']}  {c['party']}  {c['file_name']} ({c['size']} bytes) sha256 "
            f"{c['sha256']}, uploaded {c['uploaded_at']} by {by} ({c['uploaded_by_role']})"
        )
    if not data["certificates"]:
        click.echo("  none yet")


@extracts.command("show")
@click.argument("request_id")
@_token_option
@json_option
@click.pass_context
def extracts_show(
    ctx: click.Context, request_id: str, token_file: Path | None, as_json: bool
) -> None:
    """One request: exactly what the approver sees (columns, generalisation, risk
    figures, a sample of generalised rows with no IDs) and where it stands."""
    from gateway.extracts.approval import show_request

    with _open(ctx) as gw:
        principal = _principal(gw, token_file, required=False)
        view = show_request(gw, request_id=request_id, principal=principal)
    _emit(view.to_dict(), as_json, _print_request)


def _decide(ctx: click.Context, request_id: str, token_file: Path | None, *, approve: bool,
            reason: str | None, as_json: bool) -> None:  # fmt: skip
    from gateway.extracts.approval import decide

    with _open(ctx) as gw:
        principal = _principal(gw, token_file, required=True)
        assert principal is not None
        view = decide(
            gw, request_id=request_id, principal=principal, approve=approve, reason=reason
        )
    _emit(view.to_dict(), as_json, _print_request)


@extracts.command("approve")
@click.argument("request_id")
@_token_option
@json_option
@click.pass_context
def extracts_approve(
    ctx: click.Context, request_id: str, token_file: Path | None, as_json: bool
) -> None:
    """Approve a pending request, as an approver of the providing party (never the
    credential that asked). Read it first with `gateway extracts show`."""
    _decide(ctx, request_id, token_file, approve=True, reason=None, as_json=as_json)


@extracts.command("refuse")
@click.argument("request_id")
@click.option("--reason", default=None, help="Why (recorded in the audit log; no names).")
@_token_option
@json_option
@click.pass_context
def extracts_refuse(
    ctx: click.Context, request_id: str, reason: str | None, token_file: Path | None, as_json: bool
) -> None:
    """Refuse a pending request, as an approver of the providing party; its rows are erased."""
    _decide(ctx, request_id, token_file, approve=False, reason=reason, as_json=as_json)


@extracts.command("download")
@click.argument("request_id")
@click.option(
    "--format",
    "file_format",
    type=click.Choice(["parquet", "csv"]),
    default="parquet",
    show_default=True,
    help="parquet (the record in its metadata) or csv (a zip: the CSV and its record).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="File or folder to write (default: the current folder, under the file's name).",
)
@_token_option
@json_option
@click.pass_context
def extracts_download(
    ctx: click.Context,
    request_id: str,
    file_format: str,
    out: Path | None,
    token_file: Path | None,
    as_json: bool,
) -> None:
    """Download an approved extract, once, as its recipient's analyst, before its
    download window ends."""
    from gateway.extracts.approval import download_extract

    with _open(ctx) as gw:
        principal = _principal(gw, token_file, required=True)
        assert principal is not None
        downloaded = download_extract(
            gw, request_id=request_id, principal=principal, file_format=file_format
        )
    target = out if out is not None else Path(downloaded.file_name)
    if target.is_dir():
        target = target / downloaded.file_name
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(downloaded.data)
    result = {"file": str(target), "bytes": len(downloaded.data), **downloaded.metadata}

    def human(r: dict[str, Any]) -> None:
        click.echo(f"wrote {r['file']} ({r['bytes']} bytes): extract {r['extract']} for "
                   f"{r['recipient']} under {r['agreement']['id']}")  # fmt: skip
        click.echo(f"destroy it, and every copy, by {r['destroy_by']} (the agreement's end)")

    _emit(result, as_json, human)


@extracts.command("identify")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def extracts_identify(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Name the extract a found copy came from (Parquet, CSV or the gateway's zip), by the
    fingerprint in its rows: it survives reordered columns and shuffled rows."""
    from gateway.extracts.approval import identify_file

    with _open(ctx) as gw:
        result = identify_file(gw, file.read_bytes(), file.name)

    if result["match"] is None:
        from gateway.errors import NotFound

        raise NotFound(
            f"{file.name}: its rows match none of the {result['candidates']} extracts handed out"
        )

    def human(r: dict[str, Any]) -> None:
        match = r["match"]
        if r["basis"] == "teacher_id" and len(r["tied"]) > 1:
            # No record ID verified: the teacher IDs name the recipient and agreement,
            # not which of its extracts (they share their teacher IDs).
            click.echo(
                f"{r['file']}: given to {match['recipient']} under {match['agreement']}, "
                f"by its teacher IDs (no record ID verified; score {r['score']:.2f}, "
                f"{r['rows_checked']} rows checked): one of the extract requests "
                f"{', '.join(r['tied'])}"
            )
            return
        click.echo(
            f"{r['file']}: extract request {match['id']} ({match['extract']}) given to "
            f"{match['recipient']} under {match['agreement']}, downloaded "
            f"{match['downloaded_at']} (score {r['score']:.2f}, {r['rows_checked']} rows "
            f"checked, by its {'record' if r['basis'] == 'record_id' else 'teacher'} IDs)"
        )
        if r["metadata_agrees"] is False:
            click.echo("  its metadata names another request: it was altered")

    _emit(result, as_json, human)


@extracts.command("certify")
@click.option("--agreement", "agreement_id", required=True, help="Agreement id.")
@click.option("--party", required=True, help="The recipient party whose statement it is.")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_token_option
@json_option
@click.pass_context
def extracts_certify(
    ctx: click.Context,
    agreement_id: str,
    party: str,
    file: Path,
    token_file: Path | None,
    as_json: bool,
) -> None:
    """Record a recipient's signed certificate of destruction (PDF, text...) against the
    agreement: its SHA-256 and uploader go to the audit log. With a token, as that party's
    credential; without, as the operator (a terminated agreement's tokens are revoked)."""
    import mimetypes

    from gateway import audit
    from gateway.extracts.approval import record_certificate

    with _open(ctx) as gw:
        principal = _principal(gw, token_file, required=False)
        actor = principal.actor if principal is not None else audit.Actor(role="operator")
        if principal is not None and not principal.covers(agreement_id):
            from gateway.errors import AccessDenied

            raise AccessDenied(f"this credential does not cover agreement {agreement_id!r}")
        view = record_certificate(
            gw,
            agreement_id=agreement_id,
            party=party,
            file_name=file.name,
            media_type=mimetypes.guess_type(file.name)[0] or "application/octet-stream",
            data=file.read_bytes(),
            actor=actor,
        )

    def human(c: dict[str, Any]) -> None:
        click.echo(
            f"certificate {c['id']} recorded for {c['party']} under {c['agreement']}: "
            f"{c['file_name']}, sha256 {c['sha256']}"
        )

    _emit(view.to_dict(), as_json, human)


# Registered here, not in cli.py: this module needs cli.py's helpers, and cli.py imports
# it last (a cycle the type checker follows only this way round).
main.add_command(extracts, name="extracts")
