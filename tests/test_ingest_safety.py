"""Nothing raw is kept, and nothing half-written survives a killed upload."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text

from gateway import audit, keys
from gateway.app import create_app
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.ingest import UploadRefused, upload_extract
from gateway.storage import batches
from gateway.storage.datasets import RowBatch, Upload
from tests.conftest import uploader

AGREEMENT = "student-teaching-bayview-eastport"
# Distinctive raw IDs and names, so a byte search cannot match by accident.
RAW_IDS = ["918273645", "827364519", "736451928", "645192837"]
NAMES = ["Zbigniewa", "Quillfeather", "Oyelaran", "Thistlewood", "Brennagh"]
EMAILS = ["zbigniewa.quillfeather@example.org"]


def _evaluations_csv(path: Path, *, bad_row: bool = False) -> Path:
    lines = ["MEPID,Last Name,First Name,DOB,SY,School Code,Summative Rating"]
    for i, raw in enumerate(RAW_IDS):
        lines.append(f"00{raw},{NAMES[i]},{NAMES[(i + 1) % 5]},1990-02-0{i + 1},2025,S-01,3")
    if bad_row:
        lines.append(f" {RAW_IDS[0]}x ,{NAMES[4]},{NAMES[0]},1991-01-01,2025,S-01,9")
    path.write_text("\n".join(lines) + "\n")
    return path


def _completers(tmp_path: Path) -> tuple[Path, Path]:
    frame = pd.DataFrame(
        {
            "MEPID": [f" {r.lower()} " for r in RAW_IDS],
            "Last Name": NAMES[:4],
            "First Name": NAMES[1:5],
            "Email Address": EMAILS * 4,
            "Program": ["ELEM"] * 4,
            "Program Completion Year": [2023] * 4,
            "Completer Status": ["completed"] * 4,
            "License Field": ["ELEM"] * 4,
        }
    )
    xlsx = tmp_path / "completers.xlsx"
    frame.to_excel(xlsx, index=False)
    parquet = tmp_path / "completers.parquet"
    frame.assign(**{"Program Completion Year": [2024] * 4}).to_parquet(parquet)
    return xlsx, parquet


def _needles(gateway: Gateway) -> list[bytes]:
    needles: list[bytes] = []
    for word in [*RAW_IDS, *NAMES, *EMAILS]:
        needles += [word.encode("utf-8"), word.encode("utf-16-le"), word.upper().encode()]
    key_file = gateway.settings.resolved_master_key_file.read_bytes().strip()
    needles += [gateway.master_key.material, key_file]
    return needles


def _database_text(gateway: Gateway) -> str:
    """Every value of every table, as text (works on SQLite and PostgreSQL)."""
    chunks: list[str] = []
    with gateway.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                chunks.append(repr(tuple(row)))
                # Stored column batches as their bytes, so any encoding of a value shows.
                chunks += [
                    bytes(v).decode("latin-1") for v in row if isinstance(v, bytes | memoryview)
                ]
    return "\n".join(chunks)


def test_no_raw_identifier_name_or_key_is_written_anywhere(
    gateway: Gateway,
    settings: Settings,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    actor = audit.Actor(role="operator")
    extracts = tmp_path / "extracts"
    extracts.mkdir()
    upload_extract(
        gateway,
        agreement_id=AGREEMENT,
        party="eastport-ps",
        dataset="evaluations",
        path=_evaluations_csv(extracts / "evaluations.csv"),
        actor=actor,
    )
    xlsx, parquet = _completers(extracts)
    for path in (xlsx, parquet):
        upload_extract(
            gateway,
            agreement_id=AGREEMENT,
            party="bayview-state",
            dataset="completers",
            path=path,
            actor=actor,
        )
    with pytest.raises(UploadRefused):
        upload_extract(
            gateway,
            agreement_id=AGREEMENT,
            party="eastport-ps",
            dataset="evaluations",
            path=_evaluations_csv(extracts / "bad.csv", bad_row=True),
            actor=actor,
        )
    # And over HTTP, where the file is spooled inside the data folder.
    with TestClient(create_app(settings), headers=uploader(settings)) as client:
        response = client.post(
            f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads",
            files={"file": ("e.csv", (extracts / "evaluations.csv").read_bytes(), "text/csv")},
        )
        assert response.status_code == 201
        refused = client.post(
            f"/v1/agreements/{AGREEMENT}/datasets/evaluations/uploads",
            files={"file": ("b.csv", (extracts / "bad.csv").read_bytes(), "text/csv")},
        )
        assert refused.status_code == 422
        responses = response.text + refused.text

    needles = _needles(gateway)
    # 1. Every byte under the data folder (SQLite database, WAL, temporary folder...).
    scanned = 0
    for path in settings.data_dir.rglob("*"):
        if path.is_file() and path != settings.resolved_master_key_file:
            blob = path.read_bytes()
            scanned += len(blob)
            for needle in needles:
                assert needle not in blob, f"{path.name} holds a raw value"
    if settings.resolved_database_url.startswith("sqlite"):
        assert scanned > 0  # the database file itself was searched
    # 2. Every value in the database, whichever backend.
    dump = _database_text(gateway).encode()
    assert b"upload-accepted" in dump  # the dump really holds the log
    for needle in needles:
        assert needle not in dump
    # 3. Logs, console output, HTTP responses; and no temporary file was left anywhere.
    out, err = capfd.readouterr()
    said = (caplog.text + out + err + responses).encode()
    for needle in needles:
        assert needle not in said
    assert list(system_tmp.iterdir()) == []
    assert not any((settings.data_dir / "tmp").iterdir())


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from gateway import audit
    from gateway.config import Settings
    from gateway.context import Gateway
    from gateway.ingest import upload_extract

    settings = Settings.model_validate_json(Path(sys.argv[1]).read_text())
    with Gateway.open(settings) as gw:
        print("started", flush=True)
        upload_extract(gw, agreement_id=sys.argv[2], party="eastport-ps",
                       dataset="evaluations", path=Path(sys.argv[3]),
                       actor=audit.Actor(role="operator"))
        print("finished", flush=True)
    """
)


def _big_csv(path: Path, rows: int) -> Path:
    with path.open("w") as handle:
        handle.write("MEPID,SY,School Code,Summative Rating\n")
        for i in range(rows):
            handle.write(f"{100000 + i // 4},{2021 + i % 4},S-{i % 50:02d},{1 + i % 4}\n")
    return path


@pytest.mark.parametrize("delay", [0.2, 0.6, 1.2])
def test_a_killed_upload_leaves_nothing_visible_and_is_cleaned_up(
    settings: Settings, tmp_path: Path, delay: float
) -> None:
    """An upload is stored in steps but switched on in one: killed part-way, it left
    no accepted upload, no event and the same data version; the next upload of the
    agreement deletes whatever its steps had stored."""
    local = settings.model_copy(update={"upload_chunk_rows": 5_000})
    initialise(local)
    with Gateway.open(local) as gw:
        upload_extract(gw, agreement_id=AGREEMENT, party="eastport-ps", dataset="evaluations",
                       path=_evaluations_csv(tmp_path / "first.csv"),
                       actor=audit.Actor(role="operator"))  # fmt: skip
        before = _visible(gw)
    config = tmp_path / "settings.json"
    config.write_text(local.model_dump_json())
    extract = _big_csv(tmp_path / "big.csv", 600_000)
    script = tmp_path / "upload.py"
    script.write_text(KILL_SCRIPT)
    with subprocess.Popen(
        [sys.executable, str(script), str(config), AGREEMENT, str(extract)],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == b"started"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL, "the upload finished before it was killed"

    with Gateway.open(local) as gw:
        assert _visible(gw) == before
        with gw.sessions() as session:
            verification = audit.verify_chain(session)
            assert verification.ok, verification.problems
        # The next upload of the agreement finds the pending one abandoned (its lock is
        # free) and deletes it with every batch it stored.
        upload_extract(gw, agreement_id=AGREEMENT, party="eastport-ps", dataset="evaluations",
                       path=_evaluations_csv(tmp_path / "again.csv"),
                       actor=audit.Actor(role="operator"))  # fmt: skip
        with gw.sessions() as session:
            statuses = session.scalars(select(Upload.status)).all()
            assert sorted(statuses) == ["accepted", "accepted"]
            orphaned = session.execute(
                select(RowBatch.id)
                .join(Upload, Upload.seq == RowBatch.upload_seq)
                .where(Upload.status != "accepted")
            ).first()
            assert orphaned is None


def _visible(gw: Gateway) -> tuple[object, ...]:
    """What releases can see of the agreement's evaluations: accepted uploads, the data
    version, and the accepted-upload events."""
    with gw.sessions() as session:
        key = keys.current_key_version(session, AGREEMENT)
        version = batches.data_version(
            session.connection(), agreement_id=AGREEMENT, dataset="evaluations",
            key_version=key.version if key else None,
        )  # fmt: skip
        accepted = session.scalars(
            select(Upload.upload_id).where(Upload.status == "accepted").order_by(Upload.seq)
        ).all()
        events = [
            audit.event_view(e)["details"]["upload_id"]
            for e in session.scalars(audit.query_events(kind="upload-accepted"))
        ]
    return version, tuple(accepted), tuple(events)
