"""HTTP load on the loopback: server CPU per request, latency and throughput, at 1, 2 and
4 workers (``gateway serve --workers N``), with ``/healthz`` as the baseline measured in
the same run.

    python -m bench.run http        (or: python -m bench.http_load)

A throwaway gateway (SQLite in a temporary folder, the repository's agreements) gets a
small evaluations extract, an analyst token and a reviewer token, and one stored
release. Then, for each worker count, a real server runs in its own process and a
closed-loop load generator (threads in this process, one keep-alive connection each)
sends, one endpoint at a time:

- ``GET /healthz`` (no token, no database): the baseline;
- the stored release asked again (a cached release: authentication, resolving and
  identifying the query, the stored body, a ``release-repeated`` audit event);
- the same query with ``dry_run`` (a preview: no audit event);
- ``GET /v1/agreements/{id}/budget`` (a budget read).

Server CPU is read from ``/proc`` (user + system of the server's whole process tree,
before and after), so the load generator's own CPU is not counted. Reported per
endpoint: requests/s, latency p50/p95/p99 (ms), server CPU per request (ms) and its
ratio to ``/healthz`` at the same worker count. Issue 14's targets: a cached release at
most 4x ``/healthz``, a preview at most 3x, a budget read at most 2x; 2 workers serve at
least 1.6x the cached releases/s of 1 worker.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
AGREEMENT = "student-teaching-bayview-eastport"
DISTRICT = "eastport-ps"
WORKERS = (1, 2, 4)
SECONDS = 6.0
QUERY = {
    "datasets": ["evaluations"],
    "measure": {"kind": "count"},
    "group_by": ["grade_band"],
    "epsilon": 0.2,
}
TARGETS = {"cached release": 4.0, "preview": 3.0, "budget read": 2.0}


def _extract(path: Path, teachers: int = 600) -> Path:
    bands = ["PK-2", "3-5", "6-8", "9-12"]
    lines = ["MEPID,SY,Grade Span,Summative Rating,School Code,Yrs Experience"]
    for i in range(teachers):
        lines.append(f"{300000 + i},2025,{bands[i % 4]},{1 + i % 4},S-0{1 + i % 3},{i % 9}")
    path.write_text("\n".join(lines) + "\n")
    return path


def prepare(work: Path) -> tuple[dict[str, str], str, str]:
    """A gateway in ``work`` with data, tokens and one stored release; its environment."""
    from gateway import audit, credentials
    from gateway.config import Settings
    from gateway.context import Gateway, initialise
    from gateway.ingest import upload_extract

    env = {
        "GATEWAY_DATA_DIR": str(work / "data"),
        "GATEWAY_AGREEMENTS_DIR": str(REPO / "agreements"),
        "GATEWAY_POLICIES_DIR": str(REPO / "policies"),
    }
    if os.environ.get("GATEWAY_BENCH_DATABASE_URL"):
        env["GATEWAY_DATABASE_URL"] = os.environ["GATEWAY_BENCH_DATABASE_URL"]
    settings = Settings(
        _env_file=None,
        data_dir=work / "data",
        database_url=env.get("GATEWAY_DATABASE_URL"),
        agreements_dir=REPO / "agreements",
        policies_dir=REPO / "policies",
    )
    initialise(settings)
    tokens = {}
    with Gateway.open(settings) as gw:
        upload_extract(
            gw,
            agreement_id=AGREEMENT,
            party=DISTRICT,
            dataset="evaluations",
            path=_extract(work / "evaluations.csv"),
            actor=audit.Actor(role="uploader", party=DISTRICT),
        )
        for role, party in (("analyst", DISTRICT), ("reviewer", None)):
            with gw.sessions() as session, session.begin():
                tokens[role] = credentials.issue(
                    session,
                    master_key=gw.master_key,
                    registry=gw.registry,
                    agreement_ids=[AGREEMENT],
                    role=role,
                    party=party,
                    expires=None,
                    actor=audit.OPERATOR,
                ).token
    return env, tokens["analyst"], tokens["reviewer"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _tree_cpu(root: int) -> float:
    """User + system CPU seconds of ``root`` and every process under it."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / ticks
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        tree.update(children)
        frontier.extend(children)
    return sum(times.get(pid, 0.0) for pid in tree)


class Server:
    def __init__(self, env: dict[str, str], workers: int, log: Path) -> None:
        self.port = _free_port()
        gateway = str(Path(sys.executable).with_name("gateway"))
        command = [gateway, "serve", "--port", str(self.port)]
        if workers > 1:  # one worker is the default (and what older versions ran)
            command += ["--workers", str(workers)]
        with log.open("w") as output:
            self.process = subprocess.Popen(
                command, env={**os.environ, **env}, stdout=output, stderr=subprocess.STDOUT
            )
        self.log = log
        deadline = time.monotonic() + 120
        while True:
            try:
                if _once(self.port, "GET", "/healthz", {}, None) == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)

    def cpu(self) -> float:
        return _tree_cpu(self.process.pid)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def _once(port: int, method: str, path: str, headers: dict[str, str], body: bytes | None) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


Request = tuple[str, str, dict[str, str], bytes | None]


def load(port: int, request: Request, *, clients: int, seconds: float) -> tuple[list[float], float]:
    """Closed-loop load for ``seconds``: each client sends the next request as soon as the
    last is answered. Returns every latency (s) and the wall time."""
    method, path, headers, body = request
    latencies: list[list[float]] = [[] for _ in range(clients)]
    failures: list[int] = []
    stop = time.monotonic() + seconds

    def client(mine: list[float]) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while time.monotonic() < stop:
            started = time.perf_counter()
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
            mine.append(time.perf_counter() - started)
            if response.status != 200:
                failures.append(response.status)
        connection.close()

    threads = [threading.Thread(target=client, args=(mine,)) for mine in latencies]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if failures:
        raise RuntimeError(f"{path} answered {sorted(set(failures))}")
    return [x for mine in latencies for x in mine], wall


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def requests(analyst: str, reviewer: str) -> dict[str, Request]:
    asked = json.dumps(QUERY).encode()
    as_analyst = {"Authorization": f"Bearer {analyst}", "Content-Type": "application/json"}
    releases = f"/v1/agreements/{AGREEMENT}/releases"
    return {
        "/healthz": ("GET", "/healthz", {}, None),
        "cached release": ("POST", releases, as_analyst, asked),
        "preview": ("POST", f"{releases}?dry_run=true", as_analyst, asked),
        "budget read": (
            "GET",
            f"/v1/agreements/{AGREEMENT}/budget",
            {"Authorization": f"Bearer {reviewer}"},
            None,
        ),
    }


def run(
    workers: tuple[int, ...] = WORKERS,
    seconds: float = SECONDS,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gateway-http-") as folder:
        work = Path(folder)
        env, analyst, reviewer = prepare(work)
        kinds = requests(analyst, reviewer)
        # The first release of the query is computed and stored; every later one repeats it.
        port_env = {**env}
        for count in workers:
            server = Server(port_env, count, work / f"serve-{count}.log")
            try:
                # Warm every worker: imports done, caches filled, the release stored.
                for request in kinds.values():
                    load(server.port, request, clients=2 * count, seconds=1.0)
                baseline = None
                for name, request in kinds.items():
                    clients = max(2, 2 * count)
                    before = server.cpu()
                    latencies, wall = load(server.port, request, clients=clients, seconds=seconds)
                    cpu_ms = (server.cpu() - before) / len(latencies) * 1000
                    baseline = cpu_ms if baseline is None else baseline
                    ratio = cpu_ms / baseline
                    target = TARGETS.get(name)
                    row: dict[str, Any] = {
                        "workers": count,
                        "request": name,
                        "requests": len(latencies),
                        "requests/s": round(len(latencies) / wall, 1),
                        "p50 ms": round(statistics.median(latencies) * 1000, 1),
                        "p95 ms": round(_percentile(latencies, 95) * 1000, 1),
                        "p99 ms": round(_percentile(latencies, 99) * 1000, 1),
                        "server CPU ms/request": round(cpu_ms, 2),
                        "x /healthz": round(ratio, 2),
                        "target": f"<= {target}x" if target else "baseline",
                        "met": ("yes" if ratio <= target else "no") if target else "",
                    }
                    echo(json.dumps(row))
                    rows.append(row)
            finally:
                server.stop()
    one = {r["request"]: r for r in rows if r["workers"] == 1}
    for row in list(rows):
        if row["request"] == "cached release" and row["workers"] > 1 and one:
            gain = row["requests/s"] / one["cached release"]["requests/s"]
            rows.append(
                {
                    "workers": row["workers"],
                    "request": f"cached releases/s vs 1 worker: {gain:.2f}x",
                    "requests": "",
                    "requests/s": "",
                    "p50 ms": "",
                    "p95 ms": "",
                    "p99 ms": "",
                    "server CPU ms/request": "",
                    "x /healthz": "",
                    "target": ">= 1.6x at 2 workers" if row["workers"] == 2 else "",
                    "met": ("yes" if gain >= 1.6 else "no") if row["workers"] == 2 else "",
                }
            )
    return rows


if __name__ == "__main__":
    run(seconds=float(sys.argv[1]) if len(sys.argv) > 1 else SECONDS)
