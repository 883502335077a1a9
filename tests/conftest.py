"""Shared fixtures: every database test runs on SQLite, and on PostgreSQL too
when GATEWAY_TEST_DATABASE_URL is set (CI sets it)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import create_engine, text

from gateway import audit
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.ingest import upload_extract
from gateway.release import decide, noise
from gateway.release.plan import Plan
from gateway.synthetic import generate_agreement_extracts

REPO = Path(__file__).resolve().parent.parent
AGREEMENTS_DIR = REPO / "agreements"
POLICIES_DIR = REPO / "policies"
POSTGRES_URL = os.environ.get("GATEWAY_TEST_DATABASE_URL")

BACKENDS = ["sqlite"] + (["postgresql"] if POSTGRES_URL else [])


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's GATEWAY_* variables."""
    for name in list(os.environ):
        if name.startswith("GATEWAY_") and name != "GATEWAY_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


def reset_postgres(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        assert POSTGRES_URL is not None
        reset_postgres(POSTGRES_URL)
        return POSTGRES_URL
    return f"sqlite:///{tmp_path / 'data' / 'gateway.db'}"


def make_settings(tmp_path: Path, database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "agreements_dir": AGREEMENTS_DIR,
        "policies_dir": POLICIES_DIR,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return make_settings(tmp_path, database_url)


#: In a test agreement (``roomy_agreements``) one release may spend up to this much: at
#: epsilon 10 a count's noise is below 1 with probability 0.9999, and the publish
#: threshold is a few teachers above the minimum, so tests of what is published and
#: why can reason about the true counts.
ROOMY_EPSILON = "10"


def roomy_agreements(tmp_path: Path) -> Path:
    """The example agreements with a per-release cap of epsilon 20 and a budget of 2000
    (and no budget per school year), for tests that need near-exact counts (never for
    tests of the budget's limits)."""
    folder = tmp_path / "roomy-agreements"
    folder.mkdir(exist_ok=True)
    for source in sorted(AGREEMENTS_DIR.glob("*.yaml")):
        document = yaml.safe_load(source.read_text())
        overrides = document["disclosure"].setdefault("overrides", {})
        overrides["per_release_cap"] = {"epsilon": 20.0}
        overrides["privacy_budget"] = {"epsilon": 2000.0, "delta": 1.0e-4}
        overrides.pop("period_budget", None)  # a year's budget would be below the cap
        (folder / source.name).write_text(yaml.safe_dump(document, sort_keys=False))
    return folder


@pytest.fixture
def gateway(settings: Settings) -> Iterator[Gateway]:
    initialise(settings)
    with Gateway.open(settings) as gw:
        yield gw


def settings_env(settings: Settings) -> dict[str, str]:
    """The same settings as GATEWAY_* variables, for driving the CLI."""
    env = {
        "GATEWAY_DATA_DIR": str(settings.data_dir),
        "GATEWAY_AGREEMENTS_DIR": str(settings.agreements_dir),
        "GATEWAY_POLICIES_DIR": str(settings.policies_dir),
    }
    if settings.database_url:
        env["GATEWAY_DATABASE_URL"] = settings.database_url
    if settings.master_key_file:
        env["GATEWAY_MASTER_KEY_FILE"] = str(settings.master_key_file)
    return env


# --- a small, known extract for release tests ---------------------------------------------

AGREEMENT = "student-teaching-bayview-eastport"
EPP = "bayview-state"
DISTRICT = "eastport-ps"
# Teachers per grade band in 2025: one band under the minimum of 10.
BANDS = {"PK-2": 25, "3-5": 14, "6-8": 3, "9-12": 20}
SCHOOLS = ["S-01", "S-02", "S-03"]


def evaluations_csv(path: Path, *, extra_2024: bool = False) -> tuple[Path, list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    teacher = 100000
    for band, n in BANDS.items():
        for i in range(n):
            teacher += 1
            rating = 3 if i % 5 else 4
            rows.append(
                {
                    "id": teacher,
                    "year": 2025,
                    "band": band,
                    "rating": rating,
                    "school": SCHOOLS[i % 3],
                    "exp": i % 7,
                }
            )
            if extra_2024:
                rows.append(
                    {
                        "id": teacher,
                        "year": 2024,
                        "band": band,
                        "rating": 2,
                        "school": SCHOOLS[i % 3],
                        "exp": i % 7,
                    }
                )
    lines = ["MEPID,SY,Grade Span,Summative Rating,School Code,Yrs Experience"]
    lines += [
        f"{r['id']},{r['year']},{r['band']},{r['rating']},{r['school']},{r['exp']}" for r in rows
    ]
    path.write_text("\n".join(lines) + "\n")
    return path, rows


def _load_evaluations(gw: Gateway, folder: Path) -> tuple[Gateway, list[dict[str, Any]]]:
    """The district uploads the small known extract; its rows, for the tests' counts."""
    path, rows = evaluations_csv(folder / "evaluations.csv")
    upload_extract(
        gw,
        agreement_id=AGREEMENT,
        party=DISTRICT,
        dataset="evaluations",
        path=path,
        actor=audit.Actor(role="uploader", party=DISTRICT),
    )
    return gw, rows


@pytest.fixture
def loaded(gateway: Gateway, tmp_path: Path) -> tuple[Gateway, list[dict[str, Any]]]:
    return _load_evaluations(gateway, tmp_path)


@pytest.fixture
def roomy(tmp_path: Path, database_url: str) -> Iterator[Gateway]:
    """A gateway over ``roomy_agreements``: near-exact counts at epsilon 10."""
    settings = make_settings(tmp_path, database_url, agreements_dir=roomy_agreements(tmp_path))
    initialise(settings)
    with Gateway.open(settings) as gw:
        yield gw


@pytest.fixture
def roomy_loaded(roomy: Gateway, tmp_path: Path) -> tuple[Gateway, list[dict[str, Any]]]:
    return _load_evaluations(roomy, tmp_path)


# --- bearer tokens for API tests ------------------------------------------------------------


def upload_generated(
    gw: Gateway, agreement_id: str, folder: Path, *, seed: int, scale: float = 1.0
) -> None:
    """Generate every dataset of an agreement (gateway.synthetic) and upload each one
    as the party that provides it."""
    for extract in generate_agreement_extracts(
        gw.agreement(agreement_id), gw.registry.schemas, folder, seed=seed, scale=scale
    ):
        upload_extract(
            gw,
            agreement_id=agreement_id,
            party=extract.party,
            dataset=extract.dataset,
            path=extract.path,
            actor=audit.Actor(role="uploader", party=extract.party),
        )


def issue_token(
    settings: Settings,
    *,
    role: str,
    party: str | None,
    agreements: tuple[str, ...] = (AGREEMENT,),
) -> str:
    """A bearer token made the way `gateway tokens create` makes one."""
    from gateway import credentials

    with (
        Gateway.open(settings, checkpoint=False) as gw,
        gw.sessions() as session,
        session.begin(),
    ):
        issued = credentials.issue(
            session,
            master_key=gw.master_key,
            registry=gw.registry,
            agreement_ids=agreements,
            role=role,
            party=party,
            expires=None,
            actor=audit.OPERATOR,
        )
    return issued.token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def uploader(settings: Settings, party: str = DISTRICT) -> dict[str, str]:
    """Authorization headers of a new uploader token of ``party`` (default: the district)."""
    return bearer(issue_token(settings, role="uploader", party=party))


def analyst(settings: Settings, party: str = EPP) -> dict[str, str]:
    return bearer(issue_token(settings, role="analyst", party=party))


def reviewer(settings: Settings, agreements: tuple[str, ...] = (AGREEMENT,)) -> dict[str, str]:
    return bearer(issue_token(settings, role="reviewer", party=None, agreements=agreements))


def count_plan(epsilon: str, dimensions: list[str], **extra: Any) -> Plan:
    """A plan of counts over public keys, one group per teacher, the standard profile's
    minimum (10) and floor delta, with its publish threshold set (tests of decisions)."""
    plan = Plan(
        epsilon=Decimal(epsilon),
        selection_delta=Decimal(0),
        floor_delta=Decimal("1e-9"),
        groups_per_teacher=extra.pop("groups_per_teacher", 1),
        dimensions=dimensions,
        public_positions=list(range(len(dimensions))),
        private_positions=[],
        public_combinations=[],
        minimum=extra.pop("minimum", 10),
        students_per_teacher=1,
        counts=noise.integer_noise(1, Decimal(epsilon)),
        **extra,
    )
    plan.threshold = decide.publish_threshold(plan, None)
    return plan
