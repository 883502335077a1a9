"""Releases: allowlists, minimum cells, suppression, noise, budget, attacks, audit."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from gateway import audit
from gateway.agreements.models import ColumnSpec
from gateway.app import create_app
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway
from gateway.errors import PolicyViolation, SchemaError
from gateway.ingest import upload_extract
from gateway.release.budget import BudgetExhausted
from gateway.release.engine import request_release
from gateway.release.query import FieldRef, Filter, Query, parse_query
from gateway.release.rows import filter_mask
from tests.conftest import AGREEMENT, BANDS, DISTRICT, EPP, ROOMY_EPSILON, analyst, settings_env
from tests.conftest import evaluations_csv as evaluations_csv

ACTOR = audit.Actor(role="analyst", party=EPP)


def query(**body: Any) -> Query:
    base: dict[str, Any] = {
        "datasets": ["evaluations"],
        "measure": {"kind": "count"},
        "epsilon": "0.5",
    }
    base.update(body)
    return parse_query(base)


def release(gw: Gateway, q: Query, party: str = EPP, **kwargs: Any) -> dict[str, Any]:
    return request_release(
        gw, agreement_id=AGREEMENT, party=party, query=q, actor=ACTOR, **kwargs
    ).to_json()


def events(gw: Gateway, kind: str) -> list[dict[str, Any]]:
    with gw.sessions() as session:
        return [audit.event_view(e) for e in session.scalars(audit.query_events(kind=kind))]


# --- the query model ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"datasets": [], "measure": {"kind": "count"}, "epsilon": 1}, "at least 1"),
        (
            {"datasets": ["evaluations"], "measure": {"kind": "sum"}, "epsilon": 1},
            "needs a 'field'",
        ),
        (
            {"datasets": ["evaluations"], "measure": {"kind": "count"}, "epsilon": 0},
            "greater than 0",
        ),
        (
            {
                "datasets": ["evaluations"],
                "measure": {"kind": "count"},
                "epsilon": "0.1234567890123",
            },
            "at most 12 decimal places",
        ),
        (
            {
                "datasets": ["evaluations"],
                "measure": {"kind": "count"},
                "epsilon": 1,
                "filters": [{"field": "school_year", "op": "between", "value": [1]}],
            },
            "two bounds",
        ),
        ({"datasets": ["evaluations"], "measure": {"kind": "rate"}, "epsilon": 1}, "condition"),
        (
            {"datasets": ["evaluations"], "measure": {"kind": "count"}, "epsilon": 1, "extra": 1},
            "Extra inputs",
        ),
    ],
)
def test_invalid_queries_are_refused_clearly(body: dict[str, Any], message: str) -> None:
    with pytest.raises(SchemaError, match=message):
        parse_query(body)


def test_canonical_form_ignores_order() -> None:
    a = query(
        datasets=["evaluations", "completers"],
        filters=[
            {"field": "school_year", "op": "in", "value": [2025, 2024]},
            {"field": "grade_band", "op": "eq", "value": "3-5"},
        ],
    )
    b = query(
        datasets=["completers", "evaluations"],
        filters=[
            {"field": "grade_band", "op": "eq", "value": "3-5"},
            {"field": "school_year", "op": "in", "value": [2024, 2025]},
        ],
    )
    assert a.canonical() == b.canonical() and a.fingerprint() == b.fingerprint()
    assert a.fingerprint() != query(epsilon="0.25").fingerprint()


# --- allowlists and caps -----------------------------------------------------------------


def test_field_off_the_allowlist_is_refused_with_its_rule(loaded: Any) -> None:
    gw, _ = loaded
    # bayview-state may not group by school_code; eastport-ps may.
    with pytest.raises(PolicyViolation, match=r"releases\.bayview-state") as refused:
        release(gw, query(group_by=["school_code"]))
    assert refused.value.details[0]["field"] == "evaluations.school_code"
    allowed = release(
        gw, query(group_by=["school_code"], epsilon="0.1", delta="1e-8"), party=DISTRICT
    )
    # Schools are selected by a thresholded count (1e-8), and the floor adds 1e-9.
    assert allowed["delta_spent"] == pytest.approx(1.1e-8, rel=1e-12)
    refusals = events(gw, "release-refused")
    assert refusals and refusals[-1]["details"]["code"] == "policy_violation"
    with pytest.raises(PolicyViolation, match="per release"):
        release(gw, query(epsilon="5"))


def test_unstored_or_unknown_fields_are_refused(loaded: Any) -> None:
    gw, _ = loaded
    with pytest.raises(SchemaError, match="not stored"):
        release(gw, query(group_by=["gender"]))


# --- minimum cells and suppression ----------------------------------------------------


def test_every_released_cell_rests_on_the_minimum(roomy_loaded: Any) -> None:
    gw, rows = roomy_loaded
    result = release(
        gw,
        query(
            group_by=["grade_band"],
            filters=[{"field": "school_year", "op": "eq", "value": 2025}],
            epsilon=ROOMY_EPSILON,  # near-exact counts: the pattern can be predicted
        ),
    )
    true = Counter(r["band"] for r in rows)
    cells = {c["group"]["grade_band"]: c for c in result["cells"]}
    assert set(cells) == set(BANDS)  # every public key is a cell, empty ones too
    for band, cell in cells.items():
        if cell["suppressed"]:
            assert cell["value"] is None and cell["ci95"] is None
            assert cell["reason"] in ("primary", "complementary")
        else:
            assert true[band] >= 10
    assert cells["6-8"]["reason"] == "primary"
    # 3-5 alone would not hide it: 3-5 is known to hold at least 10 (it is marked
    # complementary), so 6-8 would be pinned to at most 17 - 10 = 7 < 9. The LP audit
    # adds 9-12 too; only the largest cell stays published.
    assert cells["3-5"]["reason"] == "complementary"
    assert cells["9-12"]["reason"] == "complementary"
    assert not cells["PK-2"]["suppressed"]


def test_one_small_cell_gets_a_complementary_partner(roomy: Gateway, tmp_path: Path) -> None:
    gateway = roomy
    lines = ["MEPID,SY,Grade Span,Summative Rating"]
    n = 200000
    for band, count in {"PK-2": 30, "3-5": 16, "6-8": 15, "9-12": 2}.items():
        for _ in range(count):
            n += 1
            lines.append(f"{n},2025,{band},3")
    (tmp_path / "e.csv").write_text("\n".join(lines) + "\n")
    upload_extract(
        gateway,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="evaluations",
        path=tmp_path / "e.csv",
        actor=ACTOR,
    )
    result = release(gateway, query(group_by=["grade_band"], epsilon=ROOMY_EPSILON))
    reasons = {c["group"]["grade_band"]: c.get("reason") for c in result["cells"]}
    assert reasons["9-12"] == "primary"
    # Decided on the noisy counts (near-exact at this epsilon): with 6-8 alone, 9-12 <=
    # 17 - 10 = 7 (6-8 is marked, so known to be >= 10): too narrow. With 3-5 as well,
    # 9-12 may be anything from 0 to 9.
    assert reasons["3-5"] == "complementary" and reasons["6-8"] == "complementary"
    assert reasons["PK-2"] is None


def test_suppression_is_consistent_across_releases(roomy: Gateway, tmp_path: Path) -> None:
    test_one_small_cell_gets_a_complementary_partner(roomy, tmp_path)
    again = release(roomy, query(group_by=["grade_band"], epsilon="9"))
    reasons = {c["group"]["grade_band"]: c.get("reason") for c in again["cells"]}
    assert reasons["3-5"] == "complementary" and reasons["9-12"] == "primary"
    assert reasons["6-8"] == "complementary"


def test_student_minimum_applies_to_student_measures(roomy: Gateway, tmp_path: Path) -> None:
    gateway = roomy
    lines = ["MEPID,SY,Test Subject,Median SGP,SGP N"]
    for i in range(30):
        # Thirty teachers in each subject; in ELA each score rests on one student only.
        lines.append(f"{300000 + i},2025,MATH,50,25")
        lines.append(f"{300000 + i},2025,SCI,52,25")
        lines.append(f"{300000 + i},2025,ELA,48,1")
    (tmp_path / "va.csv").write_text("\n".join(lines) + "\n")
    upload_extract(
        gateway,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="value_added",
        path=tmp_path / "va.csv",
        actor=ACTOR,
    )
    q = parse_query(
        {
            "datasets": ["value_added"],
            "measure": {"kind": "mean", "field": "growth_score"},
            "group_by": ["subject"],
            "epsilon": ROOMY_EPSILON,
            # Every teacher has all three subjects: let each count in each.
            "max_groups_per_teacher": 3,
        }
    )
    cells = {c["group"]["subject"]: c for c in release(gateway, q)["cells"]}
    # 30 teachers but each on 1 student: with min_cell_students 20 over
    # min_cell_teachers 10, a teacher counts in a growth cell only with 2 or more
    # students behind the score, so ELA's teachers (one student each) count for nothing.
    assert cells["ELA"]["suppressed"] and cells["ELA"]["reason"] == "primary"
    # One of the other two hides it (a line is never left with one hidden cell).
    published = [s for s in ("MATH", "SCI") if not cells[s]["suppressed"]]
    assert len(published) == 1
    low, high = cells[published[0]]["ci95"]
    assert 1 <= low <= cells[published[0]]["value"] <= high <= 99


# --- noise, accuracy, preview ------------------------------------------------------------


def test_release_reports_noise_and_accuracy(loaded: Any) -> None:
    gw, _ = loaded
    result = release(gw, query(group_by=["grade_band"]))
    # Every key is public: no selection delta, only the floor's (floor_delta 1e-9).
    assert result["epsilon_spent"] == 0.5 and result["delta_spent"] == 1e-9
    assert result["decisions"]["floor_delta"] == 1e-9
    assert result["decisions"]["publish_threshold"] >= 10
    for cell in result["cells"]:
        if not cell["suppressed"]:
            low, high = cell["ci95"]
            assert low <= cell["value"] <= high and cell["value"] == int(cell["value"])
    assert any("make_laplace" in m for m in result["noise"]["mechanisms"])


def test_preview_spends_nothing(loaded: Any) -> None:
    gw, _ = loaded
    before = json.dumps(events(gw, "budget-reserved"))
    preview = release(gw, query(group_by=["grade_band"]), dry_run=True)
    assert preview["preview"] is True and preview["would_fit"] is True
    assert preview["accuracy_95"]["count_half_width"] > 0
    assert json.dumps(events(gw, "budget-reserved")) == before
    smaller = release(gw, query(group_by=["grade_band"], epsilon="0.1"), dry_run=True)
    assert smaller["accuracy_95"]["count_half_width"] > preview["accuracy_95"]["count_half_width"]


# --- budget --------------------------------------------------------------------------------


def test_budget_is_an_exact_ledger_and_refuses_overspending(loaded: Any) -> None:
    gw, _ = loaded
    # The standard profile's epsilon 3.0 is the agreement's one pool (no spending
    # limits declared), so ten releases of 0.3 fit exactly.
    for i in range(10):
        release(
            gw,
            query(
                group_by=["grade_band"],
                epsilon="0.3",
                filters=[{"field": "school_year", "op": "in", "value": [2025, 2000 + i]}],
            ),
        )
    with pytest.raises(BudgetExhausted, match="may spend"):
        release(
            gw, query(epsilon="0.3", filters=[{"field": "school_year", "op": "eq", "value": 2025}])
        )
    from gateway.release.budget import budget_report

    with gw.sessions() as session:
        report = budget_report(session, gw.agreement(AGREEMENT))
    assert report["parties"][EPP]["exact"]["spent"] == "3"
    assert report["parties"][EPP]["remaining"] == 0.0
    assert report["parties"][DISTRICT]["spent"] == 0.0
    assert report["parties"][DISTRICT]["remaining"] == 0.0  # the pool is spent
    assert report["total"] == 3.0 and report["spent"] == 3.0 and report["remaining"] == 0.0
    assert report["delta_spent"] == pytest.approx(10e-9)  # ten floors
    refusal = events(gw, "release-refused")[-1]["details"]
    assert refusal["code"] == "budget_exhausted"


def test_identical_query_returns_the_earlier_release_for_free(loaded: Any) -> None:
    gw, _ = loaded
    first = release(gw, query(group_by=["grade_band"]))
    second = release(gw, query(group_by=["grade_band"]))
    assert second["release_id"] == first["release_id"] and second["repeated"] is True
    assert second["cells"] == first["cells"]  # averaging repeats gains nothing
    assert second["epsilon_spent"] == 0 and second["budget_remaining"] == first["budget_remaining"]
    assert len(events(gw, "release-repeated")) == 1
    # The other recipient receives the same release: one noise draw, charged once.
    theirs = release(gw, query(group_by=["grade_band"]), party=DISTRICT)
    assert theirs["release_id"] == first["release_id"] and theirs["cells"] == first["cells"]
    assert theirs["epsilon_spent"] == 0 and first["recipients"] == [EPP, DISTRICT]
    assert events(gw, "release-repeated")[-1]["details"]["requester"] == DISTRICT


def test_new_data_means_a_new_release(loaded: Any, tmp_path: Path) -> None:
    gw, _ = loaded
    first = release(gw, query(group_by=["grade_band"]))
    path, _ = evaluations_csv(tmp_path / "again.csv", extra_2024=True)
    upload_extract(
        gw, agreement_id=AGREEMENT, party=DISTRICT, dataset="evaluations", path=path, actor=ACTOR
    )
    second = release(gw, query(group_by=["grade_band"]))
    assert second["release_id"] != first["release_id"] and "repeated" not in second


# --- attacks -------------------------------------------------------------------------------


def test_a_suppressed_cell_cannot_be_recovered_from_totals(roomy: Gateway, tmp_path: Path) -> None:
    from gateway.release.suppression import feasible_interval, lines_of

    test_one_small_cell_gets_a_complementary_partner(roomy, tmp_path)
    by_band = release(roomy, query(group_by=["grade_band"], epsilon="9"))
    release(roomy, query(epsilon="9"))  # the table total, released too
    hidden = {(c["group"]["grade_band"],) for c in by_band["cells"] if c["suppressed"]}
    assert hidden == {("9-12",), ("3-5",), ("6-8",)}
    # Even an attacker who knew the exact total and the exact published cell (the
    # released one is noisy), and read the marks (primary: under 10; complementary:
    # 10 or more), could place the 2-teacher cell anywhere from 0 to 9.
    true = {("PK-2",): 30.0, ("3-5",): 16.0, ("6-8",): 15.0, ("9-12",): 2.0}
    known = {("9-12",): (0.0, 9.0), ("3-5",): (10.0, None), ("6-8",): (10.0, None)}
    low, high = feasible_interval(("9-12",), hidden, true, lines_of(list(true)), known)
    assert (low, high) == (0.0, 9.0)


# --- audit, adapters ---------------------------------------------------------------------


def test_every_release_is_in_the_audit_log_with_its_table_hash(loaded: Any) -> None:
    gw, _ = loaded
    result = release(gw, query(group_by=["grade_band"]))
    event = events(gw, "release")[-1]
    assert event["event_id"] == result["audit_event"]
    details = event["details"]
    assert details["release_id"] == result["release_id"] and details["requester"] == EPP
    # Order-free: each cell as sorted-key JSON, the texts sorted (docs/releases.md).
    texts = sorted(json.dumps(c, sort_keys=True, separators=(",", ":")) for c in result["cells"])
    digest = hashlib.sha256(
        json.dumps([json.loads(t) for t in texts], sort_keys=True, separators=(",", ":")).encode()
    )
    assert details["table_sha256"] == digest.hexdigest()
    assert details["cells_released"] + details["cells_suppressed"] == len(result["cells"])
    assert details["data_version"] and details["recipients"] == [EPP, DISTRICT]
    assert Decimal(details["epsilon"]) == Decimal("0.5")
    reserved = events(gw, "budget-reserved")[-1]
    assert (
        reserved["seq"] < event["seq"] and reserved["details"]["release_id"] == result["release_id"]
    )


def test_cli_release_budget_and_csv(loaded: Any, settings: Settings, tmp_path: Path) -> None:
    q = tmp_path / "q.json"
    q.write_text(
        json.dumps(
            {
                "datasets": ["evaluations"],
                "measure": {"kind": "count"},
                "group_by": ["grade_band"],
                "epsilon": 0.5,
            }
        )
    )
    args = ["release", "--agreement", AGREEMENT, "--party", EPP, "--query", str(q)]
    env = settings_env(settings)
    out = CliRunner().invoke(main, [*args, "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.stdout)["cells"]) == 4
    csv_out = CliRunner().invoke(main, [*args, "--csv"], env=env).stdout.splitlines()
    assert csv_out[0].startswith("grade_band,value,ci95_low,ci95_high,suppressed,reason")
    assert len(csv_out) == 5
    budget = json.loads(
        CliRunner().invoke(main, ["budget", "--agreement", AGREEMENT, "--json"], env=env).stdout
    )
    assert {"total", "spent", "remaining", "parties"} <= set(budget)
    assert budget["parties"][EPP]["spent"] == 0.5 and budget["spent"] == 0.5


def test_cli_preview_numbers_read_as_people_expect(
    loaded: Any, settings: Settings, tmp_path: Path
) -> None:
    env = settings_env(settings)
    args = ["release", "--agreement", AGREEMENT, "--party", EPP, "--query"]
    mean = tmp_path / "mean.json"
    mean.write_text(
        json.dumps(
            {
                "datasets": ["evaluations"],
                "measure": {"kind": "mean", "field": "summative_rating"},
                "group_by": ["grade_band"],
                "epsilon": 1,
            }
        )
    )
    preview = CliRunner().invoke(main, [*args, str(mean), "--dry-run"], env=env)
    assert preview.exit_code == 0, preview.output
    # Counts whole; a mean's sums to the 2 decimals summative_rating declares.
    assert re.search(r"counts within ± [\d,]+, 95% of the time", preview.stdout)
    assert re.search(r"sums within ± [\d,]+\.\d\d, 95% of the time", preview.stdout)
    assert not re.search(r"\d\.\d{5,}", preview.stdout)  # no raw floats


def test_api_release_preview_and_budget(loaded: Any, settings: Settings) -> None:
    body = {
        "datasets": ["evaluations"],
        "measure": {"kind": "count"},
        "group_by": ["grade_band"],
        "epsilon": 0.5,
    }
    with TestClient(create_app(settings), headers=analyst(settings)) as client:
        url = f"/v1/agreements/{AGREEMENT}/releases"
        preview = client.post(url, params={"dry_run": True}, json=body)
        assert preview.status_code == 200 and preview.json()["preview"] is True
        done = client.post(url, json=body)
        assert done.status_code == 200 and len(done.json()["cells"]) == 4
        refused = client.post(url, json={**body, "group_by": ["school_code"]})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "policy_violation"
        budget = client.get(f"/v1/agreements/{AGREEMENT}/budget").json()
        assert budget["parties"][EPP]["spent"] == 0.5


def test_nothing_is_released_or_uploaded_outside_the_agreement_dates(
    settings: Settings, tmp_path: Path
) -> None:
    from gateway.context import initialise
    from gateway.ingest import UploadRefused

    folder = tmp_path / "ended"
    folder.mkdir()
    source = settings.agreements_dir / f"{AGREEMENT}.yaml"
    text = source.read_text()
    text = text.replace("effective: 2026-09-01", "effective: 2020-09-01")
    text = text.replace("ends: 2029-08-31", "ends: 2023-08-31")
    (folder / source.name).write_text(text)
    local = settings.model_copy(update={"agreements_dir": folder})
    initialise(local)
    path, _ = evaluations_csv(tmp_path / "e.csv")
    with Gateway.open(local) as gw:
        # Opening the gateway already terminated it: its end date has passed.
        with pytest.raises((PolicyViolation, UploadRefused), match="terminated"):
            upload_extract(
                gw,
                agreement_id=AGREEMENT,
                party=DISTRICT,
                dataset="evaluations",
                path=path,
                actor=ACTOR,
            )
        with pytest.raises(PolicyViolation, match="terminated"):
            release(gw, query())
        assert events(gw, "release-refused")[-1]["details"]["code"] == "policy_violation"


def test_suppression_memory_ignores_the_order_of_group_by(loaded: Any) -> None:
    gw, _ = loaded
    first = release(
        gw,
        query(
            group_by=["school_year", "grade_band"],
            epsilon="0.3",
            filters=[{"field": "school_year", "op": "in", "value": [2024, 2025]}],
        ),
    )
    second = release(
        gw,
        query(
            group_by=["grade_band", "school_year"],
            epsilon="0.3",
            filters=[{"field": "school_year", "op": "in", "value": [2025, 2024]}],
        ),
    )

    def hidden(result: dict[str, Any]) -> set[tuple[Any, Any]]:
        return {
            (c["group"]["school_year"], c["group"]["grade_band"])
            for c in result["cells"]
            if c["suppressed"]
        }

    assert hidden(first) and hidden(second) == hidden(first)


def test_an_invalid_query_never_echoes_its_values() -> None:
    with pytest.raises(SchemaError) as refused:
        parse_query(
            {
                "datasets": ["evaluations"],
                "measure": {"kind": "count"},
                "epsilon": 1,
                "filters": [{"field": "educator_id", "op": "eq", "value": ["000918273645"]}],
            }
        )
    assert "000918273645" not in refused.value.message + str(refused.value.details)
    assert "filters.0" in refused.value.message


# --- filters over stored columns -------------------------------------------------------

_SCORE = FieldRef(
    dataset="evaluations",
    column="summative_rating",
    spec=ColumnSpec(type="integer", role="measure", required=False, description="rating"),
)
_FILTER_VALUES = st.one_of(
    st.integers(-3, 8),
    st.floats(-3, 8, allow_nan=False).map(lambda v: round(v * 2) / 2),  # 2.0, 2.5...
    st.sampled_from(["3", "x", "", 2**53 - 1, True]),  # the largest a filter takes
)


def _sql_number(value: Any) -> float | None:
    """The number an integer column could equal, as SQL compares; None for text,
    booleans and numbers no 64-bit integer column holds (they match no row)."""
    if isinstance(value, str):
        return int(value) if value.strip().lstrip("-").isdigit() else None
    if isinstance(value, bool) or abs(value) >= 2**63:
        return None
    return float(value)


@hyp_settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.none() | st.integers(-3, 8), max_size=30),
    op=st.sampled_from(["eq", "in", "between"]),
    values=st.lists(_FILTER_VALUES, min_size=2, max_size=4),
)
def test_filters_keep_what_sql_would_keep(
    rows: list[int | None], op: str, values: list[Any]
) -> None:
    numbers = [_sql_number(v) for v in values]
    if op == "eq":
        item = Filter(field="summative_rating", op="eq", value=values[0])
        expected = [r is not None and r == numbers[0] for r in rows]
    elif op == "in":
        item = Filter(field="summative_rating", op="in", value=values)
        expected = [r is not None and r in [n for n in numbers if n is not None] for r in rows]
    else:
        item = Filter(field="summative_rating", op="between", value=values[:2])
        low, high = numbers[:2]
        expected = [
            r is not None and low is not None and high is not None and low <= r <= high
            for r in rows
        ]
    column = pa.chunked_array([pa.array(rows, pa.int64())])
    kept = filter_mask(column, _SCORE, item).to_pylist()
    assert [bool(k) for k in kept] == expected
