"""``gateway demo``: the whole flow on generated data, in a throwaway folder.

The demo never touches the operator's data folder or key: it makes its own
data folder (DIR/data/, with its own master key) and its own synthetic
extracts (DIR/extracts/), then uploads every party's extracts to every
example agreement, runs every report of every agreement for each of its
recipients (through the release engine: minimum cells, suppression, noise,
budgets and audit events all apply), verifies the audit log and says how to
open the web pages (demo tokens in DIR/tokens.txt, mode 0600).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import audit, credentials
from gateway.agreements import Agreement
from gateway.config import Settings, load_settings
from gateway.context import Gateway, initialise
from gateway.errors import ConfigurationError, GatewayError
from gateway.ingest import UploadRefused, upload_extract
from gateway.release import formatting
from gateway.release.budget import budget_report
from gateway.release.reports import list_reports, run_report

Echo = Callable[[str], None]


def demo_settings(directory: Path, base: Settings | None = None) -> Settings:
    """Settings pointing everything but the agreement and policy folders at ``directory``."""
    base = base or load_settings()
    data_dir = (directory / "data").resolve()
    return base.model_copy(
        update={
            "data_dir": data_dir,
            "database_url": None,
            "key_backend": "file",  # the demo's throwaway keys are files, even beside an HSM
            "master_key_file": data_dir / "keys" / "master.key",
            # Never the operator's signing key: the demo signs its own throwaway log.
            "signing_key_file": data_dir / "keys" / "signing.key",
        }
    )


def _gateway_command() -> str:
    """How to run ``gateway`` again from here (it may live in .venv/bin, not on PATH)."""
    script = Path(sys.argv[0])
    if script.name == "gateway" and script.exists():
        found = shutil.which("gateway")
        if found and Path(found).resolve() == script.resolve():
            return "gateway"
        return os.path.relpath(script.resolve()) if script.is_absolute() else str(script)
    return "gateway"


def run_demo(directory: Path, *, echo: Echo | None = print, seed: int = 2026) -> dict[str, Any]:
    """Initialise a fresh gateway in ``directory``, upload generated extracts; summarise."""
    say: Echo = echo or (lambda _line: None)
    try:  # the data generator is not part of the gateway package (synthetic/)
        from gateway_synthetic import generate_agreement_extracts
    except ModuleNotFoundError as missing:
        if missing.name != "gateway_synthetic":
            raise
        raise ConfigurationError(
            "the demo's data generator is not installed: run `make run` in the gateway's "
            "source folder (or pip install -e ./synthetic there)"
        ) from None
    directory.mkdir(parents=True, exist_ok=True)
    # A demo run starts clean: an earlier run's data folder and extracts are replaced.
    for stale in (directory / "data", directory / "extracts", directory / "received"):
        if stale.exists():
            shutil.rmtree(stale)
    settings = demo_settings(directory)
    say(f"Demo gateway in {directory.resolve()}")
    init = initialise(settings)
    say(f"  data folder {init['data_dir']} (with its own throwaway master key)")
    uploads: list[dict[str, Any]] = []
    with Gateway.open(settings) as gw:
        agreements = sorted(gw.registry.agreements.values(), key=lambda a: a.id)
        say(f"\nLoaded {len(agreements)} example agreements:")
        for agreement in agreements:
            parties = " + ".join(p.name for p in agreement.parties)
            say(f"  {agreement.id}: {parties}")
        say(f"\nGenerated extracts in {(directory / 'extracts').resolve()}; uploading:")
        for agreement in agreements:
            extracts = generate_agreement_extracts(
                agreement, gw.registry.schemas, directory / "extracts", seed=seed
            )
            say(f"  {agreement.id}")
            for extract in extracts:
                actor = audit.Actor(role="uploader", party=extract.party)
                try:
                    receipt = upload_extract(
                        gw,
                        agreement_id=agreement.id,
                        party=extract.party,
                        dataset=extract.dataset,
                        path=extract.path,
                        actor=actor,
                    )
                except UploadRefused as refused:
                    receipt = refused.receipt
                rows = receipt["rows"]
                dropped = ", ".join(
                    f"{d['header']} ({d['reason']})" for d in receipt["columns"]["dropped"]
                )
                say(
                    f"    {extract.dataset:<22} {extract.path.suffix[1:]:<8} from "
                    f"{extract.party:<20} {receipt['status']}: {rows['accepted']:>6} rows"
                    + (f"; dropped {dropped}" if dropped else "")
                )
                uploads.append(
                    {
                        "agreement": agreement.id,
                        "dataset": extract.dataset,
                        "party": extract.party,
                        "file": str(extract.path),
                        "status": receipt["status"],
                        "rows": rows,
                    }
                )
        say("\nRunning every report of every agreement, for each of its recipients:")
        reports = [_run_reports(gw, agreement, say) for agreement in agreements]
        summary = _summary(gw, agreements, [run for runs in reports for run in runs])
        # One extract, of the first agreement that declares one: the story, not every one.
        extract_runs = [
            _run_extract(gw, agreement, agreement.extracts[0].name, directory, say)
            for agreement in [a for a in agreements if a.extracts][:1]
        ]
        tokens_file = _web_tokens(gw, agreements, directory)
        with gw.sessions() as session:
            verification = audit.verify_chain(session)
            verification.problems += audit.verify_checkpoints(session, gw.signing_key)
    say(
        f"\nAudit log: {verification.events_checked} events, "
        f"{'chain and signed checkpoints verified' if verification.ok else 'BROKEN'}"
    )
    for problem in verification.problems:
        say(f"  {problem}")
    say(f"\n{summary}")
    command = _gateway_command()
    data = settings.data_dir
    say(
        "\nLook around with, for example:\n"
        f"  GATEWAY_DATA_DIR={data} {command} audit list\n"
        f"  GATEWAY_DATA_DIR={data} {command} agreements show "
        f"{agreements[0].id if agreements else 'ID'}\n"
        f"  GATEWAY_DATA_DIR={data} {command} release --agreement ID --party PARTY "
        "--report NAME --dry-run\n"
        "Open the web pages:\n"
        f"  GATEWAY_DATA_DIR={data} {command} serve   then visit http://127.0.0.1:8000/web/\n"
        f"  and sign in with a token from {tokens_file} (an uploader, an analyst and a "
        "reviewer of the first agreement; demo tokens only)"
    )
    return {
        "directory": str(directory.resolve()),
        "agreements": [a.id for a in agreements],
        "uploads": uploads,
        "reports": [run for runs in reports for run in runs],
        "extracts": extract_runs,
        "tokens_file": str(tokens_file),
        "audit": verification.to_dict(),
        "summary": summary,
    }


def _run_extract(
    gw: Gateway, agreement: Agreement, name: str, directory: Path, say: Echo
) -> dict[str, Any]:
    """One record-level extract (docs/extracts.md): asked for by a recipient's analyst,
    approved by a person of the providing party, downloaded once into DIR/received/."""
    from gateway.extracts import approval

    spec = agreement.extract(name)
    recipient = spec.recipients[0]
    say(f"\nA record-level extract of {agreement.id}: {name}, for {recipient}")
    with gw.sessions() as session, session.begin():
        tokens = {
            role: credentials.issue(
                session,
                master_key=gw.master_key,
                registry=gw.registry,
                agreement_ids=[agreement.id],
                role=role,
                party=party,
                expires=None,
                actor=audit.OPERATOR,
                person=person,
            ).token
            for role, party, person in (
                ("analyst", recipient, f"{recipient}-analyst"),
                ("approver", spec.approvers.party, spec.approvers.people[0]),
            )
        }
    with gw.reads() as session:
        asker, approver = (
            credentials.authenticate(session, gw.master_key, tokens[role])
            for role in ("analyst", "approver")
        )
    asked = approval.request_extract(gw, agreement_id=agreement.id, extract=name, principal=asker)
    say(f"  requested by {recipient}'s analyst: request {asked.id}, pending")
    from gateway.cli_extracts import summary_lines

    # What the district's approver reads (the analyst sees it only once approved).
    seen = approval.show_request(gw, request_id=asked.id, principal=approver)
    for line in summary_lines({k: v for k, v in seen.summary.items() if k != "sample"}):
        say(f"    {line}")
    decided = approval.decide(gw, request_id=asked.id, principal=approver, approve=True)
    say(
        f"  approved by {spec.approvers.party} ({spec.approvers.people[0]}); download by "
        f"{decided.expires_at}"
    )
    received = approval.download_extract(gw, request_id=asked.id, principal=asker)
    folder = directory / "received"
    folder.mkdir(exist_ok=True)
    path = folder / received.file_name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(received.data)
    say(f"  downloaded once by {recipient}: {path} ({received.request.summary.get('rows')} rows)")
    return {
        "agreement": agreement.id,
        "extract": name,
        "request_id": asked.id,
        "status": received.request.status,
        "file": str(path),
        "risk_before": seen.summary.get("risk_before"),
        "risk_after": seen.summary.get("risk_after"),
    }


def _run_reports(gw: Gateway, agreement: Agreement, say: Echo) -> list[dict[str, Any]]:
    """Every report of ``agreement`` for each of its recipients, printed as tables."""
    runs: list[dict[str, Any]] = []
    shown: dict[tuple[str, ...], str] = {}  # the releases printed, and for whom
    for listed in list_reports(agreement):
        for party in listed["recipients"]:
            say(f"\n  {agreement.id} / {listed['name']} for {party}: {listed['description']}")
            try:
                result = run_report(
                    gw,
                    agreement_id=agreement.id,
                    party=party,
                    report=listed["name"],
                    parameters={},
                    actor=audit.Actor(role="analyst", party=party),
                )
            except GatewayError as error:
                say(f"    refused: {error.message}")
                runs.append(
                    {"agreement": agreement.id, "report": listed["name"], "party": party,
                     "status": "refused", "reason": error.message}
                )  # fmt: skip
                continue
            released = tuple(t["release"]["release_id"] for t in result["tables"] if "release" in t)
            first = shown.setdefault(released, party) if released else party
            formats = formatting.for_report_tables(result, gw.registry)
            if first != party:  # a partnership release: the same tables, stored
                say(f"    the same tables as for {first} (stored: one release for the partnership)")
            tables = result["tables"] if first == party else []
            for table, fmt in zip(tables, formats[: len(tables)], strict=True):
                say(f"    {table['title']}")
                if "skipped" in table:  # nothing spent on it: why
                    say(f"      not run: {table['skipped']}")
                    continue
                for line in _table_lines(table["release"]["cells"], fmt):
                    say(f"      {line}")
                for name, values in table.get("summary", {}).items():
                    for item in values:
                        where = ", ".join(f"{k} {v}" for k, v in item["group"].items())
                        say(f"      {name.replace('_', ' ')}{' ' + where if where else ''}: "
                            + _figure(item, formatting.STATISTIC))  # fmt: skip
            for figure in result.get("derived", []) if first == party else []:
                say(f"    {figure['title']}")
                figure_fmt = formatting.for_derived(figure.get("kind", "gap"))
                if not figure["rows"]:
                    say("      none: no group is published in both of its tables")
                for row in figure["rows"]:
                    where = ", ".join(f"{k} {v}" for k, v in row["group"].items())
                    say(f"      {where or 'all'}: {_figure(row, figure_fmt)}")
            say(
                f"    epsilon spent {result['epsilon_spent']:.3g}; "
                f"{party}'s budget remaining {result['budget_remaining']:.3g}"
            )
            runs.append(
                {
                    "agreement": agreement.id,
                    "report": listed["name"],
                    "party": party,
                    "status": "released",
                    "tables": [
                        t["release"]["release_id"] for t in result["tables"] if "release" in t
                    ],
                    "epsilon_spent": result["epsilon_spent"],
                    "cells": {
                        t["release"]["release_id"]: _cell_counts(t["release"]["cells"])
                        for t in result["tables"]
                        if "release" in t
                    },
                }
            )
    return runs


def _figure(item: dict[str, Any], fmt: formatting.NumberFormat) -> str:
    """A derived figure: its value and 95% interval, or why it has none; and its note."""
    if item.get("value") is None:
        return f"- ({item.get('note')})"
    shown = fmt.text(item["value"])
    if item.get("ci95"):
        shown += f"   95% interval {fmt.interval(*item['ci95'])}"
    return shown + (f" ({item['note']})" if item.get("note") else "")


def _cell_counts(cells: list[dict[str, Any]]) -> dict[str, int]:
    """How a table's cells came out: noisy (as asked or rolled up), exact, coded or
    suppressed."""
    counts = {"noisy": 0, "rolled_up": 0, "exact": 0, "coded": 0, "suppressed": 0}
    for cell in cells:
        if cell["suppressed"]:
            counts["suppressed"] += 1
        elif cell.get("value") is None:
            counts["coded"] += 1
        elif cell["ci95"][0] == cell["ci95"][1]:
            counts["exact"] += 1
        elif cell.get("steps"):
            counts["rolled_up"] += 1
        else:
            counts["noisy"] += 1
    return counts


def _summary(gw: Gateway, agreements: list[Agreement], runs: list[dict[str, Any]]) -> str:
    """One line: what the pass published (each partnership release once) and cost."""
    tables: dict[str, dict[str, int]] = {}
    for run in runs:
        tables.update(run.get("cells", {}))
    kinds = ("noisy", "rolled_up", "exact", "coded", "suppressed")
    totals = {k: sum(t.get(k, 0) for t in tables.values()) for k in kinds}
    cells = sum(totals.values()) or 1
    with gw.sessions() as session:
        pools = [budget_report(session, a) for a in agreements]
    kept = min((p["remaining"] / p["total"] for p in pools if p["total"]), default=1.0)
    return (
        f"Summary: {len(tables)} tables, {cells} cells: {totals['noisy']} published with "
        f"noise as asked, {totals['rolled_up']} rolled up into coarser groups, "
        f"{totals['exact']} exact (posted positions), {totals['coded']} coded, "
        f"{totals['suppressed']} suppressed ({totals['suppressed'] / cells:.0%}); epsilon "
        f"spent {sum(p['spent'] for p in pools):.3g} of {sum(p['total'] for p in pools):.3g}, "
        f"every agreement keeping at least {kept:.0%} of its budget"
    )


def _cell_label(cell: dict[str, Any]) -> str:
    """A cell's group as a reader wants it: each dimension's value, and for one that
    rolled up, the level it stands at ("program_code secondary (program area)")."""
    level = cell.get("level") or {}
    parts = []
    for name, value in cell["group"].items():
        at = level.get(name)
        shown = f"{name} {value}"
        if at and at != "as asked" and not str(value).startswith(("all ", at)):
            shown += f" ({at})"
        parts.append(shown)
    return ", ".join(parts) or "all"


def _table_lines(
    cells: list[dict[str, Any]], fmt: formatting.NumberFormat = formatting.COUNT
) -> list[str]:
    """One aligned line per published cell: its group, then the value and interval;
    then one line for the suppressed cells, counted (a reader wants what was published,
    and how much was not). Numbers as gateway/release/formatting.py shows them."""
    published = [c for c in cells if not c["suppressed"]]
    labels = [_cell_label(c) for c in published]
    width = max((len(label) for label in labels), default=0)
    lines = []
    for label, cell in zip(labels, published, strict=True):
        if cell.get("value") is None:
            shown = str(cell.get("coded") or "-")
        elif cell["ci95"][0] == cell["ci95"][1]:  # released exactly (posted positions)
            shown = f"{fmt.text(cell['value']):>9}   exact"
        else:
            value, interval = formatting.cell_text(cell, fmt)
            shown = f"{value:>9}   95% interval {interval}"
            if cell.get("note"):
                shown += f"  ({cell['note']})"
        lines.append(f"{label:<{width}}  {shown}")
    primary = sum(1 for c in cells if c["suppressed"] and c.get("reason") != "complementary")
    complementary = sum(1 for c in cells if c["suppressed"]) - primary
    hidden = []
    if primary:
        hidden.append(
            f"{primary} suppressed (primary): too few teachers, even rolled up to the "
            "coarsest level"
        )
    if complementary:
        hidden.append(f"{complementary} suppressed (complementary): hidden to protect those")
    if hidden and not published:
        hidden[0] = "nothing published: " + hidden[0]
    return [*lines, "; ".join(hidden)] if hidden else lines


def _web_tokens(gw: Gateway, agreements: list[Agreement], directory: Path) -> Path:
    """Demo tokens for the web pages, written to a 0600 file (never printed)."""
    path = directory / "tokens.txt"
    if not agreements:
        return path
    agreement = agreements[0]
    uploader = next(d.provided_by for d in agreement.datasets)
    analyst = sorted(agreement.releases)[0]
    lines = []
    with gw.sessions() as session, session.begin():
        for role, party in (("uploader", uploader), ("analyst", analyst), ("reviewer", None)):
            issued = credentials.issue(
                session,
                master_key=gw.master_key,
                registry=gw.registry,
                agreement_ids=[agreement.id],
                role=role,
                party=party,
                expires=None,
                actor=audit.OPERATOR,
            )
            lines.append(f"{role:<9} {party or '-':<22} {issued.token}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    return path
