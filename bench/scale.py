"""Statewide scale: uploads of 1M, 3M and 10M rows and releases over them, as whole
``gateway`` commands, on SQLite and PostgreSQL (issue 14, items 2 and 6).

Each command runs as its own process under ``/usr/bin/time -v``: CPU seconds (user +
system), wall seconds and peak memory (maximum resident set size) of that process
alone. For each size, in the same run:

- the floor: a process that reads the CSV with pyarrow and computes HMAC-SHA-256 of
  every row's ID (the least any upload must do), timed the same way;
- ``gateway upload`` of the evaluations extract into a fresh database, and of a
  1,000-row extract (the fixed cost of a command, taken off to get the cost per row);
- ``gateway upload`` of the completers (one row per teacher), so releases link;
- ``gateway release --query Q``: a count of teachers by program over the linked rows.

Targets (issue 14 item 2): the CPU per row at the largest size within 1.25x of that at
1M (the marginal cost from the size before: CPU(n) - CPU(previous) over the rows in
between; at 1M, CPU(1M) - CPU(1,000 rows) over 1M); peak memory at 10M at most 700 MB;
the 1M upload's CPU within 1.25x of the floor's.

Generated extracts and databases live in a temporary folder (``SCALE_DIR`` to choose
it), never in the repository. PostgreSQL runs when ``GATEWAY_BENCH_DATABASE_URL`` or
``GATEWAY_TEST_DATABASE_URL`` names a server whose role may create databases: each
upload gets a database of its own, dropped afterwards.

HTTP latency at 1, 2 and 4 workers (item 6) is the ``http`` suite of ``make bench``
(``bench/http_load.py``, items 3 and 4), recorded beside this one.

    python -m bench.scale [SIZES...]        (default 1000000 3000000 10000000)
    python -m bench.run scale               (records in bench/RESULTS.md;
                                             SCALE_SIZES=1000000,3000000 for fewer)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SIZES = (1_000_000, 3_000_000, 10_000_000)
SMALL = 1_000
AGREEMENT = "student-teaching-bayview-eastport"
PROVIDER = "eastport-ps"
RECIPIENT = "bayview-state"
PEAK_TARGET_MB = 700

FLOOR = """
import hashlib, hmac, sys
import pyarrow.csv as pa_csv
key = b"k" * 32
table = pa_csv.read_csv(sys.argv[1])
ids = table.column(0).cast("string").to_pylist()
digests = [hmac.new(key, str(x).encode(), hashlib.sha256).digest() for x in ids]
print(len(digests))
"""

QUERY = {
    "datasets": ["completers", "evaluations"],
    "measure": {"kind": "count"},
    "group_by": ["program_code"],
    "epsilon": 0.05,
    "max_groups_per_teacher": 1,
}


def _gateway() -> list[str]:
    script = Path(sys.executable).with_name("gateway")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from gateway.cli import main; main(prog_name='gateway')"]


def timed(command: Sequence[str], *, env: dict[str, str] | None = None) -> dict[str, float]:
    """CPU, wall and peak memory of one process, from ``/usr/bin/time -v``."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as report:
        completed = subprocess.run(
            ["/usr/bin/time", "-v", "-o", report.name, *command],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        text = Path(report.name).read_text()
    if completed.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command[:4])} ... failed ({completed.returncode}): "
            f"{completed.stderr.strip()[-2000:]}"
        )
    return _parse_time(text)


def _parse_time(text: str) -> dict[str, float]:
    def field(label: str) -> str:
        match = re.search(rf"^\s*{re.escape(label)}: (.+)$", text, re.MULTILINE)
        if match is None:
            raise RuntimeError(f"/usr/bin/time gave no {label!r}")
        return match.group(1).strip()

    wall = 0.0
    for part in field("Elapsed (wall clock) time (h:mm:ss or m:ss)").split(":"):
        wall = wall * 60 + float(part)
    return {
        "cpu_s": float(field("User time (seconds)")) + float(field("System time (seconds)")),
        "sys_s": float(field("System time (seconds)")),
        "wall_s": wall,
        "peak_mb": int(field("Maximum resident set size (kbytes)")) / 1024,
    }


def _server_url() -> str | None:
    return os.environ.get("GATEWAY_BENCH_DATABASE_URL") or os.environ.get(
        "GATEWAY_TEST_DATABASE_URL"
    )


@contextmanager
def _database(backend: str, folder: Path, name: str) -> Iterator[str | None]:
    """A fresh, empty database for one upload: a SQLite file in ``folder`` (None: the
    data folder's default), or a PostgreSQL database made and dropped here."""
    if backend == "sqlite":
        yield None
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    server = make_url(_server_url() or "")
    database = f"gateway_scale_{name}_{os.getpid()}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}"'))
            connection.execute(text(f'CREATE DATABASE "{database}"'))
        yield server.set(database=database).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def _environment(data_dir: Path, database_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    env.update(
        GATEWAY_DATA_DIR=str(data_dir),
        GATEWAY_AGREEMENTS_DIR=str(REPO / "agreements"),
        GATEWAY_POLICIES_DIR=str(REPO / "policies"),
        PYTHONPYCACHEPREFIX=str(data_dir.parent / "pycache"),
    )
    if database_url:
        env["GATEWAY_DATABASE_URL"] = database_url
    return env


def _upload(gateway: list[str], env: dict[str, str], dataset: str, party: str, path: Path) -> Any:
    command = [*gateway, "upload", "--agreement", AGREEMENT, "--party", party]
    return timed([*command, "--dataset", dataset, str(path), "--json"], env=env)


def _one_backend(
    backend: str, sizes: Sequence[int], files: dict[int, dict[str, Path]], work: Path
) -> list[dict[str, Any]]:
    gateway = _gateway()
    rows: list[dict[str, Any]] = []
    for size in (SMALL, *sizes):
        data_dir = work / f"{backend}-{size}"
        with _database(backend, work, str(size)) as url:
            env = _environment(data_dir, url)
            subprocess.run([*gateway, "init"], env=env, check=True, capture_output=True)
            upload = _upload(gateway, env, "evaluations", PROVIDER, files[size]["evaluations"])
            row: dict[str, Any] = {"backend": backend, "rows": size, "upload": upload}
            if size != SMALL:
                _upload(gateway, env, "completers", RECIPIENT, files[size]["completers"])
                query = data_dir / "query.json"
                query.write_text(json.dumps(QUERY))
                release = [*gateway, "release", "--agreement", AGREEMENT, "--party", RECIPIENT]
                row["release"] = timed([*release, "--query", str(query), "--json"], env=env)
            rows.append(row)
        shutil.rmtree(data_dir, ignore_errors=True)
    return rows


def _files(sizes: Sequence[int], work: Path) -> dict[int, dict[str, Path]]:
    from bench.bench_release import prepare

    return {size: prepare(work / f"extracts-{size}", size) for size in (SMALL, *sizes)}


def _table(
    measured: list[dict[str, Any]], floors: dict[int, dict[str, float]]
) -> list[dict[str, Any]]:
    table = []
    by_backend: dict[str, list[dict[str, Any]]] = {}
    for row in measured:
        by_backend.setdefault(row["backend"], []).append(row)
    for backend, rows in by_backend.items():
        fixed = next(r["upload"]["cpu_s"] for r in rows if r["rows"] == SMALL)
        previous_rows, previous_cpu = SMALL, fixed
        first_marginal: float | None = None
        for row in (r for r in rows if r["rows"] != SMALL):
            size, upload = row["rows"], row["upload"]
            marginal = (upload["cpu_s"] - previous_cpu) / (size - previous_rows) * 1e6
            first_marginal = first_marginal or marginal
            floor = floors[size]
            release = row.get("release", {})
            table.append(
                {
                    "backend": backend,
                    "rows": f"{size:,}",
                    "upload_cpu_s": round(upload["cpu_s"], 1),
                    "upload_sys_s": round(upload["sys_s"], 1),
                    "upload_wall_s": round(upload["wall_s"], 1),
                    "upload_peak_MB": round(upload["peak_mb"]),
                    "marginal_cpu_us_per_row": round(marginal, 2),
                    "marginal / first size's": round(marginal / first_marginal, 2),
                    "floor_cpu_s": round(floor["cpu_s"], 1),
                    "upload / floor (CPU)": round(upload["cpu_s"] / floor["cpu_s"], 2),
                    "work / floor's": round(
                        (upload["cpu_s"] - fixed) / (floor["cpu_s"] - floors[SMALL]["cpu_s"]), 2
                    ),
                    "floor_peak_MB": round(floor["peak_mb"]),
                    "release_cpu_s": round(release.get("cpu_s", float("nan")), 2),
                    "release_wall_s": round(release.get("wall_s", float("nan")), 2),
                    "release_peak_MB": round(release.get("peak_mb", float("nan"))),
                }
            )
            previous_rows, previous_cpu = size, upload["cpu_s"]
    return table


def run(sizes: Sequence[int] | None = None) -> str:
    """Measure every size (default: ``SCALE_SIZES``, comma-separated, else 1M, 3M and
    10M) on every backend available; the tables as markdown."""
    from bench.run import table as markdown

    if sizes is None:
        chosen = os.environ.get("SCALE_SIZES")
        sizes = [int(s) for s in chosen.split(",")] if chosen else list(SIZES)

    backends = ["sqlite"] + (["postgresql"] if _server_url() else [])
    base = os.environ.get("SCALE_DIR")
    with tempfile.TemporaryDirectory(dir=base) as folder:
        work = Path(folder)
        files = _files(sizes, work)
        floors = {
            size: timed([sys.executable, "-c", FLOOR, str(files[size]["evaluations"])])
            for size in (SMALL, *sizes)
        }
        measured = [
            row for backend in backends for row in _one_backend(backend, sizes, files, work)
        ]
    rows = _table(measured, floors)
    largest = max(sizes)
    notes = [
        f"Sizes: {', '.join(f'{s:,}' for s in sizes)} rows; backends: {', '.join(backends)}.",
        "Targets: marginal CPU per row at the largest size at most 1.25x the first size's; "
        f"upload peak at {largest:,} rows at most {PEAK_TARGET_MB} MB; upload CPU at 1M at "
        "most 1.25x the floor (pyarrow read_csv + HMAC of every row's ID, its own process).",
    ]
    notes.append(
        "`work / floor's`: the upload's CPU beyond a 1,000-row upload (start-up, imports, "
        "opening the database) over the floor's CPU beyond its own 1,000-row run."
    )
    notes.append(
        "HTTP latency and requests/s at 1, 2 and 4 workers: the `http` suite "
        "(bench/http_load.py), recorded beside this one."
    )
    return "\n".join(notes) + "\n\n" + markdown(rows)


if __name__ == "__main__":
    chosen = [int(a) for a in sys.argv[1:]] or list(SIZES)
    print(run(chosen))
