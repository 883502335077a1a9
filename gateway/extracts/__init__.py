"""Record-level de-identified extracts (issue 17): what the workflow builds on.

An agreement may declare ``extracts:``, each a teacher-level file one party may
receive from data another party provided (docs/agreements.md#extracts). This
package turns the stored rows into such a file, and finds which file a leaked copy
came from. It knows nothing of requests, approvals, downloads or HTTP: the
workflow (requests, approvals, audit events, CLI, API, web) calls it.

Public surface::

    # the declaration (gateway/agreements/models.py), checked by `gateway agreements check`
    agreement.extract(name) -> ExtractSpec           # NotFound if the agreement has none
    agreement.extracts_for(party_id) -> tuple[ExtractSpec, ...]   # those it may receive
    spec.recipients               # the parties that may request it
    spec.approvers.party          # the providing party, whose people approve
    spec.approvers.people         # who may approve: person ids (slugs) of that party
    spec.approvers.required       # how many different people must approve
    spec.may_approve(person_id, *, requester_id) -> bool   # listed, and not the requester

    build_extract(session, *, agreement, spec, recipient, request_id, master_key) -> Extract
        # Reads the stored rows of spec.datasets (current key version), joins them per
        # teacher (and spec.link_on), replaces the internal pseudonym by the recipient
        # pseudonym, bands number fields, generalises and suppresses the quasi-
        # identifiers until every class has >= k teachers and >= l values of each
        # sensitive field (checked with pycanon), orders rows by a keyed shuffle and
        # fingerprints them for request_id. Raises NotUploaded (409) when a dataset has
        # nothing to read, PolicyViolation when the recipient may not receive the
        # extract or the agreement is not in force; never echoes an ID or a value.

    Extract                       # frozen; one typed result for every adapter
        .frame: pandas.DataFrame  # the file's content, columns in .columns order
        .columns: tuple[str, ...] # "teacher_id", "record_id", then the spec's fields
        .generalisation: tuple[ColumnGeneralisation, ...]  # per quasi-identifier:
                                  #   column, level (0 = as recorded), level_name, levels
        .rows_before / .rows_released / .suppressed_share   # information loss
        .risk_before / .risk_after: Risk   # records, classes, unique_share,
                                  #   prosecutor_rate (= classes / records), max_risk
        .k / .l                   # what the agreement asked for
        .k_achieved / .l_achieved # what pycanon measured on the released rows (counted
                                  #   in distinct teachers for k); None if nothing left
        .sample: tuple[dict[str, object], ...]  # <= 5 generalised rows, no teacher_id /
                                  #   record_id, for the approver
        .bands: dict[str, list[str]]  # number fields released as bands: their labels
        .fingerprint: FingerprintRecord   # store it (audit event / table) for identify
        .summary() -> dict        # JSON-safe: columns, generalisation, bands, rows_before,
                                  #   rows_released, suppressed_share, risk_before/after,
                                  #   k, l, k_achieved, l_achieved, sample; no ID of any
                                  #   kind (for approver screens and the audit log)
        .to_csv_bytes() -> bytes  # the frame as UTF-8 CSV (metadata is the workflow's)

    FingerprintRecord             # frozen; no secret in it: safe for the audit log
        .request_id, .agreement_id, .recipient, .extract, .columns, .rows
        .node, .tied_nodes        # the generalisation chosen, and how many tied (keyed pick)
        .teachers                 # keyed digests of the file's teacher IDs
        .to_dict() / FingerprintRecord.from_dict(data)

    fingerprint_plan(master_key, request_id, *, agreement_id) -> FingerprintPlan
        # used by build_extract: record IDs (a keyed MAC of each row's content), the
        # keyed tie-break and row order. The key is derived again, never stored.

    identify(frame, candidates, *, master_key) -> Identification
        # Which recorded extract a found copy (a DataFrame, e.g. read from a CSV or
        # Parquet file) came from: survives reordered or renamed columns, shuffled rows
        # and a part of the rows. candidates: FingerprintRecords, or a mapping
        # request_id -> record or record.to_dict(). Identification.record (None when no
        # candidate scores above 0.5), .request_id, .score (0..1: the share of the
        # copy's rows whose record_id verifies under that request's key; when none
        # verifies for any candidate, the share of its teacher IDs that recipient was
        # given), .basis ("record_id", "teacher_id" or None), .rows_checked, .scores
        # (request_id -> score for every candidate).

    recipient_pseudonymizer(session, master_key, *, agreement_id, recipient)
        -> RecipientPseudonymizer     # .pseudonym(internal_pseudonym) -> teacher_id

Nothing here logs or raises with a teacher ID (raw, internal or recipient), a name,
a value of a row, or key material.
"""

from __future__ import annotations

from gateway.extracts.anonymise import ColumnGeneralisation, Risk
from gateway.extracts.build import Extract, build_extract
from gateway.extracts.fingerprint import (
    FingerprintPlan,
    FingerprintRecord,
    Identification,
    fingerprint_plan,
    identify,
)
from gateway.extracts.pseudonyms import RecipientPseudonymizer, recipient_pseudonymizer

__all__ = [
    "ColumnGeneralisation",
    "Extract",
    "FingerprintPlan",
    "FingerprintRecord",
    "Identification",
    "RecipientPseudonymizer",
    "Risk",
    "build_extract",
    "fingerprint_plan",
    "identify",
    "recipient_pseudonymizer",
]
