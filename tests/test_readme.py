"""The README's own command sequence, end to end, as a new user runs it.

The commands and the query are read from README.md itself (the "Your first gateway"
section), so the README cannot drift from what works: each command runs as a
subprocess of the installed ``gateway`` command, in a fresh empty folder holding only
the demo's extracts (made by the demo's generator, as ``make run`` makes them), and
each step's visible result is checked.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.agreements import load_registry
from gateway_synthetic import generate_agreement_extracts
from tests.conftest import AGREEMENTS_DIR, POLICIES_DIR

README = Path(__file__).resolve().parent.parent / "README.md"
SECTION = "## Your first gateway"
GATEWAY = Path(sys.executable).parent / "gateway"


def section() -> str:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no {SECTION!r} section"
    return text.split(SECTION, 1)[1].split("\n## ", 1)[0]


def readme_commands() -> list[list[str]]:
    """The section's shell block, one command per entry (continuation lines joined)."""
    block = re.search(r"```sh\n(.*?)```", section(), re.S)
    assert block is not None
    joined = block[1].replace("\\\n", " ")
    commands = [shlex.split(line, comments=True) for line in joined.splitlines()]
    return [words for words in commands if words]


def readme_query() -> dict[str, object]:
    block = re.search(r"```json\n(.*?)```", section(), re.S)
    assert block is not None
    query: dict[str, object] = json.loads(block[1])
    return query


def option(words: list[str], name: str) -> str:
    return words[words.index(name) + 1]


def test_the_readme_uploads_every_dataset_before_asking_about_it() -> None:
    """A release over a dataset with no upload is refused: the README's order must
    upload first (it once released before the completers were uploaded)."""
    uploaded: set[str] = set()
    query = readme_query()
    releases = 0
    for words in readme_commands():
        assert words[0] == ".venv/bin/gateway", words
        if words[1] == "upload":
            uploaded.add(option(words, "--dataset"))
        if words[1] == "release":
            releases += 1
            assert option(words, "--query") == "query.json"
            missing = set(query["datasets"]) - uploaded  # type: ignore[arg-type]
            assert not missing, f"the README releases before uploading {sorted(missing)}"
    assert releases == 2  # the preview, then the release


def test_the_readme_sequence_works_end_to_end_in_a_fresh_folder(tmp_path: Path) -> None:
    folder = tmp_path / "fresh"
    folder.mkdir()
    # What `make run` leaves in demo/extracts/ (smaller, for speed).
    registry = load_registry(AGREEMENTS_DIR, POLICIES_DIR)
    agreement_ids = {
        option(words, "--agreement") for words in readme_commands() if "--agreement" in words
    }
    assert len(agreement_ids) == 1
    (agreement_id,) = agreement_ids
    generate_agreement_extracts(
        registry.agreement(agreement_id),
        registry.schemas,
        folder / "demo" / "extracts",
        seed=2026,
        scale=0.5,
    )
    (folder / "query.json").write_text(json.dumps(readme_query()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}

    def run(words: list[str]) -> str:
        process = subprocess.run(
            [str(GATEWAY), *words[1:]],
            cwd=folder,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert process.returncode == 0, f"{shlex.join(words)}: {process.stderr}"
        return process.stdout

    seen: list[str] = []
    for words in readme_commands():
        out = run(words)
        step = " ".join(words[1:3]) if words[1] in ("agreements", "audit") else words[1]
        if "--dry-run" in words:
            step = "preview"
        seen.append(step)
        lines = out.splitlines()
        if step == "init":
            assert lines[0].startswith("copied the example agreements to agreements/")
            assert f"agreement:    {agreement_id} (loaded)" in lines
            assert (folder / "gateway-data" / "keys" / "master.key").is_file()
        elif step == "agreements list":
            assert any(line.startswith(agreement_id) for line in lines)
        elif step == "upload":
            dataset = option(words, "--dataset")
            assert re.fullmatch(r"upload [0-9a-f-]{36}: accepted", lines[0]), lines[0]
            assert lines[1].startswith(f"  {dataset} from {option(words, '--party')}: ")
            assert any("(direct identifier)" in line for line in lines)  # names dropped
        elif step == "preview":
            assert lines[0] == "preview: epsilon 0.5, delta 1e-09; budget remaining 3.0 (fits)"
        elif step == "release":
            assert re.fullmatch(r"release [0-9a-f-]{36}", lines[0]), lines[0]
            cells = [line for line in lines if line.startswith("  program_code=")]
            assert cells and all(
                re.fullmatch(
                    r"  program_code=\w+: (\d+  \(95% interval \d+ to \d+\)|suppressed .*)", c
                )
                for c in cells
            ), cells
            assert lines[-1].startswith(
                "epsilon spent 0.5, delta spent 1e-09, budget remaining 2.5"
            )
        elif step == "budget":
            assert (
                lines[0] == f"agreement {agreement_id}: epsilon total 3.0, spent 0.5, remaining 2.5"
            )
        elif step == "audit verify":
            assert lines[0].startswith("ok: ") and " event(s) verified" in lines[0]
        elif step == "audit export":
            assert lines[0].startswith("exported ")
            assert (folder / option(words, "--out") / "manifest.json").is_file()
        else:
            pytest.fail(f"the README runs a step this test does not check: {shlex.join(words)}")
    assert seen == [
        "init",
        "agreements list",
        "upload",
        "upload",
        "preview",
        "release",
        "budget",
        "audit verify",
        "audit export",
    ]
    # The bundle verifies offline, as the README tells reviewers.
    bundle = option(readme_commands()[-1], "--out")
    assert run([".venv/bin/gateway", "audit", "verify", "--bundle", bundle]).startswith("ok: ")


def planned(target: str, tmp_path: Path) -> list[str]:
    """What `make TARGET` would run on a fresh machine (make -n, a venv not yet made)."""
    process = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}"],
        cwd=README.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return [line for line in process.stdout.splitlines() if " -m pip install " in line]


def test_make_run_installs_only_what_the_demo_needs(tmp_path: Path) -> None:
    """The demo installs the gateway and its data generator, without the dev tools or
    PostgreSQL's driver, and lets pip show its progress; the tests install both."""
    run = planned("run", tmp_path)
    assert run[-1].endswith("pip install -e . -e ./synthetic"), run
    assert not any("--quiet" in line or "[" in line for line in run[1:]), run
    test = planned("test", tmp_path)
    assert test[-1].endswith("pip install -e '.[dev,postgres]' -e ./synthetic"), test
