"""`gateway upload` shows its progress on a terminal, and nothing anywhere else."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import Settings
from gateway.context import initialise
from tests.conftest import AGREEMENT, DISTRICT, evaluations_csv, settings_env

REPO = Path(__file__).resolve().parent.parent


def _upload(settings: Settings, path: Path, *, terminal: bool, as_json: bool) -> tuple[str, str]:
    """(stdout, stderr) of a `gateway upload`, its stderr a terminal or a pipe."""
    command = [
        sys.executable, "-c", "from gateway.cli import main; main(prog_name='gateway')",
        "upload", "--agreement", AGREEMENT, "--party", DISTRICT, "--dataset", "evaluations",
        str(path), *(["--json"] if as_json else []),
    ]  # fmt: skip
    env = {**os.environ, **settings_env(settings), "TERM": "xterm", "COLUMNS": "160"}
    env.pop("NO_COLOR", None)
    if not terminal:
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        return done.stdout, done.stderr
    leader, follower = pty.openpty()
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=follower) as process:
        os.close(follower)
        drawn = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 60)
            if not ready:
                break
            try:
                block = os.read(leader, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not block:
                break
            drawn += block
        assert process.stdout is not None
        out = process.stdout.read().decode()
    os.close(leader)
    assert process.returncode == 0, drawn
    return out, drawn.decode(errors="replace")


@pytest.fixture
def extract(settings: Settings, tmp_path: Path) -> Path:
    initialise(settings)
    return evaluations_csv(tmp_path / "e.csv")[0]


def test_progress_is_drawn_on_a_terminal(settings: Settings, extract: Path) -> None:
    out, drawn = _upload(settings, extract, terminal=True, as_json=False)
    assert "rows read" in drawn and "rows/s" in drawn
    assert "upload" in out and "accepted" in out  # the receipt still goes to stdout


@pytest.mark.parametrize(("terminal", "as_json"), [(False, False), (True, True)])
def test_nothing_is_drawn_off_a_terminal_or_with_json(
    settings: Settings, extract: Path, terminal: bool, as_json: bool
) -> None:
    out, drawn = _upload(settings, extract, terminal=terminal, as_json=as_json)
    assert drawn == ""
    if as_json:
        assert json.loads(out)["status"] == "accepted"
