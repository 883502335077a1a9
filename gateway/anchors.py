"""External anchors of the audit chain head (``gateway audit anchor``).

An anchor is the newest signed checkpoint written as a small RFC 8785 JSON document
(:func:`gateway.audit.anchor_document`) to places the gateway's operator does not
control alone: a folder on another host (``file:``), the reviewers' mailboxes
(``smtp:``), and, before those, an RFC 3161 timestamp authority (``tsa:``) whose token
proves the anchor existed at the time it states. A log later rolled back or rewritten
below an anchored head no longer holds that head, and verification with the anchor
says so (docs/audit.md#anchors).

RFC 3161 messages are built and read with asn1crypto (its ``tsp`` and ``cms`` modules);
the TSA's CMS signature is checked with ``cryptography``.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import secrets
import smtplib
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway import audit
from gateway.errors import ConfigurationError, GatewayError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from gateway.config import Settings

KINDS = ("file", "smtp", "tsa")


class AnchorFailed(GatewayError):
    """An anchor could not be written to (or timestamped by) a destination."""

    code = "anchor_failed"
    exit_code = 15


@dataclass(frozen=True)
class Destination:
    """One configured destination: ``file:FOLDER``, ``smtp:ADDRESS[,ADDRESS...]`` or
    ``tsa:URL``."""

    kind: str
    target: str

    @classmethod
    def parse(cls, text: str) -> Destination:
        kind, _, target = text.partition(":")
        if kind not in KINDS or not target.strip():
            raise ConfigurationError(
                f"GATEWAY_ANCHOR_DESTINATIONS: {text!r} is not a destination; expected "
                "file:FOLDER, smtp:ADDRESS[,ADDRESS...] or tsa:URL"
            )
        if kind == "tsa" and not target.startswith(("http://", "https://")):
            raise ConfigurationError(
                "GATEWAY_ANCHOR_DESTINATIONS: a tsa: destination is the timestamp "
                "authority's http:// or https:// URL"
            )
        return cls(kind, target.strip())

    @property
    def recipients(self) -> list[str]:
        return [a.strip() for a in self.target.split(",") if a.strip()]


def destinations_of(texts: Sequence[str]) -> list[Destination]:
    """The destinations, checked: at least one place that keeps the anchor (a tsa:
    destination only stamps it), and one timestamp authority at most."""
    found = [Destination.parse(t) for t in texts]
    if not any(d.kind in ("file", "smtp") for d in found):
        raise ConfigurationError(
            "no anchor destination: set GATEWAY_ANCHOR_DESTINATIONS (a JSON list) to at "
            'least one file:FOLDER or smtp:ADDRESS, for example ["file:/mnt/reviewers/'
            'anchors"]; a tsa:URL only timestamps the anchor, it does not keep it'
        )
    if sum(d.kind == "tsa" for d in found) > 1:
        raise ConfigurationError("GATEWAY_ANCHOR_DESTINATIONS: name one tsa: destination at most")
    return found


def anchor_head(session: Session, settings: Settings, signer: audit.Signer) -> dict[str, Any]:
    """Sign the head (if not signed yet), timestamp it when a TSA is configured, write it to
    every destination, and record an ``audit-anchored`` event. A destination that fails is
    named in the error raised after the others were written (and recorded)."""
    destinations = destinations_of(settings.anchor_destinations)
    checkpoint = audit.sign_checkpoint(session, signer)
    if checkpoint is None:
        raise ConfigurationError("the audit log is empty: there is no head to anchor yet")
    document = audit.anchor_document(checkpoint)
    session.commit()
    written: list[dict[str, Any]] = []
    failures: list[str] = []
    for tsa in (d for d in destinations if d.kind == "tsa"):
        try:
            token = request_timestamp(tsa.target, audit.anchor_imprint(document), settings)
        except AnchorFailed as error:
            failures.append(f"tsa: {error.message}")
        else:
            document["timestamp"] = {"token": base64.b64encode(token).decode()}
            written.append({"kind": "tsa"})
    name = f"anchor-{checkpoint.seq:012d}.json"
    text = audit.anchor_text(document)
    for destination in destinations:
        try:
            if destination.kind == "file":
                saved = write_file(Path(destination.target), name, text)
                written.append({"kind": "file", "file": saved})
            elif destination.kind == "smtp":
                send_email(destination.recipients, name, text, settings)
                written.append({"kind": "smtp", "recipients": len(destination.recipients)})
        except AnchorFailed as error:
            failures.append(f"{destination.kind}: {error.message}")
    if written:
        audit.append_event(
            session,
            kind="audit-anchored",
            actor=audit.OPERATOR,
            details={
                "seq": checkpoint.seq,
                "hash": checkpoint.head_hash,
                "signed_at": checkpoint.signed_at,
                "public_key_fingerprint": checkpoint.public_key_fingerprint,
                # Kinds and counts only: no folder, address or URL (they may hold a name).
                "destinations": [
                    {k: v for k, v in entry.items() if k != "file"} for entry in written
                ],
                "timestamped": "timestamp" in document,
                "failed": [failure.partition(":")[0] for failure in failures],
            },
        )
        session.commit()
    if failures:
        raise AnchorFailed("anchoring failed for " + "; ".join(failures))
    return {
        "seq": checkpoint.seq,
        "hash": checkpoint.head_hash,
        "name": name,
        "timestamped": "timestamp" in document,
        "destinations": written,
        "anchor": document,
    }


# --- file: a folder, ideally on another host -------------------------------------------


def write_file(folder: Path, name: str, text: str) -> str:
    """Write ``text`` as ``folder/name`` atomically, never replacing a file: an anchor
    already there with other content (a log anchored at this event before, and since
    rolled back and regrown) is kept, and this one gets the next free suffix."""
    if not folder.is_dir():
        raise AnchorFailed(f"{folder} is not a folder (is the share mounted?)")
    fd, temporary = tempfile.mkstemp(prefix=".anchor-", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        stem = name.removesuffix(".json")
        for attempt in range(1, 1000):
            final = folder / (name if attempt == 1 else f"{stem}-{attempt}.json")
            try:
                _link_or_create(Path(temporary), final, text)
            except FileExistsError:
                if final.read_text(encoding="utf-8") == text:
                    return final.name  # the same anchor, written before
                continue
            _sync_folder(folder)
            return final.name
        raise AnchorFailed(f"{folder} holds 999 different anchors named {stem}")
    except OSError as error:
        raise AnchorFailed(f"cannot write to {folder}: {error.strerror}") from None
    finally:
        Path(temporary).unlink(missing_ok=True)


#: link(2) refused by the filesystem itself (some SMB and object-store mounts).
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


def _link_or_create(temporary: Path, final: Path, text: str) -> None:
    """Put ``text`` at ``final`` unless the name is taken (FileExistsError): a hard link
    to the written file, atomic; where the filesystem has no links, an exclusive create
    (never replacing either, though a reader may then see the file being written)."""
    try:
        os.link(temporary, final)
        return
    except OSError as error:
        if isinstance(error, FileExistsError) or error.errno not in _NO_LINKS:
            raise
    fd = os.open(final, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- smtp: an email to the reviewers ---------------------------------------------------

_EMAIL_TEXT = """\
This is an anchor of the audit log of the teacher-data gateway: the gateway's signed
statement that its log held {seq} events, the last with hash {hash}.

Keep the attached file. To check a later log or audit bundle against it:

    gateway audit verify --bundle BUNDLE --anchor {name}
    python3 verify_bundle.py BUNDLE --anchor {name}

A log cut back or rewritten below this head no longer holds it, and verification
names this anchor. See docs/audit.md ("Anchors") in the gateway's documentation.
"""


def send_email(recipients: Sequence[str], name: str, text: str, settings: Settings) -> None:
    """Send the anchor as an attachment through the configured SMTP server."""
    if settings.anchor_smtp_host is None or settings.anchor_smtp_from is None:
        raise AnchorFailed(
            "an smtp: destination needs GATEWAY_ANCHOR_SMTP_HOST and GATEWAY_ANCHOR_SMTP_FROM"
        )
    document = json.loads(text)
    message = EmailMessage()
    message["Subject"] = f"Audit log anchor: event {document['seq']}"
    message["From"] = settings.anchor_smtp_from
    message["To"] = ", ".join(recipients)
    message.set_content(_EMAIL_TEXT.format(seq=document["seq"], hash=document["hash"], name=name))
    message.add_attachment(text.encode(), maintype="application", subtype="json", filename=name)
    security = settings.anchor_smtp_security
    try:
        context = ssl.create_default_context(cafile=settings.anchor_smtp_ca_file)
    except (OSError, ssl.SSLError):
        raise AnchorFailed(
            f"GATEWAY_ANCHOR_SMTP_CA_FILE: {settings.anchor_smtp_ca_file} is not a readable "
            "file of PEM CA certificates"
        ) from None
    try:
        if security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                settings.anchor_smtp_host, settings.anchor_smtp_port, context=context, timeout=30
            )
        else:
            client = smtplib.SMTP(settings.anchor_smtp_host, settings.anchor_smtp_port, timeout=30)
        with client:
            if security == "starttls":
                client.starttls(context=context)
            if settings.anchor_smtp_user is not None:
                client.login(settings.anchor_smtp_user, _smtp_password(settings))
            refused = client.send_message(message)
    except (smtplib.SMTPException, ssl.SSLError, OSError) as error:
        # The server's reply, not the message (which holds the recipients).
        raise AnchorFailed(
            f"the SMTP server {settings.anchor_smtp_host}:{settings.anchor_smtp_port} "
            f"refused or failed: {type(error).__name__}"
        ) from None
    if refused:
        raise AnchorFailed(f"the SMTP server refused {len(refused)} recipient(s)")


def _smtp_password(settings: Settings) -> str:
    path = settings.anchor_smtp_password_file
    if path is None:
        raise AnchorFailed(
            "GATEWAY_ANCHOR_SMTP_USER is set but GATEWAY_ANCHOR_SMTP_PASSWORD_FILE is not"
        )
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError:
        raise AnchorFailed(f"GATEWAY_ANCHOR_SMTP_PASSWORD_FILE: cannot read {path}") from None


# --- tsa: an RFC 3161 timestamp ---------------------------------------------------------


def request_timestamp(url: str, data: bytes, settings: Settings) -> bytes:
    """Ask the TSA at ``url`` to timestamp ``data`` (SHA-256); return its token (DER),
    checked against the TSA certificate configured (GATEWAY_ANCHOR_TSA_CERT)."""
    from asn1crypto import tsp

    if settings.anchor_tsa_cert is None:
        raise AnchorFailed(
            "a tsa: destination needs GATEWAY_ANCHOR_TSA_CERT, the TSA's certificate (or the "
            "certificate that issued it), PEM, to check its timestamps"
        )
    trusted = load_certificates(settings.anchor_tsa_cert)
    nonce = secrets.randbits(63)
    request = tsp.TimeStampReq(
        {
            "version": "v1",
            "message_imprint": {
                "hash_algorithm": {"algorithm": "sha256"},
                "hashed_message": hashlib.sha256(data).digest(),
            },
            "nonce": nonce,
            "cert_req": True,
        }
    ).dump()
    # Destination.parse admits http:// and https:// URLs only.
    http = urllib.request.Request(  # noqa: S310
        url, data=request, headers={"Content-Type": "application/timestamp-query"}
    )
    try:
        with urllib.request.urlopen(http, timeout=30) as answer:  # noqa: S310
            reply = answer.read(1024 * 1024)
    except (urllib.error.URLError, OSError) as error:
        raise AnchorFailed(f"the timestamp authority did not answer: {error}") from None
    try:
        response = tsp.TimeStampResp.load(reply)
        status = response["status"]["status"].native
        token = response["time_stamp_token"]
        if status not in ("granted", "granted_with_mods") or token.native is None:
            raise AnchorFailed(f"the timestamp authority did not grant a timestamp ({status})")
        der: bytes = token.dump()
    except (ValueError, TypeError, KeyError):
        raise AnchorFailed("the timestamp authority's answer is not an RFC 3161 response") from None
    problem = timestamp_problem(der, data, trusted, nonce=nonce)
    if problem is not None:
        raise AnchorFailed(f"the timestamp authority's token is not valid: {problem}")
    return der


def load_certificates(path: Path) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        raise ConfigurationError(
            f"{path} is not a PEM certificate (the timestamp authority's, or its issuer's)"
        ) from None


@dataclass(frozen=True)
class Timestamp:
    """What a checked token states."""

    gen_time: datetime
    serial: int


def timestamp_of(token: bytes) -> Timestamp:
    from asn1crypto import cms

    info = cms.ContentInfo.load(token)["content"]["encap_content_info"]["content"].parsed
    return Timestamp(info["gen_time"].native, info["serial_number"].native)


def timestamp_problem(
    token: bytes,
    data: bytes,
    trusted: Sequence[x509.Certificate],
    *,
    nonce: int | None = None,
) -> str | None:
    """Why ``token`` is not an RFC 3161 timestamp of ``data`` by a TSA of ``trusted``
    (the TSA's certificate, or one that issued it), or None when it is."""
    from asn1crypto import cms

    try:
        content = cms.ContentInfo.load(token)
        if content["content_type"].native != "signed_data":
            return "it is not CMS signed data"
        signed = content["content"]
        encap = signed["encap_content_info"]
        if encap["content_type"].native != "tst_info":
            return "it does not hold a TSTInfo"
        raw_info: bytes = encap["content"].contents
        info = encap["content"].parsed
        imprint = info["message_imprint"]
        algorithm = imprint["hash_algorithm"]["algorithm"].native
        if algorithm not in _HASHES:
            return f"its message imprint uses {algorithm}, not SHA-2"
        if imprint["hashed_message"].native != _digest(algorithm, data):
            return "its message imprint is not the hash of this anchor (it stamps something else)"
        if nonce is not None and info["nonce"].native != nonce:
            return "its nonce is not the one asked for (a replayed answer)"
        signer_info = signed["signer_infos"][0]
        certificate = _signer_certificate(signed, signer_info)
        if certificate is None:
            return "it does not carry the TSA's certificate"
        gen_time: datetime = info["gen_time"].native
        if not (certificate.not_valid_before_utc <= gen_time <= certificate.not_valid_after_utc):
            return "it was made outside its certificate's validity"
        if not _trusted(certificate, trusted):
            return "its TSA certificate is not the configured one, nor issued by it"
        try:
            usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
        if usage is None or ExtendedKeyUsageOID.TIME_STAMPING not in usage:
            return "its certificate is not for timestamping (no timeStamping key usage)"
        digest_name = signer_info["digest_algorithm"]["algorithm"].native
        if digest_name not in _HASHES:
            return f"it is signed over {digest_name}, not SHA-2"
        attributes = signer_info["signed_attrs"]
        if not attributes:
            return "its signature covers no signed attributes"
        found = {a["type"].native: a["values"][0].native for a in attributes}
        if found.get("content_type") != "tst_info":
            return "its signed content type is not TSTInfo"
        if found.get("message_digest") != _digest(digest_name, raw_info):
            return "its TSTInfo was changed after it was signed"
        signed_bytes = b"\x31" + attributes.dump()[1:]  # [0] IMPLICIT -> SET OF, as signed
        _verify(certificate, signer_info, digest_name, signed_bytes)
    except InvalidSignature:
        return "the TSA's signature is not valid"
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as error:
        return f"it is not a readable RFC 3161 token ({type(error).__name__})"
    return None


_HASHES: Mapping[str, hashes.HashAlgorithm] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
}


def _digest(name: str, data: bytes) -> bytes:
    return hashlib.new(name, data).digest()


def _signer_certificate(signed: Any, signer_info: Any) -> x509.Certificate | None:
    sid = signer_info["sid"]
    for choice in signed["certificates"] or []:
        if choice.name != "certificate":
            continue
        cert = choice.chosen
        if sid.name == "issuer_and_serial_number":
            match = (
                cert.issuer == sid.chosen["issuer"]
                and cert.serial_number == sid.chosen["serial_number"].native
            )
        else:
            match = cert.key_identifier == sid.chosen.native
        if match:
            return x509.load_der_x509_certificate(cert.dump())
    return None


def _trusted(certificate: x509.Certificate, trusted: Sequence[x509.Certificate]) -> bool:
    for anchor in trusted:
        if certificate == anchor:
            return True
        try:
            certificate.verify_directly_issued_by(anchor)
            return True
        except (ValueError, TypeError, InvalidSignature):
            continue
    return False


def _verify(
    certificate: x509.Certificate, signer_info: Any, digest_name: str, signed_bytes: bytes
) -> None:
    key = certificate.public_key()
    signature: bytes = signer_info["signature"].native
    algorithm = _HASHES[digest_name]
    kind = signer_info["signature_algorithm"].signature_algo
    if isinstance(key, rsa.RSAPublicKey) and kind == "rsassa_pkcs1v15":
        key.verify(signature, signed_bytes, padding.PKCS1v15(), algorithm)
    elif isinstance(key, rsa.RSAPublicKey) and kind == "rsassa_pss":
        key.verify(
            signature,
            signed_bytes,
            padding.PSS(mgf=padding.MGF1(algorithm), salt_length=padding.PSS.AUTO),
            algorithm,
        )
    elif isinstance(key, ec.EllipticCurvePublicKey) and kind == "ecdsa":
        key.verify(signature, signed_bytes, ec.ECDSA(algorithm))
    else:
        raise ValueError(f"unsupported TSA signature {kind}")


def anchor_timestamp_problem(
    anchor: audit.SignedAnchor, trusted: Sequence[x509.Certificate]
) -> str | None:
    """Check the timestamp an anchor carries, if any (None when sound or absent)."""
    stamp = anchor.document.get("timestamp")
    if stamp is None:
        return None
    try:
        token = base64.b64decode(stamp["token"], validate=True)
    except (TypeError, KeyError, ValueError):
        return "its timestamp is not a base64 RFC 3161 token"
    return timestamp_problem(token, audit.anchor_imprint(anchor.document), trusted)
