"""Helpers for the tests that run the bridge on both output plugins.

The devstack's PostgreSQL allows wal2json as well as pgoutput (cdc_bridge.devstack adds it
on builds with an output plugin allow-list), so these tests use the session server.
"""

from __future__ import annotations

import psycopg

PLUGINS = ("pgoutput", "wal2json")


def run_statements(dsn: str, *statements: str) -> None:
    """Run statements in autocommit mode (DDL, settings)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in statements:
            conn.execute(statement.encode())
