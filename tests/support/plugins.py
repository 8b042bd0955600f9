"""A PostgreSQL that may stream through wal2json as well as pgoutput, for the decoder tests.

The PostgreSQL build these tests run on only lets the libraries listed in
``output_plugin_libraries`` ('pgoutput, test_decoding' by default) be output plugins, so
the session server cannot create wal2json slots; these tests start one of their own that
also allows wal2json, rather than reconfiguring the shared one.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

from cdc_bridge.devstack import PostgresServer

PLUGINS = ("pgoutput", "wal2json")
WAL2JSON_SETTINGS = {"output_plugin_libraries": "pgoutput, wal2json"}


@contextmanager
def wal2json_postgres(base_dir: Path) -> Iterator[PostgresServer]:
    """A started PostgreSQL in ``base_dir`` whose slots may use wal2json; stopped after."""
    with PostgresServer(base_dir, settings=WAL2JSON_SETTINGS) as server:
        yield server


def fresh_database(server: PostgresServer, name: str) -> str:
    """A new database with the outbox table; its DSN."""
    return server.create_database(f"db_{name}")


def run_statements(dsn: str, *statements: str) -> None:
    """Run statements in autocommit mode (DDL, settings)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())
