"""Migrations and database settings, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, select, text

from gateway import audit
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.errors import ConfigurationError, NotInitialised
from gateway.release.query import Query, resolve
from gateway.release.rows import load_rows
from gateway.storage import batches, db
from gateway.storage.datasets import RowBatch, Upload
from tests.conftest import AGREEMENT, upload_generated

EPP_OF_SPED = "northfield-state"


@pytest.mark.empty_database
def test_init_migrates_to_head_and_is_idempotent(settings: Settings) -> None:
    first = initialise(settings)
    second = initialise(settings)
    assert first["initialised"] is True and second["initialised"] is True
    assert first["created"] is True and second["created"] is False
    assert set(second["agreements"].values()) == {"unchanged"}
    engine = db.make_engine(settings.resolved_database_url)
    try:
        assert db.current_revision(engine) == db.head_revision()
        tables = set(inspect(engine).get_table_names())
        assert {"audit_events", "audit_head", "agreements", "key_versions"} <= tables
        with engine.connect() as connection:
            grouped = connection.execute(
                text("SELECT kind, count(*) FROM audit_events GROUP BY kind")
            ).all()
            kinds = {kind: count for kind, count in grouped}
        # Init once; each agreement loaded with its first key and each recipient's budget.
        assert kinds == {
            "gateway-initialised": 1,
            "agreement-loaded": len(first["agreements"]),
            "key-created": len(first["agreements"]),
            # Each agreement's pool, and each of its two recipients' spending limit.
            "budget-changed": 3 * len(first["agreements"]),
        }
    finally:
        engine.dispose()


@pytest.mark.empty_database
def test_open_refuses_an_uninitialised_database(settings: Settings) -> None:
    from gateway import keys

    keys.create_master_key(settings.resolved_master_key_file)
    keys.create_signing_key(settings.resolved_signing_key_file)
    with pytest.raises(NotInitialised, match="gateway init"):
        Gateway.open(settings)


def test_open_refuses_an_outdated_schema(settings: Settings) -> None:
    initialise(settings)
    engine = db.make_engine(settings.resolved_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = 'older'"))
    finally:
        engine.dispose()
    with pytest.raises(NotInitialised, match="out of date"):
        Gateway.open(settings)


def test_the_head_revision_read_from_the_scripts_is_alembics() -> None:
    """Opening a gateway reads the newest revision from the scripts' text, without
    Alembic: it must be the head Alembic migrates to."""
    from alembic.script import ScriptDirectory

    alembic_head = ScriptDirectory(str(db.MIGRATIONS_DIR)).get_current_head()
    assert alembic_head is not None and db.head_revision() == alembic_head


def test_the_schema_revision_is_read_without_alembic(settings: Settings) -> None:
    """``current_revision`` reads alembic_version as Alembic's own context does."""
    from alembic.runtime.migration import MigrationContext

    initialise(settings)
    engine = db.make_engine(settings.resolved_database_url)
    try:
        with engine.connect() as connection:
            theirs = MigrationContext.configure(connection).get_current_revision()
        assert db.current_revision(engine) == theirs == db.head_revision()
        with engine.begin() as connection:
            connection.execute(text("DELETE FROM alembic_version"))
        assert db.current_revision(engine) is None
        with engine.begin() as connection:
            connection.execute(text("DROP TABLE alembic_version"))
        assert db.current_revision(engine) is None
    finally:
        engine.dispose()


def test_sqlite_connections_use_wal_and_secure_delete(tmp_path: object) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert connection.exec_driver_sql("PRAGMA secure_delete").scalar() == 1
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        engine.dispose()


def test_changed_agreement_file_is_recorded(settings: Settings, tmp_path: object) -> None:
    import shutil
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    folder = tmp_path / "agreements"
    shutil.copytree(settings.agreements_dir, folder)
    local = settings.model_copy(update={"agreements_dir": folder})
    initialise(local)
    target = sorted(folder.glob("*.yaml"))[0]
    target.write_text(target.read_text().replace("title:", "title: Amended -", 1))
    with Gateway.open(local) as gw, gw.sessions() as session:
        changed = [
            audit.event_view(e)
            for e in session.scalars(audit.query_events(kind="agreement-changed"))
        ]
    assert len(changed) == 1
    assert changed[0]["agreement"]["id"] == target.stem
    assert (
        changed[0]["details"]["previous"]["content_hash"] != changed[0]["details"]["content_hash"]
    )


def test_open_refuses_schemas_the_database_cannot_store(
    settings: Settings, tmp_path: object
) -> None:
    import shutil
    from pathlib import Path

    from gateway.errors import ConfigurationError

    assert isinstance(tmp_path, Path)
    initialise(settings)
    policies = tmp_path / "policies-copy"
    shutil.copytree(settings.policies_dir, policies)
    schema = policies / "datasets" / "staffing.yaml"
    schema.write_text(
        schema.read_text() + "  union_member:\n    type: boolean\n    role: quasi_identifier\n"
        "    required: false\n    description: A column added without a migration.\n"
    )
    with pytest.raises(ConfigurationError, match="'union_member' has no storage column"):
        Gateway.open(settings.model_copy(update={"policies_dir": policies}))


def _decoded_rows(engine: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row per dataset schema, decoded and sorted (batch order aside)."""
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as connection:
        stored = connection.execute(
            select(Upload.schema_name, RowBatch.payload).join(
                Upload, Upload.seq == RowBatch.upload_seq
            )
        ).all()
    for schema, payload in stored:
        table = batches.decode(bytes(payload), schema)
        rows.setdefault(schema, []).extend(tuple(row.values()) for row in table.to_pylist())
    return {schema: sorted(values, key=repr) for schema, values in rows.items()}


def test_migration_to_row_batches_carries_every_row_over_and_back(
    settings: Settings, tmp_path: Path
) -> None:
    """Revision 0006 turns the typed row tables into column batches; its downgrade
    writes them back. Real uploads of every kind (with and without educators, school
    and cohort years) go down to 0005 and up again, and read the same."""
    agreement_id = "sped-pipeline-northfield-tricounty"
    initialise(settings)
    with Gateway.open(settings) as gw:
        upload_generated(gw, agreement_id, tmp_path / "extracts", seed=3, scale=0.05)
    engine = db.make_engine(settings.resolved_database_url)
    try:
        before = _decoded_rows(engine)
        assert set(before) == {"vacancies", "staffing", "candidate_interest", "completers"}
        config = db._alembic_config(engine)
        command.downgrade(config, "0005")
        with engine.connect() as connection:
            assert "row_batches" not in inspect(connection).get_table_names()
            for schema, rows in before.items():
                stored = connection.execute(text(f"SELECT count(*) FROM rows_{schema}")).scalar()
                assert stored == len(rows), schema
            # An upload that kept no year (an agreement may leave it out): period 0.
            seq = connection.scalar(text("SELECT min(upload_seq) FROM rows_staffing"))
            connection.execute(
                text(
                    "INSERT INTO rows_staffing (upload_seq, educator_ref, position, fte) "
                    "VALUES (:seq, 1, 'teacher', 0.5)"
                ),
                {"seq": seq},
            )
            # A year larger than one batch (100,000 rows) is carried over in pages.
            connection.execute(
                text(
                    "INSERT INTO rows_staffing (upload_seq, educator_ref, school_year, fte) "
                    "VALUES (:seq, :ref, 2031, 1.0)"
                ),
                [{"seq": seq, "ref": 1 + i % 40} for i in range(150_001)],
            )
            connection.commit()
        command.upgrade(config, "head")
        assert db.current_revision(engine) == db.head_revision()
        after = _decoded_rows(engine)
        yearless = (1, None, None, None, "teacher", None, 0.5)
        assert yearless in after["staffing"]
        after["staffing"].remove(yearless)
        paged = [row for row in after["staffing"] if row[1] == 2031]
        assert sorted(row[0] for row in paged) == sorted(1 + i % 40 for i in range(150_001))
        assert set(paged) == {(1 + i, 2031, None, None, None, None, 1.0) for i in range(40)}
        after["staffing"] = [row for row in after["staffing"] if row[1] != 2031]
        assert after == before
        with engine.connect() as connection:
            batch_rows = connection.execute(
                select(RowBatch.period, RowBatch.rows).where(RowBatch.upload_seq == seq)
            ).all()
            assert (0, 1) in batch_rows
            assert sorted(r for p, r in batch_rows if p == 2031) == [50_001, 100_000]
            if engine.dialect.name == "postgresql":  # stored as is, never TOAST-compressed
                storage = connection.scalar(
                    text(
                        "SELECT attstorage FROM pg_attribute WHERE attname = 'payload' "
                        "AND attrelid = 'row_batches'::regclass"
                    )
                )
                assert storage == "e"
    finally:
        engine.dispose()
    with Gateway.open(settings) as gw, gw.sessions() as session:  # and the gateway reads them
        agreement = gw.agreement(agreement_id)
        query = Query.model_validate(
            {"datasets": ["staffing"], "measure": {"kind": "count"}, "epsilon": 1}
        )
        resolved = resolve(query, agreement=agreement, registry=gw.registry, party=EPP_OF_SPED)
        frame = load_rows(session.connection(), resolved, agreement, 1)
        # A count reads one row per teacher (educator_ref comes first in a stored row).
        assert sorted(frame["educator_ref"]) == sorted({row[0] for row in before["staffing"]})


def test_an_sqlite_without_returning_is_refused(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db.sqlite3, "sqlite_version_info", (3, 31, 1))
    monkeypatch.setattr(db.sqlite3, "sqlite_version", "3.31.1")
    with pytest.raises(ConfigurationError, match=r"SQLite 3\.31\.1 is too old: .* 3\.35 or newer"):
        db.make_engine("sqlite:///" + str(settings.data_dir / "old.db"))


def test_migration_to_partnership_releases_carries_the_ledgers_over_and_back(
    settings: Settings, tmp_path: Path
) -> None:
    """Revision 0008 makes each agreement's budget one pool: its total and its spend
    are the sums of the recipients' former shares and spends, so nothing spent is
    forgotten; release_cells (teacher sets kept for the withdrawn differencing check)
    is dropped. The downgrade recreates release_cells and removes the pools."""
    initialise(settings)
    engine = db.make_engine(settings.resolved_database_url)
    try:
        config = db._alembic_config(engine)
        command.downgrade(config, "0007")
        with engine.begin() as connection:
            assert "budget_pools" not in inspect(connection).get_table_names()
            connection.execute(text("DELETE FROM privacy_budgets"))
            connection.execute(
                text(
                    "INSERT INTO privacy_budgets (agreement_id, party, epsilon_total, "
                    "delta_total, epsilon_spent, delta_spent, updated_at) VALUES "
                    "(:a, :p, :et, :dt, :es, :ds, :at)"
                ),
                [
                    {
                        "a": AGREEMENT,
                        "p": "bayview-state",
                        "et": 1_500_000_000_000,
                        "dt": 500_000_000_000,
                        "es": 300_000_000_000,
                        "ds": 7,
                        "at": "2026-11-01",
                    },
                    {
                        "a": AGREEMENT,
                        "p": "eastport-ps",
                        "et": 1_500_000_000_000,
                        "dt": 500_000_000_000,
                        "es": 1_000_000_000_000,
                        "ds": 0,
                        "at": "2026-11-02",
                    },
                ],
            )
        command.upgrade(config, "0008")
        with engine.connect() as connection:
            pool = connection.execute(
                text(
                    "SELECT epsilon_total, delta_total, epsilon_spent, delta_spent "
                    "FROM budget_pools WHERE agreement_id = :a"
                ),
                {"a": AGREEMENT},
            ).one()
            assert tuple(pool) == (3_000_000_000_000, 1_000_000_000_000, 1_300_000_000_000, 7)
            assert "release_cells" not in inspect(connection).get_table_names()
            columns = {c["name"] for c in inspect(connection).get_columns("releases")}
            assert {"repeat_key", "status"} <= columns
        # At the next start the pool's total is the agreement's again; the spend stays.
        command.upgrade(config, "head")  # the gateway opens only at the newest revision
        with Gateway.open(settings) as gw, gw.sessions() as session:
            from gateway.release.budget import budget_report

            report = budget_report(session, gw.agreement(AGREEMENT))
        assert report["exact"]["spent"] == "1.3" and report["total"] == 3.0
        assert report["parties"]["eastport-ps"]["exact"]["spent"] == "1"
        command.downgrade(config, "0007")
        with engine.connect() as connection:
            tables = inspect(connection).get_table_names()
            assert "release_cells" in tables and "budget_pools" not in tables
        command.upgrade(config, "head")
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()


def test_migration_to_budget_periods_labels_the_ledger_by_school_year(
    settings: Settings, tmp_path: Path
) -> None:
    """Revision 0009 gives each ledger entry the school year it was reserved in (July 1
    to June 30, UTC, named by its end) and each pool room for a period budget (null:
    the whole life is one period). Spending already in the ledger counts against its
    school year once the agreement declares a period budget. The downgrade drops both."""
    from datetime import UTC, datetime
    from decimal import Decimal

    import sqlalchemy as sa
    import yaml

    from gateway.release.budget import BudgetExhausted, budget_report, reserve
    from tests.conftest import AGREEMENTS_DIR, make_settings

    initialise(settings)
    engine = db.make_engine(settings.resolved_database_url)
    entries = sa.table(
        "budget_entries",
        sa.column("agreement_id", sa.String()),
        sa.column("party", sa.String()),
        sa.column("release_id", sa.String()),
        sa.column("epsilon", sa.BigInteger()),
        sa.column("delta", sa.BigInteger()),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    reserved = [  # (reserved at, its school year)
        (datetime(2026, 6, 30, 23, 59, 59, tzinfo=UTC), 2026),
        (datetime(2026, 7, 1, 0, 0, 0, tzinfo=UTC), 2027),
        (datetime(2027, 3, 15, 9, 30, tzinfo=UTC), 2027),
    ]
    try:
        config = db._alembic_config(engine)
        command.downgrade(config, "0008")
        with engine.begin() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns("budget_entries")}
            assert "period" not in columns
            connection.execute(
                entries.insert(),
                [
                    {
                        "agreement_id": AGREEMENT,
                        "party": "bayview-state",
                        "release_id": f"00000000-0000-0000-0000-00000000000{i}",
                        "epsilon": 400_000_000_000,  # 0.4 each
                        "delta": 1_000_000_000,
                        "created_at": moment,
                    }
                    for i, (moment, _) in enumerate(reserved)
                ],
            )
            connection.execute(
                text(
                    "UPDATE budget_pools SET epsilon_spent = 1200000000000, "
                    "delta_spent = 3000000000 WHERE agreement_id = :a"
                ),
                {"a": AGREEMENT},
            )
        command.upgrade(config, "0009")
        with engine.connect() as connection:
            labelled = connection.execute(
                text("SELECT period FROM budget_entries ORDER BY release_id")
            ).scalars()
            assert list(labelled) == [year for _, year in reserved]
            pools = connection.execute(
                text("SELECT period_epsilon_total, period_delta_total FROM budget_pools")
            ).all()
            assert pools and all(tuple(row) == (None, None) for row in pools)
            indexes = {i["name"] for i in inspect(connection).get_indexes("budget_entries")}
            assert "ix_budget_entries_period" in indexes
        command.upgrade(config, "head")  # the gateway opens only at the newest revision
    finally:
        engine.dispose()
    # The agreement declares a period budget: 2026-27 has spent 0.8 of its 1.0 already.
    folder = tmp_path / "periods"
    folder.mkdir()
    document = yaml.safe_load((AGREEMENTS_DIR / f"{AGREEMENT}.yaml").read_text())
    document["disclosure"].setdefault("overrides", {})["period_budget"] = {
        "epsilon": 1.0,
        "delta": 1.0e-7,
    }
    (folder / f"{AGREEMENT}.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    periods = make_settings(tmp_path, settings.resolved_database_url, agreements_dir=folder)
    in_2027 = datetime(2027, 4, 1, tzinfo=UTC)
    with Gateway.open(periods) as gw:
        with gw.sessions() as session:
            report = budget_report(session, gw.agreement(AGREEMENT), now=in_2027)
        assert report["exact"]["spent"] == "1.2"
        assert report["period"]["school_year"] == 2027
        assert report["period"]["exact"]["spent"] == "0.8"
        with (
            gw.sessions() as session,
            session.begin(),
            pytest.raises(BudgetExhausted, match="school year 2026-27"),
        ):
            reserve(
                session,
                agreement=gw.agreement(AGREEMENT),
                party="bayview-state",
                epsilon=Decimal("0.3"),
                delta=Decimal("1e-9"),
                release_id="00000000-0000-0000-0000-000000000009",
                actor=audit.OPERATOR,
                now=in_2027,
            )
    engine = db.make_engine(settings.resolved_database_url)
    try:
        config = db._alembic_config(engine)
        command.downgrade(config, "0008")
        with engine.connect() as connection:
            assert "period" not in {
                c["name"] for c in inspect(connection).get_columns("budget_entries")
            }
            assert "period_epsilon_total" not in {
                c["name"] for c in inspect(connection).get_columns("budget_pools")
            }
            assert connection.execute(text("SELECT count(*) FROM budget_entries")).scalar() == 3
        command.upgrade(config, "head")
        assert db.current_revision(engine) == db.head_revision()
    finally:
        engine.dispose()
