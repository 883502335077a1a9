"""Assembling an extract from the stored rows: read, join per teacher, re-key for the
recipient, band, generalise, fingerprint.

The stored rows carry only ``educator_ref`` (a reference to the internal pseudonym);
it is replaced by the recipient's teacher ID before anything else sees the rows, and
neither it nor the internal pseudonym is ever a column of the result.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from sqlalchemy.orm import Session

from gateway import keys
from gateway.agreements.models import Agreement, ExtractSpec
from gateway.errors import NotFound, PolicyViolation, SchemaError
from gateway.extracts.anonymise import (
    ColumnGeneralisation,
    Ladder,
    Risk,
    anonymise,
    ladder,
)
from gateway.extracts.fingerprint import (
    RECORD_COLUMN,
    TEACHER_COLUMN,
    FingerprintRecord,
    fingerprint_plan,
)
from gateway.extracts.pseudonyms import recipient_pseudonymizer
from gateway.keys import MasterKey

#: Rows of generalised data shown to the approver (without any ID).
SAMPLE_ROWS = 5


@dataclass(frozen=True)
class Extract:
    """One built extract (see the package docstring)."""

    agreement_id: str
    extract: str
    recipient: str
    request_id: str
    frame: pd.DataFrame
    columns: tuple[str, ...]
    generalisation: tuple[ColumnGeneralisation, ...]
    rows_before: int
    rows_released: int
    suppressed_share: float
    risk_before: Risk
    risk_after: Risk
    k: int
    l: int | None  # noqa: E741 (the literature's name)
    k_achieved: int | None
    l_achieved: int | None
    bands: dict[str, list[str]]
    sample: tuple[dict[str, Any], ...]
    fingerprint: FingerprintRecord

    def summary(self) -> dict[str, Any]:
        """What an approver sees and the audit log keeps: JSON-safe, no ID of any kind."""
        return {
            "agreement_id": self.agreement_id,
            "extract": self.extract,
            "recipient": self.recipient,
            "request_id": self.request_id,
            "columns": list(self.columns),
            "generalisation": [
                {
                    "column": g.column,
                    "level": g.level,
                    "level_name": g.level_name,
                    "levels": g.levels,
                }
                for g in self.generalisation
            ],
            "bands": self.bands,
            "rows_before": self.rows_before,
            "rows_released": self.rows_released,
            "suppressed_share": self.suppressed_share,
            "risk_before": _risk(self.risk_before),
            "risk_after": _risk(self.risk_after),
            "k": self.k,
            "l": self.l,
            "k_achieved": self.k_achieved,
            "l_achieved": self.l_achieved,
            "sample": [dict(row) for row in self.sample],
        }

    def to_csv_bytes(self) -> bytes:
        text: str = self.frame.to_csv(index=False)
        return text.encode("utf-8")


def _risk(risk: Risk) -> dict[str, Any]:
    return {
        "records": risk.records,
        "classes": risk.classes,
        "unique_share": risk.unique_share,
        "prosecutor_rate": risk.prosecutor_rate,
        "max_risk": risk.max_risk,
    }


def _field_sources(agreement: Agreement, spec: ExtractSpec) -> dict[str, tuple[str, str]]:
    """Field ref -> (dataset, column), as the agreement checker resolved them."""
    sources: dict[str, tuple[str, str]] = {}
    for ref in spec.fields:
        dataset_name, dot, column = ref.rpartition(".")
        if dot:
            sources[ref] = (dataset_name, column)
            continue
        storing = [
            name for name in spec.datasets if column in agreement.dataset(name).stored_fields
        ]
        sources[ref] = (storing[0], column)  # several only for a link_on column
    return sources


def band_labels(cuts: Sequence[float]) -> list[str]:
    """The labels of the bands ``cuts`` make, lowest first."""

    def spell(value: float) -> str:
        return str(int(value)) if float(value).is_integer() else str(value)

    labels = [f"under {spell(cuts[0])}"]
    labels += [f"{spell(a)} to under {spell(b)}" for a, b in itertools.pairwise(cuts)]
    labels.append(f"{spell(cuts[-1])} or more")
    return labels


def _banded(values: pd.Series, cuts: Sequence[float]) -> pd.Series:
    labels = band_labels(cuts)

    def band(value: Any) -> Any:
        if value is None or pd.isna(value):
            return None
        return labels[sum(value >= cut for cut in cuts)]

    return values.map(band).astype(object)


def _read_dataset(
    session: Session, agreement: Agreement, name: str, columns: list[str], key_version: int
) -> pd.DataFrame:
    from gateway.release import rows as release_rows
    from gateway.storage import batches

    dataset = agreement.dataset(name)
    connection = session.connection()
    uploads = release_rows._accepted_uploads(connection, agreement, name)
    readable = [seq for seq, version in uploads if version == key_version]
    if not uploads:
        raise release_rows.NotUploaded(
            f"no accepted upload of dataset {name!r} (provided by {dataset.provided_by}) "
            "yet: an extract over it would hold nobody; upload it first",
            details=[{"dataset": name, "reason": "no accepted upload"}],
        )
    if not readable:
        raise release_rows.UploadedUnderOldKey(
            f"dataset {name!r} is stored only under an earlier key version: its rows no "
            "longer link; upload it again before asking",
            details=[{"dataset": name, "reason": "stored under an earlier key"}],
        )
    table = batches.read_rows(connection, dataset.schema_name, readable, columns)
    frame = table.select([batches.EDUCATOR_REF, *columns]).to_pandas()
    # A teacher's repeated rows (two uploads of one year) would repeat joined rows.
    return frame.drop_duplicates(ignore_index=True)


def build_extract(
    session: Session,
    *,
    agreement: Agreement,
    spec: ExtractSpec,
    recipient: str,
    request_id: str,
    master_key: MasterKey,
) -> Extract:
    """The extract ``spec`` of ``agreement`` for ``recipient``, marked for ``request_id``.

    See the package docstring for what it does and raises.
    """
    if recipient not in spec.recipients:
        raise PolicyViolation(
            f"party {recipient!r} is not a recipient of extract {spec.name!r} "
            f"(recipients: {', '.join(spec.recipients)})"
        )
    if not request_id:
        raise SchemaError("an extract needs the id of the request it is built for")
    agreement.require_in_force(datetime.now(UTC).date(), refused="extracts")
    version = keys.current_key_version(session, agreement.id)
    if version is None or version.salt is None:
        raise NotFound(f"agreement {agreement.id!r} has no usable pseudonym key")

    sources = _field_sources(agreement, spec)
    frames: list[pd.DataFrame] = []
    for name in spec.datasets:
        stored = agreement.dataset(name).stored_fields
        wanted = [column for ref, (dataset, column) in sources.items() if dataset == name]
        links = [column for column in spec.link_on if column in stored]
        columns = list(dict.fromkeys([*wanted, *links]))
        frames.append(_read_dataset(session, agreement, name, columns, version.version))
    joined = frames[0]
    for frame in frames[1:]:
        shared = [c for c in spec.link_on if c in joined.columns and c in frame.columns]
        joined = joined.merge(frame, on=["educator_ref", *shared], how="inner")
    joined = joined.reset_index(drop=True)

    # The internal pseudonym never leaves this function: only the recipient's ID does.
    from gateway.storage.educators import pseudonyms_of

    refs = [int(ref) for ref in joined["educator_ref"].unique()]
    internal = pseudonyms_of(
        session.connection(), agreement_id=agreement.id, key_version=version.version, refs=refs
    )
    rekey = recipient_pseudonymizer(
        session, master_key, agreement_id=agreement.id, recipient=recipient
    )
    if len(internal) != len(refs):  # a stored row whose educator is gone: never guess
        raise NotFound(
            f"{len(refs) - len(internal)} stored row reference(s) of agreement "
            f"{agreement.id!r} have no educator under key version {version.version}"
        )
    teacher_ids = {ref: rekey.pseudonym(internal[ref]) for ref in refs}
    columns = [column for _, column in sources.values()]
    frame = pd.DataFrame(
        {TEACHER_COLUMN: [teacher_ids[int(ref)] for ref in joined["educator_ref"]]}
    )
    for column in columns:
        frame[column] = joined[column].astype(object).to_numpy()
    del joined, internal

    bands: dict[str, list[str]] = {}
    for ref, cuts in spec.bands.items():
        column = sources[ref][1]
        frame[column] = _banded(frame[column], cuts)
        bands[column] = band_labels(cuts)

    last_year = agreement.ends.year
    ladders: dict[str, Ladder] = {}
    for ref in spec.quasi_identifiers:
        dataset, column = sources[ref]
        ladders[column] = ladder(agreement.hierarchy(dataset, column), last_year=last_year)
    plan = fingerprint_plan(master_key, request_id, agreement_id=agreement.id)
    result = anonymise(
        frame,
        quasi_identifiers=ladders,
        sensitive=[sources[ref][1] for ref in spec.sensitive],
        person=TEACHER_COLUMN,
        k=spec.k,
        l=spec.l,
        max_suppressed=spec.max_suppressed,
        tie_break=plan.tie_break,
    )
    released = result.frame[[TEACHER_COLUMN, *columns]]
    record_ids = plan.record_ids(released)
    released = released.assign(**{RECORD_COLUMN: record_ids})
    released = plan.shuffled(released, record_ids)
    ordered = (TEACHER_COLUMN, RECORD_COLUMN, *columns)
    released = released[list(ordered)]

    sample = tuple(
        {column: _plain(row[column]) for column in columns}
        for _, row in released.head(SAMPLE_ROWS).iterrows()
    )
    record = FingerprintRecord(
        request_id=request_id,
        agreement_id=agreement.id,
        recipient=recipient,
        extract=spec.name,
        columns=ordered,
        rows=len(released),
        node=result.node,
        tied_nodes=result.tied_nodes,
        teachers=tuple(sorted({plan.teacher_digest(t) for t in released[TEACHER_COLUMN]})),
    )
    return Extract(
        agreement_id=agreement.id,
        extract=spec.name,
        recipient=recipient,
        request_id=request_id,
        frame=released,
        columns=ordered,
        generalisation=result.generalisation,
        rows_before=result.rows_before,
        rows_released=result.rows_released,
        suppressed_share=result.suppressed_share,
        risk_before=result.risk_before,
        risk_after=result.risk_after,
        k=spec.k,
        l=spec.l,
        k_achieved=result.k_achieved,
        l_achieved=result.l_achieved,
        bands=bands,
        sample=sample,
        fingerprint=record,
    )


def _plain(value: Any) -> Any:
    """A cell as a JSON value."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return None
    if hasattr(value, "item"):
        return value.item()
    return value
