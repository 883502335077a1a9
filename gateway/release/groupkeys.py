"""Group keys as text: one spelling of a cell's key for storage and comparison."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from gateway.release.suppression import GroupKey


def plain(value: Any) -> Any:
    """A numpy scalar as the plain Python value it stands for."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return int(value) if float(value).is_integer() else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def key_text(key: GroupKey) -> str:
    return json.dumps([plain(v) for v in key], separators=(",", ":"), default=str)


def named_key(dimensions: Sequence[str], key: GroupKey) -> str:
    """A cell's key as dimension -> value, in name order: the same cell whatever the
    order of ``group_by`` (the suppression memory's key)."""
    named = dict(zip(dimensions, (plain(v) for v in key), strict=True))
    return json.dumps(named, sort_keys=True, separators=(",", ":"), default=str)


def named_group(dimensions: Sequence[str], key: GroupKey) -> dict[str, Any]:
    return dict(zip(dimensions, (plain(v) for v in key), strict=True))
