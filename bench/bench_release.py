"""DP releases over ~1M linked rows, end to end, against SmartNoise SQL and Tumult Analytics.

The same data and the same two queries run through three systems in one run:

- a grouped count of distinct teachers by preparation program (completers linked
  with evaluations on the educator), and
- the mean summative rating by program,

each at epsilon 0.5 (two releases fit in one recipient's share of the budget).
The gateway runs its whole release path (read from SQLite,
link, bound contributions, suppress, calibrate and draw OpenDP noise, reserve
budget, write the audit event). SmartNoise SQL and Tumult Analytics each run in
their own virtual environment (``bench/.venvs/``; their pins conflict with
ours), reading the same linked rows from Parquet; Tumult's Spark session start
is timed separately from its queries.

Each peer's time includes reading its input; the gateway's includes reading
its database. No side's time includes importing its libraries (a server has them
loaded) or, for Tumult, starting Spark (reported on its own). Ratios are peer time /
gateway time (higher: the gateway is faster).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
VENVS = Path(__file__).resolve().parent / ".venvs"
AGREEMENT = "student-teaching-bayview-eastport"
PROGRAMS = ["ELEM", "SPED", "SECELA", "SECMATH", "SECSCI", "SECSS", "MUSED", "ARTED", "ESL"]
ROWS = 1_000_000
EPSILON = 0.5
YEARS_PER_TEACHER = 5


def prepare(work: Path, rows: int) -> dict[str, Path]:
    """Evaluations (rows) and completers (one per teacher) extracts, and the linked Parquet."""
    from gateway_synthetic import write_evaluations_csv

    evaluations = write_evaluations_csv(work / "evaluations.csv", rows=rows, seed=3)
    frame = pd.read_csv(
        evaluations,
        dtype={"educator_id": str},
        usecols=["educator_id", "school_year", "summative_rating"],
    )
    frame["educator_id"] = frame["educator_id"].str.strip().str.lstrip("0")
    teachers = frame["educator_id"].drop_duplicates().reset_index(drop=True)
    rng = np.random.default_rng(7)
    weights = np.array([36, 24, 14, 13, 11, 12, 2, 2, 3], dtype=float)
    programs = rng.choice(PROGRAMS, size=len(teachers), p=weights / weights.sum())
    completers = pd.DataFrame(
        {
            "MEPID": teachers,
            "Program": programs,
            "Program Completion Year": 2020,
            "Completer Status": "completed",
            "License Field": "ELEM",
        }
    )
    completers_path = work / "completers.csv"
    completers.to_csv(completers_path, index=False)
    linked = frame.merge(
        pd.DataFrame({"educator_id": teachers, "program_code": programs}), on="educator_id"
    )
    linked_path = work / "linked.parquet"
    linked.to_parquet(linked_path, index=False)
    return {"evaluations": evaluations, "completers": completers_path, "linked": linked_path}


def _gateway(files: dict[str, Path], work: Path) -> dict[str, float]:
    # Libraries are imported before any timing, on every side: a running gateway has
    # OpenDP loaded (the engine imports it on first use), Tumult's imports and Spark
    # start are outside its timing too, and so are SmartNoise's imports.
    import opendp.prelude  # noqa: F401

    from gateway import audit
    from gateway.config import Settings
    from gateway.context import Gateway, initialise
    from gateway.ingest import upload_extract
    from gateway.release.engine import request_release
    from gateway.release.query import parse_query

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        data_dir=work / "data",
        agreements_dir=REPO / "agreements",
        policies_dir=REPO / "policies",
        max_upload_rows=10_000_000,
    )
    initialise(settings)
    actor = audit.Actor(role="bench")
    with Gateway.open(settings) as gw:
        for dataset, party in (("evaluations", "eastport-ps"), ("completers", "bayview-state")):
            upload_extract(
                gw,
                agreement_id=AGREEMENT,
                party=party,
                dataset=dataset,
                path=files[dataset],
                actor=actor,
            )
        times: dict[str, float] = {}
        for name, measure in (
            ("count", {"kind": "count"}),
            ("mean", {"kind": "mean", "field": "summative_rating"}),
        ):
            query = parse_query(
                {
                    "datasets": ["completers", "evaluations"],
                    "measure": measure,
                    "group_by": ["program_code"],
                    "epsilon": EPSILON,
                    "max_groups_per_teacher": 1,
                }
            )
            start = time.perf_counter()
            result = request_release(
                gw, agreement_id=AGREEMENT, party="bayview-state", query=query, actor=actor
            )
            times[name] = time.perf_counter() - start
            assert len(result.to_json()["cells"]) == len(PROGRAMS)
    return times


SMARTNOISE = textwrap.dedent(
    """
    import json, sys, time
    import pandas as pd
    import snsql
    from snsql import Privacy
    start = time.perf_counter()
    frame = pd.read_parquet(sys.argv[1])
    metadata = {"bench": {"bench": {"linked": {
        "row_privacy": False, "max_ids": %(years)d,
        "educator_id": {"type": "string", "private_id": True},
        "program_code": {"type": "string"},
        "school_year": {"type": "int"},
        "summative_rating": {"type": "int", "lower": 1, "upper": 4},
    }}}}
    reader = snsql.from_df(frame, privacy=Privacy(epsilon=%(epsilon)s, delta=1e-6), metadata=metadata)
    setup = time.perf_counter() - start
    times = {}
    for name, sql in (
        ("count", "SELECT program_code, COUNT(DISTINCT educator_id) AS n FROM bench.linked GROUP BY program_code"),
        ("mean", "SELECT program_code, AVG(summative_rating) AS m FROM bench.linked GROUP BY program_code"),
    ):
        t = time.perf_counter()
        rows = reader.execute(sql)
        times[name] = time.perf_counter() - t + setup
    print(json.dumps(times))
    """
) % {"years": YEARS_PER_TEACHER, "epsilon": EPSILON}

TUMULT = textwrap.dedent(
    """
    import json, sys, time
    t0 = time.perf_counter()
    from pyspark.sql import SparkSession
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.driver.memory", "6g").getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    startup = time.perf_counter() - t0
    from tmlt.analytics import (AddRowsWithID, KeySet, MaxGroupsPerID, MaxRowsPerGroupPerID,
                                PureDPBudget, QueryBuilder, Session)
    programs = json.loads(sys.argv[2])
    times = {"spark_startup": startup}
    for name in ("count", "mean"):
        t = time.perf_counter()
        frame = spark.read.parquet(sys.argv[1])
        session = Session.from_dataframe(privacy_budget=PureDPBudget(%(epsilon)s), source_id="linked",
                                         dataframe=frame, protected_change=AddRowsWithID("educator_id"))
        keys = KeySet.from_dict({"program_code": programs})
        base = (QueryBuilder("linked").enforce(MaxGroupsPerID("program_code", 1))
                .enforce(MaxRowsPerGroupPerID("program_code", %(years)d)).groupby(keys))
        if name == "count":
            query = base.count_distinct(["educator_id"])
        else:
            query = base.average("summative_rating", low=1, high=4)
        session.evaluate(query, PureDPBudget(%(epsilon)s)).collect()
        times[name] = time.perf_counter() - t
    print(json.dumps(times))
    """
) % {"years": YEARS_PER_TEACHER, "epsilon": EPSILON}


def _peer(venv: str, script: str, *args: str, cwd: Path) -> dict[str, float] | None:
    python = VENVS / venv / "bin" / "python"
    if not python.exists():
        return None
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as handle:
        handle.write(script)
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        env["PYSPARK_PYTHON"] = str(python)  # Spark's workers must use the same venv
        out = subprocess.run(
            [str(python), handle.name, *args],
            check=True,
            capture_output=True,
            text=True,
            timeout=1800,
            env=env,
            cwd=cwd,  # Spark writes its warehouse into the working folder
        ).stdout
        return dict(json.loads(out.strip().splitlines()[-1]))
    finally:
        os.unlink(handle.name)


def run(rows: int = ROWS) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        files = prepare(work, rows)
        linked_rows = len(pd.read_parquet(files["linked"], columns=["program_code"]))
        ours = _gateway(files, work)
        smartnoise = _peer("smartnoise", SMARTNOISE, str(files["linked"]), cwd=work)
        tumult = _peer("tumult", TUMULT, str(files["linked"]), json.dumps(PROGRAMS), cwd=work)
    out = []
    for name, label in (("count", "grouped DP count of teachers"), ("mean", "grouped DP mean")):
        row: dict[str, Any] = {
            "benchmark": f"{label}, {linked_rows:,} linked rows",
            "gateway_s": round(ours[name], 2),
            "smartnoise_sql_s": round(smartnoise[name], 2) if smartnoise else "not installed",
            "tumult_s": round(tumult[name], 2) if tumult else "not installed",
        }
        if smartnoise:
            row["smartnoise/gateway"] = round(smartnoise[name] / ours[name], 1)
        if tumult:
            row["tumult/gateway"] = round(tumult[name] / ours[name], 1)
            row["tumult_spark_startup_s"] = round(tumult["spark_startup"], 1)
        out.append(row)
    return out


if __name__ == "__main__":
    for result in run(int(sys.argv[1]) if len(sys.argv) > 1 else ROWS):
        print(result)
