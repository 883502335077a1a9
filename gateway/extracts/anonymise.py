"""Generalising and suppressing quasi-identifiers until an extract is k-anonymous and
l-diverse: the one place an extract's rows are made safe to hand out.

The invariant: :func:`anonymise` returns rows in which every class of equal
quasi-identifier values holds at least ``k`` distinct teachers and shows at least ``l``
distinct values of every sensitive field, or no rows at all; never something in
between. It is checked on the result with pycanon (IFCA's anonymity checker), not
with this module's own counting, and a disagreement refuses the extract.

How: full-domain generalisation over the lattice of hierarchy levels (each
quasi-identifier shown at one level, 0 = as recorded, the last = one value for all),
searched breadth-first by total height, so the first height with an acceptable node
gives the least generalisation (k-anonymity and distinct l-diversity only improve
as a class merges with others, which is what makes the first height minimal). A node
is acceptable when suppressing its failing classes removes at most ``max_suppressed``
of the rows. Among acceptable nodes of that height the one suppressing fewest rows
wins; remaining ties are broken by a keyed choice (the extract's fingerprint). At the
top node every row is in one class, so if even that class fails, nothing is released.

Why not anjana (the suggested generaliser): every release (0.0.1 to 1.2.3) pins pandas
exactly, 2.1.4 to 2.3.3, most numpy too, and it fails on pandas 3's string arrays; the
lattice here is small (a few quasi-identifiers of two to four levels), so the search is
a few hundred group counts.

Classes count teachers, not rows: a teacher with three yearly rows in a class of three
rows is one teacher, and would be singled out. And a teacher's rows share one ID, so
someone who knows where a teacher taught each year can intersect the classes of those
rows: by default a class is therefore the rows of one combination of values *and* one
trajectory (the set of combinations a teacher has rows with), so each trajectory, not
only each row, is shared by k teachers and shows l values in each of its rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from gateway.agreements.models import Hierarchy, window_label
from gateway.errors import GatewayError, NotFound

#: The label of a missing value below the top level.
NOT_RECORDED = "not recorded"
#: The label of a value no group of a level covers (a code outside the agreement's list).
OTHER = "other"


class AnonymityCheckFailed(GatewayError):
    """pycanon found a class below k or l in rows the search accepted: nothing is
    handed out (a defect of the gateway, never of the request)."""

    code = "extract_check_failed"
    status = 500
    exit_code = 1


@dataclass(frozen=True)
class ColumnGeneralisation:
    """How far one quasi-identifier was generalised: level 0 is as recorded."""

    column: str
    level: int
    level_name: str
    levels: int


@dataclass(frozen=True)
class Risk:
    """Re-identification risk of records on their quasi-identifiers (prosecutor model).

    ``unique_share``: records whose class holds one teacher; ``prosecutor_rate``:
    classes / records, the expected share re-identified by someone who knows each
    target is in the file; ``max_risk``: 1 / the fewest teachers in a class.
    """

    records: int
    classes: int
    unique_share: float
    prosecutor_rate: float
    max_risk: float


@dataclass(frozen=True)
class Ladder:
    """The levels one quasi-identifier can be shown at, finest first, the top last."""

    names: tuple[str, ...]
    label: Callable[[Any, int], str]

    @property
    def top(self) -> int:
        return len(self.names) - 1


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA


def _as_recorded(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def ladder(hierarchy: Hierarchy | None, *, last_year: int) -> Ladder:
    """The levels of a column under ``hierarchy`` (None: as recorded, then the top).

    Pooled years become windows that do not overlap, ending at ``last_year``: the
    hierarchy's overlapping windows (one ending at each year) would still single out
    each year, since no two years share a window label.
    """
    declared = hierarchy.levels if hierarchy is not None else []
    top_label = hierarchy.top if hierarchy is not None else "all"
    names = ("as recorded", *(level.name for level in declared), top_label)

    def label(value: Any, level: int) -> str:
        if level == len(names) - 1:
            return top_label
        if _is_missing(value):
            return NOT_RECORDED
        if level == 0:
            return _as_recorded(value)
        spec = declared[level - 1]
        if spec.pool is not None:
            year = int(value)
            end = last_year - ((last_year - year) // spec.pool) * spec.pool
            return window_label(end, spec.pool)
        assert hierarchy is not None
        native = value.item() if isinstance(value, np.generic) else value
        try:
            return hierarchy.parent(native, level - 1)
        except NotFound:
            return OTHER

    return Ladder(names=names, label=label)


@dataclass(frozen=True)
class Anonymised:
    """The outcome of :func:`anonymise`."""

    frame: pd.DataFrame
    generalisation: tuple[ColumnGeneralisation, ...]
    rows_before: int
    rows_released: int
    risk_before: Risk
    risk_after: Risk
    k_achieved: int | None
    l_achieved: int | None
    #: The lattice node chosen and how many acceptable nodes tied with it.
    node: tuple[int, ...]
    tied_nodes: int

    @property
    def suppressed_share(self) -> float:
        if self.rows_before == 0:
            return 0.0
        return (self.rows_before - self.rows_released) / self.rows_before


def _codes(values: Sequence[str]) -> np.ndarray:
    codes, _ = pd.factorize(pd.Series(values, dtype=object), sort=False)
    return np.asarray(codes, dtype=np.int64)


def _dense(keys: np.ndarray) -> np.ndarray:
    """Keys renumbered 0, 1, 2... in sorted order."""
    _, inverse = np.unique(keys, return_inverse=True)
    dense: np.ndarray = np.asarray(inverse, dtype=np.int64).reshape(-1)
    return dense


def _class_index(columns: Sequence[np.ndarray], rows: int) -> np.ndarray:
    """One class number per row: rows with equal codes in every column share one."""
    if not columns or rows == 0:
        return np.zeros(rows, dtype=np.int64)
    # Packed one column at a time and renumbered, so a key never exceeds rows * codes.
    key = _dense(columns[0])
    for column in columns[1:]:
        key = _dense(key * (int(column.max()) + 1) + column)
    return key


def _distinct_per_class(classes: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    width = int(values.max()) + 1 if len(values) else 1
    pairs = np.unique(classes * width + values)
    return np.bincount(pairs // width, minlength=count)


#: Fixed random weights: a trajectory's number is the sum of its classes' weights.
_WEIGHTS_SEED = 20261202


def _trajectories(classes: np.ndarray, people: np.ndarray) -> np.ndarray:
    """Per row, a number for its teacher's trajectory: the set of classes the teacher's
    rows are in. Teachers with equal sets share a number.

    A set is summed as random 64-bit weights (wrapping), so two different sets share a
    number with probability 2**-64; the final check (pycanon, over the exact sets
    spelled out) would refuse the extract if that ever happened.
    """
    if len(classes) == 0:
        return np.zeros(0, dtype=np.int64)
    width = int(classes.max()) + 1
    pairs = np.unique(people * width + classes)
    teachers, members = pairs // width, pairs % width
    weights = np.random.default_rng(_WEIGHTS_SEED).integers(
        0, np.iinfo(np.uint64).max, size=width, dtype=np.uint64, endpoint=True
    )
    sums = np.zeros(int(people.max()) + 1, dtype=np.uint64)
    np.add.at(sums, teachers, weights[members])
    trajectory: np.ndarray = _dense(sums)[people]
    return trajectory


def measure_risk(classes: np.ndarray, people: np.ndarray) -> Risk:
    """The risk figures of records in ``classes`` (one class number per record)."""
    records = len(classes)
    if records == 0:
        return Risk(records=0, classes=0, unique_share=0.0, prosecutor_rate=0.0, max_risk=0.0)
    _, dense = np.unique(classes, return_inverse=True)
    count = int(dense.max()) + 1
    teachers = _distinct_per_class(dense, people, count)
    return Risk(
        records=records,
        classes=count,
        unique_share=float(np.mean(teachers[dense] == 1)),
        prosecutor_rate=count / records,
        max_risk=1.0 / float(teachers.min()),
    )


def anonymise(
    frame: pd.DataFrame,
    *,
    quasi_identifiers: Mapping[str, Ladder],
    sensitive: Sequence[str],
    person: str,
    k: int,
    l: int | None,  # noqa: E741 (the literature's name)
    max_suppressed: float,
    tie_break: Callable[[tuple[int, ...]], bytes] | None = None,
    linked: bool = True,
) -> Anonymised:
    """``frame`` generalised and suppressed until k-anonymous (in distinct values of
    ``person``) and l-diverse in every ``sensitive`` column; see the module docstring.

    ``linked``: a teacher's rows share their ID, so whoever knows a teacher's whole
    trajectory (every combination of quasi-identifiers the teacher has rows with) can
    look for it; classes are then the rows of one trajectory and one combination, and
    each needs k teachers and l values. Without it, classes are the combinations only.

    ``frame`` must have a default RangeIndex. The returned frame has the quasi-
    identifier columns as labels (text), the rows kept in their order, a new index.
    """
    rows = len(frame)
    qi_names = list(quasi_identifiers)
    ladders = [quasi_identifiers[name] for name in qi_names]
    labels: list[list[list[str]]] = []  # [qi][level] -> a label per row
    codes: list[list[np.ndarray]] = []
    for name, steps in zip(qi_names, ladders, strict=True):
        raw = frame[name].tolist()
        per_level = []
        for level in range(len(steps.names)):
            distinct = {}
            column = []
            for value in raw:
                key = (type(value), value) if not _is_missing(value) else None
                if key not in distinct:
                    distinct[key] = steps.label(value, level)
                column.append(distinct[key])
            per_level.append(column)
        labels.append(per_level)
        codes.append([_codes(column) for column in per_level])
    people = _codes([str(value) for value in frame[person].tolist()])
    sensitive_codes = [
        _codes([NOT_RECORDED if _is_missing(v) else _as_recorded(v) for v in frame[s].tolist()])
        for s in sensitive
    ]

    def failing_rows(node: tuple[int, ...]) -> np.ndarray:
        classes = _class_index([codes[i][level] for i, level in enumerate(node)], rows)
        failing = np.zeros(rows, dtype=bool)
        while True:  # suppressing rows changes trajectories: repeat until nothing fails
            kept = np.flatnonzero(~failing)
            if not len(kept):
                return failing
            checked = classes[kept]
            if linked:
                checked = _class_index([_trajectories(checked, people[kept]), checked], len(kept))
            count = int(checked.max()) + 1
            ok = _distinct_per_class(checked, people[kept], count) >= k
            if l is not None:
                for values in sensitive_codes:
                    ok &= _distinct_per_class(checked, values[kept], count) >= l
            newly = kept[~ok[checked]]
            if not len(newly):
                return failing
            failing[newly] = True

    before = measure_risk(_class_index([c[0] for c in codes], rows), people)
    chosen: tuple[int, ...] | None = None
    dropped = np.ones(rows, dtype=bool)
    tied = 0
    if rows:
        tops = [steps.top for steps in ladders]
        allowed = int(np.floor(max_suppressed * rows + 1e-9))
        for height in range(sum(tops) + 1):
            found: list[tuple[int, tuple[int, ...], np.ndarray]] = []
            for node in itertools.product(*(range(top + 1) for top in tops)):
                if sum(node) != height:
                    continue
                failing = failing_rows(node)
                suppressed = int(failing.sum())
                if suppressed <= allowed and suppressed < rows:
                    found.append((suppressed, node, failing))
            if found:
                fewest = min(item[0] for item in found)
                best = [item for item in found if item[0] == fewest]
                tied = len(best)
                if tie_break is not None:
                    best.sort(key=lambda item: tie_break(item[1]))
                _, chosen, dropped = best[0]
                break
    node = chosen if chosen is not None else tuple(steps.top for steps in ladders)
    keep = ~dropped
    out = frame.loc[keep].copy()
    for i, name in enumerate(qi_names):
        out[name] = pd.Series(
            [label for label, kept in zip(labels[i][node[i]], keep, strict=True) if kept],
            index=out.index,
            dtype=object,
        )
    out = out.reset_index(drop=True)
    kept_classes = _class_index([codes[i][level][keep] for i, level in enumerate(node)], len(out))
    after = measure_risk(kept_classes, people[keep])
    k_achieved, l_achieved = _check_with_pycanon(
        out, qi_names, list(sensitive), person, linked=linked
    )
    if k_achieved is not None and (
        k_achieved < k or (l is not None and (l_achieved is None or l_achieved < l))
    ):
        raise AnonymityCheckFailed(
            f"the extract's check found a class of {k_achieved} teachers (k {k}) or "
            f"{l_achieved} sensitive values (l {l}); nothing is handed out"
        )
    return Anonymised(
        frame=out,
        generalisation=tuple(
            ColumnGeneralisation(
                column=name,
                level=node[i],
                level_name=ladders[i].names[node[i]],
                levels=len(ladders[i].names),
            )
            for i, name in enumerate(qi_names)
        ),
        rows_before=rows,
        rows_released=len(out),
        risk_before=before,
        risk_after=after,
        k_achieved=k_achieved,
        l_achieved=l_achieved,
        node=node,
        tied_nodes=tied,
    )


def _check_with_pycanon(
    frame: pd.DataFrame, qis: list[str], sensitive: list[str], person: str, *, linked: bool
) -> tuple[int | None, int | None]:
    """k (in distinct teachers) and l of ``frame`` as pycanon measures them; None, None
    when there are no rows. ``linked``: over classes of trajectory and combination."""
    from pycanon import anonymity

    if frame.empty:
        return None, None
    # Missing values become a label of their own (pandas' groupby would drop them).
    text = frame[[person, *qis, *sensitive]].astype(object)
    text = text.where(text.notna(), NOT_RECORDED).astype(str).reset_index(drop=True)
    columns = list(qis)
    if linked:
        combination = text[qis].agg("\x1f".join, axis=1) if qis else pd.Series("", index=text.index)
        trajectory = combination.groupby(text[person]).agg(lambda c: "\x1e".join(sorted(set(c))))
        text["_trajectory"] = text[person].map(trajectory)
        columns = ["_trajectory", *qis]
    if not columns:
        text["_all"] = ""
        columns = ["_all"]
    # One row per teacher and class: pycanon's k then counts teachers, not their rows.
    people = text[[person, *columns]].drop_duplicates().reset_index(drop=True)
    k_achieved = int(anonymity.k_anonymity(people, columns))
    l_achieved = None
    if sensitive:
        l_achieved = int(anonymity.l_diversity(text, columns, sensitive))
    return k_achieved, l_achieved
