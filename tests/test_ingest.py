"""Uploads: readers, validation, the identifier swap, atomicity and receipts."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from sqlalchemy import func, select, text

from gateway import audit
from gateway.app import create_app
from gateway.config import Settings
from gateway.context import Gateway
from gateway.errors import NotFound, PolicyViolation, SchemaError
from gateway.ingest import UploadRefused, upload_extract
from gateway.storage import batches
from gateway.storage.datasets import Educator, RowBatch, Upload
from tests.conftest import Databases, uploader

AGREEMENT = "student-teaching-bayview-eastport"
DISTRICT = "eastport-ps"
EPP = "bayview-state"
HEADER = (
    "MEPID,Last Name,First Name,SY,School Code,Subject,Grade Span,Yrs Experience,"
    "Summative Rating,notes"
)
GOOD_ROWS = [
    " 000482913,Okafor,Adaeze,2025,S-01,MATH,6-8,2,3,",
    "482914,Lindqvist,Maren,2025,S-01,ela,3-5,1,4,note",
    "00482915 ,Haddad,Samir,2024,S-02,SCI,9-12,7,2,",
]
RAW_IDS = ["482913", "482914", "482915"]
NAMES = ["Okafor", "Adaeze", "Lindqvist", "Maren", "Haddad", "Samir"]
OPERATOR = audit.Actor(role="operator")


def write_csv(tmp_path: Path, *lines: str, name: str = "extract.csv") -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def upload(
    gw: Gateway, path: Path, dataset: str = "evaluations", party: str = DISTRICT, **kwargs: Any
) -> dict[str, Any]:
    return upload_extract(
        gw,
        agreement_id=AGREEMENT,
        party=party,
        dataset=dataset,
        path=path,
        actor=OPERATOR,
        **kwargs,
    )


def store_state(gw: Gateway) -> dict[str, int]:
    """Counts of everything an upload could write, but the refusal receipts."""
    with gw.sessions() as session:
        state = {
            "row_batches": session.scalar(select(func.count()).select_from(RowBatch)) or 0,
            "rows": session.scalar(select(func.coalesce(func.sum(RowBatch.rows), 0))) or 0,
        }
        state["educators"] = session.scalar(select(func.count()).select_from(Educator)) or 0
        state["accepted"] = (
            session.scalar(
                select(func.count()).select_from(Upload).where(Upload.status == "accepted")
            )
            or 0
        )
    return state


def stored_rows(gw: Gateway, dataset: str = "evaluations") -> list[dict[str, Any]]:
    """Every stored row of a dataset schema, decoded from its column batches."""
    with gw.sessions() as session:
        payloads = session.scalars(
            select(RowBatch.payload)
            .join(Upload, Upload.seq == RowBatch.upload_seq)
            .where(Upload.schema_name == dataset)
            .order_by(RowBatch.id)
        ).all()
    return [row for payload in payloads for row in batches.decode(payload, dataset).to_pylist()]


# --- accepted uploads --------------------------------------------------------------


def test_accepted_csv_receipt_and_rows(gateway: Gateway, tmp_path: Path) -> None:
    receipt = upload(gateway, write_csv(tmp_path, HEADER, *GOOD_ROWS))
    assert receipt["status"] == "accepted"
    assert receipt["rows"] == {"read": 3, "accepted": 3, "rejected": 0}
    assert receipt["agreement"]["id"] == AGREEMENT and receipt["party"] == DISTRICT
    assert receipt["file"]["format"] == "csv" and len(receipt["file"]["sha256"]) == 64
    assert receipt["key_version"] == 1
    kept = {c["column"] for c in receipt["columns"]["kept"]}
    assert kept == {
        "educator_id",
        "school_year",
        "school_code",
        "assignment_subject",
        "grade_band",
        "years_experience",
        "summative_rating",
    }
    dropped = {d["header"]: d["reason"] for d in receipt["columns"]["dropped"]}
    assert dropped == {
        "Last Name": "direct identifier",
        "First Name": "direct identifier",
        "notes": "unknown",
    }
    assert receipt["periods"] == {"2024": 1, "2025": 2}
    rows = stored_rows(gateway)
    # Codes are stored canonical whatever their case in the file; rows by school year.
    assert [(r["school_year"], r["summative_rating"], r["assignment_subject"]) for r in rows] == [
        (2024, 2, "SCI"),
        (2025, 3, "MATH"),
        (2025, 4, "ELA"),
    ]
    with gateway.sessions() as session:
        stored = json.loads(
            session.scalars(
                select(Upload.receipt).where(Upload.upload_id == receipt["upload_id"])
            ).one()
        )
        events = session.scalars(audit.query_events(kind="upload-accepted")).all()
    assert stored["rows"] == receipt["rows"]
    assert [audit.event_view(e)["details"]["upload_id"] for e in events] == [receipt["upload_id"]]


def test_pseudonyms_link_ids_written_differently_by_each_party(
    gateway: Gateway, tmp_path: Path
) -> None:
    upload(gateway, write_csv(tmp_path, HEADER, *GOOD_ROWS))
    completers = write_csv(
        tmp_path,
        "MEPID,Last Name,First Name,Email Address,Program,Program Completion Year,"
        "Completer Status,License Field",
        "482913,Okafor,Adaeze,a@example.org,ELEM,2023,completed,ELEM",
        "  482915,Haddad,Samir,s@example.org,SECSCI,2022,completed,SCI",
        name="completers.csv",
    )
    upload(gateway, completers, dataset="completers", party=EPP)
    evaluations = {r["educator_ref"] for r in stored_rows(gateway)}
    completer_refs = {r["educator_ref"] for r in stored_rows(gateway, "completers")}
    assert len(evaluations) == 3 and len(completer_refs) == 2
    assert completer_refs <= evaluations  # same teacher, same pseudonym, both sides
    with gateway.sessions() as session:
        educators = session.scalars(select(Educator)).all()
    assert {e.key_version for e in educators} == {1}
    assert all(len(e.pseudonym) == 64 for e in educators)


def test_header_names_match_ignoring_case_and_spaces(gateway: Gateway, tmp_path: Path) -> None:
    path = write_csv(tmp_path, "  mepid , sy,SUMMATIVE RATING , school_code", "482913,2025,3,S-01")
    receipt = upload(gateway, path)
    assert {c["header"]: c["column"] for c in receipt["columns"]["kept"]} == {
        "mepid": "educator_id",
        "sy": "school_year",
        "SUMMATIVE RATING": "summative_rating",
        "school_code": "school_code",
    }


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "MEPID": ["000482913", "482914"],
            "Last Name": ["Okafor", "Lindqvist"],
            "SY": [2025, 2025],
            "Summative Rating": [3, 4],
            "Yrs Experience": [2.0, 1.0],
        }
    )


def test_excel_and_parquet_are_read_by_content(gateway: Gateway, tmp_path: Path) -> None:
    xlsx = tmp_path / "ratings.csv"  # misleading extension: content decides
    with pd.ExcelWriter(xlsx, engine="openpyxl") as writer:
        pd.DataFrame({"x": [1]}).to_excel(writer, sheet_name="Notes", index=False)
        frame().to_excel(writer, sheet_name="Ratings", index=False)
    receipt = upload(gateway, xlsx, sheet="Ratings")
    assert receipt["file"]["format"] == "xlsx" and receipt["rows"]["accepted"] == 2

    parquet = tmp_path / "ratings.xlsx"
    frame().assign(SY=[2024, 2024]).to_parquet(parquet)
    receipt = upload(gateway, parquet)
    assert receipt["file"]["format"] == "parquet" and receipt["rows"]["accepted"] == 2
    assert sorted(r["years_experience"] for r in stored_rows(gateway)) == [1, 1, 2, 2]


def test_csv_with_bom_is_accepted(gateway: Gateway, tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join([HEADER, *GOOD_ROWS]).encode())
    assert upload(gateway, path)["rows"]["accepted"] == 3


def test_reupload_replaces_the_same_year_only(gateway: Gateway, tmp_path: Path) -> None:
    first = upload(gateway, write_csv(tmp_path, HEADER, *GOOD_ROWS))
    second = upload(
        gateway, write_csv(tmp_path, HEADER, "482913,X,Y,2025,S-01,MATH,6-8,3,4,", name="b.csv")
    )
    assert second["replaced"] == [{"upload_id": first["upload_id"], "period": 2025, "rows": 2}]
    rows = stored_rows(gateway)
    assert sorted((r["school_year"], r["summative_rating"]) for r in rows) == [(2024, 2), (2025, 4)]


def test_concurrent_uploads_of_the_same_new_teachers_both_land(
    gateway: Gateway, settings: Settings, tmp_path: Path
) -> None:
    """Two parties upload the same 600 new teachers at once, in opposite orders and in
    many chunks: each upload's transaction inserts educators the other also needs. On
    PostgreSQL that deadlocked until an agreement's uploads took a lock; on SQLite
    writes are serialised. Both must be accepted and share one educator per teacher."""
    from concurrent.futures import ThreadPoolExecutor

    gateway.settings = settings.model_copy(update={"upload_chunk_rows": 50})
    ids = [str(700000 + i) for i in range(600)]
    evaluations = write_csv(
        tmp_path, "MEPID,SY,Summative Rating", *(f"{i},2025,3" for i in ids), name="e.csv"
    )
    completers = write_csv(
        tmp_path,
        "MEPID,Program,Program Completion Year,Completer Status,License Field",
        *(f"{i},ELEM,2023,completed,ELEM" for i in reversed(ids)),
        name="c.csv",
    )
    with ThreadPoolExecutor(max_workers=2) as pool:
        district = pool.submit(upload, gateway, evaluations)
        epp = pool.submit(upload, gateway, completers, dataset="completers", party=EPP)
        receipts = [district.result(timeout=120), epp.result(timeout=120)]
    assert [r["rows"]["accepted"] for r in receipts] == [600, 600]
    with gateway.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Educator)) == 600
    evaluated = {r["educator_ref"] for r in stored_rows(gateway)}
    completed = {r["educator_ref"] for r in stored_rows(gateway, "completers")}
    assert evaluated == completed and len(evaluated) == 600


def test_party_may_upload_only_what_it_provides(gateway: Gateway, tmp_path: Path) -> None:
    path = write_csv(tmp_path, HEADER, *GOOD_ROWS)
    with pytest.raises(PolicyViolation, match="provided by 'eastport-ps', not 'bayview-state'"):
        upload(gateway, path, party=EPP)
    with pytest.raises(NotFound, match="no party"):
        upload(gateway, path, party="someone-else")
    with pytest.raises(NotFound, match="no dataset"):
        upload(gateway, path, dataset="payroll")
    with gateway.sessions() as session:
        refused = [
            audit.event_view(e) for e in session.scalars(audit.query_events(kind="upload-refused"))
        ]
    assert len(refused) == 3
    assert store_state(gateway)["accepted"] == 0


# --- refused and partly rejected uploads ---------------------------------------------


def _latin1(tmp_path: Path) -> Path:
    path = tmp_path / "latin1.csv"
    path.write_bytes(
        (HEADER + "\n" + GOOD_ROWS[0] + "\n482916,Müller,Jörg,2025,S-01,MATH,6-8,2,3,\n").encode(
            "latin-1"
        )
    )
    return path


def _utf16(tmp_path: Path) -> Path:
    path = tmp_path / "utf16.csv"
    path.write_bytes("\n".join([HEADER, *GOOD_ROWS]).encode("utf-16"))
    return path


def _truncated_utf8(tmp_path: Path) -> Path:
    path = tmp_path / "cut.csv"
    path.write_bytes(("\n".join([HEADER, *GOOD_ROWS]) + "\n482916,Mü").encode()[:-1])
    return path


def _xls(tmp_path: Path) -> Path:
    path = tmp_path / "old.xls"
    path.write_bytes(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\0" * 512)
    return path


def _zip(tmp_path: Path) -> Path:
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("extract.csv", HEADER)
    return path


def _bad_parquet(tmp_path: Path) -> Path:
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1" + b"\x07" * 100)
    return path


def _missing_sheet(tmp_path: Path) -> Path:
    path = tmp_path / "book.xlsx"
    frame().to_excel(path, index=False, sheet_name="Sheet1")
    return path


def _empty(tmp_path: Path) -> Path:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    return path


def _impossible_date(tmp_path: Path) -> Path:
    return write_csv(
        tmp_path,
        "MEPID,SY,Observer Role,Standard,Rating,Observation Date",
        "482913,2024,district_evaluator,planning,3,2024-02-30",
    )


def _xlsx_formula(tmp_path: Path) -> Path:
    import openpyxl

    path = tmp_path / "formula.xlsx"
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["MEPID", "SY", "Summative Rating"])
    sheet.append(["482913", 2025, "=1+2"])
    book.save(path)
    return path


def _written(path: Path, text_: str) -> Path:
    path.write_text(text_, encoding="utf-8")
    return path


def _rows(*rows: str) -> Callable[[Path], Path]:
    return lambda tmp_path: write_csv(tmp_path, HEADER, *rows)


# (id, file factory, expected substring, extra upload arguments)
MALFORMED: list[tuple[str, Callable[[Path], Path], str, dict[str, Any]]] = [
    ("empty", lambda p: _empty(p), "the file is empty", {}),
    ("header only", _rows(), "header row but no data rows", {}),
    (
        "line longer than a read block",
        lambda p: _written(
            p / "long.csv", f"{HEADER}\n{GOOD_ROWS[0]}\n{GOOD_ROWS[1]}{'x' * 6_000_000}\n"
        ),
        "a line after row 2 could not be read as CSV; expected comma-separated fields on "
        "lines of ordinary length (under 2,097,152 bytes)",
        {},
    ),
    (
        "header only, no final newline",
        lambda p: _written(p / "header.csv", HEADER),
        "header row but no data rows",
        {},
    ),
    ("blank header", lambda p: write_csv(p, ",,", "1,2,3"), "row 1: the header row is blank", {}),
    ("latin-1", _latin1, "line 3: the file is not UTF-8", {}),
    ("utf-16", _utf16, "line 1: the file is UTF-16 text, not UTF-8", {}),
    ("truncated utf-8", _truncated_utf8, "ends in the middle of a UTF-8 character", {}),
    (
        "too few fields",
        _rows(GOOD_ROWS[0], "482914,Lindqvist,Maren,2025"),
        "row 3: expected 10 fields, as in the header row; found 4 fields",
        {},
    ),
    (
        "too many fields",
        _rows(GOOD_ROWS[0], GOOD_ROWS[1] + ",extra,more"),
        "row 3: expected 10 fields, as in the header row; found 12 fields",
        {},
    ),
    (
        "missing required column",
        lambda p: write_csv(p, "MEPID,SY", "482913,2025"),
        "required column(s) missing: summative_rating (or 'Summative Rating')",
        {},
    ),
    (
        "two headers for one column",
        lambda p: write_csv(p, "MEPID,educator_id,SY,Summative Rating", "1,1,2025,3"),
        "columns 'MEPID' and 'educator_id' both map to 'educator_id'",
        {},
    ),
    (
        "invalid educator id",
        _rows(GOOD_ROWS[0], "TEACHER,Lindqvist,Maren,2025,S-01,ELA,3-5,1,4,"),
        "row 3, column 'MEPID' (educator_id): expected an educator ID: 1 to 15 letters and "
        "digits, at least one of them a digit",
        {},
    ),
    (
        "empty educator id",
        _rows(",Lindqvist,Maren,2025,S-01,ELA,3-5,1,4,"),
        "row 2, column 'MEPID' (educator_id): expected an educator ID: 1 to 15 letters and digits",
        {},
    ),
    (
        "rating not a code",
        _rows(GOOD_ROWS[0], "482914,Lindqvist,Maren,2025,S-01,ELA,3-5,1,5,"),
        "row 3, column 'Summative Rating' (summative_rating): expected one of 1, 2, 3, 4; found a "
        "value not in that list",
        {},
    ),
    (
        "year not a number",
        _rows("482914,Lindqvist,Maren,twenty,S-01,ELA,3-5,1,4,"),
        "row 2, column 'SY' (school_year): expected a whole number from 2000 to 2100; found text "
        "that is not a whole number",
        {},
    ),
    (
        "year out of range",
        _rows("482914,Lindqvist,Maren,1990,S-01,ELA,3-5,1,4,"),
        "found a number below 2000",
        {},
    ),
    (
        "negative experience",
        _rows("482914,Lindqvist,Maren,2025,S-01,ELA,3-5,-1,4,"),
        "column 'Yrs Experience' (years_experience): expected a whole number from 0 to 50; found a "
        "number below 0",
        {},
    ),
    (
        "grade band not a code",
        _rows("482914,Lindqvist,Maren,2025,S-01,ELA,K-12,1,4,"),
        "column 'Grade Span' (grade_band): expected one of PK-2, 3-5, 6-8, 9-12",
        {},
    ),
    (
        "school code pattern",
        _rows("482914,Lindqvist,Maren,2025,s 01!,ELA,3-5,1,4,"),
        "found text not matching that pattern",
        {},
    ),
    (
        "spreadsheet formula",
        _rows('482914,Lindqvist,Maren,2025,"=HYPERLINK(""x"")",ELA,3-5,1,4,'),
        "found a spreadsheet formula",
        {},
    ),
    (
        "duplicate key",
        _rows(GOOD_ROWS[0], "482913,Okafor,Adaeze,2025,S-03,SCI,6-8,2,4,"),
        "row 3: expected one row per educator_id, school_year; found the same educator_id, "
        "school_year as row 2",
        {},
    ),
    ("legacy xls", _xls, "legacy Excel .xls files are not accepted", {}),
    ("zip not xlsx", _zip, "ZIP archive but not an Excel workbook", {}),
    ("damaged parquet", _bad_parquet, "the Parquet file cannot be read", {}),
    (
        "missing worksheet",
        _missing_sheet,
        "no worksheet named 'Ratings' (worksheets: Sheet1)",
        {"sheet": "Ratings"},
    ),
]


@pytest.mark.parametrize(
    ("factory", "expected", "extra"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_input_gets_its_precise_error_and_stores_nothing(
    gateway: Gateway,
    tmp_path: Path,
    factory: Callable[[Path], Path],
    expected: str,
    extra: dict[str, Any],
) -> None:
    upload(gateway, write_csv(tmp_path, HEADER, GOOD_ROWS[2], name="baseline.csv"))
    before = store_state(gateway)
    path = factory(tmp_path)
    with pytest.raises(UploadRefused) as refused:
        upload(gateway, path, **extra)
    error = refused.value
    text_of_error = error.message + json.dumps(error.receipt)
    assert expected in text_of_error
    assert path.name in error.message  # the live message names the file...
    assert path.name not in json.dumps(error.receipt)  # ...the stored receipt does not
    for secret in [*RAW_IDS, "TEACHER", *NAMES, "Müller", "HYPERLINK"]:
        assert secret not in text_of_error
    assert store_state(gateway) == before
    assert error.receipt["status"] == "refused"
    with gateway.sessions() as session:
        last = session.scalars(audit.query_events(kind="upload-refused")).all()[-1]
        assert audit.verify_chain(session).ok
    assert audit.event_view(last)["details"]["upload_id"] == error.receipt["upload_id"]


def test_limits_on_size_and_rows(gateway: Gateway, settings: Settings, tmp_path: Path) -> None:
    path = write_csv(tmp_path, HEADER, *GOOD_ROWS)
    small = settings.model_copy(update={"max_upload_bytes": 100})
    gateway.settings = small
    with pytest.raises(UploadRefused, match="more than the 100 the gateway accepts") as big:
        upload(gateway, path)
    assert "GATEWAY_" not in big.value.message  # the uploader's words, not a setting's name
    gateway.settings = settings.model_copy(update={"max_upload_rows": 2, "upload_chunk_rows": 1})
    with pytest.raises(
        UploadRefused, match="more than the 2 data rows the gateway accepts"
    ) as long:
        upload(gateway, path)
    assert "GATEWAY_" not in long.value.message
    # Ragged rows count too, and are stopped while the file is parsed: pyarrow reports
    # them all before the first batch, so a file of nothing else would fill memory.
    ragged = write_csv(tmp_path, HEADER, *["482913,A,B,2025"] * 50, name="ragged.csv")
    with pytest.raises(UploadRefused, match="more than the 2 data rows") as refused:
        upload(gateway, ragged)
    assert "482913" not in refused.value.message + json.dumps(refused.value.receipt)
    assert store_state(gateway)["accepted"] == 0


def test_problems_listed_up_to_100_with_the_total(gateway: Gateway, tmp_path: Path) -> None:
    rows = [f"{500000 + i},A,B,2025,S-01,ELA,3-5,1,9," for i in range(250)]
    with pytest.raises(UploadRefused) as refused:
        upload(gateway, write_csv(tmp_path, HEADER, *rows))
    receipt = refused.value.receipt
    assert receipt["problem_count"] == 250 and len(receipt["problems"]) == 100
    assert [p["row"] for p in receipt["problems"]] == list(range(2, 102))


def test_row_numbers_stay_right_after_ragged_rows_across_chunks(
    gateway: Gateway, settings: Settings, tmp_path: Path
) -> None:
    gateway.settings = settings.model_copy(update={"upload_chunk_rows": 2})
    rows = [GOOD_ROWS[0], "1,2,3", GOOD_ROWS[1], "482916,A,B,2025,S-01,ELA,3-5,1,9,"]
    with pytest.raises(UploadRefused) as refused:
        upload(gateway, write_csv(tmp_path, HEADER, *rows))
    assert [(p["row"], p["column"]) for p in refused.value.receipt["problems"]] == [
        (3, None),
        (5, "summative_rating"),
    ]


@hyp_settings(max_examples=30, deadline=None)
@given(
    rows=st.integers(1, 30_000),
    ragged=st.sets(st.integers(0, 29_999), max_size=5),
    blank_before=st.sets(st.integers(0, 30_000), max_size=5),
    newline=st.sampled_from(["\n", "\r\n", "\r"]),
    chunk_rows=st.integers(1_000, 40_000),
)
def test_csv_chunks_join_small_blocks_and_keep_every_line_number(
    rows: int, ragged: set[int], blank_before: set[int], newline: str, chunk_rows: int
) -> None:
    """pyarrow reads about 32 blocks ahead, so blocks are small and several make a chunk:
    every row comes once, in order, numbered by its line in the file (blank lines, which
    pyarrow skips without counting, included), and ragged rows are reported by theirs,
    however blocks, chunks and line endings fall."""
    import tempfile

    from gateway.ingest import readers

    bad = {r for r in ragged if r < rows}
    lines = ["id,value"]
    line_of: dict[int, int] = {}
    for i in range(rows):
        if i in blank_before:
            lines.append("")
        lines.append(f"{i},x{i % 7}" if i not in bad else f"{i},x,extra")
        line_of[i] = len(lines)
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as patch:
        patch.setattr(readers, "_CSV_BLOCK_BYTES", 1 << 16)  # many blocks per chunk
        path = Path(folder) / "f.csv"
        path.write_bytes((newline.join(lines) + newline).encode())
        chunks = list(readers.csv_chunks(path, header=["id", "value"], chunk_rows=chunk_rows))
    sizes = [len(c) for c in chunks]
    assert all(size >= chunk_rows for size in sizes[:-1])  # only the last may be short
    ids = [int(v) for c in chunks for v in c.columns[0].to_pylist()]
    assert ids == [i for i in range(rows) if i not in bad]
    assert [int(n) for c in chunks for n in c.row_numbers] == [line_of[i] for i in ids]
    assert sorted(r.row for c in chunks for r in c.ragged) == sorted(line_of[i] for i in bad)


def test_problems_name_the_line_a_person_sees_after_blank_lines(
    gateway: Gateway, tmp_path: Path
) -> None:
    rows = [GOOD_ROWS[0], "", "", GOOD_ROWS[1], "482916,A,B,2025,S-01,ELA,3-5,1,9,"]
    with pytest.raises(UploadRefused) as refused:
        upload(gateway, write_csv(tmp_path, HEADER, *rows))
    assert [(p["row"], p["column"]) for p in refused.value.receipt["problems"]] == [
        (6, "summative_rating")  # the file's sixth line: header, row, two blank lines, row
    ]


def profile_with(settings: Settings, tmp_path: Path, **overrides: str) -> Settings:
    """A copy of the example agreements whose disclosure profile is overridden."""
    folder = tmp_path / "agreements-copy"
    folder.mkdir()
    source = settings.agreements_dir / f"{AGREEMENT}.yaml"
    text_ = source.read_text()
    extra = "".join(f"    {k}: {v}\n" for k, v in overrides.items())
    text_ = text_.replace("  overrides:\n", "  overrides:\n" + extra, 1)
    (folder / source.name).write_text(text_)
    return settings.model_copy(update={"agreements_dir": folder})


def test_reject_rows_policy_keeps_the_good_rows(settings: Settings, tmp_path: Path) -> None:
    from gateway.context import initialise

    local = profile_with(settings, tmp_path, on_bad_rows="reject_rows")
    initialise(local)
    with Gateway.open(local) as gw:
        receipt = upload(
            gw, write_csv(tmp_path, HEADER, GOOD_ROWS[0], "482914,A,B,2025,S-01,ELA,3-5,1,9,")
        )
        assert receipt["status"] == "accepted"
        assert receipt["rows"] == {"read": 2, "accepted": 1, "rejected": 1}
        assert receipt["problems"][0]["row"] == 3
        assert len(stored_rows(gw)) == 1


def test_formula_cells_neutralised_in_free_text_when_the_profile_says() -> None:
    import pyarrow as pa

    from gateway.agreements.models import ColumnSpec
    from gateway.ingest.validate import validate_column

    free_text = ColumnSpec(
        type="string", role="quasi_identifier", required=False, description="free text"
    )
    cells = pa.array(["=1+2", "@SUM(A1)", "plain", "", "+33"])
    neutral = validate_column("note", free_text, cells, formula_cells="neutralise")
    assert neutral.values.to_pylist() == ["'=1+2", "'@SUM(A1)", "plain", None, "'+33"]
    assert not neutral.bad.any()
    rejected = validate_column("note", free_text, cells, formula_cells="reject")
    assert rejected.bad.tolist() == [True, True, False, False, True]
    assert rejected.problems[0].found.startswith("a spreadsheet formula")


def test_formula_like_value_that_fits_the_pattern_is_data(gateway: Gateway, tmp_path: Path) -> None:
    receipt = upload(
        gateway, write_csv(tmp_path, "MEPID,SY,Summative Rating,School Code", "482913,2025,3,-S01")
    )
    assert receipt["rows"]["accepted"] == 1
    assert stored_rows(gateway)[0]["school_code"] == "-S01"


@hyp_settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    ratings=st.lists(
        st.sampled_from(["1", "2", "3", "4", "5", "x", "", "3.0"]), min_size=1, max_size=30
    ),
)
def test_accepted_rows_are_exactly_the_valid_ones(
    settings: Settings,
    databases: Databases,
    tmp_path_factory: pytest.TempPathFactory,
    ratings: list[str],
) -> None:
    from gateway.context import initialise

    tmp_path = tmp_path_factory.mktemp("prop")  # each example on a database of its own
    local = profile_with(
        settings.model_copy(
            update={"data_dir": tmp_path / "data", "database_url": databases.new(tmp_path)}
        ),
        tmp_path,
        on_bad_rows="reject_rows",
    )
    initialise(local)
    rows = [f"{700000 + i},2025,{r}" for i, r in enumerate(ratings)]
    valid = [int(float(r)) for r in ratings if r in {"1", "2", "3", "4", "3.0"}]
    with Gateway.open(local) as gw:
        path = write_csv(tmp_path, "MEPID,SY,Summative Rating", *rows)
        if not valid:
            with pytest.raises(UploadRefused):
                upload(gw, path)
            return
        receipt = upload(gw, path)
        assert receipt["rows"] == {
            "read": len(ratings),
            "accepted": len(valid),
            "rejected": len(ratings) - len(valid),
        }
        assert [r["summative_rating"] for r in stored_rows(gw)] == valid


# --- over HTTP ------------------------------------------------------------------------


def test_api_upload_returns_the_receipt_and_leaves_no_temporary_file(
    gateway: Gateway, settings: Settings, tmp_path: Path
) -> None:
    path = write_csv(tmp_path, HEADER, *GOOD_ROWS)
    with TestClient(create_app(settings), headers=uploader(settings)) as client:
        response = client.post(
            f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads",
            files={"file": ("district.csv", path.read_bytes(), "text/csv")},
        )
        assert response.status_code == 201, response.text
        assert response.json()["rows"]["accepted"] == 3
        bad = client.post(
            f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads",
            files={
                "file": ("bad.csv", f"{HEADER}\n482913,A,B,2025,S-01,ELA,3-5,1,9,\n", "text/csv")
            },
        )
        assert bad.status_code == 422
        body = bad.json()["error"]
        assert body["code"] == "upload_refused" and body["details"][0]["row"] == 2
        wrong = client.post(
            f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads",
            content=b"not multipart",
            headers={"content-type": "text/csv"},
        )
        assert wrong.status_code == 415
        assert wrong.json()["error"]["code"] == "unsupported_media_type"
    leftovers = list((settings.data_dir / "tmp").iterdir())
    assert leftovers == []


def test_cli_upload_prints_receipt_and_refusal(
    gateway: Gateway, settings: Settings, tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from gateway.cli import main
    from tests.conftest import settings_env

    path = write_csv(tmp_path, HEADER, *GOOD_ROWS)
    args = ["upload", "--agreement", AGREEMENT, "--party", DISTRICT, "--dataset", "evaluations"]
    ok = CliRunner().invoke(main, [*args, str(path), "--json"], env=settings_env(settings))
    assert ok.exit_code == 0 and json.loads(ok.stdout)["rows"]["accepted"] == 3
    bad = write_csv(tmp_path, HEADER, "482913,A,B,2025,S-01,ELA,3-5,1,9,", name="bad.csv")
    refused = CliRunner().invoke(main, [*args, str(bad)], env=settings_env(settings))
    assert refused.exit_code != 0
    assert "row 2, column 'Summative Rating'" in refused.stdout
    assert refused.stderr.startswith("gateway: error: bad.csv: upload refused")


def test_no_sqlite_journal_rows_survive_a_refusal(gateway: Gateway, tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, "482916,A,B,2025,S-01,ELA,3-5,1,9,"]
    with pytest.raises(UploadRefused):
        upload(gateway, write_csv(tmp_path, HEADER, *rows))
    with gateway.engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM row_batches")).scalar() == 0


def test_patterns_must_match_the_whole_value() -> None:
    import pyarrow as pa

    from gateway.agreements.models import ColumnSpec
    from gateway.ingest.validate import validate_column

    spec = ColumnSpec(
        type="string", role="quasi_identifier", required=False, description="code", pattern="[0-9]+"
    )
    result = validate_column("code", spec, pa.array(["123", "12ab", "x9"]), formula_cells="reject")
    assert result.bad.tolist() == [False, True, True]


def test_a_refused_receipt_never_counts_rows_as_accepted(
    gateway: Gateway, settings: Settings, tmp_path: Path
) -> None:
    gateway.settings = settings.model_copy(update={"upload_chunk_rows": 1})
    rows = [*GOOD_ROWS, "482916,A,B,2025,S-01,ELA,3-5,1,9,"]
    with pytest.raises(UploadRefused) as refused:
        upload(gateway, write_csv(tmp_path, HEADER, *rows))
    assert refused.value.receipt["rows"] == {"read": 4, "accepted": 0, "rejected": 1}
    body = refused.value.to_dict()["error"]
    assert body["receipt"]["upload_id"] and body["receipt"]["audit_event"]


def test_http_refusals_before_reading_are_audited(gateway: Gateway, settings: Settings) -> None:
    with TestClient(create_app(settings), headers=uploader(settings)) as client:
        response = client.post(
            f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads",
            content=b"x",
            headers={"content-type": "text/csv"},
        )
        assert response.status_code == 415
        empty = client.post(
            f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads",
            files={"file": ("empty.csv", b"", "text/csv")},
        )
        assert empty.status_code == 422
    with gateway.sessions() as session:
        refused = [
            audit.event_view(e) for e in session.scalars(audit.query_events(kind="upload-refused"))
        ]
    assert [r["details"]["reason"].split(":")[0] for r in refused][-2:] == [
        "send the extract as multipart/form-data with the file in a field named 'file'",
        "empty.csv",
    ]


def test_http_refusal_body_carries_the_receipt(gateway: Gateway, settings: Settings) -> None:
    with TestClient(create_app(settings), headers=uploader(settings)) as client:
        bad = client.post(
            f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads",
            files={
                "file": ("bad.csv", f"{HEADER}\n482913,A,B,2025,S-01,ELA,3-5,1,9,\n", "text/csv")
            },
        )
    error = bad.json()["error"]
    assert error["receipt"]["status"] == "refused" and error["receipt"]["audit_event"]
    assert error["details"] == error["receipt"]["problems"]


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n", "a PNG image"),
        (b"\xff\xd8\xff\xe0", "a JPEG image"),
        (b"%PDF-1.7\n", "a PDF document"),
    ],
)
def test_a_file_that_is_not_a_table_is_named_for_what_it_is(
    tmp_path: Path, head: bytes, kind: str
) -> None:
    from gateway.ingest.readers import inspect_file

    path = tmp_path / "upload.bin"
    path.write_bytes(head + bytes(range(256)))
    with pytest.raises(SchemaError) as refused:
        inspect_file(path, display_name="extract.csv", max_bytes=1 << 20)
    assert refused.value.message.startswith(f"extract.csv: the file is {kind}, not a table")
    assert "CSV UTF-8, Excel .xlsx or Parquet" in refused.value.message
