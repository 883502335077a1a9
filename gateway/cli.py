"""The ``gateway`` command: thin adapters over the domain functions.

Every command has ``--help``; commands that print data take ``--json``. On
failure the exit status is non-zero and stderr carries a one-line reason
(``--json`` also prints the error body on stdout).

Each command imports what it uses when it runs, never at the top of this module:
``gateway --help`` and ``--version`` then cost little more than click itself, and a
command loads the database, Arrow, pandas or OpenDP only if it needs them
(tests/test_imports.py holds this).
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from gateway import __version__
from gateway.errors import AgreementInvalid, AuditChainBroken, GatewayError, SchemaError

if TYPE_CHECKING:
    from gateway.config import Settings
    from gateway.context import Gateway

F = TypeVar("F", bound=Callable[..., Any])


def _emit(data: Any, as_json: bool, human: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
    else:
        human(data)


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    # The object dict is shared by the whole command chain, so the group's
    # error handler knows whether to print the JSON error body too.
    ctx.ensure_object(dict)["json"] = value
    return value


def json_option(function: F) -> F:
    return click.option(
        "--json",
        "as_json",
        is_flag=True,
        callback=_remember_json,
        help="Print machine-readable JSON.",
    )(function)


class GatewayGroup(click.Group):
    """Maps :class:`GatewayError` to a one-line reason and its exit code."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The process's entry point (the ``gateway`` script; tests call ``main`` instead).

        When the command is done the process ends, and the interpreter's shutdown would
        run full garbage collections over every object the libraries made at import: a
        fifth of a release's CPU (issue 14). Freezing them skips those collections; every
        file and connection a command opened is closed by then.
        """
        try:
            return super().__call__(*args, **kwargs)
        finally:
            gc.freeze()

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GatewayError as error:
            if ctx.ensure_object(dict).get("json"):
                click.echo(json.dumps(error.to_dict(), indent=2))
            click.echo(f"gateway: error: {error.message}", err=True)
            ctx.exit(error.exit_code)


class _ChoiceOf(click.Choice[str]):
    """A choice among names kept by a domain module, read when click first needs them
    (the command's help, or parsing the option): defining the command imports nothing."""

    def __init__(self, names: Callable[[], Iterable[str]]) -> None:
        # Choice.__init__ would read the names now; ``choices`` is filled in on first use.
        self._names = names
        self.case_sensitive = True

    def __getattr__(self, name: str) -> Any:
        if name != "choices":
            raise AttributeError(name)
        self.choices = tuple(sorted(self._names()))
        return self.choices


def _roles() -> Iterable[str]:
    from gateway.credentials import ROLES

    return ROLES


def _event_kinds() -> Iterable[str]:
    from gateway.audit import EVENT_KINDS

    return EVENT_KINDS


def _settings(ctx: click.Context) -> Settings:
    from gateway.config import load_settings

    settings: Settings = ctx.ensure_object(dict).setdefault("settings", load_settings())
    return settings


def _open(ctx: click.Context, *, checkpoint: bool = True) -> Gateway:
    """The gateway opened with the command's settings (:meth:`Gateway.open`)."""
    from gateway.context import Gateway

    return Gateway.open(_settings(ctx), checkpoint=checkpoint)


@click.group(cls=GatewayGroup)
@click.version_option(__version__, prog_name="gateway")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Teacher-data sharing gateway: a data-sharing agreement executed as code.

    Settings come from GATEWAY_* environment variables or a .env file
    (see docs/configuration.md).
    """
    ctx.ensure_object(dict)


# --- init -----------------------------------------------------------------


@main.command()
@json_option
@click.pass_context
def init(ctx: click.Context, as_json: bool) -> None:
    """Create the data folder, the database (migrated to the newest schema) and,
    if absent, the master key; load the agreements.

    In a folder with no agreements/ and policies/ (and neither setting given), the
    example agreements and policies are copied there first.
    """
    from gateway.context import initialise, provide_agreements

    settings = _settings(ctx)
    copied = provide_agreements(settings)
    result = {**initialise(settings), "examples_copied": copied}

    def human(r: dict[str, Any]) -> None:
        if r["examples_copied"]:
            click.echo(
                f"copied the example agreements to {r['examples_copied']['agreements']}/ and "
                f"their schemas and profiles to {r['examples_copied']['policies']}/ "
                "(edit them for your partnership: docs/agreements.md)"
            )
        click.echo(f"data folder:  {r['data_dir']}")
        click.echo(f"database:     {r['database']}")
        state = "created" if r["master_key_created"] else "already present"
        click.echo(f"master key:   {r['master_key_file']} ({state})")
        click.echo(
            f"signing key:  {r['signing_key_file']} (fingerprint {r['signing_key_fingerprint']})"
        )
        for agreement_id, outcome in r["agreements"].items():
            click.echo(f"agreement:    {agreement_id} ({outcome})")

    _emit(result, as_json, human)


# --- keys -----------------------------------------------------------------


@main.group(cls=GatewayGroup)
def keys_group() -> None:
    """Create and rotate keys (see keys/README.md)."""


main.add_command(keys_group, name="keys")


@keys_group.command("init")
@json_option
@click.pass_context
def keys_init(ctx: click.Context, as_json: bool) -> None:
    """Create the master key and the audit signing key (mode 0600) if they do not exist.

    With GATEWAY_KEY_BACKEND=pkcs11 both are made inside the HSM: the master key is
    written wrapped, and the signing key never leaves the token.
    """
    from gateway import keys

    store = keys.key_store(_settings(ctx))
    created = store.create_master_key()
    store.load_master_key()  # refuse an existing but unsafe key here too
    signing_created = store.create_signing_key()
    signing = store.load_signing_key()
    result = {
        "master_key_file": store.master_key_location,
        "created": created,
        "signing_key_file": store.signing_key_location,
        "signing_key_created": signing_created,
        "signing_key_fingerprint": signing.fingerprint,
    }
    _emit(
        result,
        as_json,
        lambda r: click.echo(
            f"{'created' if r['created'] else 'kept existing'} master key {r['master_key_file']}\n"
            f"{'created' if r['signing_key_created'] else 'kept existing'} signing key "
            f"{r['signing_key_file']} (fingerprint {r['signing_key_fingerprint']})"
        ),
    )


@keys_group.command("rewrap")
@json_option
@click.pass_context
def keys_rewrap(ctx: click.Context, as_json: bool) -> None:
    """Rotate the HSM's wrapping key (GATEWAY_KEY_BACKEND=pkcs11 only).

    The same master key is wrapped under a new wrapping key made in the HSM, the
    wrapped master key file is replaced, and the old wrapping key is destroyed, so
    older copies of the file can no longer be unwrapped. Pseudonyms do not change.
    """
    from gateway import audit, keys
    from gateway.errors import ConfigurationError

    store = keys.key_store(_settings(ctx))
    if not isinstance(store, keys.Pkcs11KeyStore):
        raise ConfigurationError(
            "`gateway keys rewrap` rotates an HSM's wrapping key: it needs "
            "GATEWAY_KEY_BACKEND=pkcs11 (file keys are not wrapped)"
        )
    # Opening first checks that this is the master key the database was made with.
    with _open(ctx, checkpoint=False) as gw:
        labels = store.rewrap_master_key()
        with gw.sessions() as session, session.begin():
            audit.append_event(
                session, kind="wrapping-key-rotated", actor=audit.OPERATOR, details=labels
            )
    result = {"master_key_file": store.master_key_location, **labels}
    _emit(
        result,
        as_json,
        lambda r: click.echo(
            f"wrapped the master key under {r['wrapping_key']} in {r['master_key_file']}; "
            f"destroyed {r['previous_wrapping_key']}"
        ),
    )


@keys_group.command("rotate")
@click.option("--agreement", "agreement_id", required=True, help="Agreement id.")
@json_option
@click.pass_context
def keys_rotate(ctx: click.Context, agreement_id: str, as_json: bool) -> None:
    """Give an agreement a new pseudonym key version.

    Data stored under the old version no longer links with new uploads:
    upload it again.
    """
    from gateway import audit, keys

    with _open(ctx) as gw:
        agreement = gw.agreement(agreement_id)
        gw.require_active(agreement, refused="key rotations")
        with gw.sessions() as session, session.begin():
            result = keys.rotate_key(
                session,
                agreement=agreement,
                actor=audit.OPERATOR,
            )
    shown: dict[str, Any] = {"agreement": agreement_id, **result}
    _emit(
        shown,
        as_json,
        lambda r: click.echo(
            f"agreement {r['agreement']}: key version {r['previous_version']} -> "
            f"{r['key_version']}; re-upload data stored under the old version"
        ),
    )


# --- agreements -------------------------------------------------------------


@main.group(cls=GatewayGroup)
def agreements() -> None:
    """Check, list and show data-sharing agreements."""


@agreements.command("check")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@json_option
@click.pass_context
def agreements_check(ctx: click.Context, path: Path | None, as_json: bool) -> None:
    """Validate agreement files (a folder or one file; default: GATEWAY_AGREEMENTS_DIR)
    and their references to policies/; list every problem with file, YAML path and reason."""
    from gateway.agreements import check_agreements
    from gateway.agreements.loader import Problem
    from gateway.release.reports import check_reports

    settings = _settings(ctx)
    target = path if path is not None else settings.agreements_dir
    registry, problems = check_agreements(target, settings.policies_dir)

    for agreement in sorted(registry.agreements.values(), key=lambda a: a.id):
        # Each report's tables must be queries its recipients may ask.
        problems += [
            Problem(file=agreement.source_path.name, path="reports", line=None, reason=reason)
            for reason in check_reports(agreement, registry)
        ]
    if path is None and settings.oidc_issuer:
        # The single sign-on mapping names agreements and parties: held to these.
        from gateway import oidc
        from gateway.errors import ConfigurationError

        try:
            oidc.check_mapping(settings, registry)
        except ConfigurationError as error:
            where = str(settings.oidc_mapping_file or "settings")
            reason = error.message.removeprefix(f"sign-in mapping {where}: ")
            problems.append(Problem(file=where, path="", line=None, reason=reason))
    result = {
        "ok": not problems,
        "agreements": sorted(registry.agreements),
        "problems": [
            {"file": p.file, "path": p.path, "line": p.line, "reason": p.reason} for p in problems
        ],
    }
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for problem in problems:
            click.echo(str(problem))
        if not problems:
            click.echo(f"ok: {len(registry.agreements)} agreement(s) valid")
    if problems:
        click.echo(f"gateway: error: {len(problems)} problem(s) found in {target}", err=True)
        ctx.exit(AgreementInvalid.exit_code)


@agreements.command("terminate")
@click.argument("agreement_id")
@click.option(
    "--reason",
    default="terminated by the operator",
    show_default=True,
    help="Why, for the destruction receipt and the audit log.",
)
@click.option(
    "--yes",
    is_flag=True,
    help="Do not ask for confirmation (required when not run from a terminal).",
)
@json_option
@click.pass_context
def agreements_terminate(
    ctx: click.Context, agreement_id: str, reason: str, yes: bool, as_json: bool
) -> None:
    """End an agreement now: destroy its stored data and key material, write a receipt.

    It cannot be undone, so it asks first on a terminal; elsewhere it needs --yes.
    """
    import sys

    from gateway import audit

    with _open(ctx) as gw:
        gw.agreement(agreement_id)  # an unknown id fails before anything is asked
        if not yes:
            if not sys.stdin.isatty():
                click.echo(
                    "gateway: error: terminating destroys the agreement's data and keys for "
                    "good; not on a terminal, so confirm with --yes",
                    err=True,
                )
                ctx.exit(2)
            if not click.confirm(
                f"Terminate agreement {agreement_id}? Its stored data and pseudonym keys are "
                "destroyed for good",
                err=True,
            ):
                click.echo("gateway: error: not confirmed; nothing was terminated", err=True)
                ctx.exit(1)
        receipt = gw.terminate(agreement_id, actor=audit.OPERATOR, reason=reason)

    def human(r: dict[str, Any]) -> None:
        click.echo(f"agreement {r['agreement']['id']} terminated at {r['terminated_at']}")
        for what, count in r["destroyed"].items():
            click.echo(f"  destroyed {count} {what}")
        click.echo(f"  key versions destroyed: {r['key_versions_destroyed']}")
        click.echo(f"  receipt: {r['receipt_file']} (audit event {r['audit_event']})")

    _emit(receipt, as_json, human)


@agreements.command("list")
@json_option
@click.pass_context
def agreements_list(ctx: click.Context, as_json: bool) -> None:
    """List the agreements (id, parties, datasets)."""
    from gateway.agreements import load_registry
    from gateway.agreements.views import agreement_summary

    settings = _settings(ctx)
    registry = load_registry(settings.agreements_dir, settings.policies_dir)
    items = [agreement_summary(a) for _, a in sorted(registry.agreements.items())]

    def human(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            parties = ", ".join(f"{p['id']} ({p['kind']})" for p in row["parties"])
            click.echo(f"{row['id']}  v{row['version']}  {row['title']}")
            click.echo(f"    parties:  {parties}")
            click.echo(
                "    datasets: "
                + ", ".join(f"{d['name']} <- {d['provided_by']}" for d in row["datasets"])
            )

    _emit(items, as_json, human)


@agreements.command("show")
@click.argument("agreement_id")
@json_option
@click.pass_context
def agreements_show(ctx: click.Context, agreement_id: str, as_json: bool) -> None:
    """Show one agreement in full: datasets, release allowlists, disclosure, reports."""
    from gateway.agreements import load_registry
    from gateway.agreements.views import agreement_detail

    settings = _settings(ctx)
    agreement = load_registry(settings.agreements_dir, settings.policies_dir).agreement(
        agreement_id
    )
    detail = agreement_detail(agreement)

    def human(d: dict[str, Any]) -> None:
        click.echo(f"{d['id']}  version {d['version']}: {d['title']}")
        click.echo(f"in force {d['effective']} to {d['ends']}")
        click.echo(f"purpose: {' '.join(str(d['purpose']).split())}")
        click.echo("parties:")
        for p in d["parties"]:
            click.echo(f"  {p['id']} ({p['kind']}): {p['name']}")
        click.echo("datasets:")
        for ds in d["datasets"]:
            click.echo(f"  {ds['name']} (schema {ds['schema']}) provided by {ds['provided_by']}")
            click.echo(f"    stored: {', '.join(ds['stored_fields'])}")
        click.echo("releases:")
        for party, fields in d["releases"].items():
            click.echo(f"  {party}: dimensions {', '.join(fields['dimensions'])}")
            click.echo(f"  {' ' * len(party)}  measures {', '.join(fields['measures'])}")
        disclosure = d["disclosure"]
        click.echo(
            f"disclosure: profile {disclosure['name']}, minimum cell "
            f"{disclosure['min_cell_teachers']} teachers / {disclosure['min_cell_students']} "
            f"students, budget epsilon {disclosure['privacy_budget']['epsilon']}"
            + (
                f" over its life, at most {disclosure['period_budget']['epsilon']} per school year"
                if disclosure.get("period_budget")
                else ""
            )
        )
        click.echo("reports: " + (", ".join(r["name"] for r in d["reports"]) or "none yet"))

    _emit(detail, as_json, human)


# --- tokens -----------------------------------------------------------------


@main.group(cls=GatewayGroup)
def tokens() -> None:
    """Issue, list and revoke the API's bearer tokens (see docs/access.md)."""


@tokens.command("create")
@click.option(
    "--agreement",
    "agreement_ids",
    required=True,
    multiple=True,
    help="Agreement the token covers (repeat for a reviewer covering several).",
)
@click.option("--party", default=None, help="Party it acts for (optional for reviewers).")
@click.option(
    "--role",
    required=True,
    type=_ChoiceOf(_roles),
    help="uploader, analyst, reviewer, or approver (of extracts; needs --person).",
)
@click.option(
    "--expires",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Last day it is valid (UTC). Default: the agreement's end date; reviewers: none.",
)
@click.option(
    "--person",
    default=None,
    help="The person it is issued to, by the id the agreement lists (extract approvers).",
)
@json_option
@click.pass_context
def tokens_create(
    ctx: click.Context,
    agreement_ids: tuple[str, ...],
    party: str | None,
    role: str,
    expires: datetime | None,
    person: str | None,
    as_json: bool,
) -> None:
    """Make a token; it is printed once and only its keyed hash is kept."""
    from gateway import audit, credentials

    with _open(ctx) as gw, gw.sessions() as session, session.begin():
        issued = credentials.issue(
            session,
            master_key=gw.master_key,
            registry=gw.registry,
            agreement_ids=agreement_ids,
            role=role,
            party=party,
            expires=expires.date() if expires else None,
            actor=audit.OPERATOR,
            person=person,
        )

    def human(r: dict[str, Any]) -> None:
        click.echo(f"token:   {r['token']}")
        click.echo(f"id:      {r['id']}")
        click.echo(f"role:    {r['role']} for {r['party'] or '(no party)'}")
        if r["person"]:
            click.echo(f"person:  {r['person']}")
        click.echo(f"covers:  {', '.join(r['agreements'])}")
        click.echo(f"expires: {r['expires_at'] or 'never (revoke it when done)'}")
        click.echo("The token is shown only now: hand it over securely; it cannot be shown again.")

    _emit(issued.to_dict(), as_json, human)


@tokens.command("list")
@click.option("--agreement", "agreement_id", default=None, help="Only tokens covering it.")
@json_option
@click.pass_context
def tokens_list(ctx: click.Context, agreement_id: str | None, as_json: bool) -> None:
    """Every token: id, role, party, agreements, status (never the token itself)."""
    from gateway import credentials

    with _open(ctx, checkpoint=False) as gw, gw.sessions() as session:
        rows = credentials.list_credentials(session, agreement_id=agreement_id)

    def human(items: list[dict[str, Any]]) -> None:
        if not items:
            click.echo("no tokens")
        for r in items:
            click.echo(
                f"{r['id']}  {r['status']:<8} {r['role']:<9} {r['party'] or '-':<24} "
                f"{','.join(r['agreements'])}  expires {r['expires_at'] or 'never'}"
            )

    _emit(rows, as_json, human)


@tokens.command("revoke")
@click.argument("token_id")
@json_option
@click.pass_context
def tokens_revoke(ctx: click.Context, token_id: str, as_json: bool) -> None:
    """Revoke a token by its id; it is refused from the next request on."""
    from gateway import audit, credentials

    with _open(ctx) as gw, gw.sessions() as session, session.begin():
        state = credentials.revoke(
            session, registry=gw.registry, credential_id=token_id, actor=audit.OPERATOR
        )

    _emit(state, as_json, lambda r: click.echo(f"token {r['id']} revoked at {r['revoked_at']}"))


# --- upload -----------------------------------------------------------------


def _print_receipt(receipt: dict[str, Any]) -> None:
    rows = receipt["rows"]
    click.echo(f"upload {receipt['upload_id']}: {receipt['status']}")
    if receipt.get("reason"):
        click.echo(f"  reason: {receipt['reason']}")
    click.echo(
        f"  {receipt['dataset']} from {receipt['party']}: {rows['read']} row(s) read, "
        f"{rows['accepted']} accepted, {rows['rejected']} rejected"
    )
    if receipt.get("file"):
        click.echo(f"  file sha256 {receipt['file']['sha256']} ({receipt['file']['format']})")
    kept = ", ".join(c["column"] for c in receipt["columns"]["kept"])
    if kept:
        click.echo(f"  kept: {kept}")
    for dropped in receipt["columns"]["dropped"]:
        click.echo(f"  dropped: {dropped['header']!r} ({dropped['reason']})")
    if receipt.get("key_version") is not None:
        click.echo(f"  pseudonym key version {receipt['key_version']}")
    if receipt.get("unchanged"):
        click.echo(
            "  the stored rows are unchanged (data version kept): releases asked before "
            "come back stored, at no cost"
        )
    for replaced in receipt["replaced"]:
        period = f" for {replaced['period']}" if replaced["period"] is not None else ""
        click.echo(f"  replaces upload {replaced['upload_id']}{period} ({replaced['rows']} rows)")
    if receipt["problem_count"]:
        shown = len(receipt["problems"])
        click.echo(f"  {receipt['problem_count']} problem(s); the first {shown}:")
        for problem in receipt["problems"]:
            click.echo(f"    {problem['message']}")


@main.command()
@click.option("--agreement", "agreement_id", required=True, help="Agreement id.")
@click.option("--party", required=True, help="The uploading party's id.")
@click.option("--dataset", required=True, help="The agreement's dataset name.")
@click.option("--sheet", default=None, help="Excel worksheet to read (default: the first).")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@json_option
@click.pass_context
def upload(
    ctx: click.Context,
    agreement_id: str,
    party: str,
    dataset: str,
    sheet: str | None,
    file: Path,
    as_json: bool,
) -> None:
    """Validate an extract (CSV, Excel .xlsx or Parquet), pseudonymise it and store it.

    Prints the receipt. A refused file stores nothing; its problems are listed.
    """
    from gateway import audit, progress
    from gateway.ingest import UploadRefused, upload_extract

    with _open(ctx) as gw:
        try:
            with progress.upload_progress(enabled=progress.wanted(as_json=as_json)) as show:
                receipt = upload_extract(
                    gw,
                    agreement_id=agreement_id,
                    party=party,
                    dataset=dataset,
                    path=file,
                    actor=audit.Actor(role="operator", party=party),
                    sheet=sheet,
                    progress=show,
                )
        except UploadRefused as refused:
            if not as_json:
                _print_receipt(refused.receipt)
            raise
    _emit(receipt, as_json, _print_receipt)


# --- release and budget -------------------------------------------------------


def _print_release(release: dict[str, Any], fmt: Any = None) -> None:
    """A release or a preview as lines to read, its numbers in ``fmt`` (a
    :class:`~gateway.release.formatting.NumberFormat`; by default its measure's kind's)."""
    from gateway.release import formatting

    fmt = fmt or formatting.for_release(release)
    if release.get("preview"):
        click.echo(
            f"preview: epsilon {release['epsilon']}, delta {release['delta']}; "
            f"budget remaining {release['budget_remaining']} "
            f"({'fits' if release['would_fit'] else 'does NOT fit'})"
        )
        for line in formatting.accuracy_lines(release["accuracy_95"], fmt):
            click.echo(f"  {line}")
        return
    repeated = " (an identical earlier release, no budget spent)" if release.get("repeated") else ""
    click.echo(f"release {release['release_id']}{repeated}")
    for cell in release["cells"]:
        level = cell.get("level") or {}
        group = ", ".join(
            f"{k}={v}" + (f" ({level[k]})" if level.get(k, "as asked") != "as asked" else "")
            for k, v in cell["group"].items()
        )
        group = group or "(all)"
        if cell["suppressed"]:
            shown = f"suppressed ({cell['reason']})"
        elif cell.get("coded") and cell.get("value") is None:
            shown = cell["coded"]
        else:
            value, interval = formatting.cell_text(cell, fmt)
            shown = f"{value}  (95% interval {interval})" if interval else value
            if cell.get("coded"):
                shown += f"  share {cell['coded']}"
            elif cell.get("share") is not None:
                shown += f"  share {formatting.percent(cell['share'])}"
        click.echo(f"  {group}: {shown}")
    for entry in release.get("statistics") or []:
        where = ", ".join(f"{k}={v}" for k, v in entry["group"].items()) or "(all)"
        for name, stat_fmt in (
            ("weighted_kappa", formatting.STATISTIC),
            ("exact_agreement", formatting.SHARE),
        ):
            figure = entry.get(name)
            if figure is None:
                continue
            shown = "-" if figure["value"] is None else stat_fmt.text(figure["value"])
            if figure.get("ci95"):
                shown += f"  (95% interval {stat_fmt.interval(*figure['ci95'])})"
            note = f" ({figure['note']})" if figure.get("note") else ""
            click.echo(f"  {name.replace('_', ' ')} {where}: {shown}{note}")
        if "note" in entry:
            click.echo(f"  statistics {where}: {entry['note']}")
    click.echo(
        f"epsilon spent {release['epsilon_spent']}, delta spent {release['delta_spent']}, "
        f"budget remaining {release['budget_remaining']}; audit event {release['audit_event']}"
    )


@main.command()
@click.option("--agreement", "agreement_id", required=True, help="Agreement id.")
@click.option("--party", required=True, help="The recipient party's id.")
@click.option(
    "--query",
    "query_file",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="JSON file with the query (docs/releases.md).",
)
@click.option("--report", default=None, help="A named report of the agreement, instead.")
@click.option(
    "--param",
    "params",
    multiple=True,
    metavar="KEY=VALUE",
    help="A report parameter (repeatable; lists are comma-separated).",
)
@click.option("--dry-run", is_flag=True, help="Preview accuracy and cost; spend nothing.")
@click.option(
    "--csv",
    "as_csv",
    is_flag=True,
    help="One CSV row per cell: printed for a query or a one-table report; a report of "
    "several tables needs --out.",
)
@click.option(
    "--out",
    "out",
    default=None,
    type=click.Path(path_type=Path),
    help="With --csv: write one CSV file per table into this folder, or into this zip "
    "file when the name ends in .zip.",
)
@click.option(
    "--xlsx",
    "xlsx",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the tables to this Excel file, one sheet per table, suppressed and "
    "rolled-up cells marked.",
)
@json_option
@click.pass_context
def release(
    ctx: click.Context,
    agreement_id: str,
    party: str,
    query_file: Path | None,
    report: str | None,
    params: tuple[str, ...],
    dry_run: bool,
    as_csv: bool,
    out: Path | None,
    xlsx: Path | None,
    as_json: bool,
) -> None:
    """Release a differentially private aggregate (a query, or a named report) to a
    recipient party."""
    from gateway import audit, progress
    from gateway.release import export, formatting
    from gateway.release.engine import request_release
    from gateway.release.query import parse_query

    if (query_file is None) == (report is None):
        raise click.UsageError("give exactly one of --query FILE and --report NAME")
    if params and report is None:
        raise click.UsageError("--param goes with --report")
    if out is not None and not as_csv:
        raise click.UsageError("--out goes with --csv")
    if dry_run and (as_csv or xlsx is not None):
        raise click.UsageError("a --dry-run releases nothing to write: leave out --csv/--xlsx")
    if report is not None:
        files = _Files(as_csv=as_csv, out=out, xlsx=xlsx)
        _release_report(ctx, agreement_id, party, report, params, dry_run, files, as_json)
        return
    assert query_file is not None
    try:
        body = json.loads(query_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SchemaError(f"{query_file.name}: not a JSON query ({error})") from None
    query = parse_query(body)
    with (
        _open(ctx) as gw,
        progress.stage("computing the release", enabled=progress.wanted(as_json=as_json)),
    ):
        result = request_release(
            gw,
            agreement_id=agreement_id,
            party=party,
            query=query,
            actor=audit.Actor(role="operator", party=party),
            dry_run=dry_run,
        ).to_json()
        registry = gw.registry
    fmt = formatting.for_release({"query": body, "agreement": {"id": agreement_id}}, registry)
    if xlsx is not None:
        whole = {
            "report": f"release {result['release_id']}",
            "agreement": result["agreement"],
            "tables": [{"title": f"release {result['release_id']}", "release": result}],
        }
        _write_file(xlsx, export.report_xlsx(whole, registry))
    if as_csv:
        text = export.cells_csv(result, fmt=fmt)
        if out is None:
            click.echo(text, nl=False)
        else:
            _write_csv_files(out, {"release.csv": text})
        return
    _emit(result, as_json, lambda r: _print_release(r, fmt))


@dataclass(frozen=True)
class _Files:
    """What ``gateway release`` writes beside (or instead of) its printed answer."""

    as_csv: bool
    out: Path | None
    xlsx: Path | None


def _write_file(path: Path, data: bytes) -> None:
    """Write ``data`` whole or not at all (a temporary file, then renamed)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    partial.replace(path)
    click.echo(f"wrote {path}", err=True)


def _write_csv_files(out: Path, files: dict[str, str]) -> None:
    """One CSV file per table: into the zip ``out`` (a name ending in .zip) or the
    folder ``out`` (made if need be)."""
    from gateway.release.export import zip_files

    if out.suffix.lower() == ".zip":
        _write_file(out, zip_files(files))
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        _write_file(out / name, text.encode("utf-8"))


def _release_report(
    ctx: click.Context,
    agreement_id: str,
    party: str,
    report: str,
    params: tuple[str, ...],
    dry_run: bool,
    files: _Files,
    as_json: bool,
) -> None:
    from gateway import audit
    from gateway.release import export, formatting
    from gateway.release.reports import parse_param_options, run_report

    with _open(ctx) as gw:
        result = run_report(
            gw,
            agreement_id=agreement_id,
            party=party,
            report=report,
            parameters=parse_param_options(params),
            actor=audit.Actor(role="operator", party=party),
            dry_run=dry_run,
        )
        registry = gw.registry
    formats = formatting.for_report_tables(result, registry)
    if files.xlsx is not None:
        _write_file(files.xlsx, export.report_xlsx(result, registry))
    if files.as_csv:
        for table in result["tables"]:
            if "skipped" in table:
                click.echo(
                    f"not run (nothing spent): {table['title']}: {table['skipped']}", err=True
                )
        csv_files = export.report_csv_files(result, registry)
        if files.out is not None:
            _write_csv_files(files.out, csv_files)
        elif len(csv_files) == 1:
            click.echo(next(iter(csv_files.values())), nl=False)
        else:
            raise click.UsageError(
                f"report {report!r} has {len(csv_files)} tables, one CSV file each: give "
                "--out FOLDER, or --out FILE.zip"
            )
        return

    def human(r: dict[str, Any]) -> None:
        settings = ", ".join(f"{k}={v}" for k, v in r["parameters"].items())
        click.echo(f"report {r['report']}: {r['description']} ({settings})")
        for table, fmt in zip(r["tables"], formats, strict=True):
            click.echo("")
            click.echo(table["title"])
            if "skipped" in table:
                click.echo(f"  not run (nothing spent): {table['skipped']}")
                continue
            _print_release(table.get("release") or table["preview"], fmt)
        for figure in r.get("derived", []):
            click.echo("")
            click.echo(figure["title"])
            figure_fmt = formatting.for_derived(figure.get("kind", "gap"))
            for row in figure["rows"]:
                where = ", ".join(f"{k}={v}" for k, v in row["group"].items()) or "(all)"
                shown = "-" if row["value"] is None else figure_fmt.text(row["value"])
                if row.get("ci95"):
                    shown += f"  (95% interval {figure_fmt.interval(*row['ci95'])})"
                note = f" ({row['note']})" if row.get("note") else ""
                click.echo(f"  {where}: {shown}{note}")
        click.echo("")
        if r.get("preview"):
            fits = "fits" if r["would_fit"] else "does NOT fit"
            click.echo(
                f"report total: epsilon {r['epsilon']}; budget remaining "
                f"{r['budget_remaining']} ({fits})"
            )
        else:
            click.echo(
                f"report total: epsilon spent {r['epsilon_spent']}, budget remaining "
                f"{r['budget_remaining']}"
            )

    _emit(result, as_json, human)


@main.command()
@click.option("--agreement", "agreement_id", required=True, help="Agreement id.")
@click.option("--history", is_flag=True, help="Also list every reservation, oldest first.")
@json_option
@click.pass_context
def budget(ctx: click.Context, agreement_id: str, history: bool, as_json: bool) -> None:
    """Show the privacy budget: total, spent and remaining, per recipient party (and in
    the current school year, when the agreement has a period budget)."""
    from gateway.release.budget import budget_history, budget_report

    with _open(ctx) as gw, gw.sessions() as session:
        report = budget_report(session, gw.agreement(agreement_id), now=gw.clock())
        if history:
            report["history"] = budget_history(session, agreement_id)

    def human(r: dict[str, Any]) -> None:
        period = r.get("period")
        click.echo(
            f"agreement {r['agreement']}: epsilon total {r['total']}, spent {r['spent']}, "
            f"remaining {r['remaining']}" + (" (lifetime cap)" if period else "")
        )
        if period:
            click.echo(
                f"  school year {period['label']} ({period['starts']} to {period['ends']}): "
                f"epsilon total {period['total']}, spent {period['spent']}, "
                f"remaining {period['remaining']}"
            )
        for party, state in r["parties"].items():
            click.echo(
                f"  {party}: total {state['total']}, spent {state['spent']}, "
                f"remaining {state['remaining']} (delta remaining {state['delta_remaining']})"
                + (f"; spent over the agreement's life {state['lifetime_spent']}" if period else "")
            )
        for entry in r.get("history", []):
            click.echo(
                f"  {entry['at']}  {entry['party']:<24} epsilon {entry['epsilon']:<8} "
                f"(spent so far {entry['party_spent']})  release {entry['release_id']}"
            )

    _emit(report, as_json, human)


# --- audit ------------------------------------------------------------------


@main.group(cls=GatewayGroup, name="audit")
def audit_group() -> None:
    """Read and verify the tamper-evident audit log."""


@audit_group.command("list")
@click.option("--agreement", "agreement_id", help="Only events of this agreement.")
@click.option("--kind", type=_ChoiceOf(_event_kinds), help="Only this kind.")
@click.option("--party", default=None, help="Only events of actions by this party.")
@click.option("--since", type=click.DateTime(), default=None, help="Only from this time (UTC).")
@click.option("--until", type=click.DateTime(), default=None, help="Only before this time (UTC).")
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most N events.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "jsonl", "csv"]),
    default="text",
    show_default=True,
    help="jsonl or csv: an export for the reviewer's own tools.",
)
@json_option
@click.pass_context
def audit_list(
    ctx: click.Context,
    agreement_id: str | None,
    kind: str | None,
    party: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int | None,
    fmt: str,
    as_json: bool,
) -> None:
    """List audit events, oldest first, filtered; or export them as JSON Lines or CSV."""
    from gateway import audit

    with _open(ctx) as gw, gw.sessions() as session:
        statement = audit.query_events(
            agreement_id=agreement_id,
            kind=kind,
            party=party,
            since=since.replace(tzinfo=UTC) if since else None,
            until=until.replace(tzinfo=UTC) if until else None,
        )
        if limit is not None:
            statement = statement.limit(limit)
        events = [audit.event_view(e) for e in session.scalars(statement)]
    if fmt != "text" and not as_json:
        click.echo(audit.events_as_text(events, fmt), nl=False)
        return

    def human(rows: list[dict[str, Any]]) -> None:
        for e in rows:
            who = e["actor"]["party"] or e["actor"]["role"]
            agreement = (e["agreement"] or {}).get("id") or "-"
            click.echo(f"{e['seq']:>6}  {e['occurred_at']}  {e['kind']:<20} {agreement:<40} {who}")

    _emit(events, as_json, human)


@audit_group.command("export")
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="New folder for the bundle (events.jsonl, checkpoints.json, public_key.pem).",
)
@json_option
@click.pass_context
def audit_export(ctx: click.Context, out: Path, as_json: bool) -> None:
    """Sign the chain head and export the whole log as a bundle reviewers verify offline."""
    from gateway import audit

    with _open(ctx) as gw, gw.sessions() as session:
        manifest = audit.export_bundle(session, out, gw.signing_key)
    _emit(
        {**manifest, "bundle": str(out)},
        as_json,
        lambda m: click.echo(
            f"exported {m['events']} event(s) to {m['bundle']}; head {m['head_hash']}; "
            f"public key fingerprint {m['public_key_fingerprint']}"
        ),
    )


@audit_group.command("verify")
@click.option(
    "--bundle",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Verify an exported bundle offline (no database, no keys needed).",
)
@click.option(
    "--previous",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="An earlier bundle: the log must still hold its events unchanged.",
)
@click.option(
    "--anchor",
    "anchor_texts",
    multiple=True,
    metavar="FILE|EVENTS:HEAD_HASH",
    help="An anchor file `gateway audit anchor` wrote, or a count and head hash noted "
    "earlier: the log must still hold that head. Repeatable.",
)
@click.option(
    "--tsa-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="The timestamp authority's certificate (PEM): check anchors' RFC 3161 timestamps.",
)
@json_option
@click.pass_context
def audit_verify(
    ctx: click.Context,
    bundle: Path | None,
    previous: Path | None,
    anchor_texts: tuple[str, ...],
    tsa_cert: Path | None,
    as_json: bool,
) -> None:
    """Recompute every hash, link and signed checkpoint of the audit log; name each
    broken event. With --bundle, verify an export offline; with --previous or
    --anchor, also detect a log cut back or rewritten since an earlier check."""
    from gateway import audit

    anchors = [audit.parse_anchor(text) for text in anchor_texts]
    if previous is not None:
        anchors.append(audit.Anchor.of_bundle(previous))
    if bundle is not None:
        result = audit.verify_bundle(bundle, anchors=anchors)
    else:
        with _open(ctx, checkpoint=False) as gw, gw.sessions() as session:
            result = audit.verify_chain(session)
            result.problems += audit.verify_checkpoints(session, gw.signing_key)
            for each in anchors:
                result.problems += audit.verify_anchor(session, each, gw.signing_key)
            tsa_cert = tsa_cert or gw.settings.anchor_tsa_cert
    unchecked = _check_timestamps(result, anchors, tsa_cert)
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
    elif result.ok:
        click.echo(f"ok: {result.events_checked} event(s) verified; head {result.head_hash}")
        click.echo(
            f"anchor: {result.events_checked}:{result.head_hash} (note it; check a later log "
            "with --anchor to detect one cut back or rewritten since)"
        )
        if result.public_key_fingerprint:
            click.echo(
                f"signed with the key whose fingerprint is {result.public_key_fingerprint}: "
                "compare it with the one the gateway's operator published"
            )
        for name in unchecked:
            click.echo(f"anchor {name}: its RFC 3161 timestamp was not checked (give --tsa-cert)")
    else:
        for problem in result.problems:
            click.echo(str(problem))
    if not result.ok:
        # The report above is the output (one JSON document with --json); the reason
        # goes to stderr and the exit status says the chain is broken.
        click.echo(f"gateway: error: audit log verification failed: {result.problems[0]}", err=True)
        ctx.exit(AuditChainBroken.exit_code)


def _check_timestamps(result: Any, anchors: list[Any], tsa_cert: Path | None) -> list[str]:
    """Check the RFC 3161 timestamps the signed anchors carry (with the TSA's certificate);
    return the names of those left unchecked for want of it."""
    from gateway import audit

    stamped = [
        a for a in anchors if isinstance(a, audit.SignedAnchor) and "timestamp" in a.document
    ]
    if not stamped:
        return []
    if tsa_cert is None:
        return [a.name for a in stamped]
    from gateway import anchors as anchoring

    trusted = anchoring.load_certificates(tsa_cert)
    for anchor in stamped:
        if (problem := anchoring.anchor_timestamp_problem(anchor, trusted)) is not None:
            result.problems.append(audit.ChainProblem(None, f"anchor {anchor.name}: {problem}"))
    return []


@audit_group.command("anchor")
@json_option
@click.pass_context
def audit_anchor(ctx: click.Context, as_json: bool) -> None:
    """Sign the chain head and write it outside the gateway (GATEWAY_ANCHOR_DESTINATIONS:
    a folder elsewhere, an email to the reviewers, an RFC 3161 timestamp), so a log
    later cut back or rewritten is caught by `gateway audit verify --anchor FILE`."""
    from gateway import anchors

    with _open(ctx) as gw, gw.sessions() as session:
        outcome = anchors.anchor_head(session, gw.settings, gw.signing_key)

    def human(o: dict[str, Any]) -> None:
        stamped = ", timestamped" if o["timestamped"] else ""
        click.echo(f"anchored event {o['seq']}, head {o['hash']}{stamped}, as {o['name']}")
        for each in o["destinations"]:
            if each["kind"] == "file":
                click.echo(f"  file: {each['file']}")
            elif each["kind"] == "smtp":
                click.echo(f"  smtp: sent to {each['recipients']} recipient(s)")

    _emit(outcome, as_json, human)


# --- serve ------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes (each a whole gateway; they share the database).",
)
@click.option(
    "--trust-proxy",
    "proxies",
    multiple=True,
    metavar="IP",
    help=(
        "A reverse proxy whose X-Forwarded-For names the client and whose "
        "X-Forwarded-Proto says HTTPS (repeatable)."
    ),
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, workers: int, proxies: tuple[str, ...]) -> None:
    """Run the HTTP API with uvicorn, in one process or several (--workers).

    Workers share nothing but the database: budgets, the audit chain, stored
    releases, tokens and the failed-authentication lockout all live there, so
    several workers, or several servers over one PostgreSQL, keep every guarantee.
    """
    import uvicorn

    from gateway.app import create_app

    settings = _settings(ctx)
    # Open once before serving, so an unsafe key or a stale database is refused with a
    # one-line reason instead of a server traceback.
    _open(ctx).close()
    # Client addresses (the failed-authentication lockout counts per address) come from
    # X-Forwarded-For, and the scheme (a Secure session cookie behind a TLS proxy) from
    # X-Forwarded-Proto, only when the connection is from a proxy named here.
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        # Nagle's algorithm off on every connection (gateway/api/nodelay.py says why).
        "http": "gateway.api.nodelay:NoDelayH11Protocol",
        "proxy_headers": bool(proxies),
        "forwarded_allow_ips": ",".join(proxies) if proxies else None,
        "server_header": False,
    }
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
    else:
        # Each worker is a fresh process that builds its app from the same GATEWAY_*
        # settings (uvicorn cannot hand it an app object).
        uvicorn.run("gateway.app:app_from_environment", factory=True, workers=workers, **options)


# --- demo -------------------------------------------------------------------


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    default=Path("demo"),
    show_default=True,
    help="Folder for the generated extracts and the demo data folder.",
)
@json_option
def demo(directory: Path, as_json: bool) -> None:
    """Run the whole flow on generated data, with a throwaway key in DIR/data/."""
    from gateway.demo import run_demo

    result = run_demo(directory, echo=None if as_json else click.echo)
    if as_json:
        click.echo(json.dumps(result, indent=2, default=str))
    refused = [u for u in result["uploads"] if u["status"] != "accepted"]
    if refused or not result["audit"]["ok"]:
        what = f"{len(refused)} upload(s) refused" if refused else "the audit log did not verify"
        # The summary above is the output (one JSON document); the reason goes to stderr.
        click.echo(f"gateway: error: the demo did not complete: {what}", err=True)
        click.get_current_context().exit(1)


# --- extracts -----------------------------------------------------------------
# The group lives in its own module, which adds itself to ``main`` (it needs this
# module's helpers, so it is imported last).

import gateway.cli_extracts  # noqa: E402, F401
