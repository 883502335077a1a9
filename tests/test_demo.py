"""``gateway demo``: the whole flow on generated data, and nothing raw left behind."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner, Result

from gateway import audit
from gateway import demo as demo_module
from gateway.agreements import load_registry
from gateway.cli import main
from gateway.context import Gateway
from gateway.demo import demo_settings
from tests.conftest import AGREEMENTS_DIR, POLICIES_DIR

# The whole demo is the costliest thing the suite runs, so the module's tests share one
# run of the command. `make test` (--dist loadgroup) keeps them on one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("demo")


@dataclass(frozen=True)
class DemoRun:
    folder: Path
    #: What `gateway demo --dir FOLDER` printed and its exit code.
    command: Result
    #: What the demo returned to the command (the summary behind ``--json``).
    result: dict[str, Any]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    """``gateway demo`` run once, through the command line, with what ``run_demo``
    returned to it recorded on the way (the real function runs)."""
    folder = tmp_path_factory.mktemp("demo") / "d"
    returned: list[dict[str, Any]] = []
    run_demo = demo_module.run_demo

    def recorded(*args: Any, **kwargs: Any) -> dict[str, Any]:
        returned.append(run_demo(*args, **kwargs))
        return returned[-1]

    env = {"GATEWAY_AGREEMENTS_DIR": str(AGREEMENTS_DIR), "GATEWAY_POLICIES_DIR": str(POLICIES_DIR)}
    with pytest.MonkeyPatch.context() as patch:
        for name in os.environ:  # no developer's GATEWAY_* settings (conftest, per test)
            if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_DATABASE_URL":
                patch.delenv(name)
        patch.setattr(demo_module, "run_demo", recorded)
        command = CliRunner().invoke(main, ["demo", "--dir", str(folder)], env=env)
    assert command.exit_code == 0, command.output
    (result,) = returned
    return DemoRun(folder, command, result)


def test_demo_uploads_every_extract_and_leaves_no_raw_id(demo_run: DemoRun) -> None:
    result = demo_run.result
    assert len(result["agreements"]) == 4
    assert result["audit"]["ok"] is True
    assert result["uploads"] and all(u["status"] == "accepted" for u in result["uploads"])
    # Every report of every example agreement runs for each of its recipients, through
    # the release engine: each table is a release with its own audit event.
    from gateway.release.reports import list_reports

    registry_ = load_registry(AGREEMENTS_DIR, POLICIES_DIR)
    expected = {
        (agreement.id, report["name"], party)
        for agreement in registry_.agreements.values()
        for report in list_reports(agreement)
        for party in report["recipients"]
    }
    ran = {(r["agreement"], r["report"], r["party"]): r for r in result["reports"]}
    assert set(ran) == expected and len(expected) >= 8
    assert all(r["status"] == "released" and r["tables"] for r in ran.values()), [
        r for r in ran.values() if r["status"] != "released"
    ]
    settings = demo_settings(demo_run.folder)
    with Gateway.open(settings, checkpoint=False) as gw, gw.sessions() as session:
        released = {
            e["details"]["release_id"]: e["details"].get("report")
            for e in map(audit.event_view, session.scalars(audit.query_events(kind="release")))
        }
    for run in ran.values():
        assert {released[t] for t in run["tables"]} == {run["report"]}
    datasets = {(u["agreement"], u["dataset"]) for u in result["uploads"]}
    assert ("student-teaching-bayview-eastport", "value_added") in datasets
    extracts = demo_run.folder / "extracts"
    formats = {Path(u["file"]).suffix for u in result["uploads"]}
    assert {".csv", ".xlsx", ".parquet"} <= formats
    assert all(Path(u["file"]).is_relative_to(extracts) for u in result["uploads"])

    # Every ID written in an extract, in every spelling, is absent from the data folder.
    raw_ids = _raw_ids(result)
    assert len(raw_ids) > 500
    data_dir = demo_run.folder / "data"
    found: set[bytes] = set()
    for path in data_dir.rglob("*"):
        if path.is_file() and path.name != "master.key":
            # Whole runs, not runs inside lowercase hex (release ids, hashes): a digit run
            # inside a hash would match a 7-digit ID by chance now and then. Nor runs
            # after a point: the microseconds of every timestamp and the decimals of
            # every interval are six-digit runs, which can match a 6-digit ID by chance.
            found |= set(re.findall(rb"(?<![0-9a-f.])[0-9A-Z]{5,}(?![0-9a-f])", path.read_bytes()))
    assert not (found & raw_ids), _where(data_dir, found & raw_ids)


def _raw_ids(result: dict[str, Any]) -> set[bytes]:
    """Every educator ID the demo's generated extracts hold, as digits without spaces or
    leading zeros (the spellings an ID could be written in)."""
    raw_ids: set[bytes] = set()
    registry = load_registry(AGREEMENTS_DIR, POLICIES_DIR)
    for upload in result["uploads"]:
        path = Path(upload["file"])
        frame = (
            pd.read_csv(path, dtype=str) if path.suffix == ".csv"
            else pd.read_excel(path, dtype=str) if path.suffix == ".xlsx"
            else pd.read_parquet(path).astype(str)
        )  # fmt: skip
        dataset = registry.agreement(upload["agreement"]).dataset(upload["dataset"])
        aliases = {h.strip().lower() for h, c in dataset.header_map.items() if c == "educator_id"}
        id_headers = [c for c in frame.columns if c.strip().lower() in aliases | {"educator_id"}]
        for header in id_headers:
            for value in frame[header].dropna():
                digits = "".join(value.split()).upper().lstrip("0")
                if len(digits) >= 5:
                    raw_ids.add(digits.encode())
    return raw_ids


def test_demo_extract_is_approved_downloaded_and_holds_no_raw_id_or_pseudonym(
    demo_run: DemoRun,
) -> None:
    """The demo's record-level extract: asked for by the EPP, approved by the district,
    downloaded once, its risk figures printed; the downloaded file, as stored and as
    decoded, holds no raw ID of the generated extracts and no internal pseudonym."""
    import pyarrow.parquet as pq
    from sqlalchemy import select

    from gateway.storage.datasets import Educator

    (extract,) = demo_run.result["extracts"]
    assert extract["status"] == "downloaded"
    stdout = demo_run.command.stdout
    assert f"request {extract['request_id']}, pending" in stdout
    assert "approved by eastport-ps" in stdout and "downloaded once by bayview-state" in stdout
    assert "risk after:" in stdout and "expected re-identification rate" in stdout
    path = Path(extract["file"])
    stored = path.read_bytes()
    # Parquet pages are compressed: scan the decoded cells and metadata too.
    table = pq.read_table(path)
    decoded = table.to_pandas().to_csv(index=False).encode() + b"".join(
        (table.schema.metadata or {}).values()
    )
    assert len(table) > 0
    raw_ids = _raw_ids(demo_run.result)
    assert len(raw_ids) > 500
    runs: set[bytes] = set()
    for content in (stored, decoded):
        runs |= set(re.findall(rb"(?<![0-9a-f.])[0-9A-Z]{5,}(?![0-9a-f])", content))
    assert not (runs & raw_ids)
    with Gateway.open(demo_settings(demo_run.folder), checkpoint=False) as gw, gw.reads() as db:
        pseudonyms = [p.encode() for p in db.scalars(select(Educator.pseudonym))]
    assert len(pseudonyms) > 500
    assert not [p for p in pseudonyms if p in stored or p in decoded]


def test_demo_command_runs(demo_run: DemoRun) -> None:
    result = demo_run.command
    assert result.exit_code == 0, result.output
    assert "chain and signed checkpoints verified" in result.stdout
    assert (demo_run.folder / "extracts").is_dir() and (demo_run.folder / "data").is_dir()
    # The story goes on to the reports and says how to open the web pages.
    assert "impact for bayview-state" in result.stdout and "95% interval" in result.stdout
    # Suppressed cells are counted, one line a table, not listed one by one; a report
    # both recipients receive is printed once (a partnership release, stored).
    assert re.search(r"\d+ suppressed \(primary\): too few teachers", result.stdout)
    assert "suppressed (primary)\n" not in result.stdout
    assert "the same tables as for bayview-state (stored" in result.stdout
    assert "/web/" in result.stdout
    # It ends with one line of what was published and what the pass cost, counting each
    # partnership release once: the counts add up to the cells.
    summary = re.search(
        r"Summary: (\d+) tables, (\d+) cells: (\d+) published with noise as asked, (\d+) "
        r"rolled up into coarser groups, (\d+) exact \(posted positions\), (\d+) coded, "
        r"(\d+) suppressed",
        result.stdout,
    )
    assert summary is not None
    tables, cells, *parts = (int(n) for n in summary.groups())
    assert tables > 0 and cells == sum(parts)
    assert "epsilon spent" in result.stdout and "of its budget" in result.stdout
    tokens = demo_run.folder / "tokens.txt"
    assert tokens.stat().st_mode & 0o077 == 0
    secrets = [line.split()[-1].split("_", 2)[2] for line in tokens.read_text().splitlines()]
    assert len(secrets) == 3 and not any(s in result.stdout for s in secrets)


def _where(data_dir: Path, leaked: set[bytes]) -> list[str]:
    """For a failure message: which files hold which leaked values, with context."""
    places = []
    for path in data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for value in leaked:
                at = content.find(value)
                if at >= 0:
                    places.append(f"{path.name}: {content[max(0, at - 60) : at + 30]!r}")
    return places
