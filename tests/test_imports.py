"""Start-up cost: a command loads the heavy libraries only when it needs them.

``gateway --help`` and ``--version`` must stay close to a bare click command (issue
14), so importing :mod:`gateway.cli` loads none of the database stack, Arrow, pandas,
numpy, SciPy or OpenDP, nor pydantic and YAML (settings and agreements are read by
the commands that use them). Each check runs in a fresh interpreter: this one has
everything loaded already. bench/bench_cli.py measures what the commands cost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.context import initialise
from tests.conftest import AGREEMENT, EPP, settings_env

#: What the issue names, and cryptography (keys, the audit log's signatures).
HEAVY = {"sqlalchemy", "alembic", "pandas", "pyarrow", "numpy", "scipy", "opendp", "cryptography"}
#: Only the commands that read settings or agreements load these.
START_UP = HEAVY | {"pydantic", "pydantic_settings", "yaml"}

# Runs the command line as `gateway ARGS...`, then prints the top-level packages loaded
# as the last line of stderr.
PROBE = """
import json, sys
from gateway.cli import main
try:
    main(sys.argv[1:], prog_name="gateway")
except SystemExit:
    pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})), file=sys.stderr)
"""


def loaded_packages(*args: str, cwd: Path, env: dict[str, str] | None = None) -> set[str]:
    """The top-level packages a fresh interpreter holds after ``gateway ARGS``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=cwd,  # no .env here
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return set(json.loads(result.stderr.strip().splitlines()[-1]))


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


def test_a_dry_run_loads_neither_pandas_nor_scipy(settings: Settings, tmp_path: Path) -> None:
    """A preview plans and calibrates (SQLAlchemy, OpenDP and its numpy) but measures
    nothing: pandas and SciPy load only when a release is computed."""
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
    assert packages.isdisjoint({"pandas", "scipy"}), sorted(packages & {"pandas", "scipy"})
