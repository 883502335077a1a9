"""Generalisation and suppression of quasi-identifiers (being written)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ColumnGeneralisation:
    """How far one quasi-identifier was generalised: level 0 is as recorded."""

    column: str
    level: int
    level_name: str
    levels: int


@dataclass(frozen=True)
class Risk:
    """Re-identification risk of a set of records on their quasi-identifiers."""

    records: int
    classes: int
    unique_share: float
    prosecutor_rate: float
    max_risk: float
