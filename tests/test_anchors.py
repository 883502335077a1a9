"""External anchors of the audit chain head (`gateway audit anchor`, docs/audit.md#anchors),
written to a folder, sent by email to a real SMTP server (aiosmtpd) and timestamped by a
real RFC 3161 timestamp authority (OpenSSL's `openssl ts -reply`) started by the tests;
and their verification: a log rolled back or rewritten below an anchored head fails,
naming the anchor, and a forged anchor is refused."""

from __future__ import annotations

import base64
import datetime as dt
import email
import errno
import ipaddress
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from gateway import anchors, audit, keys
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway
from gateway.errors import ConfigurationError, SchemaError
from gateway.storage.tables import AuditEvent
from tests.conftest import settings_env

OPENSSL = shutil.which("openssl")

# --- a real timestamp authority: OpenSSL's TSA behind a small HTTP handler ------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    issuer_name, issuer_key = (subject, key) if issuer is None else issuer
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
    else:  # RFC 3161 section 2.3: the only extended key usage, and critical
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True
        ).add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


TSA_CONFIG = """\
[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
dir = {folder}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.pem
certs = $dir/tsa.pem
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.2.3.4.1
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = yes
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""


@dataclass
class Authority:
    """A running TSA: its URL, the CA that issued its certificate, and what it saw."""

    url: str
    folder: Path
    ca_pem: Path
    tsa_pem: Path
    requests: list[bytes] = field(default_factory=list)


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Authority]:
    if OPENSSL is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is required under CI=true (the test's timestamp authority)")
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tsa")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    tsa_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("Test Timestamp CA", ca_key, None, ca=True)
    tsa = _certificate("Test TSA", tsa_key, ("Test Timestamp CA", ca_key), ca=False)
    (folder / "ca.pem").write_bytes(_pem(ca))
    (folder / "tsa.pem").write_bytes(_pem(tsa))
    (folder / "tsa.key").write_bytes(
        tsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (folder / "serial").write_text("01\n")
    (folder / "tsa.cnf").write_text(TSA_CONFIG.format(folder=folder))
    seen: list[bytes] = []
    lock = threading.Lock()
    openssl = OPENSSL

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            query = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:  # one serial file
                seen.append(query)
                (folder / "query.tsq").write_bytes(query)
                subprocess.run(
                    [openssl, "ts", "-reply", "-config", str(folder / "tsa.cnf"),
                     "-queryfile", str(folder / "query.tsq"), "-out", str(folder / "reply.tsr")],
                    check=True, capture_output=True, timeout=30,
                )  # fmt: skip
                reply = (folder / "reply.tsr").read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Authority(
            f"http://127.0.0.1:{server.server_address[1]}/tsr",
            folder,
            folder / "ca.pem",
            folder / "tsa.pem",
            seen,
        )
    finally:
        server.shutdown()
        server.server_close()


# --- a real SMTP server ----------------------------------------------------------------


class Mailbox:
    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((list(envelope.rcpt_tos), email.message_from_bytes(envelope.content)))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    """A free port: aiosmtpd's controller cannot be given port 0."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Mailbox, int]]:
    mailbox = Mailbox()
    port = _free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield mailbox, port
    finally:
        controller.stop()


def test_email_goes_over_starttls_with_a_login_and_a_checked_certificate(
    tmp_path: Path, signer: keys.SigningKey
) -> None:
    """The production path: STARTTLS required by the server, the server's certificate
    checked against GATEWAY_ANCHOR_SMTP_CA_FILE, then a login (AUTH only over TLS)."""
    ca_key, server_key = (
        ec.generate_private_key(ec.SECP256R1()),
        ec.generate_private_key(ec.SECP256R1()),
    )
    ca = _certificate("Relay CA", ca_key, None, ca=True)
    now = dt.datetime.now(dt.UTC)
    server = (
        x509.CertificateBuilder()
        .subject_name(_name("relay.test"))
        .issuer_name(_name("Relay CA"))
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "ca.pem").write_bytes(_pem(ca))
    (tmp_path / "server.pem").write_bytes(_pem(server))
    (tmp_path / "server.key").write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    logins: list[tuple[bytes, bytes]] = []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
        logins.append((data.login, data.password))
        ok = data.login == b"gateway" and data.password == b"s3cret-pw"
        return AuthResult(success=ok, handled=False)  # the server answers 535 on failure

    mailbox = Mailbox()
    port = _free_port()
    controller = Controller(
        mailbox,
        hostname="127.0.0.1",
        port=port,
        server_hostname="127.0.0.1",
        tls_context=tls,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticate,
    )
    controller.start()
    try:
        (tmp_path / "password").write_text("s3cret-pw\n")
        settings = Settings(
            _env_file=None,
            anchor_smtp_host="127.0.0.1",
            anchor_smtp_port=port,
            anchor_smtp_from="gateway@district.example",
            anchor_smtp_user="gateway",
            anchor_smtp_password_file=tmp_path / "password",
            anchor_smtp_ca_file=tmp_path / "ca.pem",
        )
        text = audit.anchor_text(_anchor(signer))
        anchors.send_email(["audit@epp.example"], "anchor-000000000007.json", text, settings)
        assert logins == [(b"gateway", b"s3cret-pw")]
        ((recipients, message),) = mailbox.messages
        assert recipients == ["audit@epp.example"]
        assert attachment(message) == ("anchor-000000000007.json", text.encode())
        # A wrong password is refused, and the error holds neither it nor the recipients.
        (tmp_path / "password").write_text("wrong-pw")
        with pytest.raises(anchors.AnchorFailed) as refused:
            anchors.send_email(["audit@epp.example"], "a.json", text, settings)
        assert "SMTPAuthenticationError" in refused.value.message
        assert logins[-1] == (b"gateway", b"wrong-pw")
        assert "wrong-pw" not in refused.value.message and "epp" not in refused.value.message
        # Without the relay's CA, its certificate is not trusted: nothing is sent.
        untrusted = settings.model_copy(update={"anchor_smtp_ca_file": None})
        with pytest.raises(anchors.AnchorFailed, match="SSLCertVerificationError"):
            anchors.send_email(["audit@epp.example"], "a.json", text, untrusted)
        assert len(mailbox.messages) == 1
    finally:
        controller.stop()


# --- helpers -----------------------------------------------------------------------------


def add_events(gw: Gateway, count: int) -> None:
    with gw.sessions() as session, session.begin():
        for i in range(count):
            audit.append_event(session, kind="key-created", actor=audit.OPERATOR, details={"n": i})


def verify(env: dict[str, str], *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["audit", "verify", *args], env=env)
    return result.exit_code, result.stdout


def attachment(message: Message) -> tuple[str, bytes]:
    for part in message.walk():
        if part.get_filename():
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return part.get_filename() or "", payload
    raise AssertionError("the email holds no attachment")


def roll_back(gw: Gateway, keep: int) -> None:
    """Cut the log back to event ``keep``, with its head and checkpoints set to match:
    the shorter log verifies on its own (docs/audit.md, what verification does not catch)."""
    with gw.engine.begin() as connection:
        kept = connection.execute(
            text("SELECT hash FROM audit_events WHERE seq = :s"), {"s": keep}
        ).scalar_one()
        connection.execute(text("DELETE FROM audit_events WHERE seq > :s"), {"s": keep})
        connection.execute(text("DELETE FROM audit_checkpoints WHERE seq > :s"), {"s": keep})
        connection.execute(
            text("UPDATE audit_head SET seq = :s, hash = :h"), {"s": keep, "h": kept}
        )


# --- end to end: every destination, then a roll-back and a rewrite ---------------------------


def test_anchors_reach_every_destination_and_catch_a_rolled_back_or_rewritten_log(
    gateway: Gateway,
    settings: Settings,
    tmp_path: Path,
    authority: Authority,
    smtp: tuple[Mailbox, int],
) -> None:
    mailbox, port = smtp
    share = tmp_path / "other-host"
    share.mkdir()
    env = {
        **settings_env(settings),
        "GATEWAY_ANCHOR_DESTINATIONS": json.dumps(
            [
                f"file:{share}",
                "smtp:reviewer@district.example,audit@epp.example",
                f"tsa:{authority.url}",
            ]
        ),
        "GATEWAY_ANCHOR_SMTP_HOST": "127.0.0.1",
        "GATEWAY_ANCHOR_SMTP_PORT": str(port),
        "GATEWAY_ANCHOR_SMTP_SECURITY": "none",
        "GATEWAY_ANCHOR_SMTP_FROM": "gateway@district.example",
        "GATEWAY_ANCHOR_TSA_CERT": str(authority.ca_pem),
    }
    add_events(gateway, 3)
    mails_before, asked_before = len(mailbox.messages), len(authority.requests)
    done = CliRunner().invoke(main, ["audit", "anchor", "--json"], env=env)
    assert done.exit_code == 0, done.output
    outcome = json.loads(done.stdout)
    anchored_seq, anchored_hash = outcome["seq"], outcome["hash"]
    with gateway.sessions() as session:
        assert session.scalar(select(AuditEvent.hash).where(AuditEvent.seq == anchored_seq)) == (
            anchored_hash
        )
        event = audit.event_view(
            session.scalars(select(AuditEvent).where(AuditEvent.kind == "audit-anchored")).one()
        )

    # The folder on the "other host" holds it, named by its event, and the email the same bytes.
    saved = share / f"anchor-{anchored_seq:012d}.json"
    assert [p.name for p in share.iterdir()] == [saved.name]
    assert len(mailbox.messages) == mails_before + 1
    recipients, message = mailbox.messages[-1]
    assert sorted(recipients) == ["audit@epp.example", "reviewer@district.example"]
    name, attached = attachment(message)
    assert name == saved.name and attached == saved.read_bytes()
    document = json.loads(saved.read_text())
    assert saved.read_text() == audit.canonical_json(document) + "\n"  # RFC 8785, one line
    assert document["public_key_fingerprint"] == gateway.signing_key.fingerprint

    # The TSA was asked once, and its token verifies with OpenSSL itself, over the anchor.
    assert len(authority.requests) == asked_before + 1
    token = tmp_path / "token.der"
    token.write_bytes(base64.b64decode(document["timestamp"]["token"]))
    imprinted = tmp_path / "imprinted"
    imprinted.write_bytes(audit.anchor_imprint(document))
    assert OPENSSL is not None
    checked = subprocess.run(
        [OPENSSL, "ts", "-verify", "-data", str(imprinted), "-in", str(token), "-token_in",
         "-CAfile", str(authority.ca_pem)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert checked.returncode == 0 and "Verification: OK" in checked.stdout, checked.stderr

    # The event names the kinds, never the folder, the addresses or the URL.
    assert event["details"]["seq"] == anchored_seq
    assert [d["kind"] for d in event["details"]["destinations"]] == ["tsa", "file", "smtp"]
    assert event["details"]["timestamped"] is True and event["details"]["failed"] == []
    recorded = json.dumps(event)
    for secret in (str(share), "reviewer@", "127.0.0.1"):
        assert secret not in recorded

    # Both copies verify against the live log, the timestamp too.
    emailed = tmp_path / "emailed.json"
    emailed.write_bytes(attached)
    plain = {k: v for k, v in env.items() if k != "GATEWAY_ANCHOR_TSA_CERT"}
    status, out = verify(plain, "--anchor", str(saved), "--anchor", str(emailed))
    assert status == 0, out
    assert "timestamp was not checked (give --tsa-cert)" in out  # never silently skipped
    status, out = verify(env, "--anchor", str(saved), "--anchor", str(emailed))
    assert status == 0 and "not checked" not in out, out

    # A log later cut back below the anchored head verifies alone, but not with the anchor.
    add_events(gateway, 2)
    roll_back(gateway, anchored_seq - 2)
    assert verify(env)[0] == 0
    status, out = verify(env, "--anchor", str(emailed))
    assert status == 8
    assert (
        f"chain head: anchor {emailed}: event {anchored_seq}, the head it anchors, is missing: "
        "the log was cut back (truncated or rolled back) since it was anchored"
    ) in out
    # Regrown past it with other events, it is caught as rewritten, at the anchored event.
    add_events(gateway, 4)
    with gateway.sessions() as session, session.begin():
        audit.sign_checkpoint(session, gateway.signing_key)
    assert verify(env)[0] == 0
    status, out = verify(env, "--anchor", str(saved))
    assert status == 8
    assert f"event {anchored_seq}: differs from the head signed in anchor {saved}" in out

    # Anchoring again never replaces the earlier anchor of that event in the folder.
    again = CliRunner().invoke(main, ["audit", "anchor"], env=env)
    assert again.exit_code == 0, again.output
    assert saved.read_bytes() == attached
    assert len(list(share.iterdir())) == 2

    # A destination that fails is named; the others are still written, and recorded.
    broken = {**env, "GATEWAY_ANCHOR_SMTP_PORT": "1"}
    failed = CliRunner().invoke(main, ["audit", "anchor"], env=broken)
    assert failed.exit_code == anchors.AnchorFailed.exit_code
    assert "anchoring failed for smtp: the SMTP server 127.0.0.1:1 refused or failed" in (
        failed.stderr
    )
    assert len(list(share.iterdir())) == 3
    with gateway.sessions() as session:
        last = audit.event_view(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.kind == "audit-anchored")
                .order_by(AuditEvent.seq.desc())
            ).first()  # type: ignore[arg-type]
        )
    assert last["details"]["failed"] == ["smtp"]


def test_a_forged_anchor_is_refused(gateway: Gateway, settings: Settings, tmp_path: Path) -> None:
    share = tmp_path / "share"
    share.mkdir()
    env = {**settings_env(settings), "GATEWAY_ANCHOR_DESTINATIONS": json.dumps([f"file:{share}"])}
    assert CliRunner().invoke(main, ["audit", "anchor"], env=env).exit_code == 0
    (genuine,) = share.iterdir()
    document = json.loads(genuine.read_text())
    # Someone without the gateway's key signs the same head with a key of their own.
    keys.create_signing_key(tmp_path / "other.key")
    other = keys.load_signing_key(tmp_path / "other.key")
    forged = tmp_path / "forged.json"
    message = audit.canonical_json(
        {"seq": document["seq"], "hash": document["hash"], "signed_at": document["signed_at"]}
    ).encode()
    forged.write_text(
        audit.anchor_text(
            {**document, "public_key_fingerprint": other.fingerprint,
             "signature": other.sign(message).hex()}
        )
    )  # fmt: skip
    status, out = verify(env, "--anchor", str(forged))
    assert status == 8
    assert f"anchor {forged}: signed by another key ({other.fingerprint})" in out
    # The gateway's fingerprint kept, another head claimed: the signature fails.
    claimed = tmp_path / "claimed.json"
    claimed.write_text(audit.anchor_text({**document, "hash": "ab" * 32}))
    status, out = verify(env, "--anchor", str(claimed))
    assert status == 8 and f"anchor {claimed}: the signature is not valid" in out
    # Not an anchor at all: a one-line refusal naming the file (exit 7, like a bad EVENTS:HASH).
    junk = tmp_path / "junk.json"
    junk.write_text('{"seq": 1}')
    result = CliRunner().invoke(main, ["audit", "verify", "--anchor", str(junk)], env=env)
    assert result.exit_code == SchemaError.exit_code
    assert f"{junk} is not an audit anchor" in result.stderr
    assert verify(env, "--anchor", str(genuine))[0] == 0


# --- the pieces, without a database ----------------------------------------------------


@pytest.fixture(scope="module")
def signer(tmp_path_factory: pytest.TempPathFactory) -> keys.SigningKey:
    path = tmp_path_factory.mktemp("key") / "signing.key"
    keys.create_signing_key(path)
    return keys.load_signing_key(path)


def _anchor(signer: keys.SigningKey, seq: int = 7, head: str = "cd" * 32) -> dict[str, Any]:
    signed_at = "2026-12-02T08:00:00.000001+00:00"
    message = audit.canonical_json({"seq": seq, "hash": head, "signed_at": signed_at}).encode()
    return {
        "format": audit.ANCHOR_FORMAT,
        "seq": seq,
        "hash": head,
        "signed_at": signed_at,
        "public_key_fingerprint": signer.fingerprint,
        "signature": signer.sign(message).hex(),
    }


def _public(signer: keys.SigningKey) -> Any:
    return serialization.load_pem_public_key(signer.public_pem)


@given(
    member=st.sampled_from(["seq", "hash", "signed_at", "signature"]),
    salt=st.integers(min_value=1, max_value=2**31),
)
@hyp_settings(max_examples=40, deadline=None)
def test_any_change_to_a_signed_member_breaks_the_anchor(
    signer: keys.SigningKey, tmp_path_factory: pytest.TempPathFactory, member: str, salt: int
) -> None:
    document = _anchor(signer)
    if member == "seq":
        document["seq"] += salt
    elif member == "signed_at":
        document["signed_at"] = f"2026-12-02T08:00:00.{salt % 999999:06d}+00:00"
        if document["signed_at"] == _anchor(signer)["signed_at"]:
            return
    else:
        original = document[member]
        changed = f"{int(original, 16) ^ salt:0{len(original)}x}"
        document[member] = changed
    path = tmp_path_factory.mktemp("anchor") / "a.json"
    path.write_text(audit.anchor_text(document))
    anchor = audit.SignedAnchor.load(path)
    assert anchor.signature_problem(_public(signer)) is not None
    # ...while the untouched anchor is sound and checks against the head it names.
    path.write_text(audit.anchor_text(_anchor(signer)))
    sound = audit.SignedAnchor.load(path)
    assert sound.signature_problem(_public(signer)) is None
    assert sound.check({7: "cd" * 32}.get, _public(signer)) == []


def test_the_folder_destination_never_replaces_an_anchor(tmp_path: Path) -> None:
    assert anchors.write_file(tmp_path, "anchor-000000000007.json", "first\n") == (
        "anchor-000000000007.json"
    )
    # The same anchor again: nothing new. Another one for the same event: a new name.
    assert anchors.write_file(tmp_path, "anchor-000000000007.json", "first\n") == (
        "anchor-000000000007.json"
    )
    assert anchors.write_file(tmp_path, "anchor-000000000007.json", "second\n") == (
        "anchor-000000000007-2.json"
    )
    assert (tmp_path / "anchor-000000000007.json").read_text() == "first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "anchor-000000000007-2.json",
        "anchor-000000000007.json",
    ]  # no temporary file left behind
    with pytest.raises(anchors.AnchorFailed, match="is not a folder"):
        anchors.write_file(tmp_path / "unmounted", "a.json", "x")


def test_a_folder_without_hard_links_gets_exclusive_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some SMB and object-store mounts refuse link(2); no such filesystem is mounted
    here, so link is made to refuse as they do (EPERM): the anchor is still written, and
    an existing one still never replaced."""

    def no_links(source: object, target: object) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    assert anchors.write_file(tmp_path, "anchor-000000000009.json", "one\n") == (
        "anchor-000000000009.json"
    )
    assert anchors.write_file(tmp_path, "anchor-000000000009.json", "two\n") == (
        "anchor-000000000009-2.json"
    )
    assert (tmp_path / "anchor-000000000009.json").read_text() == "one\n"
    assert (tmp_path / "anchor-000000000009-2.json").read_text() == "two\n"
    assert len(list(tmp_path.iterdir())) == 2


def test_destinations_are_checked_with_a_clear_message() -> None:
    with pytest.raises(ConfigurationError, match="no anchor destination"):
        anchors.destinations_of([])
    with pytest.raises(ConfigurationError, match="only timestamps the anchor"):
        anchors.destinations_of(["tsa:https://tsa.example/tsr"])
    with pytest.raises(ConfigurationError, match="'ftp:x' is not a destination"):
        anchors.destinations_of(["ftp:x"])
    with pytest.raises(ConfigurationError, match="http:// or https:// URL"):
        anchors.destinations_of(["file:/x", "tsa:file:///etc/passwd"])
    found = anchors.destinations_of(["file:/x", "smtp:a@x.example, b@y.example"])
    assert found[1].recipients == ["a@x.example", "b@y.example"]


def test_timestamp_tokens_are_checked(
    signer: keys.SigningKey, authority: Authority, tmp_path: Path
) -> None:
    document = _anchor(signer)
    trusted = anchors.load_certificates(authority.ca_pem)
    settings = Settings(_env_file=None, anchor_tsa_cert=authority.ca_pem)
    token = anchors.request_timestamp(authority.url, audit.anchor_imprint(document), settings)
    assert anchors.timestamp_problem(token, audit.anchor_imprint(document), trusted) is None
    # The TSA's own certificate may be the one configured, instead of its issuer.
    own = anchors.load_certificates(authority.tsa_pem)
    assert anchors.timestamp_problem(token, audit.anchor_imprint(document), own) is None
    stamp = anchors.timestamp_of(token)
    assert abs(stamp.gen_time - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)

    # A token of another anchor does not stamp this one.
    other = audit.anchor_imprint(_anchor(signer, seq=8))
    assert "message imprint is not the hash of this anchor" in str(
        anchors.timestamp_problem(token, other, trusted)
    )
    # A TSA the operator did not configure is not trusted.
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _certificate("Another CA", stranger_key, None, ca=True)
    assert "not the configured one" in str(
        anchors.timestamp_problem(token, audit.anchor_imprint(document), [stranger])
    )
    # A changed time inside the signed TSTInfo is caught by its digest.
    when = stamp.gen_time.strftime("%Y%m%d%H%M%S").encode()
    assert token.count(when) == 1
    later = token.replace(when, (stamp.gen_time + dt.timedelta(hours=1)).strftime(
        "%Y%m%d%H%M%S"
    ).encode())  # fmt: skip
    assert "changed after it was signed" in str(
        anchors.timestamp_problem(later, audit.anchor_imprint(document), trusted)
    )
    # A signature altered (its last byte, inside the ECDSA signature) is refused.
    altered = token[:-1] + bytes([token[-1] ^ 1])
    assert "the TSA's signature is not valid" in str(
        anchors.timestamp_problem(altered, audit.anchor_imprint(document), trusted)
    )
    # A stamped anchor whose token was swapped fails `verify --tsa-cert` (timestamp checked).
    path = tmp_path / "stamped.json"
    swapped = anchors.request_timestamp(authority.url, other, settings)
    path.write_text(
        audit.anchor_text({**document, "timestamp": {"token": base64.b64encode(swapped).decode()}})
    )
    problem = anchors.anchor_timestamp_problem(audit.SignedAnchor.load(path), trusted)
    assert problem is not None and "imprint" in problem
