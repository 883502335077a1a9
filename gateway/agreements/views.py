"""How agreements are shown to users (CLI ``--json`` and the HTTP API)."""

from __future__ import annotations

from typing import Any

from gateway.agreements.models import Agreement


def agreement_summary(agreement: Agreement) -> dict[str, Any]:
    """The ``agreements list`` view: identity, parties and datasets (SPEC section 7)."""
    return {
        "id": agreement.id,
        "version": agreement.version,
        "title": agreement.title,
        "effective": agreement.effective.isoformat(),
        "ends": agreement.ends.isoformat(),
        "content_hash": agreement.content_hash,
        "parties": [
            {"id": party.id, "kind": party.kind, "name": party.name} for party in agreement.parties
        ],
        "datasets": [
            {"name": ds.name, "schema": ds.schema_name, "provided_by": ds.provided_by}
            for ds in agreement.datasets
        ],
    }


def agreement_detail(agreement: Agreement) -> dict[str, Any]:
    """The ``agreements show`` view: the summary plus everything a party may rely on."""
    disclosure = agreement.resolved_disclosure
    detail = agreement_summary(agreement)
    detail["purpose"] = agreement.purpose
    for view, dataset in zip(detail["datasets"], agreement.datasets, strict=True):
        view["stored_fields"] = list(dataset.stored_fields)
        view["header_map"] = dict(dataset.header_map)
    detail["releases"] = {
        party: {"dimensions": list(fields.dimensions), "measures": list(fields.measures)}
        for party, fields in agreement.releases.items()
    }
    detail["disclosure"] = disclosure.model_dump(mode="json")
    # Imported here: the report module sits on the release engine, above this package.
    from gateway.release.reports import list_reports

    detail["reports"] = list_reports(agreement)
    return detail
