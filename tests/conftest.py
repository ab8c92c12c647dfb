"""Shared fixtures: real SQLite files in a temporary folder."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "events.db"


@pytest.fixture
def sqlite_url(db_path: Path) -> str:
    return f"sqlite:///{db_path}"


@pytest.fixture(scope="session")
def tansu_binary() -> str:
    from devservers.tansu import tansu_binary

    return tansu_binary()


@pytest.fixture
def tansu(tansu_binary: str) -> Iterator[str]:
    """``host:port`` of a fresh Tansu broker (memory storage) for one test.

    One per test: tests name their topics and groups alike, and Tansu starts in well
    under a second.
    """
    from devservers.tansu import run_tansu

    with run_tansu(tansu_binary) as address:
        yield address


KAFKA_TEST_OPTIONS = "replication_factor=1&fetch_wait_ms=10&session_timeout_ms=2000"
ONE_RECORD_BATCHES = "producer.batch.num.messages=1"


def kafka_test_url(address: str) -> str:
    """The ``kafka://`` URL of the Tansu broker at ``address``, set for tests
    (docs/kafka.md): a 2 s session timeout makes a group join take ~1 s there; fetches
    wait at most 10 ms; and one record per produce batch, the one case where Tansu's end
    offsets are right, so that tests of lag, ``latest`` and ``tail`` test tidings rather
    than that difference (pinned by its own test in tests/transports/test_kafka.py)."""
    return f"kafka://{address}?{KAFKA_TEST_OPTIONS}&{ONE_RECORD_BATCHES}"


@pytest.fixture
def kafka_url(tansu: str) -> str:
    """A ``kafka://`` URL of a fresh Tansu broker, set for tests (:func:`kafka_test_url`)."""
    return kafka_test_url(tansu)


@pytest.fixture(scope="session")
def nats_binary() -> str:
    from devservers.nats import nats_server_binary

    return nats_server_binary()


@pytest.fixture
def nats_server(nats_binary: str) -> Iterator[str]:
    """``host:port`` of a fresh nats-server with JetStream for one test."""
    from devservers.nats import run_nats

    with run_nats(nats_binary) as address:
        yield address


NATS_TEST_OPTIONS = "lease=2s"


def nats_test_url(address: str) -> str:
    """The ``nats://`` URL of the server at ``address``, set for tests: 2 s leases, so
    that a member that is gone without a word is replaced within about 2 s."""
    return f"nats://{address}?{NATS_TEST_OPTIONS}"


@pytest.fixture
def nats_url(nats_server: str) -> str:
    """A ``nats://`` URL of a fresh server, set for tests (:func:`nats_test_url`)."""
    return nats_test_url(nats_server)


LOGS = [
    "sqlite",
    pytest.param("kafka", marks=pytest.mark.integration),
    pytest.param("nats", marks=pytest.mark.integration),
]


def database_url(
    request: pytest.FixtureRequest, tmp_path: Path, kind: str | None = None, name: str = "app.db"
) -> str:
    """A service's own database for one test, as a sync SQLAlchemy URL: a SQLite file
    ``name`` in ``tmp_path``, or for ``kind`` (default: the fixture's parameter)
    "postgres" or "postgresql" a fresh PostgreSQL database (``pg_url``)."""
    if (kind or getattr(request, "param", "sqlite")) in ("postgres", "postgresql"):
        return str(request.getfixturevalue("pg_url"))
    return f"sqlite:///{tmp_path / name}"


def log_url(request: pytest.FixtureRequest, partitions: int, kind: str | None = None) -> str:
    """A fresh log of ``kind`` (default: the fixture's parameter, one of ``LOGS``)."""
    if (kind or request.param) == "kafka":
        return str(request.getfixturevalue("kafka_url")) + f"&partitions={partitions}"
    if (kind or request.param) == "nats":
        return str(request.getfixturevalue("nats_url")) + f"&partitions={partitions}"
    return str(request.getfixturevalue("sqlite_url")) + f"?partitions={partitions}"


@contextlib.contextmanager
def fresh_log(request: pytest.FixtureRequest, folder: Path, partitions: int) -> Iterator[str]:
    """A fresh log of the fixture's parameter (one of ``LOGS``) for as long as the
    block, for fixtures wider than a test (a log seeded once and only read by the tests
    of a module): its own broker, or a SQLite file in ``folder``."""
    kind = request.param
    if kind == "kafka":
        from devservers.tansu import run_tansu

        with run_tansu(request.getfixturevalue("tansu_binary")) as address:
            yield kafka_test_url(address) + f"&partitions={partitions}"
    elif kind == "nats":
        from devservers.nats import run_nats

        with run_nats(request.getfixturevalue("nats_binary")) as address:
            yield nats_test_url(address) + f"&partitions={partitions}"
    else:
        yield f"sqlite:///{folder / 'events.db'}?partitions={partitions}"


@pytest.fixture(autouse=True)
def _no_ambient_url(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's TIDINGS_URL must not leak into tests.
    monkeypatch.delenv("TIDINGS_URL", raising=False)


IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A private PostgreSQL 16 (PyPI ``pgserver``) for the whole session; its base URL.

    Its data lives outside pytest's temporary root: pytest prunes old session folders
    and resets their modes, which would pull the files from under a running server.
    The server runs detached (``pg_ctl``): a watcher stops it if this process is killed
    before the teardown (a SIGTERMed test run left it running otherwise).
    """
    import shutil
    import signal
    import tempfile
    import warnings

    from devservers._process import Watcher

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR not set
        import pgserver

        data = tempfile.mkdtemp(prefix="tidings-pg-")
        server = pgserver.get_server(data, cleanup_mode="stop")
    pid = server.get_pid()
    assert pid is not None, f"pgserver gave no postmaster PID in {data}"
    watcher = Watcher(pid, signal.SIGINT, Path(data))  # SIGINT: PostgreSQL's fast shutdown
    try:
        yield server.get_uri()
    finally:
        watcher.close()
        server.cleanup()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture
def pg_url(pg_server: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test, as a SQLAlchemy psycopg URL."""
    import re
    import uuid

    import sqlalchemy as sa

    name = "t_" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(pg_server.replace("postgresql://", "postgresql+psycopg://", 1))
    with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = re.sub(r"/postgres\?", f"/{name}?", pg_server, count=1)
    try:
        yield url.replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with admin.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The test's folder as the working directory: where a command's ``module:app``
    is imported from."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
