"""The Docker image's start command (`gateway init && exec gateway serve ...`, read from
the Dockerfile) runs the real server (uvicorn, in its own process) against the
configured database, and a token issued with `gateway tokens create` works over HTTP.
(No container engine runs here; this is the same command the container runs.)"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path
from typing import Any

from gateway.config import Settings
from tests.conftest import AGREEMENT, REPO, settings_env

GATEWAY = str(Path(sys.executable).with_name("gateway"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str, token: str | None = None) -> tuple[int, Message, bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


def _container_command(port: int) -> str:
    """The Dockerfile's CMD, bound to a free local port instead of 0.0.0.0:8000."""
    dockerfile = (REPO / "Dockerfile").read_text()
    match = re.search(r'^CMD \["sh", "-c", "(.+)"\]$', dockerfile, re.M)
    assert match, "the Dockerfile's CMD is not the expected sh -c form"
    command = match[1]
    assert "gateway init" in command and "gateway serve" in command
    return command.replace("--host 0.0.0.0", "--host 127.0.0.1").replace(
        "--port 8000", f"--port {port}"
    )


def test_serve_answers_over_http_with_an_issued_token(settings: Settings, tmp_path: Path) -> None:
    env = {
        **os.environ,
        **settings_env(settings),
        "PATH": f"{Path(GATEWAY).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    server = subprocess.Popen(
        ["sh", "-c", _container_command(port)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status, _, _ = _get(f"{base}/healthz")
                if status == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "the server did not start within 60 s"
            time.sleep(0.2)
        made = subprocess.run(
            [GATEWAY, "tokens", "create", "--agreement", AGREEMENT, "--role", "reviewer", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        token = json.loads(made.stdout)["token"]
        status, headers, body = _get(f"{base}/v1/agreements", token)
        assert status == 200
        assert [a["id"] for a in json.loads(body)] == [AGREEMENT]
        assert headers["Server"] is None
        assert headers["X-Content-Type-Options"] == "nosniff"
        refused, headers, body = _get(f"{base}/v1/agreements")
        assert refused == 401 and headers["WWW-Authenticate"] == "Bearer"
        assert json.loads(body)["error"]["code"] == "unauthenticated"
        docs, _, _ = _get(f"{base}/docs")
        assert docs == 404  # the CDN-loading pages are off; /openapi.json stays
        spec, _, body = _get(f"{base}/openapi.json")
        assert (
            spec == 200
            and "bearer"
            in json.loads(body)["components"]["securitySchemes"]["HTTPBearer"]["scheme"].lower()
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    assert token.split("_", 2)[2] not in (tmp_path / "serve.log").read_text()


# --- Nagle's algorithm off on every connection ------------------------------------------


async def _nodelay_seen(protocol: type[Any]) -> int:
    """TCP_NODELAY of the server's side of one connection accepted on a socket bound as
    uvicorn binds it for ``--workers`` (``socket.socket(family)``: protocol number 0)."""
    import asyncio

    import uvicorn
    from uvicorn.server import ServerState

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise AssertionError("no request is sent")

    config = uvicorn.Config(app, http=protocol, log_level="warning")
    config.load()
    state = ServerState()
    seen: list[int] = []

    class Spy(protocol):  # type: ignore[misc, valid-type]
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            connection = transport.get_extra_info("socket")
            seen.append(connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    listening = socket.socket(family=socket.AF_INET)
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Spy(config=config, server_state=state, app_state={}), sock=listening
    )
    try:
        _, writer = await asyncio.open_connection(*listening.getsockname())
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.01)
        writer.close()
    finally:
        server.close()
        await server.wait_closed()
    assert seen, "the connection was never accepted"
    return seen[0]


def test_every_connection_of_a_worker_has_nagles_algorithm_off() -> None:
    """``gateway serve --workers N`` answered 25 requests a second on a kept-alive
    connection: uvicorn's own listening socket (protocol 0) left Nagle on, so a response
    written as headers then body waited for the client's delayed ACK (bench/RESULTS.md).
    The gateway's protocol turns it off on every connection; uvicorn's does not."""
    import asyncio

    from uvicorn.protocols.http.h11_impl import H11Protocol

    from gateway.api.nodelay import NoDelayH11Protocol

    assert asyncio.run(_nodelay_seen(H11Protocol)) == 0  # the premise: uvicorn leaves it on
    assert asyncio.run(_nodelay_seen(NoDelayH11Protocol)) != 0
