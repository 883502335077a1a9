"""Start-up cost: a command loads the heavy libraries only when it needs them.

``gateway --help`` and ``--version`` must stay close to a bare click command (issue
14), so importing :mod:`gateway.cli` loads none of the database stack, Arrow, pandas,
numpy, SciPy or OpenDP, nor pydantic and YAML (settings and agreements are read by
the commands that use them). Each check runs in a fresh interpreter: this one has
everything loaded already. bench/bench_cli.py measures what the commands cost.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway import __version__
from gateway.cli import main
from gateway.config import Settings
from gateway.context import initialise
from tests.conftest import AGREEMENT, EPP, settings_env

#: What the issue names, and cryptography (keys, the audit log's signatures).
HEAVY = {"sqlalchemy", "alembic", "pandas", "pyarrow", "numpy", "scipy", "opendp", "cryptography"}
#: Only the commands that read settings or agreements load these.
START_UP = HEAVY | {"pydantic", "pydantic_settings", "yaml"}

# Runs the command line as `gateway ARGS...`, then prints the top-level packages loaded
# and how many objects the command froze for the shutdown, as the last line of stderr.
PROBE = """
import gc, json, sys
from gateway.cli import main
try:
    main(sys.argv[1:], prog_name="gateway")
except SystemExit:
    pass
packages = sorted({name.split(".")[0] for name in sys.modules})
print(json.dumps([packages, gc.get_freeze_count()]), file=sys.stderr)
"""


def run_probe(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[set[str], int]:
    """The top-level packages a fresh interpreter holds after ``gateway ARGS``, and the
    number of objects frozen (left out of the shutdown's garbage collections)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=cwd,  # no .env here
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    packages, frozen = json.loads(result.stderr.strip().splitlines()[-1])
    return set(packages), frozen


def loaded_packages(*args: str, cwd: Path, env: dict[str, str] | None = None) -> set[str]:
    """The top-level packages a fresh interpreter holds after ``gateway ARGS``."""
    return run_probe(*args, cwd=cwd, env=env)[0]


def test_importing_the_cli_loads_no_heavy_library(tmp_path: Path) -> None:
    code = "import json, sys, gateway.cli; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    packages = {name.split(".")[0] for name in json.loads(result.stdout)}
    assert "click" in packages  # the probe sees what was imported
    assert packages.isdisjoint(START_UP), sorted(packages & START_UP)


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--version"], ["agreements", "--help"], ["release", "--help"]],
    ids=" ".join,
)
def test_help_and_version_load_no_heavy_library(args: list[str], tmp_path: Path) -> None:
    packages = loaded_packages(*args, cwd=tmp_path)
    assert packages.isdisjoint(START_UP), sorted(packages & START_UP)


def test_agreements_list_reads_yaml_with_pydantic_only(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    env = {
        "GATEWAY_AGREEMENTS_DIR": str(repo / "agreements"),
        "GATEWAY_POLICIES_DIR": str(repo / "policies"),
        "GATEWAY_DATA_DIR": str(tmp_path / "data"),
    }
    packages = loaded_packages("agreements", "list", cwd=tmp_path, env=env)
    assert {"pydantic", "yaml"} <= packages
    assert packages.isdisjoint(HEAVY), sorted(packages & HEAVY)


def test_a_dry_run_loads_only_what_a_preview_needs(settings: Settings, tmp_path: Path) -> None:
    """A preview plans and calibrates (SQLAlchemy, OpenDP and its numpy) but measures
    nothing: pandas, SciPy and Arrow load only when a release is computed (its data
    version comes from stored digests). Opening the gateway checks the schema revision
    without Alembic (and its Mako), which only migrates."""
    initialise(settings)
    query = tmp_path / "query.json"
    query.write_text(
        json.dumps(
            {
                "datasets": ["completers", "evaluations"],
                "measure": {"kind": "count"},
                "group_by": ["program_code"],
                "epsilon": 0.5,
            }
        )
    )
    args = ("release", "--agreement", AGREEMENT, "--party", EPP, "--query", str(query))
    packages = loaded_packages(*args, "--dry-run", cwd=tmp_path, env=settings_env(settings))
    assert {"sqlalchemy", "opendp"} <= packages  # it did open the database and calibrate
    unused = {"pandas", "scipy", "pyarrow", "alembic", "mako"}
    assert packages.isdisjoint(unused), sorted(packages & unused)


def test_a_command_freezes_its_objects_before_the_process_ends(tmp_path: Path) -> None:
    """The ``gateway`` entry point leaves what the libraries made out of the shutdown's
    garbage collections (issue 14: they cost a fifth of a release's CPU)."""
    _, frozen = run_probe("--version", cwd=tmp_path)
    assert frozen > 1000


def test_a_command_run_in_process_freezes_nothing() -> None:
    """Tests run commands with click's runner, in one long process: nothing is frozen
    there, or every test's garbage would stay until the session ends."""
    before = gc.get_freeze_count()
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    assert gc.get_freeze_count() == before
