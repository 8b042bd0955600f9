"""What a relay costs the database: rows updated, dead tuples, WAL written, table growth.

pg_stat_user_tables is fed by each backend when it ends or goes idle, not per statement,
so the "after" numbers are read once the relay's connection is gone, and re-read (each
time in a fresh snapshot) until the updates we know happened have been reported.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg

from bench.stack import wal_lsn

_STATS_FLUSH_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class TableCounters:
    updated: int  # n_tup_upd
    hot_updated: int  # n_tup_hot_upd: updates that needed no new index entries
    dead_tuples: int  # n_dead_tup (autovacuum is off for the bench tables)
    total_bytes: int  # pg_total_relation_size: heap, indexes, TOAST


@dataclass(frozen=True, slots=True)
class DatabaseLoad:
    """Differences over one relay run."""

    rows_updated: int
    hot_updates: int
    dead_tuples: int
    wal_bytes: int
    table_growth_bytes: int


def table_counters(dsn: str, table: str) -> TableCounters:
    schema, _, name = table.partition(".")
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT n_tup_upd, n_tup_hot_upd, n_dead_tup, pg_total_relation_size(relid) "
            "FROM pg_stat_user_tables WHERE schemaname = %s AND relname = %s",
            (schema, name),
        ).fetchone()
    if row is None:
        raise LookupError(f"no statistics for {table}")
    return TableCounters(int(row[0]), int(row[1]), int(row[2]), int(row[3]))


class LoadMeter:
    """Snapshot before a relay runs; ``finish`` after it has disconnected."""

    def __init__(self, dsn: str, table: str) -> None:
        self._dsn = dsn
        self._table = table
        self._before = table_counters(dsn, table)
        self._wal_before = wal_lsn(dsn)

    def finish(self, expected_updates: int = 0) -> DatabaseLoad:
        wal_after = wal_lsn(self._dsn)
        deadline = time.monotonic() + _STATS_FLUSH_TIMEOUT
        while True:
            after = table_counters(self._dsn, self._table)
            updated = after.updated - self._before.updated
            if updated >= expected_updates or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        return DatabaseLoad(
            rows_updated=updated,
            hot_updates=after.hot_updated - self._before.hot_updated,
            dead_tuples=after.dead_tuples - self._before.dead_tuples,
            wal_bytes=wal_after - self._wal_before,
            table_growth_bytes=after.total_bytes - self._before.total_bytes,
        )
