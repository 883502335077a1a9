"""Uploading an extract: the one domain function behind ``gateway upload`` and the API.

The path of an upload, in order:

1. the agreement must be in force, the party must sign it and provide the dataset;
2. the file is recognised by content, its size checked, CSV checked to be UTF-8;
3. header names are matched to canonical columns (the agreement's header map,
   then the schema's names; case and surrounding spaces ignored); direct
   identifiers, columns not on the allowlist and unknown columns are dropped
   here, and their values are never read;
4. the file is read once, in chunks: hashed, checked to be UTF-8 and parsed in the
   same pass; each kept column is validated and typed; educator IDs are normalised
   and replaced by the agreement's keyed pseudonym; duplicate keys are found;
5. good rows are stored in transactions of ten chunks each (:data:`STEP_CHUNKS`),
   under an upload still ``pending``, which no release reads; one last transaction writes the
   receipt and the audit event and switches the upload on (status ``accepted``), so
   its rows appear all at once. A failure part-way deletes what was stored, and a
   killed process's pending upload is deleted by the next upload of the agreement
   (:mod:`gateway.storage.staging`). Rows of the same dataset and school (or
   cohort) year from an earlier upload are replaced: deleted in that last
   transaction, and the receipt says so.

A refused upload leaves no rows, only its receipt and its audit event. No raw
ID, name or cell value reaches the database, a receipt, a log or an error:
problems are described by row, column and what was expected.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from sqlalchemy import Connection, select, update
from sqlalchemy.orm import Session

from gateway import audit, keys, termination
from gateway.agreements.models import Agreement, AgreementDataset, ColumnSpec, DatasetSchema
from gateway.context import Gateway
from gateway.errors import GatewayError, PolicyViolation, SchemaError
from gateway.ingest.duplicates import DuplicateKeys
from gateway.ingest.educators import EducatorIndex
from gateway.ingest.readers import Chunk, FileFacts, OpenedFile, inspect_file, open_chunks
from gateway.ingest.validate import ProblemGroup, first_problems, validate_column
from gateway.pseudonym import Normalisation
from gateway.storage import batches, staging
from gateway.storage.datasets import Upload, UploadPeriod

BoolArray = np.ndarray[Any, np.dtype[np.bool_]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]

#: How many problems a receipt lists; the total is always counted.
PROBLEMS_LISTED = 100
_PERIOD_COLUMNS = ("school_year", "cohort_year")


@dataclass(frozen=True)
class UploadProblem:
    """One problem of an upload, located by row and column, never quoting a value."""

    row: int | None
    column: str | None
    header: str | None
    expected: str
    found: str

    def describe(self) -> str:
        where = []
        if self.row is not None:
            where.append(f"row {self.row}")
        if self.header is not None:
            label = f"column {self.header!r}"
            if self.column is not None and self.column != self.header:
                label += f" ({self.column})"
            where.append(label)
        prefix = ", ".join(where)
        return f"{prefix + ': ' if prefix else ''}expected {self.expected}; found {self.found}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "column": self.column,
            "header": self.header,
            "expected": self.expected,
            "found": self.found,
            "message": self.describe(),
        }


class UploadRefused(SchemaError):
    """The upload was refused whole; its receipt lists why. Nothing was stored."""

    code = "upload_refused"

    def __init__(self, message: str, *, receipt: dict[str, Any]) -> None:
        super().__init__(message, details=receipt.get("problems", []))
        self.receipt = receipt

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        body["error"]["receipt"] = self.receipt  # upload id, counts, audit event
        return body


@dataclass(frozen=True)
class ColumnPlan:
    """How the file's header maps onto the dataset's columns."""

    kept: dict[str, int]  # canonical column -> header position
    headers: list[str]
    dropped: list[dict[str, str | None]]

    def header_of(self, column: str) -> str:
        return self.headers[self.kept[column]]


def _header_key(name: str) -> str:
    return name.strip().casefold()


def plan_columns(
    header: Sequence[str], *, dataset: AgreementDataset, schema: DatasetSchema, file_name: str
) -> ColumnPlan:
    """Match header names to canonical columns and decide what is kept and dropped."""
    lookup: dict[str, str] = {_header_key(c): c for c in schema.columns}
    lookup.update({_header_key(h): c for h, c in dataset.header_map.items()})
    kept: dict[str, int] = {}
    dropped: list[dict[str, str | None]] = []
    stored = set(dataset.stored_fields)
    for position, raw in enumerate(header):
        name = raw.strip()
        canonical = lookup.get(_header_key(name))
        if canonical is None:
            dropped.append({"header": name, "column": None, "reason": "unknown"})
        elif schema.columns[canonical].role == "direct_identifier":
            dropped.append({"header": name, "column": canonical, "reason": "direct identifier"})
        elif canonical not in stored:
            dropped.append({"header": name, "column": canonical, "reason": "not allowed"})
        elif canonical in kept:
            raise SchemaError(
                f"{file_name}: row 1: columns {header[kept[canonical]].strip()!r} and "
                f"{name!r} both map to {canonical!r}; keep one"
            )
        else:
            kept[canonical] = position
    missing = [
        c
        for c, spec in schema.columns.items()
        if c in stored and c not in kept and (spec.required or spec.role == "educator_id")
    ]
    if missing:
        expected_headers = []
        for column in missing:
            aliases = [h for h, c in dataset.header_map.items() if c == column]
            expected_headers.append(
                column + (f" (or {', '.join(repr(a) for a in aliases)})" if aliases else "")
            )
        raise SchemaError(
            f"{file_name}: row 1: required column(s) missing: {'; '.join(expected_headers)}"
        )
    return ColumnPlan(kept=kept, headers=[h.strip() for h in header], dropped=dropped)


def _normalisation(schema: DatasetSchema) -> Normalisation | None:
    column = schema.educator_id_column
    if column is None:
        return None
    spec = schema.columns[column]
    settings = spec.normalization
    kwargs: dict[str, Any] = {}
    if settings is not None:
        kwargs.update(
            trim=settings.trim,
            upper=settings.upper,
            strip_leading_zeros=settings.strip_leading_zeros,
        )
    if spec.pattern is not None:
        kwargs["pattern"] = spec.pattern
    return Normalisation(**kwargs)


@dataclass
class _Tally:
    """Running counts of one upload."""

    rows_read: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    problem_count: int = 0
    problems: list[UploadProblem] = field(default_factory=list)
    periods: dict[int, int] = field(default_factory=dict)
    key_version: int | None = None

    def add_problems(self, problems: Iterable[UploadProblem], count: int) -> None:
        self.problem_count += count
        for problem in problems:
            if len(self.problems) >= PROBLEMS_LISTED:
                break
            self.problems.append(problem)


def upload_extract(
    gateway: Gateway,
    *,
    agreement_id: str,
    party: str,
    dataset: str,
    path: Path,
    actor: audit.Actor,
    display_name: str | None = None,
    sheet: str | None = None,
    progress: Callable[[UploadProgress], None] | None = None,
) -> dict[str, Any]:
    """Validate, pseudonymise and store one extract; return its receipt.

    Raises :class:`UploadRefused` (with the receipt) when the file is refused,
    and :class:`PolicyViolation` or ``NotFound`` when the agreement does not
    let this party upload this dataset. Every outcome is in the audit log.
    ``progress``, if given, is called after each chunk and at each stage.
    """
    name = display_name or path.name
    upload_id = str(uuid.uuid4())
    try:
        agreement = gateway.agreement(agreement_id)
    except GatewayError as error:
        _record_refusal(gateway, None, upload_id, dataset, party, actor, error.message, None, None)
        raise
    try:
        agreement_dataset, schema = _authorise(gateway, agreement, party=party, dataset=dataset)
    except GatewayError as error:
        _record_refusal(
            gateway, agreement, upload_id, dataset, party, actor, error.message, None, None
        )
        raise
    facts: FileFacts | None = None
    opened: OpenedFile | None = None
    try:
        facts = inspect_file(path, display_name=name, max_bytes=gateway.settings.max_upload_bytes)
        opened = open_chunks(
            path,
            facts,
            sheet=sheet,
            chunk_rows=gateway.settings.upload_chunk_rows,
            max_rows=gateway.settings.max_upload_rows,
        )
        plan = plan_columns(opened.header, dataset=agreement_dataset, schema=schema, file_name=name)
        return _store(
            gateway,
            agreement=agreement,
            dataset=agreement_dataset,
            schema=schema,
            party=party,
            actor=actor,
            upload_id=upload_id,
            opened=opened,
            plan=plan,
            progress=progress,
        )
    except UploadRefused:
        raise
    except SchemaError as error:
        _hash_rest(opened)
        reason = error.message.replace(name, "the uploaded file")
        receipt = _record_refusal(
            gateway, agreement, upload_id, dataset, party, actor, reason, facts, None
        )
        raise UploadRefused(error.message, receipt=receipt) from None
    except GatewayError as error:  # no usable key, say: refused, and in the log too
        _hash_rest(opened)
        _record_refusal(
            gateway, agreement, upload_id, dataset, party, actor, error.message, facts, None
        )
        raise
    finally:
        if opened is not None:
            opened.close()


def _hash_rest(opened: OpenedFile | None) -> None:
    """Finish hashing a file whose reading stopped early, so its receipt names it."""
    if opened is None:
        return
    # An encoding problem found on the way is the refusal's reason already.
    with contextlib.suppress(SchemaError):
        opened.sha256()


def _authorise(
    gateway: Gateway, agreement: Agreement, *, party: str, dataset: str
) -> tuple[AgreementDataset, DatasetSchema]:
    gateway.require_active(agreement, refused="uploads")
    agreement.party(party)
    agreement_dataset = agreement.dataset(dataset)
    if agreement_dataset.provided_by != party:
        raise PolicyViolation(
            f"agreement {agreement.id!r}: dataset {dataset!r} is provided by "
            f"{agreement_dataset.provided_by!r}, not {party!r}"
        )
    agreement.require_in_force(datetime.now(UTC).date(), refused="uploads")
    return agreement_dataset, gateway.registry.schema_for(agreement_dataset)


def _store(
    gateway: Gateway,
    *,
    agreement: Agreement,
    dataset: AgreementDataset,
    schema: DatasetSchema,
    party: str,
    actor: audit.Actor,
    upload_id: str,
    opened: OpenedFile,
    plan: ColumnPlan,
    progress: Callable[[UploadProgress], None] | None,
) -> dict[str, Any]:
    tally = _Tally()
    facts = opened.facts
    try:
        return _write(
            gateway,
            agreement=agreement,
            dataset=dataset,
            schema=schema,
            party=party,
            actor=actor,
            upload_id=upload_id,
            opened=opened,
            plan=plan,
            tally=tally,
            progress=progress,
        )
    except _Refused:
        _hash_rest(opened)
    reason = (
        f"{tally.problem_count} problem(s) found; the agreement's profile refuses files "
        "with bad rows"
        if tally.problem_count and agreement.resolved_disclosure.on_bad_rows == "refuse"
        else "no row passed validation"
    )
    receipt = _record_refusal(
        gateway,
        agreement,
        upload_id,
        dataset.name,
        party,
        actor,
        reason,
        facts,
        tally,
        plan=plan,
        key_version=tally.key_version,
    )
    first = tally.problems[0].describe() if tally.problems else reason
    raise UploadRefused(
        f"{facts.name}: upload refused: {tally.problem_count} problem(s); first: {first}",
        receipt=receipt,
    )


class _Refused(Exception):
    """Raised when the file is refused after reading it: its pending rows are deleted."""


@dataclass(frozen=True)
class UploadProgress:
    """Where a running upload is: its stage, the rows and bytes read so far."""

    stage: str  # "reading" | "switching on" | "done"
    rows_read: int
    bytes_read: int
    bytes_total: int


def _write(
    gateway: Gateway,
    *,
    agreement: Agreement,
    dataset: AgreementDataset,
    schema: DatasetSchema,
    party: str,
    actor: audit.Actor,
    upload_id: str,
    opened: OpenedFile,
    plan: ColumnPlan,
    tally: _Tally,
    progress: Callable[[UploadProgress], None] | None,
) -> dict[str, Any]:
    """Store the upload in bounded steps, then switch it on in one transaction
    (:mod:`gateway.storage.staging`); a failure at any point deletes what it stored."""
    with staging.upload_lock(gateway.engine, agreement.id, lock_dir=_lock_dir(gateway)):
        with gateway.sessions() as session, session.begin():
            staging.discard_abandoned(session.connection(), agreement.id)
            mark = staging.educator_mark(session.connection(), agreement.id)
            upload, educators = _begin(
                session,
                gateway,
                agreement=agreement,
                dataset=dataset,
                schema=schema,
                party=party,
                upload_id=upload_id,
                opened=opened,
                tally=tally,
            )
        try:
            _read_and_stage(
                gateway,
                upload=upload,
                agreement=agreement,
                schema=schema,
                opened=opened,
                plan=plan,
                tally=tally,
                educators=educators,
                progress=progress,
            )
            if progress is not None:
                progress(_progress("switching on", tally, opened))
            with gateway.sessions() as session, session.begin():
                receipt = _switch_on(
                    session,
                    upload=upload,
                    agreement=agreement,
                    dataset=dataset,
                    schema=schema,
                    party=party,
                    actor=actor,
                    opened=opened,
                    plan=plan,
                    tally=tally,
                )
        except BaseException:
            with gateway.sessions() as session, session.begin():
                staging.discard(session.connection(), upload.seq)
                staging.discard_educators_after(session.connection(), agreement.id, mark)
            raise
    if progress is not None:
        progress(_progress("done", tally, opened))
    return receipt


def _lock_dir(gateway: Gateway) -> Path:
    """Where SQLite's upload locks live: beside the database file (else the data folder)."""
    database = gateway.engine.url.database
    if gateway.engine.dialect.name == "sqlite" and database and database != ":memory:":
        return Path(database).parent
    return gateway.settings.data_dir


def _progress(stage: str, tally: _Tally, opened: OpenedFile) -> UploadProgress:
    return UploadProgress(
        stage=stage,
        rows_read=tally.rows_read,
        bytes_read=opened.bytes_read,
        bytes_total=opened.facts.size,
    )


def _begin(
    session: Session,
    gateway: Gateway,
    *,
    agreement: Agreement,
    dataset: AgreementDataset,
    schema: DatasetSchema,
    party: str,
    upload_id: str,
    opened: OpenedFile,
    tally: _Tally,
) -> tuple[Upload, EducatorIndex | None]:
    """The pending upload row, and the educator index under the current key version."""
    termination.require_active(session, agreement, refused="uploads")
    normalisation = _normalisation(schema)
    educators: EducatorIndex | None = None
    if normalisation is not None:
        pseudonymizer = keys.pseudonymizer_for(
            session, gateway.master_key, agreement_id=agreement.id, normalisation=normalisation
        )
        tally.key_version = pseudonymizer.key_version
        educators = EducatorIndex(pseudonymizer, agreement_id=agreement.id)
    upload = Upload(
        upload_id=upload_id,
        agreement_id=agreement.id,
        dataset=dataset.name,
        schema_name=schema.name,
        party=party,
        status=staging.PENDING,
        created_at=datetime.now(UTC),
        key_version=tally.key_version,
        file_sha256=opened.facts.sha256,
        file_format=opened.facts.format,
        receipt="{}",
    )
    session.add(upload)
    session.flush()
    return upload, educators


def _read_and_stage(
    gateway: Gateway,
    *,
    upload: Upload,
    agreement: Agreement,
    schema: DatasetSchema,
    opened: OpenedFile,
    plan: ColumnPlan,
    tally: _Tally,
    educators: EducatorIndex | None,
    progress: Callable[[UploadProgress], None] | None,
) -> None:
    """Read every chunk; store the good rows in transactions of a few chunks each."""
    profile = agreement.resolved_disclosure
    refuse_whole = profile.on_bad_rows == "refuse"
    id_column = schema.educator_id_column
    key_columns = [c for c in schema.key if c in plan.kept]
    duplicates = DuplicateKeys(key_columns, schema.columns, id_column) if key_columns else None
    max_rows = gateway.settings.max_upload_rows
    with _Steps(gateway, rows=STEP_CHUNKS * gateway.settings.upload_chunk_rows) as steps:
        _stage_chunks(
            opened,
            steps,
            upload=upload,
            schema=schema,
            plan=plan,
            tally=tally,
            educators=educators,
            duplicates=duplicates,
            profile=profile,
            max_rows=max_rows,
            progress=progress,
        )
    if tally.rows_read == 0:
        raise SchemaError(f"{opened.facts.name}: the file has a header row but no data rows")
    if (refuse_whole and tally.problem_count) or tally.rows_accepted == 0:
        raise _Refused


#: Chunks stored per transaction: few enough to bound what a transaction holds, enough
#: that the pseudonym index (random keys: each step rewrites much of it) is written a
#: tenth as often as with a transaction per chunk.
STEP_CHUNKS = 10


class _Steps:
    """The transactions an upload's chunks are stored in, one per :data:`STEP_CHUNKS`
    chunks' rows; leaving the ``with`` block by an exception rolls back the open one."""

    def __init__(self, gateway: Gateway, *, rows: int) -> None:
        self._gateway = gateway
        self._limit = rows
        self._session: Session | None = None
        self._rows = 0

    def __enter__(self) -> _Steps:
        return self

    def __exit__(self, kind: object, *_: object) -> None:
        if self._session is not None:
            if kind is None:
                self.commit()
            else:
                self._session.rollback()
                self._session.close()
                self._session = None

    def connection(self) -> Connection:
        if self._session is None:
            self._session = self._gateway.sessions()
            self._session.begin()
        return self._session.connection()

    def stored(self, rows: int) -> None:
        self._rows += rows
        if self._rows >= self._limit:
            self.commit()

    def commit(self) -> None:
        if self._session is not None:
            self._session.commit()
            self._session.close()
            self._session = None
        self._rows = 0


def _stage_chunks(
    opened: OpenedFile,
    steps: _Steps,
    *,
    upload: Upload,
    schema: DatasetSchema,
    plan: ColumnPlan,
    tally: _Tally,
    educators: EducatorIndex | None,
    duplicates: DuplicateKeys | None,
    profile: Any,
    max_rows: int,
    progress: Callable[[UploadProgress], None] | None,
) -> None:
    refuse_whole = profile.on_bad_rows == "refuse"
    id_column = schema.educator_id_column
    period_column = _period_column(plan)
    value_columns = [c for c in plan.kept if c != id_column]
    writing = True
    for chunk in opened.chunks:
        tally.rows_read += len(chunk) + len(chunk.ragged)
        if tally.rows_read > max_rows:
            raise SchemaError(
                f"{opened.facts.name}: more than the {max_rows:,} data rows the gateway "
                "accepts in one file; split it by school year and upload each part"
            )
        good, educator_ids, typed = _check_chunk(
            chunk,
            plan=plan,
            schema=schema,
            tally=tally,
            id_column=id_column,
            educators=educators,
            duplicates=duplicates,
            formula_cells=profile.formula_cells,
        )
        tally.rows_rejected += int((~good).sum()) + len(chunk.ragged)
        if refuse_whole and tally.problem_count:
            writing = False  # keep reading only to count and list problems
        if writing and good.any():
            accepted = int(good.sum())
            tally.rows_accepted += accepted
            connection = steps.connection()
            refs: IntArray | None = None
            if educators is not None and educator_ids is not None:
                assert tally.key_version is not None
                refs = educators.references(connection, tally.key_version, educator_ids[good])
            stored = _store_rows(
                connection,
                upload_seq=upload.seq,
                schema_name=schema.name,
                good=good,
                refs=refs,
                typed=typed,
                columns=value_columns,
                period_column=period_column,
            )
            steps.stored(len(chunk))  # rows read: a step spans STEP_CHUNKS chunks
            for period, count in stored.items():
                tally.periods[period] = tally.periods.get(period, 0) + count
        del chunk, typed, good, educator_ids
        if progress is not None:
            progress(_progress("reading", tally, opened))
    steps.commit()
    opened.sha256()  # the whole file has passed: its hash, and the end of its encoding check


def _switch_on(
    session: Session,
    *,
    upload: Upload,
    agreement: Agreement,
    dataset: AgreementDataset,
    schema: DatasetSchema,
    party: str,
    actor: audit.Actor,
    opened: OpenedFile,
    plan: ColumnPlan,
    tally: _Tally,
) -> dict[str, Any]:
    """The upload's one visible step: replace earlier years, receipt, audit event, and
    the status flip that lets releases read its rows, all in the caller's transaction."""
    termination.require_active(session, agreement, refused="uploads")
    connection = session.connection()
    key_version = tally.key_version
    current_key = keys.current_key_version(session, agreement.id)
    if key_version is not None and (current_key is None or current_key.version != key_version):
        raise PolicyViolation(
            f"agreement {agreement.id!r}: its key was rotated during the upload, so the "
            "file's pseudonyms would not link; upload it again (nothing was stored)"
        )
    # What a release under this key version reads now: the pending rows are not in it.
    version_before = batches.data_version(
        connection, agreement_id=agreement.id, dataset=dataset.name, key_version=key_version
    )
    current = session.get(Upload, upload.seq)
    if current is None or current.status != staging.PENDING:
        # Terminated (and deleted) meanwhile: nothing of it is left to switch on.
        raise PolicyViolation(
            f"agreement {agreement.id!r}: the upload was stopped before it was stored"
        )
    upload = current
    upload.status = staging.ACCEPTED
    upload.file_sha256 = opened.sha256()
    session.flush()
    replaced = _replace_earlier(session, upload, _period_column(plan), tally.periods)
    version = batches.data_version(
        connection, agreement_id=agreement.id, dataset=dataset.name, key_version=key_version
    )
    receipt = _receipt(
        upload_id=upload.upload_id,
        status="accepted",
        agreement=agreement,
        dataset=dataset.name,
        schema=schema.name,
        party=party,
        facts=opened.facts,
        tally=tally,
        plan=plan,
        key_version=key_version,
        replaced=replaced,
        reason=None,
        created_at=upload.created_at,
        data_version=version,
        unchanged=version == version_before,
    )
    upload.rows_read = tally.rows_read
    upload.rows_accepted = tally.rows_accepted
    upload.rows_rejected = tally.rows_rejected
    for year, count in sorted(tally.periods.items()):
        session.add(UploadPeriod(upload_seq=upload.seq, period=year, rows=count))
    event = audit.append_event(
        session,
        kind="upload-accepted",
        actor=actor,
        details=_audit_details(receipt),
        agreement=agreement,
    )
    receipt["audit_event"] = event.event_id
    upload.receipt = json.dumps(receipt, sort_keys=True)
    return receipt


def _period_column(plan: ColumnPlan) -> str | None:
    return next((c for c in _PERIOD_COLUMNS if c in plan.kept), None)


def _check_chunk(
    chunk: Chunk,
    *,
    plan: ColumnPlan,
    schema: DatasetSchema,
    tally: _Tally,
    id_column: str | None,
    educators: EducatorIndex | None,
    duplicates: DuplicateKeys | None,
    formula_cells: str,
) -> tuple[BoolArray, IntArray | None, dict[str, pa.Array]]:
    """Validate one chunk: which rows are good, their educators and typed columns."""
    size = len(chunk)
    bad = np.zeros(size, dtype=bool)
    groups: list[ProblemGroup] = []
    typed: dict[str, pa.Array] = {}
    educator_ids: IntArray | None = None
    for column, position in plan.kept.items():
        text = chunk.columns[position]
        spec: ColumnSpec = schema.columns[column]
        if column == id_column and educators is not None:
            educator_ids, missing, invalid = educators.identify(text)
            # The rule in words (the schema's ``rule``), never the regular expression.
            expected = "an educator ID: " + (spec.rule or "in the format the agreement sets")
            for mask, found in ((missing, "an empty cell"), (invalid, "an ID that does not match")):
                positions = np.flatnonzero(mask)
                if positions.size:
                    groups.append(ProblemGroup(positions, column, expected, found))
            bad |= missing | invalid
            continue
        result = validate_column(column, spec, text, formula_cells=formula_cells)
        typed[column] = result.values
        bad |= result.bad
        groups.extend(result.problems)

    if duplicates is not None:
        key_values = {
            c: educator_ids if c == id_column and educator_ids is not None else typed[c]
            for c in duplicates.columns
        }
        repeats = duplicates.find(key_values, ~bad, chunk.row_numbers)
        columns = ", ".join(duplicates.columns)
        for position, first in repeats:
            groups.append(
                ProblemGroup(
                    np.array([position]),
                    None,
                    f"one row per {columns}",
                    f"the same {columns} as row {first}",
                )
            )
        if repeats:
            bad[np.array([p for p, _ in repeats])] = True

    count = sum(len(g.positions) for g in groups) + len(chunk.ragged)
    listed = [
        UploadProblem(
            row=row,
            column=group.column,
            header=plan.header_of(group.column) if group.column else None,
            expected=group.expected,
            found=group.found,
        )
        for row, group in first_problems(groups, chunk.row_numbers, PROBLEMS_LISTED)
    ]
    width = len(plan.headers)
    listed += [
        UploadProblem(
            row=r.row,
            column=None,
            header=None,
            expected=f"{width} fields, as in the header row",
            found=f"{r.found} fields",
        )
        for r in chunk.ragged
    ]
    listed.sort(key=lambda p: p.row or 0)
    tally.add_problems(listed, count)
    return ~bad, educator_ids, typed


def _store_rows(
    connection: Connection,
    *,
    upload_seq: int,
    schema_name: str,
    good: BoolArray,
    refs: IntArray | None,
    typed: Mapping[str, pa.Array],
    columns: Sequence[str],
    period_column: str | None,
) -> dict[int, int]:
    """Store the good rows of a chunk as column batches, one per school (or cohort) year
    (0 when the upload keeps none); how many rows each year got."""
    if not good.any():
        return {}
    keep = pa.array(good)
    kept: dict[str, pa.Array] = {c: typed[c].filter(keep) for c in columns}
    if refs is not None:
        kept[batches.EDUCATOR_REF] = pa.array(refs, pa.int64())
    if period_column is None:
        parts = [(0, kept)]
    else:
        years = np.asarray(kept[period_column].to_numpy(zero_copy_only=False), dtype=np.int64)
        parts = []
        for year in np.unique(years).tolist():
            rows = pa.array(np.flatnonzero(years == year))
            parts.append((year, {c: a.take(rows) for c, a in kept.items()}))
    counts: dict[int, int] = {}
    for period, part in parts:
        batches.write_batch(
            connection, upload_seq=upload_seq, schema_name=schema_name, period=period, columns=part
        )
        counts[period] = len(next(iter(part.values())))
    return counts


def _replace_earlier(
    session: Session,
    upload: Upload,
    period_column: str | None,
    periods: Mapping[int, int],
) -> list[dict[str, Any]]:
    """Delete rows of earlier uploads for the same dataset and years; say what was replaced."""
    replaced: list[dict[str, Any]] = []
    for period in sorted(periods):
        earlier = session.execute(
            select(UploadPeriod, Upload.upload_id)
            .join(Upload, Upload.seq == UploadPeriod.upload_seq)
            .where(
                Upload.agreement_id == upload.agreement_id,
                Upload.dataset == upload.dataset,
                Upload.status == "accepted",
                Upload.seq != upload.seq,
                UploadPeriod.period == period,
                UploadPeriod.replaced_by_seq.is_(None),
            )
        ).all()
        for record, earlier_id in earlier:
            batches.delete_rows(session.connection(), upload_seq=record.upload_seq, period=period)
            session.execute(
                update(UploadPeriod)
                .where(UploadPeriod.upload_seq == record.upload_seq, UploadPeriod.period == period)
                .values(replaced_by_seq=upload.seq)
            )
            replaced.append(
                {
                    "upload_id": earlier_id,
                    "period": period if period_column else None,
                    "rows": record.rows,
                }
            )
    return replaced


def _receipt(
    *,
    upload_id: str,
    status: str,
    agreement: Agreement | None,
    dataset: str,
    schema: str | None,
    party: str,
    facts: FileFacts | None,
    tally: _Tally | None,
    plan: ColumnPlan | None,
    key_version: int | None,
    replaced: list[dict[str, Any]],
    reason: str | None,
    created_at: datetime,
    data_version: str | None = None,
    unchanged: bool | None = None,
) -> dict[str, Any]:
    tally = tally or _Tally()
    return {
        "upload_id": upload_id,
        "status": status,
        "reason": reason,
        "created_at": created_at.isoformat(),
        "agreement": (
            {"id": agreement.id, "version": agreement.version} if agreement is not None else None
        ),
        "dataset": dataset,
        "schema": schema,
        "party": party,
        "file": (
            {"sha256": facts.sha256, "format": facts.format, "bytes": facts.size}
            if facts is not None
            else None
        ),
        "rows": {
            "read": tally.rows_read,
            # A refused file stores nothing, whatever passed validation before it stopped.
            "accepted": tally.rows_accepted if status == "accepted" else 0,
            "rejected": tally.rows_rejected,
        },
        "columns": {
            "kept": [{"column": c, "header": plan.header_of(c)} for c in plan.kept] if plan else [],
            "dropped": plan.dropped if plan else [],
        },
        "key_version": key_version,
        "periods": {str(k): v for k, v in sorted(tally.periods.items())}
        if status == "accepted"
        else {},
        "replaced": replaced,
        # The dataset's data version after this upload (gateway.storage.batches.
        # data_version), and whether the upload left it as it was: the same rows stored.
        "data_version": data_version,
        "unchanged": unchanged,
        "problem_count": tally.problem_count,
        "problems": [p.to_dict() for p in tally.problems],
    }


def _audit_details(receipt: Mapping[str, Any]) -> dict[str, Any]:
    """What the audit log keeps of a receipt: identities, counts and hashes, no problems list."""
    return {
        "upload_id": receipt["upload_id"],
        "status": receipt["status"],
        "reason": receipt["reason"],
        "dataset": receipt["dataset"],
        "party": receipt["party"],
        "file_sha256": (receipt["file"] or {}).get("sha256"),
        "rows": receipt["rows"],
        "columns_kept": [c["column"] for c in receipt["columns"]["kept"]],
        "columns_dropped": [
            {"column": c["column"], "reason": c["reason"]} for c in receipt["columns"]["dropped"]
        ],
        "key_version": receipt["key_version"],
        "replaced": receipt["replaced"],
        "data_version": receipt["data_version"],
        "unchanged": receipt["unchanged"],
        "problem_count": receipt["problem_count"],
    }


def record_refused_request(
    gateway: Gateway,
    *,
    agreement_id: str,
    dataset: str,
    party: str,
    actor: audit.Actor,
    reason: str,
) -> dict[str, Any]:
    """Audit an upload request refused before its file could be read (HTTP adapters)."""
    try:
        agreement: Agreement | None = gateway.agreement(agreement_id)
    except GatewayError:
        agreement = None
    return _record_refusal(
        gateway, agreement, str(uuid.uuid4()), dataset[:64], party[:128], actor, reason, None, None
    )


def _record_refusal(
    gateway: Gateway,
    agreement: Agreement | None,
    upload_id: str,
    dataset: str,
    party: str,
    actor: audit.Actor,
    reason: str,
    facts: FileFacts | None,
    tally: _Tally | None,
    *,
    plan: ColumnPlan | None = None,
    key_version: int | None = None,
) -> dict[str, Any]:
    """Store a refused upload's receipt and audit event (no rows) in a fresh transaction."""
    created_at = datetime.now(UTC)
    receipt = _receipt(
        upload_id=upload_id,
        status="refused",
        agreement=agreement,
        dataset=dataset,
        schema=None,
        party=party,
        facts=facts,
        tally=tally,
        plan=plan,
        key_version=key_version,
        replaced=[],
        reason=reason,
        created_at=created_at,
    )
    with gateway.sessions() as session, session.begin():
        event = audit.append_event(
            session,
            kind="upload-refused",
            actor=actor,
            details=_audit_details(receipt),
            agreement=agreement,
        )
        receipt["audit_event"] = event.event_id
        if agreement is not None:
            session.add(
                Upload(
                    upload_id=upload_id,
                    agreement_id=agreement.id,
                    dataset=dataset[:64],
                    schema_name="",
                    party=party[:128],
                    status="refused",
                    created_at=created_at,
                    key_version=key_version,
                    file_sha256=facts.sha256 if facts else None,
                    file_format=facts.format if facts else None,
                    rows_read=receipt["rows"]["read"],
                    rows_accepted=0,
                    rows_rejected=receipt["rows"]["rejected"],
                    receipt=json.dumps(receipt, sort_keys=True),
                )
            )
    return receipt
