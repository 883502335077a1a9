"""The audit log at scale: CPU per appended event, a live verification of 1M events, and
offline bundle verification against a plain hash-chain check of the same bundle.

    python -m bench.run audit        (or: python -m bench.bench_audit [EVENTS])

- **append**: events appended through :func:`gateway.audit.append_event` inside a
  transaction (the cost an action's transaction pays for its event; target: at most
  0.5 ms of CPU), and each in a transaction of its own (adding BEGIN, COMMIT and the
  database's durable write), on SQLite in a temporary folder (or the database of
  GATEWAY_BENCH_DATABASE_URL); CPU of this process per event (on PostgreSQL the
  server's own CPU is not in it).
- **live verify**: a valid chain of ``EVENTS`` (default 1,000,000) events is written
  straight into the table (bodies made the way ``append_event`` makes them), then
  :func:`gateway.audit.verify_chain` reads and checks every one. Target: under 60 s.
- **bundle verify**: an exported bundle of ``BUNDLE_EVENTS`` events is checked by
  ``gateway audit verify --bundle`` (a whole process: start-up, every check and the
  signatures) and by a plain hash-chain check of the same ``events.jsonl`` in its own
  process (each line's hash over its body and its link to the previous one, nothing
  else). CPU of each process from the kernel's accounting. Target: at most 1.5x.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
EVENTS = 1_000_000
BUNDLE_EVENTS = 200_000
APPENDS = 2_000

#: The "plain hash-chain check" a bundle's verification is compared with.
PLAIN_CHECK = """
import hashlib, json, sys
previous, count = "0" * 64, 0
with open(sys.argv[1], encoding="utf-8") as handle:
    for line in handle:
        record = json.loads(line)
        body = record["body"]
        assert hashlib.sha256(body.encode()).hexdigest() == record["hash"]
        assert json.loads(body)["prev_hash"] == previous
        previous, count = record["hash"], count + 1
print(count, previous)
"""


def _settings(work: Path) -> Any:
    from gateway.config import Settings

    return Settings(
        _env_file=None,
        data_dir=work / "data",
        database_url=os.environ.get("GATEWAY_BENCH_DATABASE_URL") or None,
        agreements_dir=REPO / "agreements",
        policies_dir=REPO / "policies",
    )


def _append(work: Path, count: int) -> list[dict[str, Any]]:
    from gateway import audit
    from gateway.context import Gateway, initialise

    settings = _settings(work)
    initialise(settings)
    with Gateway.open(settings) as gw:
        agreement = next(iter(gw.registry.agreements.values()))
        actor = audit.Actor(role="analyst", party="eastport-ps", credential_id="0" * 16)
        details = {"release_id": "r" * 32, "epsilon": 0.3, "cells": 12, "reason": "bench"}

        def append(session: Any) -> None:
            audit.append_event(
                session, kind="release", actor=actor, details=details, agreement=agreement
            )

        # The append itself, in an action's transaction (what every action adds).
        cpu, wall = time.process_time(), time.perf_counter()
        with gw.sessions() as session, session.begin():
            for _ in range(count):
                append(session)
        alone, alone_wall = time.process_time() - cpu, time.perf_counter() - wall
        # One event per transaction: with BEGIN, COMMIT and the database's durable write.
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(count):
            with gw.sessions() as session, session.begin():
                append(session)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    backend = "PostgreSQL (this process only)" if settings.database_url else "SQLite"
    return [
        {
            "measure": f"append in an action's transaction, {count:,} events, {backend}",
            "CPU s": round(alone, 2),
            "wall s": round(alone_wall, 2),
            "per event": f"{alone / count * 1000:.3f} ms CPU",
            "target": "<= 0.5 ms CPU",
            "met": "yes" if alone / count * 1000 <= 0.5 else "no",
        },
        {
            "measure": f"append, one event per transaction with its commit, {count:,}, {backend}",
            "CPU s": round(cpu, 2),
            "wall s": round(wall, 2),
            "per event": f"{cpu / count * 1000:.3f} ms CPU",
            "target": "",
            "met": "",
        },
    ]


def _fill(session: Any, count: int) -> None:
    """A valid chain of ``count`` events written straight into the table."""
    from sqlalchemy import Table

    from gateway import audit
    from gateway.storage.tables import AuditEvent, AuditHead

    table = AuditEvent.__table__
    assert isinstance(table, Table)
    head = session.get(AuditHead, 1)
    previous, seq = head.hash, head.seq
    start = datetime(2026, 1, 1, tzinfo=UTC)
    batch: list[dict[str, Any]] = []
    for _ in range(count):
        seq += 1
        moment = start + timedelta(seconds=seq)
        body = {
            "seq": seq,
            "event_id": str(uuid.uuid4()),
            "occurred_at": moment.isoformat(),
            "kind": "release",
            "actor": {"role": "analyst", "party": "eastport-ps", "credential_id": "0" * 16},
            "agreement": {"id": "bench", "version": "1", "content_hash": "c" * 64},
            # As the gateway writes a release's event: epsilon as exact text.
            "details": {"release_id": f"{seq:032x}", "epsilon": "0.3", "cells": 12},
            "prev_hash": previous,
            "encoding": audit.ENCODING,
        }
        text = audit.canonical_json(body)
        digest = hashlib.sha256(text.encode()).hexdigest()
        batch.append(
            {
                "seq": seq,
                "event_id": body["event_id"],
                "occurred_at": moment,
                "kind": "release",
                "agreement_id": "bench",
                "actor_party": "eastport-ps",
                "actor_role": "analyst",
                "body": text,
                "prev_hash": previous,
                "hash": digest,
            }
        )
        previous = digest
        if len(batch) == 50_000:
            session.execute(table.insert(), batch)
            batch = []
    if batch:
        session.execute(table.insert(), batch)
    head.seq, head.hash = seq, previous


def _live_verify(work: Path, count: int) -> dict[str, Any]:
    from gateway import audit
    from gateway.context import Gateway, initialise

    settings = _settings(work)
    initialise(settings)
    with Gateway.open(settings, checkpoint=False) as gw:
        with gw.sessions() as session, session.begin():
            _fill(session, count)
        with gw.sessions() as session:
            cpu, wall = time.process_time(), time.perf_counter()
            result = audit.verify_chain(session)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert result.ok and result.events_checked >= count, result.problems[:3]
    return {
        "measure": f"live verify_chain of {result.events_checked:,} events",
        "CPU s": round(cpu, 2),
        "wall s": round(wall, 2),
        "per event": f"{wall / result.events_checked * 1e6:.1f} us wall",
        "target": "< 60 s wall",
        "met": "yes" if wall < 60 else "no",
    }


def _child_cpu(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - wall
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, wall


def _bundle_verify(work: Path, count: int, runs: int = 3) -> list[dict[str, Any]]:
    from gateway import audit
    from gateway.context import Gateway, initialise

    settings = _settings(work)
    initialise(settings)
    bundle = work / "bundle"
    with Gateway.open(settings) as gw:
        with gw.sessions() as session, session.begin():
            _fill(session, count)
        with gw.sessions() as session:
            audit.export_bundle(session, bundle, gw.signing_key)
    env = {**os.environ, "GATEWAY_DATA_DIR": str(work / "unused")}
    gateway = [sys.executable, "-c", "from gateway.cli import main; main(prog_name='gateway')"]
    events = str(bundle / "events.jsonl")
    ratios, pairs = [], []
    for _ in range(runs):
        plain = _child_cpu([sys.executable, "-c", PLAIN_CHECK, events], env)
        full = _child_cpu([*gateway, "audit", "verify", "--bundle", str(bundle)], env)
        pairs.append((plain, full))
        ratios.append(full[0] / plain[0])
    best = sorted(range(runs), key=lambda i: ratios[i])[runs // 2]  # the median pair
    (plain_cpu, plain_wall), (full_cpu, full_wall) = pairs[best]
    ratio = ratios[best]
    return [
        {
            "measure": f"plain hash-chain check, {count:,} events (baseline)",
            "CPU s": round(plain_cpu, 2),
            "wall s": round(plain_wall, 2),
            "per event": f"{plain_cpu / count * 1e6:.1f} us CPU",
            "target": "",
            "met": "",
        },
        {
            "measure": f"gateway audit verify --bundle, {count:,} events",
            "CPU s": round(full_cpu, 2),
            "wall s": round(full_wall, 2),
            "per event": f"{ratio:.2f}x the plain check (median of {runs}; "
            f"range {min(ratios):.2f} to {max(ratios):.2f})",
            "target": "<= 1.5x",
            "met": "yes" if ratio <= 1.5 else "no",
        },
    ]


def run(events: int = EVENTS, bundle_events: int = BUNDLE_EVENTS) -> list[dict[str, Any]]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="gateway-audit-") as folder:
        rows += _append(Path(folder) / "append", APPENDS)
        print(json.dumps(rows[-2:]), flush=True)
    with tempfile.TemporaryDirectory(prefix="gateway-audit-") as folder:
        rows += _bundle_verify(Path(folder), bundle_events)
        print(json.dumps(rows[-1]), flush=True)
    with tempfile.TemporaryDirectory(prefix="gateway-audit-") as folder:
        rows.append(_live_verify(Path(folder), events))
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    run(*(int(a) for a in sys.argv[1:3]))
