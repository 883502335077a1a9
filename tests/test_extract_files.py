"""An extract's file and its sealed rows (gateway/extracts/files.py, the sealing in
gateway/extracts/approval.py): properties over generated frames, no database."""

from __future__ import annotations

import io
import json
import zipfile

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cryptography.exceptions import InvalidTag
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import SchemaError
from gateway.extracts import files
from gateway.extracts.approval import seal, unseal
from gateway.keys import MasterKey

KEY = MasterKey(b"k" * 32)

names = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
cells = st.one_of(st.text(st.characters(blacklist_categories=["Cs", "Cc"]), max_size=12), st.none())


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    """Frames shaped like an extract: a teacher ID in every row (a CSV row of empty
    fields only would read back as a blank line), then any columns, in any order."""
    columns = draw(st.lists(names.filter(lambda n: n != "teacher_id"), max_size=4, unique=True))
    rows = draw(st.integers(min_value=1, max_value=20))
    ids = draw(st.lists(st.text("abcdefghijklmnop", min_size=24, max_size=24), min_size=rows,
                        max_size=rows))  # fmt: skip
    data = {c: draw(st.lists(cells, min_size=rows, max_size=rows)) for c in columns}
    data["teacher_id"] = ids
    order = draw(st.permutations([*columns, "teacher_id"]))
    return pd.DataFrame(data, dtype=object)[order]


def _parquet(frame: pd.DataFrame) -> bytes:
    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), sink)
    return sink.getvalue()


def _metadata(request_id: str) -> dict[str, object]:
    return {"format": files.METADATA_FORMAT, "request_id": request_id, "extract": "x",
            "recipient": "bayview-state", "destroy_by": "2029-08-31"}  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(frame=frames(), file_format=st.sampled_from(files.FORMATS))
def test_a_written_extract_reads_back_with_its_record(
    frame: pd.DataFrame, file_format: str
) -> None:
    """Whatever the rows, the file holds exactly them, in order, and its record."""
    record = _metadata("0123456789abcdef")
    written = files.write_extract(_parquet(frame), record, file_format)
    assert written.file_name.startswith("x-0123456789abcdef.")
    read, found = files.read_extract(written.data, written.file_name)
    assert found == record
    assert list(read.columns) == list(frame.columns)
    if file_format == "parquet":
        assert read.astype(object).where(read.notna(), None).values.tolist() == (
            frame.where(frame.notna(), None).values.tolist()
        )
    else:
        # CSV has one spelling for a missing value and an empty text: the empty field.
        expected = frame.fillna("").astype(str).values.tolist()
        assert read.fillna("").astype(str).values.tolist() == expected
        with zipfile.ZipFile(io.BytesIO(written.data)) as bundle:
            assert sorted(bundle.namelist()) == [
                "x-0123456789abcdef.csv",
                "x-0123456789abcdef.metadata.json",
            ]


@settings(max_examples=30, deadline=None)
@given(payload=st.binary(max_size=200), other=st.text("0123456789abcdef", min_size=16, max_size=16))
def test_sealed_rows_open_only_for_their_request_and_part(payload: bytes, other: str) -> None:
    """A request's sealed rows open with its own id, salt and part, and with nothing
    else: another request's id, the sample's part, or another salt fail."""
    request_id = "0123456789abcdef"
    salt, sealed = seal(KEY, request_id, payload)
    assert unseal(KEY, request_id, salt, sealed) == payload
    # The plaintext does not show through (a payload of a few bytes may occur in any
    # random-looking ciphertext by chance: 8 bytes or more, about len * 2**-64).
    assert len(payload) < 8 or payload not in sealed
    if other != request_id:
        with pytest.raises(InvalidTag):
            unseal(KEY, other, salt, sealed)
    with pytest.raises(InvalidTag):
        unseal(KEY, request_id, salt, sealed, part="sample")
    with pytest.raises(InvalidTag):
        unseal(KEY, request_id, bytes(32), sealed)


def test_a_file_that_is_no_extract_is_refused_by_name() -> None:
    with pytest.raises(SchemaError, match=r"found\.bin"):
        files.read_extract(b"\xff\xfe\x00garbage\x00", "found.bin")
    bundle = io.BytesIO()
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr("a.txt", "no csv here")
    with pytest.raises(SchemaError, match="one CSV"):
        files.read_extract(bundle.getvalue(), "found.zip")
    # A Parquet file cut short, and a CSV with a broken row: named, with where it broke.
    whole = files.write_extract(
        _parquet(pd.DataFrame({"teacher_id": ["abcdefghijklmnopabcdefgh"]})),
        _metadata("fedcba9876543210"),
        "parquet",
    ).data
    with pytest.raises(SchemaError, match=r"cut\.parquet: starts as a Parquet file"):
        files.read_extract(whole[: len(whole) // 2], "cut.parquet")
    with pytest.raises(SchemaError, match=r"found\.csv: .*line 3"):
        files.read_extract(b"a,b\n1,2\n3,4,5\n", "found.csv")


def test_a_record_that_is_not_json_is_reported_as_none() -> None:
    """The record is only reported beside the fingerprint: a forged or damaged one is
    no record, not a crash."""
    import pyarrow as pa

    table = pa.table({"teacher_id": ["abcdefghijklmnopabcdefgh"]})
    sink = io.BytesIO()
    pq.write_table(table.replace_schema_metadata({files.METADATA_KEY: b"{not json"}), sink)
    frame, record = files.read_extract(sink.getvalue(), "found.parquet")
    assert record is None and list(frame["teacher_id"]) == ["abcdefghijklmnopabcdefgh"]


def test_the_parquet_record_is_in_the_key_value_metadata() -> None:
    frame = pd.DataFrame({"teacher_id": ["abcdefghijklmnopabcdefgh"], "band": ["3 to 5 years"]})
    record = _metadata("fedcba9876543210")
    written = files.write_extract(_parquet(frame), record, "parquet")
    metadata = pq.read_schema(io.BytesIO(written.data)).metadata
    assert json.loads(metadata[files.METADATA_KEY]) == record
