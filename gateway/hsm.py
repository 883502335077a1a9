"""Keys in a hardware security module through PKCS#11: the ``pkcs11`` key backend.

Invariant: no key the HSM holds leaves it in the clear. The master key lives outside
the HSM only wrapped (AES key wrap, RFC 3394, CKM_AES_KEY_WRAP) by a wrapping key
generated inside the token as sensitive and non-extractable: the envelope encryption of
cloud key-management services. It is generated inside the token too, so it is in the
clear nowhere until a start unwraps it inside the token into a short-lived session
object, reads it into the gateway's memory and destroys that object; no file ever holds
it unwrapped. The audit signing key is an Ed25519 key pair generated inside the token
(CKK_EC_EDWARDS); its private half is sensitive and non-extractable, and every
signature is made by the token (CKM_EDDSA), as raw 64-byte RFC 8032 signatures, the
same as the file key's, so the verifiers need nothing new.

Only :mod:`gateway.keys` calls this module; python-pkcs11 is imported here alone (the
``hsm`` extra), so the file backend never needs it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.config import Settings
from gateway.errors import ConfigurationError, MasterKeyError

try:
    import pkcs11
    from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass
    from pkcs11 import exceptions as p11
    from pkcs11.util.ec import encode_named_curve_parameters
except ImportError:  # pragma: no cover - the message is what matters
    pkcs11 = None  # type: ignore[assignment]

#: The wrapped master key file's format tag (first field of its JSON).
WRAPPED_FORMAT = "teacher-gateway/wrapped-master-key/v1"
#: Wrapping keys are labelled this, then a number that grows at each rotation.
WRAPPING_LABEL_PREFIX = "gateway-master-wrapping-"
_ED25519_OID = "1.3.101.112"
_MASTER_KEY_BITS = 256


def _require_library() -> None:
    if pkcs11 is None:
        raise ConfigurationError(
            "GATEWAY_KEY_BACKEND=pkcs11 needs python-pkcs11: "
            "pip install 'teacher-gateway[hsm]' (or .[hsm] from the source folder)"
        )


def _read_pin(settings: Settings) -> str:
    """The token's user PIN, from GATEWAY_PKCS11_PIN or GATEWAY_PKCS11_PIN_FILE (0600)."""
    if settings.pkcs11_pin is not None and settings.pkcs11_pin_file is not None:
        raise ConfigurationError("set GATEWAY_PKCS11_PIN or GATEWAY_PKCS11_PIN_FILE, not both")
    if settings.pkcs11_pin is not None:
        return settings.pkcs11_pin.get_secret_value()
    path = settings.pkcs11_pin_file
    if path is None:
        raise ConfigurationError(
            "GATEWAY_KEY_BACKEND=pkcs11 needs the token's PIN: set GATEWAY_PKCS11_PIN_FILE "
            "(a file, mode 0600) or GATEWAY_PKCS11_PIN"
        )
    if not path.is_file():
        raise ConfigurationError(f"GATEWAY_PKCS11_PIN_FILE {path} is not a file")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise ConfigurationError(
            f"GATEWAY_PKCS11_PIN_FILE {path} is accessible by group or others "
            f"(mode {mode:04o}); run `chmod 600 {path}`"
        )
    return path.read_text(encoding="utf-8").strip()


@dataclass
class _Token:
    """One logged-in session on one token, shared by everything in this process.

    PKCS#11 login state belongs to the whole process (a second C_Login fails, and
    logging out one session logs out all of them), so each token gets one read-write
    session, kept for the life of the process; a lock makes its operations take turns.
    """

    key: tuple[str, str]
    label: str
    session: Any
    pin_digest: bytes
    lock: threading.Lock


_tokens: dict[tuple[str, str], _Token] = {}
_tokens_lock = threading.Lock()


def require_settings(settings: Settings) -> tuple[str, str]:
    """Refuse, before any key is read, a pkcs11 backend without its library or settings;
    the module's path and the token's label."""
    _require_library()
    if settings.pkcs11_module is None:
        raise ConfigurationError(
            "GATEWAY_KEY_BACKEND=pkcs11 needs GATEWAY_PKCS11_MODULE, the HSM's PKCS#11 "
            "library (SoftHSM2: /usr/lib/softhsm/libsofthsm2.so)"
        )
    if not settings.pkcs11_token_label:
        raise ConfigurationError(
            "GATEWAY_KEY_BACKEND=pkcs11 needs GATEWAY_PKCS11_TOKEN_LABEL, the label of the "
            "token holding the gateway's keys"
        )
    _read_pin(settings)  # refuse a missing, doubled or exposed PIN setting here too
    return str(settings.pkcs11_module), settings.pkcs11_token_label


def _token(settings: Settings) -> _Token:
    module, label = require_settings(settings)
    pin = _read_pin(settings)
    digest = hashlib.sha256(pin.encode("utf-8")).digest()
    with _tokens_lock:
        found = _tokens.get((module, label))
        if found is not None:
            if found.pin_digest != digest:
                # The process is already logged in; a different PIN cannot be checked.
                raise MasterKeyError(
                    f"token {label!r} is already open in this process with another PIN"
                )
            return found
        try:
            library = pkcs11.lib(module)
        except p11.PKCS11Error:
            raise MasterKeyError(
                f"GATEWAY_PKCS11_MODULE {module} cannot be loaded as a PKCS#11 module"
            ) from None
        try:
            token = library.get_token(token_label=label)
        except (p11.NoSuchToken, p11.TokenNotPresent):
            raise MasterKeyError(
                f"no token labelled {label!r} in the PKCS#11 module {module} "
                "(GATEWAY_PKCS11_TOKEN_LABEL); see keys/README.md to set one up"
            ) from None
        except p11.MultipleTokensReturned:
            raise MasterKeyError(
                f"more than one token is labelled {label!r} in {module}; give each its own label"
            ) from None
        except p11.PKCS11Error as exc:
            raise MasterKeyError(
                f"the PKCS#11 module {module} cannot list its tokens: {type(exc).__name__}"
            ) from None
        try:
            session = token.open(user_pin=pin, rw=True)
        except p11.PinIncorrect:
            raise MasterKeyError(
                f"the PIN for token {label!r} is incorrect "
                "(GATEWAY_PKCS11_PIN or GATEWAY_PKCS11_PIN_FILE)"
            ) from None
        except p11.PinLocked:
            raise MasterKeyError(
                f"token {label!r} is locked after too many wrong PINs; its security "
                "officer must unlock it"
            ) from None
        except p11.PKCS11Error as exc:
            raise MasterKeyError(
                f"cannot log in to token {label!r}: {type(exc).__name__}"
            ) from None
        found = _Token((module, label), label, session, digest, threading.Lock())
        _tokens[(module, label)] = found
        return found


#: Errors after which the cached session is useless: the next operation logs in again.
_SESSION_LOST: tuple[type[Exception], ...] = ()
if pkcs11 is not None:
    _SESSION_LOST = (
        p11.SessionClosed,
        p11.SessionHandleInvalid,
        p11.UserNotLoggedIn,
        p11.DeviceRemoved,
        p11.DeviceError,
        p11.TokenNotPresent,
    )


@contextmanager
def _session(settings: Settings) -> Iterator[Any]:
    token = _token(settings)
    with token.lock:
        try:
            yield token.session
        except p11.PKCS11Error as exc:
            if isinstance(exc, _SESSION_LOST):
                # A network HSM restarted, a token was pulled: log in afresh next time.
                with _tokens_lock:
                    _tokens.pop(token.key, None)
            # PKCS#11 errors say little (often nothing); name the token and the kind.
            raise MasterKeyError(
                f"the HSM (token {token.label!r}) refused an operation: {type(exc).__name__}"
            ) from None


def close_sessions() -> None:
    """Log out of every token this process opened (tests switch tokens with this)."""
    with _tokens_lock:
        for token in _tokens.values():
            with token.lock:
                token.session.close()
        _tokens.clear()


# --- the wrapped master key ---------------------------------------------------------------


def _wrapping_keys(session: Any) -> dict[str, Any]:
    found = session.get_objects(
        {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES}
    )
    return {
        key.label: key for key in found if key.label and key.label.startswith(WRAPPING_LABEL_PREFIX)
    }


def _new_wrapping_key(session: Any) -> Any:
    """A fresh AES-256 wrapping key in the token: it can wrap and unwrap, nothing else,
    and neither the gateway nor anyone else can ever read it out."""
    numbers = [
        int(label[len(WRAPPING_LABEL_PREFIX) :])
        for label in _wrapping_keys(session)
        if label[len(WRAPPING_LABEL_PREFIX) :].isdigit()
    ]
    return session.generate_key(
        KeyType.AES,
        256,
        label=f"{WRAPPING_LABEL_PREFIX}{max(numbers, default=0) + 1}",
        store=True,
        capabilities=MechanismFlag.WRAP | MechanismFlag.UNWRAP,
        template={
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.PRIVATE: True,
        },
    )


def _write_new_file(path: Path, content: bytes, *, replace: bool) -> None:
    """Write ``content`` (mode 0600, synced); replacing only through a rename."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = path.with_name(path.name + ".new") if replace else path
    if replace:
        target.unlink(missing_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    if replace:
        os.replace(target, path)


def _blob_text(*, token: str, wrapping_key: str, wrapped: bytes) -> bytes:
    return (
        json.dumps(
            {
                "format": WRAPPED_FORMAT,
                "token": token,
                "wrapping_key": wrapping_key,
                "mechanism": "CKM_AES_KEY_WRAP",
                "wrapped": base64.b64encode(wrapped).decode("ascii"),
            },
            indent=1,
        ).encode("utf-8")
        + b"\n"
    )


@dataclass(frozen=True)
class WrappedMasterKey:
    """The master key file of the pkcs11 backend: which wrapping key, and the blob."""

    wrapping_key: str
    wrapped: bytes


def read_wrapped(path: Path) -> WrappedMasterKey:
    """Read the wrapped master key file; refuse a missing, exposed or malformed one."""
    if not path.exists():
        raise MasterKeyError(
            f"no wrapped master key at {path}: create one with `gateway keys init` "
            "(or `gateway init`)"
        )
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise MasterKeyError(
            f"wrapped master key file {path} is accessible by group or others "
            f"(mode {mode:04o}); run `chmod 600 {path}`"
        )
    try:
        data = json.loads(path.read_bytes())
        if data.get("format") != WRAPPED_FORMAT:
            raise ValueError
        return WrappedMasterKey(
            wrapping_key=str(data["wrapping_key"]),
            wrapped=base64.b64decode(data["wrapped"], validate=True),
        )
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error):
        raise MasterKeyError(
            f"master key file {path} is not a wrapped master key ({WRAPPED_FORMAT}); "
            "with GATEWAY_KEY_BACKEND=pkcs11 it must be the file `gateway keys init` made"
        ) from None


def create_master_key(settings: Settings, path: Path) -> bool:
    """Make a master key inside the token and write it, wrapped, to ``path`` (0600),
    unless the file exists. True if created."""
    if path.exists():
        return False
    with _session(settings) as session:
        wrapping = _new_wrapping_key(session)
        # Generated inside the token as a session object: extractable only so that it
        # can be wrapped; sensitive, so not even this process can read it here.
        master = session.generate_key(
            KeyType.GENERIC_SECRET,
            _MASTER_KEY_BITS,
            store=False,
            capabilities=MechanismFlag(0),
            template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: True},
        )
        try:
            wrapped = wrapping.wrap_key(master, mechanism=Mechanism.AES_KEY_WRAP)
        finally:
            master.destroy()
        try:
            _write_new_file(
                path,
                _blob_text(token=session.token.label, wrapping_key=wrapping.label, wrapped=wrapped),
                replace=False,
            )
        except BaseException:
            wrapping.destroy()
            raise
    return True


def _unwrap(session: Any, blob: WrappedMasterKey, path: Path, *, readable: bool) -> Any:
    """The master key as a session object in the token (``readable``: its value may be
    read out, once, by this process)."""
    wrapping = _wrapping_keys(session).get(blob.wrapping_key)
    if wrapping is None:
        raise MasterKeyError(
            f"the wrapping key {blob.wrapping_key!r} that {path} names is not in token "
            f"{session.token.label!r}: it was destroyed, or this is another token"
        )
    try:
        return wrapping.unwrap_key(
            ObjectClass.SECRET_KEY,
            KeyType.GENERIC_SECRET,
            blob.wrapped,
            mechanism=Mechanism.AES_KEY_WRAP,
            store=False,
            capabilities=MechanismFlag(0),
            template={Attribute.SENSITIVE: not readable, Attribute.EXTRACTABLE: True},
        )
    except p11.PKCS11Error:
        # RFC 3394's integrity check failed: a changed blob, or another wrapping key.
        raise MasterKeyError(
            f"the wrapped master key in {path} does not unwrap with {blob.wrapping_key!r} "
            "(changed file, or not made with this key)"
        ) from None


def load_master_key_material(settings: Settings, path: Path) -> bytes:
    """Unwrap the master key inside the token and read it into memory (and only there)."""
    blob = read_wrapped(path)
    with _session(settings) as session:
        key = _unwrap(session, blob, path, readable=True)
        try:
            material: bytes = key[Attribute.VALUE]
        finally:
            key.destroy()
    return material


def rewrap_master_key(settings: Settings, path: Path) -> dict[str, str]:
    """Rotate the wrapping key: wrap the same master key under a new wrapping key,
    replace the file, then destroy the old wrapping key (old copies of the file die
    with it). The master key stays inside the token throughout."""
    blob = read_wrapped(path)
    with _session(settings) as session:
        master = _unwrap(session, blob, path, readable=False)
        try:
            new = _new_wrapping_key(session)
            wrapped = new.wrap_key(master, mechanism=Mechanism.AES_KEY_WRAP)
        finally:
            master.destroy()
        _write_new_file(
            path,
            _blob_text(token=session.token.label, wrapping_key=new.label, wrapped=wrapped),
            replace=True,
        )
        _wrapping_keys(session)[blob.wrapping_key].destroy()
    return {"previous_wrapping_key": blob.wrapping_key, "wrapping_key": new.label}


def discard_master_key(settings: Settings, path: Path) -> None:
    """Undo :func:`create_master_key` (a first ``gateway init`` that failed)."""
    blob = read_wrapped(path)
    with _session(settings) as session:
        found = _wrapping_keys(session).get(blob.wrapping_key)
        if found is not None:
            found.destroy()
    path.unlink()


# --- the audit signing key ----------------------------------------------------------------


def signing_key_uri(settings: Settings) -> str:
    """Where the signing key is, as an RFC 7512 PKCS#11 URI (what `gateway init` prints)."""
    return (
        f"pkcs11:token={settings.pkcs11_token_label};"
        f"object={settings.pkcs11_signing_key_label};type=private"
    )


def _signing_pair(session: Any, label: str) -> tuple[Any, Any] | None:
    private = list(
        session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label})
    )
    public = list(
        session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: label})
    )
    if not private and not public:
        return None
    if len(private) != 1 or len(public) != 1:
        raise MasterKeyError(
            f"token {session.token.label!r} holds {len(private)} private and {len(public)} "
            f"public keys labelled {label!r}; the signing key needs exactly one of each"
        )
    return private[0], public[0]


def create_signing_key(settings: Settings) -> bool:
    """Generate the Ed25519 signing key pair inside the token unless it is there."""
    label = settings.pkcs11_signing_key_label
    with _session(settings) as session:
        if _signing_pair(session, label) is not None:
            return False
        parameters = session.create_domain_parameters(
            KeyType.EC_EDWARDS,
            {Attribute.EC_PARAMS: encode_named_curve_parameters(_ED25519_OID)},
            local=True,
        )
        parameters.generate_keypair(
            store=True,
            label=label,
            public_template={Attribute.VERIFY: True},
            private_template={
                Attribute.SIGN: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.PRIVATE: True,
            },
        )
    return True


def _raw_public_key(point: bytes) -> bytes:
    """CKA_EC_POINT of an Ed25519 key: the 32 raw bytes, DER OCTET STRING-wrapped by
    most modules (SoftHSM2 does), bare by some."""
    if len(point) == 34 and point[:2] == b"\x04\x20":
        return point[2:]
    return point


class HsmSigningKey:
    """The audit signing key inside the token: signatures are made there. Reads like
    :class:`gateway.keys.SigningKey` (``sign``, ``public_pem``, ``fingerprint``)."""

    def __init__(self, settings: Settings, public: Ed25519PublicKey) -> None:
        self._settings = settings
        self._public = public

    def __repr__(self) -> str:
        return f"HsmSigningKey(public={self.fingerprint})"

    def sign(self, message: bytes) -> bytes:
        with _session(self._settings) as session:
            pair = _signing_pair(session, self._settings.pkcs11_signing_key_label)
            if pair is None:
                raise MasterKeyError(
                    f"the audit signing key {self._settings.pkcs11_signing_key_label!r} "
                    "is no longer in the token"
                )
            signature: bytes = pair[0].sign(message, mechanism=Mechanism.EDDSA)
        try:
            # A token that signed with another key must not go unnoticed until a review.
            self._public.verify(signature, message)
        except InvalidSignature:
            raise MasterKeyError(
                "the HSM's signature does not verify with the signing key's public half"
            ) from None
        return signature

    @property
    def public_pem(self) -> bytes:
        return self._public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the raw public key, as for the file key."""
        raw = self._public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(raw).hexdigest()


def load_signing_key(settings: Settings) -> HsmSigningKey:
    """Find the signing key pair in the token; refuse a missing or non-Ed25519 one."""
    label = settings.pkcs11_signing_key_label
    with _session(settings) as session:
        pair = _signing_pair(session, label)
        if pair is None:
            raise MasterKeyError(
                f"no audit signing key labelled {label!r} in token {session.token.label!r}: "
                "create it with `gateway keys init` (or `gateway init`)"
            )
        private, public = pair
        if private.key_type != KeyType.EC_EDWARDS or public.key_type != KeyType.EC_EDWARDS:
            raise MasterKeyError(f"the audit signing key {label!r} is not an Ed25519 key")
        raw = _raw_public_key(public[Attribute.EC_POINT])
    if len(raw) != 32:
        raise MasterKeyError(f"the audit signing key {label!r} is not an Ed25519 key")
    return HsmSigningKey(settings, Ed25519PublicKey.from_public_bytes(raw))


def discard_signing_key(settings: Settings) -> None:
    """Undo :func:`create_signing_key` (a first ``gateway init`` that failed)."""
    with _session(settings) as session:
        pair = _signing_pair(session, settings.pkcs11_signing_key_label)
        for key in pair or ():
            key.destroy()
