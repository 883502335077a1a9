"""Named reports: declared in agreements, run through the release engine table by table,
previewed and budgeted as a whole, over the CLI and the API."""

from __future__ import annotations

import csv
import io
import json
import re
import zipfile
from decimal import Decimal
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from gateway import audit
from gateway.agreements import load_registry
from gateway.app import create_app
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway
from gateway.errors import NotFound, PolicyViolation, SchemaError
from gateway.release.budget import BudgetExhausted, budget_report
from gateway.release.engine import request_release
from gateway.release.model import Preview
from gateway.release.reports import (
    allocate,
    check_reports,
    definition,
    list_reports,
    resolve_parameters,
    run_report,
    table_queries,
)
from tests.conftest import (
    AGREEMENT,
    AGREEMENTS_DIR,
    DISTRICT,
    EPP,
    POLICIES_DIR,
    analyst,
    settings_env,
    upload_generated,
)

ANALYST = audit.Actor(role="analyst", party=EPP)


@pytest.fixture
def stocked(gateway: Gateway, tmp_path: Path) -> Gateway:
    """The student-teaching agreement with every party's generated extracts uploaded."""
    upload_generated(gateway, AGREEMENT, tmp_path / "extracts", seed=7)
    return gateway


def spent(gw: Gateway, party: str) -> float:
    with gw.sessions() as session:
        return float(budget_report(session, gw.agreement(AGREEMENT))["parties"][party]["spent"])


def run(gw: Gateway, report: str, party: str = EPP, **kwargs: Any) -> dict[str, Any]:
    return run_report(
        gw,
        agreement_id=AGREEMENT,
        party=party,
        report=report,
        parameters=kwargs.pop("parameters", {}),
        actor=ANALYST,
        **kwargs,
    )


def test_every_example_report_is_a_query_each_recipient_may_ask() -> None:
    registry = load_registry(AGREEMENTS_DIR, POLICIES_DIR)
    names = set()
    for agreement in registry.agreements.values():
        assert check_reports(agreement, registry) == []
        names |= {r["name"] for r in list_reports(agreement)}
    assert {"pipeline", "performance", "impact", "needs", "diversity"} <= names


def test_a_report_runs_each_table_through_the_release_engine(stocked: Gateway) -> None:
    before = spent(stocked, EPP)
    result = run(stocked, "impact", parameters={"years": "2024,2025", "epsilon": "0.4"})
    assert result["parameters"] == {"years": [2024, 2025], "epsilon": "0.4"}
    # Two tables (by program, and the trend by school year), one release each; what
    # they spend together is the report's epsilon at most, and all the ledger moved.
    assert len(result["tables"]) == 2
    total = sum(Decimal(str(t["release"]["epsilon_spent"])) for t in result["tables"])
    assert Decimal("0.399") < total <= Decimal("0.4")
    assert spent(stocked, EPP) == pytest.approx(before + float(total))
    with stocked.sessions() as session:
        events = [audit.event_view(e) for e in session.scalars(audit.query_events(kind="release"))]
    for table in result["tables"]:
        release = table["release"]
        # The minimum cell rule holds: a cell is published with a value or marked
        # suppressed (or rolled up into a coarser one, which is published).
        for cell in release["cells"]:
            assert (cell["value"] is None) == cell["suppressed"]
            if not cell["suppressed"]:
                low, high = cell["ci95"]
                assert low <= cell["value"] <= high
        (event,) = [e for e in events if e["details"]["release_id"] == release["release_id"]]
        assert event["details"]["report"] == "impact"
        assert event["details"]["query"]["filters"][0]["value"] == [2024, 2025]


def test_epsilon_is_split_over_the_tables_and_previewed_whole(
    gateway: Gateway, tmp_path: Path
) -> None:
    # A table over a dataset nobody uploaded is left out: the report's five need data.
    upload_generated(gateway, "diversity-cedar-valley-harmon", tmp_path, seed=3, scale=0.2)
    agreement = gateway.agreement("diversity-cedar-valley-harmon")
    (spec,) = [r for r in agreement.reports if r.name == "diversity"]
    report = definition(spec)
    values, epsilon = resolve_parameters(agreement, report, {"epsilon": "0.24"})
    laplace = []
    for query in table_queries(report, values, epsilon):
        seen = request_release(
            gateway,
            agreement_id=agreement.id,
            party="harmon-usd",
            query=query,
            actor=ANALYST,
            dry_run=True,
        )
        assert isinstance(seen, Preview)
        laplace.append(seen)
    shares = allocate(report, laplace, epsilon)
    # Every share to the unit of the ledger, never more than the whole between them.
    assert Decimal("0.24") - Decimal("5e-12") <= sum(shares) <= Decimal("0.24")
    # Each table's share in proportion to (cells x teachers' groups^2)^(1/3): the split
    # that minimises the report's summed squared error under Laplace noise; or to the
    # weight a table declares (the trend table: 1).
    weights = [
        table.weight
        if table.weight is not None
        else ((p.cells or 1) * p.groups_per_teacher**2) ** (1 / 3)
        for table, p in zip(report.tables, laplace, strict=True)
    ]
    assert report.tables[-1].weight == 1
    for share, weight in zip(shares, weights, strict=True):
        assert float(share) == pytest.approx(0.24 * weight / sum(weights), abs=1e-11)
    assert len(set(shares)) > 1  # the tables differ in size: so do their shares
    # The report's preview: every table, what they would spend together (the Laplace
    # shares, or their zCDP conversion when that previews better), and it fits.
    preview = run_report(
        gateway,
        agreement_id=agreement.id,
        party="harmon-usd",
        report="diversity",
        parameters={"epsilon": "0.24"},
        actor=ANALYST,
        dry_run=True,
    )
    assert preview["preview"] is True and len(preview["tables"]) == 5
    costs = [Decimal(t["preview"]["exact"]["epsilon_cost"]) for t in preview["tables"]]
    assert preview["epsilon"] == pytest.approx(float(sum(costs)))
    assert 0.2399 < preview["epsilon"] <= 0.24 and preview["would_fit"] is True
    with gateway.sessions() as session:
        spent_now = budget_report(session, agreement)["spent"]
    assert spent_now == 0  # a preview spends nothing


def test_a_report_that_does_not_fit_is_refused_whole(stocked: Gateway) -> None:
    run(stocked, "pipeline", parameters={"epsilon": "1.0"})
    run(stocked, "impact", parameters={"epsilon": "1.0"})
    run(stocked, "impact", parameters={"epsilon": "0.5", "years": "2025"})
    # 0.5 of the agreement's 3.0 is left: three tables of 0.2 do not fit.
    with pytest.raises(BudgetExhausted, match="nothing was spent"):
        run(stocked, "retention", parameters={"epsilon": "0.6"})
    assert spent(stocked, EPP) == pytest.approx(2.5)


@pytest.mark.parametrize(
    ("parameters", "error", "words"),
    [
        ({"colour": "red"}, SchemaError, "takes no parameter 'colour'"),
        ({"years": "twenty"}, SchemaError, "expected a whole number"),
        ({"years": ""}, SchemaError, "at least one value"),
        ({"epsilon": "-1"}, SchemaError, "greater than 0"),
        ({"epsilon": "lots"}, SchemaError, "expected a number"),
    ],
)
def test_bad_parameters_are_refused_before_anything_is_spent(
    gateway: Gateway, parameters: dict[str, str], error: type, words: str
) -> None:
    with pytest.raises(error, match=words):
        run(gateway, "pipeline", parameters=parameters)
    assert spent(gateway, EPP) == 0


def test_reports_are_only_for_their_recipients(gateway: Gateway) -> None:
    with pytest.raises(PolicyViolation, match="not for 'eastport-ps'"):
        run(gateway, "performance", party=DISTRICT)
    with pytest.raises(NotFound, match="no report 'nope'"):
        run(gateway, "nope")
    listed = {r["name"] for r in list_reports(gateway.agreement(AGREEMENT), party=DISTRICT)}
    assert "performance" not in listed and "performance_by_provider" in listed


def test_a_broken_report_definition_is_named_by_agreements_check(
    settings: Settings, tmp_path: Path
) -> None:
    source = (AGREEMENTS_DIR / f"{AGREEMENT}.yaml").read_text()
    broken = source.replace(
        "group_by: [program_code]\n", "group_by: [school_code]\n", 1
    )  # school_code is not on the EPP's release allowlist
    assert broken != source
    folder = tmp_path / "agreements"
    folder.mkdir()
    (folder / f"{AGREEMENT}.yaml").write_text(broken)
    env = settings_env(settings)
    result = CliRunner().invoke(main, ["agreements", "check", str(folder)], env=env)
    assert result.exit_code == 4
    assert "reports: report performance: table" in result.stdout
    assert "bayview-state" in result.stdout and "school_code" in result.stdout


def test_cli_runs_a_report_with_parameters(
    stocked: Gateway, settings: Settings, tmp_path: Path
) -> None:
    env = settings_env(settings)
    args = ["release", "--agreement", AGREEMENT, "--party", EPP, "--report", "pipeline"]
    # Three school years, not one: the first table's decisions are on noisy counts, and
    # with one year's teachers it once published nothing (a CI run of 2026-12-02).
    years = "years=2023,2024,2025"
    preview = CliRunner().invoke(main, [*args, "--param", years, "--dry-run"], env=env)
    assert preview.exit_code == 0, preview.output
    assert "report total: epsilon 0.3" in preview.stdout and spent(stocked, EPP) == 0
    done = CliRunner().invoke(main, [*args, "--param", years, "--json"], env=env)
    assert done.exit_code == 0, done.output
    body = json.loads(done.stdout)
    assert body["parameters"]["years"] == [2023, 2024, 2025]
    assert body["tables"][0]["release"]["cells"]
    tables = [t["title"] for t in body["tables"] if "release" in t]
    # Asked again (free: stored), the report prints the JSON's numbers rounded as people
    # read them: "a to b" intervals, counts whole or shares with one decimal.
    shown = CliRunner().invoke(main, [*args, "--param", years], env=env).stdout
    assert "[95%" not in shown and not re.search(r"\d\.\d{3,}", shown)
    first = next(t["release"] for t in body["tables"] if "release" in t)
    published = [c for c in first["cells"] if not c["suppressed"] and c["value"] is not None]
    assert published
    kind = first["query"]["measure"]["kind"]
    assert kind in ("count", "rate", "retention")

    def people(value: float) -> str:  # worked out here, not by the formatting module
        return f"{round(value):,}" if kind == "count" else f"{value * 100:.1f}%"

    for cell in published:
        low, high = cell["ci95"]
        assert f": {people(cell['value'])}  (95% interval {people(low)} to {people(high)})" in shown

    as_csv = CliRunner().invoke(main, [*args, "--param", years, "--csv"], env=env)
    if len(tables) > 1:  # one file per table: the CLI asks where to put them
        assert as_csv.exit_code == 2 and "--out" in as_csv.output
    folder = tmp_path / "pipeline"
    into = [*args, "--param", years, "--csv", "--out", str(folder)]
    written = CliRunner().invoke(main, into, env=env)
    assert written.exit_code == 0, written.output
    files = sorted(folder.glob("*.csv"))
    assert len(files) == len(tables)
    for path, title in zip(files, tables, strict=True):
        rows = list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))
        assert rows and {row["table"] for row in rows} == {title}
        assert {"value", "ci95_low", "suppressed"} <= set(rows[0])
        assert not path.read_text(encoding="utf-8").startswith("#")
    zipped = tmp_path / "pipeline.zip"
    into = [*args, "--param", years, "--csv", "--out", str(zipped)]
    assert CliRunner().invoke(main, into, env=env).exit_code == 0
    with zipfile.ZipFile(zipped) as archive:
        assert sorted(archive.namelist()) == [p.name for p in files]
        assert archive.read(files[0].name) == files[0].read_bytes()
    book = tmp_path / "pipeline.xlsx"
    to_excel = CliRunner().invoke(main, [*args, "--param", years, "--xlsx", str(book)], env=env)
    assert to_excel.exit_code == 0, to_excel.output
    sheets = openpyxl.load_workbook(book).sheetnames
    assert sheets[0] == "About" and len(sheets) == 1 + len(tables)
    both = CliRunner().invoke(main, [*args, "--query", __file__], env=env)
    assert both.exit_code == 2 and "exactly one of --query" in both.output
    bad = CliRunner().invoke(main, [*args, "--param", "years"], env=env)
    assert bad.exit_code == SchemaError.exit_code and "KEY=VALUE" in bad.stderr


def test_api_runs_a_report_for_the_tokens_party(stocked: Gateway, settings: Settings) -> None:
    url = f"/v1/agreements/{AGREEMENT}/releases"
    body = {"report": "impact", "parameters": {"years": [2024, 2025]}}
    with TestClient(create_app(settings), headers=analyst(settings, party=DISTRICT)) as client:
        preview = client.post(url, params={"dry_run": True}, json=body)
        done = client.post(url, json=body)
        not_theirs = client.post(url, json={"report": "performance"})
        unknown_key = client.post(url, json={"report": "impact", "colour": "red"})
    assert preview.status_code == 200 and preview.json()["would_fit"] is True
    assert done.status_code == 200, done.text
    total = sum(t["release"]["epsilon_spent"] for t in done.json()["tables"])
    assert 0.2999 < total <= 0.3
    assert spent(stocked, DISTRICT) == pytest.approx(total)
    assert not_theirs.status_code == 403
    assert unknown_key.status_code == 422


def test_agreements_show_lists_reports_with_their_parameters(settings: Settings) -> None:
    env = settings_env(settings)
    from gateway.context import initialise

    initialise(settings)
    shown = CliRunner().invoke(main, ["agreements", "show", AGREEMENT, "--json"], env=env)
    reports = {r["name"]: r for r in json.loads(shown.stdout)["reports"]}
    assert reports["impact"]["parameters"]["years"]["default"] == [2023, 2024, 2025]
    assert reports["impact"]["parameters"]["epsilon"]["default"] == "0.3"
    assert reports["performance"]["recipients"] == [EPP]
    assert Decimal(reports["pipeline"]["parameters"]["epsilon"]["default"]) > 0


def test_a_report_asked_again_on_the_same_data_is_free_even_on_a_spent_budget(
    stocked: Gateway,
) -> None:
    first = run(stocked, "impact", parameters={"epsilon": "1.0"})
    run(stocked, "pipeline", parameters={"epsilon": "1.0"})
    run(stocked, "impact", parameters={"epsilon": "1.0", "years": "2025"})  # 3.0 spent
    preview = run(stocked, "impact", parameters={"epsilon": "1.0"}, dry_run=True)
    assert preview["tables"][0]["preview"]["repeat"] is True
    assert preview["epsilon"] == 0 and preview["would_fit"] is True
    again = run(stocked, "impact", parameters={"epsilon": "1.0"})
    assert again["tables"][0]["release"]["repeated"] is True
    assert again["tables"][0]["release"]["cells"] == first["tables"][0]["release"]["cells"]
    # The district receives the same table too, free: one release for the partnership.
    theirs = run(stocked, "impact", party=DISTRICT, parameters={"epsilon": "1.0"})
    mine, shared = first["tables"][0]["release"], theirs["tables"][0]["release"]
    assert shared["release_id"] == mine["release_id"] and shared["cells"] == mine["cells"]
    assert spent(stocked, EPP) == pytest.approx(3.0) and spent(stocked, DISTRICT) == 0
    with pytest.raises(BudgetExhausted):
        run(stocked, "impact", parameters={"epsilon": "0.9"})  # a new query: not free


def test_a_repeated_release_keeps_the_order_of_its_dimensions(stocked: Gateway) -> None:
    first = run(stocked, "pipeline", parameters={"epsilon": "0.3"})
    again = run(stocked, "pipeline", parameters={"epsilon": "0.3"})
    assert again["tables"][0]["release"]["repeated"] is True
    dims = [list(c["group"]) for c in again["tables"][0]["release"]["cells"]]
    assert dims[0] == ["program_code", "cohort_year"]  # group_by order, not name order
    assert again["tables"][0]["release"]["cells"] == first["tables"][0]["release"]["cells"]
