"""A first run that cannot go wrong (issue 16): `gateway init` in an empty folder,
releases and reports over datasets with nothing to read, key rotation, `GET /` and
the confirmation before `gateway agreements terminate`."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from gateway import audit, keys
from gateway.app import create_app
from gateway.cli import main
from gateway.config import Settings
from gateway.context import Gateway
from gateway.ingest import upload_extract
from gateway.release import budget
from gateway.release.engine import request_release
from gateway.release.model import Preview, Release
from gateway.release.query import parse_query
from gateway.release.reports import run_report
from gateway.release.rows import NotUploaded, UploadedUnderOldKey
from gateway.storage.tables import AgreementRecord
from gateway_synthetic import generate_agreement_extracts
from tests.conftest import (
    AGREEMENT,
    AGREEMENTS_DIR,
    DISTRICT,
    EPP,
    POLICIES_DIR,
    evaluations_csv,
    settings_env,
)

ANALYST = audit.Actor(role="analyst", party=EPP)
LINKED = {
    "datasets": ["completers", "evaluations"],
    "measure": {"kind": "count"},
    "group_by": ["program_code"],
    "epsilon": 0.5,
}
EVALUATIONS = {"datasets": ["evaluations"], "measure": {"kind": "count"}, "epsilon": 0.5}


def cli(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> Any:
    """The CLI as a user runs it in ``cwd``, with no GATEWAY_* setting but ``env``."""
    runner = CliRunner()
    previous = Path.cwd()
    os.chdir(cwd)
    try:
        return runner.invoke(main, args, env=env or {}, catch_exceptions=False)
    finally:
        os.chdir(previous)


def key_files(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.key"))


# --- gateway init in an empty folder --------------------------------------------------------


def test_init_in_an_empty_folder_copies_the_examples_and_works(tmp_path: Path) -> None:
    first = cli(["init"], tmp_path)
    assert first.exit_code == 0, first.output
    assert "copied the example agreements to agreements/" in first.output
    copied = sorted(p.name for p in (tmp_path / "agreements").glob("*.yaml"))
    assert copied == sorted(p.name for p in AGREEMENTS_DIR.glob("*.yaml"))
    assert (tmp_path / "policies" / "datasets" / "evaluations.yaml").read_bytes() == (
        POLICIES_DIR / "datasets" / "evaluations.yaml"
    ).read_bytes()
    listed = cli(["agreements", "list", "--json"], tmp_path)
    assert listed.exit_code == 0, listed.output
    assert AGREEMENT in {a["id"] for a in json.loads(listed.output)}
    # Again: nothing copied, and a working gateway says it is initialised.
    again = cli(["init", "--json"], tmp_path)
    assert again.exit_code == 0, again.output
    body = json.loads(again.output)
    assert body["initialised"] is True and body["created"] is False
    assert body["examples_copied"] is None


def test_init_with_one_folder_missing_names_the_setting_and_makes_nothing(
    tmp_path: Path,
) -> None:
    (tmp_path / "agreements").mkdir()
    result = cli(["init"], tmp_path)
    assert result.exit_code == 3
    assert result.output.strip().splitlines() == [
        "gateway: error: GATEWAY_POLICIES_DIR is policies, which is not a folder: set "
        "GATEWAY_POLICIES_DIR to the folder of your dataset schema and profile files "
        "(docs/configuration.md)"
    ]
    assert not (tmp_path / "gateway-data").exists()
    assert not (tmp_path / "policies").exists()


def test_without_the_examples_init_names_the_setting_to_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A gateway installed without its source folder has no examples to copy."""
    from gateway import context

    monkeypatch.setattr(context, "example_folders", lambda: None)
    result = cli(["init"], tmp_path)
    assert result.exit_code == 3
    assert result.output.strip().splitlines() == [
        "gateway: error: GATEWAY_AGREEMENTS_DIR is agreements, which is not a folder: set "
        "GATEWAY_AGREEMENTS_DIR to the folder of your agreement files (docs/configuration.md)"
    ]
    assert not key_files(tmp_path) and not (tmp_path / "gateway-data").exists()


def test_a_setting_naming_a_missing_folder_is_never_filled_with_examples(tmp_path: Path) -> None:
    result = cli(["init"], tmp_path, {"GATEWAY_AGREEMENTS_DIR": str(tmp_path / "ours")})
    assert result.exit_code == 3
    assert "set GATEWAY_AGREEMENTS_DIR to the folder of your agreement files" in result.output
    assert not (tmp_path / "ours").exists() and not (tmp_path / "agreements").exists()
    assert not key_files(tmp_path)


def test_invalid_agreement_files_leave_no_key_behind(tmp_path: Path) -> None:
    (tmp_path / "agreements").mkdir()
    (tmp_path / "agreements" / "broken.yaml").write_text("id: [unclosed\n")
    (tmp_path / "policies").symlink_to(POLICIES_DIR)
    result = cli(["init"], tmp_path)
    assert result.exit_code == 4, result.output
    assert not key_files(tmp_path)


def test_a_failed_init_removes_only_the_keys_it_made(tmp_path: Path) -> None:
    (tmp_path / "agreements").symlink_to(AGREEMENTS_DIR)
    (tmp_path / "policies").symlink_to(POLICIES_DIR)
    assert cli(["init"], tmp_path).exit_code == 0
    master = tmp_path / "gateway-data" / "keys" / "master.key"
    signing = tmp_path / "gateway-data" / "keys" / "signing.key"
    kept = signing.read_bytes()
    master.unlink()  # the operator lost the master key: init must not adopt a new one
    result = cli(["init"], tmp_path)
    assert result.exit_code == 3
    assert "master key does not match" in result.output
    assert not master.exists()  # the key it made for the run is gone
    assert signing.read_bytes() == kept  # the key it found is untouched


# --- releases and reports over datasets with nothing to read --------------------------------


def spent(gw: Gateway) -> Decimal:
    with gw.sessions() as session:
        state = budget.budget_state(session, AGREEMENT, EPP, now=gw.clock())
    assert state is not None
    return Decimal(str(state.epsilon_remaining))


def upload_evaluations(gw: Gateway, folder: Path) -> None:
    path, _ = evaluations_csv(folder / "evaluations.csv")
    upload_extract(
        gw,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="evaluations",
        path=path,
        actor=audit.Actor(role="uploader", party=DISTRICT),
    )


def ask(gw: Gateway, body: dict[str, Any], *, dry_run: bool = False) -> Release | Preview:
    return request_release(
        gw,
        agreement_id=AGREEMENT,
        party=EPP,
        query=parse_query(body),
        actor=ANALYST,
        dry_run=dry_run,
    )


def test_a_release_over_a_dataset_with_no_upload_is_refused_before_any_budget(
    gateway: Gateway, tmp_path: Path
) -> None:
    """The README's own order: evaluations uploaded, completers not yet."""
    upload_evaluations(gateway, tmp_path)
    before = spent(gateway)
    for dry_run in (True, False):  # the preview says the same
        with pytest.raises(NotUploaded) as refused:
            ask(gateway, LINKED, dry_run=dry_run)
        assert refused.value.code == "dataset_not_uploaded" and refused.value.status == 409
        assert "'completers' (provided by bayview-state)" in refused.value.message
        assert "'evaluations'" not in refused.value.message
        assert refused.value.details == [{"dataset": "completers", "reason": "no accepted upload"}]
    assert spent(gateway) == before
    with gateway.sessions() as session:
        kinds = [e.kind for e in session.scalars(audit.query_events(agreement_id=AGREEMENT))]
    assert "budget-reserved" not in kinds
    assert kinds[-1] == "release-refused"
    # The dataset that was uploaded is released as usual.
    released = ask(gateway, EVALUATIONS)
    assert isinstance(released, Release) and released.epsilon_spent == 0.5


NEEDS = "sped-pipeline-northfield-tricounty"


def test_a_report_leaves_out_a_table_over_a_dataset_with_no_upload(
    gateway: Gateway, tmp_path: Path
) -> None:
    """The needs report reads vacancies (the district's) and candidate interest (the
    EPP's): with only vacancies uploaded, the candidates' table is left out, says why,
    and spends nothing; a report with no table left is refused, its preview too."""
    agreement = gateway.agreement(NEEDS)
    party = agreement.dataset("vacancies").provided_by
    recipient = next(p.id for p in agreement.parties if p.id != party)
    actor = audit.Actor(role="analyst", party=recipient)

    def needs(*, dry_run: bool) -> dict[str, Any]:
        return run_report(
            gateway,
            agreement_id=NEEDS,
            party=recipient,
            report="needs",
            parameters={},
            actor=actor,
            dry_run=dry_run,
        )

    for dry_run in (True, False):
        with pytest.raises(NotUploaded, match="no table to run"):
            needs(dry_run=dry_run)
    vacancies = next(
        e
        for e in generate_agreement_extracts(agreement, gateway.registry.schemas, tmp_path)
        if e.dataset == "vacancies"
    )
    upload_extract(
        gateway,
        agreement_id=NEEDS,
        party=party,
        dataset="vacancies",
        path=vacancies.path,
        actor=audit.Actor(role="uploader", party=party),
    )
    preview = needs(dry_run=True)
    skipped = [t for t in preview["tables"] if "skipped" in t]
    assert len(skipped) == 1 and "'candidate_interest'" in skipped[0]["skipped"]
    report = needs(dry_run=False)
    assert [t["title"] for t in report["tables"] if "skipped" in t] == [skipped[0]["title"]]
    released = [t["release"] for t in report["tables"] if "release" in t]
    assert len(released) == len(report["tables"]) - 1
    assert report["epsilon_spent"] == pytest.approx(sum(r["epsilon_spent"] for r in released))


def test_releases_after_a_key_rotation_say_the_data_must_be_uploaded_again(
    gateway: Gateway, tmp_path: Path
) -> None:
    upload_evaluations(gateway, tmp_path)
    with gateway.sessions() as session, session.begin():
        keys.rotate_key(session, agreement=gateway.agreement(AGREEMENT), actor=audit.OPERATOR)
    before = spent(gateway)
    for dry_run in (True, False):
        with pytest.raises(UploadedUnderOldKey) as refused:
            ask(gateway, EVALUATIONS, dry_run=dry_run)
        assert refused.value.code == "data_under_old_key"
        assert "'evaluations' (provided by eastport-ps)" in refused.value.message
        assert "key was rotated (now version 2)" in refused.value.message
        assert "upload it again" in refused.value.message
    assert spent(gateway) == before
    upload_evaluations(gateway, tmp_path)  # under the new key: linked again
    released = ask(gateway, EVALUATIONS)
    assert isinstance(released, Release)
    assert sum(c.value or 0 for c in released.cells) > 0


def test_the_cli_maps_the_refusal_to_its_exit_status(settings: Settings, tmp_path: Path) -> None:
    from gateway.context import initialise

    initialise(settings)
    query = tmp_path / "query.json"
    query.write_text(json.dumps(LINKED))
    result = CliRunner().invoke(
        main,
        ["release", "--agreement", AGREEMENT, "--party", EPP, "--query", str(query), "--json"],
        env=settings_env(settings),
    )
    assert result.exit_code == NotUploaded.exit_code == 11
    assert json.loads(result.stdout)["error"]["code"] == "dataset_not_uploaded"


# --- GET / and terminate ---------------------------------------------------------------------


def test_the_gateways_address_opens_the_web_pages(settings: Settings) -> None:
    from gateway.context import initialise

    initialise(settings)
    with TestClient(create_app(settings)) as client:
        answer = client.get("/", follow_redirects=False)
        assert answer.status_code == 303 and answer.headers["location"] == "/web"
        assert "Sign in" in client.get("/").text


def terminate_on_a_terminal(env: dict[str, str], answer: bytes) -> tuple[int, str]:
    """``gateway agreements terminate`` with a terminal as its input, answering ``answer``."""
    controller, terminal = pty.openpty()
    os.write(controller, answer)
    process = subprocess.run(
        [str(Path(sys.executable).parent / "gateway"), "agreements", "terminate", AGREEMENT],
        stdin=terminal,
        capture_output=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )
    os.close(terminal)
    os.close(controller)
    return process.returncode, process.stderr.decode()


def active(settings: Settings) -> bool:
    from gateway.context import Gateway

    with Gateway.open(settings) as gw, gw.sessions() as session:
        record = session.get(AgreementRecord, AGREEMENT)
        assert record is not None
        return record.status == "active"


def test_terminate_asks_on_a_terminal_and_needs_yes_elsewhere(settings: Settings) -> None:
    from gateway.context import initialise

    initialise(settings)
    env = settings_env(settings)
    refused = CliRunner().invoke(main, ["agreements", "terminate", AGREEMENT], env=env)
    assert refused.exit_code == 2
    assert refused.stderr.strip().splitlines() == [
        "gateway: error: terminating destroys the agreement's data and keys for good; not "
        "on a terminal, so confirm with --yes"
    ]
    status, stderr = terminate_on_a_terminal(env, b"n\n")
    assert status == 1 and "Terminate agreement" in stderr
    assert "nothing was terminated" in stderr
    assert active(settings)
    status, stderr = terminate_on_a_terminal(env, b"y\n")
    assert status == 0, stderr
    assert not active(settings)


def test_postgresql_without_its_driver_is_refused_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PostgreSQL's driver is the `postgres` extra: without it, one line says so."""
    from gateway.errors import ConfigurationError
    from gateway.storage import db

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(ConfigurationError, match=r"pip install '\.\[postgres\]'"):
        db.make_engine("postgresql+psycopg://gateway@/gateway?host=/var/run/postgresql")
