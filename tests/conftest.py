"""Shared fixtures: every database test runs on SQLite, and on PostgreSQL too
when GATEWAY_TEST_DATABASE_URL is set (CI sets it)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from gateway import audit
from gateway.config import Settings
from gateway.context import Gateway, initialise
from gateway.ingest import upload_extract
from gateway.release import decide, noise
from gateway.release.plan import Plan
from gateway.storage import db
from gateway_synthetic import generate_agreement_extracts

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


# --- one migrated template per backend, a copy of it per test -------------------------------
#
# Migrating an empty database through every revision costs more than most tests, so each
# session (each pytest-xdist worker) migrates one template per backend, once, and every
# database test starts from a copy of it: a file copy on SQLite, CREATE DATABASE ... TEMPLATE
# on PostgreSQL. Only the schema is shared: the test's own `initialise` still makes its keys,
# its audit chain, its agreements and their budgets, exactly as on a fresh database (the
# migrations write no rows into an empty database). A test that needs a database with no
# schema at all (first-time `init`, "not initialised" refusals) is marked `empty_database`.

#: The pytest-xdist worker ("gw0", ...), or "main" without xdist: names of databases and
#: templates carry it, so workers (and runs against another configured database) never share.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


def _migrate(url: str) -> None:
    engine = db.make_engine(url)
    try:
        db.upgrade_to_head(engine)
    finally:
        engine.dispose()  # no connection may stay open: PostgreSQL copies only an idle template


class PostgresDatabases:
    """Each test's PostgreSQL databases: copies of one migrated template, dropped after the
    test. Names derive from the configured database (GATEWAY_TEST_DATABASE_URL) and the
    worker: ``<name>_<worker>_template`` and ``<name>_<worker>_<n>`` (with the process id
    after the worker while another run holds those names); the configured database itself
    only carries the CREATE and DROP statements.

    Copying the template (8 MB, mostly the system catalogs) and dropping a copy (which
    waits for a checkpoint) each take 0.05 to 0.5 s, mostly waiting on the disk: a
    background thread does both, keeping ``READY`` copies made ahead of the tests."""

    READY = 2

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        configured = self.url.database
        assert configured, "GATEWAY_TEST_DATABASE_URL names no database"
        # PostgreSQL cuts names at 63 bytes: keep room for the worker, a pid and a counter.
        self.prefix = f"{configured[:40]}_{WORKER}".lower()
        self._numbers = itertools.count()
        self.admin: Engine = create_engine(url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
        # Held for the session: a second run on the same configured database and worker
        # finds it taken and keeps to names of its own instead of dropping this run's.
        self._lock = self.admin.connect()
        owner = self._lock.scalar(
            text("SELECT pg_try_advisory_lock(hashtext(:name))"), {"name": self.prefix}
        )
        if owner:
            self._drop_leftovers()
        else:
            self.prefix = f"{self.prefix}_{os.getpid()}"
        self.template = f"{self.prefix}_template"
        self._execute(f"CREATE DATABASE {self._quote(self.template)} TEMPLATE template0")
        _migrate(self.url_of(self.template))
        # Nobody connects to the template again, so every copy of it succeeds.
        self._execute(f"ALTER DATABASE {self._quote(self.template)} ALLOW_CONNECTIONS false")
        # One thread, so copies and drops never run into each other.
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="test-databases")
        self._ready: deque[Future[str]] = deque()
        self._drops: list[Future[None]] = []
        self._top_up()

    def url_of(self, name: str) -> str:
        return self.url.set(database=name).render_as_string(hide_password=False)

    def create(self, *, empty: bool = False) -> str:
        """A new database, migrated to head (a copy of the template) or ``empty``."""
        if empty:
            return self.url_of(self._copy("template0"))
        name = self._ready.popleft().result()
        self._top_up()
        return self.url_of(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        assert name is not None
        # FORCE: a connection a test left open (a server thread, a leaked engine) is ended.
        statement = f"DROP DATABASE IF EXISTS {self._quote(name)} WITH (FORCE)"
        self._drops.append(self._worker.submit(self._execute, statement))

    def close(self) -> None:
        unused = [made.result() for made in self._ready]
        self._worker.shutdown(wait=True)
        for dropped in self._drops:
            dropped.result()  # a drop that failed fails the session
        for name in [*unused, self.template]:
            self._execute(f"DROP DATABASE IF EXISTS {self._quote(name)} WITH (FORCE)")
        self._lock.close()
        self.admin.dispose()

    def _top_up(self) -> None:
        while len(self._ready) < self.READY:
            self._ready.append(self._worker.submit(self._copy, self._quote(self.template)))

    def _copy(self, template: str) -> str:
        name = f"{self.prefix}_{next(self._numbers)}"
        self._execute(f"CREATE DATABASE {self._quote(name)} TEMPLATE {template}")
        return name

    def _drop_leftovers(self) -> None:
        """Databases of this worker that an interrupted run left behind."""
        own = re.compile(rf"{re.escape(self.prefix)}_(template|\d+)")
        with self.admin.connect() as connection:
            names = connection.execute(text("SELECT datname FROM pg_database")).scalars().all()
        for name in names:
            if own.fullmatch(name):
                self._execute(f"DROP DATABASE {self._quote(name)} WITH (FORCE)")

    def _quote(self, name: str) -> str:
        return self.admin.dialect.identifier_preparer.quote(name)

    def _execute(self, statement: str) -> None:
        with self.admin.connect() as connection:
            connection.execute(text(statement))


class DatabaseTemplates:
    """The session's templates, each made on first use (an SQLite-only run, or a run of
    tests that need no database, never migrates a PostgreSQL one)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sqlite: Path | None = None
        self._postgres: PostgresDatabases | None = None

    @property
    def sqlite(self) -> Path:
        if self._sqlite is None:
            path = self.folder / "template.db"
            _migrate(f"sqlite:///{path}")
            # Closing the last connection folds the WAL into the file: one file to copy.
            assert not path.with_name(path.name + "-wal").exists()
            self._sqlite = path
        return self._sqlite

    @property
    def postgres(self) -> PostgresDatabases:
        if self._postgres is None:
            assert POSTGRES_URL is not None
            self._postgres = PostgresDatabases(POSTGRES_URL)
        return self._postgres

    def close(self) -> None:
        if self._postgres is not None:
            self._postgres.close()


@pytest.fixture(scope="session")
def database_templates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DatabaseTemplates]:
    templates = DatabaseTemplates(tmp_path_factory.mktemp("template"))
    yield templates
    templates.close()


class Databases:
    """Makes the databases of one test, on the test's backend, and removes them after it."""

    def __init__(self, backend: str, templates: DatabaseTemplates) -> None:
        self.backend = backend
        self._templates = templates
        self._made: list[str] = []

    def new(self, folder: Path, *, empty: bool = False) -> str:
        """The URL of a new database, migrated to head unless ``empty``. On SQLite it is
        the file ``folder/data/gateway.db``, where ``make_settings(folder, ...)`` keeps its
        data; on PostgreSQL, a database of its own."""
        if self.backend == "postgresql":
            url = self._templates.postgres.create(empty=empty)
            self._made.append(url)
            return url
        path = folder / "data" / "gateway.db"
        if not empty:
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(self._templates.sqlite, path)
        return f"sqlite:///{path}"

    def close(self) -> None:
        for url in self._made:
            self._templates.postgres.drop(url)


@pytest.fixture(params=BACKENDS)
def databases(
    request: pytest.FixtureRequest, database_templates: DatabaseTemplates
) -> Iterator[Databases]:
    """For a test that needs more than one database: ``databases.new(folder)``."""
    made = Databases(request.param, database_templates)
    yield made
    made.close()


@pytest.fixture
def database_url(request: pytest.FixtureRequest, databases: Databases, tmp_path: Path) -> str:
    """The test's database, at the newest revision with no rows (as `initialise` would
    leave the schema), or with no schema when the test is marked ``empty_database``."""
    empty = request.node.get_closest_marker("empty_database") is not None
    return databases.new(tmp_path, empty=empty)


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
    """Generate every dataset of an agreement (gateway_synthetic) and upload each one
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


def web_sign_in(client: Any, token: str) -> str:
    """Sign a TestClient in to the web pages with ``token``, through the sign-in form as
    a browser would; the client's cookie then holds the session's id, returned here.
    The client's cookies are cleared first: a session it held would be ended (replaced)."""
    from gateway.web.session import SESSION_COOKIE

    client.cookies.clear()
    form = client.get("/web/sign-in")
    found = re.search(r'name="csrf" value="([0-9a-f]+)"', form.text)
    assert found, form.text[:300]
    answer = client.post(
        "/web/sign-in", data={"csrf": found[1], "token": token}, follow_redirects=False
    )
    assert answer.status_code == 303, answer.text[:300]
    return str(answer.cookies[SESSION_COOKIE])


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
