"""An extract's file, and the record of where it came from that travels with it.

Every downloaded extract says, in its own metadata, who received it under which
agreement, who approved it, when its download window closed and when the agreement
requires it destroyed:

- **Parquet** (the default: types kept, one file): the record is the file's key-value
  metadata under :data:`METADATA_KEY`, beside pandas' own; any Parquet reader shows it
  (``pyarrow.parquet.read_schema(path).metadata``).
- **CSV**: a zip holding the CSV, untouched (it opens in Excel and in every CSV reader,
  which a commented header line would break), and the record beside it as
  ``<name>.metadata.json``.

Metadata is easy to strip; the fingerprint in the rows (:mod:`gateway.extracts.fingerprint`)
is what still names a copy that lost it (``gateway extracts identify FILE``).
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gateway.errors import SchemaError

if TYPE_CHECKING:
    import pandas as pd

    from gateway.agreements.models import Agreement
    from gateway.storage.extracts import ExtractRequest

#: Download formats, the default first.
FORMATS = ("parquet", "csv")
#: The Parquet key-value metadata key of the record.
METADATA_KEY = b"teacher_gateway.extract"
#: What the record calls itself, so a reader knows which fields to expect.
METADATA_FORMAT = "teacher-gateway-extract/v1"
# A fixed time for zip entries: the same rows give the same bytes.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class WrittenExtract:
    file_name: str
    media_type: str
    data: bytes


def _stamp(moment: Any) -> str | None:
    from datetime import UTC

    if moment is None:
        return None
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return str(utc.isoformat())


def extract_metadata(row: ExtractRequest, agreement: Agreement) -> dict[str, Any]:
    """The record a downloaded file carries (no ID of a teacher, no name, no key)."""
    approvals = json.loads(row.approvals or "[]")
    return {
        "format": METADATA_FORMAT,
        "request_id": row.id,
        "agreement": {"id": agreement.id, "version": agreement.version},
        "extract": row.extract_name,
        "recipient": row.recipient_party,
        "requested_by": row.requester_credential_id,
        "requested_at": _stamp(row.created_at),
        "approved_by": [
            {"person": a.get("person"), "credential": a.get("credential"), "at": a.get("at")}
            for a in approvals
        ],
        "approving_party": row.decided_by_party,
        "approved_at": _stamp(row.decided_at),
        "download_expires_at": _stamp(row.expires_at),
        "downloaded_at": _stamp(row.downloaded_at),
        "destroy_by": agreement.ends.isoformat(),
        "content_sha256": row.content_sha256,
        "terms": (
            f"Confidential data shared under agreement {agreement.id} for its purpose only; "
            "no attempt to identify any teacher; return or destroy this file and every "
            f"copy when the agreement ends (by {agreement.ends.isoformat()}), and certify it."
        ),
    }


def _file_base(metadata: dict[str, Any]) -> str:
    return f"{metadata['extract']}-{metadata['request_id']}"


def write_extract(parquet: bytes, metadata: dict[str, Any], file_format: str) -> WrittenExtract:
    """The file for ``file_format``: the stored rows, exactly, with the record."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(parquet))
    record = json.dumps(metadata, sort_keys=True, indent=2).encode("utf-8")
    base = _file_base(metadata)
    if file_format == "parquet":
        existing = dict(table.schema.metadata or {})
        existing[METADATA_KEY] = record
        sink = io.BytesIO()
        pq.write_table(table.replace_schema_metadata(existing), sink)
        return WrittenExtract(f"{base}.parquet", "application/vnd.apache.parquet", sink.getvalue())
    if file_format == "csv":
        text = io.BytesIO()
        pacsv.write_csv(table.replace_schema_metadata(None), text)
        archive = io.BytesIO()
        with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
            for name, content in (
                (f"{base}.csv", text.getvalue()),
                (f"{base}.metadata.json", record),
            ):
                info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o600 << 16
                bundle.writestr(info, content)
        return WrittenExtract(f"{base}.zip", "application/zip", archive.getvalue())
    raise SchemaError(f"unknown format {file_format!r}; formats: {', '.join(FORMATS)}")


def read_extract(data: bytes, file_name: str) -> tuple[pd.DataFrame, dict[str, Any] | None]:
    """A found copy's rows, and its record when it still has one.

    Reads Parquet (by its magic bytes), a zip of the gateway's (its CSV and record), or a
    CSV; a file that is none of them is refused by name.
    """
    import pyarrow.parquet as pq

    if data[:4] == b"PAR1":
        import pyarrow as pa

        try:
            table = pq.read_table(io.BytesIO(data))
        except (pa.ArrowException, OSError):
            raise SchemaError(
                f"{file_name}: starts as a Parquet file but cannot be read as one "
                "(cut short or damaged)"
            ) from None
        return table.to_pandas(), _parsed((table.schema.metadata or {}).get(METADATA_KEY))
    if data[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as bundle:
                names = bundle.namelist()
                csvs = [n for n in names if n.lower().endswith(".csv")]
                if len(csvs) != 1:
                    raise SchemaError(f"{file_name}: a zip with one CSV file was expected")
                frame = _read_csv(bundle.read(csvs[0]), f"{file_name}: {csvs[0]}")
                records = [n for n in names if n.endswith(".metadata.json")]
                metadata = _parsed(bundle.read(records[0])) if records else None
                return frame, metadata
        except zipfile.BadZipFile:
            raise SchemaError(f"{file_name}: not a readable zip file") from None
    return _read_csv(data, file_name), None


def _parsed(raw: bytes | None) -> dict[str, Any] | None:
    """A copy's record, or None when it has none or it is not a JSON object (a record
    is only reported beside the rows' fingerprint, which is what names the copy)."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _read_csv(data: bytes, where: str) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
    except pd.errors.ParserError as error:
        # pandas names the line or row (never a cell's value): "Expected 2 fields in
        # line 3, saw 3", "EOF inside string starting at row 1".
        reason = str(error).removeprefix("Error tokenizing data. C error: ").strip()
        raise SchemaError(f"{where}: not a CSV the gateway can read: {reason}") from None
    except (UnicodeDecodeError, pd.errors.EmptyDataError):
        raise SchemaError(f"{where}: not a CSV, Parquet or zip file the gateway can read") from None
