"""Dependencies shared by the routes, as ``Annotated`` aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from gateway.context import Gateway


async def get_gateway(request: Request) -> Gateway:
    # async: a dependency this small is not worth a hop to the thread pool.
    gateway: Gateway = request.app.state.gateway
    return gateway


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


def get_session(gateway: GatewayDep) -> Iterator[Session]:
    """A read-only session: the routes that take one only read (audit log, budget)."""
    with gateway.reads() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
