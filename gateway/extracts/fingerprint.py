"""Fingerprints of extracts, and naming the extract a found copy came from.

Every extract is marked for its request, with a key derived from the master key for
that agreement and request (never stored; the record of the marks holds no secret):

- **record IDs**: each row carries ``record_id``, a keyed MAC of the row's own
  content (its other cells' values, sorted, so column order and names do not matter).
  A copy's rows prove, one by one, which request they came from: reordering or
  renaming columns, shuffling rows or keeping only some of them changes nothing, and a
  row edited afterwards simply stops counting. Another request's key (another
  recipient, or the same recipient asking again) gives other MACs: it matches no row.
- **teacher IDs**: the record keeps a keyed digest of each recipient teacher ID in
  the file. They are the recipient's own (gateway/extracts/pseudonyms.py), so a copy
  stripped of its record IDs still names its recipient and agreement.
- **a keyed choice among equally good generalisations**: when several lattice nodes
  tie (same height, same suppression), the key picks one; the choice is recorded.
- **a keyed row order**: rows are shuffled by the key, so a file's order says nothing
  of the order data was uploaded in (a copy re-sorted or shuffled is still identified
  by the marks above, never by its order).

:func:`identify` scores each candidate by the share of the copy's rows whose record ID
verifies under that candidate's key or, when no record ID verifies for any candidate
(none kept, or every row edited), the share of its teacher IDs in the candidate's
digests (which names the recipient and agreement, not which of the recipient's
requests), and names the best above one half.
"""

from __future__ import annotations

import binascii
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from gateway.extracts.pseudonyms import TEACHER_ID_PATTERN
from gateway.keys import MasterKey
from gateway.pseudonym import hkdf_sha256

#: Domain-separation label of the fingerprint key; never equal to another derivation's.
DERIVATION_LABEL = b"teacher-gateway/extract-fingerprint/v1"
SCHEME = "record-id-mac/v1"
TEACHER_COLUMN = "teacher_id"
RECORD_COLUMN = "record_id"
#: Letters in a record ID (4 bits each: 64 bits).
RECORD_ID_LENGTH = 16
RECORD_ID_PATTERN = re.compile(r"^[a-p]{16}$")
#: A copy is attributed when more than this share of its rows (or teachers) verify.
MATCH_THRESHOLD = 0.5

_HEX_TO_LETTER = bytes.maketrans(b"0123456789abcdef", b"abcdefghijklmnop")


def _letters(digest: bytes) -> str:
    return binascii.hexlify(digest).translate(_HEX_TO_LETTER).decode("ascii")


def canonical_value(value: Any) -> str:
    """One spelling of a cell, whether it was read back from CSV, Parquet or a frame:
    2024, 2024.0 and "2024" are all "2024"; missing is empty."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value)
    # A whole number read back as text by one reader is a number to another.
    if re.fullmatch(r"-?\d+(\.0*)?", text):
        return str(int(float(text))) if "." in text else str(int(text))
    return text


class FingerprintPlan:
    """The marks of one request's extract. Holds its key in memory only."""

    def __init__(self, key: bytes, *, request_id: str) -> None:
        self._keyed = crypto_hmac.HMAC(key, hashes.SHA256())
        self.request_id = request_id

    def __repr__(self) -> str:
        return f"FingerprintPlan(request_id={self.request_id!r})"

    def _mac(self, purpose: bytes, message: bytes) -> bytes:
        mac = self._keyed.copy()
        mac.update(purpose + b"\x00" + message)
        return mac.finalize()

    def tie_break(self, node: tuple[int, ...]) -> bytes:
        """The sort key of a lattice node among equally good ones."""
        return self._mac(b"node", ",".join(map(str, node)).encode("ascii"))

    def record_id(self, row: Mapping[str, Any]) -> str:
        """The record ID of a row: a MAC of its other cells' values, sorted, so neither
        the order nor the names of the columns matter."""
        content = "\x1e".join(
            sorted(canonical_value(value) for name, value in row.items() if name != RECORD_COLUMN)
        )
        return _letters(self._mac(b"row", content.encode("utf-8"))[: RECORD_ID_LENGTH // 2])

    def record_ids(self, frame: pd.DataFrame) -> list[str]:
        columns = [c for c in frame.columns if c != RECORD_COLUMN]
        return [
            self.record_id(dict(zip(columns, values, strict=True)))
            for values in frame[columns].itertuples(index=False, name=None)
        ]

    def teacher_digest(self, teacher_id: str) -> str:
        return _letters(self._mac(b"teacher", teacher_id.encode("ascii"))[:8])

    def shuffled(self, frame: pd.DataFrame, record_ids: Sequence[str]) -> pd.DataFrame:
        """The rows in a keyed order (by a MAC of each record ID)."""
        order = sorted(
            range(len(frame)), key=lambda i: self._mac(b"order", record_ids[i].encode("ascii"))
        )
        return frame.iloc[order].reset_index(drop=True)


def fingerprint_key(master_key: MasterKey, *, agreement_id: str, request_id: str) -> bytes:
    """The request's fingerprint key (HKDF of the master key with its own label)."""
    info = b"\x00".join(
        (DERIVATION_LABEL, agreement_id.encode("utf-8"), request_id.encode("utf-8"))
    )
    return hkdf_sha256(ikm=master_key.material, salt=None, info=info, length=32)


def fingerprint_plan(
    master_key: MasterKey, request_id: str, *, agreement_id: str
) -> FingerprintPlan:
    """The marks an extract built for ``request_id`` will carry."""
    key = fingerprint_key(master_key, agreement_id=agreement_id, request_id=request_id)
    return FingerprintPlan(key, request_id=request_id)


@dataclass(frozen=True)
class FingerprintRecord:
    """What identifies one extract later; holds no secret, so it may go to the audit log
    (``teachers`` are keyed digests, 16 letters each, of the file's teacher IDs)."""

    request_id: str
    agreement_id: str
    recipient: str
    extract: str
    columns: tuple[str, ...]
    rows: int
    #: The lattice node chosen (a level per quasi-identifier) and how many tied with it.
    node: tuple[int, ...]
    tied_nodes: int
    teachers: tuple[str, ...]
    scheme: str = SCHEME

    def to_dict(self) -> dict[str, Any]:
        return {
            "scheme": self.scheme,
            "request_id": self.request_id,
            "agreement_id": self.agreement_id,
            "recipient": self.recipient,
            "extract": self.extract,
            "columns": list(self.columns),
            "rows": self.rows,
            "node": list(self.node),
            "tied_nodes": self.tied_nodes,
            "teachers": list(self.teachers),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FingerprintRecord:
        return cls(
            request_id=str(data["request_id"]),
            agreement_id=str(data["agreement_id"]),
            recipient=str(data["recipient"]),
            extract=str(data["extract"]),
            columns=tuple(data["columns"]),
            rows=int(data["rows"]),
            node=tuple(int(level) for level in data["node"]),
            tied_nodes=int(data["tied_nodes"]),
            teachers=tuple(data["teachers"]),
            scheme=str(data.get("scheme", SCHEME)),
        )


@dataclass(frozen=True)
class Identification:
    """Which recorded extract a found copy came from, and how sure."""

    record: FingerprintRecord | None
    #: The best candidate's score: the share of the copy's rows whose record ID verifies
    #: under its key (or, with no record IDs, of its teacher IDs in its digests).
    score: float
    rows_checked: int
    #: request_id -> score, for every candidate.
    scores: dict[str, float]
    #: What the scores count: "record_id" (rows verified), "teacher_id" (teachers
    #: known), or None (the copy has neither).
    basis: str | None = None

    @property
    def request_id(self) -> str | None:
        return None if self.record is None else self.record.request_id


def _column_like(frame: pd.DataFrame, name: str, pattern: re.Pattern[str]) -> str | None:
    """The column called ``name``, else the first whose values all look like it (a copy
    may rename columns)."""
    if name in frame.columns:
        return name
    for column in frame.columns:
        values = frame[column].dropna()
        if len(values) and all(isinstance(v, str) and pattern.fullmatch(v) for v in values):
            return str(column)
    return None


def identify(
    frame: pd.DataFrame,
    candidates: Sequence[FingerprintRecord] | Mapping[str, FingerprintRecord | Mapping[str, Any]],
    *,
    master_key: MasterKey,
) -> Identification:
    """The recorded extract ``frame`` (a found copy) came from; see the module docstring.

    ``candidates``: the recorded extracts (records, or a mapping of request id to a
    record or its :meth:`FingerprintRecord.to_dict`).
    """
    if isinstance(candidates, Mapping):
        records = [
            item if isinstance(item, FingerprintRecord) else FingerprintRecord.from_dict(item)
            for item in candidates.values()
        ]
    else:
        records = list(candidates)
    frame = frame.copy()
    frame.columns = [str(column) for column in frame.columns]
    record_column = _column_like(frame, RECORD_COLUMN, RECORD_ID_PATTERN)
    teacher_column = _column_like(frame, TEACHER_COLUMN, TEACHER_ID_PATTERN)
    if record_column is not None and record_column != RECORD_COLUMN:
        frame = frame.rename(columns={record_column: RECORD_COLUMN})
    if teacher_column is not None and teacher_column != TEACHER_COLUMN:
        frame = frame.rename(columns={teacher_column: TEACHER_COLUMN})
        teacher_column = TEACHER_COLUMN
    rows = len(frame)
    ranked: list[tuple[float, float, FingerprintRecord]] = []
    found = frame[RECORD_COLUMN].astype(str).tolist() if record_column is not None else []
    distinct = (
        set(frame[teacher_column].dropna().astype(str)) if teacher_column is not None else set()
    )
    for record in records:
        plan = fingerprint_plan(master_key, record.request_id, agreement_id=record.agreement_id)
        teachers = 0.0
        if distinct:
            digests = set(record.teachers)
            teachers = sum(plan.teacher_digest(t) in digests for t in distinct) / len(distinct)
        verified = 0.0
        # A record ID covers the row's teacher ID: when none of the copy's teachers is
        # this extract's, none of its rows can verify, and the MACs are not computed.
        if found and (teacher_column is None or teachers > 0):
            expected = plan.record_ids(frame)
            verified = sum(a == b for a, b in zip(found, expected, strict=True)) / rows
        ranked.append((verified, teachers, record))
    # A copy whose record IDs verify for some candidate is judged by them (another
    # request of the same recipient shares its teacher IDs); otherwise (no record IDs,
    # or cells edited) by its teacher IDs, which name the recipient and agreement.
    basis = "record_id" if any(item[0] > 0 for item in ranked) else "teacher_id"
    scores = {record.request_id: (v if basis == "record_id" else t) for v, t, record in ranked}
    ranked.sort(key=lambda item: (item[0], item[1]), reverse=True)
    if not ranked or (basis == "teacher_id" and not distinct):
        return Identification(record=None, score=0.0, rows_checked=rows, scores=scores, basis=None)
    best = ranked[0][2]
    best_score = scores[best.request_id]
    return Identification(
        record=best if best_score > MATCH_THRESHOLD else None,
        score=best_score,
        rows_checked=rows,
        scores=scores,
        basis=basis,
    )
