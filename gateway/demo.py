"""``gateway demo``: the whole flow on generated data, in a throwaway folder.

The demo never touches the operator's data folder or key: it makes its own
data folder (DIR/data/, with its own master key) and its own synthetic
extracts (DIR/extracts/), then uploads every party's extracts to every
example agreement and verifies the audit log.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway import audit
from gateway.config import Settings, load_settings
from gateway.context import Gateway, initialise
from gateway.ingest import UploadRefused, upload_extract
from gateway.synthetic import generate_agreement_extracts

Echo = Callable[[str], None]


def demo_settings(directory: Path, base: Settings | None = None) -> Settings:
    """Settings pointing everything but the agreement and policy folders at ``directory``."""
    base = base or load_settings()
    data_dir = (directory / "data").resolve()
    return base.model_copy(
        update={
            "data_dir": data_dir,
            "database_url": None,
            "master_key_file": data_dir / "keys" / "master.key",
            # Never the operator's signing key: the demo signs its own throwaway log.
            "signing_key_file": data_dir / "keys" / "signing.key",
        }
    )


def _gateway_command() -> str:
    """How to run ``gateway`` again from here (it may live in .venv/bin, not on PATH)."""
    script = Path(sys.argv[0])
    if script.name == "gateway" and script.exists():
        found = shutil.which("gateway")
        if found and Path(found).resolve() == script.resolve():
            return "gateway"
        return os.path.relpath(script.resolve()) if script.is_absolute() else str(script)
    return "gateway"


def run_demo(directory: Path, *, echo: Echo | None = print, seed: int = 2026) -> dict[str, Any]:
    """Initialise a fresh gateway in ``directory``, upload generated extracts; summarise."""
    say: Echo = echo or (lambda _line: None)
    directory.mkdir(parents=True, exist_ok=True)
    # A demo run starts clean: an earlier run's data folder and extracts are replaced.
    for stale in (directory / "data", directory / "extracts"):
        if stale.exists():
            shutil.rmtree(stale)
    settings = demo_settings(directory)
    say(f"Demo gateway in {directory.resolve()}")
    init = initialise(settings)
    say(f"  data folder {init['data_dir']} (with its own throwaway master key)")
    uploads: list[dict[str, Any]] = []
    with Gateway.open(settings) as gw:
        agreements = sorted(gw.registry.agreements.values(), key=lambda a: a.id)
        say(f"\nLoaded {len(agreements)} example agreements:")
        for agreement in agreements:
            parties = " + ".join(p.name for p in agreement.parties)
            say(f"  {agreement.id}: {parties}")
        say(f"\nGenerated extracts in {(directory / 'extracts').resolve()}; uploading:")
        for agreement in agreements:
            extracts = generate_agreement_extracts(
                agreement, gw.registry.schemas, directory / "extracts", seed=seed
            )
            say(f"  {agreement.id}")
            for extract in extracts:
                actor = audit.Actor(role="uploader", party=extract.party)
                try:
                    receipt = upload_extract(
                        gw,
                        agreement_id=agreement.id,
                        party=extract.party,
                        dataset=extract.dataset,
                        path=extract.path,
                        actor=actor,
                    )
                except UploadRefused as refused:
                    receipt = refused.receipt
                rows = receipt["rows"]
                dropped = ", ".join(
                    f"{d['header']} ({d['reason']})" for d in receipt["columns"]["dropped"]
                )
                say(
                    f"    {extract.dataset:<22} {extract.path.suffix[1:]:<8} from "
                    f"{extract.party:<20} {receipt['status']}: {rows['accepted']:>6} rows"
                    + (f"; dropped {dropped}" if dropped else "")
                )
                uploads.append(
                    {
                        "agreement": agreement.id,
                        "dataset": extract.dataset,
                        "party": extract.party,
                        "file": str(extract.path),
                        "status": receipt["status"],
                        "rows": rows,
                    }
                )
        with gw.sessions() as session:
            verification = audit.verify_chain(session)
    say(
        f"\nAudit log: {verification.events_checked} events, "
        f"{'chain verified' if verification.ok else 'BROKEN'}"
    )
    command = _gateway_command()
    say(
        "Look around with, for example:\n"
        f"  GATEWAY_DATA_DIR={settings.data_dir} {command} audit list\n"
        f"  GATEWAY_DATA_DIR={settings.data_dir} {command} agreements show "
        f"{agreements[0].id if agreements else 'ID'}"
    )
    return {
        "directory": str(directory.resolve()),
        "agreements": [a.id for a in agreements],
        "uploads": uploads,
        "audit": verification.to_dict(),
    }
