"""The ``gateway`` command: help everywhere, JSON where it prints data, one-line failures."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from gateway.cli import main
from gateway.config import Settings
from tests.conftest import settings_env


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.extend(all_commands(command, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


def run(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(main, list(args), env=settings_env(settings))


@pytest.mark.parametrize("path", all_commands(main), ids=lambda p: " ".join(p) or "gateway")
def test_every_command_has_help(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.stdout and len(result.stdout.splitlines()) > 3


def test_spec_commands_exist() -> None:
    paths = {" ".join(p) for p in all_commands(main)}
    for expected in [
        "init",
        "keys init",
        "keys rotate",
        "agreements check",
        "agreements list",
        "agreements show",
        "audit list",
        "audit verify",
        "serve",
        "demo",
    ]:
        assert expected in paths


@pytest.mark.empty_database
def test_init_then_list_and_show_as_json(settings: Settings) -> None:
    init = run(settings, "init", "--json")
    assert init.exit_code == 0, init.stderr
    assert json.loads(init.stdout)["master_key_created"] is True

    listed = json.loads(run(settings, "agreements", "list", "--json").stdout)
    assert len(listed) == 4
    for item in listed:
        assert {"id", "parties", "datasets"} <= set(item)
        assert all(p["kind"] in {"district", "epp"} and p["id"] for p in item["parties"])
        party_ids = {p["id"] for p in item["parties"]}
        assert all(d["name"] and d["provided_by"] in party_ids for d in item["datasets"])

    shown = run(settings, "agreements", "show", listed[0]["id"], "--json")
    assert shown.exit_code == 0
    detail = json.loads(shown.stdout)
    assert detail["id"] == listed[0]["id"] and isinstance(detail["reports"], list)
    assert detail["disclosure"]["min_cell_teachers"] >= 3


def test_unknown_agreement_fails_with_one_line(settings: Settings) -> None:
    result = run(settings, "agreements", "show", "no-such-agreement")
    assert result.exit_code != 0
    assert result.stderr.startswith("gateway: error:") and result.stderr.count("\n") == 1
    as_json = run(settings, "agreements", "show", "no-such-agreement", "--json")
    assert json.loads(as_json.stdout)["error"]["code"] == "not_found"


@pytest.mark.empty_database
def test_commands_before_init_say_to_run_init(settings: Settings) -> None:
    result = run(settings, "audit", "verify")
    assert result.exit_code != 0
    assert "gateway keys init" in result.stderr or "gateway init" in result.stderr


def test_keys_init_creates_once(settings: Settings) -> None:
    first = json.loads(run(settings, "keys", "init", "--json").stdout)
    second = json.loads(run(settings, "keys", "init", "--json").stdout)
    assert first["created"] is True and second["created"] is False
    assert Path(first["master_key_file"]).exists()


def test_keys_rotate_and_audit_list(settings: Settings) -> None:
    assert run(settings, "init").exit_code == 0
    agreement_id = json.loads(run(settings, "agreements", "list", "--json").stdout)[0]["id"]
    rotated = run(settings, "keys", "rotate", "--agreement", agreement_id, "--json")
    assert rotated.exit_code == 0, rotated.stderr
    assert json.loads(rotated.stdout)["key_version"] == 2
    events = json.loads(run(settings, "audit", "list", "--kind", "key-rotated", "--json").stdout)
    assert [e["agreement"]["id"] for e in events] == [agreement_id]
    assert run(settings, "audit", "verify").exit_code == 0


def test_agreements_check_passes_on_examples(settings: Settings) -> None:
    result = run(settings, "agreements", "check", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["ok"] is True


def test_agreements_check_reports_a_broken_file(settings: Settings, tmp_path: Path) -> None:
    source = sorted(settings.agreements_dir.glob("*.yaml"))[0]
    broken = tmp_path / source.name
    broken.write_text(source.read_text().replace("kind: epp", "kind: university", 1))
    result = run(settings, "agreements", "check", str(broken))
    assert result.exit_code != 0
    assert str(broken) in result.stdout and "kind" in result.stdout
    assert result.stderr.startswith("gateway: error: 1 problem")


def test_agreements_check_refuses_a_display_precision_out_of_bounds(
    settings: Settings, tmp_path: Path
) -> None:
    policies = tmp_path / "policies"
    shutil.copytree(settings.policies_dir, policies)
    schema = policies / "datasets" / "evaluations.yaml"
    text = schema.read_text()
    assert "precision: 2" in text
    schema.write_text(text.replace("precision: 2", "precision: 9", 1))
    local = settings.model_copy(update={"policies_dir": policies})
    result = run(local, "agreements", "check")
    assert result.exit_code != 0
    assert "evaluations.yaml" in result.stdout and "precision" in result.stdout
    assert "0 to 4" in result.stdout
