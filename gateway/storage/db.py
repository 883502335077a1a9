"""Engine set-up and migrations.

SQLite settings and why:
- ``BEGIN IMMEDIATE`` for every transaction: SQLite then takes its write lock
  at the start, so two writers are serialised instead of both reading the same
  state (an audit chain head, a budget) and one failing late with "database
  is locked". This is the "serialised writes on SQLite" counterpart of
  ``SELECT ... FOR UPDATE`` on PostgreSQL. Sessions from :func:`read_session_factory`
  only read (a token, a budget, the audit log): they begin a plain, deferred
  transaction, so in WAL mode they read a consistent snapshot beside the writer
  instead of queueing for its lock (several workers then serve reads at once).
- WAL journal and a generous busy timeout, so concurrent requests wait their
  turn instead of failing.
- ``secure_delete``: deleted rows are overwritten, not left in free pages.

Every command opens the database and checks that its schema is at the newest
revision; only ``gateway init`` migrates. The check reads ``alembic_version`` with
plain SQL and the newest revision from the migration scripts' text, because loading
Alembic (with Mako and the migration modules) costs a command more than its work
(issue 14): Alembic is imported only to migrate.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from gateway.errors import ConfigurationError, NotInitialised

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Uploads store new educators with INSERT ... RETURNING (SQLite 3.35, March 2021).
MIN_SQLITE = (3, 35)


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with the gateway's connection settings applied."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise ConfigurationError(
                f"SQLite {sqlite3.sqlite_version} is too old: the gateway needs "
                f"{'.'.join(map(str, MIN_SQLITE))} or newer (INSERT ... RETURNING)"
            )
        database = parsed.database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 60})
        _configure_sqlite(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        try:
            return create_engine(url, pool_pre_ping=True)
        except ModuleNotFoundError as missing:
            # PostgreSQL's driver is an extra: SQLite needs nothing (pyproject.toml).
            raise ConfigurationError(
                f"GATEWAY_DATABASE_URL names PostgreSQL, whose driver ({missing.name}) is not "
                "installed: pip install '.[postgres]' in the gateway's source folder"
            ) from None
    raise ConfigurationError(f"unsupported database backend {parsed.get_backend_name()!r}")


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.execute("PRAGMA secure_delete=ON")
        # 64 MiB page cache: bulk uploads update random pages of the pseudonym index.
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        if connection.get_execution_options().get(READS_ONLY):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


#: The execution option that marks a read-only session's connections.
READS_ONLY = "gateway_reads_only"


def read_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions for work that only reads. On SQLite their transactions begin deferred
    (a snapshot, no write lock); on PostgreSQL they are ordinary sessions. Never write
    through one: on SQLite a write there could fail instead of waiting its turn."""
    return sessionmaker(engine.execution_options(**{READS_ONLY: True}), expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits together or not at all."""
    with factory() as session, session.begin():
        yield session


def _alembic_config(engine: Engine) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def upgrade_to_head(engine: Engine) -> None:
    """Create or migrate the schema to the newest revision."""
    from alembic import command

    command.upgrade(_alembic_config(engine), "head")


#: A migration script's ``revision = "..."`` and ``down_revision = ...`` lines.
_REVISION = re.compile(r"^(down_revision|revision)\s*(?::[^=]*)?=\s*(.+?)\s*$", re.MULTILINE)


@cache
def head_revision() -> str:
    """The newest revision of the migration scripts, read from their text.

    The same answer as Alembic's ``ScriptDirectory.get_current_head()`` (a test holds
    them together), without importing Alembic or the scripts: the one revision that no
    script names as its ``down_revision``.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for script in (MIGRATIONS_DIR / "versions").glob("*.py"):
        source = script.read_text(encoding="utf-8")
        found = {m.group(1): m.group(2) for m in _REVISION.finditer(source)}
        if "revision" not in found:
            continue
        revisions.add(found["revision"].strip("\"'"))
        parent = found.get("down_revision", "None").strip("\"'")
        if parent != "None":
            parents.add(parent)
    heads = revisions - parents
    if len(heads) != 1:
        raise ConfigurationError(f"the migration scripts have {len(heads)} heads, not one")
    return heads.pop()


def current_revision(engine: Engine) -> str | None:
    """The database's schema revision; None when it has none (never migrated)."""
    with engine.connect() as connection:
        # Alembic's bookkeeping table, by its default name (env.py keeps the default).
        if not inspect(connection).has_table("alembic_version"):
            return None
        found = connection.execute(text("SELECT version_num FROM alembic_version")).scalars()
        versions = sorted(found)
    if len(versions) > 1:  # branches: never made by these linear migrations
        return ",".join(versions)
    return versions[0] if versions else None


def require_schema_at_head(engine: Engine) -> None:
    """Refuse to run on a database that ``gateway init`` has not brought up to date."""
    current = current_revision(engine)
    if current is None:
        raise NotInitialised("the database is not initialised: run `gateway init` first")
    if current != head_revision():
        raise NotInitialised("the database schema is out of date: run `gateway init` to migrate it")
