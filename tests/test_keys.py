"""The master key file and per-agreement key versions."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import select

from gateway import audit, keys
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.errors import MasterKeyError
from gateway.pseudonym import Normalisation
from gateway.storage.tables import KeyVersion


def write_key(path: Path, material: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.urlsafe_b64encode(material))
    os.chmod(path, mode)
    return path


def test_created_key_is_32_random_bytes_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "k" / "master.key"
    assert keys.create_master_key(path) is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(keys.load_master_key(path).material) == 32
    other = tmp_path / "k2" / "master.key"
    keys.create_master_key(other)
    assert keys.load_master_key(other) != keys.load_master_key(path)


def test_existing_key_is_never_overwritten(tmp_path: Path) -> None:
    path = write_key(tmp_path / "master.key", b"x" * 32)
    before = path.read_bytes()
    assert keys.create_master_key(path) is False
    assert path.read_bytes() == before


def test_missing_key_refused_with_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="gateway keys init"):
        keys.load_master_key(tmp_path / "absent.key")


def test_short_key_refused(tmp_path: Path) -> None:
    path = write_key(tmp_path / "master.key", b"y" * 31)
    with pytest.raises(MasterKeyError, match=r"31 bytes.*32 required.*gateway keys init"):
        keys.load_master_key(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o606])
def test_key_readable_by_others_refused(tmp_path: Path, mode: int) -> None:
    path = write_key(tmp_path / "master.key", b"z" * 32, mode)
    with pytest.raises(MasterKeyError, match="group or others") as info:
        keys.load_master_key(path)
    assert "chmod 600" in info.value.message


def test_garbage_key_refused_without_echoing_it(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.write_text("this is not base64 !!!\n")
    os.chmod(path, 0o600)
    with pytest.raises(MasterKeyError) as info:
        keys.load_master_key(path)
    assert "not base64" not in str(path) and "this is not" not in info.value.message


def test_master_key_repr_hides_material(tmp_path: Path) -> None:
    key = keys.MasterKey(b"\x01" * 32)
    assert "01" not in repr(key) and "redacted" in repr(key)


def test_open_refuses_a_different_master_key(settings: Settings) -> None:
    initialise(settings)
    write_key(settings.resolved_master_key_file, b"another key entirely, 32 bytes!!")
    with pytest.raises(MasterKeyError, match="does not match"):
        Gateway.open(settings)


def test_every_agreement_gets_key_version_one_with_its_own_salt(gateway: Gateway) -> None:
    with gateway.sessions() as session:
        versions = session.scalars(select(KeyVersion)).all()
    assert {v.agreement_id for v in versions} == set(gateway.registry.agreements)
    assert all(v.version == 1 and v.salt and len(v.salt) == 32 for v in versions)
    assert len({v.salt for v in versions}) == len(versions)


def test_rotation_makes_a_new_version_and_new_pseudonyms(gateway: Gateway) -> None:
    agreement = next(iter(gateway.registry.agreements.values()))
    norm = Normalisation()
    with gateway.sessions() as session:
        before = keys.pseudonymizer_for(
            session, gateway.master_key, agreement_id=agreement.id, normalisation=norm
        )
    with gateway.sessions() as session, session.begin():
        outcome = keys.rotate_key(
            session,
            agreement=agreement,
            actor=audit.OPERATOR,
        )
    assert outcome == {"previous_version": 1, "key_version": 2}
    with gateway.sessions() as session:
        after = keys.pseudonymizer_for(
            session, gateway.master_key, agreement_id=agreement.id, normalisation=norm
        )
        old = keys.pseudonymizer_for(
            session,
            gateway.master_key,
            agreement_id=agreement.id,
            normalisation=norm,
            key_version=1,
        )
        events = session.scalars(audit.query_events(kind="key-rotated")).all()
    assert after.key_version == 2
    assert after.pseudonymize("12345") != before.pseudonymize("12345")
    # The retired version still re-derives the same key (until destroyed).
    assert old.pseudonymize("12345") == before.pseudonymize("12345")
    assert [audit.event_view(e)["details"] for e in events] == [outcome]


def test_key_material_is_not_in_the_database(gateway: Gateway, settings: Settings) -> None:
    material = gateway.master_key.material
    encoded = settings.resolved_master_key_file.read_bytes().strip()
    if not settings.resolved_database_url.startswith("sqlite"):
        pytest.skip("byte scan of the database file applies to SQLite")
    db_file = settings.data_dir / "gateway.db"
    blob = b"".join(p.read_bytes() for p in db_file.parent.glob("gateway.db*"))
    assert material not in blob and encoded not in blob
