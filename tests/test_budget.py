"""The budget can never be overspent: not concurrently, not across processes, never negative."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

from gateway import audit
from gateway.config import Settings
from gateway.context import Gateway
from gateway.release.budget import (
    BudgetExhausted,
    budget_report,
    delta_units,
    epsilon_units,
    from_epsilon_units,
)
from gateway.release.engine import request_release
from gateway.release.query import parse_query
from tests.conftest import AGREEMENT, EPP

REPO = Path(__file__).resolve().parent.parent


def _query(i: int, epsilon: str) -> Any:
    # Distinct queries (a year that has no data each time), so none is a repeat.
    return parse_query(
        {
            "datasets": ["evaluations"],
            "measure": {"kind": "count"},
            "epsilon": epsilon,
            "filters": [{"field": "school_year", "op": "in", "value": [2025, 2000 + i]}],
        }
    )


def _spent(gw: Gateway) -> dict[str, Any]:
    with gw.sessions() as session:
        return budget_report(session, gw.agreement(AGREEMENT))["parties"][EPP]


def test_concurrent_threads_spend_exactly_what_fits(loaded: Any) -> None:
    gw, _ = loaded

    def attempt(i: int) -> str:
        try:
            request_release(
                gw,
                agreement_id=AGREEMENT,
                party=EPP,
                query=_query(i, "0.3"),
                actor=audit.Actor(role="analyst", party=EPP),
            )
            return "ok"
        except BudgetExhausted:
            return "refused"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(attempt, range(16)))
    # The agreement's one pool of 3.0 (no spending limits declared): ten releases of 0.3.
    assert outcomes.count("ok") == 10 and outcomes.count("refused") == 6
    state = _spent(gw)
    assert state["exact"]["spent"] == "3" and state["remaining"] == 0.0
    with gw.sessions() as session:
        assert audit.verify_chain(session).ok


PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from gateway import audit
    from gateway.config import Settings
    from gateway.context import Gateway
    from gateway.release.budget import BudgetExhausted
    from gateway.release.engine import request_release
    from gateway.release.query import parse_query

    settings = Settings.model_validate_json(Path(sys.argv[1]).read_text())
    i = int(sys.argv[2])
    query = parse_query({"datasets": ["evaluations"], "measure": {"kind": "count"},
                         "epsilon": "0.5", "filters": [{"field": "school_year", "op": "in",
                         "value": [2025, 2000 + i]}]})
    with Gateway.open(settings) as gw:
        try:
            request_release(gw, agreement_id=sys.argv[3], party=sys.argv[4], query=query,
                            actor=audit.Actor(role="analyst", party=sys.argv[4]))
            print("ok")
        except BudgetExhausted:
            print("refused")
    """
)


def test_concurrent_processes_spend_exactly_what_fits(
    loaded: Any,
    settings: Settings,
    tmp_path: Path,
) -> None:
    gw, _ = loaded
    config = tmp_path / "settings.json"
    config.write_text(settings.model_dump_json())
    script = tmp_path / "release.py"
    script.write_text(PROCESS_SCRIPT)
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    processes = [
        subprocess.Popen(
            [sys.executable, str(script), str(config), str(i), AGREEMENT, EPP],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(8)
    ]
    outcomes = []
    for process in processes:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0
        outcomes.append(out.strip())
    assert outcomes.count("ok") == 6 and outcomes.count("refused") == 2  # 6 x 0.5 = 3
    assert _spent(gw)["exact"]["spent"] == "3"


def test_a_reservation_survives_a_failed_release(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gw, _ = loaded
    from gateway.release import postprocess  # the engine imports it when it measures

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the noise source failed")

    monkeypatch.setattr(postprocess, "cells", broken)
    with pytest.raises(Exception, match="could not be computed"):
        request_release(
            gw,
            agreement_id=AGREEMENT,
            party=EPP,
            query=_query(1, "0.5"),
            actor=audit.Actor(role="analyst", party=EPP),
        )
    assert _spent(gw)["exact"]["spent"] == "0.5"  # never refunded


@hyp_settings(max_examples=200)
@given(st.decimals(min_value=Decimal("1e-12"), max_value=Decimal(10), places=12))
def test_epsilon_units_round_trip_exactly(value: Decimal) -> None:
    assert from_epsilon_units(epsilon_units(value)) == value.normalize()


@given(
    st.lists(st.decimals(min_value=Decimal("0.001"), max_value=Decimal(2), places=3), max_size=40)
)
def test_ledger_arithmetic_never_goes_negative(requests: list[Decimal]) -> None:
    # The same rule reserve() applies: an exact integer comparison, before spending.
    total, spent = epsilon_units(Decimal(3)), 0
    for request in requests:
        want = epsilon_units(request)
        if spent + want <= total:
            spent += want
        assert total - spent >= 0
    assert delta_units(Decimal("1e-18")) == 1
    json.dumps(spent)


def test_a_declared_spending_limit_caps_one_recipient_within_the_pool(
    tmp_path: Path, database_url: str
) -> None:
    import yaml

    from gateway.context import initialise
    from tests.conftest import AGREEMENTS_DIR, DISTRICT, evaluations_csv, make_settings

    folder = tmp_path / "agreements"
    folder.mkdir()
    for source in AGREEMENTS_DIR.glob("*.yaml"):
        document = yaml.safe_load(source.read_text())
        if document["id"] == AGREEMENT:
            document["budget_limits"] = {EPP: {"epsilon": 0.5, "delta": 1.0e-7}}
        (folder / source.name).write_text(yaml.safe_dump(document, sort_keys=False))
    settings = make_settings(tmp_path, database_url, agreements_dir=folder)
    initialise(settings)
    path, _ = evaluations_csv(tmp_path / "e.csv")
    with Gateway.open(settings) as gw:
        from gateway.ingest import upload_extract

        upload_extract(
            gw,
            agreement_id=AGREEMENT,
            party=DISTRICT,
            dataset="evaluations",
            path=path,
            actor=audit.Actor(role="uploader"),
        )

        def ask(party: str, i: int) -> None:
            request_release(
                gw,
                agreement_id=AGREEMENT,
                party=party,
                query=_query(i, "0.3"),
                actor=audit.Actor(role="analyst", party=party),
            )

        ask(EPP, 1)
        with pytest.raises(BudgetExhausted, match=r"may spend epsilon 0\.2 and"):
            ask(EPP, 2)  # 0.3 + 0.3 > the limit of 0.5
        for i in range(3, 3 + 9):
            ask(DISTRICT, i)  # the district may spend the rest of the pool: 2.7
        with pytest.raises(BudgetExhausted):
            ask(DISTRICT, 20)
        with gw.sessions() as session:
            report = budget_report(session, gw.agreement(AGREEMENT))
    assert report["exact"]["spent"] == "3" and report["remaining"] == 0
    assert report["parties"][EPP]["total"] == 0.5 and report["parties"][EPP]["spent"] == 0.3
    assert report["parties"][DISTRICT]["exact"]["spent"] == "2.7"


def test_a_limit_for_a_party_that_receives_nothing_is_named_by_the_check(tmp_path: Path) -> None:
    import yaml

    from gateway.agreements.loader import load_registry
    from gateway.errors import GatewayError
    from tests.conftest import AGREEMENTS_DIR, POLICIES_DIR

    folder = tmp_path / "agreements"
    folder.mkdir()
    source = AGREEMENTS_DIR / f"{AGREEMENT}.yaml"
    document = yaml.safe_load(source.read_text())
    document["budget_limits"] = {
        "nobody": {"epsilon": 0.5, "delta": 1.0e-7},
        EPP: {"epsilon": 30, "delta": 1.0e-7},
    }
    (folder / source.name).write_text(yaml.safe_dump(document, sort_keys=False))
    with pytest.raises(GatewayError) as refused:
        load_registry(folder, POLICIES_DIR)
    text = str(refused.value) + json.dumps(getattr(refused.value, "details", []))
    assert "budget_limits" in text and "'nobody' receives no releases" in text
    assert "exceeds the agreement's privacy_budget epsilon" in text


def test_a_release_taken_over_while_slow_is_never_shown(
    loaded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pending release taken for dead (publish.STALE_AFTER) and drawn again by another
    request must not also be shown: the slow one is refused when it comes to record."""
    from sqlalchemy import update

    from gateway.release import postprocess
    from gateway.storage.releases import Release as ReleaseRow

    gw, _ = loaded
    real = postprocess.cells

    def taken_over(*args: Any, **kwargs: Any) -> Any:
        with gw.sessions() as session, session.begin():
            session.execute(
                update(ReleaseRow)
                .where(ReleaseRow.status == "pending")
                .values(status="failed", repeat_key=None)
            )
        return real(*args, **kwargs)

    monkeypatch.setattr(postprocess, "cells", taken_over)
    with pytest.raises(Exception, match="another request made it"):
        request_release(
            gw,
            agreement_id=AGREEMENT,
            party=EPP,
            query=_query(1, "0.5"),
            actor=audit.Actor(role="analyst", party=EPP),
        )
    with gw.sessions() as session:
        assert list(session.scalars(audit.query_events(kind="release"))) == []
