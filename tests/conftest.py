"""Fixtures: throwaway PostgreSQL and nats-server for the session, fresh names per test.

Helpers live in ``tests/support`` and are imported as ``support.<module>`` (pytest puts this
folder on sys.path because it holds this conftest).
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from support import pg_installs
from support.bridge import BridgeProcess
from support.nats_helpers import delete_all_streams

from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.pginstall import PgInstall
from cdc_bridge.dev.postgres_server import PostgresServer


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """``both_postgres`` tests run once per PostgreSQL major version on the machine."""
    if "pg_install" not in metafunc.fixturenames:
        return
    if metafunc.definition.get_closest_marker("both_postgres") is None:
        return
    versions = pg_installs.by_major()
    if len(versions) > 1:
        metafunc.parametrize(
            "pg_install", versions, ids=[v.name for v in versions], indirect=True
        )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop the variants of a ``both_postgres`` test whose server lacks what it needs
    (wal2json on the embedded PostgreSQL 18): the other variant covers it."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        install = callspec.params.get("pg_install") if callspec is not None else None
        if isinstance(install, PgInstall) and not pg_installs.satisfies(
            install, pg_installs.needs_of(item)
        ):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def devstack_root() -> Iterator[Path]:
    """One folder for every server of the session, removed at the end.

    Not pytest's tmp_path: that lives under a root-only (0700) folder, and when we run as
    root PostgreSQL runs as the postgres account, which must be able to reach its data.
    """
    root = Path(tempfile.mkdtemp(prefix="cdc-bridge-tests-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def devstack_tmp(devstack_root: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh folder for this test's own servers (reachable by the postgres account)."""
    label = re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[:40]
    folder = Path(tempfile.mkdtemp(prefix=f"{label}-", dir=devstack_root))
    folder.chmod(0o755)
    return folder


@pytest.fixture
def pg_install(request: pytest.FixtureRequest) -> PgInstall:
    """The PostgreSQL binaries this test runs on (support/pg_installs.py says which)."""
    needs = pg_installs.needs_of(request.node)
    chosen: PgInstall | None = getattr(request, "param", None)
    if chosen is not None and pg_installs.satisfies(chosen, needs):
        return chosen
    return pg_installs.choose(needs)


@pytest.fixture(scope="session")
def pg_servers(devstack_root: Path) -> Iterator[dict[Path, PostgresServer]]:
    """The session's PostgreSQL per install, started on first use, stopped at the end."""
    servers: dict[Path, PostgresServer] = {}
    yield servers
    for server in servers.values():
        server.close()


@pytest.fixture
def pg_server(
    pg_servers: dict[Path, PostgresServer], pg_install: PgInstall, devstack_root: Path
) -> PostgresServer:
    """The session's PostgreSQL (wal_level=logical) of this test's install. Don't stop or
    kill it in a test: use ``isolated_pg_server`` for that."""
    server = pg_servers.get(pg_install.bindir)
    if server is None:
        server = PostgresServer(devstack_root / f"postgres-{pg_install.name}", install=pg_install)
        pg_servers[pg_install.bindir] = server
    server.start()  # no-op while it runs
    return server


@pytest.fixture(scope="session")
def nats_server(devstack_root: Path) -> Iterator[NatsServer]:
    """The session's nats-server with JetStream. Use ``isolated_nats_server`` to kill one."""
    with NatsServer(devstack_root / "nats") as server:
        yield server


@pytest.fixture
def isolated_pg_server(devstack_tmp: Path, pg_install: PgInstall) -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, started: stop, restart or kill it at will."""
    with PostgresServer(devstack_tmp / "postgres", install=pg_install) as server:
        yield server


@pytest.fixture
def isolated_nats_server(devstack_tmp: Path) -> Iterator[NatsServer]:
    """A nats-server of this test's own, started: stop, restart or kill it at will."""
    with NatsServer(devstack_tmp / "nats") as server:
        yield server


@pytest.fixture
def unique_name() -> str:
    """A short identifier unique to this test: lower case letters and digits, starts with a
    letter. Use it for slots, publications, databases; ``.upper()`` for stream names."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def pg_dsn(pg_server: PostgresServer, unique_name: str) -> Iterator[str]:
    """A fresh database with the outbox table, dropped afterwards with its replication slots."""
    pg_server.start()  # no-op unless a test stopped the session server
    name = f"db_{unique_name}"
    dsn = pg_server.create_database(name)
    yield dsn
    if pg_server.running:
        pg_server.drop_database(name)


@pytest.fixture
def nats_url(nats_server: NatsServer) -> Iterator[str]:
    """The session nats-server's URL. Every stream is deleted after the test, so tests may
    reuse subjects such as ``events.>`` (streams with overlapping subjects can't coexist)."""
    nats_server.start()  # no-op unless a test stopped the session server
    yield nats_server.url
    if nats_server.running:
        asyncio.run(delete_all_streams(nats_server.url))


@pytest.fixture
def make_bridge(tmp_path: Path) -> Iterator[Callable[..., BridgeProcess]]:
    """``make_bridge(config_dict, **BridgeProcess kwargs)`` -> a started BridgeProcess.

    Every bridge made here is killed at teardown if the test left it running.
    """
    made: list[BridgeProcess] = []

    def make(config: Mapping[str, Any], **kwargs: Any) -> BridgeProcess:
        bridge = BridgeProcess(config, tmp_path / f"bridge{len(made)}", **kwargs)
        made.append(bridge)
        bridge.start()
        return bridge

    yield make
    for index, bridge in enumerate(made):
        bridge.close()
        # Shown by pytest only when the test failed: the bridge's side of the story.
        print(f"--- bridge{index} log (last 80 lines) ---")
        for line in bridge.lines[-80:]:
            print(line)
