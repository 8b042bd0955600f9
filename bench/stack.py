"""The benchmark's own PostgreSQL and nats-server (cdc_bridge.dev.devstack), and catalog helpers.

Settings beyond the devstack's: checkpoints pushed out of the way (a checkpoint in the
middle of a stage would show up as WAL and I/O that no relay caused), and a less starved
shared_buffers. Autovacuum is off for the two outbox tables, so "dead tuples" and "WAL
bytes" count what each relay itself caused; with autovacuum on, a real server also pays
to clean up after the polling relay.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import psycopg
from psycopg import sql

from bench.serverload import ServerSnapshot, snapshot
from bench.workload import OUTBOX_TABLE, POLLING_TABLE, POLLING_TABLE_SQL, table_identifier
from cdc_bridge.dev.nats_server import NatsServer
from cdc_bridge.dev.postgres_server import DEFAULT_PG_SETTINGS, PostgresServer, outbox_schema_sql
from cdc_bridge.dev.processes import Service

DATABASE = "bench"
PUBLICATION = "bench"
_SLOT_RELEASE_TIMEOUT = 10.0

BENCH_PG_SETTINGS = {
    "shared_buffers": "128MB",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
}


class BenchStack(Service):
    """PostgreSQL (database ``bench``: both outbox tables, a publication) and nats-server."""

    def __init__(self, keep: bool = False, slots: int = 3) -> None:
        self.keep = keep  # leave the folder (logs, data) behind for a post-mortem
        # Not a pytest-style 0700 folder: PostgreSQL runs as the postgres account when we
        # are root, and must reach its data folder.
        self.root = Path(tempfile.mkdtemp(prefix="cdcb-bench-"))
        self.root.chmod(0o755)
        settings = dict(BENCH_PG_SETTINGS)
        # Every slot of every round exists at once (made before the backlog): many rounds
        # outgrow the devstack's allowance
        if slots > int(DEFAULT_PG_SETTINGS["max_replication_slots"]):
            settings["max_replication_slots"] = str(slots)
        self.postgres = PostgresServer(self.root / "postgres", settings=settings)
        self.nats = NatsServer(self.root / "nats")
        self.dsn = ""

    def start(self) -> None:
        self.postgres.start()
        self.nats.start()
        self.dsn = self.postgres.create_database(DATABASE, outbox_schema=False)
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(outbox_schema_sql().encode())
            conn.execute(POLLING_TABLE_SQL.encode())
            for table in (OUTBOX_TABLE, POLLING_TABLE):
                conn.execute(
                    sql.SQL("ALTER TABLE {} SET (autovacuum_enabled = false)").format(
                        table_identifier(table)
                    )
                )
            # What the bridge would create itself; made here so every slot sees it.
            conn.execute(
                sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish = 'insert')").format(
                    sql.Identifier(PUBLICATION), table_identifier(OUTBOX_TABLE)
                )
            )

    def close(self) -> None:
        try:
            self.nats.close()
        finally:
            self.postgres.close()
            if not self.keep:
                shutil.rmtree(self.root, ignore_errors=True)

    def server_snapshot(self) -> ServerSnapshot:
        """nats-server's and PostgreSQL's CPU so far, and the machine's ticks: taken before
        and after a drain, bench.serverload.server_load says what they did during it."""
        return snapshot(self.nats.pid, self.postgres.pid)

    def work_dir(self, name: str) -> Path:
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        return folder


def create_slot(dsn: str, name: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", (name,))


def drop_slot(dsn: str, name: str) -> None:
    """Drop the slot once no walsender holds it.

    Its reader has just exited, but the walsender serving it notices a moment later, and
    an active slot cannot be dropped.
    """
    deadline = time.monotonic() + _SLOT_RELEASE_TIMEOUT
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT active FROM pg_replication_slots WHERE slot_name = %s", (name,)
            ).fetchone()
            if row is None or not row[0]:
                break
            time.sleep(0.05)
        conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))


def wal_lsn(dsn: str) -> int:
    """The server's current WAL insert position, as an integer."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()
    assert row is not None
    return int(row[0])


def server_version(dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    assert row is not None
    return str(row[0])
