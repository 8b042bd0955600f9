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
from support.bridge import BridgeProcess
from support.nats_helpers import delete_all_streams

from cdc_bridge.dev.devstack import NatsServer, PostgresServer


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


@pytest.fixture(scope="session")
def pg_server(devstack_root: Path) -> Iterator[PostgresServer]:
    """The session's PostgreSQL (wal_level=logical). Don't stop or kill it in a test:
    use ``isolated_pg_server`` for that."""
    with PostgresServer(devstack_root / "postgres") as server:
        yield server


@pytest.fixture(scope="session")
def nats_server(devstack_root: Path) -> Iterator[NatsServer]:
    """The session's nats-server with JetStream. Use ``isolated_nats_server`` to kill one."""
    with NatsServer(devstack_root / "nats") as server:
        yield server


@pytest.fixture
def isolated_pg_server(devstack_tmp: Path) -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own, started: stop, restart or kill it at will."""
    with PostgresServer(devstack_tmp / "postgres") as server:
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
