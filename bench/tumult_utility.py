"""The Tumult Analytics side of bench/utility.py: the same tables at the same epsilon.

Run in Tumult's own environment (``bench/.venvs/tumult``; its pins conflict with ours)::

    bench/.venvs/tumult/bin/python bench/tumult_utility.py SPEC.json OUT.json

SPEC lists the tables: each one's rows (a Parquet file of the rows the gateway read for
it, filtered and linked, one column per value the table needs), its measure, epsilon,
bound on groups per teacher, clamp and the keys of its cells. OUT maps each table to
its noisy counts and sums (:func:`answer_table`) or ``{"error": text}``.

The privacy unit is one teacher (``AddRowsWithID("educator_ref")``), as in the gateway.
Each teacher's rows are reduced by :func:`reduce_teacher`, the same reduction the
gateway makes (release/aggregate.py): one value per teacher and group. It transforms
one teacher's rows at a time, so it may run before the session without changing the
guarantee, and bench/utility.py runs it there by default (Tumult takes twice as long
doing it); with ``"reduced": false`` Tumult does it inside the session, through
``flat_map_by_id``. Then ``MaxGroupsPerID`` bounds the groups per teacher and
``MaxRowsPerGroupPerID(1)`` the rows per group, values are clamped to the schema's
range, and Tumult draws its noise. Rows of counts (candidates per area, no educator
IDs) become one row per counted person, with ``AddOneRow``: the gateway's unit for them
is one counted person too.

This module imports neither the gateway nor pyspark at import time, so bench/utility.py
can run :func:`reduce_teacher` itself and check that Tumult is given the same table.
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

#: Measures whose cells count teachers (one per teacher and cell); the others average a
#: per-teacher value (a mean, or 0/1 for a share).
COUNTED = frozenset({"count", "distribution", "joint"})
AVERAGED = frozenset({"mean", "agreement", "retention"})


def _plain(value: Any) -> Any:
    """A whole-number float as an int, so a key reads as the gateway spells it (3, not 3.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def cell_key(group: str, *values: Any) -> str:
    """The key of a cell: the group's JSON list extended with ``values``, compact."""
    return json.dumps([*json.loads(group), *(_plain(v) for v in values)], separators=(",", ":"))


def _lower_median(values: Sequence[Any]) -> Any:
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def reduce_teacher(
    rows: Sequence[Mapping[str, Any]], spec: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """One teacher's rows as one row per cell they count in: ``_cell`` and ``_x``.

    ``_group`` holds the row's group key (JSON); ``_a`` and ``_b`` the measured values
    (a distribution's or a mean's field, a pair's two scores); ``_s`` the students behind
    a student-derived score; ``_y`` the school year of a retention.
    """
    kind = spec["kind"]
    eligible_share: float | None = None
    if kind == "retention":
        # The teacher's first year in the window is their earliest row; teachers already
        # there in its first year (hired before it) or hired too late are left out.
        first, last = spec["window"]
        years = [int(r["_y"]) for r in rows]
        hired = min(years)
        if not (hired > first and hired + spec["years_after"] <= last):
            return []
        eligible_share = 1.0 if hired + spec["years_after"] in years else 0.0
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["_group"]].append(row)
    out: list[dict[str, Any]] = []
    for group, members in groups.items():
        if kind == "count":
            out.append({"_cell": group, "_x": 0.0})
        elif kind == "distribution":
            value = _lower_median([m["_a"] for m in members])
            out.append({"_cell": cell_key(group, value), "_x": 0.0})
        elif kind == "joint":
            first_score = _lower_median([m["_a"] for m in members])
            second_score = _lower_median([m["_b"] for m in members])
            out.append({"_cell": cell_key(group, first_score, second_score), "_x": 0.0})
        elif kind == "agreement":
            same = _lower_median([m["_a"] for m in members]) == _lower_median(
                [m["_b"] for m in members]
            )
            out.append({"_cell": group, "_x": 1.0 if same else 0.0})
        elif kind == "mean":
            floor = spec.get("students_min")
            if floor is not None and sum(int(m["_s"]) for m in members) < floor:
                continue  # too few students behind this teacher's score here
            value = sum(float(m["_a"]) for m in members) / len(members)
            low, high = spec["clamp"]
            out.append({"_cell": group, "_x": min(max(value, low), high)})
        elif kind == "retention":
            assert eligible_share is not None
            out.append({"_cell": group, "_x": eligible_share})
        else:
            raise ValueError(f"no per-teacher reduction for a {kind!r} measure")
    return out


def _spark_schema(rows: Any) -> Any:
    """The Spark schema of a pandas frame, given rather than inferred: a table with no
    row (no teacher eligible for a retention, say) has nothing to infer it from."""
    from pyspark.sql.types import DoubleType, LongType, StringType, StructField, StructType

    kinds = {"i": LongType(), "u": LongType(), "b": LongType(), "f": DoubleType()}
    return StructType(
        [
            StructField(
                str(name),
                kinds.get(rows[name].dtype.kind, StringType()),
                nullable=bool(rows[name].isna().any()),
            )
            for name in rows.columns
        ]
    )


def answer_table(spark: Any, spec: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """One table through Tumult: ``{"counts": {key: n}}``, and for an average also
    ``{"sums": {key: s}}``, each value centred on the clamp's midpoint.

    An average is asked as a noisy count and a noisy sum, each at half the epsilon (as
    Tumult's own ``average`` splits it, and as the gateway does), so that cells can be
    pooled after the fact: a coarse cell's average is its cells' sums over their
    counts. The sum is of values centred on the midpoint of the clamp, which halves its
    sensitivity, as Tumult's ``average`` does.
    """
    import pandas as pd
    from tmlt.analytics import (
        AddOneRow,
        AddRowsWithID,
        ColumnDescriptor,
        ColumnType,
        KeySet,
        MaxGroupsPerID,
        MaxRowsPerGroupPerID,
        PureDPBudget,
        QueryBuilder,
        Session,
    )

    rows = pd.read_parquet(spec["rows"])
    frame = spark.createDataFrame(rows, schema=_spark_schema(rows))
    epsilon = float(spec["epsilon"])
    keys = KeySet.from_dict({"_cell": list(spec["keys"])})

    def values(answer: Any) -> dict[str, float]:
        table = answer.toPandas()
        return {str(k): float(v) for k, v in zip(table["_cell"], table["value"], strict=True)}

    if spec["unit"] == "counted":  # rows of counts: one row per counted person
        session = Session.from_dataframe(
            privacy_budget=PureDPBudget(epsilon),
            source_id="rows",
            dataframe=frame,
            protected_change=AddOneRow(),
        )
        query = QueryBuilder("rows").groupby(keys).count(name="value")
        return {"counts": values(session.evaluate(query, PureDPBudget(epsilon)))}
    session = Session.from_dataframe(
        privacy_budget=PureDPBudget(epsilon),
        source_id="rows",
        dataframe=frame,
        protected_change=AddRowsWithID("educator_ref"),
    )
    low, high = (float(v) for v in spec["clamp"])
    middle, half = (low + high) / 2, (high - low) / 2

    def grouped(*, centred: bool) -> Any:
        builder = QueryBuilder("rows")
        if not spec.get("reduced"):
            builder = builder.flat_map_by_id(
                lambda rows: reduce_teacher(rows, spec),
                new_column_types={
                    "_cell": ColumnDescriptor(ColumnType.VARCHAR, allow_null=False),
                    "_x": ColumnDescriptor(ColumnType.DECIMAL, allow_null=False),
                },
            )
        if centred:
            builder = builder.map(
                lambda row: {"_xc": float(row["_x"]) - middle},
                new_column_types={"_xc": ColumnDescriptor(ColumnType.DECIMAL, allow_null=False)},
                augment=True,
            )
        return (
            builder.enforce(MaxGroupsPerID("_cell", int(spec["groups_per_teacher"])))
            .enforce(MaxRowsPerGroupPerID("_cell", 1))
            .groupby(keys)
        )

    if spec["kind"] in COUNTED:
        count = grouped(centred=False).count(name="value")
        return {"counts": values(session.evaluate(count, PureDPBudget(epsilon)))}
    count = grouped(centred=False).count(name="value")
    counts = values(session.evaluate(count, PureDPBudget(epsilon / 2)))
    total = grouped(centred=True).sum("_xc", low=-half, high=half, name="value")
    sums = values(session.evaluate(total, session.remaining_privacy_budget))
    return {"counts": counts, "sums": sums}


def main(spec_path: str, out_path: str) -> None:
    from pyspark.sql import SparkSession

    with open(spec_path, encoding="utf-8") as handle:
        tables = json.load(handle)
    start = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.memory", "2g")
        .config("spark.sql.shuffle.partitions", "2")  # small tables: 200 partitions is slow
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    out: dict[str, Any] = {"spark_startup_s": time.perf_counter() - start, "tables": {}}
    for table_id, spec in tables.items():
        began = time.perf_counter()
        try:
            out["tables"][table_id] = answer_table(spark, spec)
        except Exception as error:  # one table Tumult refuses must not stop the others
            out["tables"][table_id] = {"error": f"{type(error).__name__}: {error}"[:300]}
        out["tables"][table_id]["seconds"] = round(time.perf_counter() - began, 2)
    with open(out_path, "w", encoding="utf-8") as handle:
        json.dump(out, handle)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
