"""Fingerprints of extracts (gateway/extracts/fingerprint.py): a found copy is named,
after its columns are reordered, its rows shuffled and half of them dropped, and a
different recipient's (or request's) extract is not taken for it."""

from __future__ import annotations

import io
import secrets

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.extracts.fingerprint import (
    RECORD_COLUMN,
    FingerprintRecord,
    canonical_value,
    fingerprint_plan,
    identify,
)
from gateway.extracts.pseudonyms import RecipientPseudonymizer
from gateway.keys import MasterKey

MASTER = MasterKey(secrets.token_bytes(32))
AGREEMENT = "student-teaching-bayview-eastport"


def marked(
    request_id: str, recipient: str, *, seed: int = 1
) -> tuple[pd.DataFrame, FingerprintRecord]:
    """A small generalised extract of 40 teachers, marked for ``request_id``, with the
    recipient's own teacher IDs."""
    rng = np.random.default_rng(seed)
    ids = RecipientPseudonymizer(recipient.encode().ljust(32, b"-"), key_version=1).pseudonyms(
        f"{'abcdefghijklmnop'[i % 16] * 63}{'abcdefghijklmnop'[i // 16]}" for i in range(40)
    )
    frame = pd.DataFrame(
        {
            "teacher_id": [ids[key] for key in ids for _ in range(2)],
            "school_year": [str(year) for year in rng.choice([2023, 2024, 2025], 80)],
            "years_experience": rng.choice(["0 to 2 years", "3 to 5 years", "6 to 10 years"], 80),
            "summative_rating": rng.choice([2, 3, 4], 80),
            "growth_score": rng.choice(["under 35", "35 to under 66", "66 or more"], 80),
        }
    )
    plan = fingerprint_plan(MASTER, request_id, agreement_id=AGREEMENT)
    ids_column = plan.record_ids(frame)
    frame = plan.shuffled(frame.assign(**{RECORD_COLUMN: ids_column}), ids_column)
    record = FingerprintRecord(
        request_id=request_id,
        agreement_id=AGREEMENT,
        recipient=recipient,
        extract="completer_outcomes",
        columns=tuple(frame.columns),
        rows=len(frame),
        node=(1, 0, 2),
        tied_nodes=1,
        teachers=tuple(sorted({plan.teacher_digest(t) for t in frame["teacher_id"]})),
    )
    return frame, record


def leaked(frame: pd.DataFrame, *, share: float, seed: int, fmt: str = "csv") -> pd.DataFrame:
    """A copy as it might be found: half the rows, shuffled, columns reversed, written to
    a file and read back."""
    copy = frame.sample(frac=share, random_state=seed)[list(reversed(frame.columns))]
    if fmt == "csv":
        return pd.read_csv(io.StringIO(copy.to_csv(index=False)))
    buffer = io.BytesIO()
    copy.to_parquet(buffer, index=False)
    return pd.read_parquet(io.BytesIO(buffer.getvalue()))


@pytest.fixture(scope="module")
def extracts() -> dict[str, tuple[pd.DataFrame, FingerprintRecord]]:
    return {
        "a": marked("req-a", "bayview-state", seed=1),
        # The same recipient asking again (its teacher IDs are the same)...
        "b": marked("req-b", "bayview-state", seed=1),
        # ...and another recipient with other teacher IDs.
        "c": marked("req-c", "eastport-ps", seed=2),
    }


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_half_shuffled_reordered_copy_is_named(
    extracts: dict[str, tuple[pd.DataFrame, FingerprintRecord]], fmt: str
) -> None:
    records = [record for _, record in extracts.values()]
    frame, record = extracts["a"]
    found = identify(leaked(frame, share=0.5, seed=4, fmt=fmt), records, master_key=MASTER)
    assert found.record == record and found.request_id == "req-a"
    assert found.score == 1.0 and found.rows_checked == 40
    # Neither the same recipient's other request nor another recipient's extract matches.
    assert found.scores["req-b"] == 0.0 and found.scores["req-c"] == 0.0


def test_each_extract_is_named_as_itself_and_records_round_trip(
    extracts: dict[str, tuple[pd.DataFrame, FingerprintRecord]],
) -> None:
    as_stored = {record.request_id: record.to_dict() for _, record in extracts.values()}
    for frame, record in extracts.values():
        found = identify(leaked(frame, share=0.5, seed=9), as_stored, master_key=MASTER)
        assert found.record == record


def test_without_its_record_ids_a_copy_still_names_its_recipient(
    extracts: dict[str, tuple[pd.DataFrame, FingerprintRecord]],
) -> None:
    records = [record for _, record in extracts.values()]
    frame, _ = extracts["c"]
    stripped = leaked(frame, share=0.5, seed=5).drop(columns=[RECORD_COLUMN])
    found = identify(stripped, records, master_key=MASTER)
    assert found.record is not None and found.record.recipient == "eastport-ps"
    assert found.basis == "teacher_id" and found.score == 1.0
    assert found.scores["req-a"] == found.scores["req-b"] == 0.0
    # Every cell of the rating edited: no record ID verifies, the teachers still tell.
    edited = leaked(frame, share=0.5, seed=5).assign(summative_rating=9)
    again = identify(edited, records, master_key=MASTER)
    assert again.record is not None and again.basis == "teacher_id"
    assert again.record.recipient == "eastport-ps"


def test_renamed_columns_change_nothing(
    extracts: dict[str, tuple[pd.DataFrame, FingerprintRecord]],
) -> None:
    records = [record for _, record in extracts.values()]
    frame, record = extracts["b"]
    renamed = leaked(frame, share=0.5, seed=6)
    renamed.columns = [f"column {i}" for i in range(len(renamed.columns))]
    found = identify(renamed, records, master_key=MASTER)
    assert found.record == record and found.score == 1.0 and found.basis == "record_id"


def test_a_copy_of_nothing_recorded_matches_nothing(
    extracts: dict[str, tuple[pd.DataFrame, FingerprintRecord]],
) -> None:
    stranger, _ = marked("req-x", "someone-else", seed=3)
    records = [record for _, record in extracts.values()]
    found = identify(leaked(stranger, share=1.0, seed=1), records, master_key=MASTER)
    assert found.record is None and found.score == 0.0
    # Another master key verifies nothing either.
    frame, _ = extracts["a"]
    other = identify(frame, records, master_key=MasterKey(secrets.token_bytes(32)))
    assert other.record is None


def test_edited_rows_stop_counting(
    extracts: dict[str, tuple[pd.DataFrame, FingerprintRecord]],
) -> None:
    frame, record = extracts["a"]
    copy = frame.copy()
    copy.loc[: len(copy) // 4 - 1, "summative_rating"] = 1  # a quarter of the rows altered
    found = identify(copy, [record], master_key=MASTER)
    assert found.record == record and found.score == pytest.approx(0.75)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.integers(-(10**12), 10**12),
        st.sampled_from(["2023", "2023\u20132025", "0 to 2 years", "3"]),
    )
)
def test_a_cell_reads_back_the_same_from_csv(value: int | str) -> None:
    back = pd.read_csv(io.StringIO(pd.DataFrame({"v": [value]}).to_csv(index=False)))["v"][0]
    assert canonical_value(back) == canonical_value(value)
