"""The one pass over a CSV: hash, encoding check and line numbers agree with reading the
file whole, however the parser's reads fall."""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import audit
from gateway.context import Gateway
from gateway.errors import SchemaError
from gateway.ingest import UploadRefused, readers, upload_extract
from tests.conftest import AGREEMENT, DISTRICT, evaluations_csv


def _blank_lines_of(data: bytes) -> list[int]:
    """The blank lines of a whole file, as a person counts them (the header's excluded)."""
    blanks, line, start = [], 1, 0
    for end in re.finditer(rb"\r\n|\n|\r", data):
        if end.start() == start and line > 1:
            blanks.append(line)
        line, start = line + 1, end.end()
    return blanks


pieces = st.lists(st.sampled_from([b"a", b"1,2", b"\n", b"\r", b"\r\n", b"\xc3\xa9", b"x,y"]))


@settings(max_examples=200, deadline=None)
@given(pieces, st.lists(st.integers(1, 9), min_size=1, max_size=5))
def test_read_through_matches_the_whole_file(parts: list[bytes], sizes: list[int]) -> None:
    data = b"".join(parts)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "f.csv"
        path.write_bytes(data)
        source = readers.ReadThrough(path, display_name="f.csv")
        read = b""
        for turn in range(len(data) + 1):  # reads of uneven sizes, as a parser's fall
            block = source.read(sizes[turn % len(sizes)])
            read += block
            if not block:
                break
        assert read == data
        assert source.blank_lines().tolist() == _blank_lines_of(data)
        assert source.finish() == hashlib.sha256(data).hexdigest()


def test_a_partly_read_file_is_still_hashed_whole(tmp_path: Path) -> None:
    path = tmp_path / "f.csv"
    path.write_bytes(b"id,value\n" + b"".join(b"%d,x\n" % i for i in range(50_000)))
    source = readers.ReadThrough(path, display_name="f.csv")
    source.read(1000)
    assert source.finish() == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(("at", "cut"), [(2, False), (40_000, False), (60_001, True)])
def test_an_encoding_problem_is_named_by_its_line(tmp_path: Path, at: int, cut: bool) -> None:
    """Found while the parser reads (in any block, or a character cut at the very end),
    with the line it is on, never the bytes."""
    lines = [b"id,value"] + [b"%d,x" % i for i in range(2, 60_002)]
    if cut:
        body = b"\n".join(lines) + b"\xc3"
    else:
        lines[at - 1] = b"%d,\xff\xfe" % at
        body = b"\n".join(lines) + b"\n"
    path = tmp_path / "f.csv"
    path.write_bytes(body)
    with pytest.raises(SchemaError, match=rf"f.csv: line {at}: the file (is not UTF-8|ends in)"):
        list(
            readers.csv_chunks(path, header=["id", "value"], chunk_rows=5_000, display_name="f.csv")
        )


def test_an_upload_hashes_the_file_it_parsed_once(gateway: Gateway, tmp_path: Path) -> None:
    path, _ = evaluations_csv(tmp_path / "e.csv")
    receipt = upload_extract(
        gateway, agreement_id=AGREEMENT, party=DISTRICT, dataset="evaluations", path=path,
        actor=audit.Actor(role="operator"),
    )  # fmt: skip
    assert receipt["file"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_refused_upload_names_the_line_and_hashes_the_whole_file(
    gateway: Gateway, tmp_path: Path
) -> None:
    path, _ = evaluations_csv(tmp_path / "e.csv")
    lines = path.read_bytes().split(b"\n")
    bad = len(lines) - 3  # a line near the end: found after earlier rows were parsed
    lines[bad - 1] = lines[bad - 1].replace(b",", b",\xe9", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(UploadRefused) as refused:
        upload_extract(
            gateway, agreement_id=AGREEMENT, party=DISTRICT, dataset="evaluations", path=path,
            actor=audit.Actor(role="operator"),
        )  # fmt: skip
    assert f"line {bad}: the file is not UTF-8" in refused.value.message
    receipt = refused.value.receipt
    assert receipt["file"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert receipt["rows"]["accepted"] == 0
