"""Releases: the one domain function behind ``gateway release``, the API and the pages.

The stages, in order, each in its own module, handing typed objects forward:

1. **resolve** (query.py, canonical.py): agreement in force, allowlist, canonical form;
   every dataset read has an accepted upload under the current key (rows.py);
2. **plan** (plan.py): mechanisms, scales, publish threshold, cost, per-release bounds;
   a preview stops here (with the repeat check) and spends nothing;
3. **reserve** (publish.py, budget.py): a stored release of the same canonical query on
   the same data, asked by any recipient, comes back free; otherwise the budget is
   reserved and the release's key claimed, committed, before any data is read;
4. **measure** (rows.py, aggregate.py, measure.py): read, bound, draw (OpenDP);
5. **decide** (decide.py): publish, suppress, label, on noisy values only;
6. **post-process** (postprocess.py): values and intervals from the noise;
7. **publish** (publish.py): release and audit event in one transaction, then returned.

No refusal depends on the data: all come before stage 4, from the query, the
agreement, the role, which uploads were accepted (public to the partnership) and the
budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gateway import audit, termination
from gateway.agreements.models import Agreement
from gateway.context import Gateway
from gateway.errors import GatewayError
from gateway.release import canonical, publish, rows
from gateway.release.groupkeys import named_key
from gateway.release.model import Preview, Release
from gateway.release.plan import Composed, Plan, plan_query
from gateway.release.publish import ReleaseFailed
from gateway.release.query import Query, ResolvedQuery, allowed_recipients, resolve
from gateway.storage.releases import Release as ReleaseRow


@dataclass(frozen=True)
class _Request:
    """One resolved, planned request, handed from stage to stage."""

    gateway: Gateway
    agreement: Agreement
    party: str
    resolved: ResolvedQuery
    plan: Plan
    actor: audit.Actor
    report: str | None


def request_release(
    gateway: Gateway,
    *,
    agreement_id: str,
    party: str,
    query: Query,
    actor: audit.Actor,
    dry_run: bool = False,
    report: str | None = None,
    composed: Composed | None = None,
) -> Release | Preview:
    """Release ``query`` to ``party`` (or preview it); see the module docstring.

    ``report`` names the report a query is a table of, for the audit log; ``composed``
    places a zCDP table after its report's earlier ones (reports.py). Every refusal is
    written to the audit log before the error is raised.
    """
    agreement: Agreement | None = None
    try:
        agreement = gateway.agreement(agreement_id)
        gateway.terminate_if_overdue(agreement)
        # Stages 1 and 2, and the repeat look-up, in one read: one snapshot of the
        # agreement's state, uploads and stored releases (and one transaction, not five).
        with gateway.reads() as session:
            termination.require_active(session, agreement, refused="releases")
            agreement.require_in_force(gateway.clock().date(), refused="releases")
            asked = resolve(query, agreement=agreement, registry=gateway.registry, party=party)
            resolved = canonical.normalise(asked, agreement)
            plan = plan_query(resolved, agreement, composed)
            stored = rows.stored(session, resolved, agreement)  # nothing to read: refused
            stored.require_uploaded(resolved, agreement)
            identity = publish.Asked(
                canonical=canonical.canonical_text(resolved),
                data_version=stored.data_version(session.connection(), resolved),
                agreement_hash=agreement.content_hash,
            )
            if dry_run:
                return publish.preview(session, gateway, agreement, party, plan, identity)
            repeat = publish.stored_release(session, identity)
        request = _Request(gateway, agreement, party, resolved, plan, actor, report)
        release = _release(request, identity, repeat)
        # Computed in canonical order; shown in the order asked.
        order = [ref.column for ref in asked.group_by]
        return release.model_copy(
            update={"cells": canonical.present(release.cells, order, plan.dimensions)}
        )
    except Exception as error:
        if not dry_run:
            # A failure nobody foresaw is still a refusal in the log (its message, which
            # might hold a value, is not: the operator's log has the exception's type).
            logged = (
                error
                if isinstance(error, GatewayError)
                else GatewayError("the release failed: internal error")
            )
            publish.refuse(
                gateway, agreement=agreement, party=party, query=query, actor=actor, error=logged
            )
        raise


def _release(request: _Request, asked: publish.Asked, stored: ReleaseRow | None) -> Release:
    """The stored release of ``asked`` (``stored``, when the request's read found it), or a
    new one reserved, computed and recorded."""
    r = request
    if stored is None:
        claimed = publish.reserve(
            r.gateway, agreement=r.agreement, party=r.party, plan=r.plan, asked=asked, actor=r.actor
        )
        if isinstance(claimed, publish.Reservation):
            return _compute(request, asked, claimed)
        stored = claimed  # an identical request drew it first
    return publish.repeat(
        r.gateway, agreement=r.agreement, party=r.party, row=stored, actor=r.actor, report=r.report
    )


def _compute(r: _Request, asked: publish.Asked, reservation: publish.Reservation) -> Release:
    """Measure, decide and post-process a reserved release, then record it."""
    # Imported here: a preview stops before measuring, without pandas or SciPy.
    from gateway.release import aggregate, decide, measure, postprocess

    plan, resolved, profile = r.plan, r.resolved, r.agreement.resolved_disclosure
    signature = canonical.table_signature(resolved, plan.dimensions)
    try:
        with r.gateway.sessions() as session:
            frame = rows.read(session, resolved, r.agreement)
            now = rows.current_version(session, resolved, r.agreement)
        found = aggregate.true_cells(frame, resolved, plan)
        cells = measure.table_cells(found, plan, linked=resolved.linked)
        measured = measure.measure(cells, plan)
        memory = publish.remembered(r.gateway, r.agreement, signature)
        kind, coding = resolved.query.measure.kind, profile.top_bottom_coding
        if plan.ladder is not None:  # too small a cell rolls up (coarsen.py)
            coarse = decide.decide_coarsened(
                measured.keys,
                measured.deciding(plan),
                aggregate.distinct_teachers(cells, linked=resolved.linked),  # the floor
                plan=plan,
                remembered=lambda key: named_key(plan.dimensions, key) in memory,
            )
            pattern = coarse.pattern
            table = postprocess.coarsened_table(coarse, measured, plan, kind=kind, coding=coding)
        else:
            pattern = decide.decide(
                {k: c.teachers for k, c in cells.items()},  # the hard floor only
                measured.deciding(plan),
                plan=plan,
                remembered={k for k in cells if named_key(plan.dimensions, k) in memory},
            )
            table = postprocess.cells(measured, pattern, plan, kind=kind, coding=coding)
        stats = (
            postprocess.statistics(
                measured, plan, aggregate.distinct_teachers(cells, linked=resolved.linked)
            )
            if kind == "joint"
            else None
        )
    except Exception as error:  # the reservation stays spent
        publish.fail(r.gateway, reservation)
        raise ReleaseFailed(
            f"the release could not be computed ({type(error).__name__}); the budget "
            "reserved for it stays spent"
        ) from error
    if now != asked.data_version:  # an upload landed since the key: never mislabel a table
        publish.fail(r.gateway, reservation)
        raise ReleaseFailed(
            "the data changed while the release was being made (an upload landed); ask "
            "again: the budget reserved for this attempt stays spent"
        )
    recipients = allowed_recipients(
        resolved.query, agreement=r.agreement, registry=r.gateway.registry
    )
    release = postprocess.release(
        release_id=reservation.release_id,
        agreement=r.agreement,
        party=r.party,
        recipients=recipients,
        query=json.loads(asked.canonical),
        table=table,
        pattern=pattern,
        plan=plan,
        budget_remaining=float(reservation.state.epsilon_remaining),
        stats=stats,
    )
    return publish.record(
        r.gateway,
        agreement=r.agreement,
        release=release,
        asked=asked,
        plan=plan,
        pattern=pattern,
        actor=r.actor,
        signature=signature,
        report=r.report,
    )


__all__ = ["ReleaseFailed", "request_release"]
