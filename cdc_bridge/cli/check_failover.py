"""``cdc-bridge check``'s failover readiness (PostgreSQL 17+ failover slots), read-only.

A failover slot survives the primary's failover only if a standby has synchronized it,
and it is safe only if the primary holds logical walsenders back until the standbys have
the WAL (``synchronized_standby_slots``): otherwise a promoted standby can lack events
the bridge has already published (phantom events). Each problem is one result with its
fix, all named ``postgres.failover``; the standbys are the other hosts of the DSN.
"""

from __future__ import annotations

import psycopg
from psycopg.conninfo import conninfo_to_dict

from cdc_bridge.bridge.failures import primary_wal_level_fix
from cdc_bridge.cli.check_results import CheckResult, fail, ok, skip, warn
from cdc_bridge.cli.errors import OpsError, describe_postgres_error
from cdc_bridge.cli.target import connect_postgres
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.source.catalog import (
    FAILOVER_SLOTS_SINCE,
    AsyncConn,
    SlotInfo,
    server_version,
    setting,
)
from cdc_bridge.source.standbys import copy_reason, copy_state, dsn_hosts, host_dsn

CHECK = "postgres.failover"
DOCS = "docs/production.md#high-availability"
RELOAD = "SELECT pg_reload_conf()"


SOURCE_CHECK = "postgres.source"


async def source_checks(conn: AsyncConn, config: BridgeConfig) -> list[CheckResult]:
    """postgres.source: where the slot lives; for a standby, what decoding there needs."""
    where = f"{conn.info.host}:{conn.info.port}"
    if config.postgres.source == "primary":
        return [ok(SOURCE_CHECK, f"the slot lives on the primary {where}")]
    results = []
    if await setting(conn, "hot_standby_feedback") != "on":
        results.append(
            fail(
                SOURCE_CHECK,
                f"hot_standby_feedback is off on the standby {where}: the primary may remove "
                "catalog rows the slot needs, which invalidates it",
                f"ALTER SYSTEM SET hot_standby_feedback = on; {RELOAD} (on {where})",
            )
        )
    primary_dsn = config.postgres.primary_dsn or ""
    try:
        # with postgres.password_file's password, as `run` connects to it
        primary = await connect_postgres(
            primary_dsn, config.postgres.connect_timeout, password=config.postgres.password
        )
    except (psycopg.Error, OpsError) as exc:
        reason = describe_postgres_error(exc) if isinstance(exc, psycopg.Error) else str(exc)
        return [
            *results,
            fail(
                SOURCE_CHECK,
                f"cannot connect to postgres.primary_dsn: {reason}",
                "the publication and standby snapshots are made there: fix primary_dsn",
            ),
        ]
    async with primary:
        level = await setting(primary, "wal_level")
    if level != "logical":
        results.append(
            fail(
                SOURCE_CHECK,
                f"wal_level = {level} on the primary: a standby can decode only logical WAL",
                primary_wal_level_fix(config),
            )
        )
    return results or [
        ok(SOURCE_CHECK, f"the slot lives on the standby {where}; the primary's WAL is logical")
    ]


async def failover_checks(
    conn: AsyncConn,
    config: BridgeConfig,
    slot: SlotInfo | None,
    dsn: str,
    password: str | None,
) -> list[CheckResult]:
    version, number = await server_version(conn)
    name = config.postgres.slot
    if config.postgres.source == "standby":
        return [skip(CHECK, "the slot lives on a standby: PostgreSQL cannot fail it over")]
    if number < FAILOVER_SLOTS_SINCE:
        if config.postgres.failover is True:
            return [
                fail(
                    CHECK,
                    f"postgres.failover is true, but PostgreSQL {version.split()[0]} has no "
                    "failover slots (17+)",
                    "set postgres.failover to auto or false",
                )
            ]
        return [
            skip(
                CHECK,
                f"PostgreSQL {version.split()[0]} has no failover slots: a failover of the "
                f"primary loses slot {name} (recovery: {DOCS})",
            )
        ]
    if config.postgres.failover is False:
        return [skip(CHECK, "postgres.failover is false: the slot is not synchronized")]
    if slot is not None and slot.failover is False:
        return [
            warn(
                CHECK,
                f"slot {name} is not a failover slot: a failover of the primary loses it",
                "start the bridge (it makes the slot a failover slot when its role may), or "
                f"on a replication connection: ALTER_REPLICATION_SLOT {name} (FAILOVER true)",
            )
        ]
    results = await _primary_side(conn)
    standbys = [h for h in dsn_hosts(dsn) if (h[0], h[1]) != (conn.info.host, str(conn.info.port))]
    if not standbys:
        results.append(
            warn(
                CHECK,
                "postgres.dsn names one host: after a failover the bridge cannot find the "
                "new primary",
                "name the standbys too: host=primary,standby port=5432,5432 "
                "target_session_attrs=read-write",
            )
        )
    for host, port in standbys:
        results.extend(await _standby(host_dsn(dsn, host, port), f"{host}:{port}", name, password))
    if results:
        return results
    if slot is None:
        return [ok(CHECK, f"the bridge creates slot {name} as a failover slot; standbys ready")]
    return [ok(CHECK, f"slot {name} is a failover slot, synchronized to every standby")]


async def _primary_side(conn: AsyncConn) -> list[CheckResult]:
    named = [s.strip() for s in (await setting(conn, "synchronized_standby_slots")).split(",")]
    named = [s for s in named if s]
    cur = await conn.execute(
        "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'physical' ORDER BY 1"
    )
    physical = [str(row[0]) for row in await cur.fetchall()]
    if not named:
        listed = ", ".join(physical) or "<the standbys' physical slots>"
        return [
            warn(
                CHECK,
                "synchronized_standby_slots is empty: a promoted standby can lack events "
                "already published (phantom events)",
                f"ALTER SYSTEM SET synchronized_standby_slots = '{listed}'; {RELOAD}",
            )
        ]
    missing = [s for s in named if s not in physical]
    if missing:
        return [
            warn(
                CHECK,
                f"synchronized_standby_slots names {', '.join(missing)}, which is not a "
                "physical slot here: logical walsenders wait for it for ever",
                "create it for the standby (pg_create_physical_replication_slot) or fix "
                f"the list; {RELOAD}",
            )
        ]
    return []


async def _standby(dsn: str, where: str, slot: str, password: str | None) -> list[CheckResult]:
    try:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True, password=password)
    except psycopg.Error as exc:
        return [warn(CHECK, f"cannot connect to standby {where}: {describe_postgres_error(exc)}")]
    async with conn:
        cur = await conn.execute("SELECT pg_is_in_recovery()")
        row = await cur.fetchone()
        if not row or not row[0]:
            return []  # another primary (or the one we are on under another name)
        problems = [
            warn(CHECK, f"standby {where}: {name} is off", f"{fix}; {RELOAD} (on {where})")
            for name, fix in (
                ("sync_replication_slots", "ALTER SYSTEM SET sync_replication_slots = on"),
                ("hot_standby_feedback", "ALTER SYSTEM SET hot_standby_feedback = on"),
            )
            if await setting(conn, name) != "on"
        ]
        try:
            conninfo = await setting(conn, "primary_conninfo")
        except psycopg.errors.InsufficientPrivilege:
            conninfo = None
            problems.append(
                warn(
                    CHECK,
                    f"standby {where}: cannot read primary_conninfo",
                    "GRANT pg_read_all_settings to the role that runs check",
                )
            )
        if conninfo is not None and "dbname" not in conninfo_to_dict(conninfo or ""):
            problems.append(
                warn(
                    CHECK,
                    f"standby {where}: primary_conninfo has no dbname, so slots are not "
                    "synchronized",
                    f"add dbname=<a database> to primary_conninfo; {RELOAD} (on {where})",
                )
            )
        problems.extend(await _synced(conn, where, slot))
        return problems


async def _synced(conn: AsyncConn, where: str, slot: str) -> list[CheckResult]:
    cur = await conn.execute(
        "SELECT synced, temporary, invalidation_reason FROM pg_replication_slots"
        " WHERE slot_name = %s",
        (slot,),
    )
    row = await cur.fetchone()
    synced, temporary, invalidated = row if row is not None else (None, None, None)
    state = copy_state(synced, temporary, invalidated)
    if state == "missing":
        return [
            warn(
                CHECK,
                f"standby {where}: slot {slot} is not synchronized there: a failover to it "
                "stops the bridge",
                "fix the settings above; the standby's slot sync worker then copies it",
            )
        ]
    if state == "invalidated":
        return [
            warn(
                CHECK,
                f"standby {where}: slot {slot}: {copy_reason(state, invalidated)}",
                f"drop it on {where} (SELECT pg_drop_replication_slot('{slot}')): the sync "
                "worker makes a fresh copy",
            )
        ]
    if state == "temporary":
        return [
            warn(
                CHECK,
                f"standby {where}: slot {slot}: {copy_reason(state)}; a failover to it now "
                "stops the bridge",
                "let the bridge stream (its slot on the primary then moves past the "
                "standby's position and the copy is persisted); check again",
            )
        ]
    return []
