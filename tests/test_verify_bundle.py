"""The reviewers' verifiers (gateway/web/static/verify_bundle.py and .mjs) report exactly
what `gateway audit verify --bundle` reports, over the same tampering corpus."""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from click.testing import CliRunner
from hypothesis import Phase, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from sqlalchemy import select

from gateway import audit, keys
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway
from gateway.storage.tables import AuditCheckpoint
from tests.test_audit_encoding import old_then_new_chain

STATIC = Path(audit.__file__).parent / "web" / "static"
VERIFY_PY = STATIC / "verify_bundle.py"
VERIFY_MJS = STATIC / "verify_bundle.mjs"
FIXTURE = Path(__file__).parent / "fixtures" / "audit_bundle"
ANCHOR_FIXTURE = Path(__file__).parent / "fixtures" / "audit_anchor.json"
NODE = shutil.which("node")


def _load_standalone() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("verify_bundle_standalone", VERIFY_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


standalone = _load_standalone()


def need_node() -> str:
    if NODE is None:
        if os.environ.get("CI") == "true":
            pytest.fail("node is required under CI=true (the JavaScript verifier)")
        pytest.skip("node is not installed")
    return NODE


# --- the tampering corpus (the cases of tests/test_audit_export.py, and more) ----------


def _lines(bundle: Path) -> list[str]:
    return (bundle / "events.jsonl").read_text().splitlines()


def _write_lines(bundle: Path, rows: list[str]) -> None:
    (bundle / "events.jsonl").write_text("\n".join(rows) + "\n")


def _edit(bundle: Path) -> None:
    rows = _lines(bundle)
    record = json.loads(rows[2])
    record["body"] = record["body"].replace('"role":"operator"', '"role":"reviewer"')
    rows[2] = json.dumps(record)
    _write_lines(bundle, rows)


def _rehash_from(bundle: Path, index: int, change: Callable[[dict[str, object]], str]) -> None:
    """Change event ``index`` and recompute every hash and link after it, as an attacker
    without the signing key would: only the signature (and the spelling) can tell."""
    rows = [json.loads(r) for r in _lines(bundle)]
    previous = audit.GENESIS_HASH if index == 0 else rows[index - 1]["hash"]
    for i, record in enumerate(rows[index:], start=index):
        body = json.loads(record["body"])
        body["prev_hash"] = previous
        if i == index:
            record["body"] = change(body)
        elif "encoding" in body:
            record["body"] = audit.canonical_json(json.loads(json.dumps(body), parse_int=float))
        else:
            record["body"] = audit.legacy_json(body)
        record["hash"] = audit._sha256(record["body"])
        previous = record["hash"]
    _write_lines(bundle, [audit.canonical_json(r) for r in rows])


def _forge_details(body: dict[str, object]) -> str:
    body["details"] = {"forged": True}
    return audit.canonical_json(body) if "encoding" in body else audit.legacy_json(body)


def _delete(bundle: Path) -> None:
    rows = _lines(bundle)
    _write_lines(bundle, rows[:3] + rows[4:])


def _insert(bundle: Path) -> None:
    rows = _lines(bundle)
    _write_lines(bundle, [*rows[:3], rows[2], *rows[3:]])


def _reorder(bundle: Path) -> None:
    rows = _lines(bundle)
    _write_lines(bundle, [*rows[:2], rows[3], rows[2], *rows[4:]])


def _truncate(bundle: Path) -> None:
    _write_lines(bundle, _lines(bundle)[:-2])


def _json_file(bundle: Path, name: str, change: Callable[[object], object]) -> None:
    path = bundle / name
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _forge_signature(bundle: Path) -> None:
    def change(checkpoints: object) -> object:
        assert isinstance(checkpoints, list)
        checkpoints[-1]["signature"] = "00" * 64
        return checkpoints

    _json_file(bundle, "checkpoints.json", change)


def _other_key(bundle: Path) -> None:
    keys.create_signing_key(bundle.parent / "other.key")
    other = keys.load_signing_key(bundle.parent / "other.key")
    (bundle / "public_key.pem").write_bytes(other.public_pem)


def _roll_back(bundle: Path) -> None:
    """Cut back to the first checkpoint, with the later checkpoints dropped and the
    manifest fixed: on its own it verifies; only an earlier bundle catches it."""
    checkpoints = json.loads((bundle / "checkpoints.json").read_text())
    keep = min(c["seq"] for c in checkpoints)
    rows = _lines(bundle)[:keep]
    _write_lines(bundle, rows)
    (bundle / "checkpoints.json").write_text(
        json.dumps([c for c in checkpoints if c["seq"] <= keep])
    )

    def fix(manifest: object) -> object:
        assert isinstance(manifest, dict)
        return {**manifest, "events": keep, "head_hash": json.loads(rows[-1])["hash"]}

    _json_file(bundle, "manifest.json", fix)


def _respell(bundle: Path) -> None:
    """An RFC 8785 event re-spelled in the old encoding, hashes and links fixed."""
    rows = [json.loads(r) for r in _lines(bundle)]
    index = next(i for i, r in enumerate(rows) if '"encoding":"rfc8785"' in r["body"])
    _rehash_from(bundle, index, lambda body: audit.legacy_json(body))


def _garbage_line(bundle: Path) -> None:
    rows = _lines(bundle)
    _write_lines(bundle, [*rows[:2], "not json", *rows[2:]])


def _body_not_a_record(bundle: Path) -> None:
    rows = [json.loads(r) for r in _lines(bundle)]
    rows[1]["body"] = "[1,2]"
    rows[1]["hash"] = audit._sha256("[1,2]")
    _write_lines(bundle, [json.dumps(r) for r in rows])


def _manifest_count(bundle: Path) -> None:
    _json_file(bundle, "manifest.json", lambda m: {**m, "events": 1} if isinstance(m, dict) else m)


def _no_key(bundle: Path) -> None:
    (bundle / "public_key.pem").unlink()


def _not_a_key(bundle: Path) -> None:
    (bundle / "public_key.pem").write_text(
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    )


def _broken_checkpoints(bundle: Path) -> None:
    (bundle / "checkpoints.json").write_text('[{"seq": 1}]')


#: name -> (tamper the bundle, extra arguments, the exit status every verifier gives)
CORPUS: dict[str, tuple[Callable[[Path], None], tuple[str, ...], int]] = {
    "intact": (lambda b: None, (), 0),
    "edited": (_edit, (), 8),
    "rewritten": (lambda b: _rehash_from(b, 3, _forge_details), (), 8),
    "deleted": (_delete, (), 8),
    "inserted": (_insert, (), 8),
    "reordered": (_reorder, (), 8),
    "truncated": (_truncate, (), 8),
    "forged-signature": (_forge_signature, (), 8),
    "other-key": (_other_key, (), 8),
    "rolled-back": (_roll_back, (), 0),
    "rolled-back-previous": (_roll_back, ("--previous", "{earlier}"), 8),
    "forged-anchor": (lambda b: None, ("--anchor", "3:" + "ab" * 32), 8),
    "bad-anchor": (lambda b: None, ("--anchor", "3:not-a-hash"), 7),
    "signed-anchor": (lambda b: None, ("--anchor", "{anchor}"), 0),
    "signed-anchors-old-and-new": (
        lambda b: None,
        ("--anchor", "{first}", "--anchor", "{anchor}"),
        0,
    ),
    "rolled-back-signed-anchor": (_roll_back, ("--anchor", "{anchor}"), 8),
    "rolled-back-older-signed-anchor": (_roll_back, ("--anchor", "{first}"), 0),
    "rewritten-signed-anchor": (
        lambda b: _rehash_from(b, 3, _forge_details),
        ("--anchor", "{anchor}"),
        8,
    ),
    "forged-signed-anchor": (lambda b: None, ("--anchor", "{forged}"), 8),
    "altered-signed-anchor": (lambda b: None, ("--anchor", "{altered}"), 8),
    "other-key-signed-anchor": (_other_key, ("--anchor", "{anchor}"), 8),
    "not-an-anchor": (lambda b: None, ("--anchor", "{junk}"), 7),
    "respelled": (_respell, (), 8),
    "garbage-line": (_garbage_line, (), 8),
    "body-not-a-record": (_body_not_a_record, (), 8),
    "manifest-count": (_manifest_count, (), 8),
    "missing-key": (_no_key, (), 3),
    "not-a-key": (_not_a_key, (), 3),
    "broken-checkpoints": (_broken_checkpoints, (), 3),
}


def build_corpus(gw: Gateway, folder: Path) -> dict[str, tuple[Path, tuple[str, ...], int]]:
    """A bundle of old-encoding and RFC 8785 events (two checkpoints), and one tampered
    copy per case; the untouched export is ``earlier`` for --previous."""
    old_then_new_chain(gw, old=3, new=3)
    with gw.sessions() as session, session.begin():
        audit.sign_checkpoint(session, gw.signing_key)
    with gw.sessions() as session, session.begin():
        for i in range(2):
            audit.append_event(session, kind="key-created", actor=audit.OPERATOR, details={"i": i})
    earlier = folder / "earlier"
    with gw.sessions() as session:
        audit.export_bundle(session, earlier, gw.signing_key)
        checkpoints = session.scalars(select(AuditCheckpoint).order_by(AuditCheckpoint.id)).all()
        first, last = (audit.anchor_document(c) for c in (checkpoints[0], checkpoints[-1]))
    files = _anchor_files(folder / "anchors", first, last)
    cases = {}
    for name, (tamper, args, status) in CORPUS.items():
        bundle = folder / name / "bundle"
        shutil.copytree(earlier, bundle)
        tamper(bundle)
        cases[name] = (bundle, tuple(a.format(earlier=earlier, **files) for a in args), status)
    return cases


def _anchor_files(folder: Path, first: dict[str, Any], last: dict[str, Any]) -> dict[str, Path]:
    """Anchor files as `gateway audit anchor` writes them, and forged ones."""
    folder.mkdir()
    keys.create_signing_key(folder / "other.key")
    other = keys.load_signing_key(folder / "other.key")
    message = audit.canonical_json({k: last[k] for k in ("seq", "hash", "signed_at")}).encode()
    documents = {
        "first": first,
        "anchor": last,
        "forged": {
            **last,
            "public_key_fingerprint": other.fingerprint,
            "signature": other.sign(message).hex(),
        },
        "altered": {**last, "hash": "ab" * 32},
    }
    files = {}
    for name, document in documents.items():
        files[name] = folder / f"{name}.json"
        files[name].write_text(audit.anchor_text(document))
    files["junk"] = folder / "junk.json"
    files["junk"].write_text('{"format": "teacher-gateway audit anchor v1", "seq": 1.0}')
    return files


def run_gateway(bundle: Path, args: tuple[str, ...]) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["audit", "verify", "--bundle", str(bundle), *args], env={})
    return result.exit_code, result.stdout, result.stderr.removeprefix("gateway: error: ")


def run_file(command: list[str], bundle: Path, args: tuple[str, ...]) -> tuple[int, str, str]:
    done = subprocess.run(
        [*command, str(bundle), *args], capture_output=True, text=True, timeout=60, check=False
    )
    return done.returncode, done.stdout, done.stderr.removeprefix("verify_bundle: error: ")


def run_python_file(argv: list[str]) -> tuple[int, str, str]:
    """The Python file's main, in this process (a process per case costs 0.5 s on a
    loaded machine; the fixture test runs it as a script)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = standalone.main(argv)  # type: ignore[attr-defined]
    return code, out.getvalue(), err.getvalue().removeprefix("verify_bundle: error: ")


#: Runs the JavaScript file's main over many argument lists in one node process.
NODE_BATCH = """
const m = await import(process.argv[1]);
const results = [];
for (const argv of JSON.parse(process.argv[2])) {
  let out = "", err = "";
  console.log = (text) => { out += text + "\\n"; };
  console.error = (text) => { err += text + "\\n"; };
  results.push([m.main(argv), out, err.replace(/^verify_bundle: error: /, "")]);
}
process.stdout.write(JSON.stringify(results));
"""


def run_javascript_file(argvs: list[list[str]]) -> list[tuple[int, str, str]]:
    command = [need_node(), "--input-type=module", "-e", NODE_BATCH]
    done = subprocess.run(
        [*command, VERIFY_MJS.as_uri(), json.dumps(argvs)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [(code, out, err) for code, out, err in json.loads(done.stdout)]


@pytest.fixture
def corpus(gateway: Gateway, tmp_path: Path) -> dict[str, tuple[Path, tuple[str, ...], int]]:
    return build_corpus(gateway, tmp_path)


def _expected(
    cases: dict[str, tuple[Path, tuple[str, ...], int]],
) -> list[tuple[str, list[str], tuple[int, str, str]]]:
    """Each case in text and JSON, with what `gateway audit verify --bundle` reports."""
    runs = []
    for name, (bundle, args, status) in cases.items():
        for mode in ((), ("--json",)):
            expected = run_gateway(bundle, (*args, *mode))
            assert expected[0] == status, (name, expected)
            runs.append((name, [str(bundle), *args, *mode], expected))
    return runs


def test_the_python_file_reports_what_the_gateway_reports(
    corpus: dict[str, tuple[Path, tuple[str, ...], int]],
) -> None:
    # The corpus really is broken where it says: the gateway names the expected damage.
    assert "rewritten" in run_gateway(corpus["rewritten"][0], ())[1]
    assert (
        "event 4: its body is not written in the encoding it records (rfc8785)"
        in (run_gateway(corpus["respelled"][0], ())[1])
    )
    assert "cut back" in run_gateway(*corpus["rolled-back-previous"][:2])[1]
    assert (
        "the head it anchors, is missing"
        in run_gateway(*corpus["rolled-back-signed-anchor"][:2])[1]
    )
    assert (
        "differs from the head signed in anchor"
        in (run_gateway(*corpus["rewritten-signed-anchor"][:2])[1])
    )
    assert "signed by another key" in run_gateway(*corpus["forged-signed-anchor"][:2])[1]
    assert (
        "signature is not valid (the anchor" in run_gateway(*corpus["altered-signed-anchor"][:2])[1]
    )
    for name, argv, expected in _expected(corpus):
        assert run_python_file(argv) == expected, name


def test_the_javascript_file_reports_what_the_gateway_reports(
    corpus: dict[str, tuple[Path, tuple[str, ...], int]],
) -> None:
    runs = _expected(corpus)
    found = run_javascript_file([argv for _, argv, _ in runs])
    for (name, argv, expected), got in zip(runs, found, strict=True):
        assert got == expected, (name, argv)


# --- test vectors -----------------------------------------------------------------------


def test_the_fixture_bundle_verifies_everywhere() -> None:
    """tests/fixtures/audit_bundle (made by tests/fixtures/make_audit_bundle.py) holds
    old-encoding and RFC 8785 events; docs/audit-bundle.md quotes it as test vectors."""
    expected = run_gateway(FIXTURE, ("--json",))
    assert expected[0] == 0, expected
    assert run_file([sys.executable, str(VERIFY_PY)], FIXTURE, ("--json",)) == expected
    if NODE is not None or os.environ.get("CI") == "true":
        assert run_file([need_node(), str(VERIFY_MJS)], FIXTURE, ("--json",)) == expected


def test_the_fixture_anchor_verifies_everywhere(tmp_path: Path) -> None:
    """tests/fixtures/audit_anchor.json anchors the fixture bundle's last checkpoint, as
    `gateway audit anchor` writes it; docs/audit-bundle.md quotes it. Changed, it fails."""
    args = ("--anchor", str(ANCHOR_FIXTURE), "--json")
    expected = run_gateway(FIXTURE, args)
    assert expected[0] == 0, expected
    assert run_python_file([str(FIXTURE), *args]) == expected
    altered = tmp_path / "altered.json"
    altered.write_text(ANCHOR_FIXTURE.read_text().replace('"seq":5', '"seq":4'))
    broken = run_gateway(FIXTURE, ("--anchor", str(altered)))
    assert broken[0] == 8 and "the signature is not valid" in broken[1]
    assert run_python_file([str(FIXTURE), "--anchor", str(altered)]) == broken
    if NODE is not None or os.environ.get("CI") == "true":
        runs = run_javascript_file(
            [[str(FIXTURE), *args], [str(FIXTURE), "--anchor", str(altered)]]
        )
        assert runs == [expected, broken]
    page = (Path(__file__).parent.parent / "docs" / "audit-bundle.md").read_text()
    assert f"    {ANCHOR_FIXTURE.read_text()}" in page


#: RFC 8785 appendix B's examples and section 3.2.2's sample object, as the RFC prints them.
RFC_VECTORS = [
    (
        '{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],'
        '"string":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        '"literals":[null,true,false]}',
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}',
    ),
    (
        "[1e21, 1e20, 0.000001, 1e-7, -0.0, 9007199254740993]",
        "[1e+21,100000000000000000000,0.000001,1e-7,0,9007199254740992]",
    ),
    (
        '{"\\u20ac":1,"\\r":2,"\\ud83d\\ude00":3,"\\ufb33":4,"1":5,"\\u00f6":6}',
        '{"\\r":2,"1":5,"\u00f6":6,"\u20ac":1,"\U0001f600":3,"\ufb33":4}',
    ),
]


@pytest.mark.parametrize(("text", "canonical"), RFC_VECTORS)
def test_both_verifiers_encode_the_rfc_examples(text: str, canonical: str) -> None:
    value = json.loads(text, parse_int=float)
    assert rfc8785.dumps(value).decode() == canonical  # the library agrees with the RFC
    assert standalone.jcs(value) == canonical  # type: ignore[attr-defined]
    if NODE is None and os.environ.get("CI") != "true":
        return
    script = (
        f"import('{VERIFY_MJS.as_uri()}').then(m => process.stdout.write("
        "m.canonicalize(process.argv[1])))"
    )
    done = subprocess.run(
        [need_node(), "-e", script, text], capture_output=True, text=True, timeout=30, check=True
    )
    assert done.stdout == canonical


#: Numbers and names where the encodings part ways: floats Python and ECMAScript write
#: differently (exponent digits, fixed-notation limits, 1.0), and names that sort apart
#: by code point and by UTF-16 unit (U+E000 to U+FFFF against astral characters).
AWKWARD_FLOATS = st.sampled_from(
    [1e-05, 2.5e-07, 1e-7, 1e-6, 0.0001, 1e16, 1e15, 1e21, 1e20, 1.0, -0.0, 0.1, 5e-324]
)
AWKWARD_NAMES = st.sampled_from(["\uff5e", "\U0001f600", "\ue000", "\U00010000", "é", "a", "€"])

#: Each example below runs node once: a failure is reported as found, not shrunk.
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | AWKWARD_FLOATS
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text() | AWKWARD_NAMES, inner, max_size=4)
    ),
    max_leaves=12,
)


@given(JSON_VALUES)
def test_the_python_file_encodes_as_the_library_does(value: object) -> None:
    try:
        expected = rfc8785.dumps(value).decode()  # type: ignore[arg-type]
    except rfc8785.CanonicalizationError:  # lone surrogates: neither may encode them
        with pytest.raises(ValueError):
            standalone.jcs(value)  # type: ignore[attr-defined]
        return
    assert standalone.jcs(value) == expected  # type: ignore[attr-defined]


def test_the_python_file_needs_only_the_standard_library_and_cryptography() -> None:
    tree = ast.parse(VERIFY_PY.read_text())
    imported = {
        (node.module or "").split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
    } | {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported - set(sys.stdlib_module_names) == {"cryptography"}
    source = VERIFY_MJS.read_text()
    assert {
        line.split(" from ")[1] for line in source.splitlines() if line.startswith("import ")
    } == {
        '"node:crypto";',
        '"node:fs";',
        '"node:path";',
        '"node:url";',
    }


def test_the_audit_page_offers_both_verifiers_for_download(
    gateway: Gateway, settings: Settings
) -> None:
    from fastapi.testclient import TestClient

    from gateway.app import create_app
    from tests.conftest import issue_token, web_sign_in

    token = issue_token(settings, role="reviewer", party=None)
    with TestClient(create_app(settings), follow_redirects=False) as client:
        web_sign_in(client, token)
        page = client.get("/web/audit")
        assert page.status_code == 200, page.text[:300]
        for source in (VERIFY_PY, VERIFY_MJS):
            link = f'href="/web/static/{source.name}" download'
            assert link in page.text
            client.cookies.clear()  # anyone may download them, signed in or not
            download = client.get(f"/web/static/{source.name}")
            assert download.status_code == 200
            assert download.content == source.read_bytes()


def test_the_documented_vectors_are_the_fixture_bundle() -> None:
    page = (Path(__file__).parent.parent / "docs" / "audit-bundle.md").read_text()
    lines = (FIXTURE / "events.jsonl").read_text().splitlines()
    for index in (0, 2):  # events 1 (legacy) and 3 (RFC 8785)
        record = json.loads(lines[index])
        assert f"    {record['body']}\n    {record['hash']}\n" in page
        assert hashlib.sha256(record["body"].encode()).hexdigest() == record["hash"]
    checkpoint = json.loads((FIXTURE / "checkpoints.json").read_text())[-1]
    signed = json.dumps(
        {k: checkpoint[k] for k in ("hash", "seq", "signed_at")}, separators=(",", ":")
    )
    assert f"    {signed}\n" in page
    assert checkpoint["signature"] in page and checkpoint["public_key_fingerprint"] in page
    pem = (FIXTURE / "public_key.pem").read_text().splitlines()[1]
    assert f"    {pem}\n" in page
    # A line holds a string, a hex string and an integer: both encodings spell it alike,
    # so bundles exported before and after the switch share their lines byte for byte.
    for line in lines:
        assert audit.legacy_json(json.loads(line)) == line == audit.canonical_json(json.loads(line))


@given(st.lists(JSON_VALUES, min_size=20, max_size=40))
@hyp_settings(max_examples=5, deadline=None, phases=NO_SHRINK)
def test_the_javascript_file_encodes_as_the_library_does(values: list[object]) -> None:
    cases = []
    for value in values:
        try:
            cases.append((json.dumps(value), rfc8785.dumps(value).decode()))  # type: ignore[arg-type]
        except rfc8785.CanonicalizationError:
            continue  # lone surrogates: JSON text cannot carry them to node intact
    script = (
        "const m = await import(process.argv[1]);"
        "const texts = JSON.parse(process.argv[2]);"
        "process.stdout.write(JSON.stringify(texts.map((t) => m.canonicalize(t))));"
    )
    done = subprocess.run(
        [
            need_node(),
            "--input-type=module",
            "-e",
            script,
            VERIFY_MJS.as_uri(),
            json.dumps([text for text, _ in cases]),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout) == [canonical for _, canonical in cases]


@given(
    st.dictionaries(st.text(max_size=3), JSON_VALUES, max_size=4),
    st.booleans(),
    st.sampled_from(["rfc8785", "legacy", "spaced"]),
)
def test_the_python_file_judges_spellings_as_the_gateway_does(
    details: dict[str, object], names_it: bool, spelling: str
) -> None:
    body: dict[str, object] = {"seq": 1, "details": details}
    if names_it:
        body["encoding"] = "rfc8785"
    try:
        text = {
            "rfc8785": audit.canonical_json,
            "legacy": audit.legacy_json,
            "spaced": lambda b: json.dumps(b, sort_keys=True),
        }[spelling](body)
    except ValueError:
        return
    parsed = json.loads(text)
    expected = audit.encoding_problem(text, parsed)
    assert standalone.encoding_problem(text, parsed) == expected  # type: ignore[attr-defined]


@given(
    st.lists(
        st.tuples(
            st.dictionaries(AWKWARD_NAMES | st.text(max_size=3), JSON_VALUES, max_size=4),
            st.booleans(),
            st.sampled_from(["rfc8785", "legacy", "spaced"]),
        ),
        min_size=20,
        max_size=40,
    )
)
@hyp_settings(max_examples=5, deadline=None, phases=NO_SHRINK)
def test_the_javascript_file_judges_spellings_as_the_gateway_does(
    bodies: list[tuple[dict[str, object], bool, str]],
) -> None:
    texts, expected = [], []
    for details, names_it, spelling in bodies:
        body: dict[str, object] = {"seq": 1, "details": details}
        if names_it:
            body["encoding"] = "rfc8785"
        try:
            text = {
                "rfc8785": audit.canonical_json,
                "legacy": audit.legacy_json,
                "spaced": lambda b: json.dumps(b, sort_keys=True, ensure_ascii=False),
            }[spelling](body)
            text.encode("utf-8")  # lone surrogates cannot reach node intact
        except ValueError:
            continue
        texts.append(text)
        expected.append(audit.encoding_problem(text, json.loads(text)))
    script = (
        "const m = await import(process.argv[1]);"
        "const texts = JSON.parse(process.argv[2]);"
        "process.stdout.write(JSON.stringify(texts.map((t) => m.spellingProblem(t))));"
    )
    done = subprocess.run(
        [need_node(), "--input-type=module", "-e", script, VERIFY_MJS.as_uri(), json.dumps(texts)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout) == expected
