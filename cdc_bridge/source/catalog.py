"""Catalog queries about slots, the WAL and the server (daemon and ops CLI); the outbox's
tables and the publication are in tables.py.

Plain SQL helpers: each takes an open connection and returns values. Deciding what
the answers mean is the caller's job (the daemon, or the ``cdc_bridge.cli`` commands).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import TupleRow

from cdc_bridge.core.lsn import format_lsn, parse_lsn

AsyncConn = psycopg.AsyncConnection[TupleRow]


@dataclass(frozen=True, slots=True)
class SlotInfo:
    name: str
    plugin: str
    database: str
    active: bool
    active_pid: int | None
    restart_lsn: int | None
    confirmed_flush_lsn: int | None
    wal_status: str | None  # reserved | extended | unreserved | lost
    # Bytes of WAL that may still be written before the slot is lost; None when
    # max_slot_wal_keep_size is unlimited (-1) or the slot is already lost.
    safe_wal_size: int | None = None
    # PostgreSQL 17+ (None before): a failover slot is synchronized to standbys that
    # run sync_replication_slots; `synced` marks such a copy on a standby (or promoted).
    failover: bool | None = None
    synced: bool | None = None


# The 17+ columns through to_jsonb, so one query serves every version (NULL before 17)
_SLOTS_QUERY = """
SELECT slot_name, plugin, database, active, active_pid,
       restart_lsn::text, confirmed_flush_lsn::text, wal_status, safe_wal_size,
       (to_jsonb(s) ->> 'failover')::boolean, (to_jsonb(s) ->> 'synced')::boolean
FROM pg_replication_slots s
WHERE slot_type = 'logical' AND (%s::text IS NULL OR slot_name = %s)
ORDER BY slot_name
"""

FAILOVER_SLOTS_SINCE = 170000  # server_version_num: failover slots, slot synchronization
DECODING_ON_STANDBY_SINCE = 160000  # logical slots on a hot standby


def _lsn_or_none(text: str | None) -> int | None:
    return parse_lsn(text) if text else None


async def list_slots(conn: AsyncConn, name: str | None = None) -> list[SlotInfo]:
    """Every logical slot of the cluster (all databases), or only ``name``, by name."""
    cur = await conn.execute(_SLOTS_QUERY, (name, name))
    return [
        SlotInfo(
            name=row[0],
            plugin=row[1],
            database=row[2],
            active=bool(row[3]),
            active_pid=row[4],
            restart_lsn=_lsn_or_none(row[5]),
            confirmed_flush_lsn=_lsn_or_none(row[6]),
            wal_status=row[7],
            safe_wal_size=None if row[8] is None else int(row[8]),
            failover=row[9],
            synced=row[10],
        )
        for row in await cur.fetchall()
    ]


async def get_slot(conn: psycopg.AsyncConnection[TupleRow], name: str) -> SlotInfo | None:
    slots = await list_slots(conn, name)
    return slots[0] if slots else None


async def create_slot(
    conn: psycopg.AsyncConnection[TupleRow], name: str, plugin: str, *, failover: bool = False
) -> None:
    """``failover`` (PostgreSQL 17+ only): synchronized to standbys, usable after promotion."""
    if failover:  # arguments: temporary, twophase, failover
        await conn.execute(
            "SELECT pg_create_logical_replication_slot(%s, %s, false, false, true)",
            (name, plugin),
        )
    else:
        await conn.execute("SELECT pg_create_logical_replication_slot(%s, %s)", (name, plugin))


async def log_standby_snapshot(conn: AsyncConn) -> None:
    """On the primary: write a running-transactions record now. A standby's logical slot
    is created, and its decoding moves on, only once it replays one; an idle primary
    writes none by itself."""
    await conn.execute("SELECT pg_log_standby_snapshot()")


async def wait_for_replay(conn: AsyncConn, lsn: int, timeout: float) -> bool:
    """On a standby: until it has replayed up to ``lsn`` (False at the deadline)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        cur = await conn.execute("SELECT pg_last_wal_replay_lsn()::text")
        row = await cur.fetchone()
        if row is not None and row[0] is not None and parse_lsn(row[0]) >= lsn:
            return True
        if asyncio.get_running_loop().time() >= deadline:
            return False
        await asyncio.sleep(0.1)


async def output_plugin_allowlist(conn: AsyncConn) -> list[str] | None:
    """The libraries ``output_plugin_libraries`` lets be output plugins, on PostgreSQL
    builds that have this setting (the 15.20 one the tests run on, for one); None: any may."""
    cur = await conn.execute(
        "SELECT setting FROM pg_settings WHERE name = 'output_plugin_libraries'"
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return [name.strip().strip('"') for name in str(row[0]).split(",") if name.strip()]


async def current_wal_lsn(conn: psycopg.AsyncConnection[TupleRow]) -> int:
    cur = await conn.execute("SELECT pg_current_wal_lsn()::text")
    row = await cur.fetchone()
    assert row is not None
    return parse_lsn(row[0])


async def wal_head_lsn(conn: AsyncConn) -> int:
    """Where the WAL ends now: the insert position on a primary, replay on a standby
    (pg_current_wal_lsn() refuses to run during recovery)."""
    cur = await conn.execute(
        "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
        " ELSE pg_current_wal_lsn() END::text"
    )
    row = await cur.fetchone()
    assert row is not None
    return parse_lsn(row[0])


async def current_database(conn: AsyncConn) -> str:
    cur = await conn.execute("SELECT current_database()")
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def drop_slot(conn: AsyncConn, name: str) -> None:
    """Raises psycopg.errors.ObjectInUse while a process streams from it."""
    await conn.execute("SELECT pg_drop_replication_slot(%s)", (name,))


async def advance_slot(conn: AsyncConn, name: str, lsn: int) -> int:
    """Move the slot's confirmed_flush_lsn forward to ``lsn``; the position it reached.

    Raises ObjectInUse while a process streams from it, and
    ObjectNotInPrerequisiteState for a position behind the slot.
    """
    cur = await conn.execute(
        "SELECT end_lsn::text FROM pg_replication_slot_advance(%s, %s::pg_lsn)",
        (name, format_lsn(lsn)),
    )
    row = await cur.fetchone()
    assert row is not None
    return parse_lsn(row[0])


@dataclass(frozen=True, slots=True)
class RawChange:
    """One row of pg_logical_slot_peek_(binary_)changes: a plugin's output message."""

    lsn: int
    xid: int
    data: bytes  # pgoutput's binary message, or the text plugin's output as UTF-8


async def peek_changes(
    conn: AsyncConn,
    slot: str,
    *,
    binary: bool,
    options: Sequence[tuple[str, str]],
    upto_lsn: int | None = None,
    upto_nchanges: int | None = None,
) -> list[RawChange]:
    """Decode what the slot holds WITHOUT consuming it (the slot does not move).

    ``upto_nchanges`` is checked only at transaction ends, so whole transactions
    come back. Raises ObjectInUse while a process streams from the slot.
    """
    function = "pg_logical_slot_peek_binary_changes" if binary else "pg_logical_slot_peek_changes"
    flat_options = [part for option in options for part in option]
    query = sql.SQL(
        "SELECT lsn::text, xid::text, data FROM {}(%s, %s::pg_lsn, %s, VARIADIC %s::text[])"
    ).format(sql.Identifier(function))
    cur = await conn.execute(
        query,
        (slot, None if upto_lsn is None else format_lsn(upto_lsn), upto_nchanges, flat_options),
    )
    return [
        RawChange(
            lsn=parse_lsn(row[0]),
            xid=int(row[1]),
            data=bytes(row[2]) if binary else str(row[2]).encode("utf-8"),
        )
        for row in await cur.fetchall()
    ]


@dataclass(frozen=True, slots=True)
class WalSender:
    """A walsender's row of pg_stat_replication: what its client reported last.

    Without pg_read_all_stats PostgreSQL shows only pid (and, for the role's own
    sessions, application_name and client_addr): the rest is NULL, even for the role's
    own walsender. ``details_visible`` tells that apart from "not reported yet".
    """

    pid: int
    role: str | None  # the walsender's role (usename)
    details_visible: bool  # state is never NULL when it can be seen
    application_name: str | None
    client_addr: str | None  # None: a unix socket
    state: str | None  # startup | catchup | streaming | backup | stopping
    sent_lsn: int | None
    write_lsn: int | None
    flush_lsn: int | None
    replay_lsn: int | None
    reply_time: str | None  # ISO 8601


async def wal_sender(conn: AsyncConn, pid: int) -> WalSender | None:
    cur = await conn.execute(
        """
        SELECT pid, usename, application_name, host(client_addr), state, sent_lsn::text,
               write_lsn::text, flush_lsn::text, replay_lsn::text,
               to_char(reply_time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
        FROM pg_stat_replication WHERE pid = %s
        """,
        (pid,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return WalSender(
        pid=row[0],
        role=row[1],
        details_visible=row[4] is not None,
        application_name=row[2],
        client_addr=row[3],
        state=row[4],
        sent_lsn=_lsn_or_none(row[5]),
        write_lsn=_lsn_or_none(row[6]),
        flush_lsn=_lsn_or_none(row[7]),
        replay_lsn=_lsn_or_none(row[8]),
        reply_time=row[9],
    )


async def server_version(conn: AsyncConn) -> tuple[str, int]:
    """(server_version text, server_version_num) e.g. ("15.4 (Debian ...)", 150004)."""
    cur = await conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int"
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row[0]), int(row[1])


async def setting(conn: AsyncConn, name: str) -> str:
    cur = await conn.execute("SELECT current_setting(%s)", (name,))
    row = await cur.fetchone()
    assert row is not None
    return str(row[0])


async def in_recovery(conn: AsyncConn) -> bool:
    cur = await conn.execute("SELECT pg_is_in_recovery()")
    row = await cur.fetchone()
    return bool(row and row[0])


async def replication_slot_count(conn: AsyncConn) -> int:
    """Slots of every kind and database: all count against max_replication_slots."""
    cur = await conn.execute("SELECT count(*) FROM pg_replication_slots")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def wal_sender_count(conn: AsyncConn) -> int:
    """Running walsenders, physical and logical: all count against max_wal_senders."""
    cur = await conn.execute("SELECT count(*) FROM pg_stat_replication")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def slot_lag(conn: psycopg.AsyncConnection[TupleRow], slot: str) -> tuple[int, int] | None:
    """(WAL head minus confirmed_flush_lsn, WAL head minus restart_lsn) in bytes."""
    cur = await conn.execute(
        """
        WITH head AS (
            SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()
                        ELSE pg_current_wal_lsn() END AS lsn
        )
        SELECT pg_wal_lsn_diff(head.lsn, confirmed_flush_lsn)::bigint,
               pg_wal_lsn_diff(head.lsn, restart_lsn)::bigint
        FROM pg_replication_slots, head WHERE slot_name = %s
        """,
        (slot,),
    )
    row = await cur.fetchone()
    if row is None or row[0] is None:
        return None
    return int(row[0]), int(row[1] or 0)
