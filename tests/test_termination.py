"""Termination: the data and the key material really go, and nothing is served afterwards."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from gateway import audit
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.errors import PolicyViolation
from gateway.ingest import upload_extract
from gateway.release.engine import request_release
from gateway.release.query import parse_query
from gateway.storage.datasets import Educator, RowBatch
from gateway.storage.tables import KeyVersion
from tests.conftest import AGREEMENT, DISTRICT, EPP, settings_env

ACTOR = audit.Actor(role="operator")
MARKER = "ZZ-DESTROY-ME"  # a stored value to look for in the database's bytes


def load(gw: Gateway, tmp_path: Path) -> list[str]:
    lines = ["MEPID,SY,School Code,Summative Rating"]
    lines += [f"{910000 + i},2025,{MARKER},3" for i in range(30)]
    (tmp_path / "e.csv").write_text("\n".join(lines) + "\n")
    upload_extract(
        gw,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="evaluations",
        path=tmp_path / "e.csv",
        actor=ACTOR,
    )
    query = parse_query(
        {"datasets": ["evaluations"], "measure": {"kind": "count"}, "epsilon": "0.3"}
    )
    request_release(gw, agreement_id=AGREEMENT, party=EPP, query=query, actor=ACTOR)
    with gw.sessions() as session:
        return list(session.scalars(select(Educator.pseudonym)))


def database_bytes(settings: Settings) -> bytes:
    return b"".join(p.read_bytes() for p in settings.data_dir.glob("gateway.db*"))


def test_termination_destroys_data_and_keys_and_refuses_afterwards(
    gateway: Gateway, settings: Settings, tmp_path: Path
) -> None:
    pseudonyms = load(gateway, tmp_path)
    assert len(pseudonyms) == 30
    receipt = gateway.terminate(AGREEMENT, actor=ACTOR, reason="partnership ended")
    assert receipt["destroyed"]["rows_evaluations"] == 30
    assert receipt["destroyed"]["educators"] == 30
    assert receipt["destroyed"]["releases"] == 1
    assert receipt["key_versions_destroyed"] == [1]
    on_file = json.loads(Path(receipt["receipt_file"]).read_text())
    assert on_file["destroyed"] == receipt["destroyed"]
    with gateway.sessions() as session:
        assert session.execute(select(RowBatch.id).limit(1)).first() is None
        versions = session.scalars(select(KeyVersion).where(KeyVersion.agreement_id == AGREEMENT))
        assert all(v.salt is None and v.destroyed_at is not None for v in versions)
        kinds = [e.kind for e in session.scalars(audit.query_events(agreement_id=AGREEMENT))]
        assert kinds[-3:] == ["agreement-terminated", "key-destroyed", "data-destroyed"]
        assert audit.verify_chain(session).ok
    if settings.resolved_database_url.startswith("sqlite"):
        blob = database_bytes(settings)
        assert MARKER.encode() not in blob
        assert not any(p.encode() in blob for p in pseudonyms)
    with pytest.raises(PolicyViolation, match="terminated"):
        upload_extract(
            gateway,
            agreement_id=AGREEMENT,
            party=DISTRICT,
            dataset="evaluations",
            path=tmp_path / "e.csv",
            actor=ACTOR,
        )
    with pytest.raises(PolicyViolation, match="terminated"):
        request_release(
            gateway,
            agreement_id=AGREEMENT,
            party=EPP,
            actor=ACTOR,
            query=parse_query(
                {"datasets": ["evaluations"], "measure": {"kind": "count"}, "epsilon": "0.1"}
            ),
        )
    with pytest.raises(PolicyViolation, match="already terminated"):
        gateway.terminate(AGREEMENT, actor=ACTOR, reason="again")


def test_an_agreement_past_its_end_date_is_terminated_at_start(
    settings: Settings, tmp_path: Path
) -> None:
    folder = tmp_path / "agreements"
    folder.mkdir()
    source = settings.agreements_dir / f"{AGREEMENT}.yaml"
    shutil.copy(source, folder / source.name)
    local = settings.model_copy(update={"agreements_dir": folder})
    initialise(local)
    with Gateway.open(local) as gw:
        load(gw, tmp_path)
    # The parties shorten the agreement: it ended yesterday.
    text = source.read_text().replace("effective: 2026-09-01", "effective: 2020-09-01")
    (folder / source.name).write_text(text.replace("ends: 2029-08-31", "ends: 2021-08-31"))
    with Gateway.open(local) as gw, gw.sessions() as session:
        destroyed = [
            audit.event_view(e) for e in session.scalars(audit.query_events(kind="data-destroyed"))
        ]
        assert destroyed and destroyed[-1]["details"]["reason"] == "end date 2021-08-31 passed"
        assert session.execute(select(Educator.id).limit(1)).first() is None


def test_cli_terminate(gateway: Gateway, settings: Settings, tmp_path: Path) -> None:
    load(gateway, tmp_path)
    env = settings_env(settings)
    result = CliRunner().invoke(
        main, ["agreements", "terminate", AGREEMENT, "--yes", "--json", "--reason", "test"], env=env
    )
    assert result.exit_code == 0, result.output
    body: dict[str, Any] = json.loads(result.stdout)
    assert body["reason"] == "test" and body["destroyed"]["rows_evaluations"] == 30
    again = CliRunner().invoke(main, ["keys", "rotate", "--agreement", AGREEMENT], env=env)
    assert again.exit_code != 0 and "terminated" in again.stderr
