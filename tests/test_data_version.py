"""Data versions: a function of the rows a release would read, not of the uploads that
stored them. A re-upload of the same rows keeps the version and its receipt says so."""

from __future__ import annotations

import importlib.util
import json
from datetime import date
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from alembic import command
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select, text, update

from gateway import audit, keys
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.ingest import UploadRefused, upload_extract
from gateway.storage import batches, db
from gateway.storage.datasets import DATASET_COLUMNS, EDUCATOR_DATASETS, RowBatch, Upload
from tests.conftest import upload_generated

AGREEMENT = "student-teaching-bayview-eastport"
DISTRICT = "eastport-ps"
SPED = "sped-pipeline-northfield-tricounty"
OPERATOR = audit.Actor(role="operator")
MIGRATION = Path(batches.__file__).parent / "migrations" / "versions" / "0007_upload_content.py"

HEADER = [
    "MEPID", "SY", "School Code", "Subject", "Grade Span", "Yrs Experience", "Summative Rating"
]  # fmt: skip
ROWS: list[tuple[Any, ...]] = [
    (f"{480000 + i:07d}", year, f"S-0{i % 3 + 1}", ("MATH", "ELA", "SCI")[i % 3],
     ("PK-2", "3-5", "6-8", "9-12")[i % 4], i % 9, 1 + i % 4)
    for i in range(24)
    for year in (2024, 2025)
]  # fmt: skip


def write_csv(path: Path, rows: list[tuple[Any, ...]]) -> Path:
    lines = [",".join(HEADER), *(",".join(str(v) for v in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def upload(gw: Gateway, path: Path, *, agreement: str = AGREEMENT) -> dict[str, Any]:
    return upload_extract(
        gw, agreement_id=agreement, party=DISTRICT, dataset="evaluations", path=path, actor=OPERATOR
    )


def version(
    gw: Gateway,
    *,
    key_version: int | None = 1,
    dataset: str = "evaluations",
    agreement: str = AGREEMENT,
) -> str:
    with gw.sessions() as session:
        return batches.data_version(
            session.connection(), agreement_id=agreement, dataset=dataset, key_version=key_version
        )


def with_value(row: tuple[Any, ...], position: int, value: Any) -> tuple[Any, ...]:
    return (*row[:position], value, *row[position + 1 :])


# --- uploads and their receipts -----------------------------------------------------


def test_a_byte_identical_reupload_keeps_the_data_version(gateway: Gateway, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "evaluations.csv", ROWS)
    first = upload(gateway, path)
    again = upload(gateway, path)
    assert first["unchanged"] is False and again["unchanged"] is True
    assert first["data_version"] == again["data_version"] == version(gateway)
    assert len(again["data_version"]) == 64
    # Still an upload like any other: recorded, audited, replacing the earlier one's years.
    assert [r["period"] for r in again["replaced"]] == [2024, 2025]
    with gateway.sessions() as session:
        stored = json.loads(
            session.scalars(
                select(Upload.receipt).where(Upload.upload_id == again["upload_id"])
            ).one()
        )
        events = [
            audit.event_view(e)["details"]
            for e in session.scalars(audit.query_events(kind="upload-accepted"))
        ]
    assert stored["data_version"] == again["data_version"] and stored["unchanged"] is True
    assert [(e["upload_id"], e["data_version"], e["unchanged"]) for e in events] == [
        (first["upload_id"], first["data_version"], False),
        (again["upload_id"], again["data_version"], True),
    ]


def test_the_same_rows_in_another_order_or_format_keep_it(gateway: Gateway, tmp_path: Path) -> None:
    first = upload(gateway, write_csv(tmp_path / "a.csv", ROWS))
    frame = pd.DataFrame(list(reversed(ROWS)), columns=HEADER)
    frame.to_parquet(tmp_path / "b.parquet")
    with pd.ExcelWriter(tmp_path / "c.xlsx", engine="openpyxl") as writer:
        frame.sample(frac=1, random_state=3).to_excel(writer, index=False)
    again = [
        upload(gateway, write_csv(tmp_path / "reversed.csv", list(reversed(ROWS)))),
        upload(gateway, tmp_path / "b.parquet"),
        upload(gateway, tmp_path / "c.xlsx"),
        # The same teachers written as the normalisation reads them (no leading zeros).
        upload(gateway, write_csv(tmp_path / "d.csv", [with_value(r, 0, r[0][1:]) for r in ROWS])),
    ]
    assert [r["file"]["format"] for r in again] == ["csv", "parquet", "xlsx", "csv"]
    assert [r["unchanged"] for r in again] == [True] * 4
    assert {r["data_version"] for r in again} == {first["data_version"]}


@pytest.mark.parametrize(
    "change",
    ["one changed value", "one value emptied", "one added row", "one removed row"],
)
def test_a_changed_added_or_removed_row_changes_it(
    gateway: Gateway, tmp_path: Path, change: str
) -> None:
    original = upload(gateway, write_csv(tmp_path / "a.csv", ROWS))
    rows = list(ROWS)
    if change == "one changed value":
        rows[7] = with_value(rows[7], 6, rows[7][6] % 4 + 1)  # another rating
    elif change == "one value emptied":
        rows[7] = with_value(rows[7], 5, "")  # years of experience not given
    elif change == "one added row":
        rows.append(("0499999", 2025, "S-01", "MATH", "3-5", 4, 2))
    else:
        del rows[7]
    changed = upload(gateway, write_csv(tmp_path / "b.csv", rows))
    assert changed["unchanged"] is False
    assert changed["data_version"] != original["data_version"]
    # The version is a function of the content: the original rows bring the original back.
    restored = upload(gateway, write_csv(tmp_path / "c.csv", ROWS))
    assert restored["unchanged"] is False and restored["data_version"] == original["data_version"]


def test_a_reupload_of_one_year_with_identical_rows_keeps_it(
    gateway: Gateway, tmp_path: Path
) -> None:
    both = upload(gateway, write_csv(tmp_path / "both.csv", ROWS))
    only_2025 = [r for r in ROWS if r[1] == 2025]
    same = upload(gateway, write_csv(tmp_path / "2025.csv", only_2025))
    assert [(r["upload_id"], r["period"]) for r in same["replaced"]] == [(both["upload_id"], 2025)]
    assert same["unchanged"] is True and same["data_version"] == both["data_version"]
    edited = upload(
        gateway,
        write_csv(tmp_path / "edited.csv", [with_value(only_2025[0], 5, 30), *only_2025[1:]]),
    )
    assert edited["unchanged"] is False and edited["data_version"] != both["data_version"]
    # The 2024 rows of the first upload and the 2025 rows of the third are what is read.
    back = upload(gateway, write_csv(tmp_path / "again.csv", only_2025))
    assert back["data_version"] == both["data_version"]


def test_a_key_rotation_changes_what_is_readable_and_so_the_version(
    gateway: Gateway, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "evaluations.csv", ROWS)
    first = upload(gateway, path)
    empty = version(gateway, key_version=None)  # nothing with educators is readable
    assert first["data_version"] == version(gateway, key_version=1) != empty
    with gateway.sessions() as session, session.begin():
        keys.rotate_key(session, agreement=gateway.agreement(AGREEMENT), actor=OPERATOR)
    # Rows stored under key version 1 do not link under version 2: a release reads none.
    assert version(gateway, key_version=2) == empty
    assert version(gateway, key_version=1) == first["data_version"]
    again = upload(gateway, path)  # the same file, pseudonymised under the new key
    assert again["key_version"] == 2 and again["unchanged"] is False
    assert again["data_version"] == version(gateway, key_version=2)
    assert again["data_version"] not in (first["data_version"], empty)
    assert version(gateway, key_version=1) == empty  # its years were replaced
    assert upload(gateway, path)["unchanged"] is True


def test_datasets_without_educators_keep_their_version_across_a_key_rotation(
    gateway: Gateway, tmp_path: Path
) -> None:
    upload_generated(gateway, SPED, tmp_path / "extracts", seed=5, scale=0.05)

    def versions(key_version: int) -> dict[str, str]:
        names = ("vacancies", "candidate_interest", "staffing", "completers")
        return {
            n: version(gateway, key_version=key_version, dataset=n, agreement=SPED) for n in names
        }

    before = versions(1)
    with gateway.sessions() as session, session.begin():
        keys.rotate_key(session, agreement=gateway.agreement(SPED), actor=OPERATOR)
    after = versions(2)
    assert [name for name in before if before[name] == after[name]] == [
        "vacancies",
        "candidate_interest",
    ]


def test_a_refused_upload_has_no_data_version(gateway: Gateway, tmp_path: Path) -> None:
    upload(gateway, write_csv(tmp_path / "a.csv", ROWS))
    with pytest.raises(UploadRefused) as refused:
        upload(gateway, write_csv(tmp_path / "b.csv", [with_value(ROWS[0], 6, 9), *ROWS[1:]]))
    assert refused.value.receipt["data_version"] is None
    assert refused.value.receipt["unchanged"] is None


def test_a_batch_without_a_stored_digest_is_digested_on_read(
    gateway: Gateway, tmp_path: Path
) -> None:
    stored = upload(gateway, write_csv(tmp_path / "a.csv", ROWS))["data_version"]
    with gateway.sessions() as session, session.begin():
        session.execute(update(RowBatch).values(content_digest=None))
    assert version(gateway) == stored


# --- the digest itself ----------------------------------------------------------------

VALUES: dict[str, st.SearchStrategy[Any]] = {
    "integer": st.integers(-(2**63), 2**63 - 1) | st.integers(-3, 3),
    "number": st.floats(allow_nan=False, allow_infinity=False),
    "string": st.sampled_from(["MATH", "ELA", "S-01", "", "ÉLÈVE", "'=1+2"]) | st.text(),
    "date": st.dates(min_value=date(1900, 1, 1), max_value=date(2100, 12, 31)),
}


@st.composite
def stored_rows(draw: st.DrawFn) -> tuple[str, list[str], list[tuple[Any, ...]]]:
    """A dataset schema, the columns an upload kept and its rows, some cells empty."""
    schema = draw(st.sampled_from(sorted(DATASET_COLUMNS)))
    types = DATASET_COLUMNS[schema]
    columns = draw(st.lists(st.sampled_from(sorted(types)), min_size=1, unique=True))
    if schema in EDUCATOR_DATASETS:
        columns.append(batches.EDUCATOR_REF)
    kinds = {**types, batches.EDUCATOR_REF: "integer"}
    row = st.tuples(*(st.none() | VALUES[kinds[c]] for c in columns))
    return schema, columns, draw(st.lists(row, min_size=1, max_size=30))


def digest_of(schema: str, columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    """The digest as an upload stores it: typed, then compacted and encoded."""
    types = batches.storage_schema(schema)
    arrays = {c: pa.array([r[i] for r in rows], types.field(c).type) for i, c in enumerate(columns)}
    payload = batches.encode(schema, arrays)
    digest = batches.payload_digest(payload)
    assert digest == batches.content_digest(arrays)  # as typed, and as stored
    assert digest == frozen_migration().payload_digest(payload)  # as migration 0007 fills it
    decoded = batches.decode(payload, schema)  # every column, the unkept ones empty
    assert digest == batches.content_digest({n: decoded.column(n) for n in decoded.column_names})
    return digest


@cache
def frozen_migration() -> ModuleType:
    spec = importlib.util.spec_from_file_location("migration_0007", MIGRATION)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@settings(max_examples=150, deadline=None)
@given(stored_rows(), st.randoms(use_true_random=False), st.data())
def test_the_digest_ignores_order_and_splitting_and_sees_every_change(
    case: tuple[str, list[str], list[tuple[Any, ...]]], random: Any, data: st.DataObject
) -> None:
    schema, columns, rows = case
    whole = digest_of(schema, columns, rows)

    # The same rows shuffled and cut into batches (chunks, years, uploads) add up alike.
    shuffled = random.sample(rows, len(rows))
    cuts = sorted(random.sample(range(1, len(rows)), random.randint(0, len(rows) - 1)))
    parts = [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(rows)], strict=True)]
    assert batches.add_digests(digest_of(schema, columns, part) for part in parts) == whole

    # Any change of one cell (to another value or empty), one more row, one row less.
    kinds = {**DATASET_COLUMNS[schema], batches.EDUCATOR_REF: "integer"}
    at = data.draw(st.integers(0, len(rows) - 1))
    column = data.draw(st.integers(0, len(columns) - 1))
    new = data.draw(st.none() | VALUES[kinds[columns[column]]])
    if new != rows[at][column] or (new is None) != (rows[at][column] is None):
        changed = [*rows[:at], with_value(rows[at], column, new), *rows[at + 1 :]]
        assert digest_of(schema, columns, changed) != whole
    assert digest_of(schema, columns, [*rows, data.draw(st.sampled_from(rows))]) != whole
    if len(rows) > 1:
        assert digest_of(schema, columns, rows[:at] + rows[at + 1 :]) != whole


def test_the_digest_reads_values_not_how_they_are_stored() -> None:
    narrow = batches.content_digest({"score": pa.array([1, 2, None], pa.int8())})
    assert narrow == batches.content_digest({"score": pa.array([1, 2, None], pa.int64())})
    text = batches.content_digest({"code": pa.array(["A", None, "B"])})
    assert text == batches.content_digest({"code": pa.array(["A", None, "B"]).dictionary_encode()})
    with_empty_value = pa.DictionaryArray.from_arrays(pa.array([0, 1, None]), ["A", None])
    assert batches.content_digest({"code": with_empty_value}) == batches.content_digest(
        {"code": pa.array(["A", None, None])}
    )
    assert batches.content_digest({"x": pa.array([-0.0])}) == batches.content_digest(
        {"x": pa.array([0.0])}
    )
    # An empty cell is not a value, not even 0 or the empty text; columns are told apart.
    assert batches.content_digest({"n": pa.array([None], pa.int64())}) != batches.content_digest(
        {"n": pa.array([0])}
    )
    assert batches.content_digest({"t": pa.array([None], pa.string())}) != batches.content_digest(
        {"t": pa.array([""])}
    )
    assert batches.content_digest({"a": pa.array([1]), "b": pa.array([2])}) != (
        batches.content_digest({"a": pa.array([2]), "b": pa.array([1])})
    )
    # Rows stay rows: the same column values paired differently are other rows.
    assert batches.content_digest(
        {"a": pa.array([1, 2]), "b": pa.array(["x", "y"])}
    ) != batches.content_digest({"a": pa.array([1, 2]), "b": pa.array(["y", "x"])})


# --- migration 0007 --------------------------------------------------------------------


def test_migration_0007_fills_the_digest_of_every_stored_batch(
    settings: Settings, tmp_path: Path
) -> None:
    """Uploads stored at head keep their digests and data versions through a downgrade
    to 0006 (no digest column) and an upgrade that recomputes them, in pages."""
    initialise(settings)
    with Gateway.open(settings) as gw:
        upload(gw, write_csv(tmp_path / "evaluations.csv", ROWS))
        upload_generated(gw, SPED, tmp_path / "extracts", seed=3, scale=0.05)
        before = {
            "evaluations": version(gw),
            "staffing": version(gw, dataset="staffing", agreement=SPED),
            "vacancies": version(gw, dataset="vacancies", agreement=SPED, key_version=None),
        }
    engine = db.make_engine(settings.resolved_database_url)
    try:
        with engine.connect() as connection:
            digests = dict(connection.execute(select(RowBatch.id, RowBatch.content_digest)).all())
        assert digests and None not in digests.values()
        config = db._alembic_config(engine)
        command.downgrade(config, "0006")
        with engine.connect() as connection:
            columns = {c["name"] for c in inspect(connection).get_columns("row_batches")}
            assert "content_digest" not in columns
            # More batches than one page of the migration (1,000): copies of a small one.
            small = min(digests)
            connection.execute(
                text(
                    "INSERT INTO row_batches (upload_seq, period, rows, payload) "
                    "SELECT upload_seq, period, rows, payload FROM row_batches WHERE id = :id"
                ),
                [{"id": small}] * 1_100,
            )
            connection.commit()
        command.upgrade(config, "0007")
        with engine.connect() as connection:
            after = dict(connection.execute(select(RowBatch.id, RowBatch.content_digest)).all())
        assert {i: after[i] for i in digests} == digests  # the same digest as at upload
        copies = {d for i, d in after.items() if i not in digests}
        assert copies == {digests[small]}
        with engine.connect() as connection:
            connection.execute(text("DELETE FROM row_batches WHERE id > :id"), {"id": max(digests)})
            connection.commit()
        command.upgrade(config, "head")
    finally:
        engine.dispose()
    with Gateway.open(settings) as gw:
        assert {
            "evaluations": version(gw),
            "staffing": version(gw, dataset="staffing", agreement=SPED),
            "vacancies": version(gw, dataset="vacancies", agreement=SPED, key_version=None),
        } == before


def test_the_command_line_says_when_a_reupload_left_the_rows_unchanged(
    settings: Settings, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from gateway.cli import main
    from tests.conftest import AGREEMENT, DISTRICT, evaluations_csv, settings_env

    initialise(settings)
    path, _ = evaluations_csv(tmp_path / "e.csv")
    args = ["upload", "--agreement", AGREEMENT, "--party", DISTRICT, "--dataset"]
    env = settings_env(settings)
    first = CliRunner().invoke(main, [*args, "evaluations", str(path)], env=env)
    again = CliRunner().invoke(main, [*args, "evaluations", str(path)], env=env)
    assert first.exit_code == 0 and again.exit_code == 0, again.output
    assert "unchanged" not in first.stdout
    assert "the stored rows are unchanged (data version kept)" in again.stdout
