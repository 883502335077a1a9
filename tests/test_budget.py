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
    import gateway.release.engine as engine

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("the noise source failed")

    monkeypatch.setattr(engine.postprocess, "cells", broken)
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
