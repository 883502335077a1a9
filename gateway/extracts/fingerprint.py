"""Per-request fingerprints of extracts, and identifying a found copy (being written)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from gateway.keys import MasterKey


@dataclass(frozen=True)
class FingerprintRecord:
    """What identifies one extract; holds no secret."""

    request_id: str
    agreement_id: str
    recipient: str
    extract: str
    columns: tuple[str, ...]
    rows: int
    marks: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Identification:
    record: FingerprintRecord | None
    score: float
    rows_checked: int
    scores: dict[str, float]


def identify(
    frame: pd.DataFrame, candidates: Sequence[FingerprintRecord], *, master_key: MasterKey
) -> Identification:
    raise NotImplementedError
