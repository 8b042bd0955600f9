"""A PostgreSQL primary with one synchronous physical standby that synchronizes slots
(PostgreSQL 17+): the failover scenarios and the failover checks run on it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from cdc_bridge.dev.pginstall import PgInstall
from cdc_bridge.dev.postgres_server import PostgresServer
from support.chaos import install_chaos_schema

STANDBY = "standby1"  # its application_name and its physical slot on the primary


@dataclass
class Pair:
    primary: PostgresServer
    standby: PostgresServer
    database: str

    def dsn(self) -> str:
        """Both hosts; libpq picks whichever is the primary now."""
        return (
            f"host=127.0.0.1,127.0.0.1 port={self.primary.port},{self.standby.port} "
            f"user=postgres dbname={self.database} target_session_attrs=read-write "
            "connect_timeout=2"
        )


def standby_settings(primary: PostgresServer, database: str) -> dict[str, str]:
    return {
        "primary_conninfo": (
            f"host=127.0.0.1 port={primary.port} user=postgres dbname={database} "
            f"application_name={STANDBY}"
        ),
        "primary_slot_name": STANDBY,
        "hot_standby_feedback": "on",
        "sync_replication_slots": "on",
    }


@contextmanager
def primary_and_standby(folder: Path, install: PgInstall, database: str) -> Iterator[Pair]:
    """Both started, the database (outbox, chaos schema) on both, the standby streaming
    synchronously; stopped on leaving."""
    with PostgresServer(folder / "primary", install=install) as primary:
        install_chaos_schema(primary.create_database(database))
        standby = PostgresServer(
            folder / "standby",
            install=install,
            settings=standby_settings(primary, database),
        )
        standby.clone_as_standby(primary, STANDBY)
        with standby:
            # Only now: set earlier, CREATE DATABASE would wait for a standby that is not there
            with psycopg.connect(primary.dsn(), autocommit=True) as conn:
                conn.execute(f"ALTER SYSTEM SET synchronized_standby_slots = '{STANDBY}'")
                conn.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY}'")
                conn.execute("SELECT pg_reload_conf()")
            yield Pair(primary, standby, database)


def slot_on(server: PostgresServer, database: str, slot: str) -> tuple[Any, ...] | None:
    with psycopg.connect(server.dsn(database), autocommit=True, connect_timeout=3) as conn:
        return conn.execute(
            "SELECT failover, synced, temporary, confirmed_flush_lsn::text, invalidation_reason"
            " FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        ).fetchone()


def wait_until_synchronized(pair: Pair, slot: str, timeout: float = 60.0) -> None:
    """Until the standby holds a persistent synchronized copy of the slot."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = slot_on(pair.standby, pair.database, slot)
        if row is not None and row[1] and not row[2] and row[4] is None:
            return
        time.sleep(0.2)
    raise AssertionError(f"slot {slot} was not synchronized to the standby in {timeout:g}s")


def set_and_reload(server: PostgresServer, name: str, value: str) -> None:
    """ALTER SYSTEM and reload; return once the server runs with the new value."""
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        conn.execute("SELECT pg_reload_conf()")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
            if row is not None and row[0] == value:
                return
            time.sleep(0.05)
    raise AssertionError(f"{name} did not become {value!r}")
