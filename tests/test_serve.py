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
