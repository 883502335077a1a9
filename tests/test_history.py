"""gateway/storage/history.py: an agreement's uploads and releases, newest first, of one
party (uploads) or for one recipient (releases), on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway import audit
from gateway.context import Gateway
from gateway.ingest import UploadRefused, upload_extract
from gateway.release.engine import request_release
from gateway.release.query import parse_query
from gateway.storage.history import release_history, upload_history
from tests.conftest import AGREEMENT, DISTRICT, EPP


def test_uploads_and_releases_newest_first_for_whom_they_concern(
    loaded: tuple[Gateway, list[dict[str, Any]]], tmp_path: Path
) -> None:
    gw, _ = loaded
    refused = tmp_path / "completers.csv"
    refused.write_text("MEPID,Program\n")  # a header and no rows: refused
    with pytest.raises(UploadRefused):
        upload_extract(
            gw,
            agreement_id=AGREEMENT,
            party=EPP,
            dataset="completers",
            path=refused,
            actor=audit.Actor(role="uploader", party=EPP),
        )
    released = request_release(
        gw,
        agreement_id=AGREEMENT,
        party=EPP,
        query=parse_query(
            {
                "datasets": ["evaluations"],
                "measure": {"kind": "count"},
                "group_by": ["grade_band"],
                "epsilon": "0.5",
            }
        ),
        actor=audit.Actor(role="analyst", party=EPP),
    ).to_json()
    with gw.sessions() as session:
        everyone = upload_history(session, AGREEMENT)
        district = upload_history(session, AGREEMENT, party=DISTRICT)
        epp = upload_history(session, AGREEMENT, party=EPP)
        releases = release_history(session, AGREEMENT)
        received = release_history(session, AGREEMENT, recipient=EPP)
        elsewhere = release_history(session, "calibration-lakeshore-riverbend")
    # The EPP's refused upload came last, so it is listed first.
    assert [(u.party, u.dataset, u.status) for u in everyone] == [
        (EPP, "completers", "refused"),
        (DISTRICT, "evaluations", "accepted"),
    ]
    assert [u.party for u in district] == [DISTRICT] and district[0].rows_accepted > 0
    assert [u.status for u in epp] == ["refused"]
    assert [r.release_id for r in releases] == [released["release_id"]]
    entry = received[0]
    assert entry.release_id == released["release_id"] and EPP in entry.recipients
    assert entry.query["measure"] == {"kind": "count"} and entry.epsilon_units > 0
    # A party that is not among the release's recipients does not see it.
    outsiders = [p for p in (DISTRICT, "someone-else") if p not in entry.recipients]
    with gw.sessions() as session:
        for party in outsiders:
            assert release_history(session, AGREEMENT, recipient=party) == []
    assert elsewhere == []
