"""Building an extract from a stocked gateway (gateway/extracts/build.py): the Bayview-
Eastport completer_outcomes extract over generated partnership data, on SQLite and, when
configured, PostgreSQL."""

from __future__ import annotations

import io
import json
import re
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from pycanon import anonymity
from sqlalchemy import select

from gateway.context import Gateway
from gateway.errors import PolicyViolation
from gateway.extracts import build_extract, identify
from gateway.extracts.anonymise import ladder
from gateway.extracts.pseudonyms import TEACHER_ID_PATTERN
from gateway.release.rows import NotUploaded
from gateway.storage.datasets import Educator
from tests.conftest import AGREEMENT, DISTRICT, EPP, upload_generated

EXTRACT = "completer_outcomes"


def test_refusals_before_anything_is_read(gateway: Gateway) -> None:
    agreement = gateway.agreement(AGREEMENT)
    spec = agreement.extract(EXTRACT)

    def build(recipient: str = EPP, **changes: object) -> None:
        with gateway.reads() as session:
            build_extract(
                session,
                agreement=agreement.model_copy(update=changes),
                spec=spec,
                recipient=recipient,
                request_id="r-refused",
                master_key=gateway.master_key,
            )

    with pytest.raises(NotUploaded, match="dataset 'completers'"):
        build()
    with pytest.raises(PolicyViolation, match="'eastport-ps' is not a recipient"):
        build(DISTRICT)
    with pytest.raises(PolicyViolation, match="not in force today"):
        build(ends=date(2026, 1, 1), effective=date(2025, 1, 1))


def test_an_extract_of_generated_partnership_data(gateway: Gateway, tmp_path: Path) -> None:
    upload_generated(gateway, AGREEMENT, tmp_path / "generated", seed=17, scale=0.3)
    agreement = gateway.agreement(AGREEMENT)
    spec = agreement.extract(EXTRACT)
    # Eastport is not a recipient of this extract; a copy of the declaration naming it
    # stands in for a second recipient, whose file must not link with Bayview's.
    as_district = spec.model_copy(update={"recipients": [EPP, DISTRICT]})

    def build(request_id: str, recipient: str = EPP):  # type: ignore[no-untyped-def]
        with gateway.reads() as session:
            return build_extract(
                session,
                agreement=agreement,
                spec=as_district if recipient == DISTRICT else spec,
                recipient=recipient,
                request_id=request_id,
                master_key=gateway.master_key,
            )

    first, again, district = build("r-1"), build("r-2"), build("r-3", DISTRICT)
    frame = first.frame
    fields = ["program_code", "cohort_year", "school_year", "grade_band", "years_experience"]
    fields += ["subject", "summative_rating", "growth_score"]
    assert first.columns == ("teacher_id", "record_id", *fields) == tuple(frame.columns)
    assert 0 < len(frame) == first.rows_released
    assert first.suppressed_share <= spec.max_suppressed
    assert all(TEACHER_ID_PATTERN.fullmatch(value) for value in frame["teacher_id"])

    # pycanon, on the file as handed out: k in distinct teachers, l in both sensitive fields.
    qis = list(spec.quasi_identifiers)
    people = frame[["teacher_id", *qis]].astype(str).drop_duplicates().reset_index(drop=True)
    assert anonymity.k_anonymity(people, qis) >= spec.k
    values = frame.astype(str).reset_index(drop=True)
    assert anonymity.l_diversity(values, qis, ["summative_rating", "growth_score"]) >= spec.l
    # ...and over trajectories, as the build measured them with pycanon.
    assert first.k_achieved is not None and first.k_achieved >= spec.k
    assert first.l_achieved is not None and spec.l is not None and first.l_achieved >= spec.l
    assert first.risk_after.unique_share == 0 and first.risk_after.max_risk <= 1 / spec.k
    assert first.risk_before.prosecutor_rate > first.risk_after.prosecutor_rate
    # The generalisation reported is the one the file shows.
    for column in first.generalisation:
        hierarchy = agreement.hierarchy(
            "evaluations"
            if column.column in ("school_year", "grade_band", "years_experience")
            else "completers"
            if column.column in ("program_code", "cohort_year")
            else "value_added",
            column.column,
        )
        names = ladder(hierarchy, last_year=agreement.ends.year).names
        assert column.level_name == names[column.level] and column.levels == len(names)
        if column.level == column.levels - 1:
            assert set(frame[column.column]) == {names[-1]}
    assert set(frame["growth_score"]) <= set(first.bands["growth_score"])

    # No raw ID (seven digits in the generated files), no internal pseudonym, anywhere.
    with gateway.reads() as session:
        internal = set(
            session.scalars(select(Educator.pseudonym).where(Educator.agreement_id == AGREEMENT))
        )
    assert internal
    summary = json.dumps(first.summary())
    for text in (first.to_csv_bytes().decode(), summary, json.dumps(first.fingerprint.to_dict())):
        # (a run of five or more digits that is not the fraction of a share)
        assert not re.search(r"(?<![\d.])\d{5,}", text)
        assert not any(pseudonym in text for pseudonym in internal)
    # The approver's view names no teacher or record either.
    assert not any(teacher in summary for teacher in frame["teacher_id"])
    assert not any(record in summary for record in frame["record_id"])
    assert 0 < len(first.sample) <= 5 and "teacher_id" not in first.sample[0]

    # Stable for the recipient across requests; unlinkable with another recipient's file.
    assert set(again.frame["teacher_id"]) == set(frame["teacher_id"])
    assert set(district.frame["teacher_id"]).isdisjoint(frame["teacher_id"])
    assert set(again.frame["record_id"]).isdisjoint(frame["record_id"])

    # A leaked half of the first file, columns reversed, rows shuffled, through a CSV.
    copy = frame.sample(frac=0.5, random_state=2)[list(reversed(frame.columns))]
    found_copy = pd.read_csv(io.StringIO(copy.to_csv(index=False)))
    records = {x.request_id: x.fingerprint.to_dict() for x in (first, again, district)}
    found = identify(found_copy, records, master_key=gateway.master_key)
    assert found.request_id == "r-1" and found.score == 1.0
    assert found.scores["r-2"] == 0.0 and found.scores["r-3"] == 0.0
    assert identify(district.frame, records, master_key=gateway.master_key).request_id == "r-3"
