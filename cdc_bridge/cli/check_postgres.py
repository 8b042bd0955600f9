"""The PostgreSQL half of ``cdc-bridge check``: read-only, one result per check."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import psycopg

from cdc_bridge.bridge.failures import (
    RESTART,
    WAL_LEVEL_FIX,
    output_plugin_fix,
    replication_role_fix,
)
from cdc_bridge.bridge.initial_snapshot import snapshot_problem
from cdc_bridge.cli.check_failover import failover_checks, source_checks
from cdc_bridge.cli.check_results import CheckResult, fail, ok, skip, warn
from cdc_bridge.cli.errors import OpsError, describe_postgres_error
from cdc_bridge.cli.init_postgres import publication_sql
from cdc_bridge.cli.render import human_bytes, lsn_text
from cdc_bridge.cli.target import connect_postgres, password_for
from cdc_bridge.config.model import BridgeConfig
from cdc_bridge.core.redaction import redact_dsn
from cdc_bridge.source.catalog import (
    AsyncConn,
    SlotInfo,
    current_database,
    get_slot,
    in_recovery,
    output_plugin_allowlist,
    replication_slot_count,
    server_version,
    setting,
    wal_head_lsn,
    wal_sender_count,
)
from cdc_bridge.source.setup import outbox_problems, publication_fault, publication_plan
from cdc_bridge.source.tables import (
    can_select,
    current_role,
    partitioned_tables,
    publication_info,
    table_columns,
)

POSTGRES_CHECKS = (
    "postgres.server",
    "postgres.wal_level",
    "postgres.replication_slots",
    "postgres.wal_senders",
    "postgres.role",
    "outbox.tables",
    "outbox.read",
    "postgres.publication",
    "postgres.slot",
    "postgres.source",
    "postgres.failover",
)
MIN_VERSION_NUM = 100000  # pgoutput and publications arrived in PostgreSQL 10


async def postgres_checks(config: BridgeConfig, dsn: str) -> list[CheckResult]:
    try:
        conn = await connect_postgres(
            dsn, config.postgres.connect_timeout, password=password_for(config, dsn)
        )
    except (psycopg.Error, OpsError) as exc:
        reason = describe_postgres_error(exc) if isinstance(exc, psycopg.Error) else str(exc)
        first = fail(
            "postgres.server",
            f"cannot connect to {redact_dsn(dsn)}: {reason}",
            "check postgres.dsn, that the server runs, and that pg_hba.conf admits this "
            "host and role",
        )
        return [first, *(skip(name, "no connection") for name in POSTGRES_CHECKS[1:])]
    password = password_for(config, dsn)
    async with conn:
        slot = await get_slot(conn, config.postgres.slot)
        checks: list[tuple[str, Callable[[], Awaitable[CheckResult]]]] = [
            ("postgres.server", lambda: _server(conn, config)),
            ("postgres.wal_level", lambda: _wal_level(conn)),
            ("postgres.replication_slots", lambda: _replication_slots(conn, slot)),
            ("postgres.wal_senders", lambda: _wal_senders(conn, slot)),
            ("postgres.role", lambda: _role(conn)),
            ("outbox.tables", lambda: _outbox_tables(conn, config)),
            ("outbox.read", lambda: _outbox_read(conn, config)),
            ("postgres.publication", lambda: _publication(conn, config, slot)),
            ("postgres.slot", lambda: _slot(conn, config, slot)),
        ]
        if config.outbox.snapshot_on_create:
            checks.append(
                ("outbox.snapshot_on_create", lambda: _snapshot_on_create(conn, config, slot))
            )
        results = []
        for name, check in checks:
            try:
                results.append(await check())
            except psycopg.Error as exc:  # e.g. no permission to read a catalog view
                results.append(fail(name, f"could not check: {describe_postgres_error(exc)}"))
        extras: list[tuple[str, Callable[[], Awaitable[list[CheckResult]]]]] = [
            ("postgres.source", lambda: source_checks(conn, config)),
            ("postgres.failover", lambda: failover_checks(conn, config, slot, dsn, password)),
        ]
        for name, extra in extras:
            try:
                results.extend(await extra())
            except psycopg.Error as exc:
                results.append(fail(name, f"could not check: {describe_postgres_error(exc)}"))
        return results


async def _snapshot_on_create(
    conn: AsyncConn, config: BridgeConfig, slot: SlotInfo | None
) -> CheckResult:
    name = "outbox.snapshot_on_create"
    if slot is not None:
        return ok(name, f"slot {slot.name} exists: `run` starts no new snapshot")
    if config.postgres.source == "standby":
        return skip(name, "checked on the primary when `run` creates the slot")
    problem = await snapshot_problem(conn, config)
    if problem is not None:
        reason, fix = problem
        return fail(name, reason, fix)
    tables = ", ".join(config.outbox.change_tables)
    return ok(name, f"{tables}: snapshotted when `run` creates slot {config.postgres.slot}")


async def _server(conn: AsyncConn, config: BridgeConfig) -> CheckResult:
    version, number = await server_version(conn)
    where = f"{conn.info.host}:{conn.info.port}/{conn.info.dbname} as {conn.info.user}"
    if number < MIN_VERSION_NUM:
        return fail(
            "postgres.server",
            f"PostgreSQL {version} at {where} is too old",
            "PostgreSQL 10 or newer",
        )
    standby = await in_recovery(conn)
    if config.postgres.source == "standby":
        if not standby:
            return fail(
                "postgres.server",
                f"PostgreSQL {version} at {where} is a primary, but postgres.source is standby",
                "point postgres.dsn at a hot standby, or set postgres.source: primary",
            )
        if number < 160000:
            return fail(
                "postgres.server",
                f"PostgreSQL {version} at {where}: a standby decodes from 16 on",
                "PostgreSQL 16 or newer, or postgres.source: primary",
            )
        return ok("postgres.server", f"PostgreSQL {version} at {where} (a hot standby)")
    if standby:
        return fail(
            "postgres.server",
            f"PostgreSQL {version} at {where} is a standby (in recovery)",
            "point postgres.dsn at the primary: publications and the slot live there",
        )
    return ok("postgres.server", f"PostgreSQL {version} at {where}")


async def _wal_level(conn: AsyncConn) -> CheckResult:
    level = await setting(conn, "wal_level")
    if level == "logical":
        return ok("postgres.wal_level", "wal_level = logical")
    return fail(
        "postgres.wal_level",
        f"wal_level = {level}, but logical decoding needs logical",
        WAL_LEVEL_FIX,
    )


async def _replication_slots(conn: AsyncConn, slot: SlotInfo | None) -> CheckResult:
    limit = int(await setting(conn, "max_replication_slots"))
    used = await replication_slot_count(conn)
    detail = f"{used} of max_replication_slots {limit} in use"
    if slot is not None:
        return ok("postgres.replication_slots", f"{detail}, the bridge's slot among them")
    if used >= limit:
        return fail(
            "postgres.replication_slots",
            f"{detail}: none free for the bridge's slot",
            f"drop unused slots (`cdc-bridge slots list`), or raise max_replication_slots; "
            f"{RESTART}",
        )
    return ok("postgres.replication_slots", f"{detail}, {limit - used} free")


async def _wal_senders(conn: AsyncConn, slot: SlotInfo | None) -> CheckResult:
    limit = int(await setting(conn, "max_wal_senders"))
    used = await wal_sender_count(conn)
    detail = f"{used} of max_wal_senders {limit} in use"
    if slot is not None and slot.active:
        return ok("postgres.wal_senders", f"{detail}, the bridge's among them")
    if used >= limit:
        return fail(
            "postgres.wal_senders",
            f"{detail}: none free for the bridge",
            f"raise max_wal_senders; {RESTART}",
        )
    return ok("postgres.wal_senders", f"{detail}, {limit - used} free")


async def _role(conn: AsyncConn) -> CheckResult:
    role = await current_role(conn)
    if role.superuser:
        return warn(
            "postgres.role",
            f"role {role.name} is a superuser",
            "use a least-privilege role: sql/role.sql makes one (LOGIN REPLICATION, SELECT "
            "on the outbox); an admin runs cdc-bridge init once (docs/security.md)",
        )
    if role.replication:
        return ok("postgres.role", f"role {role.name} has REPLICATION")
    return fail(
        "postgres.role",
        f"role {role.name} has neither REPLICATION nor superuser: it cannot stream",
        replication_role_fix(role.name),
    )


async def _outbox_tables(conn: AsyncConn, config: BridgeConfig) -> CheckResult:
    problems = await outbox_problems(conn, config)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return fail("outbox.tables", first.problem + more, first.fix)
    if not config.outbox.tables:
        return ok("outbox.tables", "no outbox tables: message events only")
    tables = ", ".join(config.outbox.tables)
    return ok("outbox.tables", f"{tables}: every column the routes use is there")


async def _outbox_read(conn: AsyncConn, config: BridgeConfig) -> CheckResult:
    if not config.outbox.tables:
        return skip("outbox.read", "no outbox tables: message events only")
    unreadable = []
    for table in config.outbox.tables:
        if await table_columns(conn, table) is None:
            return skip("outbox.read", f"table {table} does not exist")
        if not await can_select(conn, table):
            unreadable.append(table)
    role = (await current_role(conn)).name
    if unreadable:
        # Streaming does not need it (the walsender reads the WAL, not the table), but
        # looking at the rows while reconciling or debugging does.
        return warn(
            "outbox.read",
            f"role {role} cannot SELECT from {', '.join(unreadable)}",
            f"GRANT SELECT ON {', '.join(unreadable)} TO {role}",
        )
    return ok("outbox.read", f"role {role} can read {', '.join(config.outbox.tables)}")


async def _publication(conn: AsyncConn, config: BridgeConfig, slot: SlotInfo | None) -> CheckResult:
    """The rules start-up applies (publication_plan, publication_fault), so that a
    green check means `run` accepts the publication."""
    name = config.postgres.publication
    tables, operations = publication_plan(config)
    info = await publication_info(conn, name)
    partitioned = await partitioned_tables(conn, tables)
    if info is None:
        create = publication_sql(name, tables, operations, via_root=bool(partitioned))
        after = (
            f" (slot {slot.name} already exists, so changes committed before the "
            "publication is created cannot be decoded)"
            if slot is not None
            else ""
        )
        return fail(
            "postgres.publication",
            f"publication {name} does not exist{after}",
            f"cdc-bridge init, or {create}",
        )
    fault = await publication_fault(conn, config)
    if fault is not None:
        return fail("postgres.publication", fault.problem, fault.fix)
    if not tables:
        return ok("postgres.publication", f"{name} exists (message events only)")
    root = f", via the partition root of {', '.join(partitioned)}" if partitioned else ""
    return ok(
        "postgres.publication",
        f"{name} publishes {', '.join(operations)} of {', '.join(tables)}{root}",
    )


async def _slot(conn: AsyncConn, config: BridgeConfig, slot: SlotInfo | None) -> CheckResult:
    name, plugin = config.postgres.slot, config.postgres.plugin
    allowed = await output_plugin_allowlist(conn)
    if allowed is not None and plugin not in allowed:
        # The server refuses the plugin both to create the slot and to stream from it.
        return fail(
            "postgres.slot",
            f"{plugin} is not in output_plugin_libraries ({', '.join(allowed) or 'empty'}): "
            f"this server refuses it as an output plugin, so slot {name} can be neither "
            "created nor streamed from",
            output_plugin_fix(plugin),
        )
    if slot is None:
        return warn(
            "postgres.slot",
            f"slot {name} does not exist: the bridge creates it at its first start, and "
            "only events committed after that are streamed",
            "cdc-bridge init (creates it now)",
        )
    if slot.plugin != plugin:
        return fail(
            "postgres.slot",
            f"slot {name} uses plugin {slot.plugin}, the config says {plugin}",
            f"cdc-bridge slots drop {name}, then cdc-bridge init",
        )
    database = await current_database(conn)
    if slot.database != database:
        return fail(
            "postgres.slot",
            f"slot {name} belongs to database {slot.database}, the DSN connects to {database}",
            "point postgres.dsn at that database, or use another slot name",
        )
    if slot.wal_status == "lost":
        return fail(
            "postgres.slot",
            f"slot {name} is LOST (wal_status = lost): PostgreSQL removed WAL it needed, "
            "events were lost",
            f"cdc-bridge slots drop {name}, cdc-bridge init, cdc-bridge audit, then cdc-bridge "
            "outbox replay --missing (docs/operating.md, 'slot lost')",
        )
    head = await wal_head_lsn(conn)
    lag = max(head - (slot.confirmed_flush_lsn or head), 0)
    state = f"in use by process {slot.active_pid}" if slot.active else "not in use"
    detail = (
        f"slot {name} ({plugin}) confirmed up to {lsn_text(slot.confirmed_flush_lsn)}, "
        f"lag {human_bytes(lag)}, {state}"
    )
    if slot.wal_status == "unreserved":
        return warn(
            "postgres.slot",
            f"{detail}; wal_status = unreserved: about to be lost",
            "get the bridge streaming now (max_slot_wal_keep_size is nearly used up)",
        )
    return ok("postgres.slot", detail)
