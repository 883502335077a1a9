"""Rules of a hierarchy: how one column coarsens, declared by a schema or an agreement.

A release coarsens a cell that is too small into its parent group, so a
hierarchy must give every value exactly one parent at every level, and a
parent must never be split by the level above it (else a rolled-up cell
would straddle two coarser ones). The rules:

- at each level, every code of the column is in exactly one group: none
  missing, none twice, none that is not a code of the column;
- levels get coarser: each group of a level lies within one group of the next;
- labels are unique within a level (ignoring case and surrounding spaces), and
  level names within a hierarchy, the top included;
- a pool (a window of years) needs an integer column with both range bounds,
  and windows widen from level to level; pools and code groups do not mix;
- on an ordinal column each group is a run of adjacent codes ("ratings 1 to 2").
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from typing import Any

from gateway.agreements.findings import Finding
from gateway.agreements.models import (
    ColumnSpec,
    Hierarchy,
    HierarchyCode,
    HierarchyLevel,
    code_key,
)
from gateway.agreements.yamldoc import Loc

_ROLE_NAMES = {"educator_id": "the educator ID", "direct_identifier": "a direct identifier"}

#: Column types a hierarchy may group: the dimension types (a number or date has no codes).
GROUPABLE_TYPES = frozenset({"string", "integer", "boolean"})


def check_hierarchy(
    hierarchy: Hierarchy,
    column: ColumnSpec,
    *,
    name: str,
    base: Loc,
    codes: Sequence[HierarchyCode] | None,
    codes_are: str | None = None,
) -> list[Finding]:
    """Every rule ``hierarchy`` breaks as the hierarchy of ``column`` (called ``name``),
    with findings under ``base`` (the hierarchy's path in its file).

    ``codes`` are all the values the column can take here (its schema codes, or an
    agreement's public values); None when they are not listed (a pattern column
    such as ``program_code``), and then every level must cover the codes of the
    first. ``codes_are`` says what they are, for findings ("the public values of
    'program_code'"); by default, the codes of the column.
    """
    if column.role in ("educator_id", "direct_identifier"):
        return [
            Finding(
                base,
                f"{name!r} is {_ROLE_NAMES[column.role]}: it is never released, so never coarsened",
            )
        ]
    if column.type not in GROUPABLE_TYPES:
        return [
            Finding(
                base,
                f"{name!r} is a {column.type} column: only string, integer and boolean "
                "columns coarsen along a hierarchy",
            )
        ]
    findings = _check_names(hierarchy, base)
    pools = [level.pool is not None for level in hierarchy.levels]
    if not hierarchy.levels:
        findings.append(Finding((*base, "levels"), "a hierarchy needs at least one level"))
    elif all(pools):
        findings += _check_pools(hierarchy, column, name, base)
    elif any(pools):
        odd = pools.index(not pools[0])  # the first level unlike the first one
        findings.append(
            Finding(
                (*base, "levels", odd),
                "a hierarchy either groups codes at every level or pools years at every "
                "level, not both",
            )
        )
    else:
        universe = codes
        if universe is None and column.type == "boolean":
            universe = (False, True)
        known_as = codes_are or f"the codes of {name!r}"
        findings += _check_groups(hierarchy, column, name, base, universe, known_as)
    return findings


def _folded(text: str) -> str:
    """How labels and level names are compared: ignoring case and surrounding spaces."""
    return text.strip().casefold()


def _check_names(hierarchy: Hierarchy, base: Loc) -> list[Finding]:
    findings = []
    seen: dict[str, str] = {}
    named = [((*base, "levels", i, "name"), level.name) for i, level in enumerate(hierarchy.levels)]
    for loc, level_name in [*named, ((*base, "top"), hierarchy.top)]:
        key = _folded(level_name)
        if key in seen:
            findings.append(
                Finding(
                    loc,
                    f"level name {level_name!r} repeats {seen[key]!r} (the top level is named "
                    "by its label; names are compared ignoring case and surrounding spaces)",
                )
            )
        else:
            seen[key] = level_name
    return findings


def _check_pools(hierarchy: Hierarchy, column: ColumnSpec, name: str, base: Loc) -> list[Finding]:
    findings = []
    bounds = column.range
    if column.type != "integer":
        findings.append(
            Finding(
                (*base, "levels"),
                f"only an integer column of years is pooled; {name!r} is a {column.type} column",
            )
        )
    elif bounds is None or bounds.min is None or bounds.max is None:
        findings.append(
            Finding(
                (*base, "levels"),
                f"pooling years needs the column's range of years (min and max); {name!r} has "
                "no such range",
            )
        )
    previous: HierarchyLevel | None = None
    for index, level in enumerate(hierarchy.levels):
        if (
            previous is not None
            and previous.pool is not None
            and level.pool is not None
            and level.pool <= previous.pool
        ):
            what = "the same windows as" if level.pool == previous.pool else "narrower windows than"
            findings.append(
                Finding(
                    (*base, "levels", index, "pool"),
                    f"a pool of {level.pool} years gives {what} level {previous.name!r} "
                    f"({previous.pool} years): each level must be coarser than the one before",
                )
            )
        previous = level
    return findings


def _check_groups(
    hierarchy: Hierarchy,
    column: ColumnSpec,
    name: str,
    base: Loc,
    codes: Sequence[HierarchyCode] | None,
    known_as: str,
) -> list[Finding]:
    findings: list[Finding] = []
    # Without a list of codes, the first level's codes are the ones every level must cover.
    # (those that can be codes of the column: a bad one is reported where it is written).
    universe = (
        list(codes)
        if codes is not None
        else [c for c in _distinct(hierarchy.codes) if _code_problem(c, column, name) is None]
    )
    known = {code_key(code) for code in universe}
    placements: list[dict[tuple[bool, Any], str]] = []
    for index, level in enumerate(hierarchy.levels):
        level_base: Loc = (*base, "levels", index, "groups")
        groups = level.groups or {}
        if not groups:
            findings.append(Finding(level_base, "a level needs at least one group"))
        findings += _check_labels(groups, level_base)
        placed: dict[tuple[bool, Any], str] = {}
        for label, members in groups.items():
            if not members:
                findings.append(Finding((*level_base, label), f"group {label!r} lists no codes"))
            for position, code in enumerate(members):
                loc: Loc = (*level_base, label, position)
                reason = _code_problem(code, column, name)
                if reason is None and codes is not None and code_key(code) not in known:
                    reason = f"{code!r} is not one of {known_as}"
                if reason is None and code_key(code) in placed:
                    earlier = placed[code_key(code)]
                    where = "earlier in this group" if earlier == label else f"in group {earlier!r}"
                    reason = (
                        f"code {code!r} is already {where}: each code is in one group per level"
                    )
                if reason is not None:
                    findings.append(Finding(loc, reason))
                else:
                    placed[code_key(code)] = label
        for code in universe:
            if code_key(code) not in placed:
                findings.append(
                    Finding(level_base, f"code {code!r} is in no group of level {level.name!r}")
                )
        if column.ordinal and column.codes:
            findings += _check_runs(groups, column, level_base)
        placements.append(placed)
    for index in range(1, len(hierarchy.levels)):
        findings += _check_nesting(hierarchy, index, placements[index - 1], placements[index], base)
    return findings


def _distinct(codes: Iterable[HierarchyCode]) -> list[HierarchyCode]:
    return list({code_key(code): code for code in reversed(list(codes))}.values())[::-1]


def _check_labels(groups: dict[str, list[HierarchyCode]], level_base: Loc) -> list[Finding]:
    findings = []
    seen: dict[str, str] = {}
    for label in groups:
        key = _folded(label)
        if key in seen:
            findings.append(
                Finding(
                    (*level_base, label),
                    f"label {label!r} repeats {seen[key]!r} in this level (labels are compared "
                    "ignoring case and surrounding spaces)",
                )
            )
        else:
            seen[key] = label
    return findings


def _code_problem(code: HierarchyCode, column: ColumnSpec, name: str) -> str | None:
    """Why ``code`` cannot be a value of the column, or None."""
    expected = {"string": str, "integer": int, "boolean": bool}[column.type]
    if isinstance(code, bool) != (expected is bool) or not isinstance(code, expected):
        article = "an" if column.type == "integer" else "a"
        return f"code {code!r} is not {article} {column.type} (the type of {name!r})"
    if (
        column.pattern is not None
        and isinstance(code, str)
        and not re.fullmatch(column.pattern, code)
    ):
        return f"code {code!r} does not match the pattern of {name!r}"
    return None


def _check_runs(
    groups: dict[str, list[HierarchyCode]], column: ColumnSpec, level_base: Loc
) -> list[Finding]:
    """On an ordinal column, each group is a run of adjacent codes."""
    order = {code_key(code): position for position, code in enumerate(column.code_values)}
    findings = []
    for label, members in groups.items():
        positions = sorted({order[code_key(c)] for c in members if code_key(c) in order})
        for low, high in itertools.pairwise(positions):
            if high != low + 1:
                between = column.code_values[low + 1]
                findings.append(
                    Finding(
                        (*level_base, label),
                        f"{column.code_values[low]!r} and {column.code_values[high]!r} are not "
                        f"adjacent ({between!r} lies between them): on an ordinal column each "
                        "group is a run of adjacent codes",
                    )
                )
                break
    return findings


def _check_nesting(
    hierarchy: Hierarchy,
    index: int,
    finer: dict[tuple[bool, Any], str],
    coarser: dict[tuple[bool, Any], str],
    base: Loc,
) -> list[Finding]:
    """Each group of level ``index - 1`` lies within one group of level ``index``."""
    findings = []
    below, level = hierarchy.levels[index - 1], hierarchy.levels[index]
    for label in below.groups or {}:
        parents = list(
            dict.fromkeys(
                coarser[key] for key, held in finer.items() if held == label and key in coarser
            )
        )
        if len(parents) > 1:
            findings.append(
                Finding(
                    (*base, "levels", index, "groups", parents[1]),
                    f"level {level.name!r} splits group {label!r} of level {below.name!r} "
                    f"between {_listed(parents)}: each group must lie within one group of "
                    "the next level",
                )
            )
    return findings


def _listed(labels: Iterable[str]) -> str:
    quoted = [repr(label) for label in labels]
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]
