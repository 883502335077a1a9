"""No acknowledged action lacks its audit event, wherever the process is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gateway import audit
from gateway.config import Settings
from gateway.context import Gateway, initialise
from tests.conftest import AGREEMENT, DISTRICT, EPP, evaluations_csv

REPO = Path(__file__).resolve().parent.parent

WORKER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from gateway import audit
    from gateway.config import Settings
    from gateway.context import Gateway
    from gateway.ingest import upload_extract
    from gateway.release.engine import request_release
    from gateway.release.query import parse_query

    settings = Settings.model_validate_json(Path(sys.argv[1]).read_text())
    extract = Path(sys.argv[2])
    with Gateway.open(settings) as gw:
        print("started", flush=True)
        for i in range(1000):
            if i % 2 == 0:
                receipt = upload_extract(gw, agreement_id=sys.argv[3], party=sys.argv[4],
                                         dataset="evaluations", path=extract,
                                         actor=audit.Actor(role="uploader"))
                # Acknowledged only once the function returned, so after the commit.
                print("upload", receipt["upload_id"], flush=True)
            else:
                # A different table each time (another year beside 2025): never a repeat.
                other = [y for y in range(2000, 2101) if y != 2025][(i // 2) % 100]
                query = parse_query({"datasets": ["evaluations"], "measure": {"kind": "count"},
                                     "epsilon": "0.01", "filters": [{"field": "school_year",
                                     "op": "in", "value": [2025, other]}]})
                body = request_release(gw, agreement_id=sys.argv[3], party=sys.argv[5],
                                       query=query, actor=audit.Actor(role="analyst"))
                print("release", body.release_id, flush=True)
    """
)


@pytest.mark.parametrize("delay", [0.4, 0.9, 1.7, 2.6])
def test_killed_mid_work_every_acknowledged_action_has_its_event(
    settings: Settings, tmp_path: Path, delay: float
) -> None:
    initialise(settings)
    extract, _ = evaluations_csv(tmp_path / "e.csv")
    config = tmp_path / "settings.json"
    config.write_text(settings.model_dump_json())
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with subprocess.Popen(
        [sys.executable, str(script), str(config), str(extract), AGREEMENT, DISTRICT, EPP],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    ) as process:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "started"
        # The delay runs from the first acknowledged action, not from the start: on a
        # loaded machine the first upload alone may take longer than the shortest delay.
        first = process.stdout.readline()
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        rest, _ = process.communicate(timeout=30)
        output = first + rest
    acknowledged = [line.split() for line in output.splitlines() if line.strip()]
    assert acknowledged, "nothing was acknowledged before the kill; raise the delay"
    with Gateway.open(settings, checkpoint=False) as gw, gw.sessions() as session:
        verification = audit.verify_chain(session)
        assert verification.ok, verification.problems
        uploads = {
            audit.event_view(e)["details"]["upload_id"]
            for e in session.scalars(audit.query_events(kind="upload-accepted"))
        }
        releases = {
            audit.event_view(e)["details"]["release_id"]
            for e in session.scalars(audit.query_events(kind="release"))
        }
    for kind, identifier in acknowledged:
        assert identifier in (uploads if kind == "upload" else releases), (kind, identifier)
    if delay > 1:  # long enough for releases too: both kinds were acknowledged
        assert {kind for kind, _ in acknowledged} == {"upload", "release"}
