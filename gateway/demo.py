"""``gateway demo``: the whole flow on generated data, in a throwaway folder.

The demo never touches the operator's data folder or key: it makes its own
data folder (DIR/data/, with its own master key) and its own extracts
(DIR/extracts/).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import audit
from gateway.config import Settings, load_settings
from gateway.context import Gateway, initialise

Echo = Callable[[str], None] | None


def demo_settings(directory: Path, base: Settings | None = None) -> Settings:
    """Settings pointing everything but the agreement and policy folders at ``directory``."""
    base = base or load_settings()
    data_dir = (directory / "data").resolve()
    return base.model_copy(
        update={
            "data_dir": data_dir,
            "database_url": None,
            "master_key_file": data_dir / "keys" / "master.key",
        }
    )


def run_demo(directory: Path, *, echo: Echo = print) -> dict[str, Any]:
    """Initialise a fresh gateway in ``directory`` and run the flow; return a summary."""
    say = echo or (lambda _line: None)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "extracts").mkdir(exist_ok=True)
    settings = demo_settings(directory)
    say(f"Demo gateway in {directory.resolve()}")
    init = initialise(settings)
    say(f"  data folder {init['data_dir']} (throwaway master key inside)")
    with Gateway.open(settings) as gw:
        say(f"Loaded {len(gw.registry.agreements)} agreements:")
        for agreement in sorted(gw.registry.agreements.values(), key=lambda a: a.id):
            parties = " + ".join(p.name for p in agreement.parties)
            say(f"  {agreement.id}: {agreement.title} ({parties})")
        with gw.sessions() as session:
            verification = audit.verify_chain(session)
    say(
        f"Audit log: {verification.events_checked} events, "
        f"{'verified' if verification.ok else 'BROKEN'}"
    )
    return {
        "directory": str(directory.resolve()),
        "agreements": sorted(init["agreements"]),
        "audit": verification.to_dict(),
    }
