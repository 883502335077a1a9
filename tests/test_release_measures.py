"""The measure kinds not covered elsewhere: rates, sums of counts, selected groups, coding."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import audit
from gateway.config import Settings
from gateway.context import Gateway
from gateway.ingest import upload_extract
from gateway.release.engine import request_release
from gateway.release.query import parse_query
from tests.conftest import (
    AGREEMENT,
    DISTRICT,
    EPP,
    ROOMY_EPSILON,
    make_settings,
    roomy_agreements,
)

SPED = "sped-pipeline-northfield-tricounty"
COOPERATIVE = "tri-county-sec"
NORTHFIELD = "northfield-state"
ACTOR = audit.Actor(role="analyst")


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    # Near-exact counts: what is published, coded or shared can be reasoned about.
    return make_settings(tmp_path, database_url, agreements_dir=roomy_agreements(tmp_path))


def run(gw: Gateway, agreement: str, party: str, **body: Any) -> dict[str, Any]:
    query = parse_query({"epsilon": ROOMY_EPSILON, **body})
    return request_release(
        gw, agreement_id=agreement, party=party, query=query, actor=ACTOR
    ).to_json()


def ratings_file(tmp_path: Path, ratings: dict[str, list[int]]) -> Path:
    lines = ["MEPID,SY,Grade Span,Summative Rating"]
    teacher = 500000
    for band, values in ratings.items():
        for value in values:
            teacher += 1
            lines.append(f"{teacher},2025,{band},{value}")
    path = tmp_path / "ratings.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_rate_of_a_condition_with_its_interval(gateway: Gateway, tmp_path: Path) -> None:
    # 40 teachers in PK-2, 30 of them rated proficient or better (75%).
    # 40 teachers in each band; in PK-2, 30 rated proficient or better (75%). Every band
    # is filled: an empty cell is a small cell too, and publishing the others would
    # show it to be exactly zero.
    filled = [3] * 20 + [4] * 10 + [2] * 10
    bands = {"PK-2": filled, "3-5": filled, "6-8": filled, "9-12": filled}
    path = ratings_file(tmp_path, bands)
    upload_extract(
        gateway,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="evaluations",
        path=path,
        actor=ACTOR,
    )
    result = run(
        gateway,
        AGREEMENT,
        EPP,
        datasets=["evaluations"],
        measure={
            "kind": "rate",
            "condition": {"field": "summative_rating", "op": "in", "value": [3, 4]},
        },
        group_by=["grade_band"],
    )
    cells = {c["group"]["grade_band"]: c for c in result["cells"]}
    pk2 = cells["PK-2"]
    assert not pk2["suppressed"]
    low, high = pk2["ci95"]
    assert 0 <= low <= pk2["value"] <= high <= 1
    assert not any(c["suppressed"] for c in cells.values())


def test_rates_near_all_or_none_are_top_and_bottom_coded(gateway: Gateway, tmp_path: Path) -> None:
    mixed = [3] * 30 + [2] * 30
    # Large bands, so the noise cannot pull a 100% rate below 95%.
    bands = {"PK-2": [3] * 400, "3-5": [1] * 400, "6-8": mixed, "9-12": mixed}
    path = ratings_file(tmp_path, bands)
    upload_extract(
        gateway,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="evaluations",
        path=path,
        actor=ACTOR,
    )
    result = run(
        gateway,
        AGREEMENT,
        EPP,
        datasets=["evaluations"],
        measure={
            "kind": "rate",
            "condition": {"field": "summative_rating", "op": "eq", "value": 3},
        },
        group_by=["grade_band"],
        epsilon="1",
    )
    cells = {c["group"]["grade_band"]: c for c in result["cells"]}
    # Every PK-2 teacher meets the condition, no 3-5 teacher does: shown only as bands.
    assert cells["PK-2"]["value"] is None and cells["PK-2"]["coded"] == ">95%"
    assert cells["3-5"]["value"] is None and cells["3-5"]["coded"] == "<5%"


def test_distribution_shares_only_where_the_group_is_whole(
    gateway: Gateway, tmp_path: Path
) -> None:
    spread = [1] * 15 + [2] * 15 + [3] * 40 + [4] * 16  # every value above the threshold
    uneven = [1] * 11 + [2] * 12 + [3] * 30 + [4] * 2
    bands = {"PK-2": spread, "3-5": uneven, "6-8": spread, "9-12": spread}
    path = ratings_file(tmp_path, bands)
    upload_extract(
        gateway,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="evaluations",
        path=path,
        actor=ACTOR,
    )
    result = run(
        gateway,
        AGREEMENT,
        EPP,
        datasets=["evaluations"],
        measure={"kind": "distribution", "field": "summative_rating"},
        group_by=["grade_band"],
        epsilon="1",
    )
    hidden = 0
    for band in ("PK-2", "3-5", "6-8", "9-12"):
        cells = [c for c in result["cells"] if c["group"]["grade_band"] == band]
        assert len(cells) == 4
        if any(c["suppressed"] for c in cells):
            hidden += 1
            # A share here would expose the hidden cells through the group total.
            assert all(c.get("share") is None for c in cells)
        else:
            shares = [c["share"] for c in cells]
            assert None not in shares and sum(shares) == pytest.approx(1, abs=0.01)
    assert hidden >= 1  # 3-5's two exemplary teachers are hidden, and with them others


def test_distribution_shares_add_up_when_nothing_is_hidden(
    gateway: Gateway, tmp_path: Path
) -> None:
    spread = [1] * 15 + [2] * 15 + [3] * 40 + [4] * 16  # every value above the threshold
    bands = {"PK-2": spread, "3-5": spread, "6-8": spread, "9-12": spread}
    upload_extract(
        gateway,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="evaluations",
        path=ratings_file(tmp_path, bands),
        actor=ACTOR,
    )
    result = run(
        gateway,
        AGREEMENT,
        EPP,
        datasets=["evaluations"],
        measure={"kind": "distribution", "field": "summative_rating"},
        group_by=["grade_band"],
    )
    assert not any(c["suppressed"] for c in result["cells"])
    for band in bands:
        shares = [c["share"] for c in result["cells"] if c["group"]["grade_band"] == band]
        assert None not in shares and sum(shares) == pytest.approx(1, abs=0.01)


def vacancies_file(tmp_path: Path) -> Path:
    lines = ["Fiscal Year,Site Code,Subject Area,License Required,Postings,Unfilled at Day 1"]
    for site in range(6):
        lines.append(f"2025,S-{site:02d},SPED,SPED,6,3")  # 36 posted, 18 unfilled in SPED
        lines.append(f"2025,S-{site:02d},MATH,MATH,1,0")  # 6 posted, none unfilled
        lines.append(f"2025,S-{site:02d},ELEM,ELEM,3,1")  # 18 posted
    path = tmp_path / "vacancies.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_positions_are_released_exactly_free_and_unsuppressed(
    gateway: Gateway, tmp_path: Path
) -> None:
    """Vacancies are posted positions, not people (their schema's unit): by default a
    release of them is exact, with no noise, no minimum and no cost."""
    upload_extract(
        gateway,
        agreement_id=SPED,
        party=COOPERATIVE,
        dataset="vacancies",
        path=vacancies_file(tmp_path),
        actor=ACTOR,
    )
    body = {
        "datasets": ["vacancies"],
        "measure": {"kind": "sum", "field": "positions_posted"},
        "group_by": ["licensure_area"],
        "filters": [{"field": "licensure_area", "op": "in", "value": ["SPED", "MATH", "ELEM"]}],
    }
    result = run(gateway, SPED, NORTHFIELD, **body)
    cells = {c["group"]["licensure_area"]: c for c in result["cells"]}
    # 36, 6 and 18 positions, as uploaded: the 6 below the minimum of 10 is not hidden.
    assert {k: (c["value"], c["ci95"]) for k, c in cells.items()} == {
        "SPED": (36.0, [36.0, 36.0]),
        "MATH": (6.0, [6.0, 6.0]),
        "ELEM": (18.0, [18.0, 18.0]),
    }
    assert result["epsilon_spent"] == 0 and result["delta_spent"] == 0
    assert result["decisions"]["exact"] is True and result["noise"]["mechanisms"] == []
    # Any epsilon asks for the same exact table: it comes back stored.
    again = run(gateway, SPED, NORTHFIELD, **{**body, "epsilon": "0.2"})
    assert again["release_id"] == result["release_id"]
    with pytest.raises(Exception, match="hold counts, not teachers"):
        run(gateway, SPED, NORTHFIELD, datasets=["vacancies"], measure={"kind": "count"})


def test_an_agreement_may_have_positions_noised_like_people(
    tmp_path: Path, database_url: str
) -> None:
    import yaml

    from gateway.context import initialise

    folder = roomy_agreements(tmp_path)
    source = folder / f"{SPED}.yaml"
    document = yaml.safe_load(source.read_text())
    document["disclosure"]["overrides"]["position_data"] = "noisy"
    source.write_text(yaml.safe_dump(document, sort_keys=False))
    settings = make_settings(tmp_path, database_url, agreements_dir=folder)
    initialise(settings)
    with Gateway.open(settings) as gw:
        upload_extract(
            gw,
            agreement_id=SPED,
            party=COOPERATIVE,
            dataset="vacancies",
            path=vacancies_file(tmp_path),
            actor=ACTOR,
        )
        result = run(
            gw,
            SPED,
            NORTHFIELD,
            datasets=["vacancies"],
            measure={"kind": "sum", "field": "positions_posted"},
            group_by=["licensure_area"],
            filters=[{"field": "licensure_area", "op": "in", "value": ["SPED", "MATH", "ELEM"]}],
        )
    cells = {c["group"]["licensure_area"]: c for c in result["cells"]}
    assert not cells["SPED"]["suppressed"]  # 36 positions
    assert cells["MATH"]["reason"] == "primary"  # 6 positions: below the minimum of 10
    assert cells["ELEM"]["reason"] == "complementary"
    low, high = cells["SPED"]["ci95"]
    assert low <= cells["SPED"]["value"] <= high and low >= 0 and high > low
    assert result["epsilon_spent"] == float(ROOMY_EPSILON)


def test_groups_from_the_data_are_selected_with_delta(gateway: Gateway, tmp_path: Path) -> None:
    lines = ["MEPID,SY,School Code,Summative Rating"]
    for i in range(400):  # one big school, one tiny one
        lines.append(f"{600000 + i},2025,BIG-1,3")
    for i in range(3):
        lines.append(f"{700000 + i},2025,TINY-9,3")
    (tmp_path / "e.csv").write_text("\n".join(lines) + "\n")
    upload_extract(
        gateway,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="evaluations",
        path=tmp_path / "e.csv",
        actor=ACTOR,
    )
    with pytest.raises(Exception, match="small delta"):
        run(
            gateway,
            AGREEMENT,
            DISTRICT,
            datasets=["evaluations"],
            measure={"kind": "count"},
            group_by=["school_code"],
        )
    result = run(
        gateway,
        AGREEMENT,
        DISTRICT,
        datasets=["evaluations"],
        measure={"kind": "count"},
        group_by=["school_code"],
        epsilon="1",
        delta="1e-8",
    )
    schools = [c["group"]["school_code"] for c in result["cells"]]
    assert schools == ["BIG-1"]  # the tiny school is not even named
    # The selection's delta and the floor's (the profile's floor_delta, 1e-9).
    assert result["delta_spent"] == pytest.approx(1.1e-8, rel=1e-12)
    assert any("threshold" in m for m in result["noise"]["mechanisms"])


def test_rows_repeated_by_a_join_count_once(gateway: Gateway, tmp_path: Path) -> None:
    # Twelve completers of ELEM, each listed for two cohorts; one growth score each,
    # from one student. The join repeats every score twice; the students stay 12.
    completers = ["MEPID,Program,Program Completion Year,Completer Status,License Field"]
    scores = ["MEPID,SY,Test Subject,Median SGP,SGP N"]
    for i in range(12):
        for cohort in (2020, 2021):
            completers.append(f"{800000 + i},ELEM,{cohort},completed,ELEM")
        scores.append(f"{800000 + i},2025,MATH,50,1")
    (tmp_path / "c.csv").write_text("\n".join(completers) + "\n")
    (tmp_path / "v.csv").write_text("\n".join(scores) + "\n")
    upload_extract(
        gateway,
        agreement_id=AGREEMENT,
        party=EPP,
        dataset="completers",
        path=tmp_path / "c.csv",
        actor=ACTOR,
    )
    upload_extract(
        gateway,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="value_added",
        path=tmp_path / "v.csv",
        actor=ACTOR,
    )
    result = run(
        gateway,
        AGREEMENT,
        EPP,
        datasets=["completers", "value_added"],
        measure={"kind": "mean", "field": "growth_score"},
        group_by=["program_code"],
    )
    elem = next(c for c in result["cells"] if c["group"]["program_code"] == "ELEM")
    # 12 teachers pass the teachers' minimum, but 12 students fail the students' 20.
    assert elem["suppressed"] and elem["reason"] == "primary"


def test_a_rate_whose_condition_excludes_nothing_is_everyone(
    gateway: Gateway, tmp_path: Path
) -> None:
    lines = ["MEPID,SY,Test Subject,Median SGP,SGP N"]
    lines += [f"{900000 + i},2025,MATH,{1 + i % 99},25" for i in range(120)]
    (tmp_path / "va.csv").write_text("\n".join(lines) + "\n")
    upload_extract(
        gateway,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="value_added",
        path=tmp_path / "va.csv",
        actor=ACTOR,
    )
    result = run(
        gateway,
        AGREEMENT,
        EPP,
        datasets=["value_added"],
        measure={
            "kind": "rate",
            "condition": {"field": "growth_score", "op": "between", "value": [-5, 150]},
        },
    )
    (cell,) = result["cells"]
    assert not cell["suppressed"] and cell["coded"] == ">95%"  # all 120 meet it, not 0%
