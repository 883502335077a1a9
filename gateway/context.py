"""The running gateway: settings, database, master key and agreements, opened together.

:meth:`Gateway.open` is the application factory's workhorse: nothing here runs
at import time. Opening refuses to start with an unsafe or wrong master key,
an uninitialised database, or invalid agreement files, and records any
agreement that is new or changed since the last start in the audit log.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from gateway import audit, keys, termination
from gateway.agreements import Agreement, Registry, load_registry
from gateway.config import Settings
from gateway.errors import ConfigurationError, MasterKeyError, NotInitialised
from gateway.release import budget
from gateway.storage import db
from gateway.storage.datasets import storage_mismatches
from gateway.storage.tables import AgreementRecord, GatewayState


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Gateway:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    master_key: keys.MasterKey
    registry: Registry
    signing_key: audit.Signer
    #: The present, as the budget sees it: the school year a reservation is charged to
    #: and that budget reads show. Tests set another clock to make releases in other
    #: school years; everything else reads the system clock.
    clock: Callable[[], datetime] = field(default=utc_now)
    _reads: sessionmaker[Session] | None = field(default=None, init=False, repr=False)

    @classmethod
    def open(cls, settings: Settings, *, checkpoint: bool = True) -> Gateway:
        """Open an initialised gateway; refuse anything unsafe.

        Opening signs the chain head (``checkpoint``), except for verification, which
        reads the log without writing to it.
        """
        store = keys.key_store(settings)  # files, or an HSM (GATEWAY_KEY_BACKEND)
        master_key = store.load_master_key()
        signing_key = store.load_signing_key()
        registry = load_registry(settings.agreements_dir, settings.policies_dir)
        mismatches = storage_mismatches(registry.schemas)
        if mismatches:
            raise ConfigurationError(
                "the dataset schemas in policies/ do not match the database tables (a "
                f"migration is needed): {'; '.join(mismatches)}"
            )
        engine = db.make_engine(settings.resolved_database_url)
        try:
            db.require_schema_at_head(engine)
            sessions = db.session_factory(engine)
            with db.transaction(sessions) as session:
                state = session.get(GatewayState, 1)
                if state is None:
                    raise NotInitialised("the gateway is not initialised: run `gateway init`")
                if state.master_key_check != master_key.check_value():
                    raise MasterKeyError(
                        "the master key does not match the one this database was "
                        "initialised with; restore the original key file"
                    )
                sync_agreements(session, registry)
                if checkpoint:
                    # Each start signs the chain head (when it moved since the last signature).
                    audit.sign_checkpoint(session, signing_key)
        except BaseException:
            engine.dispose()
            raise
        gateway = cls(settings, engine, sessions, master_key, registry, signing_key)
        if checkpoint:  # verification only reads; every other start enforces end dates
            gateway.terminate_overdue()
        return gateway

    @cached_property
    def reads(self) -> sessionmaker[Session]:
        """Sessions that only read (a token, the budget, the audit log): on SQLite they do
        not queue for the write lock (:func:`gateway.storage.db.read_session_factory`).
        Made once per gateway: a request asks for several."""
        if self._reads is None:
            self._reads = db.read_session_factory(self.engine)
        return self._reads

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def agreement(self, agreement_id: str) -> Agreement:
        return self.registry.agreement(agreement_id)

    def terminate(self, agreement_id: str, *, actor: audit.Actor, reason: str) -> dict[str, Any]:
        """Destroy an agreement's data and key material; return the destruction receipt."""
        agreement = self.agreement(agreement_id)
        with self.sessions() as session, session.begin():
            receipt = termination.terminate(
                session,
                agreement=agreement,
                actor=actor,
                reason=reason,
                receipts_dir=self.settings.data_dir / "receipts",
            )
        termination.release_bytes(self.engine)
        return receipt

    def terminate_overdue(self) -> list[dict[str, Any]]:
        """Terminate every agreement whose end date has passed (at start, and per request)."""
        today = datetime.now(UTC).date()
        with self.sessions() as session:
            overdue = termination.overdue(self.registry.agreements, session, today)
        return [
            self.terminate(a.id, actor=audit.OPERATOR, reason=f"end date {a.ends} passed")
            for a in overdue
        ]

    def terminate_if_overdue(self, agreement: Agreement) -> None:
        """Terminate every overdue agreement when ``agreement``'s end date has passed."""
        if agreement.ends < datetime.now(UTC).date():
            self.terminate_overdue()

    def require_active(self, agreement: Agreement, *, refused: str) -> None:
        """Refuse ``refused`` for a terminated agreement, terminating it first if overdue."""
        self.terminate_if_overdue(agreement)
        with self.reads() as session:
            termination.require_active(session, agreement, refused=refused)


def example_folders() -> tuple[Path, Path] | None:
    """The example agreements and policies of the source folder the gateway runs from
    (``make run`` and ``make test`` install it from there), if it has them."""
    root = Path(__file__).resolve().parent.parent
    agreements, policies = root / "agreements", root / "policies"
    if (
        (root / "pyproject.toml").is_file()
        and any(agreements.glob("*.yaml"))
        and (policies / "datasets").is_dir()
    ):
        return agreements, policies
    return None


def provide_agreements(settings: Settings) -> dict[str, str] | None:
    """Before ``gateway init``: the agreement and policy folders it reads.

    When neither folder exists and neither setting was given (a first run in an empty
    folder), the example agreements and policies are copied there, and what was copied
    is returned. Otherwise a missing folder is refused in one line naming its setting.
    """
    folders = {
        "GATEWAY_AGREEMENTS_DIR": settings.agreements_dir,
        "GATEWAY_POLICIES_DIR": settings.policies_dir,
    }
    missing = [name for name, path in folders.items() if not path.is_dir()]
    if not missing:
        return None
    examples = example_folders()
    chosen = {"agreements_dir", "policies_dir"} & settings.model_fields_set
    if len(missing) < len(folders) or chosen or examples is None:
        name = missing[0]
        what = "agreement" if name == "GATEWAY_AGREEMENTS_DIR" else "dataset schema and profile"
        raise ConfigurationError(
            f"{name} is {folders[name]}, which is not a folder: set {name} to the folder of "
            f"your {what} files (docs/configuration.md)"
        )
    agreements, policies = examples
    shutil.copytree(agreements, settings.agreements_dir, ignore=shutil.ignore_patterns("*~"))
    shutil.copytree(policies, settings.policies_dir, ignore=shutil.ignore_patterns("*~"))
    return {"agreements": str(settings.agreements_dir), "policies": str(settings.policies_dir)}


def initialise(settings: Settings) -> dict[str, Any]:
    """``gateway init``: data folder, master key if absent, database at head, audit chain.

    Safe to run again: it creates only what is missing and migrates the schema. The
    agreement files are checked before any key is made, and a run that fails removes
    the keys it created (nothing refers to them yet), so a failed first run leaves no
    key behind.
    """
    registry = load_registry(settings.agreements_dir, settings.policies_dir)
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)  # personnel data: owner only
    store = keys.key_store(settings)  # files, or an HSM (GATEWAY_KEY_BACKEND)
    key_created = signing_created = False
    try:
        key_created = store.create_master_key()
        master_key = store.load_master_key()
        signing_created = store.create_signing_key()
        signing_key = store.load_signing_key()
        engine = db.make_engine(settings.resolved_database_url)
        try:
            first_time, synced = _initialise_database(
                engine,
                registry,
                master_key=master_key,
                signing_key=signing_key,
                master_key_created=key_created,
                signing_key_created=signing_created,
            )
        finally:
            engine.dispose()
    except BaseException:
        # Only keys this run made, and only before the database recorded them (its
        # transaction is the last step): an existing key is never touched.
        store.discard(master_key=key_created, signing_key=signing_created)
        raise
    return {
        "data_dir": str(data_dir),
        "database": engine.url.render_as_string(hide_password=True),
        "master_key_file": store.master_key_location,
        "master_key_created": key_created,
        "signing_key_file": store.signing_key_location,
        "signing_key_created": signing_created,
        "signing_key_fingerprint": signing_key.fingerprint,
        # The gateway is initialised once this returns; ``created`` says whether this
        # run set its database up (the first run) or found it set up.
        "initialised": True,
        "created": first_time,
        "agreements": synced,
    }


def _initialise_database(
    engine: Engine,
    registry: Registry,
    *,
    master_key: keys.MasterKey,
    signing_key: audit.Signer,
    master_key_created: bool,
    signing_key_created: bool,
) -> tuple[bool, dict[str, str]]:
    """Migrate, then in one transaction: the gateway's state on the first run, the
    agreements, a signed checkpoint. Returns (first run, each agreement's outcome)."""
    db.upgrade_to_head(engine)
    sessions = db.session_factory(engine)
    with db.transaction(sessions) as session:
        audit.initialise_chain(session)
        state = session.get(GatewayState, 1)
        first_time = state is None
        if state is None:
            session.add(
                GatewayState(
                    id=1,
                    created_at=datetime.now(UTC),
                    master_key_check=master_key.check_value(),
                )
            )
            audit.append_event(
                session,
                kind="gateway-initialised",
                actor=audit.OPERATOR,
                details={
                    "database": engine.dialect.name,
                    "schema_revision": db.head_revision(),
                    "master_key_created": master_key_created,
                    "signing_key_created": signing_key_created,
                    "signing_key_fingerprint": signing_key.fingerprint,
                },
            )
        elif state.master_key_check != master_key.check_value():
            raise MasterKeyError(
                "the master key does not match the one this database was "
                "initialised with; restore the original key file"
            )
        synced = sync_agreements(session, registry)
        audit.sign_checkpoint(session, signing_key)
    return first_time, synced


def sync_agreements(session: Session, registry: Registry) -> dict[str, str]:
    """Record new and changed agreement files; give new agreements a key version.

    Returns what happened to each agreement: ``loaded``, ``changed`` or ``unchanged``.
    """
    outcome: dict[str, str] = {}
    records = {r.id: r for r in session.scalars(select(AgreementRecord))}
    if any(
        agreement.id not in records or records[agreement.id].content_hash != agreement.content_hash
        for agreement in registry.agreements.values()
    ):
        # Servers starting together take turns here, so a new or changed agreement file
        # is recorded once (and its key made once), not by each of them; then read again
        # what the one before committed. Only then: a start with nothing to record takes
        # no lock, because the chain head is locked after the budget rows everywhere
        # else (a release reserves, then logs), and taking it first here deadlocked
        # against concurrent releases on PostgreSQL (test_budget's processes).
        audit.lock_head(session)
        records = {
            r.id: r
            for r in session.scalars(
                select(AgreementRecord).execution_options(populate_existing=True)
            )
        }
    now = datetime.now(UTC)
    for agreement in sorted(registry.agreements.values(), key=lambda a: a.id):
        record = records.get(agreement.id)
        details = {"version": agreement.version, "content_hash": agreement.content_hash}
        if record is None:
            session.add(
                AgreementRecord(
                    id=agreement.id,
                    version=agreement.version,
                    content_hash=agreement.content_hash,
                    title=agreement.title,
                    status="active",
                    loaded_at=now,
                    changed_at=now,
                )
            )
            session.flush()
            audit.append_event(
                session,
                kind="agreement-loaded",
                actor=audit.OPERATOR,
                details=details,
                agreement=agreement,
            )
            version = keys.create_key_version(session, agreement.id)
            audit.append_event(
                session,
                kind="key-created",
                actor=audit.OPERATOR,
                details={"key_version": version.version},
                agreement=agreement,
            )
            outcome[agreement.id] = "loaded"
        elif record.content_hash != agreement.content_hash:
            previous = {"version": record.version, "content_hash": record.content_hash}
            record.version = agreement.version
            record.content_hash = agreement.content_hash
            record.title = agreement.title
            record.changed_at = now
            audit.append_event(
                session,
                kind="agreement-changed",
                actor=audit.OPERATOR,
                details={**details, "previous": previous},
                agreement=agreement,
            )
            outcome[agreement.id] = "changed"
        else:
            outcome[agreement.id] = "unchanged"
        budget.sync_budgets(session, agreement)
    return outcome
