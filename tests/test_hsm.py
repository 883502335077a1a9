"""The pkcs11 key backend (gateway/hsm.py) against a real SoftHSM2 token.

The module makes its own token: a fresh SoftHSM2 token directory and configuration file
(SOFTHSM2_CONF) in a temporary folder, initialised with `softhsm2-util`. Without
softhsm2-util these tests skip on a developer's machine and fail in CI, where
`make test` installs Debian's softhsm2.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import inspect, text

from gateway import audit, hsm, keys
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.errors import ConfigurationError, MasterKeyError
from gateway.release.engine import request_release
from gateway.release.query import parse_query
from tests.conftest import AGREEMENT, EPP, _load_evaluations, make_settings

try:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass
except ImportError:
    if os.environ.get("CI"):  # `make test` installs the dev extra, which includes it
        raise
    pytest.skip("python-pkcs11 (the hsm extra) is not installed", allow_module_level=True)

SOFTHSM_MODULES = [
    Path("/usr/lib/softhsm/libsofthsm2.so"),
    Path("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"),
    Path("/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so"),
]
TOKEN = "gateway-test"
VERIFY_PY = (
    Path(__file__).resolve().parent.parent / "gateway" / "web" / "static" / "verify_bundle.py"
)

# One token for the module: every test here shares it, so they run on one xdist worker.
pytestmark = pytest.mark.xdist_group("softhsm")


def _missing(message: str) -> None:
    """Skip on a developer's machine; fail loudly in CI, where `make test` installs it."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@dataclass(frozen=True)
class SoftHsm:
    module: Path
    conf: Path
    tokens: Path
    pin: str

    def settings(self, tmp_path: Path, database_url: str, **overrides: object) -> Settings:
        pin_file = tmp_path / "pin"
        if not pin_file.exists():
            pin_file.write_text(self.pin + "\n")
            pin_file.chmod(0o600)
        values: dict[str, object] = {
            "key_backend": "pkcs11",
            "pkcs11_module": self.module,
            "pkcs11_token_label": TOKEN,
            "pkcs11_pin_file": pin_file,
        }
        values.update(overrides)
        return make_settings(tmp_path, database_url, **values)

    def env(self, settings: Settings) -> dict[str, str]:
        """The settings as GATEWAY_* variables, and this token's SOFTHSM2_CONF."""
        env = {
            "SOFTHSM2_CONF": str(self.conf),
            "GATEWAY_DATA_DIR": str(settings.data_dir),
            "GATEWAY_AGREEMENTS_DIR": str(settings.agreements_dir),
            "GATEWAY_POLICIES_DIR": str(settings.policies_dir),
            "GATEWAY_KEY_BACKEND": "pkcs11",
            "GATEWAY_PKCS11_MODULE": str(settings.pkcs11_module),
            "GATEWAY_PKCS11_TOKEN_LABEL": str(settings.pkcs11_token_label),
            "GATEWAY_PKCS11_PIN_FILE": str(settings.pkcs11_pin_file),
        }
        if settings.database_url:
            env["GATEWAY_DATABASE_URL"] = settings.database_url
        return env


@pytest.fixture(scope="module")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A fresh SoftHSM2 token in its own SOFTHSM2_CONF, for this module only."""
    util = shutil.which("softhsm2-util")
    module = next((path for path in SOFTHSM_MODULES if path.is_file()), None)
    if util is None or module is None:
        _missing("SoftHSM2 is not installed (apt-get install softhsm2; `make test` does it)")
    assert module is not None and util is not None
    folder = tmp_path_factory.mktemp("softhsm")
    tokens = folder / "tokens"
    tokens.mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    pin = secrets.token_urlsafe(12)
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(
        [util, "--init-token", "--free", "--label", TOKEN, "--so-pin", secrets.token_urlsafe(12),
         "--pin", pin],
        env=env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(conf))
        # SoftHSM2 reads SOFTHSM2_CONF when the library is initialised: start it afresh.
        hsm.close_sessions()
        pkcs11.lib(str(module)).reinitialize()
        yield SoftHsm(module, conf, tokens, pin)
        hsm.close_sessions()
        pkcs11.lib(str(module)).finalize()


def _objects(soft: SoftHsm, object_class: ObjectClass) -> list[dict[str, object]]:
    """Every object of a class in the token, with the attributes that say whether it
    could ever leave (read through its own logged-in session)."""
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        key_backend="pkcs11",
        pkcs11_module=soft.module,
        pkcs11_token_label=TOKEN,
        pkcs11_pin=soft.pin,
    )
    with hsm._session(settings) as session:
        return [
            {
                "label": key.label,
                "sensitive": key[Attribute.SENSITIVE],
                "extractable": key[Attribute.EXTRACTABLE],
                "token": key[Attribute.TOKEN],
            }
            for key in session.get_objects({Attribute.CLASS: object_class})
        ]


def _database_bytes(gw: Gateway) -> bytes:
    """Every value of every table (binary values as they are), on SQLite or PostgreSQL."""
    chunks: list[bytes] = []
    with gw.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                chunks.append(repr(tuple(row)).encode())
                chunks += [bytes(v) for v in row if isinstance(v, bytes | memoryview)]
    return b"\n".join(chunks)


def _encodings(material: bytes) -> list[bytes]:
    return [
        material,
        base64.urlsafe_b64encode(material),
        base64.b64encode(material),
        base64.b64encode(material).rstrip(b"="),
        material.hex().encode(),
        material.hex().upper().encode(),
    ]


def test_a_gateway_on_softhsm_uploads_releases_signs_and_verifies(
    softhsm: SoftHsm, tmp_path: Path, database_url: str
) -> None:
    settings = softhsm.settings(tmp_path, database_url)
    made = initialise(settings)
    assert made["master_key_created"] is True
    assert made["master_key_file"].endswith("master.key.wrapped")
    assert made["signing_key_file"].startswith(f"pkcs11:token={TOKEN};")
    assert not (settings.data_dir / "keys" / "signing.key").exists()

    with Gateway.open(settings) as gw:
        assert isinstance(gw.signing_key, hsm.HsmSigningKey)
        assert made["signing_key_fingerprint"] == gw.signing_key.fingerprint
        _load_evaluations(gw, tmp_path)
        released = request_release(
            gw,
            agreement_id=AGREEMENT,
            party=EPP,
            query=parse_query(
                {"datasets": ["evaluations"], "measure": {"kind": "count"}, "epsilon": "0.5"}
            ),
            actor=audit.Actor(role="analyst", party=EPP),
        ).to_json()
        assert released["cells"]
        material = gw.master_key.material
        stored = _database_bytes(gw)  # every value of every table, whichever database
        with gw.sessions() as session, session.begin():
            audit.sign_checkpoint(session, gw.signing_key)  # signed by the token
        with gw.sessions() as session:
            assert audit.verify_checkpoints(session, gw.signing_key) == []
            exported = audit.export_bundle(session, tmp_path / "bundle", gw.signing_key)
    assert exported["public_key_fingerprint"] == made["signing_key_fingerprint"]

    # The live log and the bundle verify with the existing verifiers.
    env = softhsm.env(settings)
    live = CliRunner().invoke(main, ["audit", "verify", "--json"], env=env)
    assert live.exit_code == 0, live.output
    assert json.loads(live.stdout)["ok"] is True
    offline = audit.verify_bundle(tmp_path / "bundle")
    assert offline.ok, offline.problems
    checkpoints = json.loads((tmp_path / "bundle" / "checkpoints.json").read_text())
    assert len(checkpoints) >= 2  # the start's, the one above, the export's
    # The signatures really are checked: one byte changed in one of them is caught.
    shutil.copytree(tmp_path / "bundle", tmp_path / "tampered")
    signature = bytearray.fromhex(checkpoints[-1]["signature"])
    signature[0] ^= 0x01
    checkpoints[-1]["signature"] = signature.hex()
    (tmp_path / "tampered" / "checkpoints.json").write_text(json.dumps(checkpoints))
    assert not audit.verify_bundle(tmp_path / "tampered").ok
    standalone = subprocess.run(
        [sys.executable, str(VERIFY_PY), str(tmp_path / "bundle")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert standalone.returncode == 0, standalone.stdout + standalone.stderr

    # The keys the token holds can never leave it.
    secret_keys = _objects(softhsm, ObjectClass.SECRET_KEY)
    wrapping = [k for k in secret_keys if str(k["label"]).startswith(hsm.WRAPPING_LABEL_PREFIX)]
    assert wrapping and all(k["sensitive"] and not k["extractable"] for k in wrapping)
    assert all(k["token"] for k in secret_keys)  # no session copy of the master key is left
    private = [k for k in _objects(softhsm, ObjectClass.PRIVATE_KEY)]
    assert [k["label"] for k in private] == [settings.pkcs11_signing_key_label]
    assert private[0]["sensitive"] and not private[0]["extractable"]

    # No file under the data folder, nor in the token's own folder, holds the master key
    # in any encoding: the key file holds it wrapped only.
    blob = hsm.read_wrapped(settings.resolved_master_key_file)
    assert len(blob.wrapped) == len(material) + 8  # RFC 3394 adds one 64-bit block
    needles = _encodings(material)
    scanned = 0
    for folder in (settings.data_dir, softhsm.tokens):
        for path in folder.rglob("*"):
            if path.is_file():
                content = path.read_bytes()
                scanned += len(content)
                for needle in needles:
                    assert needle not in content, f"{path.name} holds the master key"
    assert scanned > len(settings.resolved_master_key_file.read_bytes())
    assert b"upload-accepted" in stored  # the dump really holds the log
    for needle in needles:
        assert needle not in stored, "the database holds the master key"


def test_rewrap_keeps_the_master_key_and_old_copies_no_longer_unwrap(
    softhsm: SoftHsm, tmp_path: Path, database_url: str
) -> None:
    settings = softhsm.settings(tmp_path, database_url)
    initialise(settings)
    path = settings.resolved_master_key_file
    before = keys.key_store(settings).load_master_key()
    old_copy = tmp_path / "backup.wrapped"
    shutil.copy2(path, old_copy)
    old_label = hsm.read_wrapped(path).wrapping_key

    result = CliRunner().invoke(main, ["keys", "rewrap", "--json"], env=softhsm.env(settings))
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.stdout)
    assert outcome["previous_wrapping_key"] == old_label
    assert outcome["wrapping_key"] == hsm.read_wrapped(path).wrapping_key != old_label
    assert path.read_bytes() != old_copy.read_bytes()

    with Gateway.open(settings) as gw:  # same master key: the database accepts it
        assert gw.master_key == before
        with gw.sessions() as session:
            logged = [
                audit.event_view(e)["details"]
                for e in session.scalars(audit.query_events(kind="wrapping-key-rotated"))
            ]
    assert logged == [{k: outcome[k] for k in ("previous_wrapping_key", "wrapping_key")}]
    labels = {k["label"] for k in _objects(softhsm, ObjectClass.SECRET_KEY)}
    assert old_label not in labels and outcome["wrapping_key"] in labels
    stale = softhsm.settings(tmp_path, database_url, master_key_file=old_copy)
    with pytest.raises(MasterKeyError, match="not in token"):
        keys.key_store(stale).load_master_key()


def test_a_changed_wrapped_key_is_refused(
    softhsm: SoftHsm, tmp_path: Path, database_url: str
) -> None:
    settings = softhsm.settings(tmp_path, database_url)
    initialise(settings)
    path = settings.resolved_master_key_file
    document = json.loads(path.read_text())
    wrapped = bytearray(base64.b64decode(document["wrapped"]))
    wrapped[9] ^= 0x01
    document["wrapped"] = base64.b64encode(bytes(wrapped)).decode()
    path.write_text(json.dumps(document))
    with pytest.raises(MasterKeyError, match="does not unwrap"):
        Gateway.open(settings)


def test_a_failed_first_init_destroys_the_keys_it_made(softhsm: SoftHsm, tmp_path: Path) -> None:
    before = {k["label"] for k in _objects(softhsm, ObjectClass.SECRET_KEY)}
    broken = softhsm.settings(
        tmp_path,
        # No server there: the database fails after the keys were made.
        f"postgresql+psycopg://nobody@/gateway?host={tmp_path / 'no-server'}",
        pkcs11_signing_key_label="gateway-audit-signing-failed-init",
    )
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver says; the keys matter
        initialise(broken)
    assert not broken.resolved_master_key_file.exists()
    assert {k["label"] for k in _objects(softhsm, ObjectClass.SECRET_KEY)} == before
    labels = {k["label"] for k in _objects(softhsm, ObjectClass.PRIVATE_KEY)}
    assert "gateway-audit-signing-failed-init" not in labels


@pytest.fixture(scope="module")
def ready(softhsm: SoftHsm, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """A gateway set up on the token (SQLite), which starts with the right settings."""
    tmp_path = tmp_path_factory.mktemp("ready")
    settings = softhsm.settings(tmp_path, f"sqlite:///{tmp_path / 'data' / 'gateway.db'}")
    initialise(settings)
    return settings


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"GATEWAY_PKCS11_PIN_FILE": None, "GATEWAY_PKCS11_PIN": "wrong-pin-0000"},
         f"the PIN for token '{TOKEN}' is incorrect"),
        ({"GATEWAY_PKCS11_TOKEN_LABEL": "no-such-token"}, "no token labelled 'no-such-token'"),
    ],
    ids=["wrong-pin", "missing-token"],
)  # fmt: skip
def test_a_wrong_pin_or_a_missing_token_is_one_line_and_no_start(
    softhsm: SoftHsm,
    ready: Settings,
    change: dict[str, str | None],
    expected: str,
) -> None:
    """A real start (`gateway serve`, in its own process, logging in afresh) stops before
    serving, with one line on stderr and exit status 3."""
    settings = ready
    database = settings.data_dir / "gateway.db"
    before = hashlib.sha256(database.read_bytes()).hexdigest()
    env = {**os.environ, **softhsm.env(settings)}
    for name, value in change.items():
        if value is None:
            env.pop(name)
        else:
            env[name] = value
    gateway = Path(sys.executable).with_name("gateway")
    done = subprocess.run(
        [str(gateway), "serve", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 3, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [lines[0]] and lines[0].startswith("gateway: error: "), done.stderr
    assert expected in lines[0]
    assert softhsm.pin not in done.stderr + done.stdout
    assert "wrong-pin-0000" not in done.stderr + done.stdout
    assert "Uvicorn running" not in done.stderr + done.stdout
    assert hashlib.sha256(database.read_bytes()).hexdigest() == before  # nothing written


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, "needs GATEWAY_PKCS11_MODULE"),
        ({"pkcs11_module": "/lib/p11.so"}, "needs GATEWAY_PKCS11_TOKEN_LABEL"),
        ({"pkcs11_module": "/lib/p11.so", "pkcs11_token_label": "t"}, "needs the token's PIN"),
        (
            {"pkcs11_module": "/lib/p11.so", "pkcs11_token_label": "t", "pkcs11_pin": "1",
             "pkcs11_pin_file": "pin"},
            "not both",
        ),
    ],
)  # fmt: skip
def test_the_pkcs11_backend_needs_its_settings_before_anything_is_read(
    tmp_path: Path, settings: dict[str, object], expected: str
) -> None:
    chosen = make_settings(tmp_path, "sqlite://", key_backend="pkcs11", **settings)
    with pytest.raises(ConfigurationError, match=expected):
        initialise(chosen)
    assert not (chosen.data_dir / "keys").exists()


def test_an_exposed_pin_file_is_refused(tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("123456\n")
    pin.chmod(0o644)
    chosen = make_settings(
        tmp_path, "sqlite://", key_backend="pkcs11", pkcs11_module="/lib/p11.so",
        pkcs11_token_label="t", pkcs11_pin_file=pin, master_key_file=tmp_path / "absent",
    )  # fmt: skip
    with pytest.raises(ConfigurationError, match=r"accessible by group or others.*chmod 600"):
        Gateway.open(chosen)


# python-pkcs11 ends the object search of the failed call in a finaliser, which finds
# the session gone and can only report it as an unraisable exception.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_lost_hsm_session_is_opened_again(softhsm: SoftHsm, ready: Settings) -> None:
    """A network HSM that restarts ends the gateway's session: that operation fails in
    one line, and the next one logs in again."""
    with Gateway.open(ready, checkpoint=False) as gw:
        signer = gw.signing_key
        hsm._token(ready).session.close()  # what the HSM's restart does to the session
        with pytest.raises(MasterKeyError, match=r"refused an operation: Session"):
            signer.sign(b"after the restart")
        signature = signer.sign(b"after the restart")
        public = serialization.load_pem_public_key(signer.public_pem)
    assert isinstance(public, Ed25519PublicKey)
    public.verify(signature, b"after the restart")
