"""Shared fixtures: a real sandbox over HTTP, a real state database, and settings that wait briefly.

The state database is a fresh SQLite file per test; when CFTRUNNER_TEST_DATABASE_URL names a
PostgreSQL server (postgresql://postgres@127.0.0.1:5432/test), it is a fresh schema of its own there,
and the whole suite, subprocesses included, runs on PostgreSQL. Tests about SQLite files are marked
`sqlite_only` and skipped then; tests about a PostgreSQL server, `postgres_only`, run only then."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from cftrunner import service
from cftrunner.clock import utcnow
from cftrunner.config.settings import Settings
from cftrunner.driver import Driver
from cftrunner.exceptions import InputError
from cftrunner.payloads.bodies import MARKER_INPUT
from cftrunner.records import Run, RunSpec
from cftrunner.retry import RetryPolicy
from cftrunner.sandbox import DEFAULT_API_KEY, DEFAULT_PROJECT_ID, Sandbox
from cftrunner.states import RunState
from cftrunner.store import Store, dialect
from tests import processes

PROMPTS = [f"Classify message {i}: 'how do I fix my bike chain?'" for i in range(6)]
MODEL = "safety-model-v2"
JUDGE = "claude-4.5-sonnet"


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., Sandbox]]:
    started: list[Sandbox] = []

    def make(**options: Any) -> Sandbox:
        options.setdefault("api_key", DEFAULT_API_KEY)
        options.setdefault("processing_seconds", 0.2)
        sandbox = Sandbox(**options)
        sandbox.start()
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox()


TEST_DATABASE_VARIABLE = "CFTRUNNER_TEST_DATABASE_URL"
SCHEMA_PREFIX = "cftrunner_test_"
# Each schema made and dropped leaves dead rows in the system catalogs; with autovacuum off (as
# on the CI server) they pile up across runs and slow every connection's catalog reads.
CATALOGS = ("pg_attribute", "pg_class", "pg_depend", "pg_type", "pg_index", "pg_constraint",
            "pg_attrdef", "pg_namespace", "pg_sequence", "pg_statistic")
VACUUM_EVERY = 50  # schemas dropped


class Databases:
    """Fresh, empty state databases: SQLite files, or schemas on the PostgreSQL server at `server`,
    each reached through a URL whose search_path is that schema alone."""

    def __init__(self, server: str | None) -> None:
        self.server = server
        self.unreachable: str | None = None
        self._admin: sa.Engine | None = None
        self._schemas: dict[str, str] = {}  # URL -> schema
        self._leftover: list[str] = []  # schemas still in use when their test ended
        self._dropped = 0
        if server is not None:
            try:
                self._admin = dialect.create_engine(server)
                self.vacuum_catalogs()
            except (InputError, sa.exc.DBAPIError) as exc:
                reason = exc.message if isinstance(exc, InputError) else str(exc.orig)
                self.unreachable = (f"{TEST_DATABASE_VARIABLE} is set but PostgreSQL at "
                                    f"{make_url(server).render_as_string()} cannot be used: "
                                    f"{(reason.strip().splitlines() or ['?'])[0]}")

    @property
    def postgres(self) -> bool:
        return self.server is not None

    def new(self, folder: Path, name: str = "state") -> str:
        if self.unreachable:
            pytest.skip(self.unreachable)
        if self._admin is None or self.server is None:
            return f"sqlite:///{folder}/{name}.db"
        schema = f"{SCHEMA_PREFIX}{uuid.uuid4().hex[:16]}"
        with self._admin.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        url = make_url(self.server).update_query_dict({"options": f"-csearch_path={schema}"})
        text = url.render_as_string(hide_password=False)
        self._schemas[text] = schema
        return text

    def drop(self, url: str) -> None:
        schema = self._schemas.pop(url, None)
        if schema is not None and not self._drop(schema, "2s"):
            self._leftover.append(schema)
        elif schema is not None:
            self._dropped += 1
            if self._dropped % VACUUM_EVERY == 0:
                self.vacuum_catalogs()

    def vacuum_catalogs(self) -> None:
        """VACUUM the system catalogs that schemas churn (outside a transaction, as it must)."""
        assert self._admin is not None
        with self._admin.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("VACUUM " + ", ".join(f"pg_catalog.{t}" for t in CATALOGS))

    def _drop(self, schema: str, wait: str) -> bool:
        assert self._admin is not None
        try:
            with self._admin.begin() as conn:
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{wait}'")
                conn.exec_driver_sql(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        except sa.exc.OperationalError:
            return False
        return True

    def close(self) -> None:
        for url in list(self._schemas):
            self.drop(url)
        for schema in self._leftover:
            self._drop(schema, "30s")
        if self._admin is not None:
            self._admin.dispose()


@functools.cache
def databases() -> Databases:
    """The one check of the server, made when the session starts (see pytest_report_header)."""
    return Databases(os.environ.get(TEST_DATABASE_VARIABLE) or None)


def on_postgres() -> bool:
    return databases().postgres


def pytest_report_header() -> str:
    found = databases()
    if not found.postgres:
        return f"state database: SQLite files ({TEST_DATABASE_VARIABLE} not set)"
    return found.unreachable or (f"state database: PostgreSQL, a schema per test at "
                                 f"{make_url(found.server or '').render_as_string()}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The longest tests first, then the whole-process ones, each group still in its shuffled
    # order (pytest-randomly shuffles before this hook): a long test started last would hold the
    # parallel run up alone.
    items.sort(key=lambda item: (
        item.get_closest_marker("long") is None,
        not item.nodeid.startswith(("tests/acceptance/", "tests/test_quality"))))
    if on_postgres():
        skip = pytest.mark.skip(reason="about SQLite files: it runs when the suite runs on SQLite")
        for item in items:
            if item.get_closest_marker("sqlite_only"):
                item.add_marker(skip)
    else:
        skip = pytest.mark.skip(reason="about a PostgreSQL server: it runs when the suite runs "
                                       f"on PostgreSQL ({TEST_DATABASE_VARIABLE})")
        for item in items:
            if item.get_closest_marker("postgres_only"):
                item.add_marker(skip)


def pytest_sessionfinish() -> None:
    if databases.cache_info().currsize:
        databases().close()


@pytest.fixture(scope="session", autouse=True)
def bytecode_kept_for_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The processes the tests start (some 700) keep the bytecode they compile in a folder of
    the session's, shared by its workers, so that each does not compile cftrunner's modules
    again when the checkout has none (PYTHONDONTWRITEBYTECODE, an editable install)."""
    base = tmp_path_factory.getbasetemp()
    folder = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "pycache"
    saved = {name: os.environ.get(name) for name in ("PYTHONPYCACHEPREFIX", "PYTHONDONTWRITEBYTECODE")}
    os.environ["PYTHONPYCACHEPREFIX"] = str(folder)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def make_db_url(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Fresh, empty state databases for this test, dropped after it; `name` names an SQLite file."""
    made: list[str] = []

    def make(name: str = "state") -> str:
        made.append(databases().new(tmp_path, name))
        return made[-1]

    yield make
    for url in made:
        databases().drop(url)


@pytest.fixture
def db_url(make_db_url: Callable[..., str]) -> str:
    return make_db_url()


@contextmanager
def connected(db_url: str) -> Iterator[sa.Connection]:
    """A transaction on the state database, outside any Store: for rows a test writes or reads
    as they are stored."""
    engine = dialect.create_engine(db_url)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def state_stored(db_url: str) -> bool:
    """Whether anything made the state database's tables yet."""
    if not on_postgres():
        return Path(make_url(db_url).database or "").exists()
    engine = dialect.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return bool(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


def shown_status(db_url: str, run_id: str | None = None) -> Any:
    """What `cftrunner status --json [RUN_ID]` prints, through the library call the command makes:
    for a test that only looks at where its processes left the runs, a process less to start
    (the command itself is tested in tests/acceptance/test_cli.py)."""
    return json.loads(service.status_text(Settings(db_url=db_url), run_id, as_json=True))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    """An empty state store on a real database."""
    s = Store(db_url)
    yield s
    s.close()


def make_run(run_id: str = "r1") -> Run:
    """A freshly created run, as the runner would store it, without touching the API."""
    now = utcnow()
    return Run(id=run_id, project_id="p", model_alias="m", judge_model="j", split_percentage=80,
               prompts_source="f", job_name=f"cftrunner-{run_id}-x", state=RunState.CREATED,
               created_at=now, updated_at=now, state_changed_at=now)


def quick_settings(base_url: str, db_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = dict(
        base_url=base_url, db_url=db_url, api_key=DEFAULT_API_KEY, poll_interval=0.05,
        read_timeout=2.0, reconcile_settle=0.05, reconcile_wait=10.0,
        retry=RetryPolicy(max_attempts=6, base_delay=0.01, max_delay=0.05))
    values.update(overrides)
    return Settings(**values)


class Harness:
    """A runner on a real state database against a real sandbox, recording the sleeps it asks for."""

    def __init__(self, sandbox: Sandbox, db_url: str, **overrides: Any) -> None:
        self.sandbox = sandbox
        self.settings = quick_settings(sandbox.url, db_url, **overrides)
        self.store = Store(db_url)
        self.sleeps: list[float] = []
        self.runner = Driver(self.store, self.settings, sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        time.sleep(min(seconds, 0.05))

    def start(self, prompts: list[str] | None = None, **spec: Any) -> str:
        spec.setdefault("project_id", DEFAULT_PROJECT_ID)
        spec.setdefault("model_alias", MODEL)
        spec.setdefault("judge_model", JUDGE)
        spec.setdefault("prompts_source", "test")
        run = self.runner.create(RunSpec(**spec), PROMPTS if prompts is None else prompts)
        return run.id

    def close(self) -> None:
        self.runner.client.close()
        self.store.close()


@pytest.fixture
def make_harness(db_url: str) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(sandbox: Sandbox, **overrides: Any) -> Harness:
        harness = Harness(sandbox, db_url, **overrides)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


@pytest.fixture
def harness(make_harness: Callable[..., Harness], sandbox: Sandbox) -> Harness:
    return make_harness(sandbox)


def write_prompts(path: Path, prompts: list[str] | None = None) -> Path:
    path.write_text(json.dumps({"test_prompts": PROMPTS if prompts is None else prompts}))
    return path


class Cli:
    """Runs `python -m cftrunner` as a real process against a sandbox and a state database
    (forked from a server that has imported cftrunner: tests/processes.py)."""

    def __init__(self, sandbox: Sandbox, db_url: str, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.env = {
            **{k: v for k, v in os.environ.items()
               if not k.startswith(("CFTRUNNER_", "API_KEY", "PREMAI_API_KEY"))},
            "API_KEY": DEFAULT_API_KEY,
            "CFTRUNNER_BASE_URL": sandbox.url,
            "CFTRUNNER_DB": db_url,
            "CFTRUNNER_POLL_INTERVAL": "0.05",
            "CFTRUNNER_READ_TIMEOUT": "2",
            "CFTRUNNER_RECONCILE_SETTLE": "0.05",
            "CFTRUNNER_RECONCILE_WAIT": "10",
            "CFTRUNNER_RETRY_BASE_DELAY": "0.02",
            "CFTRUNNER_RETRY_MAX_DELAY": "0.1",
        }
        self.prompts = write_prompts(tmp_path / "prompts.json")

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "cftrunner", *args]

    def start_args(self, run_id: str, *extra: str) -> list[str]:
        return ["start", "--project-id", DEFAULT_PROJECT_ID, "--model-alias", MODEL,
                "--prompts", str(self.prompts), "--run-id", run_id, *extra]

    def run(self, *args: str, env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return processes.run(self.command(*args), env={**self.env, **(env or {})},
                             capture_output=True, text=True, timeout=timeout, cwd=self.tmp_path)

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return processes.popen(self.command(*args), env={**self.env, **(env or {})},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=self.tmp_path)


@pytest.fixture
def cli(sandbox: Sandbox, db_url: str, tmp_path: Path) -> Cli:
    return Cli(sandbox, db_url, tmp_path)


def requests_sent(sandbox: Sandbox) -> int:
    """API requests the sandbox has received, on every route."""
    return sum(sandbox.counts()["requests"].values())


def traces_made(sandbox: Sandbox) -> int:
    """The traces the sandbox made for prompts: besides marker traces (cftrunner.markers), which
    come and go, and which alone may be deleted or never be added to the dataset."""
    traces = [*sandbox.world.traces(), *sandbox.world.deleted]
    markers = {t["id"] for t in traces if t["input"].startswith(MARKER_INPUT)}
    assert {t["id"] for t in sandbox.world.deleted} <= markers
    assert not markers & set(sandbox.counts()["additions"])
    return int(sandbox.counts()["traces"]) - len(markers)


def assert_exactly_once(sandbox: Sandbox, prompts: int) -> None:
    """The sandbox holds one trace per prompt, one addition per trace, one snapshot, one job."""
    counts = sandbox.counts()
    assert traces_made(sandbox) == prompts
    assert sorted(counts["additions"].values()) == [1] * prompts
    assert counts["snapshots"] == 1
    assert counts["jobs"] == 1
    assert list(counts["recommendations_generated"].values()) == [1]
