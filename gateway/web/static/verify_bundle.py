#!/usr/bin/env python3
"""Verify a teacher-data gateway audit bundle: one file, for reviewers.

    python3 verify_bundle.py BUNDLE_FOLDER [--previous EARLIER_BUNDLE]
                             [--anchor ANCHOR_FILE | --anchor N:HASH ...] [--json]

It needs Python 3.9 or later and the ``cryptography`` package (``pip install
cryptography``), nothing of the gateway: download it from the gateway's audit page, or
read it first. It checks what ``gateway audit verify --bundle`` checks and prints the
same report with the same exit status (0 sound, 8 a problem found, 3 not a bundle,
7 a malformed anchor):

- every event's SHA-256 over its body, its place in the sequence and its link to the
  event before it;
- that each body is spelled in the canonical JSON encoding it records: RFC 8785 (JSON
  Canonicalization Scheme), reimplemented below for JSON's own values, or, for events
  written before the gateway switched to it, Python's sorted ``json.dumps``;
- every signed checkpoint (Ed25519 over the RFC 8785 text of its event count, head
  hash and signing time) against the bundle's public key, and that the signatures
  cover the last event;
- with ``--previous`` or ``--anchor``, that the log still holds what an earlier check saw;
  an anchor file (written by ``gateway audit anchor``) must also be signed by the
  bundle's key. Its RFC 3161 timestamp, if any, is not checked here.

docs/audit-bundle.md in the gateway's source specifies the format, with test vectors.
Compare the printed key fingerprint with the one the gateway's operator published.
"""

from __future__ import annotations

import argparse
import decimal
import hashlib
import json
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

GENESIS_HASH = "0" * 64
ENCODING = "rfc8785"
BUNDLE_FILES = ("events.jsonl", "checkpoints.json", "public_key.pem", "manifest.json")
EXIT_BROKEN, EXIT_NOT_A_BUNDLE, EXIT_BAD_ANCHOR = 8, 3, 7


class BundleError(Exception):
    """The input cannot be checked at all (not a bundle, not an anchor)."""

    def __init__(self, message: str, *, code: str, exit_code: int) -> None:
        super().__init__(message)
        self.message, self.code, self.exit_code = message, code, exit_code


def _not_a_bundle(message: str) -> BundleError:
    return BundleError(message, code="configuration_error", exit_code=EXIT_NOT_A_BUNDLE)


# --- RFC 8785 (JSON Canonicalization Scheme) -------------------------------------------


def jcs(value: Any) -> str:
    """The RFC 8785 text of a JSON value (``None``, bools, numbers, strings, lists and
    dicts with string keys). Every number is an IEEE double, as in JavaScript; raises
    ValueError for what has no RFC 8785 text (NaN, infinities, lone surrogates)."""
    # json.dumps (in C) writes the same text for a value with no float, no integer beyond
    # 2**53, only ASCII names and no surrogate: most bodies, and much faster.
    if _same_in_both(value):
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return _jcs(value)


_SAFE_INTEGER = 2**53 - 1


def _same_in_both(value: Any) -> bool:
    if isinstance(value, str):
        return value.isascii() or not any("\ud800" <= c <= "\udfff" for c in value)
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -_SAFE_INTEGER <= value <= _SAFE_INTEGER
    if isinstance(value, dict):
        return all(
            isinstance(name, str) and name.isascii() and _same_in_both(item)
            for name, item in value.items()
        )
    if isinstance(value, (list, tuple)):
        return all(_same_in_both(item) for item in value)
    return False


def _jcs(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        try:
            return _es_number(float(value))
        except OverflowError:  # an integer beyond the largest double
            raise ValueError("no RFC 8785 text for an integer beyond the doubles") from None
    if isinstance(value, str):
        return _jcs_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_jcs(item) for item in value) + "]"
    if isinstance(value, dict):
        # Members sorted by their names' UTF-16 code units (RFC 8785 section 3.2.3).
        names = sorted(value, key=lambda name: name.encode("utf-16-be"))
        return "{" + ",".join(_jcs_string(n) + ":" + _jcs(value[n]) for n in names) + "}"
    raise ValueError(f"{type(value).__name__} is not a JSON value")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r"}
_ESCAPES["\t"] = "\\t"


def _jcs_string(text: str) -> str:
    text.encode("utf-8")  # a lone surrogate has no UTF-8 form: UnicodeEncodeError
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _es_number(number: float) -> str:
    """ECMAScript's Number::toString, which RFC 8785 section 3.2.2.3 adopts."""
    if math.isnan(number) or math.isinf(number):
        raise ValueError("NaN and the infinities have no RFC 8785 text")
    if number == 0:
        return "0"  # negative zero too
    if number < 0:
        return "-" + _es_number(-number)
    # repr gives the shortest digits that read back as the same double, as ECMAScript
    # asks; the value is int(digits) * 10 ** (n - k) with k digits.
    _sign, digit_tuple, exponent = decimal.Decimal(repr(number)).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    k = len(digits)
    n = int(exponent) + k
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * -n + digits
    e = n - 1
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{mantissa}e{'+' if e > 0 else '-'}{abs(e)}"


def legacy_json(value: Any) -> str:
    """The encoding of events written before the gateway switched to RFC 8785."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def encoding_problem(text: str, body: Mapping[str, Any]) -> str | None:
    """Why ``text`` is not its parsed ``body`` spelled in the encoding it records."""
    if "encoding" not in body:
        if legacy_json(body) == text:
            return None
        return "its body is not written in the encoding it records (legacy)"
    if body["encoding"] != ENCODING:
        return f"its body names an encoding other than {ENCODING}"
    try:
        # Integers are read as doubles, as RFC 8785 reads every number: 10**16 is one,
        # 2**53 + 1 is not (and so has no RFC 8785 text of its own).
        if jcs(body) == text:
            return None
    except ValueError:
        pass
    return f"its body is not written in the encoding it records ({ENCODING})"


# --- the checks -----------------------------------------------------------------------


class Problem:
    def __init__(self, seq: int | None, reason: str) -> None:
        self.seq, self.reason = seq, reason

    def __str__(self) -> str:
        where = f"event {self.seq}" if self.seq is not None else "chain head"
        return f"{where}: {self.reason}"


class Verification:
    def __init__(self) -> None:
        self.events_checked = 0
        self.head_hash = GENESIS_HASH
        self.problems: list[Problem] = []
        self.public_key_fingerprint: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "events_checked": self.events_checked,
            "head_hash": self.head_hash,
            "public_key_fingerprint": self.public_key_fingerprint,
            "problems": [{"seq": p.seq, "reason": p.reason} for p in self.problems],
        }


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_event(
    seq: int, digest: str, text: str, expected_seq: int, expected_prev: str
) -> Iterator[str]:
    if _sha256(text) != digest:
        yield "content was changed: its hash no longer matches its body"
        return
    try:
        body = json.loads(text)
        written_seq, prev_hash = body.get("seq"), body.get("prev_hash")
    except (ValueError, AttributeError):
        yield "its body is not an event record"
        return
    if written_seq != seq:
        yield f"stored at position {seq} but written as event {written_seq} (reordered)"
    if seq != expected_seq:
        if seq > expected_seq:
            yield f"expected event {expected_seq} here: event(s) before it were deleted"
        else:
            yield "sequence number repeats or goes backwards (inserted or reordered)"
    if prev_hash != expected_prev:
        yield "does not follow the event before it (an event was deleted, inserted or reordered)"
    problem = encoding_problem(text, body)
    if problem is not None:
        yield problem


def _checkpoint_message(seq: int, head_hash: str, signed_at: str) -> bytes:
    return jcs({"seq": seq, "hash": head_hash, "signed_at": signed_at}).encode("utf-8")


def _fingerprint(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def _verify_checkpoints(
    result: Verification,
    checkpoints: Sequence[Mapping[str, Any]],
    hashes: Mapping[int, str],
    public_key: Ed25519PublicKey,
) -> None:
    last_seq = max(hashes, default=0)
    signed_up_to = 0
    fingerprint = _fingerprint(public_key)
    for checkpoint in checkpoints:
        seq, head_hash = int(checkpoint["seq"]), str(checkpoint["hash"])
        if checkpoint.get("public_key_fingerprint") != fingerprint:
            result.problems.append(
                Problem(
                    None,
                    f"checkpoint at event {seq}: signed by another key "
                    f"({checkpoint.get('public_key_fingerprint')}); it cannot be "
                    "checked with this public key",
                )
            )
            continue
        message = _checkpoint_message(seq, head_hash, str(checkpoint["signed_at"]))
        try:
            public_key.verify(bytes.fromhex(str(checkpoint["signature"])), message)
        except (InvalidSignature, ValueError):
            result.problems.append(
                Problem(None, f"checkpoint at event {seq}: the signature is not valid")
            )
            continue
        if seq not in hashes:
            result.problems.append(
                Problem(
                    None,
                    f"checkpoint at event {seq}: that event is missing "
                    f"(the log ends at event {last_seq}: it was truncated)",
                )
            )
        elif hashes[seq] != head_hash:
            result.problems.append(
                Problem(seq, "differs from the signed checkpoint (the chain was rewritten)")
            )
        signed_up_to = max(signed_up_to, seq)
    if last_seq > signed_up_to:
        result.problems.append(
            Problem(
                None,
                f"events {signed_up_to + 1} to {last_seq} are not covered by any signed "
                "checkpoint (added after the export was signed)",
            )
        )


class Anchor:
    """An event count and head hash noted earlier: a later log must still hold them."""

    def __init__(self, seq: int, head_hash: str) -> None:
        self.seq, self.head_hash = seq, head_hash

    @classmethod
    def parse(cls, text: str) -> Anchor:
        seq, _, head_hash = text.partition(":")
        hex_digits = "0123456789abcdefABCDEF"
        if not seq.isdigit() or len(head_hash) != 64 or any(c not in hex_digits for c in head_hash):
            raise BundleError(
                "an anchor is EVENTS:HEAD_HASH, the count and 64-hex-digit head hash "
                "printed by an earlier verification (for example 42:9f86d081...)",
                code="schema_error",
                exit_code=EXIT_BAD_ANCHOR,
            )
        return cls(int(seq), head_hash.lower())

    @classmethod
    def of_bundle(cls, path: Path) -> Anchor:
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
            return cls(int(manifest["events"]), str(manifest["head_hash"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise _not_a_bundle(f"{path} holds no readable manifest.json") from None

    def check(
        self, hash_at: Callable[[int], str | None], public_key: Ed25519PublicKey
    ) -> list[Problem]:
        if self.seq == 0:
            return []
        found = hash_at(self.seq)
        if found is None:
            return [
                Problem(
                    None,
                    f"event {self.seq}, the head noted earlier, is missing: the log was cut "
                    "back (truncated or rolled back) since",
                )
            ]
        if found != self.head_hash:
            return [
                Problem(
                    self.seq,
                    "differs from the head hash noted earlier: the log was rewritten since",
                )
            ]
        return []


ANCHOR_FORMAT = "teacher-gateway audit anchor v1"
_ANCHOR_FIELDS = ("seq", "hash", "signed_at", "public_key_fingerprint", "signature")


class SignedAnchor:
    """A signed head `gateway audit anchor` wrote outside the gateway (a file kept
    elsewhere, an email): the bundle must still hold that event with that hash."""

    def __init__(self, name: str, document: Mapping[str, Any]) -> None:
        self.name, self.document = name, document
        self.seq: int = document["seq"]
        self.head_hash: str = document["hash"]

    @classmethod
    def load(cls, path: Path) -> SignedAnchor:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(document, dict) or document.get("format") != ANCHOR_FORMAT:
                raise ValueError
            values = [document[name] for name in _ANCHOR_FIELDS]
            if type(values[0]) is not int or not 1 <= values[0] <= _SAFE_INTEGER:
                raise ValueError
            if not all(isinstance(v, str) for v in values[1:]):
                raise ValueError
        except (OSError, ValueError, KeyError):
            raise BundleError(
                f"{path} is not an audit anchor: expected the JSON document `gateway audit "
                f'anchor` writes ("format": "{ANCHOR_FORMAT}", seq, hash, signed_at, '
                "public_key_fingerprint, signature)",
                code="schema_error",
                exit_code=EXIT_BAD_ANCHOR,
            ) from None
        return cls(str(path), document)

    def check(
        self, hash_at: Callable[[int], str | None], public_key: Ed25519PublicKey
    ) -> list[Problem]:
        fingerprint = self.document["public_key_fingerprint"]
        if fingerprint != _fingerprint(public_key):
            return [
                Problem(
                    None,
                    f"anchor {self.name}: signed by another key ({fingerprint}), not the one "
                    "this log is checked with: it is not an anchor of this log (forged, or "
                    "another gateway's)",
                )
            ]
        message = _checkpoint_message(self.seq, self.head_hash, self.document["signed_at"])
        try:
            public_key.verify(bytes.fromhex(self.document["signature"]), message)
        except (InvalidSignature, ValueError):
            return [
                Problem(
                    None,
                    f"anchor {self.name}: the signature is not valid (the anchor was forged "
                    "or altered)",
                )
            ]
        found = hash_at(self.seq)
        if found is None:
            return [
                Problem(
                    None,
                    f"anchor {self.name}: event {self.seq}, the head it anchors, is missing: "
                    "the log was cut back (truncated or rolled back) since it was anchored",
                )
            ]
        if found != self.head_hash:
            return [
                Problem(
                    self.seq,
                    f"differs from the head signed in anchor {self.name}: the log was "
                    "rewritten since it was anchored",
                )
            ]
        return []


def parse_anchor(text: str) -> Anchor | SignedAnchor:
    """--anchor: an anchor file, or EVENTS:HEAD_HASH."""
    path = Path(text)
    if path.is_file():
        return SignedAnchor.load(path)
    return Anchor.parse(text)


def verify_bundle(path: Path, *, anchors: Sequence[Anchor | SignedAnchor] = ()) -> Verification:
    """Verify the bundle in the folder ``path``; raise BundleError if it is none."""
    missing = [name for name in BUNDLE_FILES if not (path / name).is_file()]
    if missing:
        raise _not_a_bundle(f"{path} is not an audit bundle: missing {', '.join(missing)}")
    result = Verification()
    expected_prev, expected_seq = GENESIS_HASH, 1
    hashes: dict[int, str] = {}
    with (path / "events.jsonl").open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            try:
                record = json.loads(line)
                seq, digest, text = int(record["seq"]), str(record["hash"]), str(record["body"])
            except (ValueError, KeyError, TypeError):
                result.problems.append(Problem(None, f"line {number} is not an event record"))
                continue
            for reason in _check_event(seq, digest, text, expected_seq, expected_prev):
                result.problems.append(Problem(seq, reason))
            hashes[seq] = digest
            result.events_checked += 1
            expected_prev, expected_seq = digest, seq + 1
    result.head_hash = expected_prev
    try:
        public_key = serialization.load_pem_public_key((path / "public_key.pem").read_bytes())
    except ValueError:
        raise _not_a_bundle(f"{path / 'public_key.pem'} is not a public key") from None
    if not isinstance(public_key, Ed25519PublicKey):
        raise _not_a_bundle(f"{path / 'public_key.pem'} is not an Ed25519 public key")
    try:
        checkpoints = json.loads((path / "checkpoints.json").read_text(encoding="utf-8"))
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        _verify_checkpoints(result, checkpoints, hashes, public_key)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise _not_a_bundle(
            f"{path}: checkpoints.json or manifest.json is not in the bundle format"
        ) from None
    result.public_key_fingerprint = _fingerprint(public_key)
    if manifest.get("public_key_fingerprint") != result.public_key_fingerprint:
        result.problems.append(Problem(None, "the public key is not the one the manifest names"))
    if manifest.get("events") != result.events_checked or manifest.get("head_hash") != (
        result.head_hash
    ):
        result.problems.append(
            Problem(None, "the events do not match the manifest's count and head")
        )
    for anchor in anchors:
        result.problems += anchor.check(hashes.get, public_key)
    return result


# --- the command ----------------------------------------------------------------------


def _folder(text: str) -> Path:
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a folder")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="verify_bundle.py", description="Verify a gateway audit bundle offline."
    )
    parser.add_argument("bundle", type=_folder, help="the bundle's folder")
    parser.add_argument(
        "--previous", type=_folder, help="an earlier bundle: the log must still hold its events"
    )
    parser.add_argument(
        "--anchor",
        action="append",
        default=[],
        metavar="FILE|EVENTS:HEAD_HASH",
        help="an anchor file the gateway wrote, or a head noted earlier (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    try:
        anchors = [parse_anchor(text) for text in args.anchor]
        if args.previous is not None:
            anchors.append(Anchor.of_bundle(args.previous))
        result = verify_bundle(args.bundle, anchors=anchors)
    except BundleError as error:
        if args.json:
            body = {"error": {"code": error.code, "message": error.message, "details": []}}
            print(json.dumps(body, indent=2))
        print(f"verify_bundle: error: {error.message}", file=sys.stderr)
        return error.exit_code
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif result.ok:
        print(f"ok: {result.events_checked} event(s) verified; head {result.head_hash}")
        print(
            f"anchor: {result.events_checked}:{result.head_hash} (note it; check a later log "
            "with --anchor to detect one cut back or rewritten since)"
        )
        print(
            f"signed with the key whose fingerprint is {result.public_key_fingerprint}: "
            "compare it with the one the gateway's operator published"
        )
        for anchor in anchors:
            if isinstance(anchor, SignedAnchor) and "timestamp" in anchor.document:
                print(
                    f"anchor {anchor.name}: its RFC 3161 timestamp was not checked (this "
                    "verifier does not check them: `gateway audit verify --tsa-cert` does)"
                )
    else:
        for problem in result.problems:
            print(problem)
    if not result.ok:
        print(
            f"verify_bundle: error: audit log verification failed: {result.problems[0]}",
            file=sys.stderr,
        )
        return EXIT_BROKEN
    return 0


if __name__ == "__main__":
    sys.exit(main())
