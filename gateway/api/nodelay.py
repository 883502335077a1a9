"""uvicorn's HTTP protocol with ``TCP_NODELAY`` set on every connection.

With ``--workers`` uvicorn binds the listening socket itself, as ``socket.socket(family)``
with protocol number 0, and asyncio sets ``TCP_NODELAY`` only on sockets whose protocol
is ``IPPROTO_TCP``. Its connections then keep Nagle's algorithm: a response written as
headers and then body waits for the client's delayed acknowledgement, about 40 ms, so a
client on a kept-alive connection got 25 answers a second however little each cost
(bench/http_load.py, 2 and 4 workers: 44 ms at the median for ``/healthz``). One worker
(asyncio binds the socket) never had the delay; setting the option there too is harmless.

Imported only by ``gateway serve``; uvicorn's worker processes import it by name.
"""

from __future__ import annotations

import asyncio
import socket

from uvicorn.protocols.http.h11_impl import H11Protocol


class NoDelayH11Protocol(H11Protocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        connection = transport.get_extra_info("socket")
        if connection is not None and connection.family in (socket.AF_INET, socket.AF_INET6):
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
