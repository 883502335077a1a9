"""Two gateway servers, each with two workers (`gateway serve --workers 2`), on different
loopback addresses over one PostgreSQL, under concurrent load from both sides, keep
every guarantee:

- the budget is exact: what the database counts as spent is the sum of the releases
  made, never over the total, and every refusal was for lack of budget;
- one audit chain, verified whole with no gap or fork;
- an identical request is one release, served stored by whichever worker answers;
- the failed-authentication lockout is shared: failures on one server lock the client
  out of the other;
- a token revoked on one host is refused by both at once;
- termination on one host stops uploads and releases on both.

The servers are real processes started the way operators start them. They need
PostgreSQL (GATEWAY_TEST_DATABASE_URL; CI sets it): without it the test is skipped,
except under CI=true, where it fails.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gateway import audit, credentials
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.storage.tables import AuditEvent
from tests.conftest import (
    AGREEMENT,
    DISTRICT,
    POSTGRES_URL,
    DatabaseTemplates,
    _load_evaluations,
    evaluations_csv,
    issue_token,
    make_settings,
    settings_env,
)

GATEWAY = str(Path(sys.executable).with_name("gateway"))
HOSTS = ("127.0.0.2", "127.0.0.3")
#: A client address of its own for the wrong guesses, so its lockout touches no one else.
GUESSER = "127.0.0.9"
#: The revocation's and termination's refusals count as failures too: from other addresses.
REVOKED, TERMINATED = "127.0.0.10", "127.0.0.11"
FAILURE_LIMIT = 5


@dataclass
class Server:
    host: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def request(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        source: str | None = None,
    ) -> tuple[int, Any]:
        connection = http.client.HTTPConnection(
            self.host, self.port, timeout=60, source_address=(source, 0) if source else None
        )
        headers = {"Content-Type": content_type} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data

    def release(
        self, token: str, query: dict[str, Any], source: str | None = None
    ) -> tuple[int, Any]:
        body = json.dumps(query).encode()
        path = f"/v1/agreements/{AGREEMENT}/releases"
        return self.request("POST", path, token=token, body=body, source=source)


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _start(host: str, env: dict[str, str], folder: Path) -> Server:
    port = _free_port(host)
    log = folder / f"serve-{host}.log"
    with log.open("w") as output:  # the child keeps its own handle
        process = subprocess.Popen(
            [GATEWAY, "serve", "--host", host, "--port", str(port), "--workers", "2"],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    return Server(host, port, process, log)


def _wait_ready(server: Server) -> None:
    """Until both of its workers answer (each connection may reach either worker)."""
    deadline = time.monotonic() + 90
    while True:
        try:
            if server.request("GET", "/healthz")[0] == 200:
                return
        except OSError:
            pass
        assert server.process.poll() is None, server.log.read_text()
        assert time.monotonic() < deadline, f"{server.host} did not start: {server.log.read_text()}"
        time.sleep(0.2)


@pytest.fixture
def postgres_settings(database_templates: DatabaseTemplates, tmp_path: Path) -> Iterator[Settings]:
    if POSTGRES_URL is None:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail("the multi-server tests need PostgreSQL: set GATEWAY_TEST_DATABASE_URL")
        pytest.skip("the multi-server tests need PostgreSQL (GATEWAY_TEST_DATABASE_URL)")
    databases = database_templates.postgres
    url = databases.create()
    try:
        yield make_settings(tmp_path, url, auth_failure_limit=FAILURE_LIMIT)
    finally:
        databases.drop(url)


@pytest.fixture
def two_servers(postgres_settings: Settings, tmp_path: Path) -> Iterator[tuple[Server, Server]]:
    settings = postgres_settings
    initialise(settings)
    with Gateway.open(settings) as gw:
        _load_evaluations(gw, tmp_path)
    env = {
        **os.environ,
        **settings_env(settings),
        "GATEWAY_AUTH_FAILURE_LIMIT": str(FAILURE_LIMIT),
        "PATH": f"{Path(GATEWAY).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    servers = [_start(host, env, tmp_path) for host in HOSTS]
    try:
        for server in servers:
            _wait_ready(server)
        yield servers[0], servers[1]
    finally:
        for server in servers:
            server.process.terminate()
        for server in servers:
            server.process.wait(timeout=30)


def _count(epsilon: str) -> dict[str, Any]:
    return {"datasets": ["evaluations"], "measure": {"kind": "count"}, "epsilon": float(epsilon)}


def _events(settings: Settings, kind: str | None = None) -> list[dict[str, Any]]:
    with Gateway.open(settings, checkpoint=False) as gw, gw.sessions() as session:
        statement = audit.query_events(kind=kind)
        return [audit.event_view(e) for e in session.scalars(statement)]


def test_two_servers_with_two_workers_each_hold_every_guarantee(
    two_servers: tuple[Server, Server], postgres_settings: Settings, tmp_path: Path
) -> None:
    a, b = two_servers
    settings = postgres_settings
    analyst = issue_token(settings, role="analyst", party=DISTRICT)
    reviewer = issue_token(settings, role="reviewer", party=None)
    status, before = a.request("GET", f"/v1/agreements/{AGREEMENT}/budget", token=reviewer)
    assert status == 200, before
    share = Decimal(str(before["parties"][DISTRICT]["remaining"]))

    # --- one burst from both sides: new releases (more than the budget holds), one
    # query asked eight times, budget reads, and wrong guesses from another address.
    epsilons = [
        f"{Decimal('0.2') + Decimal(i) / 1000}" for i in range(2 * int(share / Decimal("0.2")) + 4)
    ]
    repeated = _count("0.05")
    bad = "gw_0123456789abcdef_" + "x" * 43

    def fresh(i: int) -> tuple[str, int, Any]:
        return epsilons[i], *(a, b)[i % 2].release(analyst, _count(epsilons[i]))

    def again(i: int) -> tuple[int, Any]:
        return (a, b)[i % 2].release(analyst, repeated)

    def guess(i: int) -> int:
        return (a, b)[i % 2].request("GET", "/v1/agreements", token=bad, source=GUESSER)[0]

    def read(i: int) -> int:
        return (a, b)[i % 2].request("GET", f"/v1/agreements/{AGREEMENT}/budget", token=reviewer)[0]

    with ThreadPoolExecutor(max_workers=12) as pool:
        # Each map submits at once, so every kind of request runs beside the others.
        fresh_done = pool.map(fresh, range(len(epsilons)))
        again_done = pool.map(again, range(8))
        guess_done = pool.map(guess, range(FAILURE_LIMIT))
        read_done = pool.map(read, range(6))
        releases, repeats = list(fresh_done), list(again_done)
        guesses, reads = list(guess_done), list(read_done)

    # The budget is exact.
    made = {body["release_id"]: Decimal(eps) for eps, status, body in releases if status == 200}
    short = [(Decimal(eps), body) for eps, status, body in releases if status != 200]
    assert made and short, "the burst should both spend the share and run past it"
    assert all(body["error"]["code"] == "budget_exhausted" for _, body in short), short
    assert all(status == 200 for status, _ in repeats), repeats
    repeat_ids = {body["release_id"] for _, body in repeats}
    assert len(repeat_ids) == 1, "an identical request is one release, whichever worker answers"
    spent_here = sum(made.values(), Decimal("0.05"))
    status, after = b.request("GET", f"/v1/agreements/{AGREEMENT}/budget", token=reviewer)
    assert status == 200
    party = after["parties"][DISTRICT]
    assert Decimal(str(party["spent"])) - Decimal(str(before["parties"][DISTRICT]["spent"])) == (
        spent_here
    )
    remaining = Decimal(str(party["remaining"]))
    assert remaining >= 0
    assert all(eps > remaining for eps, _ in short), "a refusal with budget left"
    assert reads == [200] * 6

    # One chain: every event in order, each linked to the one before; both servers see it.
    for server in (a, b):
        status, verified = server.request("GET", "/v1/audit/verify", token=reviewer)
        assert status == 200 and verified["ok"], verified
    with Gateway.open(settings, checkpoint=False) as gw, gw.sessions() as session:
        seqs = session.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)).all()
        assert seqs == list(range(1, len(seqs) + 1))
        assert audit.verify_chain(session).ok
        assert session.scalar(select(func.count(func.distinct(AuditEvent.prev_hash)))) == len(seqs)
    kinds = Counter(e["kind"] for e in _events(settings))
    released = [e for e in _events(settings, "release")]
    assert {e["details"]["release_id"] for e in released} == set(made) | repeat_ids
    assert kinds["release-repeated"] == 7

    # The lockout is shared: the guesses were spread over both servers, and now a valid
    # token from that address is refused by each; other clients are not affected.
    assert guesses == [401] * FAILURE_LIMIT
    for server in (a, b):
        status, body = server.request("GET", "/v1/agreements", token=reviewer, source=GUESSER)
        assert status == 429 and body["error"]["code"] == "too_many_attempts"
        assert server.request("GET", "/v1/agreements", token=reviewer)[0] == 200

    # A token revoked on one host is refused by both at once.
    doomed = issue_token(settings, role="reviewer", party=None)
    assert [s.request("GET", "/v1/agreements", token=doomed)[0] for s in (a, b)] == [200, 200]
    credential_id = doomed.split("_")[1]
    with (
        Gateway.open(settings, checkpoint=False) as gw,
        gw.sessions() as session,
        session.begin(),
    ):
        credentials.revoke(
            session, registry=gw.registry, credential_id=credential_id, actor=audit.OPERATOR
        )
    refused = [s.request("GET", "/v1/agreements", token=doomed, source=REVOKED) for s in (a, b)]
    assert [status for status, _ in refused] == [401, 401], refused

    # Termination on one host stops uploads and releases on both.
    uploader = issue_token(settings, role="uploader", party=DISTRICT)
    with Gateway.open(settings, checkpoint=False) as gw:
        gw.terminate(AGREEMENT, actor=audit.OPERATOR, reason="the partnership ended")
    extract, _ = evaluations_csv(tmp_path / "late.csv")
    counted = Counter(e["kind"] for e in _events(settings))
    for server in (a, b):
        status, body = server.release(analyst, _count("0.3"), source=TERMINATED)
        assert status in {401, 403, 409}, body
        status, body = server.request(
            "POST",
            f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads",
            token=uploader,
            body=_multipart(extract),
            content_type=f"multipart/form-data; boundary={BOUNDARY}",
            source=TERMINATED,
        )
        assert status in {401, 403, 409}, body
    now = Counter(e["kind"] for e in _events(settings))
    assert (
        now["release"] == counted["release"]
        and now["upload-accepted"] == counted["upload-accepted"]
    )


BOUNDARY = "gateway-test-boundary"


def _multipart(path: Path) -> bytes:
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{path.name}"\r\nContent-Type: text/csv\r\n\r\n'.encode()
        + path.read_bytes()
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
