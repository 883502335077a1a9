"""Alembic environment: the engine comes from the caller (gateway.storage.db)."""

from __future__ import annotations

from alembic import context

import gateway.storage.datasets
import gateway.storage.extracts
import gateway.storage.releases  # noqa: F401  (registers the budget and release tables)
from gateway.storage.tables import Base

engine = context.config.attributes["engine"]

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
