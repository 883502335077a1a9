"""An upload is stored in bounded steps, seen by nothing until its one switch, and leaves
nothing when it stops part-way (a killed process: tests/test_ingest_safety.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import func, select

from gateway import audit, keys
from gateway.config import Settings
from gateway.context import Gateway
from gateway.errors import PolicyViolation
from gateway.ingest import upload as upload_module
from gateway.ingest import upload_extract
from gateway.ingest.upload import UploadProgress
from gateway.storage import batches
from gateway.storage.datasets import Educator, RowBatch, Upload
from gateway.storage.history import upload_history
from tests.conftest import AGREEMENT, DISTRICT, evaluations_csv


class Stop(Exception):
    """Raised from the progress callback to stop an upload part-way."""


def _visible(gw: Gateway) -> tuple[str, tuple[str, ...], int]:
    with gw.sessions() as session:
        key = keys.current_key_version(session, AGREEMENT)
        version = batches.data_version(
            session.connection(), agreement_id=AGREEMENT, dataset="evaluations",
            key_version=key.version if key else None,
        )  # fmt: skip
        accepted = session.scalars(
            select(Upload.upload_id).where(Upload.status == "accepted").order_by(Upload.seq)
        ).all()
        events = len(session.scalars(audit.query_events(kind="upload-accepted")).all())
    return version, tuple(accepted), events


def _stored(gw: Gateway) -> tuple[int, int]:
    """(pending uploads, row batches) in the database."""
    with gw.sessions() as session:
        pending = session.scalar(
            select(func.count()).select_from(Upload).where(Upload.status == "pending")
        )
        stored = session.scalar(select(func.count()).select_from(RowBatch))
    return int(pending or 0), int(stored or 0)


def _parquet(csv: Path) -> Path:
    """The extract as Parquet, which is read in chunks of exactly the rows asked."""
    path = csv.with_suffix(".parquet")
    pd.read_csv(csv, dtype=str, keep_default_na=False).to_parquet(path)
    return path


def _upload(gw: Gateway, path: Path, **extra: object) -> dict[str, object]:
    return upload_extract(
        gw, agreement_id=AGREEMENT, party=DISTRICT, dataset="evaluations", path=path,
        actor=audit.Actor(role="operator"), **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def test_steps_are_committed_but_invisible_until_the_switch(
    gateway: Gateway, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A step per chunk, so that between chunks no step is open: on SQLite a read here
    # would otherwise wait for the step, which waits for this callback.
    monkeypatch.setattr(upload_module, "STEP_CHUNKS", 1)
    first, _ = evaluations_csv(tmp_path / "first.csv")
    _upload(gateway, first)
    before = _visible(gateway)
    _, stored_before = _stored(gateway)
    # A row per chunk: every chunk fills its step, which is committed before the callback.
    gateway.settings = settings.model_copy(update={"upload_chunk_rows": 1})
    second = _parquet(evaluations_csv(tmp_path / "second.csv", extra_2024=True)[0])
    seen: list[tuple[str, int, int, int, tuple[str, tuple[str, ...], int]]] = []

    def watch(progress: UploadProgress) -> None:
        # Another session, as a release in another worker would read.
        seen.append((progress.stage, progress.rows_read, *_stored(gateway), _visible(gateway)))

    receipt = _upload(gateway, second, progress=watch)
    reading = [s for s in seen if s[0] == "reading"]
    assert len(reading) >= 3  # several chunks, each its own step
    # Each step was committed (other sessions see the pending upload's batches grow)...
    assert reading[-1][3] > stored_before and reading[0][2] == 1
    # ... and no step changed what releases see, until the switch.
    assert all(s[4] == before for s in seen if s[0] != "done")
    after = _visible(gateway)
    assert after != before and after[1] == (*before[1], receipt["upload_id"])
    assert _stored(gateway)[0] == 0


@pytest.mark.parametrize("stop_after", [1, 3])
def test_an_upload_stopped_part_way_leaves_nothing(
    gateway: Gateway, settings: Settings, tmp_path: Path, stop_after: int
) -> None:
    first, _ = evaluations_csv(tmp_path / "first.csv")
    _upload(gateway, first)
    before, stored_before = _visible(gateway), _stored(gateway)
    gateway.settings = settings.model_copy(update={"upload_chunk_rows": 10})
    second = _parquet(evaluations_csv(tmp_path / "second.csv", extra_2024=True)[0])
    chunks = 0

    def stop(progress: UploadProgress) -> None:
        nonlocal chunks
        chunks += progress.stage == "reading"
        if chunks == stop_after:
            raise Stop

    with pytest.raises(Stop):
        _upload(gateway, second, progress=stop)
    assert _visible(gateway) == before
    assert _stored(gateway) == stored_before  # its batches and pending row deleted
    with gateway.sessions() as session:
        assert audit.verify_chain(session).ok


def _educators(gw: Gateway) -> int:
    with gw.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Educator)) or 0)


def test_a_stopped_upload_leaves_no_pseudonyms_behind(
    gateway: Gateway, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its steps committed the educators they met; stopping deletes them with its rows."""
    monkeypatch.setattr(upload_module, "STEP_CHUNKS", 1)  # each chunk its own step
    gateway.settings = settings.model_copy(update={"upload_chunk_rows": 10})
    extract = _parquet(evaluations_csv(tmp_path / "first.csv")[0])
    stored_meanwhile: list[int] = []

    def stop(progress: UploadProgress) -> None:
        if progress.stage == "reading":
            stored_meanwhile.append(_educators(gateway))
            if len(stored_meanwhile) == 3:
                raise Stop

    with pytest.raises(Stop):
        _upload(gateway, extract, progress=stop)
    assert max(stored_meanwhile) > 0  # committed by the steps while it ran
    assert _educators(gateway) == 0
    assert _stored(gateway) == (0, 0)


def test_an_upload_being_stored_is_not_in_the_history_yet(
    gateway: Gateway, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upload_module, "STEP_CHUNKS", 1)
    gateway.settings = settings.model_copy(update={"upload_chunk_rows": 10})
    extract = _parquet(evaluations_csv(tmp_path / "first.csv")[0])
    listed: list[list[str]] = []

    def watch(progress: UploadProgress) -> None:
        if progress.stage == "reading":
            with gateway.reads() as session:  # as the page reads, beside the upload
                pending = session.scalar(
                    select(func.count()).select_from(Upload).where(Upload.status == "pending")
                )
                assert pending == 1  # the upload being stored is there...
                listed.append([u.status for u in upload_history(session, AGREEMENT)])

    _upload(gateway, extract, progress=watch)
    assert listed and all(statuses == [] for statuses in listed)
    with gateway.sessions() as session:
        assert [u.status for u in upload_history(session, AGREEMENT)] == ["accepted"]


def test_a_key_rotated_during_an_upload_refuses_it(
    gateway: Gateway, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its rows were pseudonymised under the retired key: switched on, they would link
    to nothing, and its receipt would describe the old key's data."""
    monkeypatch.setattr(upload_module, "STEP_CHUNKS", 1)
    gateway.settings = settings.model_copy(update={"upload_chunk_rows": 10})
    extract = _parquet(evaluations_csv(tmp_path / "first.csv")[0])
    rotated: list[bool] = []

    def rotate(progress: UploadProgress) -> None:
        if progress.stage == "reading" and not rotated:
            with gateway.sessions() as session, session.begin():
                keys.rotate_key(
                    session, agreement=gateway.agreement(AGREEMENT), actor=audit.OPERATOR
                )
            rotated.append(True)

    with pytest.raises(PolicyViolation, match="rotated during the upload"):
        _upload(gateway, extract, progress=rotate)
    assert rotated
    assert _stored(gateway) == (0, 0) and _educators(gateway) == 0
    with gateway.sessions() as session:
        assert not session.scalars(select(Upload).where(Upload.status == "accepted")).all()
