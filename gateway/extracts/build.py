"""Assembling an extract from the stored rows (being written)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Extract:
    """One built extract (see the package docstring)."""


def build_extract(*args: Any, **kwargs: Any) -> Extract:
    raise NotImplementedError
