"""Releases: the one domain function behind ``gateway release``, the API and the pages.

A release runs through its stages in order, each in its own module, handing typed
objects forward:

1. **resolve** (query.py, canonical.py): the agreement must be in force; every field
   is checked against the recipient's allowlist; the query is rewritten into its
   canonical form, from which everything after is computed;
2. **plan** (plan.py): mechanisms, scales, the publish threshold and the cost, within
   the profile's per-release bounds; a preview stops here and spends nothing;
3. the data version is read; the same canonical query on the same data under the
   same terms, asked by any recipient of the agreement, is answered with the stored
   release, free (publish.py);
4. **reserve** (publish.py, budget.py): the budget is reserved and the release's key
   claimed, committed, before anything data-dependent is drawn; never refunded;
5. **measure** (rows.py, aggregate.py, measure.py): rows are read and each teacher's
   contribution bounded; OpenDP draws every noisy number;
6. **decide** (decide.py): publish, suppress and label, on noisy values only, with
   the minimum cell as a hard floor counted in delta;
7. **post-process** (postprocess.py): values and intervals from the noise;
8. **publish** (publish.py): the release and its audit event are committed in one
   transaction, and only then returned.

No refusal depends on the data: refusals come from the query, the agreement, the
role and the budget, all before step 5.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from gateway import audit, keys
from gateway.agreements.models import Agreement
from gateway.context import Gateway
from gateway.errors import GatewayError
from gateway.release import aggregate, canonical, decide, measure, postprocess, publish, rows
from gateway.release.budget import recipients
from gateway.release.groupkeys import named_key
from gateway.release.model import AgreementRef, Preview, Release
from gateway.release.plan import Plan, plan_query
from gateway.release.publish import ReleaseFailed
from gateway.release.query import Query, ResolvedQuery, resolve


def request_release(
    gateway: Gateway,
    *,
    agreement_id: str,
    party: str,
    query: Query,
    actor: audit.Actor,
    dry_run: bool = False,
    report: str | None = None,
) -> Release | Preview:
    """Release ``query`` to ``party`` (or preview it); see the module docstring.

    ``report`` names the report a query is a table of, for the audit log. Every
    refusal is written to the audit log before the error is raised.
    """
    agreement: Agreement | None = None
    try:
        agreement = gateway.agreement(agreement_id)
        gateway.require_active(agreement, refused="releases")
        agreement.require_in_force(datetime.now(UTC).date(), refused="releases")
        asked = resolve(query, agreement=agreement, registry=gateway.registry, party=party)
        resolved = canonical.normalise(asked, agreement)
        plan = plan_query(resolved, agreement)
        if dry_run:
            asking = _asked(gateway, agreement, resolved)
            return publish.preview(gateway, agreement, party, plan, asking)
        release = _release(gateway, agreement, party, resolved, plan, actor, report)
        # Computed in canonical order; shown in the order asked.
        order = [ref.column for ref in asked.group_by]
        return release.model_copy(
            update={"cells": canonical.present(release.cells, order, plan.dimensions)}
        )
    except GatewayError as error:
        if not dry_run:
            publish.refuse(
                gateway, agreement=agreement, party=party, query=query, actor=actor, error=error
            )
        raise
    except Exception:
        # A failure nobody foresaw is still a refusal in the log (its message, which
        # might hold a value, is not: the operator's log has the exception's type).
        if not dry_run:
            failed = GatewayError("the release failed: internal error")
            publish.refuse(
                gateway, agreement=agreement, party=party, query=query, actor=actor, error=failed
            )
        raise


def _asked(gateway: Gateway, agreement: Agreement, resolved: ResolvedQuery) -> publish.Asked:
    with gateway.sessions() as session:
        key = keys.current_key_version(session, agreement.id)
        version = rows.data_version(
            session.connection(), resolved, agreement, key.version if key else None
        )
    return publish.Asked(
        canonical=canonical.canonical_text(resolved),
        data_version=version,
        agreement_hash=agreement.content_hash,
    )


def _release(
    gateway: Gateway,
    agreement: Agreement,
    party: str,
    resolved: ResolvedQuery,
    plan: Plan,
    actor: audit.Actor,
    report: str | None,
) -> Release:
    asked = _asked(gateway, agreement, resolved)
    stored = publish.find_repeat(gateway, asked)
    if stored is None:
        claimed = publish.reserve(
            gateway, agreement=agreement, party=party, plan=plan, asked=asked, actor=actor
        )
        if isinstance(claimed, publish.Reservation):
            return _compute(
                gateway, agreement, party, resolved, plan, asked, claimed, actor, report
            )
        stored = claimed
    return publish.repeat(
        gateway, agreement=agreement, party=party, row=stored, actor=actor, report=report
    )


def _compute(
    gateway: Gateway,
    agreement: Agreement,
    party: str,
    resolved: ResolvedQuery,
    plan: Plan,
    asked: publish.Asked,
    reservation: publish.Reservation,
    actor: audit.Actor,
    report: str | None,
) -> Release:
    """Measure, decide and post-process a reserved release, then record it."""
    profile = agreement.resolved_disclosure
    signature = canonical.table_signature(resolved, plan.dimensions)
    try:
        with gateway.sessions() as session:
            key = keys.current_key_version(session, agreement.id)
            frame = rows.load_rows(
                session.connection(), resolved, agreement, key.version if key else None
            )
        found = aggregate.true_cells(frame, resolved, plan)
        if plan.selection is not None:
            cells = measure.select_groups(found, plan, linked=resolved.linked)
        else:  # every public key is a cell, empty ones too: never left out
            cells = {k: found.get(k, aggregate.TrueCell()) for k in plan.keys([()])}
        measured = measure.measure(cells, plan)
        memory = publish.remembered(gateway, agreement, signature)
        pattern = decide.decide(
            {k: c.teachers for k, c in cells.items()},
            measured.deciding(plan),
            plan=plan,
            remembered={k for k in cells if named_key(plan.dimensions, k) in memory},
        )
        table = postprocess.cells(
            measured,
            pattern,
            plan,
            kind=resolved.query.measure.kind,
            coding=profile.top_bottom_coding,
        )
    except Exception as error:  # the reservation stays spent
        publish.fail(gateway, reservation)
        raise ReleaseFailed(
            f"the release could not be computed ({type(error).__name__}); the budget "
            "reserved for it stays spent"
        ) from error
    release = Release(
        release_id=reservation.release_id,
        agreement=AgreementRef(id=agreement.id, version=agreement.version),
        party=party,
        recipients=_recipients(gateway, agreement, resolved),
        query=json.loads(asked.canonical),
        cells=table,
        epsilon_spent=float(plan.epsilon),
        delta_spent=float(plan.delta_used),
        budget_remaining=float(reservation.state.epsilon_remaining),
        noise={
            "mechanisms": plan.mechanisms(),
            "groups_per_teacher": plan.groups_per_teacher,
            "accuracy_95": plan.accuracy(),
        },
        minimum_cell={"teachers": plan.minimum, "students": profile.min_cell_students},
        decisions={
            "publish_threshold": plan.threshold,
            "floor_delta": float(plan.floor_delta),
            "students_per_teacher": plan.students_per_teacher,
        },
        unprotectable=postprocess.unprotectable(pattern, plan),
        created_at=datetime.now(UTC).isoformat(),
    )
    return publish.record(
        gateway,
        agreement=agreement,
        release=release,
        asked=asked,
        plan=plan,
        actor=actor,
        signature=signature,
        newly_suppressed=sorted(named_key(plan.dimensions, k) for k in pattern.suppressed),
        counts={
            "cells_released": len(cells) - len(pattern.suppressed),
            "cells_suppressed": len(pattern.suppressed),
            "cells_unprotectable": len(pattern.unprotectable),
        },
        report=report,
    )


def _recipients(gateway: Gateway, agreement: Agreement, resolved: ResolvedQuery) -> list[str]:
    """Every recipient allowed all the query's fields: each receives the same table."""
    allowed = []
    for party in recipients(agreement):
        try:
            resolve(resolved.query, agreement=agreement, registry=gateway.registry, party=party)
        except GatewayError:
            continue
        allowed.append(party)
    return allowed


__all__ = ["ReleaseFailed", "request_release"]
